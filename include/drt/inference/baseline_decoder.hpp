// drt/inference/baseline_decoder.hpp — incremental decoding for the sliding-window baseline LM.
//
// Shapes: L positions per segment, D width, W window, Hkv key/value heads, d head width.
// State: one WindowKvCache (W, Hkv, d) per layer, nothing else: the baseline's memory and
// compute per token are constant, and so is what it can see (L_layers · W tokens back).
#pragma once

#include <memory>
#include <vector>

#include "drt/inference/decoder.hpp"
#include "drt/inference/window_cache.hpp"
#include "drt/model/baseline.hpp"

namespace drt {

template <class T>
class BaselineDecoder final : public IncrementalDecoder<T> {
 public:
  explicit BaselineDecoder(const SlidingWindowLM<T>& model) : model_(model) {
    const ModelConfig& c = model.config();
    for (int i = 0; i < model.layer_count(); ++i)
      caches_.emplace_back(c.slide_window, c.num_key_value_heads, c.head_dim(), model.device());
  }

  std::size_t state_bytes() const override {
    std::size_t bytes = 0;
    for (const auto& cache : caches_) bytes += cache.bytes();
    return bytes;
  }
  Index vocab_size() const override { return model_.config().vocab_size; }

 protected:
  // Like baseline_ids: an id below 0 (an unscored NIAH position) reads as 0.
  void append_positions(std::int32_t token, std::vector<std::int32_t>& ids) override { ids.push_back(token < 0 ? 0 : token); }

  Var<T> advance(const std::vector<std::int32_t>& ids) override {
    const IndexTensor id_tensor = IndexTensor::from({1, static_cast<Index>(ids.size())}, ids);
    Var<T> h = embedding(model_.token_embedding(), id_tensor);
    for (std::size_t i = 0; i < caches_.size(); ++i) {
      const DecoderLayer<T>& layer = *model_.layers()[i];
      const Var<T> a = attend_block_cached(layer, h, caches_[i]);
      h = layer.feed_forward(a, a);
    }
    return h;
  }

  Var<T> head(const Var<T>& rows) const override { return model_.head_logits(rows); }

 private:
  const SlidingWindowLM<T>& model_;
  std::vector<WindowKvCache<T>> caches_;
};

}  // namespace drt
