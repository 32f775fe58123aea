// drt/cuda/core/reduce.cuh — the whole-tensor sum and the backward of broadcasting on the
// device: the kernels of drt/core/reduce.hpp's sum_all and add_sum_to (sum and max along one
// axis are the backend's, drt/cuda/reduce.cuh).
//
// Shapes: sum_all     x (any) → one value
//         add_sum_to  dst (broadcastable to x's shape) += x (...) summed over the axes along
//                     which dst was broadcast, e.g. x (B, T, D) into dst (D) or (B, 1, D)
//
// sum_all is two passes over a contiguous array: a fixed grid of blocks, each summing a
// grid-stride share into one partial, then one block summing the partials. The grid does not
// depend on timing, so the result is the same on every run (but not the CPU's sequential order:
// float sums agree to rounding). sum_of (the same kernels with a per-element transform and a
// wider accumulator) also serves grad_norm's Σg² in double.
//
// add_sum_to gives each destination element ("lane") to one warp or one column of a block, so
// no two threads write the same element (no atomics, the same result on every run):
//   * when x's innermost axis is summed, one warp per lane reads it coalesced;
//   * when it is kept, 32 neighbouring lanes share a block (neighbouring addresses) and 32 rows
//     of threads split the summed elements, combined through shared memory in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <memory>

#include "drt/core/tensor.hpp"
#include "drt/cuda/core/strided.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace reduce_detail {

inline constexpr int kThreads = 256;
inline constexpr int kMaxPartials = 1024;

// Per-element transforms of the sums.
template <class Acc>
struct AsIs {
  template <class T>
  __device__ Acc operator()(T v) const { return static_cast<Acc>(v); }
};
template <class Acc>
struct Squared {
  template <class T>
  __device__ Acc operator()(T v) const {
    const Acc a = static_cast<Acc>(v);
    return a * a;
  }
};

