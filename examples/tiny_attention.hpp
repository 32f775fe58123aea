// examples/tiny_attention.hpp — a small decoder-only attention model, and the copy task it learns.
//
// Shapes: B batch, T time (sequence length), D model width, H heads, Dh = D/H head width,
//         F SwiGLU hidden width, V vocabulary.
//
// The model, top to bottom (pre-norm residual blocks, no positional embeddings: ALiBi's distance
// penalty and the causal mask carry all the order information):
//     x = embed[tokens]                                                   (B, T, D)
//     for each layer:
//         h = rms_norm(x)
//         q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ, split into heads                 (B, H, T, Dh)
//         scores = q·kᵀ/√Dh + ALiBi bias, future positions set to −∞     (B, H, T, T)
//         x = x + (softmax(scores)·v, heads merged)·Woᵀ                   (B, T, D)
//         x = x + swiglu_mlp(rms_norm(x))
//     logits = rms_norm(x)·embedᵀ (tied) or ·headᵀ                        (B, T, V)
//     loss = cross_entropy(logits, targets), positions with target −100 ignored
//
// The copy task: each sequence is  s₁ … s_L SEP s₁ … s_L  with random symbols sᵢ. The model
// reads it without its last token and predicts the next token at every position; only the
// predictions of the copied half are scored (the first half is random, so nothing there can be
// learnt). Solving it needs attention to look L+1 positions back by content and position.
//
// Used by examples/demo.cpp, bench/bench_step.cpp and tests/test_allocation.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <drt/core.hpp>
#include <drt/nn.hpp>

namespace drt::examples {

struct TinyAttentionConfig {
  Index vocab = 32;
  Index dim = 64;
  Index heads = 4;
  Index layers = 2;
  Index mlp_hidden = 128;
  Index seq_len = 32;  // the longest sequence the model accepts (the causal mask is built for it)
  bool tie_embeddings = true;  // the LM head reuses the embedding matrix
  float init_std = 0.02f;
  float norm_eps = 1e-5f;
  std::uint64_t seed = 0;

  void validate() const {
    DRT_CHECK(vocab > 0, "TinyAttentionConfig: vocab must be > 0, got ", vocab);
    DRT_CHECK(dim > 0 && heads > 0 && dim % heads == 0, "TinyAttentionConfig: dim (", dim,
              ") must be a positive multiple of heads (", heads, ")");
    DRT_CHECK(layers >= 0, "TinyAttentionConfig: layers must be >= 0, got ", layers);
    DRT_CHECK(mlp_hidden > 0, "TinyAttentionConfig: mlp_hidden must be > 0, got ", mlp_hidden);
    DRT_CHECK(seq_len > 0, "TinyAttentionConfig: seq_len must be > 0, got ", seq_len);
  }
};

class TinyAttention {
 public:
  explicit TinyAttention(const TinyAttentionConfig& config) : config_(config) {
    config_.validate();
    Generator gen(config_.seed);
    const Index D = config_.dim, F = config_.mlp_hidden;
    embed_ = normal({config_.vocab, D}, gen);
    layers_.reserve(static_cast<std::size_t>(config_.layers));
    for (Index l = 0; l < config_.layers; ++l) {
      Layer layer;
      layer.attn_norm = ones(D);
      layer.wq = normal({D, D}, gen);
      layer.wk = normal({D, D}, gen);
      layer.wv = normal({D, D}, gen);
      layer.wo = normal({D, D}, gen);
      layer.mlp_norm = ones(D);
      layer.w_gate = normal({F, D}, gen);
      layer.w_up = normal({F, D}, gen);
      layer.w_down = normal({D, F}, gen);
      layers_.push_back(std::move(layer));
    }
    final_norm_ = ones(D);
    if (!config_.tie_embeddings) head_ = normal({config_.vocab, D}, gen);

    // Constant per model: the ALiBi slope of each head and the causal mask (1 above the diagonal
    // = a key in the query's future).
    slopes_ = alibi_slopes<float>(static_cast<int>(config_.heads));
    future_ = Tensor<float>::zeros({config_.seq_len, config_.seq_len});
    for (Index i = 0; i < config_.seq_len; ++i)
      for (Index j = i + 1; j < config_.seq_len; ++j) future_(i, j) = 1.0f;
  }
  // Parameters are referred to by address (optimisers keep pointers): the model stays put.
  TinyAttention(const TinyAttention&) = delete;
  TinyAttention& operator=(const TinyAttention&) = delete;

  // tokens (B, T) → logits (B, T, V)
  Var<float> logits(const IndexTensor& tokens) {
    DRT_CHECK(tokens.rank() == 2 && tokens.size(1) <= config_.seq_len, "TinyAttention: tokens must be (B, T) with T <= ",
              config_.seq_len, ", got shape ", tokens.shape().str());
    const float eps = config_.norm_eps;
    Var<float> x = embedding(embed_, tokens);
    for (const Layer& layer : layers_) {
      x = x + attention(rms_norm(x, layer.attn_norm, eps), layer);
      x = x + swiglu_mlp(rms_norm(x, layer.mlp_norm, eps), layer.w_gate, layer.w_up, layer.w_down);
    }
    x = rms_norm(x, final_norm_, eps);
    const Var<float>& head = config_.tie_embeddings ? embed_ : head_;
    return linear(x, head);
  }

  // Mean cross-entropy over the positions whose target is not −100.
  Var<float> loss(const IndexTensor& tokens, const IndexTensor& targets) {
    return cross_entropy(logits(tokens), targets, -100);
  }

