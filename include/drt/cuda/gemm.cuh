// drt/cuda/gemm.cuh — matrix products on the device through cuBLAS.
//
// Shapes (as drt/core/matmul.hpp gives them): C (M, N) = alpha·A (M, K)·B (K, N) + beta·C, for
// `batch` matrices at fixed batch strides; A and B row-major or transposed views, C row-major.
//
// cuBLAS is column-major, and a row-major matrix is its transpose in column-major: so we ask
// cuBLAS for Cᵀ = Bᵀ·Aᵀ, which needs no copy whichever way A and B are laid out.
//
// Precision (drt/core/precision.hpp, one switch for the whole process): float products run exactly
// in fp32 by default, which the tests compare with the CPU. `tf32` lets cuBLAS use TF32 tensor
// cores. `bf16` rounds both operands into bf16 copies (one fused cast kernel each, buffers from
// the caching allocator; once per RoundedOperandReuse scope, drt/core/precision.hpp) and runs a
// bf16 × bf16 → fp32 product with fp32 accumulation: the tensor cores' fastest mode that keeps
// an fp32 result. doubles are always exact.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <memory>

#include "drt/core/device.hpp"
#include "drt/cuda/bf16.cuh"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/gemv.cuh"

#define DRT_CUBLAS_CHECK(call)                                                                       \
  do {                                                                                               \
    const cublasStatus_t drt_status_ = (call);                                                       \
    if (drt_status_ != CUBLAS_STATUS_SUCCESS)                                                        \
      throw ::drt::Error(::drt::detail::concat(#call, " failed: ", cublasGetStatusName(drt_status_), \
                                               " at ", __FILE__, ":", __LINE__));                   \
  } while (0)

namespace drt::cuda {

// The process's cuBLAS handle (created on first use, on drt's stream (stream.cuh); never
// destroyed, for the same reason as the allocator).
inline cublasHandle_t blas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    DRT_CUBLAS_CHECK(cublasCreate(&h));
    DRT_CUBLAS_CHECK(cublasSetStream(h, stream()));
    return h;
  }();
  return handle;
}

namespace detail {
inline int as_int(Index v, const char* what) {
  DRT_CHECK(v >= 0 && v <= INT_MAX, "gemm: ", what, " = ", v, " does not fit cuBLAS's 32-bit int");
  return static_cast<int>(v);
}

// Elements that a (batched) operand's storage spans, from its first element to its last.
inline Index operand_span(Index rows, Index cols, bool row_major, Index ld, Index batch, Index batch_stride) {
  const Index matrix = row_major ? (rows - 1) * ld + cols : (cols - 1) * ld + rows;
  return (batch - 1) * batch_stride + matrix;
}
}  // namespace detail

// The backend's entry point (see GemmArgs in drt/core/device.hpp).
inline void gemm(DType type, const GemmArgs& g) {
  DRT_CHECK(type == DType::f32 || type == DType::f64, "device gemm: only float and double are supported");
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  if (gemv_applies(type, g)) return gemv(g);  // one output row: a decoding step's linear layers
  const bool f32 = type == DType::f32;
  const bool bf16 = f32 && g.precision == Precision::bf16;
  const cudaDataType_t out_type = f32 ? CUDA_R_32F : CUDA_R_64F;
  const cudaDataType_t in_type = bf16 ? CUDA_R_16BF : out_type;
  const cublasComputeType_t compute = !f32 ? CUBLAS_COMPUTE_64F
                                      : g.precision == Precision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                       : CUBLAS_COMPUTE_32F;
  // Operands as cuBLAS reads them: the float storage itself, or its bf16 copy (kept alive to the
  // end of this call; the stream orders the GEMM before the buffer's next user).
  const void* a = g.a;
  const void* b = g.b;
  std::shared_ptr<void> a_bf16, b_bf16;
  if (bf16 && g.K > 0) {
    a_bf16 = bf16_operand(g.a, detail::operand_span(g.M, g.K, g.a_row_major, g.lda, g.batch, g.batch_stride_a));
    b_bf16 = bf16_operand(g.b, detail::operand_span(g.K, g.N, g.b_row_major, g.ldb, g.batch, g.batch_stride_b));
    a = a_bf16.get();
    b = b_bf16.get();
  }
  // Cᵀ (N×M) = op(B's storage) · op(A's storage): row-major storage already is the transpose.
  const cublasOperation_t op_b = g.b_row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t op_a = g.a_row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  const int m = detail::as_int(g.N, "N"), n = detail::as_int(g.M, "M"), k = detail::as_int(g.K, "K");
  const int ldb = detail::as_int(g.ldb, "ldb"), lda = detail::as_int(g.lda, "lda"), ldc = detail::as_int(g.ldc, "ldc");
  const float alpha32 = float(g.alpha), beta32 = float(g.beta);
  const void* alpha = f32 ? static_cast<const void*>(&alpha32) : static_cast<const void*>(&g.alpha);
  const void* beta = f32 ? static_cast<const void*>(&beta32) : static_cast<const void*>(&g.beta);
  cublasHandle_t h = blas_handle();
  if (g.batch == 1) {
    DRT_CUBLAS_CHECK(cublasGemmEx(h, op_b, op_a, m, n, k, alpha, b, in_type, ldb, a, in_type, lda, beta, g.c, out_type,
                                  ldc, compute, CUBLAS_GEMM_DEFAULT));
  } else {
    DRT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, op_b, op_a, m, n, k, alpha, b, in_type, ldb, g.batch_stride_b, a,
                                                in_type, lda, g.batch_stride_a, beta, g.c, out_type, ldc,
                                                g.batch_stride_c, detail::as_int(g.batch, "batch"), compute,
                                                CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace drt::cuda
