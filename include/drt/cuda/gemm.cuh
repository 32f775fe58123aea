// drt/cuda/gemm.cuh — matrix products on the device through cuBLAS.
//
// Shapes (as drt/core/matmul.hpp gives them): C (M, N) = alpha·A (M, K)·B (K, N) + beta·C, for
// `batch` matrices at fixed batch strides; A and B row-major or transposed views, C row-major.
//
// cuBLAS is column-major, and a row-major matrix is its transpose in column-major: so we ask
// cuBLAS for Cᵀ = Bᵀ·Aᵀ, which needs no copy whichever way A and B are laid out.
//
// Precision: fp32 products run exactly in fp32 by default (the tests compare with the CPU);
// `set_math_mode(MathMode::tf32)` lets cuBLAS use TF32 tensor cores (about 8× faster on an
// H100/H200, with a 10-bit mantissa for the inputs). fp64 is always exact.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>

#include "drt/core/device.hpp"
#include "drt/cuda/error.cuh"

#define DRT_CUBLAS_CHECK(call)                                                                       \
  do {                                                                                               \
    const cublasStatus_t drt_status_ = (call);                                                       \
    if (drt_status_ != CUBLAS_STATUS_SUCCESS)                                                        \
      throw ::drt::Error(::drt::detail::concat(#call, " failed: ", cublasGetStatusName(drt_status_), \
                                               " at ", __FILE__, ":", __LINE__));                   \
  } while (0)

namespace drt::cuda {

enum class MathMode { exact_fp32, tf32 };

namespace detail {
inline MathMode& math_mode_slot() {
  static MathMode mode = MathMode::exact_fp32;
  return mode;
}
}  // namespace detail

inline void set_math_mode(MathMode mode) { detail::math_mode_slot() = mode; }
inline MathMode math_mode() { return detail::math_mode_slot(); }

// The process's cuBLAS handle (created on first use, on the default stream; never destroyed,
// for the same reason as the allocator).
inline cublasHandle_t blas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    DRT_CUBLAS_CHECK(cublasCreate(&h));
    return h;
  }();
  return handle;
}

namespace detail {
inline int as_int(Index v, const char* what) {
  DRT_CHECK(v >= 0 && v <= INT_MAX, "gemm: ", what, " = ", v, " does not fit cuBLAS's 32-bit int");
  return static_cast<int>(v);
}
}  // namespace detail

// The backend's entry point (see GemmArgs in drt/core/device.hpp).
inline void gemm(DType type, const GemmArgs& g) {
  DRT_CHECK(type == DType::f32 || type == DType::f64, "device gemm: only float and double are supported");
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  const bool f32 = type == DType::f32;
  const cudaDataType_t data = f32 ? CUDA_R_32F : CUDA_R_64F;
  const cublasComputeType_t compute = !f32 ? CUBLAS_COMPUTE_64F
                                      : math_mode() == MathMode::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                      : CUBLAS_COMPUTE_32F;
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
    DRT_CUBLAS_CHECK(cublasGemmEx(h, op_b, op_a, m, n, k, alpha, g.b, data, ldb, g.a, data, lda, beta, g.c, data, ldc,
                                  compute, CUBLAS_GEMM_DEFAULT));
  } else {
    DRT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, op_b, op_a, m, n, k, alpha, g.b, data, ldb, g.batch_stride_b, g.a,
                                                data, lda, g.batch_stride_a, beta, g.c, data, ldc, g.batch_stride_c,
                                                detail::as_int(g.batch, "batch"), compute, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace drt::cuda
