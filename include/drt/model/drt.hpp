// drt/model/drt.hpp — the DRT model: Differentiable Retrieval-based Transformer (spec §2–8).
//
// Shapes: B batch, T raw tokens (a multiple of L_c), C = T / L_c chunks, S = L_c + 1 positions per
// chunk (the last is the landmark), D width, V vocabulary.
//
//   tokens (B, T) ──insert landmarks──▶ ids (B, C·S) ──embed──▶ h
//   h ──lower layers (sliding-window ALiBi attention + SwiGLU)──▶ h_lo
//   h_lo ──per chunk: enc_prenorm, bidirectional RoPE encoder, norm──▶ E (B·C, S, D)
//        E ──chunk_k/v_proj──▶ chunk memory K̃, Ṽ (landmark row zeroed)      κ = E[:, S−1]
//   for each retrieval group g:
//        landmarks of h ──lmk_norm[g]──▶ query ──⟨·, κ⟩/√D, causal, top-k──▶ (index, weight)
//        h ──upper layers of g: attention, GCA over the retrieved chunks, MLP──▶ h
//   h ──norm──▶ · Eᵀ (tied) ──▶ logits (B, C·S, V) ──cross-entropy vs shifted targets──▶ loss
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "drt/autodiff/indexing.hpp"
#include "drt/model/gca_layer.hpp"
#include "drt/model/landmarks.hpp"
#include "drt/model/padded_vocab.hpp"
#include "drt/nn/cross_entropy.hpp"

