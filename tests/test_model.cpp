// The DRT model (spec §2–8): landmarks and labels, retrieval, the residual wiring, finite-difference
// checks of the layers and of a whole tiny DRT, and checkpoints under the reference's names.
#include <drt/model.hpp>

#include <filesystem>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 12;
  c.vocab_size = 13;
  c.enc_chunk_size = 63;
  c.chunk_topk = 2;
  c.slide_window = 40;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1, 1};  // two retrieval groups
  c.pad_id = 0;
  c.chunk_id = 12;
  c.tie_word_embeddings = true;
  c.initializer_range = 0.5;  // large weights: retrieval scores well separated, gradients far from 0
  return c;
}

IndexTensor random_tokens(Index B, Index T, int vocab, std::uint64_t seed) {
  IndexTensor t = IndexTensor::empty({B, T});
  for (Index i = 0; i < t.numel(); ++i) t.data()[i] = 1 + static_cast<int>(random_bits(seed, i) % (vocab - 2));
  return t;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_model_" + std::to_string(::getpid()) + "_" + name)).string();
}

}  // namespace

TEST(Landmarks, InsertedAfterEveryChunkAndLabelsShiftedFirst) {
  const IndexTensor tokens = IndexTensor::from({1, 6}, {10, 11, -100, 13, 14, 15});
  const IndexTensor ids = insert_landmarks(tokens, 3, /*chunk_id=*/99, /*pad_id=*/7);
  EXPECT_EQ(ids.to_vector(), (std::vector<std::int32_t>{10, 11, 7, 99, 13, 14, 15, 99}));
  const IndexTensor targets = shift_targets(tokens, 3);
  // target[t] = label[t+1] in raw space; −100 at landmarks and after the last token.
  EXPECT_EQ(targets.to_vector(), (std::vector<std::int32_t>{11, -100, 13, -100, 14, 15, -100, -100}));
  EXPECT_THROW(insert_landmarks(IndexTensor::zeros({1, 5}), 3, 99, 7), Error);
}

TEST(Retrieval, CausalTopKWithoutNoiseMatchesNaiveSelection) {
  tape().reset();
  const Index B = 2, C = 5, D = 4;
  const auto q = rand({B, C, D}, 1), k = rand({B, C, D}, 2);
  const Retrieval<double> r = retrieve(constant(q), constant(k), 3, false, 0);
  ASSERT_EQ(r.index.shape(), Shape({B, C, 3}));
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < C; ++c) {
      std::vector<std::pair<double, int>> visible;
      for (Index e = 0; e < c; ++e) {
        double s = 0;
        for (Index j = 0; j < D; ++j) s += q(b, c, j) * k(b, e, j);
        visible.push_back({s / 2.0, static_cast<int>(e)});  // / √D
      }
      std::sort(visible.begin(), visible.end(), [](auto x, auto y) { return x.first > y.first; });
      double total = 0;
      for (std::size_t j = 0; j < std::min<std::size_t>(3, visible.size()); ++j) total += std::exp(visible[j].first);
      for (Index j = 0; j < 3; ++j) {
        if (j < static_cast<Index>(visible.size())) {
          EXPECT_EQ(r.index(b, c, j), visible[j].second);
          EXPECT_NEAR(r.weight.value()(b, c, j), std::exp(visible[j].first) / total, 1e-12);
        } else {  // fewer than k chunks visible: an empty slot
          EXPECT_EQ(r.index(b, c, j), -1);
          EXPECT_EQ(r.weight.value()(b, c, j), 0.0);
        }
      }
    }
  tape().reset();
}

TEST(Retrieval, NoiseChangesSelectionNotWeightsAndFirstLandmarkIsNaNFree) {
  const Index B = 1, C = 8, D = 4;
  const auto q = rand({B, C, D}, 3), k = rand({B, C, D}, 4);
  Var<double> qv = variable(q), kv = variable(k);
  const Retrieval<double> clean = retrieve(qv, kv, 2, false, 0);
  bool changed = false;
  for (std::uint64_t seed = 0; seed < 20 && !changed; ++seed) {
    const Retrieval<double> noisy = retrieve(constant(q), constant(k), 2, true, seed);
    for (Index c = 0; c < C; ++c) {
      changed |= noisy.index(0, c, 0) != clean.index(0, c, 0);
      // Whatever was selected, the weights are the softmax of the noise-free selected scores.
      const int e0 = noisy.index(0, c, 0), e1 = noisy.index(0, c, 1);
      if (e0 >= 0 && e1 >= 0) {
        double s0 = 0, s1 = 0;
        for (Index j = 0; j < D; ++j) s0 += q(0, c, j) * k(0, e0, j) / 2, s1 += q(0, c, j) * k(0, e1, j) / 2;
        EXPECT_NEAR(noisy.weight.value()(0, c, 0), 1 / (1 + std::exp(s1 - s0)), 1e-12);
      }
    }
  }
  EXPECT_TRUE(changed) << "Gumbel noise never changed a selection in 20 seeds";
  // Landmark 0 sees nothing: zero weights, and its gradient is finite (no NaN).
  EXPECT_EQ(clean.weight.value()(0, 0, 0), 0.0);
  backward(sum_all(clean.weight * constant(rand({B, C, 2}, 5))));
  for (double g : qv.grad().to_vector()) EXPECT_TRUE(std::isfinite(g));
  for (double g : kv.grad().to_vector()) EXPECT_TRUE(std::isfinite(g));
  tape().reset();
}

