// drt/cuda/attention/window_attention.cuh — sliding-window ALiBi attention on the GPU, forward and
// backward (the CPU op in drt/attention/window_attention.hpp is the reference).
//
// Shapes: q (B, T, H, d), k and v (B, T, Hkv, d), slopes (H), out (B, T, H, d), lse (B, H, T);
// query t of head h sees keys j ∈ [t − W, t] of kv head h / (H / Hkv) with score
// scale·⟨q_t, k_j⟩ − slope_h·(t − j).
//
// One warp per query row (forward, dQ) or per key row (dK, dV), lanes splitting d. The forward
// is an online softmax over the window (running max, running sum, rescaled accumulator), so it
// needs no scratch; the backward recomputes probabilities from lse as flash attention does. dK
// and dV walk, for each key, the queries that can see it, so no two warps write the same row and
// no atomics are needed: the result is the same on every run. Correct, not fast: the tensor-core
// kernels are the next issue.
#pragma once

#include "drt/core/tensor.hpp"
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