namespace drt {

struct ForwardOptions {
  bool training = false;         // Gumbel noise in the retrieval's selection (spec §5.3)
  std::uint64_t noise_seed = 0;  // the noise of group g uses random_bits(noise_seed, g)
};

template <class T>
class DrtModel {
 public:
  explicit DrtModel(const ModelConfig& config, std::uint64_t seed = 0) : config_(config), gen_(seed) {
    config_.validate("DrtModel");
    const ModelConfig& c = config_;
    embed_tokens_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.vocab_size, c.hidden_size}, c.initializer_range, gen_));
    embed_tokens_->value().select(0, c.pad_id).fill(T(0));  // the padding row starts at zero
    for (int i = 0; i < c.lower_layers(); ++i) lower_.push_back(std::make_unique<DecoderLayer<T>>(c, gen_, c.rms_norm_eps));
    for (int g = 0; g < c.groups(); ++g) {
      upper_.emplace_back();
      for (int j = 0; j < c.decoder_layers[g + 1]; ++j) upper_[g].push_back(std::make_unique<UpperDecoderLayer<T>>(c, gen_));
      lmk_norms_.push_back(std::make_unique<Parameter<T>>(ones_parameter<T>(c.hidden_size)));
    }
    for (int e = 0; e < c.encoder_layers; ++e)
      encoder_.push_back(std::make_unique<EncoderLayer<T>>(c, gen_, ModelConfig::kEncoderNormEps));
    encoder_norm_ = std::make_unique<Parameter<T>>(ones_parameter<T>(c.hidden_size));
    chunk_k_proj_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen_));
    chunk_v_proj_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.hidden_size, c.hidden_size}, c.initializer_range, gen_));
    enc_prenorm_ = std::make_unique<Parameter<T>>(ones_parameter<T>(c.hidden_size));
    norm_ = std::make_unique<Parameter<T>>(ones_parameter<T>(c.hidden_size));
    if (!c.tie_word_embeddings)
      lm_head_ = std::make_unique<Parameter<T>>(normal_parameter<T>({c.vocab_size, c.hidden_size}, c.initializer_range, gen_));
  }
  DrtModel(const DrtModel&) = delete;
  DrtModel& operator=(const DrtModel&) = delete;

  const ModelConfig& config() const { return config_; }

  // Logits (B, C·S, V), landmark rows included, for raw tokens (B, T).
  Var<T> logits(const IndexTensor& tokens, const ForwardOptions& options = {}) const {
    return padded_head_.visible(padded_logits(tokens, options));
  }

  // The same logits as the head computes them: (B, C·S, V') over the padded table on a GPU, of
  // which the first padded_head_.classes(·) = V columns are real (V' = V on the CPU). What the
  // loss scores, so that no slice is recorded.
  Var<T> padded_logits(const IndexTensor& tokens, const ForwardOptions& options = {}) const {
    const ModelConfig& c = config_;
    const Index S = c.chunk_positions();
    const IndexTensor ids = insert_landmarks(tokens, c.enc_chunk_size, c.chunk_id, c.pad_id);
    Var<T> h = embedding(*embed_tokens_, ids, c.pad_id);
    for (const auto& layer : lower_) h = (*layer)(h);
    const ChunkMemory<T> memory = encode_chunks(h);
    // Every GCA layer reads this memory: on a GPU in bf16 it is rounded once for all of them, and
    // each layer's backward reuses that copy (gca.hpp).
    const std::vector<const void*> memory_storages{memory.keys.value().data(), memory.values.value().data()};
    RoundedOperandReuse rounded_memory(memory_storages);
    for (int g = 0; g < c.groups(); ++g) {
      const Retrieval<T> retrieval = retrieve_for_group(h, g, memory, options);
      for (const auto& layer : upper_[g]) h = (*layer)(h, memory, retrieval, S);
    }
    return head_product(h);
  }

  // The final norm and the LM head: rows (..., D) → logits (..., V). On a GPU the product runs
  // over the padded table (padded_vocab.hpp) and the logits are its first V columns.
  Var<T> head_logits(const Var<T>& h) const { return padded_head_.visible(head_product(h)); }
  // The same before the slice: (..., V') on a GPU.
  Var<T> head_product(const Var<T>& h) const {
    return rms_norm_then(h, *norm_, static_cast<T>(config_.rms_norm_eps),
                         [&](const Var<T>& x) { return linear(x, padded_head_.table(lm_head())); });
  }

  // Moves every parameter and buffer to `device`; the model then runs there through the same
  // code. On a GPU the LM head is padded to a multiple of 64 rows, invisibly (padded_vocab.hpp).
  void move_to(Device device) { move_model_to(*this, lm_head_ ? *lm_head_ : *embed_tokens_, padded_head_, device); }
  Device device() const { return embed_tokens_->device(); }

  // Mean next-token cross-entropy over the targets that are not −100 (spec §2.3, §8). `labels`
  // defaults to the tokens themselves, as in the reference's training. On a GPU it scores the
  // padded logits in place (only their first V columns are classes; padded_vocab.hpp says why).
  Var<T> loss(const IndexTensor& tokens, const ForwardOptions& options = {}, const IndexTensor* labels = nullptr) const {
    const IndexTensor targets = shift_targets(labels ? *labels : tokens, config_.enc_chunk_size);
    const Var<T> scores = padded_logits(tokens, options);
    return cross_entropy(scores, targets, kIgnoreIndex, padded_head_.classes(scores));
  }

  // The chunk encoder over the lower stack's output h (B, C·S, D).
  ChunkMemory<T> encode_chunks(const Var<T>& h) const {
    const ModelConfig& c = config_;
    const Index B = h.size(0), S = c.chunk_positions(), C = h.size(1) / S, D = c.hidden_size;
    Var<T> e = rms_norm(reshape(h, {B * C, S, D}), *enc_prenorm_, static_cast<T>(c.rms_norm_eps));
    for (const auto& layer : encoder_) e = (*layer)(e);
    // The key and value projections read the norm's bf16 copy (rms_norm_then).
    return rms_norm_then(e, *encoder_norm_, static_cast<T>(ModelConfig::kEncoderNormEps),
                         [&](const Var<T>& normed) { return project_chunks(normed, B, C); });
  }

  // Chunk keys and values from the encoder's normed output e (B·C, S, D), and the landmarks.
  ChunkMemory<T> project_chunks(const Var<T>& e, Index B, Index C) const {
    const ModelConfig& c = config_;
    const Index S = c.chunk_positions(), D = c.hidden_size;
    const Var<T> landmarks = reshape(slice(reshape(e, {B, C, S, D}), 2, S - 1, S), {B, C, D});
    auto project = [&](const Parameter<T>& w) {
      Var<T> m = linear(e, w);  // (B·C, S, D)
      Index N = S;
      if (c.drops_landmark_row()) {  // S % 64 == 1: drop the landmark row, plain softmax over 64 keys
        m = slice(m, 1, 0, S - 1);
        N = S - 1;
      } else {  // S % 64 == 0: a zero key/value row = softmax-off-by-one over the real tokens
        Tensor<T> keep = Tensor<T>::full({S, 1}, T(1), step_arena());
        keep(S - 1, 0) = T(0);
        m = m * constant(keep.to(m.device()));
      }
      return reshape(m, {B, C, N, config_.num_attention_heads, config_.head_dim()});
    };
    return ChunkMemory<T>{project(*chunk_k_proj_), project(*chunk_v_proj_), landmarks};
  }

  // Retrieval of group g from the stream h at the group's start (spec §5.1, §5.5).
  Retrieval<T> retrieve_for_group(const Var<T>& h, int g, const ChunkMemory<T>& memory, const ForwardOptions& options) const {
    const Index B = h.size(0), S = config_.chunk_positions(), C = h.size(1) / S, D = config_.hidden_size;
    const Var<T> at_landmarks = reshape(slice(reshape(h, {B, C, S, D}), 2, S - 1, S), {B, C, D});
    const Var<T> query = rms_norm(at_landmarks, *lmk_norms_[g], static_cast<T>(ModelConfig::kLandmarkNormEps));
    return retrieve(query, memory.landmarks, config_.chunk_topk, options.training,
                    random_bits(options.noise_seed, static_cast<std::uint64_t>(g)));
  }

  // Every parameter under its reference state_dict name, in the reference's order. The tied
  // LM head is listed once, as model.embed_tokens.weight.
  ParameterList<T> named_parameters() const {
    ParameterList<T> list;
    list.push_back({"model.embed_tokens.weight", embed_tokens_.get()});
    for (std::size_t i = 0; i < lower_.size(); ++i) lower_[i]->collect("model.lower_layers." + std::to_string(i) + ".", list);
    for (std::size_t g = 0; g < upper_.size(); ++g)
      for (std::size_t j = 0; j < upper_[g].size(); ++j)
        upper_[g][j]->collect("model.upper_layers." + std::to_string(g) + "." + std::to_string(j) + ".", list);
    for (std::size_t g = 0; g < lmk_norms_.size(); ++g)
      list.push_back({"model.lmk_norms." + std::to_string(g) + ".weight", lmk_norms_[g].get()});
    for (std::size_t e = 0; e < encoder_.size(); ++e) encoder_[e]->collect("model.encoder.layers." + std::to_string(e) + ".", list);
    list.push_back({"model.encoder.norm.weight", encoder_norm_.get()});
    list.push_back({"model.chunk_k_proj.weight", chunk_k_proj_.get()});
    list.push_back({"model.chunk_v_proj.weight", chunk_v_proj_.get()});
    list.push_back({"model.enc_prenorm.weight", enc_prenorm_.get()});
    list.push_back({"model.norm.weight", norm_.get()});
    if (lm_head_) list.push_back({"lm_head.weight", lm_head_.get()});
    return list;
  }

  // The ALiBi slope buffers ("...self_attn.m"), one per decoder self-attention layer.
  std::vector<std::pair<std::string, Tensor<T>*>> named_buffers() const {
    std::vector<std::pair<std::string, Tensor<T>*>> list;
    for (std::size_t i = 0; i < lower_.size(); ++i)
      list.push_back({"model.lower_layers." + std::to_string(i) + ".self_attn.m", &lower_[i]->self_attn.alibi_slopes});
    for (std::size_t g = 0; g < upper_.size(); ++g)
      for (std::size_t j = 0; j < upper_[g].size(); ++j)
        list.push_back({"model.upper_layers." + std::to_string(g) + "." + std::to_string(j) + ".self_attn.m",
                        &upper_[g][j]->block.self_attn.alibi_slopes});
    return list;
  }

  std::int64_t parameter_count() const { return count_elements(named_parameters()); }

  const Parameter<T>& lm_head() const { return lm_head_ ? *lm_head_ : *embed_tokens_; }
  // The parts that the incremental decoder (drt/inference/drt_decoder.hpp) runs position by position.
  const Parameter<T>& token_embedding() const { return *embed_tokens_; }
  const std::vector<std::unique_ptr<DecoderLayer<T>>>& lower_layers() const { return lower_; }
  const std::vector<std::unique_ptr<UpperDecoderLayer<T>>>& upper_layers(int g) const { return upper_.at(g); }
  const Parameter<T>& landmark_norm(int g) const { return *lmk_norms_.at(g); }
  const Parameter<T>& final_norm() const { return *norm_; }
  // The reference saves the tied head under this name as well (docs/reference-notes.md §1.1).
  static std::string tied_head_name() { return "lm_head.weight"; }

 private:
  ModelConfig config_;
  Generator gen_;
  // Parameters sit behind unique_ptr so that their addresses never move (optimisers keep them).
  std::unique_ptr<Parameter<T>> embed_tokens_;
  std::vector<std::unique_ptr<DecoderLayer<T>>> lower_;
  std::vector<std::vector<std::unique_ptr<UpperDecoderLayer<T>>>> upper_;
  std::vector<std::unique_ptr<Parameter<T>>> lmk_norms_;
  std::vector<std::unique_ptr<EncoderLayer<T>>> encoder_;
  std::unique_ptr<Parameter<T>> encoder_norm_, chunk_k_proj_, chunk_v_proj_, enc_prenorm_, norm_, lm_head_;
  PaddedVocab<T> padded_head_;  // active on a GPU only
};

}  // namespace drt