TEST(Retrieval, GradientReachesQueriesAndLandmarkKeys) {
  const auto idx_probe = retrieve(constant(rand({1, 5, 3}, 6)), constant(rand({1, 5, 3}, 7)), 2, false, 0);
  (void)idx_probe;
  tape().reset();
  expect_gradients_match([](const Inputs& x) { return retrieve(x[0], x[1], 2, false, 0).weight; },
                         {rand({1, 5, 3}, 6), rand({1, 5, 3}, 7)});
}

TEST(Layers, DecoderEncoderAndUpperLayersPassFiniteDifferences) {
  const ModelConfig c = tiny_config();
  Generator gen(11);
  const DecoderLayer<double> decoder(c, gen, c.rms_norm_eps);
  const EncoderLayer<double> encoder(c, gen, ModelConfig::kEncoderNormEps);
  expect_gradients_match([&](const Inputs& x) { return decoder(x[0]); }, {rand({2, 9, 8}, 8)});
  expect_gradients_match([&](const Inputs& x) { return encoder(x[0]); }, {rand({3, 5, 8}, 9)});
}

TEST(Layers, UpperLayerWiringFeedsGcaOnlyIntoTheMlpInput) {
  const ModelConfig c = tiny_config();
  DrtModel<double> model(c, 3);
  Generator gen(12);
  const UpperDecoderLayer<double> layer(c, gen);
  const IndexTensor tokens = random_tokens(1, 63 * 3, c.vocab_size, 13);
  const Var<double> h = constant(rand({1, 64 * 3, 8}, 14));
  const ChunkMemory<double> memory = model.encode_chunks(h);
  const Retrieval<double> r = model.retrieve_for_group(h, 0, memory, {});
  const Var<double> out = layer(h, memory, r, 64);
  // Recompute from the parts: h_out = a + MLP(norm₂(a + GCA(a))).
  const Var<double> a = layer.block.attend(h);
  const Var<double> g = layer.gca(a, memory, r, 64);
  const Var<double> expected = a + layer.block.mlp(rms_norm(a + g, layer.block.post_attention_layernorm, 1e-6));
  const Var<double> standard = (a + g) + layer.block.mlp(rms_norm(a + g, layer.block.post_attention_layernorm, 1e-6));
  double diff = 0, standard_diff = 0;
  for (Index i = 0; i < out.numel(); ++i) {
    diff = std::max(diff, std::abs(out.value().data()[i] - expected.value().data()[i]));
    standard_diff = std::max(standard_diff, std::abs(out.value().data()[i] - standard.value().data()[i]));
  }
  EXPECT_LT(diff, 1e-12);
  EXPECT_GT(standard_diff, 1e-3) << "GCA output must not enter the residual stream directly";
  // Chunk 0 gets no GCA output.
  for (Index s = 0; s < 64; ++s)
    for (Index j = 0; j < 8; ++j) EXPECT_EQ(g.value()(0, s, j), 0.0);
  tape().reset();
}

TEST(Layers, StandardGcaResidualAddsTheGcaOutputToTheStream) {
  ModelConfig c = tiny_config();
  c.gca_standard_residual = true;
  DrtModel<double> model(c, 3);
  Generator gen(12);
  const UpperDecoderLayer<double> layer(c, gen);
  const Var<double> h = constant(rand({1, 64 * 3, 8}, 14));
  const ChunkMemory<double> memory = model.encode_chunks(h);
  const Retrieval<double> r = model.retrieve_for_group(h, 0, memory, {});
  const Var<double> out = layer(h, memory, r, 64);
  const Var<double> a = layer.block.attend(h);
  const Var<double> cg = a + layer.gca(a, memory, r, 64);
  const Var<double> expected = cg + layer.block.mlp(rms_norm(cg, layer.block.post_attention_layernorm, 1e-6));
  for (Index i = 0; i < out.numel(); ++i) EXPECT_NEAR(out.value().data()[i], expected.value().data()[i], 1e-12);
  tape().reset();
}

