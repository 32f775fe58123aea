// drt/cuda/nn/swiglu.cuh — the fused SwiGLU backward on the device (drt/nn/swiglu.hpp; the forward
// and the one-gradient backward are plain expressions, which run as fused kernels already).
//
// Shapes: gate a, up b, gradient g, and the two gradient buffers da, db: all the same shape, any
// strides. One thread per element, the CPU's formula:
//   s = 1/(1 + exp(−a)),  da += g·b·s·(1 + a·(1 − s)),  db += g·a·s
// (or = instead of +=, for a buffer that is fresh: Node::grad_slot, drt/autodiff/var.hpp).
// When all five are contiguous (the model's case) the flat kernel walks plain offsets: the
// strided one spends its time in the 64-bit divisions that turn an element number into five
// offsets (measured in bench_cuda_train --profile: 3.6 ms per call on 16,380 × 3,072 elements,
// 13.6% of config_63's backward, for what is a 1 GB memory pass).
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock)
    swiglu_backward_kernel(const T* a, Lanes al, const T* b, Lanes bl, const T* g, Lanes gl, T* da, Lanes dal, T* db,
                           Lanes dbl, Index n, Index total, bool add_a, bool add_b) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index row = e / n, j = e % n;
    const T z = a[start_of(al, row) + j * al.step], s = T(1) / (T(1) + dev_exp(-z)), gj = g[start_of(gl, row) + j * gl.step];
    T* pa = da + start_of(dal, row) + j * dal.step;
    T* pb = db + start_of(dbl, row) + j * dbl.step;
    *pa = (add_a ? *pa : T(0)) + gj * b[start_of(bl, row) + j * bl.step] * s * (T(1) + z * (T(1) - s));
    *pb = (add_b ? *pb : T(0)) + gj * z * s;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    swiglu_backward_flat_kernel(const T* a, const T* b, const T* g, T* da, T* db, Index total, bool add_a, bool add_b) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const T z = a[e], s = T(1) / (T(1) + dev_exp(-z)), gj = g[e];
    da[e] = (add_a ? da[e] : T(0)) + gj * b[e] * s * (T(1) + z * (T(1) - s));
    db[e] = (add_b ? db[e] : T(0)) + gj * z * s;
  }
}

}  // namespace nn_detail

// da += d(silu(a)·b)/da · g,  db += silu(a) · g; a buffer whose add_ flag is false is written
// without being read (it may hold anything).
template <class T>
void swiglu_backward(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& g, const Tensor<T>& da,
                     const Tensor<T>& db, bool add_a = true, bool add_b = true) {
  using namespace nn_detail;
  const Index total = a.numel(), n = a.rank() ? a.shape()[a.rank() - 1] : 1;
  if (total == 0) return;
  if (a.is_contiguous() && b.is_contiguous() && g.is_contiguous() && da.is_contiguous() && db.is_contiguous()) {
    swiglu_backward_flat_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(a.data(), b.data(), g.data(), da.data(), db.data(),
                                                                   total, add_a, add_b);
    DRT_CUDA_CHECK_LAUNCH();
    return;
  }
  swiglu_backward_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(a.data(), rows_of(a), b.data(), rows_of(b), g.data(),
                                                            rows_of(g), da.data(), rows_of(da), db.data(), rows_of(db),
                                                            n, total, add_a, add_b);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
