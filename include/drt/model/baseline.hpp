// drt/model/baseline.hpp — the sliding-window baseline LM (the paper's BaseLM; reference-notes §1.6).
//
// Shapes: B batch, T tokens (any T ≥ 1), D width, V vocabulary, L = sum(decoder_layers) layers.
//
//   tokens (B, T) ──ids < 0 → 0──▶ ──embed──▶ h (B, T, D)
//   h ──L identical layers (sliding-window ALiBi attention + SwiGLU, spec §3)──▶ h
//   h ──norm──▶ · headᵀ ──▶ logits (B, T, V) ──cross-entropy, position t vs label t+1──▶ loss
//
// The same JSON as DRT builds it, minus everything about chunks: no landmarks, no encoder, no
// retrieval, no length constraint. Each layer sees W earlier positions, so the logits at position
// i depend only on tokens i − L·W .. i: the bounded receptive field that DRT's retrieval lifts.
// Unlike DRT, the embedding has no padding row (every row is drawn and trained) and negative ids
// are read as id 0, not pad_id, as the reference's slide_window_lm does.
#pragma once

#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "drt/autodiff/indexing.hpp"
#include "drt/model/blocks.hpp"
#include "drt/model/landmarks.hpp"  // kIgnoreIndex
#include "drt/model/padded_vocab.hpp"
#include "drt/nn/cross_entropy.hpp"

namespace drt {

namespace detail {
inline void check_token_matrix(const IndexTensor& tokens, const char* op) {
  DRT_CHECK(tokens.rank() == 2 && tokens.size(1) >= 1, op, ": tokens must be (B, T) with T >= 1, got ",
            tokens.shape().str());
}
}  // namespace detail

// tokens (B, T) → ids (B, T) in the step arena, with every id < 0 (unscored NIAH positions) read as 0.
inline IndexTensor baseline_ids(const IndexTensor& tokens) {
  detail::check_token_matrix(tokens, "baseline_ids");
  IndexTensor ids = IndexTensor::empty(tokens.shape(), step_arena());
  for (Index b = 0; b < tokens.size(0); ++b)
    for (Index t = 0; t < tokens.size(1); ++t) ids(b, t) = tokens(b, t) < 0 ? 0 : tokens(b, t);
  return ids;
}

// labels (B, T) → targets (B, T) in the step arena: target[t] = label[t+1], the last is ignored.
// Scoring logits[:, :-1] against labels[:, 1:] is the same loss, without slicing the logits.
inline IndexTensor next_token_targets(const IndexTensor& labels) {
  detail::check_token_matrix(labels, "next_token_targets");
  const Index B = labels.size(0), T = labels.size(1);
  IndexTensor targets = IndexTensor::empty(labels.shape(), step_arena());
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t + 1 < T; ++t) targets(b, t) = labels(b, t + 1);
    targets(b, T - 1) = kIgnoreIndex;
  }
  return targets;
}