TEST(Layers, EncoderAlibiSubtractsTheSymmetricDistancePenalty) {
  ModelConfig c = tiny_config();
  c.encoder_alibi = true;
  const Tensor<double> bias = EncoderAttention<double>::symmetric_alibi(c.num_attention_heads, 5);
  const Tensor<double> m = alibi_slopes<double>(c.num_attention_heads);
  for (int h = 0; h < 2; ++h)
    for (Index i = 0; i < 5; ++i)
      for (Index j = 0; j < 5; ++j) EXPECT_EQ(bias(h, i, j), -m.data()[h] * std::abs(static_cast<double>(i - j)));
  // The switch changes the encoder's output (same weights), and the layer stays differentiable.
  Generator gen_a(11), gen_b(11);
  const EncoderLayer<double> with(c, gen_a, ModelConfig::kEncoderNormEps);
  c.encoder_alibi = false;
  const EncoderLayer<double> without(c, gen_b, ModelConfig::kEncoderNormEps);
  const Tensor<double> x = rand({3, 5, 8}, 9);
  const Tensor<double> y_with = with(constant(x)).value(), y_without = without(constant(x)).value();
  double diff = 0;
  for (Index i = 0; i < y_with.numel(); ++i) diff = std::max(diff, std::abs(y_with.data()[i] - y_without.data()[i]));
  EXPECT_GT(diff, 1e-6);
  tape().reset();
  expect_gradients_match([&](const Inputs& in) { return with(in[0]); }, {x});
}

// Also with both opt-in deviations (docs/training.md §7) switched on.
class WholeTinyDrt : public ::testing::TestWithParam<bool> {};

TEST_P(WholeTinyDrt, PassesFiniteDifferences) {
  ModelConfig c = tiny_config();
  c.gca_standard_residual = c.encoder_alibi = GetParam();
  DrtModel<double> model(c, 21);
  const IndexTensor tokens = random_tokens(1, 63 * 4, c.vocab_size, 22);
  tape().reset();
  backward(model.loss(tokens));
  std::vector<std::pair<std::string, Tensor<double>>> analytic;
  for (const auto& p : model.named_parameters()) analytic.push_back({p.name, p.parameter->grad().clone()});
  tape().reset();
  auto loss_value = [&] {
    NoGradGuard no_grad;
    const double v = model.loss(tokens).item();
    tape().reset();
    return v;
  };
  // A few elements of every parameter (all of them would take minutes), perturbed in place.
  const double h = 1e-6;
  std::set<std::string> nonzero;
  for (std::size_t i = 0; i < analytic.size(); ++i) {
    const Tensor<double>& w = model.named_parameters()[i].parameter->value();
    for (int probe = 0; probe < 3; ++probe) {
      const Index at = static_cast<Index>(random_bits(99 + i, probe) % w.numel());
      double& x = w.data()[at];
      const double saved = x;
      x = saved + h;
      const double up = loss_value();
      x = saved - h;
      const double down = loss_value();
      x = saved;
      const double numeric = (up - down) / (2 * h), exact = analytic[i].second.data()[at];
      EXPECT_NEAR(exact, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << analytic[i].first << " element " << at;
      if (std::abs(exact) > 1e-9) nonzero.insert(analytic[i].first);
    }
  }
  // The retrieval path is trained: gradient reaches the landmark norms (queries), the encoder
  // (landmark keys κ and the chunk memory) and the chunk projections.
  for (const char* name : {"model.lmk_norms.0.weight", "model.lmk_norms.1.weight", "model.encoder.norm.weight",
                           "model.chunk_k_proj.weight", "model.chunk_v_proj.weight", "model.enc_prenorm.weight"})
    EXPECT_TRUE(nonzero.count(name)) << name << " received no gradient";
  for (const auto& [name, grad] : analytic)
    for (double g : grad.to_vector()) ASSERT_TRUE(std::isfinite(g)) << name;
}

INSTANTIATE_TEST_SUITE_P(Model, WholeTinyDrt, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "WithOptInSwitches" : "Reference"; });

TEST(Model, ParameterNamesFollowTheReference) {
  ModelConfig c = tiny_config();
  DrtModel<float> model(c, 1);
  std::set<std::string> names;
  for (const auto& p : model.named_parameters()) names.insert(p.name);
  for (const char* expected :
       {"model.embed_tokens.weight", "model.lower_layers.0.self_attn.q_proj.weight", "model.lower_layers.0.mlp.down_proj.weight",
        "model.upper_layers.1.0.gca.pre_norm.weight", "model.upper_layers.0.0.gca.o_proj.weight",
        "model.upper_layers.0.0.post_attention_layernorm.weight", "model.lmk_norms.1.weight",
        "model.encoder.layers.0.self_attn.k_proj.weight", "model.encoder.norm.weight", "model.chunk_k_proj.weight",
        "model.enc_prenorm.weight", "model.norm.weight"})
    EXPECT_TRUE(names.count(expected)) << expected;
  EXPECT_FALSE(names.count("lm_head.weight"));  // tied: listed once
  EXPECT_EQ(model.named_buffers().size(), 3u);  // one ALiBi slope buffer per decoder self-attention
}

