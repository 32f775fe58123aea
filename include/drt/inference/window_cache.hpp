// drt/inference/window_cache.hpp — sliding-window self-attention over a key/value cache, for
// decoding one position at a time or a segment at a time (spec §9.3, §9.6).
//
// Shapes: L new positions, H query heads, Hkv key/value heads, d head width, W window.
//   WindowKvCache      keys and values of the last W positions, (W, Hkv, d) each, as a ring:
//                      position j lives in slot j mod W, so memory never grows with the context
//   cached_attention   q (L, H, d), k, v (L, Hkv, d) of positions p0 .. p0+L−1 → out (L, H, d)
//   attend_cached      x (1, L, D) → the layer's attention output (1, L, D), cache updated
//
// The attention is the training op's (window_attention.hpp): query i sees keys i − W .. i, with
// score scale·⟨q_i, k_j⟩ − m_h·(i − j). Keys before p0 come from the cache, the rest from this
// call's own k. Unlike the reference's generate(), which keeps every past key (spec §14 A10),
// the cache holds exactly the W positions a future query can still see.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/core/parallel.hpp"
#include "drt/model/blocks.hpp"

namespace drt {

template <class T>
class WindowKvCache {
 public:
  WindowKvCache(Index window, Index kv_heads, Index head_dim)
      : window_(window), row_(kv_heads * head_dim),
        keys_(static_cast<std::size_t>(window * row_)), values_(static_cast<std::size_t>(window * row_)) {
    DRT_CHECK(window >= 1 && kv_heads >= 1 && head_dim >= 1, "WindowKvCache: window ", window, ", kv heads ", kv_heads,
              " and head width ", head_dim, " must be positive");
  }

  Index window() const { return window_; }
  Index next_position() const { return next_; }  // how many positions have gone through
  // Key/value row of an earlier position j, next_position() − W ≤ j < next_position().
  const T* key(Index j) const { return keys_.data() + slot(j) * row_; }
  const T* value(Index j) const { return values_.data() + slot(j) * row_; }

  // Appends positions next_position() .. + L − 1; only the last W stay.
  void push(const T* keys, const T* values, Index L) {
    for (Index r = std::max<Index>(0, L - window_); r < L; ++r) {
      const Index at = (next_ + r) % window_ * row_;
      std::copy(keys + r * row_, keys + (r + 1) * row_, keys_.data() + at);
      std::copy(values + r * row_, values + (r + 1) * row_, values_.data() + at);
    }
    next_ += L;
  }

  std::size_t bytes() const { return (keys_.size() + values_.size()) * sizeof(T); }

 private:
  Index slot(Index j) const {
    DRT_CHECK(j < next_ && j >= next_ - window_ && j >= 0, "WindowKvCache: position ", j, " is not cached (cache holds ",
              std::max<Index>(0, next_ - window_), " .. ", next_ - 1, ")");
    return j % window_;
  }

  Index window_, row_, next_ = 0;
  std::vector<T> keys_, values_;
};

// Attention of L new positions (the first is cache.next_position()) over the cache and themselves.
// q (L, H, d), k and v (L, Hkv, d), contiguous; returns (L, H, d). Does not change the cache.
template <class T>
Tensor<T> cached_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const WindowKvCache<T>& cache,
                           const Tensor<T>& slopes, T scale) {
  const Index L = q.size(0), H = q.size(1), d = q.size(2), Hkv = k.size(1), W = cache.window();
  DRT_CHECK(k.shape() == v.shape() && k.size(0) == L && k.size(2) == d && H % Hkv == 0 && slopes.numel() == H,
            "cached_attention: q ", q.shape().str(), ", k ", k.shape().str(), ", v ", v.shape().str(), " and slopes ",
            slopes.shape().str(), " do not fit together");
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

// A decoder layer's self-attention (q/k/v projections, cached window attention, o_proj) on the
// already normed input x (1, L, D); pushes the new keys and values into `cache`.
template <class T>
Var<T> attend_cached(const DecoderAttention<T>& attn, const Var<T>& x, WindowKvCache<T>& cache) {
  DRT_CHECK(x.rank() == 3 && x.size(0) == 1, "attend_cached: x must be (1, L, D), got ", x.shape().str());
  const Index L = x.size(1);
  auto project = [&](const Parameter<T>& w, Index heads) {
    return linear(x, w).value().contiguous(step_arena()).reshape({L, heads, Index(attn.head_dim)});
  };
  const Tensor<T> q = project(attn.q_proj, attn.heads), k = project(attn.k_proj, attn.kv_heads),
                  v = project(attn.v_proj, attn.kv_heads);
  const Tensor<T> o = cached_attention(q, k, v, cache, attn.alibi_slopes, T(1) / std::sqrt(T(attn.head_dim)));
  cache.push(k.data(), v.data(), L);
  return linear(constant(o.reshape({1, L, Index(attn.heads) * attn.head_dim})), attn.o_proj);
}

// The attention half of a decoder block (spec §3) over L new positions: a = h + attn(norm₁ h).
template <class T>
Var<T> attend_block_cached(const DecoderLayer<T>& block, const Var<T>& h, WindowKvCache<T>& cache) {
  return h + attend_cached(block.self_attn, rms_norm(h, block.input_layernorm, block.eps), cache);
}

}  // namespace drt