  std::vector<Parameter<float>*> parameters() {
    std::vector<Parameter<float>*> list{&embed_};
    for (Layer& l : layers_)
      for (Parameter<float>* p : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down})
        list.push_back(p);
    list.push_back(&final_norm_);
    if (!config_.tie_embeddings) list.push_back(&head_);
    return list;
  }
  Index parameter_count() {
    Index n = 0;
    for (Parameter<float>* p : parameters()) n += p->numel();
    return n;
  }
  const TinyAttentionConfig& config() const { return config_; }

 private:
  struct Layer {
    Parameter<float> attn_norm, wq, wk, wv, wo;  // gamma (D); projections (D, D), stored (out, in)
    Parameter<float> mlp_norm, w_gate, w_up, w_down;  // gamma (D); (F, D), (F, D), (D, F)
  };

  // Causal multi-head self-attention with ALiBi: h (B, T, D) → (B, T, D).
  Var<float> attention(const Var<float>& h, const Layer& layer) {
    const Index B = h.size(0), T = h.size(1), H = config_.heads, Dh = config_.dim / H;
    // (B, T, D) → (B, T, H, Dh) → (B, H, T, Dh): a view, no copy.
    auto split_heads = [&](const Var<float>& t) { return permute(reshape(t, {B, T, H, Dh}), {0, 2, 1, 3}); };
    const Var<float> q = split_heads(linear(h, layer.wq));
    const Var<float> k = split_heads(linear(h, layer.wk));
    const Var<float> v = split_heads(linear(h, layer.wv));

    Var<float> scores = matmul(q, transpose(k, -1, -2)) * (1.0f / std::sqrt(static_cast<float>(Dh)));  // (B, H, T, T)
    scores = add_alibi(scores, slopes_, 0);
    scores = masked_fill(scores, future_.slice(0, 0, T).slice(1, 0, T), -std::numeric_limits<float>::infinity());
    const Var<float> context = matmul(softmax(scores, -1), v);  // (B, H, T, Dh)

    // Merge the heads back: (B, H, T, Dh) → (B, T, H, Dh) → (B, T, D) (reshape copies this view).
    const Var<float> merged = reshape(permute(context, {0, 2, 1, 3}), {B, T, config_.dim});
    return linear(merged, layer.wo);
  }

  Parameter<float> normal(const Shape& shape, Generator& gen) const {
    return Parameter<float>(random_normal<float>(shape, gen.draw(), 0.0f, config_.init_std));
  }
  static Parameter<float> ones(Index n) { return Parameter<float>(Tensor<float>::full({n}, 1.0f)); }

  TinyAttentionConfig config_;
  Parameter<float> embed_;  // (V, D)
  std::vector<Layer> layers_;
  Parameter<float> final_norm_;  // (D)
  Parameter<float> head_;        // (V, D), only without tied embeddings
  Tensor<float> slopes_;         // (H)
  Tensor<float> future_;         // (seq_len, seq_len): 1 where the key comes after the query
};

// ---- the copy task -----------------------------------------------------------------------------

// Sequences s₁ … s_L SEP s₁ … s_L over `symbols` symbols (ids 0 … symbols−1; SEP = symbols).
// tokens (B, 2L) is the sequence without its last token; targets (B, 2L) the next token at each
// position, −100 where the next token is still in the random first half (or is SEP).
struct CopyTask {
  Index symbols = 16;
  Index length = 8;  // L

  Index vocab() const { return symbols + 1; }
  std::int32_t separator() const { return static_cast<std::int32_t>(symbols); }
  Index seq_len() const { return 2 * length; }

  // Fills preallocated (B, 2L) tensors; batch `index` of stream `seed` is always the same data.
  void fill(std::uint64_t seed, std::uint64_t index, const IndexTensor& tokens, const IndexTensor& targets) const {
    DRT_CHECK(tokens.rank() == 2 && tokens.size(1) == seq_len() && targets.shape() == tokens.shape(),
              "CopyTask::fill: tokens and targets must both be (B, ", seq_len(), "), got ", tokens.shape().str(),
              " and ", targets.shape().str());
    const Index B = tokens.size(0), L = length;
    const std::uint64_t batch_seed = random_bits(seed, index);
    for (Index b = 0; b < B; ++b) {
      // The full sequence has 2L + 1 tokens; position p of it:
      auto sequence = [&](Index p) -> std::int32_t {
        if (p == L) return separator();
        const Index i = p < L ? p : p - L - 1;  // which symbol
        return static_cast<std::int32_t>(random_bits(batch_seed, static_cast<std::uint64_t>(b * L + i)) %
                                         static_cast<std::uint64_t>(symbols));
      };
      for (Index t = 0; t < 2 * L; ++t) {
        tokens(b, t) = sequence(t);
        targets(b, t) = t >= L ? sequence(t + 1) : -100;
      }
    }
  }
};

// Fraction of scored positions (target != −100) where the most likely token is the target.
inline double copy_accuracy(const Tensor<float>& logits, const IndexTensor& targets) {
  const Index B = logits.size(0), T = logits.size(1), V = logits.size(2);
  Index scored = 0, correct = 0;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) {
      const std::int32_t target = targets(b, t);
      if (target == -100) continue;
      Index best = 0;
      for (Index v = 1; v < V; ++v)
        if (logits(b, t, v) > logits(b, t, best)) best = v;
      ++scored;
      correct += best == target;
    }
  return scored ? static_cast<double>(correct) / static_cast<double>(scored) : 0.0;
}

}  // namespace drt::examples
