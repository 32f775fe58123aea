// drt/cuda/inference/decode.cuh — the kernels of GPU decoding that the training ops do not have:
// attention of a few new positions over a window key/value cache, GCA of a few query rows over
// the retrieved chunks (the "inference variant" of GCA), and the small bookkeeping kernels that
// let one token's step be recorded once into a CUDA graph and replayed (graph.cuh).
//
// Shapes: L new positions (rows), H query heads, Hkv key/value heads, d head width, W window,
// k retrieved chunks, N keys per chunk, U chunks held on the device, D = H·d.
//
//   cached_window_attention  q (L, H, d), k_new/v_new (L, Hkv, d), cache (W, Hkv, d) → out (L, H, d)
//   push_to_window_cache     k_new/v_new (L, Hkv, d) → cache slots (p0 + r) mod W
//   gca_decode               q (L, H, d), keys/values (U, N, H, d), slot (k), weight (k) → out (L, H, d)
//   embed_rows               ids (L) → rows of the table (L, D)
//   write_row_at_position    row (D) → buffer (S, D) row p0 mod S
//   advance_position         p0 += 1
//
// Why the position can live on the device: a CUDA graph replays the launches it recorded with the
// arguments it recorded. Every kernel here that depends on the position reads it from
// `position_on_device` when that is given (a replay then sees the current position), and from the
// host argument `p0` otherwise (the eager path).
//
// Layout of the attention kernels: one block per (row, head), kDecodeWarps warps. The keys are
// dealt round-robin to the warps; each warp keeps an online softmax (running max, running sum,
// and the weighted sum of values, lane l holding elements l, l + 32, ... of d), and the warps'
// partial results are merged through shared memory at the end. A decode step has only H·L
// (row, head) pairs, so splitting the keys over warps is what gives the GPU enough parallel work.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::decode {

inline constexpr int kDecodeWarps = 8;
inline constexpr int kDecodeThreads = kDecodeWarps * attention::kWarp;

__device__ inline Index position_of(Index p0, const std::int32_t* position_on_device) {
  return position_on_device != nullptr ? static_cast<Index>(*position_on_device) : p0;
}

// One warp's online softmax over the keys it was dealt.
template <class T>
struct OnlineSoftmax {
  T max = attention::minus_infinity<T>(), sum = T(0);
  T acc[attention::kPerLane] = {};

  __device__ void add(T score, const T* value, int d, int lane) {
    const T new_max = score > max ? score : max;
    const T rescale = attention::device_exp(max - new_max), p = attention::device_exp(score - new_max);
    sum = sum * rescale + p;
#pragma unroll
    for (int t = 0; t < attention::kPerLane; ++t) {
      const int e = lane + t * attention::kWarp;
      if (e < d) acc[t] = acc[t] * rescale + p * value[e];
    }
    max = new_max;
  }
};

// Where one key is: its key and value rows and the bias added to its score.
template <class T>
struct KeyRef {
  const T* key;
  const T* value;
  T bias;
};

// Feeds the keys j = first, first + stride, ... ≤ last to `state`, four at a time: a step is
// latency-bound (each key is a dependent global load), so the four keys' loads go out together.
template <class T, class KeyAt>
__device__ void add_keys(OnlineSoftmax<T>& state, const T* q, Index first, Index last, Index stride, int d, int lane,
                         T scale, KeyAt key_at) {
  constexpr int kUnroll = 4;
  for (Index j0 = first; j0 <= last; j0 += kUnroll * stride) {
    T score[kUnroll];
    KeyRef<T> at[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const Index j = j0 + u * stride;
      if (j > last) break;
      at[u] = key_at(j);
      score[u] = scale * attention::warp_dot(q, at[u].key, d, lane) + at[u].bias;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (j0 + u * stride <= last) state.add(score[u], at[u].value, d, lane);
  }
}

// Merges the block's kDecodeWarps online softmaxes into out_row (d values): factor·Σ p·v / Σ p,
// added to out_row when `accumulate`. Warps that saw no key have max = −∞ and drop out.
template <class T>
__device__ void merge_warps(OnlineSoftmax<T>& mine, int d, int warp, int lane, T* out_row, T factor, bool accumulate) {
  __shared__ T maxes[kDecodeWarps], sums[kDecodeWarps];
  __shared__ T accs[kDecodeWarps][attention::kMaxHeadDim];
  if (lane == 0) {
    maxes[warp] = mine.max;
    sums[warp] = mine.sum;
  }
#pragma unroll
  for (int t = 0; t < attention::kPerLane; ++t) {
    const int e = lane + t * attention::kWarp;
    if (e < d) accs[warp][e] = mine.acc[t];
  }
  __syncthreads();
  T top = attention::minus_infinity<T>();
  for (int w = 0; w < kDecodeWarps; ++w) top = maxes[w] > top ? maxes[w] : top;
  // Threads share out the d elements: element e sums the warps' partials.
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    T total = T(0), value = T(0);
    if (top != attention::minus_infinity<T>())
      for (int w = 0; w < kDecodeWarps; ++w) {
        if (maxes[w] == attention::minus_infinity<T>()) continue;
        const T scale = attention::device_exp(maxes[w] - top);
        total += sums[w] * scale;
        value += accs[w][e] * scale;
      }
    const T result = total > T(0) ? factor * value / total : T(0);
    out_row[e] = accumulate ? out_row[e] + result : result;
  }
  __syncthreads();  // the shared arrays are reused by the caller's next merge
}

