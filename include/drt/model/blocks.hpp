// drt/model/blocks.hpp — the pre-norm transformer block and its two attentions (spec §3, §4).
//
// Shapes: B batch, T positions, D width, H heads, H_kv key/value heads, d = D / H, F MLP width.
//
//   DecoderAttention   x (B, T, D) → (B, T, D)   causal sliding window (W + 1 keys) with ALiBi
//   EncoderAttention   x (N, S, D) → (N, S, D)   bidirectional inside each chunk, with RoPE (and,
//                                                 opt-in, a symmetric ALiBi bias −m_h·|i − j|)
//   SwiGluMlp          x (..., D) → (..., D)     down(silu(gate x) ⊙ up x)
//   Block<Attention>   h ↦ a = h + attn(norm₁ h);  a + mlp(norm₂ a)
//
// The same Block serves the lower decoder layers, the upper layers' self-attention part, the
// chunk encoder and the baseline LM: only the attention differs.
#pragma once

#include <cmath>
#include <memory>

#include "drt/attention/window_attention.hpp"
#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/model/config.hpp"
#include "drt/model/parameters.hpp"
#include "drt/nn/alibi.hpp"
#include "drt/nn/rms_norm.hpp"
#include "drt/nn/rope.hpp"
#include "drt/nn/softmax.hpp"
#include "drt/nn/swiglu.hpp"

namespace drt {

// The four projections every attention here has, under the reference's names.
template <class T>
struct AttentionProjections {
  Parameter<T> q_proj, k_proj, v_proj, o_proj;

  AttentionProjections(const ModelConfig& c, int kv_heads, Generator& gen)
      : q_proj(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen)),
        k_proj(normal_parameter<T>({Index(kv_heads) * c.head_dim(), c.hidden_size}, c.initializer_range, gen)),
        v_proj(normal_parameter<T>({Index(kv_heads) * c.head_dim(), c.hidden_size}, c.initializer_range, gen)),
        o_proj(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen)) {}

  void collect(const std::string& prefix, ParameterList<T>& list) {
    list.push_back({prefix + "q_proj.weight", &q_proj});
    list.push_back({prefix + "k_proj.weight", &k_proj});
    list.push_back({prefix + "v_proj.weight", &v_proj});
    list.push_back({prefix + "o_proj.weight", &o_proj});
  }
};

template <class T>
struct DecoderAttention : AttentionProjections<T> {
  using AttentionProjections<T>::q_proj, AttentionProjections<T>::k_proj, AttentionProjections<T>::v_proj,
      AttentionProjections<T>::o_proj;
  Tensor<T> alibi_slopes;  // (H); the reference stores it as the buffer "self_attn.m"
  int heads, kv_heads, head_dim, window;

  DecoderAttention(const ModelConfig& c, Generator& gen)
      : AttentionProjections<T>(c, c.num_key_value_heads, gen),
        alibi_slopes(drt::alibi_slopes<T>(c.num_attention_heads)),
        heads(c.num_attention_heads), kv_heads(c.num_key_value_heads), head_dim(c.head_dim()), window(c.slide_window) {}

  Var<T> operator()(const Var<T>& x) const {
    const Index B = x.size(0), L = x.size(1);
    const auto qkv = linear_shared_input(x, {&q_proj, &k_proj, &v_proj});
    const Var<T> q = reshape(qkv[0], {B, L, heads, head_dim});
    const Var<T> k = reshape(qkv[1], {B, L, kv_heads, head_dim});
    const Var<T> v = reshape(qkv[2], {B, L, kv_heads, head_dim});
    std::shared_ptr<void> rounded;  // o's bf16 copy, for o_proj (GPU, bf16)
    const Var<T> o = reshape(window_attention(q, k, v, alibi_slopes, window, T(1) / std::sqrt(T(head_dim)), &rounded),
                             {B, L, Index(heads) * head_dim});
    return with_rounded(o, std::move(rounded), [&] { return linear(o, o_proj); });
  }

};

template <class T>
struct EncoderAttention : AttentionProjections<T> {
  using AttentionProjections<T>::q_proj, AttentionProjections<T>::k_proj, AttentionProjections<T>::v_proj,
      AttentionProjections<T>::o_proj;
  int heads, head_dim;
  bool alibi;  // config.encoder_alibi

  // The encoder's key/value heads always equal its query heads (docs/reference-notes.md §1.4).
  EncoderAttention(const ModelConfig& c, Generator& gen)
      : AttentionProjections<T>(c, c.num_attention_heads, gen),
        heads(c.num_attention_heads), head_dim(c.head_dim()), alibi(c.encoder_alibi) {}

