// drt/model/gca_layer.hpp — the chunk memory, the GCA layer and the upper decoder layer (spec §4, §6.2, §7).
//
// Shapes: B batch, C chunks, S = L_c + 1 positions per chunk, N keys per stored chunk (S, or
// S − 1 when the landmark row is dropped), D width, H heads, d = D / H, k retrieved chunks.
//
//   ChunkMemory        k, v (B, C, N, H, d): the encoder output projected by chunk_k/v_proj;
//                      landmarks κ (B, C, D)
//   GcaLayer           a (B, C·S, D) → (B, C·S, D): queries of chunk c+1 attend to the chunks
//                      that landmark c retrieved; chunk 0 gets 0
//   UpperDecoderLayer  a = h + attn(norm₁ h);  c = a + gca(a);  out = a + mlp(norm₂ c)
//                      (the GCA output reaches the stream only through the MLP input); opt-in
//                      (gca_residual "standard"): out = c + mlp(norm₂ c)
#pragma once

#include <cmath>

#include "drt/attention/gca.hpp"
#include "drt/autodiff/elementwise.hpp"
#include "drt/model/blocks.hpp"
#include "drt/model/retrieval.hpp"

namespace drt {

template <class T>
struct ChunkMemory {
  Var<T> keys, values;  // (B, C, N, H, d)
  Var<T> landmarks;     // κ (B, C, D)
};

template <class T>
struct GcaLayer {
  Parameter<T> pre_norm, q_proj, o_proj;
  int heads, head_dim;
  T eps;

  GcaLayer(const ModelConfig& c, Generator& gen)
      : pre_norm(ones_parameter<T>(c.hidden_size)),
        q_proj(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen)),
        o_proj(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen)),
        heads(c.num_attention_heads), head_dim(c.head_dim()), eps(static_cast<T>(c.rms_norm_eps)) {}

  Var<T> operator()(const Var<T>& a, const ChunkMemory<T>& memory, const Retrieval<T>& retrieval, Index S) const {
    const Index B = a.size(0), C = a.size(1) / S, D = a.size(2), Z = B * (C - 1), k = retrieval.index.size(2);
    if (C == 1) return constant(Tensor<T>::zeros(a.shape(), step_arena(), a.device()));  // nothing to retrieve from
    // Queries of chunks 1..C−1 as (Z, H, S, d).
    Var<T> q = rms_norm_then(a, pre_norm, eps, [&](const Var<T>& x) { return linear(x, q_proj); });
    q = reshape(q, {B, C, S, heads, head_dim});
    q = reshape(permute(slice(q, 1, 1, C), {0, 1, 3, 2, 4}), {Z, heads, S, head_dim});
    // Chunk c+1 uses what landmark c retrieved: landmarks 0..C−2.
    const IndexTensor index = retrieval.index.slice(1, 0, C - 1).contiguous(step_arena()).reshape({Z, k});
    const Var<T> weight = reshape(slice(retrieval.weight, 1, 0, C - 1), {Z, k});
    Var<T> o = gca(q, memory.keys, memory.values, index, weight, T(1) / std::sqrt(T(head_dim)));
    o = reshape(permute(reshape(o, {B, C - 1, heads, S, head_dim}), {0, 1, 3, 2, 4}), {B, (C - 1) * S, D});
    const Var<T> first_chunk = constant(Tensor<T>::zeros({B, S, D}, step_arena(), a.device()));
    return concat({first_chunk, linear(o, o_proj)}, 1);
  }

  void collect(const std::string& prefix, ParameterList<T>& list) {
    list.push_back({prefix + "pre_norm.weight", &pre_norm});
    list.push_back({prefix + "q_proj.weight", &q_proj});
    list.push_back({prefix + "o_proj.weight", &o_proj});
  }
};

template <class T>
struct UpperDecoderLayer {
  DecoderLayer<T> block;  // self-attention, MLP and their norms
  GcaLayer<T> gca;
  bool standard_residual;  // config.gca_standard_residual

  UpperDecoderLayer(const ModelConfig& c, Generator& gen)
      : block(c, gen, c.rms_norm_eps), gca(c, gen), standard_residual(c.gca_standard_residual) {}

  Var<T> operator()(const Var<T>& h, const ChunkMemory<T>& memory, const Retrieval<T>& retrieval, Index S) const {
    const Var<T> a = block.attend(h);
    return combine(a, gca(a, memory, retrieval, S));
  }

  // The layer's output from the attention half `a` and the GCA output (the incremental decoder
  // computes both its own way and finishes with this).
  Var<T> combine(const Var<T>& a, const Var<T>& gca_out) const {
    const Var<T> c = a + gca_out;
    // The reference keeps the GCA output off the stream (its comment: the standard form raised
    // perplexity); the standard form gives GCA a direct path to the logits, one that does not
    // wait for the MLP to learn to pass it on.
    return block.feed_forward(standard_residual ? c : a, c);
  }

  void collect(const std::string& prefix, ParameterList<T>& list) {
    block.self_attn.collect(prefix + "self_attn.", list);
    gca.collect(prefix + "gca.", list);
    block.mlp.collect(prefix + "mlp.", list);
    list.push_back({prefix + "input_layernorm.weight", &block.input_layernorm});
    list.push_back({prefix + "post_attention_layernorm.weight", &block.post_attention_layernorm});
  }
};

}  // namespace drt