template <class T>
class SlidingWindowLM {
 public:
  explicit SlidingWindowLM(const ModelConfig& config, std::uint64_t seed = 0) : config_(config), gen_(seed) {
    config_.validate("SlidingWindowLM");
    const ModelConfig& c = config_;
    embed_tokens_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.vocab_size, c.hidden_size}, c.initializer_range, gen_));
    const int layers = std::accumulate(c.decoder_layers.begin(), c.decoder_layers.end(), 0);
    for (int i = 0; i < layers; ++i) layers_.push_back(std::make_unique<DecoderLayer<T>>(c, gen_, c.rms_norm_eps));
    norm_ = std::make_unique<Parameter<T>>(ones_parameter<T>(c.hidden_size));
    if (!c.tie_word_embeddings)
      lm_head_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.vocab_size, c.hidden_size}, c.initializer_range, gen_));
  }
  SlidingWindowLM(const SlidingWindowLM&) = delete;
  SlidingWindowLM& operator=(const SlidingWindowLM&) = delete;

  const ModelConfig& config() const { return config_; }
  int layer_count() const { return static_cast<int>(layers_.size()); }

  // Logits (B, T, V) for tokens (B, T).
  Var<T> logits(const IndexTensor& tokens) const { return padded_head_.visible(padded_logits(tokens)); }

  // The same before the slice: (B, T, V') over the padded table on a GPU, of which the first
  // padded_head_.classes(·) = V columns are real. What the loss scores (see DrtModel::padded_logits).
  Var<T> padded_logits(const IndexTensor& tokens) const {
    Var<T> h = embedding(*embed_tokens_, baseline_ids(tokens));  // no padding row
    for (const auto& layer : layers_) h = (*layer)(h);
    return head_product(h);
  }

  // The final norm and the LM head: rows (..., D) → logits (..., V), over the padded table on a GPU.
  Var<T> head_logits(const Var<T>& h) const { return padded_head_.visible(head_product(h)); }
  // The same before the slice: (..., V') on a GPU.
  Var<T> head_product(const Var<T>& h) const {
    return rms_norm_then(h, *norm_, static_cast<T>(config_.rms_norm_eps),
                         [&](const Var<T>& x) { return linear(x, padded_head_.table(lm_head())); });
  }

  // Moves every parameter and buffer to `device` (see DrtModel::move_to).
  void move_to(Device device) { move_model_to(*this, lm_head_ ? *lm_head_ : *embed_tokens_, padded_head_, device); }
  Device device() const { return embed_tokens_->device(); }

  // Mean next-token cross-entropy over the batch's targets that are not −100 (one global mean,
  // as the reference). `labels` (B, T) defaults to the tokens themselves.
  Var<T> loss(const IndexTensor& tokens, const IndexTensor* labels = nullptr) const {
    if (labels)
      DRT_CHECK(labels->shape() == tokens.shape(), "SlidingWindowLM::loss: labels of shape ", labels->shape().str(),
                " do not match tokens of shape ", tokens.shape().str());
    const IndexTensor targets = next_token_targets(labels ? *labels : tokens);
    const Var<T> scores = padded_logits(tokens);  // scored in place on a GPU, as DrtModel::loss
    return cross_entropy(scores, targets, kIgnoreIndex, padded_head_.classes(scores));
  }

  // Every parameter under its reference state_dict name, in the reference's order. The tied LM
  // head is listed once, as the embedding.
  ParameterList<T> named_parameters() const {
    ParameterList<T> list;
    list.push_back({"language_model.model.embed_tokens.weight", embed_tokens_.get()});
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->collect(layer_prefix(i), list);
    list.push_back({"language_model.model.norm.weight", norm_.get()});
    if (lm_head_) list.push_back({"language_model.lm_head.weight", lm_head_.get()});
    return list;
  }

  // The ALiBi slope buffers, one per layer.
  std::vector<std::pair<std::string, Tensor<T>*>> named_buffers() const {
    std::vector<std::pair<std::string, Tensor<T>*>> list;
    for (std::size_t i = 0; i < layers_.size(); ++i)
      list.push_back({layer_prefix(i) + "self_attn.m", &layers_[i]->self_attn.alibi_slopes});
    return list;
  }

  std::int64_t parameter_count() const { return count_elements(named_parameters()); }

  const Parameter<T>& lm_head() const { return lm_head_ ? *lm_head_ : *embed_tokens_; }
  // The reference saves the tied head under this name as well.
  static std::string tied_head_name() { return "language_model.lm_head.weight"; }
  // The parts that the incremental decoder (drt/inference/baseline_decoder.hpp) runs position by position.
  const Parameter<T>& token_embedding() const { return *embed_tokens_; }
  const std::vector<std::unique_ptr<DecoderLayer<T>>>& layers() const { return layers_; }
  const Parameter<T>& final_norm() const { return *norm_; }

 private:
  static std::string layer_prefix(std::size_t i) { return "language_model.model.layers." + std::to_string(i) + "."; }

  ModelConfig config_;
  Generator gen_;
  // Parameters sit behind unique_ptr so that their addresses never move (optimisers keep them).
  std::unique_ptr<Parameter<T>> embed_tokens_;
  std::vector<std::unique_ptr<DecoderLayer<T>>> layers_;
  std::unique_ptr<Parameter<T>> norm_, lm_head_;
  PaddedVocab<T> padded_head_;  // active on a GPU only
};

}  // namespace drt
