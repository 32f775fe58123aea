// drt/cuda/attention/gca.cuh — Grouped Cross-Attention on the GPU, forward and backward (the CPU
// op in drt/attention/gca.hpp is the reference and states the math).
//
// Shapes: q (Z, H, M, d), k and v (B, E, N, Hkv, d), index (Z, Kc) int32 (−1 = empty slot),
// weight (Z, Kc), out (Z, H, M, d), lse (Z, H, Kc, M) (−inf for a skipped slot).
//
// One warp per query (z, h, m), lanes splitting d, an online softmax per retrieved chunk,
// chunks read in place through `index`. The backward:
//   1. per query: recompute o_i, δ_i = ⟨dO, o_i⟩, dQ += scale·Σ_i w_i Σ_n P (⟨dO, v_n⟩ − δ_i) k_n;
//   2. per (z, i): dW[z, i] += Σ_{h,m} δ (one thread; H·M terms);
//   3. per key (z, h, i, n) of a retrieved chunk: its dK/dV contribution summed over the M
//      queries, then added to the chunk memory with atomics (several rows retrieve the same
//      chunk), so fp32 dK/dV may differ in the last bits between runs.
// Correct, not fast: the tensor-core kernels are the next issue.
#pragma once

#include <cstdint>

#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"

namespace drt::cuda {
namespace attention {

struct GcaShape {
  int Z, H, M, d, B, E, N, Hkv, Kc, rows_per_sequence, heads_per_kv;
};

// Row of key/value n of chunk e, sequence b, kv head g in the (B, E, N, Hkv, d) memory.
__device__ inline long long gca_key_row(const GcaShape& s, int b, int e, int n, int g) {
  return ((static_cast<long long>(b) * s.E + e) * s.N + n) * s.Hkv + g;
}

template <class T>
__global__ void gca_forward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index, const T* weight,
                                   GcaShape s, T scale, T* out, T* lse) {
  const long long query = warp_index();  // (z, h, m) in q's row order
  if (query >= static_cast<long long>(s.Z) * s.H * s.M) return;
  const int lane = lane_index();
  const int m = static_cast<int>(query % s.M), h = static_cast<int>((query / s.M) % s.H), z = static_cast<int>(query / (static_cast<long long>(s.M) * s.H));
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const T* qrow = q + query * s.d;
  T total[kPerLane] = {};
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const T w = weight[z * s.Kc + i];
    T* lse_slot = lse + ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == T(0)) {  // skipped, as on the CPU
      if (lane == 0) *lse_slot = minus_infinity<T>();
      continue;
    }
    T running_max = minus_infinity<T>(), running_sum = T(0), acc[kPerLane] = {};
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T score = scale * warp_dot(qrow, k + key * s.d, s.d, lane);
      const T new_max = ::fmax(running_max, score);
      const T rescale = device_exp(running_max - new_max), p = device_exp(score - new_max);
      running_sum = running_sum * rescale + p;
      running_max = new_max;
      const T* vrow = v + key * s.d;
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) acc[c] = acc[c] * rescale + p * vrow[x];
    }
    const T norm = w / running_sum;
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) total[c] += norm * acc[c];
    if (lane == 0) *lse_slot = running_max + device_log(running_sum);
  }
  for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) out[query * s.d + x] = total[c];
}

// Pass 1: δ (Z, H, Kc, M) and dQ.
template <class T>
__global__ void gca_query_backward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index,
                                          const T* weight, GcaShape s, T scale, const T* lse, const T* dout,
                                          T* delta, T* dq) {
  const long long query = warp_index();
  if (query >= static_cast<long long>(s.Z) * s.H * s.M) return;
  const int lane = lane_index();
  const int m = static_cast<int>(query % s.M), h = static_cast<int>((query / s.M) % s.H), z = static_cast<int>(query / (static_cast<long long>(s.M) * s.H));
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const T *qrow = q + query * s.d, *dorow = dout + query * s.d;
  T dq_acc[kPerLane] = {};
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const T w = weight[z * s.Kc + i];
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == T(0)) {
      if (lane == 0) delta[stat] = T(0);
      continue;
    }
    const T row_lse = lse[stat];
    T o[kPerLane] = {};  // o_i, recomputed from lse
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T p = device_exp(scale * warp_dot(qrow, k + key * s.d, s.d, lane) - row_lse);
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) o[c] += p * v[key * s.d + x];
    }
    T partial = T(0);
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) partial += dorow[x] * o[c];
    const T slot_delta = warp_sum(partial);
    if (lane == 0) delta[stat] = slot_delta;
    if (!dq) continue;
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T* krow = k + key * s.d;
      const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - row_lse);
      const T ds = w * p * (warp_dot(dorow, v + key * s.d, s.d, lane) - slot_delta);
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) dq_acc[c] += ds * krow[x];
    }
  }
  if (dq)
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) dq[query * s.d + x] += scale * dq_acc[c];
}

