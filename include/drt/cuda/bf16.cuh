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
#include <cstdint>
#include <memory>

#include "drt/core/precision.hpp"
#include "drt/core/tensor.hpp"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace detail {

// Four floats per thread and iteration (16-byte loads) up to vector_end, a multiple of 4, then
// one at a time: with scalar loads this kernel moved ~2.2 TB/s on an H200.
static __global__ void round_to_bf16_kernel(const float* src, __nv_bfloat16* dst, Index n, Index vector_end) {
  const Index step = Index(gridDim.x) * blockDim.x, first = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  for (Index q = first; q < vector_end / 4; q += step) {
    const float4 v = reinterpret_cast<const float4*>(src)[q];
    reinterpret_cast<__nv_bfloat162*>(dst)[2 * q] = __floats2bfloat162_rn(v.x, v.y);
    reinterpret_cast<__nv_bfloat162*>(dst)[2 * q + 1] = __floats2bfloat162_rn(v.z, v.w);
  }
  for (Index i = vector_end + first; i < n; i += step) dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace detail

// A bf16 copy of the n floats at src (device memory), element for element, so that any strides
// that walked the floats walk the copy.
inline std::shared_ptr<void> bf16_copy(const void* src, Index n) {
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(n) * sizeof(__nv_bfloat16));
  if (n == 0) return copy;
  const int threads = 256;
  const bool aligned = reinterpret_cast<std::uintptr_t>(src) % 16 == 0 && reinterpret_cast<std::uintptr_t>(copy.get()) % 8 == 0;
  const Index vector_end = aligned ? n / 4 * 4 : 0, per_thread = aligned ? 4 : 1;
  const Index blocks = std::max<Index>(1, std::min<Index>((n / per_thread + threads - 1) / threads, 65536));
  detail::round_to_bf16_kernel<<<static_cast<unsigned>(blocks), threads, 0, ::drt::cuda::stream()>>>(
      static_cast<const float*>(src), static_cast<__nv_bfloat16*>(copy.get()), n, vector_end);
  DRT_CUDA_CHECK_LAUNCH();
  return copy;
}

// bf16_copy for a GEMM operand (or an attention kernel's): inside a RoundedOperandReuse scope
// (drt/core/precision.hpp) the copy of the same storage that an earlier read made, kept by the
// scope that promises for that storage.
inline std::shared_ptr<void> bf16_operand(const void* src, Index n) {
  RoundedOperandReuse* reuse = RoundedOperandReuse::active();
  if (reuse == nullptr) return bf16_copy(src, n);
  if (std::shared_ptr<void> copy = reuse->find(src, n)) return copy;
  std::shared_ptr<void> copy = bf16_copy(src, n);
  reuse->remember(src, n, copy);
  return copy;
}

inline const __nv_bfloat16* as_bf16(const std::shared_ptr<void>& copy) {
  return static_cast<const __nv_bfloat16*>(copy.get());
}

}  // namespace drt::cuda
