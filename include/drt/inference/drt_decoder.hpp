// drt/inference/drt_decoder.hpp — incremental decoding for DRT (spec §9), one token or one
// segment at a time, with a chunk memory in RAM or on disk.
//
// Shapes: L positions in this segment (p0 .. p0+L−1; chunk c = p / S, slot s = p mod S, the
// landmark at s = S − 1), S = L_c + 1, N keys per stored chunk, D width, H heads, d head width,
// k retrieved chunks, W window, G retrieval groups.
//
// State (memory independent of the context's length except the chunk store):
//   caches        one WindowKvCache (W, Hkv, d) per decoder layer, lower and upper
//   chunk_rows    the lower stack's output for the chunk being built (< S rows of D)
//   store         every completed chunk: keys/values (N, H, d) and landmark κ (D)
//   current[g]    what the latest landmark retrieved for group g: k chunk ids and weights
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
#include "drt/inference/window_cache.hpp"
#include "drt/model/drt.hpp"

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
  // `store` defaults to a MemoryChunkStore; pass a MappedChunkStore to keep the chunks on disk.
  explicit DrtDecoder(const DrtModel<T>& model, std::unique_ptr<ChunkStore<T>> store = nullptr)
      : model_(model), c_(model.config()), S_(c_.chunk_positions()),
        N_(c_.drops_landmark_row() ? S_ - 1 : S_), store_(std::move(store)) {
    if (!store_) store_ = std::make_unique<MemoryChunkStore<T>>(N_, c_.hidden_size);
    DRT_CHECK(store_->keys_per_chunk() == N_ && store_->width() == c_.hidden_size && store_->size() == 0,
              "DrtDecoder: the chunk store must be empty and hold ", N_, " keys of width ", c_.hidden_size,
              " per chunk; it holds ", store_->keys_per_chunk(), " of width ", store_->width());
    const int layers = c_.lower_layers() + std::accumulate(c_.decoder_layers.begin() + 1, c_.decoder_layers.end(), 0);
    for (int i = 0; i < layers; ++i) caches_.emplace_back(c_.slide_window, c_.num_key_value_heads, c_.head_dim());
    current_.resize(static_cast<std::size_t>(c_.groups()));
  }

  const ChunkStore<T>& chunk_store() const { return *store_; }
  Index positions() const { return next_position_; }
  // The retrieval the next tokens use in group g (what the latest landmark chose).
  const ChunkRetrieval<T>& current_retrieval(int g) const { return current_.at(g); }

  std::size_t state_bytes() const override {
    std::size_t bytes = chunk_rows_.size() * sizeof(T);
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
      for (const auto& upper : model_.upper_layers(g)) {
        const Var<T> a = attend_block_cached(upper->block, h, caches_[layer++]);
        h = upper->combine(a, gca_rows(upper->gca, a, p0, g, retrieved));
      }
      if (!retrieved.empty()) current_[g] = retrieved.rbegin()->second;
    }
    next_position_ += L;
    return h;
  }

  Var<T> head(const Var<T>& rows) const override {
    return linear(rms_norm(rows, model_.final_norm(), static_cast<T>(c_.rms_norm_eps)), model_.lm_head());
  }

 private:
  Index chunk_of(Index position) const { return position / S_; }
  bool is_landmark(Index position) const { return position % S_ == S_ - 1; }

  // Moves the lower stack's rows h (1, L, D) into the chunk being built; every chunk this
  // segment completes goes through the encoder (all of them in one batch) into the store.
  void store_completed_chunks(const Tensor<T>& h, Index p0) {
    const Index L = h.size(1), D = c_.hidden_size;
    const Tensor<T> rows = h.contiguous(step_arena());
    std::vector<T> completed;
    Index chunks = 0;
    for (Index r = 0; r < L; ++r) {
      chunk_rows_.insert(chunk_rows_.end(), rows.data() + r * D, rows.data() + (r + 1) * D);
      if (is_landmark(p0 + r)) {
        completed.insert(completed.end(), chunk_rows_.begin(), chunk_rows_.end());
        chunk_rows_.clear();
        ++chunks;
      }
    }
    if (chunks == 0) return;
    const Tensor<T> input = Tensor<T>::from({1, chunks * S_, D}, completed, step_arena());
    const ChunkMemory<T> memory = model_.encode_chunks(constant(input));
    const Tensor<T> keys = memory.keys.value().contiguous(step_arena()), values = memory.values.value().contiguous(step_arena()),
                    landmarks = memory.landmarks.value().contiguous(step_arena());
    const Index per_chunk = N_ * D;
    for (Index e = 0; e < chunks; ++e)
      store_->append(keys.data() + e * per_chunk, values.data() + e * per_chunk, landmarks.data() + e * D);
  }

  // Group g's retrieval for every landmark of this segment, by chunk: the query is the stream h
  // (1, L, D) at the landmark, through lmk_norm[g]; the keys are every stored κ of an earlier chunk.
  std::map<Index, ChunkRetrieval<T>> retrieve_in_segment(const Var<T>& h, int g, Index p0) const {
    std::map<Index, ChunkRetrieval<T>> out;
    std::vector<Index> rows;
    for (Index r = 0; r < h.size(1); ++r)
      if (is_landmark(p0 + r)) rows.push_back(r);
    if (rows.empty()) return out;
    const Index n = static_cast<Index>(rows.size()), D = c_.hidden_size, E = store_->size();
    Tensor<T> at_landmarks = Tensor<T>::empty({1, n, D}, step_arena());
    for (Index i = 0; i < n; ++i) at_landmarks.select(1, i).copy_from(h.value().select(1, rows[i]));
    const Tensor<T> query =
        rms_norm(constant(at_landmarks), model_.landmark_norm(g), static_cast<T>(ModelConfig::kLandmarkNormEps)).value();
    const Tensor<T> kappa = Tensor<T>::wrap(const_cast<T*>(store_->landmarks()), {E, D});
    const Tensor<T> scores = matmul(query.reshape({n, D}), kappa.transpose(0, 1), step_arena());  // (n, E)
    const T scale = T(1) / std::sqrt(T(D));
    std::vector<T> row(static_cast<std::size_t>(E));
    for (Index i = 0; i < n; ++i) {
      const Index c = chunk_of(p0 + rows[i]);
      for (Index e = 0; e < c; ++e) row[e] = scores(i, e) * scale;
      out[c] = select_chunks(row.data(), c, c_.chunk_topk);
    }
    return out;
  }

  // The GCA layer's output (1, L, D) for this segment's rows: the rows of chunk c attend to what
  // landmark c − 1 retrieved; chunk 0, and chunks whose retrieval is empty, get 0.
  Var<T> gca_rows(const GcaLayer<T>& gca, const Var<T>& a, Index p0, int g,
                  const std::map<Index, ChunkRetrieval<T>>& retrieved) const {
    const Index L = a.size(1), D = c_.hidden_size, H = gca.heads, d = gca.head_dim, k = c_.chunk_topk;
    struct QueryChunk {
      Index first_row, rows;
      const ChunkRetrieval<T>* retrieval;
    };
    std::vector<QueryChunk> chunks;
    for (Index c = chunk_of(p0); c <= chunk_of(p0 + L - 1); ++c) {
      if (c == 0) continue;
      const auto it = retrieved.find(c - 1);
      const ChunkRetrieval<T>* r = it != retrieved.end() ? &it->second : &current_[g];
      if (r->index.empty() || r->empty()) continue;
      const Index first = std::max(c * S_, p0) - p0, last = std::min((c + 1) * S_, p0 + L) - p0;
      chunks.push_back({first, last - first, r});
    }
    Tensor<T> out = Tensor<T>::zeros({1, L, D}, step_arena());
    if (chunks.empty()) return constant(out);

    // Queries as (Z, H, M, d), padded with zero rows to the longest chunk's M.
    const Index Z = static_cast<Index>(chunks.size());
    Index M = 0;
    for (const auto& q : chunks) M = std::max(M, q.rows);
    const Tensor<T> q = linear(rms_norm(a, gca.pre_norm, gca.eps), gca.q_proj).value().contiguous(step_arena());
    Tensor<T> queries = Tensor<T>::zeros({Z, H, M, d}, step_arena());
    for (Index z = 0; z < Z; ++z)
      for (Index m = 0; m < chunks[z].rows; ++m)
        for (Index hh = 0; hh < H; ++hh)
          std::copy_n(q.data() + (chunks[z].first_row + m) * D + hh * d, d, &queries(z, hh, m, Index(0)));

    // The retrieved chunks, each read from the store once, as a memory (1, U, N, H, d).
    std::map<std::int32_t, Index> slot_of;
    IndexTensor index = IndexTensor::full({Z, k}, -1, step_arena());
    Tensor<T> weight = Tensor<T>::zeros({Z, k}, step_arena());
    for (Index z = 0; z < Z; ++z)
      for (Index j = 0; j < k; ++j) {
        const std::int32_t e = chunks[z].retrieval->index[j];
        const T w = chunks[z].retrieval->weight[j];
        if (e < 0 || w == T(0)) continue;
        const auto [it, added] = slot_of.insert({e, static_cast<Index>(slot_of.size())});
        index(z, j) = static_cast<std::int32_t>(it->second);
        weight(z, j) = w;
      }
    const Index U = static_cast<Index>(slot_of.size());
    Tensor<T> keys = Tensor<T>::empty({1, U, N_, H, d}, step_arena()), values = Tensor<T>::empty({1, U, N_, H, d}, step_arena());
    for (const auto& [e, u] : slot_of) store_->read(e, keys.data() + u * N_ * D, values.data() + u * N_ * D);

    const Tensor<T> o = gca_forward_values(queries, keys, values, index, weight, d);  // (Z, H, M, d)
    for (Index z = 0; z < Z; ++z)
      for (Index m = 0; m < chunks[z].rows; ++m)
        for (Index hh = 0; hh < H; ++hh)
          std::copy_n(&o(z, hh, m, Index(0)), d, out.data() + (chunks[z].first_row + m) * D + hh * d);
    return linear(constant(out), gca.o_proj);
  }

  static Tensor<T> gca_forward_values(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                                      const Tensor<T>& weight, Index d) {
    return gca(constant(q), constant(k), constant(v), index, constant(weight), T(1) / std::sqrt(T(d))).value();
  }

  const DrtModel<T>& model_;
  const ModelConfig& c_;
  const Index S_, N_;
  std::unique_ptr<ChunkStore<T>> store_;
  std::vector<WindowKvCache<T>> caches_;
  std::vector<T> chunk_rows_;
  std::vector<ChunkRetrieval<T>> current_;
  Index next_position_ = 0;
  int tokens_in_chunk_ = 0;
};

}  // namespace drt