// The sum of every thread's v, in thread 0 (a tree in shared memory: a fixed order).
template <class Acc>
__device__ Acc block_sum(Acc v, Acc* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (int(threadIdx.x) < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

template <class Acc, class T, class F>
__global__ void __launch_bounds__(kThreads) partial_sums_kernel(const T* x, Index n, Acc* partial, F f) {
  __shared__ Acc shared[kThreads];
  Acc acc = Acc(0);
  const Index step = Index(gridDim.x) * kThreads;
  for (Index i = Index(blockIdx.x) * kThreads + threadIdx.x; i < n; i += step) acc += f(x[i]);
  const Acc total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// One block: *out = (or +=) the sum of count partials.
template <class Acc>
__global__ void __launch_bounds__(kThreads) final_sum_kernel(const Acc* partial, int count, Acc* out, bool accumulate) {
  __shared__ Acc shared[kThreads];
  Acc acc = Acc(0);
  for (int i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  const Acc total = block_sum(acc, shared);
  if (threadIdx.x == 0) *out = accumulate ? *out + total : total;
}

// What add_sum_to needs: the kept axes of x (the lanes: one per destination element) with their
// strides in x and in dst, and the summed axes of x. Both padded at the front.
struct SumToLayout {
  strided::Dims lane_dims;
  strided::Steps lane_x, lane_dst;
  strided::Dims sum_dims;
  strided::Steps sum_x;
  Index lanes, n;
};

inline constexpr int kWarpsPerBlock = 8;

// One warp per lane (the summed elements include x's innermost axis).
template <class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) sum_to_by_warp_kernel(T* dst, const T* x, SumToLayout l) {
  const Index lane = Index(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int t = threadIdx.x % 32;
  if (lane >= l.lanes) return;  // the whole warp leaves together
  const T* base = x + strided::offset_of(lane, l.lane_dims, l.lane_x);
  T acc = T(0);
  for (Index k = t; k < l.n; k += 32) acc += base[strided::offset_of(k, l.sum_dims, l.sum_x)];
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (t == 0) dst[strided::offset_of(lane, l.lane_dims, l.lane_dst)] += acc;
}

// 32 neighbouring lanes per block (x's innermost axis is kept), 32 rows splitting the sum.
inline constexpr int kColumns = 32, kRows = 32;
template <class T>
__global__ void __launch_bounds__(kColumns * kRows) sum_to_by_column_kernel(T* dst, const T* x, SumToLayout l) {
  __shared__ T shared[kRows][kColumns + 1];
  const Index lane = Index(blockIdx.x) * kColumns + threadIdx.x;
  T acc = T(0);
  if (lane < l.lanes) {
    const T* base = x + strided::offset_of(lane, l.lane_dims, l.lane_x);
    for (Index k = threadIdx.y; k < l.n; k += kRows) acc += base[strided::offset_of(k, l.sum_dims, l.sum_x)];
  }
  shared[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && lane < l.lanes) {
    T total = T(0);
    for (int r = 0; r < kRows; ++r) total += shared[r][threadIdx.x];
    dst[strided::offset_of(lane, l.lane_dims, l.lane_dst)] += total;
  }
}

// Device memory for n values of Acc, not zeroed.
template <class Acc>
std::shared_ptr<void> scratch(Index n) {
  return device_backend(Device::cuda).allocate(sizeof(Acc) * static_cast<std::size_t>(std::max<Index>(n, 1)), false);
}

}  // namespace reduce_detail

// *out = Σ f(x[i]) for i < n over a contiguous device array (out: one Acc in device memory; with
// `accumulate`, *out += the sum). Deterministic: the grid depends only on n.
template <class Acc, class T, class F>
void sum_of(const T* x, Index n, Acc* out, F f, bool accumulate = false) {
  using namespace reduce_detail;
  const int blocks = static_cast<int>(std::clamp<Index>((n + kThreads * 4 - 1) / (kThreads * 4), 1, kMaxPartials));
  const std::shared_ptr<void> partial = scratch<Acc>(blocks);
  Acc* p = static_cast<Acc*>(partial.get());
  partial_sums_kernel<Acc><<<blocks, kThreads, 0, ::drt::cuda::stream()>>>(x, n, p, f);
  DRT_CUDA_CHECK_LAUNCH();
  final_sum_kernel<Acc><<<1, kThreads, 0, ::drt::cuda::stream()>>>(p, blocks, out, accumulate);
  DRT_CUDA_CHECK_LAUNCH();
}

// out (one element, on the device) ← the sum of every element of x, accumulated in T as on the CPU.
template <class T>
void sum_all(const Tensor<T>& x, const Tensor<T>& out) {
  const Tensor<T> flat = x.contiguous();  // a device copy only for a strided view
  sum_of<T>(flat.data(), flat.numel(), out.data(), reduce_detail::AsIs<T>{});
}

// dst += x summed over the axes along which dst broadcasts to x's shape (checked by the caller).
template <class T>
void add_sum_to(const Tensor<T>& dst, const Tensor<T>& x) {
  using namespace reduce_detail;
  if (x.numel() == 0 || dst.numel() == 0) return;
  const Tensor<T> target = dst.broadcast_to(x.shape());  // stride 0 along the summed axes
  Shape lane_shape, sum_shape;
  Strides lane_x{}, lane_dst{}, sum_x{};
  bool inner_kept = false;
  const int lead = x.rank() - dst.rank();
  for (int d = 0; d < x.rank(); ++d) {
    const bool summed = x.shape()[d] != 1 && (d < lead || dst.shape()[d - lead] == 1);
    if (summed) {
      sum_x[sum_shape.rank()] = x.strides()[d];
      sum_shape.push_back(x.shape()[d]);
    } else {
      lane_x[lane_shape.rank()] = x.strides()[d];
      lane_dst[lane_shape.rank()] = target.strides()[d];
      lane_shape.push_back(x.shape()[d]);
      if (d == x.rank() - 1) inner_kept = x.shape()[d] > 1;
    }
  }
  SumToLayout l{strided::dims_of(lane_shape), strided::steps_of(lane_shape, lane_x), strided::steps_of(lane_shape, lane_dst),
                strided::dims_of(sum_shape), strided::steps_of(sum_shape, sum_x), lane_shape.numel(), sum_shape.numel()};
  if (l.lanes == 1) {
    // Everything into one element (e.g. a scalar operand): the two-pass sum, which uses the
    // whole GPU instead of one warp.
    const Tensor<T> flat = x.contiguous();
    sum_of<T>(flat.data(), flat.numel(), dst.data(), AsIs<T>{}, /*accumulate=*/true);
    return;
  }
  if (inner_kept) {
    const unsigned blocks = static_cast<unsigned>((l.lanes + kColumns - 1) / kColumns);
    sum_to_by_column_kernel<T><<<blocks, dim3(kColumns, kRows), 0, ::drt::cuda::stream()>>>(dst.data(), x.data(), l);
  } else {
    const unsigned blocks = static_cast<unsigned>((l.lanes + kWarpsPerBlock - 1) / kWarpsPerBlock);
    sum_to_by_warp_kernel<T><<<blocks, 32 * kWarpsPerBlock, 0, ::drt::cuda::stream()>>>(dst.data(), x.data(), l);
  }
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