  // The opt-in recency bias (H, S, S): −m_h·|i − j| with the decoder's slopes. RoPE alone starts
  // with no preference for near positions, so features such as "the previous token is ':'" must
  // be learnt from nothing; ALiBi's steepest head starts close to such a neighbour average.
  static Tensor<T> symmetric_alibi(int heads, Index S) {
    const Tensor<T> m = alibi_slopes<T>(heads);
    Tensor<T> bias = Tensor<T>::empty({heads, S, S}, step_arena());
    for (int h = 0; h < heads; ++h)
      for (Index i = 0; i < S; ++i)
        for (Index j = 0; j < S; ++j) bias(h, i, j) = -m.data()[h] * static_cast<T>(i > j ? i - j : j - i);
    return bias;
  }

  // Each of the N chunks is its own sequence of S positions; RoPE positions restart at 0.
  Var<T> operator()(const Var<T>& x) const {
    const Index N = x.size(0), S = x.size(1);
    const T theta = static_cast<T>(ModelConfig::kEncoderRopeTheta);
    auto heads_first = [&](const Var<T>& projected) {  // (N, S, D) → (N, H, S, d)
      return permute(reshape(projected, {N, S, heads, head_dim}), {0, 2, 1, 3});
    };
    const auto qkv = linear_shared_input(x, {&q_proj, &k_proj, &v_proj});
    const Var<T> q = rope(heads_first(qkv[0]), theta), k = rope(heads_first(qkv[1]), theta);
    const Var<T> v = heads_first(qkv[2]);
    Var<T> scores = matmul(q, transpose(k, -1, -2)) * (T(1) / std::sqrt(T(head_dim)));  // (N, H, S, S)
    if (alibi) scores = scores + constant(symmetric_alibi(heads, S).to(x.device()));
    const Var<T> p = softmax(scores, -1);
    const Var<T> o = permute(matmul(p, v), {0, 2, 1, 3});  // (N, S, H, d)
    return linear(reshape(o, {N, S, Index(heads) * head_dim}), o_proj);
  }

};

template <class T>
struct SwiGluMlp {
  Parameter<T> gate_proj, up_proj, down_proj;

  SwiGluMlp(const ModelConfig& c, Generator& gen)
      : gate_proj(normal_parameter<T>({c.intermediate_size, c.hidden_size}, c.initializer_range, gen)),
        up_proj(normal_parameter<T>({c.intermediate_size, c.hidden_size}, c.initializer_range, gen)),
        down_proj(normal_parameter<T>({c.hidden_size, c.intermediate_size}, c.initializer_range, gen)) {}

  Var<T> operator()(const Var<T>& x) const { return swiglu_mlp(x, gate_proj, up_proj, down_proj); }

  void collect(const std::string& prefix, ParameterList<T>& list) {
    list.push_back({prefix + "gate_proj.weight", &gate_proj});
    list.push_back({prefix + "up_proj.weight", &up_proj});
    list.push_back({prefix + "down_proj.weight", &down_proj});
  }
};

template <class T, class Attention>
struct Block {
  Parameter<T> input_layernorm, post_attention_layernorm;
  Attention self_attn;
  SwiGluMlp<T> mlp;
  T eps;

  Block(const ModelConfig& c, Generator& gen, double norm_eps)
      : input_layernorm(ones_parameter<T>(c.hidden_size)), post_attention_layernorm(ones_parameter<T>(c.hidden_size)),
        self_attn(c, gen), mlp(c, gen), eps(static_cast<T>(norm_eps)) {}

  // The attention half: a = h + attn(norm₁ h).
  Var<T> attend(const Var<T>& h) const {
    return h + rms_norm_then(h, input_layernorm, eps, [&](const Var<T>& x) { return self_attn(x); });
  }
  // The MLP half, reading its input from `mlp_input` (upper layers feed it a + GCA(a), spec §7)
  // and adding its output to `residual`.
  Var<T> feed_forward(const Var<T>& residual, const Var<T>& mlp_input) const {
    return residual + rms_norm_then(mlp_input, post_attention_layernorm, eps, [&](const Var<T>& x) { return mlp(x); });
  }
  Var<T> operator()(const Var<T>& h) const {
    const Var<T> a = attend(h);
    return feed_forward(a, a);
  }

  void collect(const std::string& prefix, ParameterList<T>& list) {
    self_attn.collect(prefix + "self_attn.", list);
    mlp.collect(prefix + "mlp.", list);
    list.push_back({prefix + "input_layernorm.weight", &input_layernorm});
    list.push_back({prefix + "post_attention_layernorm.weight", &post_attention_layernorm});
  }
};

template <class T>
using DecoderLayer = Block<T, DecoderAttention<T>>;
template <class T>
using EncoderLayer = Block<T, EncoderAttention<T>>;

}  // namespace drt