TEST(Checkpoint, RoundTripAndErrorsNameTheTensor) {
  const ModelConfig c = tiny_config();
  DrtModel<float> a(c, 1), b(c, 2);
  const std::string path = temp_path("weights.safetensors");
  save_weights(a, path);
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  EXPECT_TRUE(file.contains("lm_head.weight"));
  EXPECT_TRUE(file.contains("model.lower_layers.0.self_attn.m"));
  load_weights(b, path);
  const IndexTensor tokens = random_tokens(1, 63 * 2, c.vocab_size, 3);
  EXPECT_EQ(a.loss(tokens).item(), b.loss(tokens).item());
  tape().reset();

  auto rewrite_without = [&](const std::string& drop, const std::string& reshape, const std::string& extra) {
    io::SafetensorsWriter out;
    for (const auto& [name, entry] : file.entries()) {
      if (name == drop) continue;
      Tensor<float> t = file.tensor<float>(name);
      if (name == reshape) t = t.reshape({2, -1});
      out.add("module." + name, t);  // the DDP prefix is accepted
    }
    if (!extra.empty()) out.add(extra, Tensor<float>::zeros({2}));
    out.write(path);
  };
  auto error_of = [&] {
    try {
      load_weights(b, path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  rewrite_without("", "", "");
  EXPECT_EQ(error_of(), "");  // module. prefix stripped
  rewrite_without("model.chunk_v_proj.weight", "", "");
  EXPECT_NE(error_of().find("missing tensor 'model.chunk_v_proj.weight'"), std::string::npos) << error_of();
  rewrite_without("", "model.norm.weight", "");
  EXPECT_NE(error_of().find("'model.norm.weight' has shape (2, 4) but the model needs (8)"), std::string::npos) << error_of();
  rewrite_without("", "model.lower_layers.0.mlp.up_proj.weight", "");
  EXPECT_NE(error_of().find("model.lower_layers.0.mlp.up_proj.weight"), std::string::npos) << error_of();
  rewrite_without("", "", "model.extra.weight");
  EXPECT_NE(error_of().find("unexpected tensor 'model.extra.weight'"), std::string::npos) << error_of();
  std::filesystem::remove(path);
}

namespace {

void expect_all_near(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], tol * (1 + std::abs(a[i]))) << "element " << i;
}

// The padded head (on a GPU the model pads its 77-row head to 128 rows) computes the
// unpadded head's logits and gradients (up to the GEMM's order of additions, which depends on N),
// its padding rows get no gradient, and unpad() restores a
// standalone (77, D) tensor. Run here on the CPU, where the arithmetic is the same.
TEST(PaddedVocab, SameLogitsAndGradientsAsTheUnpaddedHead) {
  Parameter<double> plain(random_normal<double>({77, 8}, 1, 0.0, 1.0));
  Parameter<double> padded(plain.value());
  PaddedVocab<double> pad;
  pad.pad(padded);
  ASSERT_TRUE(pad.active());
  EXPECT_EQ(padded.value().shape(), (Shape{77, 8}));
  EXPECT_EQ(pad.table(padded).shape(), (Shape{128, 8}));

  const Var<double> h = constant(random_normal<double>({3, 5, 8}, 2, 0.0, 1.0));
  const Tensor<double> weights = random_normal<double>({3, 5, 77}, 3, 0.0, 1.0);
  const Var<double> a = linear(h, plain), b = pad.visible(linear(h, pad.table(padded)));
  ASSERT_EQ(b.shape(), (Shape{3, 5, 77}));
  expect_all_near(a.value().to_vector(), b.value().to_vector(), 1e-13);
  backward(sum_all(a * constant(weights)) + sum_all(b * constant(weights)));
  tape().reset();
  expect_all_near(plain.grad().to_vector(), padded.grad().to_vector(), 1e-13);
  const Tensor<double>& table_grad = pad.table(padded).grad();
  for (double g : table_grad.slice(0, 77, 128).to_vector()) ASSERT_EQ(g, 0.0);

  pad.unpad(padded);
  EXPECT_FALSE(pad.active());
  EXPECT_EQ(padded.value().to_vector(), plain.value().to_vector());
  EXPECT_TRUE(padded.value().owns_memory());
}

}  // namespace