// ---- window attention of L new positions over the cache ---------------------------------------

template <class T>
__global__ void cached_window_attention_kernel(const T* __restrict__ q, const T* __restrict__ k_new,
                                               const T* __restrict__ v_new, const T* __restrict__ cache_k,
                                               const T* __restrict__ cache_v, const T* __restrict__ slopes, T scale,
                                               int H, int Hkv, int d, Index W, Index p0,
                                               const std::int32_t* position_on_device, T* __restrict__ out) {
  const int r = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv);
  const int warp = threadIdx.x / attention::kWarp, lane = threadIdx.x % attention::kWarp;
  const Index first_new = position_of(p0, position_on_device), i = first_new + r;
  const Index first = i - W > 0 ? i - W : 0;
  const T* qi = q + (static_cast<Index>(r) * H + h) * d;
  const T slope = slopes[h];
  OnlineSoftmax<T> state;
  add_keys(state, qi, first + warp, i, kDecodeWarps, d, lane, scale, [&](Index j) {
    // Keys before this call's first position are in the ring, the rest in this call's k_new.
    const Index row = j < first_new ? (j % W) : (j - first_new);
    const Index at = (row * Hkv + g) * d;
    return KeyRef<T>{(j < first_new ? cache_k : k_new) + at, (j < first_new ? cache_v : v_new) + at,
                     -slope * static_cast<T>(i - j)};
  });
  merge_warps(state, d, warp, lane, out + (static_cast<Index>(r) * H + h) * d, T(1), false);
}

// Rows (L, Hkv, d) into the ring at slots (p0 + r) mod W; only the last W rows can stay.
template <class T>
__global__ void push_to_window_cache_kernel(const T* __restrict__ k_new, const T* __restrict__ v_new, T* cache_k,
                                            T* cache_v, Index L, Index row_width, Index W, Index p0,
                                            const std::int32_t* position_on_device) {
  const Index first_new = position_of(p0, position_on_device), skip = L > W ? L - W : 0;
  const Index n = (L - skip) * row_width;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index r = skip + t / row_width, e = t % row_width, slot = (first_new + r) % W;
    cache_k[slot * row_width + e] = k_new[r * row_width + e];
    cache_v[slot * row_width + e] = v_new[r * row_width + e];
  }
}

// ---- GCA of L query rows over k retrieved chunks (the inference variant) -----------------------

