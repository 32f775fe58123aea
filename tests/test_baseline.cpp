// The sliding-window baseline LM (reference-notes §1.6): parameter count and names, the embedding
// without a padding row, the plain next-token loss, a finite-difference check of the whole model,
// checkpoints, and the receptive field that the window bounds.
#include <drt/model.hpp>
#include <drt/model/parameter_count.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

using namespace drt;

namespace {

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 12;
  c.vocab_size = 13;
  c.slide_window = 3;
  c.decoder_layers = {1, 1};  // the baseline stacks sum(decoder_layers) = 2 layers
  c.pad_id = 5;
  c.chunk_id = 12;
  c.tie_word_embeddings = tied;
  c.initializer_range = 0.5;  // large weights: gradients and position effects far from 0
  return c;
}

IndexTensor random_tokens(Index B, Index T, int vocab, std::uint64_t seed) {
  IndexTensor t = IndexTensor::empty({B, T});
  for (Index i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<int>(random_bits(seed, i) % vocab);
  return t;
}

template <class T>
std::vector<T> logits_of(const SlidingWindowLM<T>& model, const IndexTensor& tokens) {
  NoGradGuard no_grad;
  const std::vector<T> v = model.logits(tokens).value().to_vector();
  tape().reset();
  return v;
}

template <class T>
T loss_of(const SlidingWindowLM<T>& model, const IndexTensor& tokens, const IndexTensor* labels = nullptr) {
  NoGradGuard no_grad;
  const T v = model.loss(tokens, labels).item();
  tape().reset();
  return v;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_baseline_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace

TEST(Baseline, ParameterCountMatchesTheConfigFormula) {
  struct Case {
    int D, H, H_kv, F, V;
    std::vector<int> layers;
    bool tied;
  };
  const Case cases[] = {{8, 2, 2, 12, 13, {1, 1}, true},
                        {8, 2, 2, 12, 13, {1, 1}, false},
                        {12, 6, 2, 20, 31, {2, 1, 3}, false},  // GQA, three groups
                        {16, 4, 1, 8, 7, {3}, true}};          // multi-query, no retrieval group
  for (const Case& k : cases) {
    ModelConfig c;
    c.hidden_size = k.D, c.num_attention_heads = k.H, c.num_key_value_heads = k.H_kv, c.intermediate_size = k.F;
    c.vocab_size = k.V, c.decoder_layers = k.layers, c.tie_word_embeddings = k.tied, c.pad_id = 0, c.chunk_id = 1;
    const SlidingWindowLM<float> model(c, 3);
    EXPECT_EQ(model.parameter_count(), count_baseline_parameters(c)) << "D " << k.D << " tied " << k.tied;
    // Per layer: 4 attention + 3 MLP weights + 2 norms; then embedding, final norm, untied head.
    int L = 0;
    for (int n : k.layers) L += n;
    EXPECT_EQ(model.layer_count(), L);
    EXPECT_EQ(model.named_parameters().size(), static_cast<std::size_t>(9 * L + 2 + (k.tied ? 0 : 1)));
    EXPECT_EQ(model.named_buffers().size(), static_cast<std::size_t>(L));
  }
}

TEST(Baseline, ParameterNamesAndShapesFollowTheReference) {
  const ModelConfig c = tiny_config(false);
  const SlidingWindowLM<float> model(c, 1);
  std::set<std::string> expected = {"language_model.model.embed_tokens.weight", "language_model.model.norm.weight",
                                    "language_model.lm_head.weight"};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "language_model.model.layers." + std::to_string(i) + ".";
    for (const char* w : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                          "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"})
      expected.insert(p + w + ".weight");
  }
  std::set<std::string> names;
  for (const auto& p : model.named_parameters()) {
    EXPECT_TRUE(names.insert(p.name).second) << p.name << " listed twice";
    const Shape& s = p.parameter->value().shape();
    if (p.name.find("embed_tokens") != std::string::npos || p.name.find("lm_head") != std::string::npos) {
      EXPECT_EQ(s, Shape({13, 8})) << p.name;
    } else if (p.name.find("k_proj") != std::string::npos || p.name.find("v_proj") != std::string::npos) {
      EXPECT_EQ(s, Shape({4, 8})) << p.name;  // H_kv · d = 1 · 4
    } else if (p.name.find("down_proj") != std::string::npos) {
      EXPECT_EQ(s, Shape({8, 12})) << p.name;
    }
  }
  EXPECT_EQ(names, expected);
  EXPECT_EQ(model.named_parameters().front().name, "language_model.model.embed_tokens.weight");  // checkpoint.hpp relies on it
  const auto buffers = model.named_buffers();
  ASSERT_EQ(buffers.size(), 2u);
  EXPECT_EQ(buffers[1].first, "language_model.model.layers.1.self_attn.m");
  EXPECT_EQ(buffers[1].second->to_vector(), (std::vector<float>{0.0625f, 0.00390625f}));  // 2^(−8(h+1)/H), H = 2
  EXPECT_EQ(SlidingWindowLM<float>::tied_head_name(), "language_model.lm_head.weight");

  const SlidingWindowLM<float> tied(tiny_config(true), 1);
  for (const auto& p : tied.named_parameters()) EXPECT_NE(p.name, "language_model.lm_head.weight");
  EXPECT_EQ(&tied.lm_head(), tied.named_parameters().front().parameter);
}

