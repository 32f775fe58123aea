// drt/cuda/bf16.cuh — bf16 copies of fp32 device memory: the operands of bf16 GEMMs (gemm.cuh)
// and the chunk memory that version 3 of GCA gathers from (attention/gca.cuh).
//
// drt stores no bf16 tensors (drt/core/precision.hpp): where an operation computes in bf16, its
// fp32 operand is rounded (to nearest even, as the tensor cores' inputs are) into scratch memory
// from the caching allocator that lives as long as the returned handle.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>

#include "drt/core/tensor.hpp"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace detail {

static __global__ void round_to_bf16_kernel(const float* src, __nv_bfloat16* dst, Index n) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace detail

// A bf16 copy of the n floats at src (device memory), element for element, so that any strides
// that walked the floats walk the copy.
inline std::shared_ptr<void> bf16_copy(const void* src, Index n) {
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(n) * sizeof(__nv_bfloat16));
  if (n == 0) return copy;
  const int threads = 256;
  const Index blocks = std::min<Index>((n + threads - 1) / threads, 65536);
  detail::round_to_bf16_kernel<<<static_cast<unsigned>(blocks), threads, 0, ::drt::cuda::stream()>>>(
      static_cast<const float*>(src), static_cast<__nv_bfloat16*>(copy.get()), n);
  DRT_CUDA_CHECK_LAUNCH();
  return copy;
}

inline const __nv_bfloat16* as_bf16(const std::shared_ptr<void>& copy) {
  return static_cast<const __nv_bfloat16*>(copy.get());
}

}  // namespace drt::cuda
