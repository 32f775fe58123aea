// drt/cuda/attention/window_attention.cuh — sliding-window ALiBi attention on the GPU, forward and
// backward (the CPU op in drt/attention/window_attention.hpp is the reference).
//
// Shapes: q (B, T, H, d), k and v (B, T, Hkv, d), slopes (H), out (B, T, H, d), lse (B, H, T);
// query t of head h sees keys j ∈ [t − W, t] of kv head h / (H / Hkv) with score
// scale·⟨q_t, k_j⟩ − slope_h·(t − j).
//
// Two versions, each an online softmax over the window (running max, running sum, rescaled
// accumulator) with a backward that recomputes probabilities from lse as flash attention does;
// dK and dV walk, for each key, the queries that can see it, so no two threads write the same
// row and no atomics are needed: the result is the same on every run.
//   version 1 (any d ≤ 256, float or double): one warp per query row (forward, dQ) or key row
//     (dK, dV), lanes splitting d: simple, about 1 TFLOP/s.
//   version 2 (float, d ≤ 64; what DRT uses): one thread per row, tiles of 64 keys (or queries)
//     staged in shared memory (drt/cuda/attention/tiles.cuh).
// Both are fp32 CUDA-core kernels; tensor cores are the next issue.
#pragma once

#include <type_traits>

#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/tiles.cuh"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"

namespace drt::cuda {
namespace attention {

struct WindowShape {
  int B, T, H, Hkv, d, W, heads_per_kv;
};

template <class T>
__global__ void window_forward_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                      T* out, T* lse) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int lane = lane_index();
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const int kv = h / s.heads_per_kv;
  const T* qrow = q + row * s.d;
  const T slope = slopes[h];
  T running_max = minus_infinity<T>(), running_sum = T(0), acc[kPerLane] = {};
  for (int j = (t > s.W ? t - s.W : 0); j <= t; ++j) {
    const long long key = (static_cast<long long>(b) * s.T + j) * s.Hkv + kv;
    const T score = scale * warp_dot(qrow, k + key * s.d, s.d, lane) - slope * T(t - j);
    const T new_max = ::fmax(running_max, score);
    const T rescale = device_exp(running_max - new_max), p = device_exp(score - new_max);
    running_sum = running_sum * rescale + p;
    running_max = new_max;
    const T* vrow = v + key * s.d;
    for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) acc[i] = acc[i] * rescale + p * vrow[e];
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) out[row * s.d + e] = acc[i] / running_sum;
  if (lane == 0) lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = running_max + device_log(running_sum);
}

// δ_t = ⟨dO_t, O_t⟩ per query row, laid out like lse (B, H, T).
template <class T>
__global__ void window_delta_kernel(const T* out, const T* dout, WindowShape s, T* delta) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const T value = warp_dot(out + row * s.d, dout + row * s.d, s.d, lane_index());
  if (lane_index() == 0) delta[(static_cast<long long>(b) * s.H + h) * s.T + t] = value;
}

// dQ_t += scale · Σ_j P_tj (⟨dO_t, v_j⟩ − δ_t) k_j
template <class T>
__global__ void window_dq_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                 const T* lse, const T* delta, const T* dout, T* dq) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int lane = lane_index();
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const int kv = h / s.heads_per_kv;
  const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
  const T row_lse = lse[stat], row_delta = delta[stat], slope = slopes[h];
  const T *qrow = q + row * s.d, *dorow = dout + row * s.d;
  T acc[kPerLane] = {};
  for (int j = (t > s.W ? t - s.W : 0); j <= t; ++j) {
    const long long key = (static_cast<long long>(b) * s.T + j) * s.Hkv + kv;
    const T* krow = k + key * s.d;
    const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - slope * T(t - j) - row_lse);
    const T ds = p * (warp_dot(dorow, v + key * s.d, s.d, lane) - row_delta);
    for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) acc[i] += ds * krow[e];
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) dq[row * s.d + e] += scale * acc[i];
}

// For key j of kv head g: dK_j += scale · Σ dS_tj q_t and dV_j += Σ P_tj dO_t over the heads of
// the group and the queries t ∈ [j, j + W].
template <class T>
__global__ void window_dkv_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                  const T* lse, const T* delta, const T* dout, T* dk, T* dv) {
  const long long key = warp_index();  // (b, j, g) in k's row order
  if (key >= static_cast<long long>(s.B) * s.T * s.Hkv) return;
  const int lane = lane_index();
  const int g = static_cast<int>(key % s.Hkv), j = static_cast<int>((key / s.Hkv) % s.T), b = static_cast<int>(key / (static_cast<long long>(s.Hkv) * s.T));
  const T *krow = k + key * s.d, *vrow = v + key * s.d;
  T dk_acc[kPerLane] = {}, dv_acc[kPerLane] = {};
  for (int h = g * s.heads_per_kv; h < (g + 1) * s.heads_per_kv; ++h) {
    const T slope = slopes[h];
    const int last = (j + s.W < s.T - 1 ? j + s.W : s.T - 1);
    for (int t = j; t <= last; ++t) {
      const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
      const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
      const T *qrow = q + row * s.d, *dorow = dout + row * s.d;
      const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - slope * T(t - j) - lse[stat]);
      const T ds = p * (warp_dot(dorow, vrow, s.d, lane) - delta[stat]);
      for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) {
        dk_acc[i] += ds * qrow[e];
        dv_acc[i] += p * dorow[e];
      }
    }
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) {
    if (dk) dk[key * s.d + e] += scale * dk_acc[i];
    if (dv) dv[key * s.d + e] += dv_acc[i];
  }
}

