// drt/cuda/nn/swiglu.cuh — the fused SwiGLU backward on the device, and the forward with its bf16
// copy (drt/nn/swiglu.hpp; otherwise the forward and the one-gradient backward are plain
// expressions, which run as fused kernels already).
//
// Shapes: gate a, up b, gradient g, and the two gradient buffers da, db: all the same shape, any
// strides. One thread per element, the CPU's formula:
//   s = 1/(1 + exp(−a)),  da += g·b·s·(1 + a·(1 − s)),  db += g·a·s
// (or = instead of +=, for a buffer that is fresh: Node::grad_slot, drt/autodiff/var.hpp).
// When all five are contiguous (the model's case) the flat kernel walks plain offsets: the
// strided one spends its time in the 64-bit divisions that turn an element number into five
// offsets (measured in bench_cuda_train --profile: 3.6 ms per call on 16,380 × 3,072 elements,
// 13.6% of config_63's backward, for what is a 1 GB memory pass).
//
// The forward with its bf16 copy (swiglu_forward_rounded): with bf16 GEMMs the down projection
// rounds the SwiGLU output anyway, so the kernel that computes it writes the rounded copy too,
// from the values in its registers: one pass instead of two (the rounding pass read 134 MB and
// wrote 67 MB per config_63 layer and sequence).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <memory>

#include "drt/core/expr.hpp"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

// out = silu(a)·b (the expression's own functors, so the same floats as the fused expression)
// and out16 = bf16(out), rounded to nearest even as bf16_copy rounds. Four elements per thread
// and iteration up to `packs`·4, then one at a time.
static __global__ void __launch_bounds__(kBlock)
    swiglu_forward_rounded_kernel(const float* a, const float* b, float* out, __nv_bfloat16* out16, Index packs,
                                  Index total) {
  const Index step = Index(gridDim.x) * kBlock, first = Index(blockIdx.x) * kBlock + threadIdx.x;
  auto value = [](float x, float y) { return expr::Mul{}(expr::Silu{}(x), y); };
  for (Index k = first; k < packs; k += step) {
    const float4 x = reinterpret_cast<const float4*>(a)[k], y = reinterpret_cast<const float4*>(b)[k];
    const float4 v = make_float4(value(x.x, y.x), value(x.y, y.y), value(x.z, y.z), value(x.w, y.w));
    reinterpret_cast<float4*>(out)[k] = v;
    reinterpret_cast<__nv_bfloat162*>(out16)[2 * k] = __floats2bfloat162_rn(v.x, v.y);
    reinterpret_cast<__nv_bfloat162*>(out16)[2 * k + 1] = __floats2bfloat162_rn(v.z, v.w);
  }
  for (Index e = 4 * packs + first; e < total; e += step) {
    out[e] = value(a[e], b[e]);
    out16[e] = __float2bfloat16_rn(out[e]);
  }
}

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

// out = silu(a)·b, and returns out's bf16 copy (device scratch from the allocator, freed with
// its last owner); returns null and writes nothing unless all three are contiguous and 16-byte
// aligned.
inline std::shared_ptr<void> swiglu_forward_rounded(const Tensor<float>& a, const Tensor<float>& b,
                                                    const Tensor<float>& out) {
  using namespace nn_detail;
  for (const Tensor<float>* t : {&a, &b, &out})
    if (!t->is_contiguous() || reinterpret_cast<std::uintptr_t>(t->data()) % 16 != 0) return nullptr;
  const Index total = out.numel();
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(total) * sizeof(__nv_bfloat16));
  if (total == 0) return copy;
  swiglu_forward_rounded_kernel<<<element_blocks(total / 4 + 1), kBlock, 0, ::drt::cuda::stream()>>>(
      a.data(), b.data(), out.data(), static_cast<__nv_bfloat16*>(copy.get()), total / 4, total);
  DRT_CUDA_CHECK_LAUNCH();
  return copy;
}

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
