// What both translation units build: the same small DRT (head width 64, so that the attention
// kernels of every version are compiled) and the same tokens.
#pragma once

#include <drt/cuda.cuh>
#include <drt/model.hpp>
#include <drt/optim.hpp>

inline drt::ModelConfig two_unit_config() {
  drt::ModelConfig c;
  c.hidden_size = 128, c.num_attention_heads = 2, c.num_key_value_heads = 2, c.intermediate_size = 64;
  c.vocab_size = 100, c.enc_chunk_size = 63, c.chunk_topk = 2, c.slide_window = 64, c.decoder_layers = {1, 1};
  c.pad_id = 0, c.chunk_id = 99;
  return c;
}

inline drt::IndexTensor two_unit_tokens() {
  drt::IndexTensor tokens = drt::IndexTensor::empty({1, 252});
  for (drt::Index i = 0; i < tokens.numel(); ++i) tokens.data()[i] = 1 + static_cast<int>(i % 97);
  return tokens;
}
