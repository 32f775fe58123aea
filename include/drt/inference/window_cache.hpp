// drt/inference/window_cache.hpp — sliding-window self-attention over a key/value cache, for
// decoding one position at a time or a segment at a time (spec §9.3, §9.6), on the CPU or the GPU.
//
// Shapes: L new positions, H query heads, Hkv key/value heads, d head width, W window.
//   WindowKvCache      keys and values of the last W positions, (W, Hkv, d) each, as a ring on the
//                      model's device: position j lives in slot j mod W, so memory never grows
//   cached_attention   q (L, H, d), k, v (L, Hkv, d) of positions p0 .. p0+L−1 → out (L, H, d)
//   attend_cached      x (1, L, D) → the layer's attention output (1, L, D), cache updated
//
// The attention is the training op's (window_attention.hpp): query i sees keys i − W .. i, with
// score scale·⟨q_i, k_j⟩ − m_h·(i − j). Keys before p0 come from the cache, the rest from this
// call's own k. Unlike the reference's generate(), which keeps every past key (spec §14 A10),
// the cache holds exactly the W positions a future query can still see.
//
// On the GPU there are two ways through (cuda/inference/decode.cuh):
//   - a few rows (a decoding step): a kernel that reads the ring in place;
//   - a long segment (a prefill): the cached keys, in order, are put in front of the segment's and
//     the training op's tensor-core kernel runs over both, keeping only the segment's rows (the
//     extra ≤ W query rows cost ≤ W / L of the work: 1/8 at L = 4096, W = 512).
// A graph-recorded step (drt_decoder.hpp) passes `position_on_device`: the kernels then read p0
// from there, and the host's count is advanced by the caller (note_pushed) when the step has run.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/core/parallel.hpp"
#include "drt/model/blocks.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/inference/decode.cuh"
#endif

namespace drt {

template <class T>
class WindowKvCache {
 public:
  WindowKvCache(Index window, Index kv_heads, Index head_dim, Device device = Device::cpu)
      : window_(window), kv_heads_(kv_heads), head_dim_(head_dim) {
    DRT_CHECK(window >= 1 && kv_heads >= 1 && head_dim >= 1, "WindowKvCache: window ", window, ", kv heads ", kv_heads,
              " and head width ", head_dim, " must be positive");
    keys_ = Tensor<T>::zeros({window, kv_heads, head_dim}, nullptr, device);
    values_ = Tensor<T>::zeros({window, kv_heads, head_dim}, nullptr, device);
  }

  // The ring is a tensor handle: a copy would share it while counting positions apart.
  WindowKvCache(const WindowKvCache&) = delete;
  WindowKvCache& operator=(const WindowKvCache&) = delete;
  WindowKvCache(WindowKvCache&&) = default;
  WindowKvCache& operator=(WindowKvCache&&) = default;

  Index window() const { return window_; }
  Index next_position() const { return next_; }  // how many positions have gone through
  Device device() const { return keys_.device(); }
  const Tensor<T>& keys() const { return keys_; }  // the ring, (W, Hkv, d)
  const Tensor<T>& values() const { return values_; }
  // Key/value row of an earlier position j, next_position() − W ≤ j < next_position() (host only).
  const T* key(Index j) const { return keys_.data() + slot(j) * row(); }
  const T* value(Index j) const { return values_.data() + slot(j) * row(); }

  // Appends k, v (L, Hkv, d), contiguous, of positions next_position() .. + L − 1; only the last
  // W stay. With `position_on_device` the device kernel reads the first position there and the
  // host count is left for note_pushed().
  void push(const Tensor<T>& k, const Tensor<T>& v, const std::int32_t* position_on_device = nullptr) {
    const Index L = k.size(0);
    DRT_CHECK(k.shape() == v.shape() && k.numel() == L * row() && k.device() == device() && k.is_contiguous() &&
                  v.is_contiguous(),
              "WindowKvCache::push: k ", k.shape().str(), " and v ", v.shape().str(),
              " must be contiguous and fit a cache of ", keys_.shape().str());
    if (device() != Device::cpu) {
      DRT_ON_DEVICE("WindowKvCache::push",
                    cuda::decode::push_to_window_cache(k, v, keys_, values_, next_, position_on_device));
      if (position_on_device == nullptr) next_ += L;
      return;
    }
    for (Index r = std::max<Index>(0, L - window_); r < L; ++r) {
      const Index at = (next_ + r) % window_ * row();
      std::copy(k.data() + r * row(), k.data() + (r + 1) * row(), keys_.data() + at);
      std::copy(v.data() + r * row(), v.data() + (r + 1) * row(), values_.data() + at);
    }
    next_ += L;
  }
  // L positions were pushed by a recorded step that has now run.
  void note_pushed(Index L) { next_ += L; }

