// drt/cuda/core/indexing.cuh — picking elements by integer index on the device: the kernels of
// drt/core/indexing.hpp (gather, scatter_add, and the index check), which its index_select,
// embedding and max's backward reuse.
//
// Shapes: gather       x (..., A, ...), index I (any shape of x's rank) → out with I's shape:
//                      out[p] = x[p with its `axis` coordinate replaced by index[p]]
//         scatter_add  dst (..., A, ...), index I, src (⊇ I):
//                      dst[p with its `axis` coordinate replaced by index[p]] += src[p], p in I
// Every operand is a strided view; a stride-0 index (a 1-D index broadcast along the other
// axes) turns gather into index_select and the embedding lookup.
//
// One thread per element p, grid-stride. scatter_add uses atomicAdd because several p may hit
// the same destination (repeated indices): the sum is exact up to the order of the additions,
// which varies from run to run (float results may differ in the last bits between runs).
// The kernels trust their indices; the callers check them first (first_out_of_range).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "drt/core/tensor.hpp"
#include "drt/cuda/core/strided.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace indexing_detail {

using strided::Dims;
using strided::Steps;

// x's strides with the `axis` coordinate left out (the kernel adds index · axis stride).
template <class T>
Steps steps_without_axis(const Tensor<T>& t, int axis) {
  Steps s = strided::steps_of(t.shape(), t.strides());
  s.s[strided::padded_axis(t.rank(), axis)] = 0;
  return s;
}

template <class T>
__global__ void gather_kernel(const T* x, Steps x_steps, Index x_axis_stride, const std::int32_t* index,
                              Steps index_steps, T* out, Steps out_steps, Dims dims, Index n) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index p = Index(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += step) {
    Index idx[kMaxRank];
    strided::unravel(p, dims, idx);
    const Index i = index[strided::offset(idx, index_steps)];
    out[strided::offset(idx, out_steps)] = x[strided::offset(idx, x_steps) + i * x_axis_stride];
  }
}

// atomicAdd for the element types tensors hold (int64 as the same bits in unsigned arithmetic).
__device__ inline void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ inline void atomic_add(std::int32_t* p, std::int32_t v) { atomicAdd(p, v); }
__device__ inline void atomic_add(std::int64_t* p, std::int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
}

// p over the index's shape; a position whose index equals `skip` adds nothing.
template <class T>
__global__ void scatter_add_kernel(T* dst, Steps dst_steps, Index dst_axis_stride, const std::int32_t* index,
                                   Steps index_steps, const T* src, Steps src_steps, Dims dims, Index n,
                                   std::int32_t skip) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index p = Index(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += step) {
    Index idx[kMaxRank];
    strided::unravel(p, dims, idx);
    const std::int32_t i = index[strided::offset(idx, index_steps)];
    if (i == skip) continue;
    atomic_add(dst + strided::offset(idx, dst_steps) + Index(i) * dst_axis_stride, src[strided::offset(idx, src_steps)]);
  }
}

// *first = the smallest row-major position whose index lies outside [0, extent) (untouched if none).
template <class I>
__global__ void first_out_of_range_kernel(const I* index, Steps steps, Dims dims, Index n, Index extent,
                                          long long* first) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index p = Index(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += step) {
    const I i = index[strided::offset_of(p, dims, steps)];
    if (i < 0 || i >= extent) atomicMin(first, static_cast<long long>(p));
  }
}

}  // namespace indexing_detail

// out[p] = x[p with coordinate `axis` replaced by index[p]], for every position p of out.
// index has out's shape (any strides, stride 0 included) and x's rank; all on the device.
template <class T>
void gather(const Tensor<T>& x, int axis, const IndexTensor& index, const Tensor<T>& out) {
  const Index n = out.numel();
  if (n == 0) return;
  using namespace indexing_detail;
  gather_kernel<T><<<strided::grid_for(n), strided::kThreads, 0, ::drt::cuda::stream()>>>(
      x.data(), steps_without_axis(x, axis), x.strides()[axis], index.data(),
      strided::steps_of(index.shape(), index.strides()), out.data(), strided::steps_of(out.shape(), out.strides()),
      strided::dims_of(out.shape()), n);
  DRT_CUDA_CHECK_LAUNCH();
}

// dst[p with coordinate `axis` replaced by index[p]] += src[p], for every position p of index
// (src is read at p with its own strides; it may be larger than index). Positions whose index
// is `skip` are left out (the embedding's padding row; -1 skips nothing).
template <class T>
void scatter_add(const Tensor<T>& dst, int axis, const IndexTensor& index, const Tensor<T>& src,
                 std::int32_t skip = -1) {
  const Index n = index.numel();
  if (n == 0) return;
  using namespace indexing_detail;
  const Shape& s = index.shape();
  scatter_add_kernel<T><<<strided::grid_for(n), strided::kThreads, 0, ::drt::cuda::stream()>>>(
      dst.data(), steps_without_axis(dst, axis), dst.strides()[axis], index.data(), strided::steps_of(s, index.strides()),
      src.data(), strided::steps_of(s, src.strides()), strided::dims_of(s), n, skip);
  DRT_CUDA_CHECK_LAUNCH();
}

// The first value of `index` (row-major order, as the CPU check walks it) outside [0, extent),
// or nothing when every value is in range. Waits for the device (one small copy back).
inline std::optional<std::int32_t> first_out_of_range(const IndexTensor& index, Index extent) {
  const Index n = index.numel();
  if (n == 0) return std::nullopt;
  using namespace indexing_detail;
  constexpr long long kNone = std::numeric_limits<long long>::max();
  const Tensor<std::int64_t> first = Tensor<std::int64_t>::full(Shape{}, kNone, nullptr, index.device());
  first_out_of_range_kernel<<<strided::grid_for(n), strided::kThreads, 0, ::drt::cuda::stream()>>>(
      index.data(), strided::steps_of(index.shape(), index.strides()), strided::dims_of(index.shape()), n, extent,
      reinterpret_cast<long long*>(first.data()));
  DRT_CUDA_CHECK_LAUNCH();
  const std::int64_t p = first.item();
  if (p == kNone) return std::nullopt;
  // Read that one value back (its offset in the strided index).
  Index rest = p, off = 0;
  for (int d = index.rank() - 1; d >= 0; --d) {
    off += (rest % index.shape()[d]) * index.strides()[d];
    rest /= index.shape()[d];
  }
  return IndexTensor::wrap(index.data() + off, Shape{}, index.device()).item();
}

}  // namespace drt::cuda