// out[r, h] = Σ_j weight[j] · softmax_n(scale·⟨q, K[slot[j], n, h]⟩) · V[slot[j], n, h]; chunks with
// slot −1 or weight 0 are skipped (an empty retrieval slot).
template <class T>
__global__ void gca_decode_kernel(const T* __restrict__ q, const T* __restrict__ keys, const T* __restrict__ values,
                                  const std::int32_t* __restrict__ slot, const T* __restrict__ weight, int k, int N,
                                  int H, int d, T scale, T* __restrict__ out) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / attention::kWarp, lane = threadIdx.x % attention::kWarp;
  const T* qi = q + (static_cast<Index>(r) * H + h) * d;
  T* out_row = out + (static_cast<Index>(r) * H + h) * d;
  for (int e = threadIdx.x; e < d; e += blockDim.x) out_row[e] = T(0);
  __syncthreads();
  for (int j = 0; j < k; ++j) {  // block-uniform: every thread reads the same slot and weight
    const std::int32_t u = slot[j];
    const T w = weight[j];
    if (u < 0 || w == T(0)) continue;
    OnlineSoftmax<T> state;
    add_keys(state, qi, warp, N - 1, kDecodeWarps, d, lane, scale, [&](Index n) {
      const Index at = ((static_cast<Index>(u) * N + n) * H + h) * d;
      return KeyRef<T>{keys + at, values + at, T(0)};
    });
    merge_warps(state, d, warp, lane, out_row, w, true);
  }
}

// ---- bookkeeping kernels ------------------------------------------------------------------------

template <class T>
__global__ void embed_rows_kernel(const T* __restrict__ table, const std::int32_t* __restrict__ ids, Index L, Index D,
                                  T* __restrict__ out) {
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < L * D;
       t += static_cast<Index>(gridDim.x) * blockDim.x)
    out[t] = table[static_cast<Index>(ids[t / D]) * D + t % D];
}

template <class T>
__global__ void write_row_at_position_kernel(const T* __restrict__ row, T* buffer, Index S, Index D, Index p0,
                                             const std::int32_t* position_on_device) {
  const Index slot = position_of(p0, position_on_device) % S;
  for (Index e = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; e < D; e += static_cast<Index>(gridDim.x) * blockDim.x)
    buffer[slot * D + e] = row[e];
}

__global__ inline void advance_position_kernel(std::int32_t* position, std::int32_t by) { *position += by; }

// ---- host entry points ------------------------------------------------------------------------

namespace detail {
template <class T>
const T* device_data(const Tensor<T>& t, const char* op, const char* name) {
  DRT_CHECK(!t.on_host() && t.is_contiguous(), op, ": ", name, " of shape ", t.shape().str(),
            " must be a contiguous device tensor");
  return t.data();
}
// Blocks of 256 threads for n elements (grid-stride loops cover what 4096 blocks do not).
inline unsigned element_grid(Index n) {
  const Index blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 4096 ? 4096 : blocks);
}
}  // namespace detail

// q (L, H, d), k_new/v_new (L, Hkv, d), cache_k/cache_v (W, Hkv, d), slopes (H) → out (L, H, d).
// The first new row is at position p0 (or *position_on_device); positions before it are in the cache.
template <class T>
void cached_window_attention(const Tensor<T>& q, const Tensor<T>& k_new, const Tensor<T>& v_new, const Tensor<T>& cache_k,
                             const Tensor<T>& cache_v, const Tensor<T>& slopes, T scale, Index p0,
                             const std::int32_t* position_on_device, const Tensor<T>& out) {
  const char* op = "cached_window_attention";
  const Index L = q.size(0), H = q.size(1), d = q.size(2), Hkv = k_new.size(1), W = cache_k.size(0);
  DRT_CHECK(d <= attention::kMaxHeadDim && H % Hkv == 0 && out.shape() == q.shape() && cache_k.size(1) == Hkv &&
                cache_k.size(2) == d && k_new.size(0) == L && v_new.shape() == k_new.shape() &&
                cache_v.shape() == cache_k.shape() && slopes.numel() == H,
            op, ": q ", q.shape().str(), ", k ", k_new.shape().str(), ", cache ", cache_k.shape().str(), " and out ",
            out.shape().str(), " do not fit together (d ≤ ", attention::kMaxHeadDim, ")");
  if (L == 0) return;
  cached_window_attention_kernel<T><<<dim3(unsigned(L), unsigned(H)), kDecodeThreads, 0, ::drt::cuda::stream()>>>(
      detail::device_data(q, op, "q"), detail::device_data(k_new, op, "k"), detail::device_data(v_new, op, "v"),
      detail::device_data(cache_k, op, "cache keys"), detail::device_data(cache_v, op, "cache values"),
      detail::device_data(slopes, op, "slopes"), scale, int(H), int(Hkv), int(d), W, p0, position_on_device,
      const_cast<T*>(detail::device_data(out, op, "out")));
  DRT_CUDA_CHECK_LAUNCH();
}