TEST(Baseline, EmbeddingHasNoPaddingRow) {
  const ModelConfig c = tiny_config(true);
  const SlidingWindowLM<double> model(c, 4);
  const Tensor<double>& E = model.named_parameters().front().parameter->value();
  double pad_row = 0, zero_row = 0;
  for (Index j = 0; j < c.hidden_size; ++j) pad_row += std::abs(E(c.pad_id, j)), zero_row += std::abs(E(0, j));
  EXPECT_GT(pad_row, 0.0);  // DRT zeroes this row; the baseline draws it like any other
  EXPECT_GT(zero_row, 0.0);
  // Rows read by the lookup train, pad_id's included. The tied head's gradient reaches every row,
  // so use an untied model to see the lookup's part alone.
  const SlidingWindowLM<double> untied(tiny_config(false), 4);
  tape().reset();
  const IndexTensor tokens = IndexTensor::from({1, 4}, {c.pad_id, -100, 7, c.pad_id});
  backward(untied.loss(tokens, &tokens));  // labels −100 at position 1 is ignored, not looked up
  const Tensor<double> dE = untied.named_parameters().front().parameter->grad().clone();
  tape().reset();
  auto row_norm = [&](Index r) {
    double s = 0;
    for (Index j = 0; j < c.hidden_size; ++j) s += std::abs(dE(r, j));
    return s;
  };
  EXPECT_GT(row_norm(c.pad_id), 0.0);
  EXPECT_GT(row_norm(0), 0.0);  // −100 was embedded as id 0
  EXPECT_GT(row_norm(7), 0.0);
  EXPECT_EQ(row_norm(3), 0.0);  // never read
}

TEST(Baseline, NegativeIdsEmbedAsIdZero) {
  const ModelConfig c = tiny_config(true);
  const SlidingWindowLM<double> model(c, 5);
  const IndexTensor with_negative = IndexTensor::from({2, 5}, {3, -100, 4, -1, 9, -7, 2, 2, 11, -100});
  const IndexTensor with_zero = IndexTensor::from({2, 5}, {3, 0, 4, 0, 9, 0, 2, 2, 11, 0});
  const IndexTensor with_pad = IndexTensor::from({2, 5}, {3, 5, 4, 5, 9, 5, 2, 2, 11, 5});
  EXPECT_EQ(logits_of(model, with_negative), logits_of(model, with_zero));
  EXPECT_NE(logits_of(model, with_negative), logits_of(model, with_pad));  // not DRT's pad_id
  // The caller's tokens are left as they were.
  EXPECT_EQ(with_negative(0, 1), -100);
}

TEST(Baseline, LossIsTheNaiveShiftedCrossEntropy) {
  const ModelConfig c = tiny_config(false);
  const SlidingWindowLM<double> model(c, 6);
  const Index B = 2, T = 7, V = c.vocab_size;
  const IndexTensor tokens = random_tokens(B, T, V, 7);
  IndexTensor labels = random_tokens(B, T, V, 8);
  labels(0, 3) = -100;  // ignored target for position 2
  labels(1, 0) = -100;  // position 0 of the labels is never a target anyway
  const std::vector<double> logits = logits_of(model, tokens);
  ASSERT_EQ(logits.size(), static_cast<std::size_t>(B * T * V));
  auto naive = [&](const IndexTensor& y) {
    double total = 0;
    int count = 0;
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t + 1 < T; ++t) {
        const int target = y(b, t + 1);
        if (target == -100) continue;
        const double* row = logits.data() + (b * T + t) * V;
        double z = 0;
        for (Index v = 0; v < V; ++v) z += std::exp(row[v]);
        total += std::log(z) - row[target];
        ++count;
      }
    return total / count;
  };
  EXPECT_NEAR(loss_of(model, tokens, &labels), naive(labels), 1e-12);
  EXPECT_NEAR(loss_of(model, tokens), naive(tokens), 1e-12);  // labels default to the tokens
  // One position has no target: the loss is 0 (cross_entropy's convention for "nothing counted").
  EXPECT_EQ(loss_of(model, IndexTensor::from({1, 1}, {4})), 0.0);
  EXPECT_EQ(logits_of(model, IndexTensor::from({1, 1}, {4})).size(), static_cast<std::size_t>(V));

  const IndexTensor wrong = IndexTensor::zeros({B, T + 1});
  EXPECT_THROW(model.loss(tokens, &wrong), Error);
  EXPECT_THROW(model.logits(IndexTensor::zeros({T})), Error);
  EXPECT_THROW(model.logits(IndexTensor::zeros({B, 0})), Error);
  EXPECT_THROW(model.logits(IndexTensor::from({1, 2}, {1, 13})), Error);  // id ≥ V
  tape().reset();
}