// Pass 2: dW[z, i] += Σ_{h,m} δ.
template <class T>
__global__ void gca_weight_backward_kernel(const T* delta, GcaShape s, T* dweight) {
  const long long slot = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;  // (z, i)
  if (slot >= static_cast<long long>(s.Z) * s.Kc) return;
  const int i = static_cast<int>(slot % s.Kc), z = static_cast<int>(slot / s.Kc);
  T acc = T(0);
  for (int h = 0; h < s.H; ++h)
    for (int m = 0; m < s.M; ++m) acc += delta[((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m];
  dweight[slot] += acc;
}

// Pass 3: for key n of the chunk that (z, i) retrieved, head h: its dK and dV over the M queries.
template <class T>
__global__ void gca_key_backward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index, const T* weight,
                                        GcaShape s, T scale, const T* lse, const T* delta, const T* dout, T* dk, T* dv) {
  const long long item = warp_index();  // (z, h, i, n)
  if (item >= static_cast<long long>(s.Z) * s.H * s.Kc * s.N) return;
  const int lane = lane_index();
  const int n = static_cast<int>(item % s.N), i = static_cast<int>((item / s.N) % s.Kc);
  const int h = static_cast<int>((item / (static_cast<long long>(s.N) * s.Kc)) % s.H);
  const int z = static_cast<int>(item / (static_cast<long long>(s.N) * s.Kc * s.H));
  const int e = index[z * s.Kc + i];
  const T w = weight[z * s.Kc + i];
  if (e < 0 || w == T(0)) return;
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const long long key = gca_key_row(s, b, e, n, g);
  const T *krow = k + key * s.d, *vrow = v + key * s.d;
  T dk_acc[kPerLane] = {}, dv_acc[kPerLane] = {};
  for (int m = 0; m < s.M; ++m) {
    const long long query = (static_cast<long long>(z) * s.H + h) * s.M + m;
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    const T *qrow = q + query * s.d, *dorow = dout + query * s.d;
    const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - lse[stat]);
    const T ds = w * p * (warp_dot(dorow, vrow, s.d, lane) - delta[stat]);
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) {
      dk_acc[c] += ds * qrow[x];
      dv_acc[c] += w * p * dorow[x];
    }
  }
  for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) {
    if (dk) atomicAdd(dk + key * s.d + x, scale * dk_acc[c]);
    if (dv) atomicAdd(dv + key * s.d + x, dv_acc[c]);
  }
}

inline GcaShape gca_shape(const Shape& q, const Shape& k, const Shape& index) {
  DRT_CHECK(q[3] <= kMaxHeadDim, "gca on the GPU: head width ", q[3], " is above ", kMaxHeadDim);
  GcaShape s{int(q[0]), int(q[1]), int(q[2]), int(q[3]), int(k[0]), int(k[1]), int(k[2]), int(k[3]), int(index[1]), 0, 0};
  s.rows_per_sequence = s.Z / s.B;
  s.heads_per_kv = s.H / s.Hkv;
  return s;
}

}  // namespace attention

// Writes out (Z, H, M, d) and lse (Z, H, Kc, M); everything contiguous and on the GPU.
template <class T>
void gca_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                 const Tensor<T>& weight, T scale, const Tensor<T>& out, const Tensor<T>& lse) {
  const attention::GcaShape s = attention::gca_shape(q.shape(), k.shape(), index.shape());
  const long long queries = static_cast<long long>(s.Z) * s.H * s.M;
  if (queries == 0) return;
  attention::gca_forward_kernel<T><<<attention::warp_grid(queries), attention::kWarpBlockThreads>>>(
      q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, out.data(), lse.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// Adds into dq, dk, dv and dweight (each may be null), as the CPU backward does.
template <class T>
void gca_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                  const Tensor<T>& weight, T scale, const Tensor<T>& lse, const Tensor<T>& dout, const Tensor<T>* dq,
                  const Tensor<T>* dk, const Tensor<T>* dv, const Tensor<T>* dweight) {
  const attention::GcaShape s = attention::gca_shape(q.shape(), k.shape(), index.shape());
  const long long queries = static_cast<long long>(s.Z) * s.H * s.M;
  if (queries == 0 || s.Kc == 0) return;
  const Tensor<T> delta = Tensor<T>::empty(lse.shape(), nullptr, q.device());
  attention::gca_query_backward_kernel<T><<<attention::warp_grid(queries), attention::kWarpBlockThreads>>>(
      q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), dout.data(), delta.data(),
      dq ? dq->data() : nullptr);
  DRT_CUDA_CHECK_LAUNCH();
  if (dweight) {
    const long long slots = static_cast<long long>(s.Z) * s.Kc;
    attention::gca_weight_backward_kernel<T><<<static_cast<unsigned>((slots + 127) / 128), 128>>>(delta.data(), s,
                                                                                                dweight->data());
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (dk || dv) {
    const long long keys = queries / s.M * s.Kc * s.N;
    attention::gca_key_backward_kernel<T><<<attention::warp_grid(keys), attention::kWarpBlockThreads>>>(
        q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), delta.data(), dout.data(),
        dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
    DRT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace drt::cuda
