// drt/model/flops.hpp — the model FLOPs of one training token, for model FLOPs utilisation.
//
// Counted the usual way (PaLM appendix B): a multiply-add is 2 FLOPs, and backward costs twice
// forward, so a GEMM weight of n values costs 6·n per position and an attention score/value pair
// costs 12·(head width) per key per head. Elementwise work, norms and the retrieval's top-k are
// left out. DRT runs S = L_c + 1 positions per L_c raw tokens (the landmark), so its per-token
// figure is the per-position figure times S / L_c.
//
// Per position (D width, W window, S chunk positions, N keys per stored chunk, Kc retrieved):
//   GEMM weights      6 · (layer weights + GCA q/o + chunk_k/v + encoder + LM head V·D)
//   window attention  12 · D · (W + 1)      per decoder layer (keys at full window)
//   chunk encoder     12 · D · S            per encoder layer
//   GCA               12 · D · Kc · N       per upper layer
#pragma once

#include "drt/model/parameter_count.hpp"

namespace drt {

inline double drt_training_flops_per_token(const ModelConfig& c) {
  const double D = c.hidden_size, V = c.vocab_size, S = c.chunk_positions();
  const double N = c.drops_landmark_row() ? S - 1 : S;
  const ParameterCount n = count_parameters(c);
  const double gemm_weights = double(n.lower_layers + n.upper_layers + n.encoder + n.chunk_memory) + V * D;
  const double decoder_layers = double(c.lower_layers() + upper_layer_count(c));
  const double attention = 12 * D * (c.slide_window + 1) * decoder_layers + 12 * D * S * c.encoder_layers +
                           12 * D * c.chunk_topk * N * double(upper_layer_count(c));
  return (6 * gemm_weights + attention) * S / c.enc_chunk_size;
}

inline double baseline_training_flops_per_token(const ModelConfig& c) {
  const double D = c.hidden_size, V = c.vocab_size;
  const double layers = double(count_baseline_parameters(c) - std::int64_t(V * D) * (c.tie_word_embeddings ? 1 : 2) -
                               std::int64_t(D));
  const double decoder_layers = std::accumulate(c.decoder_layers.begin(), c.decoder_layers.end(), 0.0);
  return 6 * (layers + V * D) + 12 * D * (c.slide_window + 1) * decoder_layers;
}

}  // namespace drt