// ---- version 2: tiled, one thread per row ------------------------------------------------------
// Grid (⌈T/64⌉, H, B) for the query-side kernels, (⌈T/64⌉, Hkv, B) for the key side; 64 threads.

// Query t = t0 + threadIdx.x; key tiles cover [t0 − W, t0 + 63]; each thread masks its own window.
__global__ void __launch_bounds__(tiles::kTile) window_forward_tiled(const float* q, const float* k, const float* v,
                                                                     const float* slopes, WindowShape s, float scale,
                                                                     float* out, float* lse) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int t = t0 + threadIdx.x;
  const bool active = t < s.T;
  const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
  float qr[kTileD];
  load_row(qr, q + (active ? row : 0) * s.d, s.d, scale);
  const float slope = slopes[h];
  OnlineSoftmax softmax;
  const int first = t0 > s.W ? t0 - s.W : 0, last = min(s.T - 1, t0 + kTile - 1);
  for (int j0 = first; j0 <= last; j0 += kTile) {
    __syncthreads();
    auto key_row = [&](const float* base) {
      return [=](int r) -> const float* {
        const int j = j0 + r;
        return j <= last ? base + ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * s.d : nullptr;
      };
    };
    stage(keys, s.d, key_row(k));
    stage(values, s.d, key_row(v));
    __syncthreads();
    if (!active) continue;
    softmax.add_tile(qr, keys, values, min(kTile, last - j0 + 1), [&](int r) {
      const int j = j0 + r;
      return (j <= t && j >= t - s.W) ? -slope * float(t - j) : -INFINITY;
    });
  }
  if (!active) return;
  const float inv = 1.0f / softmax.sum;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) out[row * s.d + c] = softmax.acc[c] * inv;
  lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = softmax.max + logf(softmax.sum);
}

// dQ_t += scale · Σ_j P_tj (⟨dO_t, v_j⟩ − δ_t) k_j, one thread per query, key tiles as forward.
__global__ void __launch_bounds__(tiles::kTile) window_dq_tiled(const float* q, const float* k, const float* v,
                                                                const float* slopes, WindowShape s, float scale,
                                                                const float* lse, const float* delta, const float* dout,
                                                                float* dq) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int t = t0 + threadIdx.x;
  const bool active = t < s.T;
  const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
  const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + (active ? t : 0);
  float qr[kTileD], dor[kTileD], acc[kTileD] = {};
  load_row(qr, q + (active ? row : 0) * s.d, s.d, scale);
  load_row(dor, dout + (active ? row : 0) * s.d, s.d);
  const float slope = slopes[h], row_lse = lse[stat], row_delta = delta[stat];
  const int first = t0 > s.W ? t0 - s.W : 0, last = min(s.T - 1, t0 + kTile - 1);
  for (int j0 = first; j0 <= last; j0 += kTile) {
    __syncthreads();
    auto key_row = [&](const float* base) {
      return [=](int r) -> const float* {
        const int j = j0 + r;
        return j <= last ? base + ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * s.d : nullptr;
      };
    };
    stage(keys, s.d, key_row(k));
    stage(values, s.d, key_row(v));
    __syncthreads();
    if (!active) continue;
    // Every thread walks the same rows in step (a shared row is then one broadcast read) and
    // skips the keys outside its window.
    const int rows = min(kTile, last - j0 + 1);
    for (int r = 0; r < rows; ++r) {
      const int j = j0 + r;
      if (j > t || j < t - s.W) continue;
      const float p = expf(dot(qr, keys.row[r]) - slope * float(t - j) - row_lse);
      axpy(acc, p * (dot(dor, values.row[r]) - row_delta), keys.row[r]);
    }
  }
  if (!active) return;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) dq[row * s.d + c] += scale * acc[c];
}

