// drt/model/parameter_count.hpp — how many trainable values a config gives, from the config alone.
//
// Shapes (docs/reference-notes.md §1.4): D width, H heads, d = D/H, H_kv decoder key/value heads,
// F SwiGLU width, V vocabulary, G retrieval groups. No Linear has a bias.
//   decoder self-attention  q, o (D, D); k, v (H_kv·d, D)
//   encoder self-attention  q, k, v, o (D, D)          (the encoder always uses H_kv = H)
//   GCA                     q, o (D, D); chunk_k, chunk_v (D, D), shared by all groups
//   SwiGLU                  gate, up (F, D); down (D, F)
//   norms                   (D) each
// The parts follow the reference's table: a layer's own norms count with the layer, the encoder's
// final norm with the encoder; `norms` holds only the model-level ones (enc_prenorm, the final
// norm, one lmk_norm per group). Buffers (the ALiBi slopes) are not parameters.
#pragma once

#include <cstdint>
#include <numeric>

#include "drt/model/config.hpp"

namespace drt {

struct ParameterCount {
  std::int64_t embedding = 0;     // V·D; also the lm_head when tied
  std::int64_t lower_layers = 0;  // decoder_layers[0] plain layers
  std::int64_t upper_layers = 0;  // all groups' layers: plain layer + GCA q/o + gca.pre_norm
  std::int64_t encoder = 0;       // encoder_layers plain layers (H_kv = H) + the encoder's final norm
  std::int64_t chunk_memory = 0;  // chunk_k_proj, chunk_v_proj
  std::int64_t norms = 0;         // enc_prenorm, final norm, lmk_norms
  std::int64_t lm_head = 0;       // V·D, or 0 when tied to the embedding

  std::int64_t total() const {
    return embedding + lower_layers + upper_layers + encoder + chunk_memory + norms + lm_head;
  }
};

// One self-attention block with `kv_heads` key/value heads.
inline std::int64_t attention_parameters(const ModelConfig& c, int kv_heads) {
  const std::int64_t D = c.hidden_size, kv_width = std::int64_t{kv_heads} * c.head_dim();
  return 2 * D * D + 2 * kv_width * D;
}

inline std::int64_t swiglu_parameters(const ModelConfig& c) {
  return 3 * std::int64_t{c.intermediate_size} * c.hidden_size;
}

// Self-attention, SwiGLU and the two RMSNorms around them: a lower layer, an encoder layer
// (kv_heads = H) and a baseline layer all have this shape.
inline std::int64_t plain_layer_parameters(const ModelConfig& c, int kv_heads) {
  return attention_parameters(c, kv_heads) + swiglu_parameters(c) + 2 * std::int64_t{c.hidden_size};
}

// A plain decoder layer plus its grouped cross-attention: q_proj, o_proj and pre_norm.
inline std::int64_t upper_layer_parameters(const ModelConfig& c) {
  const std::int64_t D = c.hidden_size;
  return plain_layer_parameters(c, c.num_key_value_heads) + 2 * D * D + D;
}

// Layers with GCA, over all retrieval groups.
inline std::int64_t upper_layer_count(const ModelConfig& c) {
  if (c.decoder_layers.size() < 2) return 0;
  return std::accumulate(c.decoder_layers.begin() + 1, c.decoder_layers.end(), std::int64_t{0});
}

inline ParameterCount count_parameters(const ModelConfig& c) {
  DRT_CHECK(!c.decoder_layers.empty(), "count_parameters: decoder_layers is empty");
  const std::int64_t D = c.hidden_size, V = c.vocab_size;
  ParameterCount n;
  n.embedding = V * D;
  n.lower_layers = c.lower_layers() * plain_layer_parameters(c, c.num_key_value_heads);
  n.upper_layers = upper_layer_count(c) * upper_layer_parameters(c);
  n.encoder = c.encoder_layers * plain_layer_parameters(c, c.num_attention_heads) + D;
  n.chunk_memory = 2 * D * D;
  n.norms = (2 + std::int64_t{c.groups()}) * D;
  n.lm_head = c.tie_word_embeddings ? 0 : V * D;
  return n;
}

// The sliding-window baseline built from the same config: sum(decoder_layers) plain layers, the
// embedding, the final norm and an lm_head that is tied as the config says. No encoder, no GCA.
inline std::int64_t count_baseline_parameters(const ModelConfig& c) {
  const std::int64_t D = c.hidden_size, V = c.vocab_size;
  const std::int64_t layers = std::accumulate(c.decoder_layers.begin(), c.decoder_layers.end(), std::int64_t{0});
  return V * D + layers * plain_layer_parameters(c, c.num_key_value_heads) + D + (c.tie_word_embeddings ? 0 : V * D);
}

}  // namespace drt
