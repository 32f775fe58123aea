// drt/cuda/core/cast.cuh — Tensor<T>::cast<U>() on the device: element type conversion.
//
// Shapes: src (any strided view) → dst (same shape, row-major, on the same device).
// One thread per element, grid-stride; static_cast does the conversion, as on the CPU.
//
// Included at the end of drt/core/tensor.hpp when nvcc compiles it (Tensor::cast calls it).
#pragma once

#include <cuda_runtime.h>

#include "drt/core/tensor.hpp"
#include "drt/cuda/core/strided.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace cast_detail {

template <class T, class U>
__global__ void cast_kernel(const T* src, strided::Steps steps, strided::Dims dims, U* dst, Index n) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index p = Index(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += step)
    dst[p] = static_cast<U>(src[strided::offset_of(p, dims, steps)]);
}

}  // namespace cast_detail

// dst (row-major, src's shape) ← src converted to U.
template <class T, class U>
void cast(const Tensor<T>& src, const Tensor<U>& dst) {
  const Index n = src.numel();
  if (n == 0) return;
  cast_detail::cast_kernel<T, U><<<strided::grid_for(n), strided::kThreads, 0, ::drt::cuda::stream()>>>(
      src.data(), strided::steps_of(src.shape(), src.strides()), strided::dims_of(src.shape()), dst.data(), n);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
