// drt/cuda/optim/adamw.cuh — one AdamW update of one parameter on the device: one kernel.
//
// Shapes: p, g, m, v — n elements each, contiguous, on the device (the parameter, its gradient
// and the two moments). Each thread updates its elements in place (grid-stride), reading p, g,
// m, v once and writing p, m, v once, as the CPU loop of drt/optim/adamw.hpp does.
//
// The formula and the order of its operations are the CPU's, to the rounding of each one:
//     m ← β1·m + (1 − β1)·g
//     v ← β2·v + ((1 − β2)·g)·g
//     p ← decay·p − (step_size·m) / (√v·inv_sqrt_bc2 + ε)
// with the scalars computed on the host exactly as the CPU computes them. Products and sums are
// written with the _rn intrinsics so that nvcc does not fuse them into FMAs (it would by
// default; the host compiler does not without -mfma), and √ and ÷ are correctly rounded on both
// sides: the device result is then the CPU's bit for bit when the CPU code is not contracted
// either, and in any case within a few ulp per step.
#pragma once

#include <cuda_runtime.h>

#include "drt/core/tensor.hpp"
#include "drt/cuda/core/strided.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace adamw_detail {

// a·b, a + b, a − b, each rounded on its own (never fused into an FMA).
__device__ inline float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float add(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add(double a, double b) { return __dadd_rn(a, b); }
__device__ inline float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ inline double sub(double a, double b) { return __dsub_rn(a, b); }

template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, Index n, T decay, T b1, T b2, T step_size,
                             T inv_sqrt_bc2, T eps) {
  const Index stride = Index(gridDim.x) * blockDim.x;
  for (Index k = Index(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const T gk = g[k];
    const T mk = add(mul(b1, m[k]), mul(sub(T(1), b1), gk));
    const T vk = add(mul(b2, v[k]), mul(mul(sub(T(1), b2), gk), gk));
    m[k] = mk;
    v[k] = vk;
    p[k] = sub(mul(decay, p[k]), mul(step_size, mk) / add(mul(std::sqrt(vk), inv_sqrt_bc2), eps));
  }
}

}  // namespace adamw_detail

// One AdamW update of parameter p (value p, gradient g, moments m and v: same shape, contiguous,
// on the device). The scalars are the CPU's (drt/optim/adamw.hpp computes them once per step).
template <class T>
void adamw_update(const Tensor<T>& p, const Tensor<T>& g, const Tensor<T>& m, const Tensor<T>& v, T decay, T b1, T b2,
                  T step_size, T inv_sqrt_bc2, T eps) {
  const Index n = p.numel();
  if (n == 0) return;
  adamw_detail::adamw_kernel<T><<<strided::grid_for(n), strided::kThreads, 0, ::drt::cuda::stream()>>>(
      p.data(), g.data(), m.data(), v.data(), n, decay, b1, b2, step_size, inv_sqrt_bc2, eps);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