  // How many positions the cache holds: min(next_position(), W).
  Index held() const { return std::min(next_, window_); }
  // The cached positions next − held() .. next − 1 of `ring` (keys() or values()), oldest first,
  // into `out` (held(), Hkv, d).
  void copy_ordered(const Tensor<T>& ring, const Tensor<T>& out) const {
    const Index n = held(), first = next_ - n;
    const Index head = first % window_, run = std::min(n, window_ - head);  // the ring wraps at most once
    if (run > 0) out.slice(0, 0, run).copy_from(ring.slice(0, head, head + run));
    if (n > run) out.slice(0, run, n).copy_from(ring.slice(0, 0, n - run));
  }

  std::size_t bytes() const { return static_cast<std::size_t>(keys_.numel() + values_.numel()) * sizeof(T); }

 private:
  Index row() const { return kv_heads_ * head_dim_; }
  Index slot(Index j) const {
    DRT_CHECK(j < next_ && j >= next_ - window_ && j >= 0, "WindowKvCache: position ", j, " is not cached (cache holds ",
              std::max<Index>(0, next_ - window_), " .. ", next_ - 1, ")");
    return j % window_;
  }

  Index window_, kv_heads_, head_dim_, next_ = 0;
  Tensor<T> keys_, values_;
};

namespace detail {
// The CPU's way: every (row, head) scores its ≤ W + 1 keys, read from the ring or from k.
template <class T>
Tensor<T> cached_attention_on_host(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                   const WindowKvCache<T>& cache, const Tensor<T>& slopes, T scale) {
  const Index L = q.size(0), H = q.size(1), d = q.size(2), Hkv = k.size(1), W = cache.window();
  const Index p0 = cache.next_position(), heads_per_kv = H / Hkv;
  Tensor<T> out = Tensor<T>::zeros({L, H, d}, step_arena());
  const T* qp = q.data();
  const T* kp = k.data();
  const T* vp = v.data();
  parallel_for(L * H, L * H * (W + 1) * d, [&](std::int64_t task) {
    const Index r = task / H, h = task % H, g = h / heads_per_kv, i = p0 + r;
    const Index first = std::max<Index>(0, i - W);
    auto key_row = [&](Index j) { return (j < p0 ? cache.key(j) : kp + (j - p0) * Hkv * d) + g * d; };
    auto value_row = [&](Index j) { return (j < p0 ? cache.value(j) : vp + (j - p0) * Hkv * d) + g * d; };
    const T* qi = qp + (r * H + h) * d;
    const T slope = slopes.data()[h];
    thread_local std::vector<T> score;  // reused: no allocation per query once it has grown
    score.resize(static_cast<std::size_t>(i - first + 1));
    T max_score = -std::numeric_limits<T>::infinity();
    for (Index j = first; j <= i; ++j) {
      const T* kj = key_row(j);
      T dot = 0;
      for (Index c = 0; c < d; ++c) dot += qi[c] * kj[c];
      score[j - first] = scale * dot - slope * static_cast<T>(i - j);
      max_score = std::max(max_score, score[j - first]);
    }
    T total = 0;
    for (T& s : score) total += (s = std::exp(s - max_score));
    T* o = out.data() + (r * H + h) * d;
    for (Index j = first; j <= i; ++j) {
      const T p = score[j - first] / total;
      const T* vj = value_row(j);
      for (Index c = 0; c < d; ++c) o[c] += p * vj[c];
    }
  });
  return out;
}

// A long segment on the device goes through the training op over [cached rows ; segment rows]:
// buffers (1, n + L, heads, d) whose first n rows are the cache's keys/values in order (zeros for
// the queries, whose outputs are dropped) and whose last L rows the caller fills with the
// segment's own q, k and v (segment_rows: contiguous (L, heads, d) views).
template <class T>
struct WindowOverCache {
  Index n, L;
  Tensor<T> queries, keys, values;

