// drt/cuda/gemv.cuh — a product with a single output row, c (1×N) = α·a (1×K)·B (K×N) + β·c, in
// fp32 or with bf16-rounded operands: what every linear layer of a decoding step is.
//
// Why not cuBLAS's GEMM: with one row, a GEMM kernel tiles N and K for a matrix that is not there
// and leaves most of the GPU idle, and in bf16 mode the weights would first be copied to bf16 at
// every call (three times the weight's bytes moved). A decoding step's ~100 such products are
// memory-bound: reading each weight once, at full bandwidth, is the whole job. So:
//   - B stored transposed (the weight W (N, K) of x·Wᵀ, rows contiguous): one warp per output,
//     its lanes reading the row with 16-byte loads where aligned;
//   - B stored row-major (K, N): one thread per output, consecutive threads reading consecutive
//     columns of each row of B.
// In bf16 mode each operand is rounded to bf16 as it is read, and products are summed in fp32:
// the same arithmetic as the bf16 GEMM (cuda/bf16.cuh), in a different summation order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/core/device.hpp"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {

namespace detail {

template <bool Bf16>
__device__ inline float operand(float x) {
  if constexpr (Bf16) return __bfloat162float(__float2bfloat16_rn(x));
  else return x;
}

__device__ inline float warp_total(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// c[n] = α·Σ_k a[k·a_step]·w[n·ldw + k] + β·c[n]; one warp per n.
template <bool Bf16>
__global__ void gemv_transposed_kernel(const float* __restrict__ a, Index a_step, const float* __restrict__ w, Index ldw,
                                       float* c, Index N, Index K, float alpha, float beta, bool vector_loads) {
  const Index n = (static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const float* row = w + n * ldw;
  float sum = 0.0f;
  Index k = 0;
  if (vector_loads) {  // row and a 16-byte aligned, a contiguous: 4 elements per load
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const float4* a4 = reinterpret_cast<const float4*>(a);
    for (Index q = lane; q < K / 4; q += 32) {
      const float4 x = a4[q], y = row4[q];
      sum += operand<Bf16>(x.x) * operand<Bf16>(y.x) + operand<Bf16>(x.y) * operand<Bf16>(y.y) +
             operand<Bf16>(x.z) * operand<Bf16>(y.z) + operand<Bf16>(x.w) * operand<Bf16>(y.w);
    }
    k = K / 4 * 4;
  }
  for (Index e = k + lane; e < K; e += 32) sum += operand<Bf16>(a[e * a_step]) * operand<Bf16>(row[e]);
  sum = warp_total(sum);
  if (lane == 0) c[n] = alpha * sum + (beta != 0.0f ? beta * c[n] : 0.0f);
}

}  // namespace detail

// Whether gemv() takes this product: one float output row times a transposed-stored B, fp32 or bf16.
inline bool gemv_applies(DType type, const GemmArgs& g) {
  return type == DType::f32 && g.M == 1 && g.batch == 1 && g.K > 0 && !g.b_row_major &&
         (g.precision == Precision::fp32 || g.precision == Precision::bf16);
}

// c (1×N) = α·a (1×K)·B + β·c with B(k, n) = b[n·ldb + k].
inline void gemv(const GemmArgs& g) {
  const auto* a = static_cast<const float*>(g.a);
  const auto* b = static_cast<const float*>(g.b);
  auto* c = static_cast<float*>(g.c);
  const Index a_step = g.a_row_major ? 1 : g.lda;  // A is 1×K: its k-th element
  const float alpha = float(g.alpha), beta = float(g.beta);
  constexpr int kThreads = 256;
  const bool vector_loads = a_step == 1 && g.ldb % 4 == 0 && reinterpret_cast<std::uintptr_t>(a) % 16 == 0 &&
                            reinterpret_cast<std::uintptr_t>(b) % 16 == 0;
  const unsigned blocks = static_cast<unsigned>((g.N * 32 + kThreads - 1) / kThreads);
  if (g.precision == Precision::bf16)
    detail::gemv_transposed_kernel<true><<<blocks, kThreads, 0, stream()>>>(a, a_step, b, g.ldb, c, g.N, g.K, alpha, beta,
                                                                            vector_loads);
  else
    detail::gemv_transposed_kernel<false><<<blocks, kThreads, 0, stream()>>>(a, a_step, b, g.ldb, c, g.N, g.K, alpha, beta,
                                                                             vector_loads);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
