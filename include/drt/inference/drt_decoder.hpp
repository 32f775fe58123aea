// drt/inference/drt_decoder.hpp — incremental decoding for DRT (spec §9), one token or one
// segment at a time, on the CPU or the GPU, with a chunk memory in RAM or on disk.
//
// Shapes: L positions in this segment (p0 .. p0+L−1; chunk c = p / S, slot s = p mod S, the
// landmark at s = S − 1), S = L_c + 1, N keys per stored chunk, D width, H heads, d head width,
// k retrieved chunks, W window, G retrieval groups, E stored chunks.
//
// State (memory independent of the context's length except the chunk store):
//   caches        one WindowKvCache (W, Hkv, d) per decoder layer, lower and upper, on the device
//   chunk_rows    the lower stack's output for the chunk being built, (S, D): position p in row p mod S
//   store         every completed chunk: keys/values (N, H, d) and landmark κ (D), in host memory
//                 or a file; on the GPU the first landmarks κ (at most a fixed number of them) are
//                 mirrored on the device for scoring, and the later ones streamed in from the store
//   current[g]    what the latest landmark retrieved for group g: k chunk ids and weights
//   rounded       with bf16 GEMMs on the GPU, the weight matrices' bf16 copies (2 bytes a weight),
//                 made by the first segment and kept for the later ones
//
// A segment goes through like the batch forward (drt.hpp), restricted to its own rows:
//   ids ──embed, lower layers (cached attention)──▶ h ──rows of completed chunks──▶ encoder ──▶ store
//   for each group g:
//     landmark rows of the segment ──lmk_norm[g] (as in training; the reference skips it when
//       decoding, spec §14 A5)──▶ exact top-k over every stored κ_e with e < c ──▶ retrieval
//     upper layers: cached attention, then GCA for the rows of chunk c over what landmark c − 1
//       retrieved (in this segment, or current[g] from an earlier one), then the MLP
//   current[g] ← the segment's last retrieval
//
// One token is a segment of one position; the token that completes a chunk brings its landmark
// along (the reference's two-position step, spec §9.4). A segment's first chunk uses the
// retrieval carried over from the previous segment: the reference's segmented forward leaves that
// chunk without GCA (spec §14 A7), this does not. Batch and incremental outputs agree (spec §9.5;
// tests/test_decoding.cpp).
//
// On the GPU, step() of a token that does not complete a chunk is one replay of a recorded CUDA
// graph (step_recorder.hpp): the token id and the position live on the device, the retrieved
// chunks of the current retrieval are streamed from the store to the device once per chunk
// boundary, and the graph is recorded again after every boundary (every S − 1 tokens), when the
// retrieval it reads has changed. Everything else (a landmark step, a prefill segment) runs op by
// op, like on the CPU. tests/cuda/test_cuda_decoding.cu compares the GPU with the CPU and the
// graph with the op-by-op step.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <vector>

#include "drt/inference/chunk_store.hpp"
#include "drt/inference/decoder.hpp"
#include "drt/inference/step_recorder.hpp"
#include "drt/inference/window_cache.hpp"
#include "drt/model/drt.hpp"
#include "drt/nn/topk.hpp"

