// drt/cuda/reduce.cuh — sum and max (with argmax) along one axis, on the device.
//
// Shapes: x (..., A, ...) → one value per lane (the A elements along the axis), the lanes in
// row-major order of the other axes (drt/core/reduce.hpp gives them as a LaneLayout).
//
// One warp per lane: the 32 threads read the lane's elements 32 apart (coalesced when the axis
// is the last one, the common case), then combine with warp shuffles. The sum's order of
// additions differs from the CPU's sequential loop, so float sums agree to rounding, not bits.
// max keeps the first position of the maximum, as the CPU does; NaNs are not treated specially.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "drt/core/device.hpp"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace detail {

struct DeviceLanes {
  Index dims[kMaxRank];     // the outer (non-reduced) axes, padded at the front with extent 1
  Index strides[kMaxRank];
  Index n, step, lanes;
};

inline constexpr int kWarpsPerBlock = 8;
inline constexpr std::int32_t kNoPosition = std::numeric_limits<std::int32_t>::max();

template <class T>
__device__ T warp_sum(T v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// The larger of two (value, position) pairs; equal values keep the smaller position, and a
// pair without a position (a thread that saw no element) always loses.
template <class T>
__device__ void warp_argmax(T& best, std::int32_t& where) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const T ob = __shfl_xor_sync(0xffffffffu, best, m);
    const std::int32_t ow = __shfl_xor_sync(0xffffffffu, where, m);
    if (ow != kNoPosition && (where == kNoPosition || ob > best || (ob == best && ow < where))) best = ob, where = ow;
  }
}

template <ReduceKind Kind, class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    reduce_lanes_kernel(const T* in, DeviceLanes l, T* out, std::int32_t* argmax) {
  const Index lane = Index(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int t = threadIdx.x % 32;
  if (lane >= l.lanes) return;  // the whole warp leaves together
  Index rest = lane, base = 0;
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d) {
    base += (rest % l.dims[d]) * l.strides[d];
    rest /= l.dims[d];
  }
  const T* x = in + base;
  if constexpr (Kind == ReduceKind::sum) {
    T acc = T(0);
    for (Index k = t; k < l.n; k += 32) acc += x[k * l.step];
    acc = warp_sum(acc);
    if (t == 0) out[lane] = acc;
  } else {
    T best{};
    std::int32_t where = kNoPosition;
    for (Index k = t; k < l.n; k += 32) {
      const T v = x[k * l.step];
      if (where == kNoPosition || v > best) best = v, where = static_cast<std::int32_t>(k);
    }
    warp_argmax(best, where);
    if (t == 0) {
      out[lane] = best;
      if (argmax) argmax[lane] = where;
    }
  }
}

template <class T>
void launch_reduce(ReduceKind kind, const void* in, const LaneLayout& lanes, void* out, std::int32_t* argmax) {
  DeviceLanes l{};
  const int lead = kMaxRank - lanes.outer.rank();
  for (int i = 0; i < kMaxRank; ++i) {
    l.dims[i] = i < lead ? 1 : lanes.outer[i - lead];
    l.strides[i] = i < lead ? 0 : lanes.outer_strides[i - lead];
  }
  l.n = lanes.n, l.step = lanes.step, l.lanes = lanes.outer.numel();
  DRT_CHECK(kind == ReduceKind::sum || l.n <= kNoPosition, "max: axis of ", l.n, " elements is too long for argmax");
  const unsigned blocks = static_cast<unsigned>((l.lanes + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const T* x = static_cast<const T*>(in);
  if (kind == ReduceKind::sum)
    reduce_lanes_kernel<ReduceKind::sum><<<blocks, 32 * kWarpsPerBlock, 0, ::drt::cuda::stream()>>>(x, l, static_cast<T*>(out), argmax);
  else
    reduce_lanes_kernel<ReduceKind::max><<<blocks, 32 * kWarpsPerBlock, 0, ::drt::cuda::stream()>>>(x, l, static_cast<T*>(out), argmax);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace detail

// The backend's entry point: out[l] = sum or max of lane l (argmax optional).
inline void reduce(DType type, ReduceKind kind, const void* in, const LaneLayout& lanes, void* out,
                   std::int32_t* argmax) {
  if (lanes.outer.numel() == 0) return;
  switch (type) {
    case DType::f32: return detail::launch_reduce<float>(kind, in, lanes, out, argmax);
    case DType::f64: return detail::launch_reduce<double>(kind, in, lanes, out, argmax);
    case DType::i32: return detail::launch_reduce<std::int32_t>(kind, in, lanes, out, argmax);
    case DType::i64: return detail::launch_reduce<std::int64_t>(kind, in, lanes, out, argmax);
    default: DRT_CHECK(false, "device reduction: unsupported element type");
  }
}

}  // namespace drt::cuda