template <class T>
void push_to_window_cache(const Tensor<T>& k_new, const Tensor<T>& v_new, const Tensor<T>& cache_k,
                          const Tensor<T>& cache_v, Index p0, const std::int32_t* position_on_device) {
  const char* op = "push_to_window_cache";
  const Index L = k_new.size(0), row = cache_k.numel() / cache_k.size(0), W = cache_k.size(0);
  DRT_CHECK(k_new.shape() == v_new.shape() && k_new.numel() == L * row && cache_v.shape() == cache_k.shape(), op,
            ": new rows ", k_new.shape().str(),
            " do not fit a cache of ", cache_k.shape().str());
  if (L == 0) return;
  push_to_window_cache_kernel<T><<<detail::element_grid(L * row), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(k_new, op, "k"), detail::device_data(v_new, op, "v"),
      const_cast<T*>(detail::device_data(cache_k, op, "cache keys")),
      const_cast<T*>(detail::device_data(cache_v, op, "cache values")), L, row, W, p0, position_on_device);
  DRT_CUDA_CHECK_LAUNCH();
}

// q (L, H, d), keys/values (U, N, H, d), slot (k) int32 and weight (k) on the device → out (L, H, d).
template <class T>
void gca_decode(const Tensor<T>& q, const Tensor<T>& keys, const Tensor<T>& values, const IndexTensor& slot,
                const Tensor<T>& weight, T scale, const Tensor<T>& out) {
  const char* op = "gca_decode";
  const Index L = q.size(0), H = q.size(1), d = q.size(2), N = keys.size(1), k = slot.numel();
  DRT_CHECK(keys.shape() == values.shape() && keys.size(2) == H && keys.size(3) == d && weight.numel() == k &&
                out.shape() == q.shape() && d <= attention::kMaxHeadDim,
            op, ": q ", q.shape().str(), ", keys ", keys.shape().str(), ", values ", values.shape().str(), ", slot ",
            slot.shape().str(), ", weight ", weight.shape().str(), " and out ", out.shape().str(), " do not fit together");
  if (L == 0) return;
  gca_decode_kernel<T><<<dim3(unsigned(L), unsigned(H)), kDecodeThreads, 0, ::drt::cuda::stream()>>>(
      detail::device_data(q, op, "q"), detail::device_data(keys, op, "keys"), detail::device_data(values, op, "values"),
      detail::device_data(slot, op, "slot"), detail::device_data(weight, op, "weight"), int(k), int(N), int(H), int(d),
      scale, const_cast<T*>(detail::device_data(out, op, "out")));
  DRT_CUDA_CHECK_LAUNCH();
}

// ids (L) int32 on the device (already valid rows of the table) → out (L, D).
template <class T>
void embed_rows(const Tensor<T>& table, const IndexTensor& ids, const Tensor<T>& out) {
  const char* op = "embed_rows";
  const Index L = ids.numel(), D = table.size(1);
  DRT_CHECK(out.numel() == L * D, op, ": out ", out.shape().str(), " does not hold ", L, " rows of ", D);
  embed_rows_kernel<T><<<detail::element_grid(L * D), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(table, op, "table"), detail::device_data(ids, op, "ids"), L, D,
      const_cast<T*>(detail::device_data(out, op, "out")));
  DRT_CUDA_CHECK_LAUNCH();
}

// row (D) → buffer (S, D) at row p mod S, p = p0 or *position_on_device.
template <class T>
void write_row_at_position(const Tensor<T>& row, const Tensor<T>& buffer, Index p0, const std::int32_t* position_on_device) {
  const char* op = "write_row_at_position";
  const Index S = buffer.size(0), D = buffer.size(1);
  DRT_CHECK(row.numel() == D, op, ": a row of ", row.numel(), " values for a buffer ", buffer.shape().str());
  write_row_at_position_kernel<T><<<detail::element_grid(D), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(row, op, "row"), const_cast<T*>(detail::device_data(buffer, op, "buffer")), S, D, p0,
      position_on_device);
  DRT_CUDA_CHECK_LAUNCH();
}

inline void advance_position(std::int32_t* position_on_device, std::int32_t by) {
  advance_position_kernel<<<1, 1, 0, ::drt::cuda::stream()>>>(position_on_device, by);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda::decode