namespace drt {

// What one landmark retrieved for one group: k chunk ids (−1 = empty slot) and fusion weights.
template <class T>
struct ChunkRetrieval {
  std::vector<std::int32_t> index;
  std::vector<T> weight;
  bool empty() const {
    return std::all_of(weight.begin(), weight.end(), [](T w) { return w == T(0); });
  }
};

// Exact causal retrieval for one landmark of chunk c: the k best of κ_0 .. κ_{c−1} by
// ⟨query, κ_e⟩ / √D (scores given, one per stored chunk), weights the softmax of the chosen
// scores; ties go to the earlier chunk. Slots beyond the c visible chunks stay empty (index −1,
// weight 0), as in the batch retrieval.
template <class T>
ChunkRetrieval<T> select_chunks(const T* scores, Index visible, int k) {
  std::vector<std::int32_t> order(static_cast<std::size_t>(visible));
  std::iota(order.begin(), order.end(), 0);
  const Index chosen = std::min<Index>(visible, k);
  std::partial_sort(order.begin(), order.begin() + chosen, order.end(), [&](std::int32_t a, std::int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  ChunkRetrieval<T> r{std::vector<std::int32_t>(static_cast<std::size_t>(k), -1), std::vector<T>(static_cast<std::size_t>(k), T(0))};
  if (chosen == 0) return r;
  const T top = scores[order[0]];
  T total = 0;
  for (Index j = 0; j < chosen; ++j) {
    r.index[j] = order[j];
    total += (r.weight[j] = std::exp(scores[order[j]] - top));
  }
  for (Index j = 0; j < chosen; ++j) r.weight[j] /= total;
  return r;
}

template <class T>
class DrtDecoder final : public IncrementalDecoder<T> {
 public:
  // Retrieval's GPU memory by default (bound_retrieval_memory): 131,072 landmarks on the device
  // (8.4M tokens of context; 384 MiB at D = 768 in fp32), scored in blocks of 32,768 chunks.
  static constexpr Index kMirroredLandmarks = Index(1) << 17, kScoreBlock = Index(1) << 15;

  // `store` defaults to a MemoryChunkStore; pass a MappedChunkStore to keep the chunks on disk.
  // The decoder runs on the model's device.
  explicit DrtDecoder(const DrtModel<T>& model, std::unique_ptr<ChunkStore<T>> store = nullptr)
      : model_(model), c_(model.config()), device_(model.device()), S_(c_.chunk_positions()),
        N_(c_.drops_landmark_row() ? S_ - 1 : S_), store_(std::move(store)) {
    if (!store_) store_ = std::make_unique<MemoryChunkStore<T>>(N_, c_.hidden_size);
    DRT_CHECK(store_->keys_per_chunk() == N_ && store_->width() == c_.hidden_size && store_->size() == 0,
              "DrtDecoder: the chunk store must be empty and hold ", N_, " keys of width ", c_.hidden_size,
              " per chunk; it holds ", store_->keys_per_chunk(), " of width ", store_->width());
    const int layers = c_.lower_layers() + std::accumulate(c_.decoder_layers.begin() + 1, c_.decoder_layers.end(), 0);
    for (int i = 0; i < layers; ++i)
      caches_.emplace_back(c_.slide_window, c_.num_key_value_heads, c_.head_dim(), device_);
    chunk_rows_ = Tensor<T>::zeros({S_, c_.hidden_size}, nullptr, device_);
    current_.resize(static_cast<std::size_t>(c_.groups()));
    if (device_ != Device::cpu) {
      token_ = IndexTensor::zeros({1}, nullptr, device_);
      position_ = IndexTensor::zeros({1}, nullptr, device_);
      logits_ = Tensor<T>::zeros({c_.vocab_size}, nullptr, device_);
      on_device_.resize(static_cast<std::size_t>(c_.groups()));
      recorder_ = make_step_recorder(device_);
    }
  }

  const ChunkStore<T>& chunk_store() const { return *store_; }
  Index positions() const { return next_position_; }
  // The retrieval the next tokens use in group g (what the latest landmark chose).
  const ChunkRetrieval<T>& current_retrieval(int g) const { return current_.at(g); }

  // On the GPU: keep every stored chunk's keys and values on the device instead of in the store
  // (only κ goes on being mirrored). GCA then reads them in place instead of having them copied
  // in from host memory at every segment, which is what makes a prefill fast; the price is
  // 2·N·D values of GPU memory per chunk (0.4 MB at config_63 in fp32, 6 GB at 1M tokens). The
  // store stays empty. Call before the first token.
  void keep_chunks_on_device(bool on) {
    DRT_CHECK(!on || device_ != Device::cpu, "DrtDecoder::keep_chunks_on_device: the model is on the CPU");
    DRT_CHECK(stored_chunks() == 0, "DrtDecoder::keep_chunks_on_device: call it before any chunk is stored");
    chunks_on_device_ = on;
  }
  Index stored_chunks() const { return chunks_on_device_ ? landmarks_on_device_count_ : store_->size(); }

  // On the GPU with the chunk memory in the store: retrieval keeps at most `mirrored` landmarks κ
  // on the device and scores in blocks of `block` stored chunks, streaming the landmarks past the
  // mirrored ones in from the store block by block. GPU memory for retrieval is then bounded
  // (mirrored + block rows of D, and two n × block score matrices for a segment's n landmarks),
  // whatever the context's length; the price is one copy from host memory per block past the
  // mirror, per segment and retrieval group. Call before the first token. (With
  // keep_chunks_on_device every κ stays on the device.)
  void bound_retrieval_memory(Index mirrored, Index block) {
    DRT_CHECK(mirrored >= 0 && block >= 1, "DrtDecoder::bound_retrieval_memory: ", mirrored, " mirrored landmarks and blocks of ",
              block, " (need ≥ 0 and ≥ 1)");
    DRT_CHECK(stored_chunks() == 0, "DrtDecoder::bound_retrieval_memory: call it before any chunk is stored");
    mirrored_limit_ = mirrored;
    score_block_ = block;
  }
  // How many landmarks κ are on the device now.
  Index mirrored_landmarks() const { return landmarks_on_device_count_; }

  // On the GPU: whether step() replays a recorded graph (the default) or issues the same kernels
  // one by one (for comparison and debugging).
  void use_step_graph(bool on) {
    use_graph_ = on;
    if (recorder_) recorder_->reset();
  }
  // How many times the step graph has been recorded, and the launches one replay stands for.
  Index step_graph_recordings() const { return recordings_; }
  std::size_t step_graph_launches() const { return recorder_ ? recorder_->launches() : 0; }

  Tensor<T> step(std::int32_t token) override {
    const bool completes_chunk = tokens_in_chunk_ + 1 == c_.enc_chunk_size;
    if (device_ == Device::cpu || completes_chunk) return IncrementalDecoder<T>::step(token);
    DRT_CHECK(token < c_.vocab_size, "DrtDecoder::step: token ", token, " is outside the vocabulary of ", c_.vocab_size);
    NoGradGuard no_grad;
    token_.copy_from(IndexTensor::from({1}, {token < 0 ? c_.pad_id : token}));
    if (use_graph_ && recorder_) {
      if (!recorder_->recorded()) {
        recorder_->record([this] { token_step_on_device(); });
        ++recordings_;
      }
      recorder_->replay();
    } else {
      token_step_on_device();
    }
    tape().reset();
    for (auto& cache : caches_) cache.note_pushed(1);
    ++next_position_;
    ++tokens_in_chunk_;
    this->count_tokens(1);
    return logits_.to(Device::cpu);
  }

  std::size_t state_bytes() const override {
    std::size_t bytes = static_cast<std::size_t>(chunk_rows_.numel()) * sizeof(T);
    for (const auto& cache : caches_) bytes += cache.bytes();
    return bytes;
  }
  Index vocab_size() const override { return c_.vocab_size; }

 protected:
  void append_positions(std::int32_t token, std::vector<std::int32_t>& ids) override {
    ids.push_back(token < 0 ? c_.pad_id : token);  // as insert_landmarks
    if (++tokens_in_chunk_ == c_.enc_chunk_size) {
      ids.push_back(c_.chunk_id);
      tokens_in_chunk_ = 0;
    }
  }

  Var<T> advance(const std::vector<std::int32_t>& ids) override {
    if (recorder_) recorder_->reset();  // this segment may change what a recorded step reads
    // bf16 GEMMs on the GPU: the weights are rounded once, at the first segment, not at every one
    // (the model does not change while a decoder reads it).
    if (weight_storages_.empty()) weight_storages_ = weight_storages(model_.named_parameters());
    RoundedOperandReuse weights(weight_storages_);
    for (const RoundedOperandReuse::Entry& e : rounded_weights_) weights.remember(e.source, e.elements, e.copy);
    const Index L = static_cast<Index>(ids.size()), p0 = next_position_;
    const IndexTensor id_tensor = IndexTensor::from({1, L}, ids);
    Var<T> h = embedding(model_.token_embedding(), id_tensor, c_.pad_id);
    std::size_t layer = 0;
    for (const auto& lower : model_.lower_layers()) {
      const Var<T> a = attend_block_cached(*lower, h, caches_[layer++]);
      h = lower->feed_forward(a, a);
    }
    store_completed_chunks(h.value(), p0);
    for (int g = 0; g < c_.groups(); ++g) {
      const std::map<Index, ChunkRetrieval<T>> retrieved = retrieve_in_segment(h, g, p0);
      const SegmentMemory memory = segment_memory(p0, L, g, retrieved);
      // The group's GCA layers all read this memory: in bf16 it is rounded once for all of them.
      const std::vector<const void*> memory_storages{memory.keys.data(), memory.values.data()};
      RoundedOperandReuse rounded_memory(memory_storages);
      for (const auto& upper : model_.upper_layers(g)) {
        const Var<T> a = attend_block_cached(upper->block, h, caches_[layer++]);
        h = upper->combine(a, gca_rows(upper->gca, a, memory));
      }
      if (!retrieved.empty()) current_[g] = retrieved.rbegin()->second;
    }
    next_position_ += L;
    rounded_weights_ = weights.copies();
    if (device_ != Device::cpu) {
      DRT_CHECK(next_position_ < std::numeric_limits<std::int32_t>::max(), "DrtDecoder: ", next_position_,
                " positions do not fit the GPU's 32-bit position counter");
      position_.copy_from(IndexTensor::from({1}, {static_cast<std::int32_t>(next_position_)}));
      upload_current_retrievals();
    }
    return h;
  }

  Var<T> head(const Var<T>& rows) const override { return model_.head_logits(rows); }

 private:
  // The retrieved chunks of current[g], on the device, for the recorded step's GCA.
  struct RetrievalOnDevice {
    ChunkRetrieval<T> retrieval;  // what the buffers below hold
    Tensor<T> keys, values;       // (k, N, H, d): slot j holds chunk retrieval.index[j]
    IndexTensor slot;             // (k): j, or −1 for an empty slot
    Tensor<T> weight;             // (k)
  };

  Index chunk_of(Index position) const { return position / S_; }
  bool is_landmark(Index position) const { return position % S_ == S_ - 1; }

  // One token that does not complete a chunk, on the device, reading its id and position from
  // token_ and position_ and reading nothing back: the work that step() records into a graph.
  // Host-side counters are advanced by step() afterwards.
  void token_step_on_device() {
    const std::int32_t* position = position_.data();
    const Index D = c_.hidden_size;
    Tensor<T> x = Tensor<T>::empty({1, 1, D}, step_arena(), device_);
    DRT_ON_DEVICE("DrtDecoder", cuda::decode::embed_rows(model_.token_embedding().value(), token_, x));
    Var<T> h = constant(x);
    std::size_t layer = 0;
    for (const auto& lower : model_.lower_layers()) {
      const Var<T> a = attend_block_cached(*lower, h, caches_[layer++], position);
      h = lower->feed_forward(a, a);
    }
    const Tensor<T> row = h.value().contiguous(step_arena());
    DRT_ON_DEVICE("DrtDecoder", cuda::decode::write_row_at_position(row, chunk_rows_, 0, position));
    for (int g = 0; g < c_.groups(); ++g)
      for (const auto& upper : model_.upper_layers(g)) {
        const Var<T> a = attend_block_cached(upper->block, h, caches_[layer++], position);
        h = upper->combine(a, gca_token_on_device(upper->gca, a, g));
      }
    logits_.copy_from(head(h).value().select(0, 0).select(0, 0));
    DRT_ON_DEVICE("DrtDecoder", cuda::decode::advance_position(position_.data(), 1));
  }

  // The GCA layer's output (1, 1, D) for the token: it attends to what the latest landmark
  // retrieved, already on the device (upload_current_retrievals).
  Var<T> gca_token_on_device(const GcaLayer<T>& gca, const Var<T>& a, int g) const {
    const RetrievalOnDevice& r = on_device_[g];
    if (r.retrieval.index.empty() || r.retrieval.empty())
      return constant(Tensor<T>::zeros(a.shape(), step_arena(), device_));
    const Index D = c_.hidden_size, H = gca.heads, d = gca.head_dim;
    const Tensor<T> q = linear(rms_norm(a, gca.pre_norm, gca.eps), gca.q_proj).value().contiguous(step_arena());
    Tensor<T> o = Tensor<T>::empty({1, H, d}, step_arena(), device_);
    DRT_ON_DEVICE("DrtDecoder", cuda::decode::gca_decode(q.reshape({1, H, d}), r.keys, r.values, r.slot, r.weight,
                                                         T(1) / std::sqrt(T(d)), o));
    return linear(constant(o.reshape({1, 1, D})), gca.o_proj);
  }

  // Streams the chunks of every group's current retrieval from the store to the device, when it
  // has changed (once per chunk boundary while decoding).
  void upload_current_retrievals() {
    const Index k = c_.chunk_topk, D = c_.hidden_size;
    for (int g = 0; g < c_.groups(); ++g) {
      const ChunkRetrieval<T>& want = current_[g];
      RetrievalOnDevice& have = on_device_[g];
      if (want.index == have.retrieval.index && want.weight == have.retrieval.weight && !chunks_on_device_) continue;
      have.retrieval = want;
      if (want.index.empty() || want.empty()) continue;
      std::vector<std::int32_t> slot(static_cast<std::size_t>(k), -1);
      have.weight = Tensor<T>::from({k}, want.weight).to(device_);
      if (chunks_on_device_) {  // read in place: the slots are the chunk ids
        for (Index j = 0; j < k; ++j)
          if (want.index[j] >= 0 && want.weight[j] != T(0)) slot[j] = want.index[j];
        have.keys = keys_on_device_;
        have.values = values_on_device_;
        have.slot = IndexTensor::from({k}, slot).to(device_);
        continue;
      }
      Tensor<T> keys = Tensor<T>::zeros({k, N_, Index(c_.num_attention_heads), c_.head_dim()});
      Tensor<T> values = Tensor<T>::zeros(keys.shape());
      for (Index j = 0; j < k; ++j) {
        if (want.index[j] < 0 || want.weight[j] == T(0)) continue;
        store_->read(want.index[j], keys.data() + j * N_ * D, values.data() + j * N_ * D);
        slot[j] = static_cast<std::int32_t>(j);
      }
      have.keys = keys.to(device_);
      have.values = values.to(device_);
      have.slot = IndexTensor::from({k}, slot).to(device_);
    }
  }

  // Moves the lower stack's rows h (1, L, D) into the chunk being built; every chunk this
  // segment completes goes through the encoder (all of them in one batch) into the store.
  void store_completed_chunks(const Tensor<T>& h, Index p0) {
    const Index L = h.size(1), D = c_.hidden_size;
    const Tensor<T> rows = h.select(0, 0);  // (L, D)
    Index chunks = 0;
    for (Index r = 0; r < L; ++r) chunks += is_landmark(p0 + r) ? 1 : 0;
    Tensor<T> completed = Tensor<T>::empty({chunks * S_, D}, step_arena(), device_);
    Index r = 0, done = 0;  // rows of h moved, chunks of `completed` filled
    // The chunk in progress, if this segment does not start one: its rows so far are in chunk_rows.
    if (const Index slot = p0 % S_; slot != 0) {
      const Index run = std::min(L, S_ - slot);
      chunk_rows_.slice(0, slot, slot + run).copy_from(rows.slice(0, 0, run));
      r = run;
      if (slot + run == S_) {  // the segment reaches its landmark: complete
        completed.slice(0, 0, S_).copy_from(chunk_rows_);
        done = 1;
      }
    }
    // Whole chunks, in one copy.
    const Index whole = (L - r) / S_;
    if (whole > 0) completed.slice(0, done * S_, (done + whole) * S_).copy_from(rows.slice(0, r, r + whole * S_));
    r += whole * S_;
    // The start of the next chunk.
    if (r < L) chunk_rows_.slice(0, 0, L - r).copy_from(rows.slice(0, r, L));
    if (chunks == 0) return;
    const ChunkMemory<T> memory = model_.encode_chunks(constant(completed.reshape({1, chunks * S_, D})));
    if (chunks_on_device_) {
      keep_on_device(memory.keys.value().select(0, 0), keys_on_device_);
      keep_on_device(memory.values.value().select(0, 0), values_on_device_);
      mirror_landmarks(memory.landmarks.value().contiguous(step_arena()).reshape({chunks, D}));
      return;
    }
    auto on_host = [](const Var<T>& v) { return v.value().to(Device::cpu, step_arena()).contiguous(step_arena()); };
    const Tensor<T> keys = on_host(memory.keys), values = on_host(memory.values), landmarks = on_host(memory.landmarks);
    const Index per_chunk = N_ * D;
    for (Index e = 0; e < chunks; ++e)
      store_->append(keys.data() + e * per_chunk, values.data() + e * per_chunk, landmarks.data() + e * D);
    if (device_ != Device::cpu) mirror_landmarks(memory.landmarks.value().contiguous(step_arena()).reshape({chunks, D}));
  }

  // Appends rows fresh (n, ...) after the first `count` rows of a device buffer that grows by
  // doubling, to at most `limit` rows (the rows before are copied over when it grows).
  void append_rows(const Tensor<T>& fresh, Tensor<T>& buffer, Index count,
                   Index limit = std::numeric_limits<Index>::max()) const {
    const Index n = fresh.size(0);
    if (!buffer.defined() || count + n > buffer.size(0)) {
      Shape grown_shape = fresh.shape();
      grown_shape[0] = std::min(limit, std::max<Index>({64, 2 * count, count + n}));
      Tensor<T> grown = Tensor<T>::empty(grown_shape, nullptr, device_);
      if (count > 0) grown.slice(0, 0, count).copy_from(buffer.slice(0, 0, count));
      buffer = grown;
    }
    buffer.slice(0, count, count + n).copy_from(fresh);
  }
  // New chunks' keys or values (n, N, H, d), kept on the device (keep_chunks_on_device).
  void keep_on_device(const Tensor<T>& fresh, Tensor<T>& buffer) { append_rows(fresh, buffer, landmarks_on_device_count_); }
  // New κ rows (n, D) appended to the device copy of the landmarks. With the chunks on the device
  // every row goes there (and the count is the stored chunks'); with them in the store, rows past
  // the mirror's limit stay in the store only.
  void mirror_landmarks(const Tensor<T>& fresh) {
    const Index limit = chunks_on_device_ ? std::numeric_limits<Index>::max() : mirrored_limit_;
    const Index n = std::min(fresh.size(0), limit - landmarks_on_device_count_);
    if (n <= 0) return;
    append_rows(fresh.slice(0, 0, n), landmarks_on_device_, landmarks_on_device_count_, limit);
    landmarks_on_device_count_ += n;
  }

  // Group g's retrieval for every landmark of this segment, by chunk: the query is the stream h
  // (1, L, D) at the landmark, through lmk_norm[g]; the keys are every stored κ of an earlier chunk.
  std::map<Index, ChunkRetrieval<T>> retrieve_in_segment(const Var<T>& h, int g, Index p0) const {
    std::map<Index, ChunkRetrieval<T>> out;
    Index first = 0;  // the segment's first landmark row; the others follow every S rows
    while (first < h.size(1) && !is_landmark(p0 + first)) ++first;
    if (first == h.size(1)) return out;
    const Index D = c_.hidden_size, E = stored_chunks();
    const Tensor<T> at_landmarks = h.value().select(0, 0).slice(0, first, h.size(1), S_).contiguous(step_arena());
    const Index n = at_landmarks.size(0);
    const Tensor<T> query = rms_norm(constant(at_landmarks.reshape({1, n, D})), model_.landmark_norm(g),
                                     static_cast<T>(ModelConfig::kLandmarkNormEps))
                                .value()
                                .reshape({n, D});
    if (device_ != Device::cpu) return top_chunks_on_device(query, p0 + first);
    const Tensor<T> kappa = Tensor<T>::wrap(const_cast<T*>(store_->landmarks()), {E, D});
    const Tensor<T> scores = matmul(query, kappa.transpose(0, 1), step_arena());  // (n, E)
    const T scale = T(1) / std::sqrt(T(D));
    std::vector<T> row(static_cast<std::size_t>(E));
    for (Index i = 0; i < n; ++i) {
      const Index c = chunk_of(p0 + first + i * S_);
      for (Index e = 0; e < c; ++e) row[e] = scores(i, e) * scale;
      out[c] = select_chunks(row.data(), c, c_.chunk_topk);
    }
    return out;
  }

  // The GPU's retrieval for landmarks at first_landmark, + S, ...: scores, causal mask and top-k
  // on the device, block by block of stored chunks (bound_retrieval_memory), so that only k ids
  // and scores per landmark and block come back to the host (at 1M tokens a landmark has 16k
  // candidates); the host keeps each landmark's best k over the blocks. The same rule and
  // weights as select_chunks (by score, then lower index), over the GPU's scores.
  std::map<Index, ChunkRetrieval<T>> top_chunks_on_device(const Tensor<T>& query, Index first_landmark) const {
    const Index n = query.size(0), D = c_.hidden_size, E = stored_chunks(), c0 = chunk_of(first_landmark), k = c_.chunk_topk;
    const Index mirrored = landmarks_on_device_count_;
    using Candidate = std::pair<T, std::int32_t>;  // score, chunk
    std::vector<std::vector<Candidate>> best(static_cast<std::size_t>(n));
    for (Index b0 = 0; b0 < E;) {
      // A block is all mirrored or all streamed from the store.
      const Index b1 = b0 < mirrored ? std::min({E, mirrored, b0 + score_block_}) : std::min(E, b0 + score_block_);
      const Tensor<T> kappa =
          b1 <= mirrored ? landmarks_on_device_.slice(0, b0, b1)
                         : Tensor<T>::wrap(const_cast<T*>(store_->landmarks()) + b0 * D, {b1 - b0, D}).to(device_, step_arena());
      add_block_candidates(query, kappa, b0, c0, best);
      b0 = b1;
    }
    std::map<Index, ChunkRetrieval<T>> out;
    for (Index i = 0; i < n; ++i) {
      const std::vector<Candidate>& chosen = best[i];
      ChunkRetrieval<T> r{std::vector<std::int32_t>(static_cast<std::size_t>(k), -1), std::vector<T>(static_cast<std::size_t>(k), T(0))};
      T total = 0;
      for (std::size_t j = 0; j < chosen.size(); ++j) {
        r.index[j] = chosen[j].second;
        total += (r.weight[j] = std::exp(chosen[j].first - chosen[0].first));
      }
      for (std::size_t j = 0; j < chosen.size(); ++j) r.weight[j] /= total;
      out[c0 + i] = std::move(r);
    }
    return out;
  }

  // One block of retrieval: the scores of query (n, D) against κ rows kappa (B, D) of chunks
  // b0 .. b0 + B − 1, landmark i (of chunk c0 + i) seeing only chunks e < c0 + i; each landmark's
  // top k of the block join its candidates in `best`, which keeps the k best by (score, −chunk).
  void add_block_candidates(const Tensor<T>& query, const Tensor<T>& kappa, Index b0, Index c0,
                            std::vector<std::vector<std::pair<T, std::int32_t>>>& best) const {
    const Index n = query.size(0), B = kappa.size(0), k = c_.chunk_topk, D = c_.hidden_size;
    const Tensor<T> raw = matmul(query, kappa.transpose(0, 1), step_arena());  // (n, B)
    const Tensor<T> scores = eval(raw * (T(1) / std::sqrt(T(D))), step_arena());
    // Only columns of chunks ≥ c0 can be hidden: chunk e is hidden from landmark i when e ≥ c0 + i.
    if (const Index h0 = std::max(b0, c0), b1 = b0 + B; h0 < b1) {
      Tensor<T> hidden = Tensor<T>::zeros({n, b1 - h0}, step_arena());
      for (Index i = 0; i < n; ++i)
        for (Index e = std::max(h0, c0 + i); e < b1; ++e) hidden(i, e - h0) = -std::numeric_limits<T>::infinity();
      const Tensor<T> tail = scores.slice(1, h0 - b0, B);
      tail.assign(tail + hidden.to(device_, step_arena()));
    }
    const int take = static_cast<int>(std::min(k, B));
    const TopK<T> picked = topk(constant(scores), take, 1);  // values beside the ids: no gather to check
    const Tensor<T> top = picked.values.value().to(Device::cpu, step_arena());
    const IndexTensor ids = picked.indices.to(Device::cpu, step_arena());
    for (Index i = 0; i < n; ++i) {
      auto& mine = best[i];
      for (Index j = 0; j < take; ++j) {
        const Index e = b0 + ids(i, j);
        if (e < c0 + i) mine.push_back({top(i, j), static_cast<std::int32_t>(e)});
      }
      // NaN (a broken model) ranks last, so that the order stays a strict weak ordering.
      auto rank = [](T s) { return std::isnan(s) ? -std::numeric_limits<T>::infinity() : s; };
      std::sort(mine.begin(), mine.end(), [&](const auto& a, const auto& b) {
        return rank(a.first) > rank(b.first) || (rank(a.first) == rank(b.first) && a.second < b.second);
      });
      if (static_cast<Index>(mine.size()) > k) mine.resize(static_cast<std::size_t>(k));
    }
  }

  // What the GCA layers of group g read in this segment: which rows belong to which chunk, what
  // each chunk's preceding landmark retrieved, and the retrieved chunks themselves, read from the
  // store once per segment and group (every upper layer of the group shares them).
  struct SegmentMemory {
    struct QueryChunk {
      Index first_row, rows;  // the rows of one chunk within the segment
    };
    std::vector<QueryChunk> chunks;  // chunks with a non-empty retrieval (chunk 0 never has one)
    Index longest = 0;               // M: the most rows of one chunk
    IndexTensor index;               // (Z, k) slots into keys/values, −1 = empty
    Tensor<T> weight;                // (Z, k) on the device
    Tensor<T> keys, values;          // (1, U, N, H, d) on the device: the U distinct chunks retrieved
  };

  // The rows of chunk c attend to what landmark c − 1 retrieved (in this segment, or current[g]
  // from an earlier one).
  SegmentMemory segment_memory(Index p0, Index L, int g, const std::map<Index, ChunkRetrieval<T>>& retrieved) const {
    SegmentMemory m;
    std::vector<const ChunkRetrieval<T>*> of_chunk;
    for (Index c = chunk_of(p0); c <= chunk_of(p0 + L - 1); ++c) {
      if (c == 0) continue;
      const auto it = retrieved.find(c - 1);
      const ChunkRetrieval<T>* r = it != retrieved.end() ? &it->second : &current_[g];
      if (r->index.empty() || r->empty()) continue;
      const Index first = std::max(c * S_, p0) - p0, last = std::min((c + 1) * S_, p0 + L) - p0;
      m.chunks.push_back({first, last - first});
      m.longest = std::max(m.longest, last - first);
      of_chunk.push_back(r);
    }
    if (m.chunks.empty()) return m;
    const Index Z = static_cast<Index>(m.chunks.size()), k = c_.chunk_topk, D = c_.hidden_size;
    // The index points into keys/values: with the chunks on the device those are the whole
    // memory (the chunk ids themselves); otherwise a gathered copy of the U distinct chunks.
    std::map<std::int32_t, Index> slot_of;  // stored chunk → its slot in the gathered copy
    m.index = IndexTensor::full({Z, k}, -1, step_arena());
    Tensor<T> weight = Tensor<T>::zeros({Z, k}, step_arena());
    for (Index z = 0; z < Z; ++z)
      for (Index j = 0; j < k; ++j) {
        const std::int32_t e = of_chunk[z]->index[j];
        const T w = of_chunk[z]->weight[j];
        if (e < 0 || w == T(0)) continue;
        weight(z, j) = w;
        if (chunks_on_device_) m.index(z, j) = e;
        else m.index(z, j) = static_cast<std::int32_t>(slot_of.insert({e, static_cast<Index>(slot_of.size())}).first->second);
      }
    m.weight = weight.to(device_);
    if (chunks_on_device_) {
      m.keys = keys_on_device_.slice(0, 0, stored_chunks()).unsqueeze(0);
      m.values = values_on_device_.slice(0, 0, stored_chunks()).unsqueeze(0);
      return m;
    }
    const Index U = static_cast<Index>(slot_of.size());
    Tensor<T> keys = Tensor<T>::empty({1, U, N_, Index(c_.num_attention_heads), c_.head_dim()}, step_arena());
    Tensor<T> values = Tensor<T>::empty(keys.shape(), step_arena());
    for (const auto& [e, u] : slot_of) store_->read(e, keys.data() + u * N_ * D, values.data() + u * N_ * D);
    m.keys = keys.to(device_);
    m.values = values.to(device_);
    return m;
  }

  // Calls copy(z, n, first_row, rows) for runs of n consecutive chunks of equal size: a prefill
  // segment of whole chunks is one run, so its rows move in one strided copy, not one per chunk.
  template <class Copy>
  static void for_each_chunk_run(const SegmentMemory& m, Copy copy) {
    const Index Z = static_cast<Index>(m.chunks.size());
    for (Index z = 0, n = 1; z < Z; z += n, n = 1) {
      const auto& first = m.chunks[z];
      while (z + n < Z && m.chunks[z + n].rows == first.rows && m.chunks[z + n].first_row == first.first_row + n * first.rows)
        ++n;
      copy(z, n, first.first_row, first.rows);
    }
  }

  // The GCA layer's output (1, L, D) for this segment's rows; rows of chunks without a retrieval get 0.
  Var<T> gca_rows(const GcaLayer<T>& gca, const Var<T>& a, const SegmentMemory& m) const {
    const Index L = a.size(1), D = c_.hidden_size, H = gca.heads, d = gca.head_dim;
    Tensor<T> out = Tensor<T>::zeros({1, L, D}, step_arena(), device_);
    if (m.chunks.empty()) return constant(out);
    // Queries as (Z, H, M, d), padded with zero rows to the longest chunk's M.
    const Index Z = static_cast<Index>(m.chunks.size());
    const Tensor<T> q_rows =
        linear(rms_norm(a, gca.pre_norm, gca.eps), gca.q_proj).value().contiguous(step_arena()).reshape({L, H, d});
    Tensor<T> queries = Tensor<T>::zeros({Z, H, m.longest, d}, step_arena(), device_);
    // Rows [first, first + n·rows) of the segment as n chunks: (n, H, rows, d).
    auto as_chunks = [&](const Tensor<T>& rows_of_segment, Index first, Index n, Index rows) {
      return rows_of_segment.slice(0, first, first + n * rows).reshape({n, rows, H, d}).permute({0, 2, 1, 3});
    };
    for_each_chunk_run(m, [&](Index z, Index n, Index first, Index rows) {
      queries.slice(0, z, z + n).slice(2, 0, rows).copy_from(as_chunks(q_rows, first, n, rows));
    });
    const Tensor<T> o = drt::gca(constant(queries), constant(m.keys), constant(m.values), m.index, constant(m.weight),
                                 T(1) / std::sqrt(T(d)))
                            .value();  // (Z, H, M, d)
    const Tensor<T> out_rows = out.reshape({L, H, d});
    for_each_chunk_run(m, [&](Index z, Index n, Index first, Index rows) {
      as_chunks(out_rows, first, n, rows).copy_from(o.slice(0, z, z + n).slice(2, 0, rows));
    });
    return linear(constant(out), gca.o_proj);
  }

  const DrtModel<T>& model_;
  const ModelConfig& c_;
  const Device device_;
  const Index S_, N_;
  std::unique_ptr<ChunkStore<T>> store_;
  std::vector<WindowKvCache<T>> caches_;
  Tensor<T> chunk_rows_;
  std::vector<ChunkRetrieval<T>> current_;
  Index next_position_ = 0;
  int tokens_in_chunk_ = 0;

  // The GPU's: κ mirrored for scoring (and, with keep_chunks_on_device, the keys and values), and
  // what a recorded step reads and writes.
  Tensor<T> landmarks_on_device_, keys_on_device_, values_on_device_;
  Index landmarks_on_device_count_ = 0;
  Index mirrored_limit_ = kMirroredLandmarks, score_block_ = kScoreBlock;
  bool chunks_on_device_ = false;
  IndexTensor token_, position_;
  Tensor<T> logits_;
  std::vector<RetrievalOnDevice> on_device_;
  std::unique_ptr<StepRecorder> recorder_;
  std::vector<const void*> weight_storages_;                 // the model's weight matrices
  std::vector<RoundedOperandReuse::Entry> rounded_weights_;  // their bf16 copies, kept across segments
  bool use_graph_ = true;
  Index recordings_ = 0;
};

}  // namespace drt
