// drt/cuda/attention/warp_math.cuh — what the attention kernels share: one warp owns one query row
// (or one key row), its 32 lanes split the head width d (lane l holds elements l, l+32, ...), and
// dot products are finished with shuffles so that every lane holds the result.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace drt::cuda::attention {

inline constexpr int kWarp = 32;
inline constexpr int kMaxHeadDim = 256;                 // d ≤ 256: 8 values per lane
inline constexpr int kPerLane = kMaxHeadDim / kWarp;
inline constexpr int kWarpsPerBlock = 4;

template <class T>
__device__ inline T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// ⟨a, b⟩ over d elements; every lane gets it.
template <class T>
__device__ inline T warp_dot(const T* a, const T* b, int d, int lane) {
  T s = T(0);
  for (int e = lane; e < d; e += kWarp) s += a[e] * b[e];
  return warp_sum(s);
}

template <class T>
__device__ inline T device_exp(T x) {
  if constexpr (sizeof(T) == 4) return ::expf(x);
  else return ::exp(x);
}
template <class T>
__device__ inline T device_log(T x) {
  if constexpr (sizeof(T) == 4) return ::logf(x);
  else return ::log(x);
}
template <class T>
__device__ inline T minus_infinity() {
  return -static_cast<T>(INFINITY);
}

// The global warp number and lane of this thread, for kernels launched by warp_grid().
__device__ inline long long warp_index() { return (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; }
__device__ inline int lane_index() { return static_cast<int>(threadIdx.x % kWarp); }

// Blocks of kWarpsPerBlock warps covering `warps` warps.
inline unsigned warp_grid(long long warps) {
  return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}
inline constexpr unsigned kWarpBlockThreads = kWarpsPerBlock * kWarp;

}  // namespace drt::cuda::attention