// For key j = j0 + threadIdx.x of kv head g: over the heads of its group and the queries
// t ∈ [j, j + W] (staged 64 at a time with their lse and δ):
//   want_dv: dV_j += Σ P_tj dO_t            (registers: k_j, dV_j)
//   else:    dK_j += scale · Σ dS_tj q_t     (registers: k_j, v_j, dK_j)
// Two launches rather than one keeps each under ~200 registers.
template <bool want_dv>
__global__ void __launch_bounds__(tiles::kTile) window_dkv_tiled(const float* q, const float* k, const float* v,
                                                                 const float* slopes, WindowShape s, float scale,
                                                                 const float* lse, const float* delta,
                                                                 const float* dout, float* grad) {
  using namespace tiles;
  __shared__ Tile queries, douts;
  __shared__ float tile_lse[kTile], tile_delta[kTile];
  const int j0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z;
  const int j = j0 + threadIdx.x;
  const bool active = j < s.T;
  const long long key = (static_cast<long long>(b) * s.T + (active ? j : 0)) * s.Hkv + g;
  float kr[kTileD], vr[kTileD], acc[kTileD] = {};
  load_row(kr, k + key * s.d, s.d, scale);  // pre-scaled: ⟨q, k·scale⟩ is the score
  if (!want_dv) load_row(vr, v + key * s.d, s.d);
  const int last = min(s.T - 1, j0 + kTile - 1 + s.W);
  for (int h = g * s.heads_per_kv; h < (g + 1) * s.heads_per_kv; ++h) {
    const float slope = slopes[h];
    for (int t0 = j0; t0 <= last; t0 += kTile) {
      __syncthreads();
      auto query_row = [&](const float* base) {
        return [=](int r) -> const float* {
          const int t = t0 + r;
          return t <= last ? base + ((static_cast<long long>(b) * s.T + t) * s.H + h) * s.d : nullptr;
        };
      };
      stage(queries, s.d, query_row(q));
      stage(douts, s.d, query_row(dout));
      if (threadIdx.x < kTile) {
        const int t = t0 + threadIdx.x;
        const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
        tile_lse[threadIdx.x] = t <= last ? lse[stat] : 0.0f;
        tile_delta[threadIdx.x] = t <= last ? delta[stat] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int rows = min(kTile, last - t0 + 1);
      for (int r = 0; r < rows; ++r) {  // in step across threads, as in window_dq_tiled
        const int t = t0 + r;
        if (t < j || t > j + s.W) continue;
        const float p = expf(dot(kr, queries.row[r]) - slope * float(t - j) - tile_lse[r]);
        if (want_dv) axpy(acc, p, douts.row[r]);
        else axpy(acc, p * (dot(vr, douts.row[r]) - tile_delta[r]), queries.row[r]);
      }
    }
  }
  if (!active) return;
  const float factor = want_dv ? 1.0f : scale;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) grad[key * s.d + c] += factor * acc[c];
}

inline bool use_tiled(const WindowShape& s) { return s.d <= tiles::kTileD; }
inline dim3 tiled_grid(const WindowShape& s, int heads) {
  return dim3(static_cast<unsigned>((s.T + tiles::kTile - 1) / tiles::kTile), static_cast<unsigned>(heads),
              static_cast<unsigned>(s.B));
}

inline WindowShape window_shape(const Shape& q, const Shape& k, Index window) {
  DRT_CHECK(q[3] <= kMaxHeadDim, "window_attention on the GPU: head width ", q[3], " is above ", kMaxHeadDim);
  return {int(q[0]), int(q[1]), int(q[2]), int(k[2]), int(q[3]), int(window), int(q[2] / k[2])};
}

}  // namespace attention

// Writes out (B, T, H, d) and lse (B, H, T); all tensors contiguous and on the GPU.
template <class T>
void window_attention_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                              Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse) {
  const attention::WindowShape s = attention::window_shape(q.shape(), k.shape(), window);
  const long long rows = static_cast<long long>(s.B) * s.T * s.H;
  if (rows == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (attention::use_tiled(s)) {
      attention::window_forward_tiled<<<attention::tiled_grid(s, s.H), attention::tiles::kTile>>>(
          q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data());
      DRT_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  attention::window_forward_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads>>>(
      q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// Adds into dq, dk, dv (each may be null), as the CPU backward does.
template <class T>
void window_attention_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                               Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse,
                               const Tensor<T>& dout, const Tensor<T>* dq, const Tensor<T>* dk, const Tensor<T>* dv) {
  const attention::WindowShape s = attention::window_shape(q.shape(), k.shape(), window);
  const long long rows = static_cast<long long>(s.B) * s.T * s.H, keys = static_cast<long long>(s.B) * s.T * s.Hkv;
  if (rows == 0) return;
  const Tensor<T> delta = Tensor<T>::empty(lse.shape(), nullptr, q.device());
  attention::window_delta_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads>>>(out.data(), dout.data(), s,
                                                                                         delta.data());
  DRT_CUDA_CHECK_LAUNCH();
  if constexpr (std::is_same_v<T, float>) {
    if (attention::use_tiled(s)) {
      if (dq) {
        attention::window_dq_tiled<<<attention::tiled_grid(s, s.H), attention::tiles::kTile>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dq->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dk) {
        attention::window_dkv_tiled<false><<<attention::tiled_grid(s, s.Hkv), attention::tiles::kTile>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dk->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dv) {
        attention::window_dkv_tiled<true><<<attention::tiled_grid(s, s.Hkv), attention::tiles::kTile>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dv->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      return;
    }
  }
  if (dq) {
    attention::window_dq_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads>>>(
        q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dq->data());
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (dk || dv) {
    attention::window_dkv_kernel<T><<<attention::warp_grid(keys), attention::kWarpBlockThreads>>>(
        q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(),
        dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
    DRT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace drt::cuda