  WindowOverCache(const WindowKvCache<T>& cache, Index segment, Index heads)
      : n(cache.held()), L(segment) {
    const Device device = cache.device();
    const Index Hkv = cache.keys().size(1), d = cache.keys().size(2);
    queries = Tensor<T>::empty({1, n + L, heads, d}, step_arena(), device);
    keys = Tensor<T>::empty({1, n + L, Hkv, d}, step_arena(), device);
    values = Tensor<T>::empty({1, n + L, Hkv, d}, step_arena(), device);
    if (n > 0) queries.select(0, 0).slice(0, 0, n).fill(T(0));
    cache.copy_ordered(cache.keys(), keys.select(0, 0).slice(0, 0, n));
    cache.copy_ordered(cache.values(), values.select(0, 0).slice(0, 0, n));
  }
  Tensor<T> segment_rows(const Tensor<T>& all) const { return all.select(0, 0).slice(0, n, n + L); }
  // The segment's attention output (L, H, d), a contiguous view.
  Tensor<T> attend(const Tensor<T>& slopes, Index window, T scale) const {
    const Tensor<T> out = window_attention(constant(queries), constant(keys), constant(values), slopes, window, scale).value();
    return segment_rows(out);
  }
};

// cached_attention's long-segment way: q, k, v copied into the [cache ; segment] buffers.
template <class T>
Tensor<T> cached_attention_as_window(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                     const WindowKvCache<T>& cache, const Tensor<T>& slopes, T scale) {
  const WindowOverCache<T> all(cache, q.size(0), q.size(1));
  all.segment_rows(all.queries).copy_from(q);
  all.segment_rows(all.keys).copy_from(k);
  all.segment_rows(all.values).copy_from(v);
  return all.attend(slopes, cache.window(), scale).contiguous(step_arena());
}
}  // namespace detail

// From this many new rows on, the GPU takes the training kernel over [cache ; segment].
inline constexpr Index kWindowKernelRows = 64;

// Attention of L new positions (the first is cache.next_position(), or *position_on_device) over
// the cache and themselves. q (L, H, d), k and v (L, Hkv, d), contiguous, on the cache's device;
// returns (L, H, d). Does not change the cache.
template <class T>
Tensor<T> cached_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const WindowKvCache<T>& cache,
                           const Tensor<T>& slopes, T scale, const std::int32_t* position_on_device = nullptr) {
  const Index L = q.size(0), H = q.size(1), d = q.size(2), Hkv = k.size(1);
  DRT_CHECK(k.shape() == v.shape() && k.size(0) == L && k.size(2) == d && H % Hkv == 0 && slopes.numel() == H &&
                q.device() == cache.device(),
            "cached_attention: q ", q.shape().str(), ", k ", k.shape().str(), ", v ", v.shape().str(), " and slopes ",
            slopes.shape().str(), " do not fit together (or are not on the cache's device)");
  if (cache.device() == Device::cpu) return detail::cached_attention_on_host(q, k, v, cache, slopes, scale);
  if (L >= kWindowKernelRows && position_on_device == nullptr)
    return detail::cached_attention_as_window(q, k, v, cache, slopes, scale);
  Tensor<T> out = Tensor<T>::empty({L, H, d}, step_arena(), q.device());
  DRT_ON_DEVICE("cached_attention",
                cuda::decode::cached_window_attention(q, k, v, cache.keys(), cache.values(), slopes, scale,
                                                      cache.next_position(), position_on_device, out));
  return out;
}

// A decoder layer's self-attention (q/k/v projections, cached window attention, o_proj) on the
// already normed input x (1, L, D); pushes the new keys and values into `cache`. A long segment on
// the GPU (a prefill) has its projections written straight into the training kernel's
// [cache ; segment] buffers, and the cache takes its new rows from there: no copy of q, k or v.
template <class T>
Var<T> attend_cached(const DecoderAttention<T>& attn, const Var<T>& x, WindowKvCache<T>& cache,
                     const std::int32_t* position_on_device = nullptr) {
  DRT_CHECK(x.rank() == 3 && x.size(0) == 1, "attend_cached: x must be (1, L, D), got ", x.shape().str());
  const Index L = x.size(1);
  if (cache.device() != Device::cpu && L >= kWindowKernelRows && position_on_device == nullptr) {
    const Index D = x.size(2), d = attn.head_dim;
    const Tensor<T> rows = x.value().contiguous(step_arena()).reshape({L, D});
    const detail::WindowOverCache<T> all(cache, L, attn.heads);
    auto project_into = [&](const Parameter<T>& w, const Tensor<T>& buffer) {
      const Tensor<T> target = all.segment_rows(buffer);
      gemm(rows, w.value().transpose(0, 1), target.reshape({L, target.size(1) * d}));  // what linear() computes
    };
    {
      RoundedOperandReuse reuse;  // bf16: `rows` rounded once for the three products
      project_into(attn.q_proj, all.queries);
      project_into(attn.k_proj, all.keys);
      project_into(attn.v_proj, all.values);
    }
    const Tensor<T> o = all.attend(attn.alibi_slopes, cache.window(), T(1) / std::sqrt(T(d)));
    cache.push(all.segment_rows(all.keys), all.segment_rows(all.values));
    return linear(constant(o.reshape({1, L, Index(attn.heads) * d})), attn.o_proj);
  }
  auto project = [&](const Parameter<T>& w, Index heads) {
    return linear(x, w).value().contiguous(step_arena()).reshape({L, heads, Index(attn.head_dim)});
  };
  const Tensor<T> q = project(attn.q_proj, attn.heads), k = project(attn.k_proj, attn.kv_heads),
                  v = project(attn.v_proj, attn.kv_heads);
  const Tensor<T> o =
      cached_attention(q, k, v, cache, attn.alibi_slopes, T(1) / std::sqrt(T(attn.head_dim)), position_on_device);
  cache.push(k, v, position_on_device);
  return linear(constant(o.reshape({1, L, Index(attn.heads) * attn.head_dim})), attn.o_proj);
}

// The attention half of a decoder block (spec §3) over L new positions: a = h + attn(norm₁ h).
template <class T>
Var<T> attend_block_cached(const DecoderLayer<T>& block, const Var<T>& h, WindowKvCache<T>& cache,
                           const std::int32_t* position_on_device = nullptr) {
  return h + attend_cached(block.self_attn, rms_norm(h, block.input_layernorm, block.eps), cache, position_on_device);
}

}  // namespace drt