TEST(Baseline, WholeTinyModelPassesFiniteDifferences) {
  for (bool tied : {true, false}) {
    const SlidingWindowLM<double> model(tiny_config(tied), 21);
    IndexTensor tokens = random_tokens(2, 9, 13, 22);
    tokens(1, 4) = -100;  // embedded as 0
    IndexTensor labels = random_tokens(2, 9, 13, 23);
    labels(0, 5) = -100;
    tape().reset();
    backward(model.loss(tokens, &labels));
    const ParameterList<double> params = model.named_parameters();
    std::vector<Tensor<double>> analytic;
    for (const auto& p : params) analytic.push_back(p.parameter->grad().clone());
    tape().reset();
    const double h = 1e-6;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Tensor<double>& w = params[i].parameter->value();
      bool some_nonzero = false;
      for (int probe = 0; probe < 3; ++probe) {
        const Index at = static_cast<Index>(random_bits(99 + i, probe) % w.numel());
        double& x = w.data()[at];
        const double saved = x;
        x = saved + h;
        const double up = loss_of(model, tokens, &labels);
        x = saved - h;
        const double down = loss_of(model, tokens, &labels);
        x = saved;
        const double numeric = (up - down) / (2 * h), exact = analytic[i].data()[at];
        EXPECT_NEAR(exact, numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
            << params[i].name << " element " << at << (tied ? " (tied)" : " (untied)");
        some_nonzero |= std::abs(exact) > 1e-9;
      }
      // Only the embedding may legitimately miss: its probes can land on rows nobody reads.
      if (params[i].name != "language_model.model.embed_tokens.weight" || tied) {
        EXPECT_TRUE(some_nonzero) << params[i].name << " received no gradient at its probes";
      }
      for (double g : analytic[i].to_vector()) ASSERT_TRUE(std::isfinite(g)) << params[i].name;
    }
  }
}

TEST(Baseline, CheckpointRoundTripGivesTheSameLoss) {
  for (bool tied : {true, false}) {
    const ModelConfig c = tiny_config(tied);
    SlidingWindowLM<float> a(c, 1), b(c, 2);  // safetensors files hold F32 (or BF16)
    const IndexTensor tokens = random_tokens(2, 11, c.vocab_size, 3);
    ASSERT_NE(loss_of(a, tokens), loss_of(b, tokens));
    const std::string path = temp_path(tied ? "tied.safetensors" : "untied.safetensors");
    save_weights(a, path);
    const io::SafetensorsFile file = io::SafetensorsFile::read(path);
    // The reference's key set: 9 weights + 1 slope buffer per layer, embedding, norm, lm_head
    // (saved under both names when tied), as its 123 entries for 12 layers.
    EXPECT_EQ(file.entries().size(), 10u * 2 + 3);
    EXPECT_TRUE(file.contains("language_model.lm_head.weight"));
    EXPECT_TRUE(file.contains("language_model.model.layers.1.self_attn.m"));
    load_weights(b, path);
    EXPECT_EQ(loss_of(a, tokens), loss_of(b, tokens));
    EXPECT_EQ(logits_of(a, tokens), logits_of(b, tokens));

    // A file for another shape names the tensor it cannot take.
    ModelConfig wider = c;
    wider.intermediate_size = 16;
    SlidingWindowLM<float> other(wider, 1);
    try {
      load_weights(other, path);
      ADD_FAILURE() << "loading a checkpoint of another shape should fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight"), std::string::npos) << e.what();
    }
    std::filesystem::remove(path);
  }
}

// Layer ℓ mixes each position with the W before it, so after L layers the logits at position i
// depend on tokens i − L·W .. i and on nothing earlier. (The bound is L·W, not W + L: a token
// exactly L·W back still reaches position i, one hop of W per layer.)
TEST(Baseline, ReceptiveFieldIsBoundedByLayersTimesWindow) {
  ModelConfig c = tiny_config(true);
  c.decoder_layers = {2, 1};  // L = 3
  c.slide_window = 3;         // W = 3: reach 9
  const SlidingWindowLM<double> model(c, 9);
  const Index T = 16, V = c.vocab_size, last = T - 1, reach = 3 * 3;
  const IndexTensor tokens = random_tokens(1, T, V, 10);
  const std::vector<double> base = logits_of(model, tokens);
  auto last_row_change = [&](Index position) {
    IndexTensor changed = tokens.clone();
    changed(0, position) = (changed(0, position) + 1) % V;
    const std::vector<double> out = logits_of(model, changed);
    double diff = 0;
    for (Index v = 0; v < V; ++v) diff = std::max(diff, std::abs(out[last * V + v] - base[last * V + v]));
    return diff;
  };
  for (Index p = 0; p < T; ++p) {
    const double diff = last_row_change(p);
    if (last - p > reach) {
      EXPECT_EQ(diff, 0.0) << "a token " << last - p << " positions back changed the last logits";
    } else {
      EXPECT_GT(diff, 1e-9) << "a token " << last - p << " positions back did not reach the last logits";
    }
  }
  EXPECT_GT(last - reach - 1, 0);  // the test did look beyond the reach
}
