// drt/cuda/nn/swiglu.cuh — the fused SwiGLU backward on the device (drt/nn/swiglu.hpp; the forward
// and the one-gradient backward are plain expressions, which run as fused kernels already).
//
// Shapes: gate a, up b, gradient g, and the two gradient buffers da, db: all the same shape, any
// strides. One thread per element, the CPU's formula:
//   s = 1/(1 + exp(−a)),  da += g·b·s·(1 + a·(1 − s)),  db += g·a·s.
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock)
    swiglu_backward_kernel(const T* a, Lanes al, const T* b, Lanes bl, const T* g, Lanes gl, T* da, Lanes dal, T* db,
                           Lanes dbl, Index n, Index total) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index row = e / n, j = e % n;
    const T z = a[al.offset(row) + j * al.step], s = T(1) / (T(1) + dev_exp(-z)), gj = g[gl.offset(row) + j * gl.step];
    da[dal.offset(row) + j * dal.step] += gj * b[bl.offset(row) + j * bl.step] * s * (T(1) + z * (T(1) - s));
    db[dbl.offset(row) + j * dbl.step] += gj * z * s;
  }
}

}  // namespace nn_detail

// da += d(silu(a)·b)/da · g,  db += silu(a) · g.
template <class T>
void swiglu_backward(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& g, const Tensor<T>& da,
                     const Tensor<T>& db) {
  using namespace nn_detail;
  const Index total = a.numel(), n = a.rank() ? a.shape()[a.rank() - 1] : 1;
  if (total == 0) return;
  swiglu_backward_kernel<<<element_blocks(total), kBlock>>>(a.data(), rows_of(a), b.data(), rows_of(b), g.data(),
                                                            rows_of(g), da.data(), rows_of(da), db.data(), rows_of(db),
                                                            n, total);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
