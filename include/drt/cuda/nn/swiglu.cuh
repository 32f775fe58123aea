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
#include <type_traits>

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

// Contiguous tensors, W elements per load (16-byte packs where every pointer is aligned and W
// divides the count; else W = 1): `packs` packs. With da16 / db16 (bf16 GEMMs) it also writes the
// bf16 copies of da and db as written, for the gate and up projections' backward GEMMs.
template <int W, class T>
__global__ void __launch_bounds__(kBlock)
    swiglu_backward_flat_kernel(const T* a, const T* b, const T* g, T* da, T* db, Index packs, bool add_a, bool add_b,
                                __nv_bfloat16* da16, __nv_bfloat16* db16) {
  for (Index k = Index(blockIdx.x) * kBlock + threadIdx.x; k < packs; k += Index(gridDim.x) * kBlock) {
    const Pack<T, W> z = load_pack<W>(a, k, 1), u = load_pack<W>(b, k, 1), gk = load_pack<W>(g, k, 1);
    Pack<T, W> pa = add_a ? load_pack<W>(da, k, 1) : Pack<T, W>{}, pb = add_b ? load_pack<W>(db, k, 1) : Pack<T, W>{};
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const T s = T(1) / (T(1) + dev_exp(-z.v[w]));
      pa.v[w] += gk.v[w] * u.v[w] * s * (T(1) + z.v[w] * (T(1) - s));
      pb.v[w] += gk.v[w] * z.v[w] * s;
    }
    store_pack<W>(da, k, 1, pa);
    store_pack<W>(db, k, 1, pb);
    if (da16 != nullptr) store_bf16_pack<W>(da16, k, pa);
    if (db16 != nullptr) store_bf16_pack<W>(db16, k, pb);
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
// without being read (it may hold anything). With da16 and db16 (room for da.numel() bf16
// each), da's and db's bf16 copies are written too; that needs every tensor contiguous
// (swiglu_backward_rounded checks it).
template <class T>
void swiglu_backward(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& g, const Tensor<T>& da,
                     const Tensor<T>& db, bool add_a = true, bool add_b = true, __nv_bfloat16* da16 = nullptr,
                     __nv_bfloat16* db16 = nullptr) {
  using namespace nn_detail;
  const Index total = a.numel(), n = a.rank() ? a.shape()[a.rank() - 1] : 1;
  if (total == 0) return;
  if (a.is_contiguous() && b.is_contiguous() && g.is_contiguous() && da.is_contiguous() && db.is_contiguous()) {
    constexpr int P = kPackWidth<T>;
    bool packed = total % P == 0;
    for (const Tensor<T>* t : {&a, &b, &g, &da, &db}) packed &= reinterpret_cast<std::uintptr_t>(t->data()) % 16 == 0;
    const Index packs = packed ? total / P : total;
    auto launch = [&](auto width) {
      constexpr int W = decltype(width)::value;
      swiglu_backward_flat_kernel<W><<<element_blocks(packs), kBlock, 0, ::drt::cuda::stream()>>>(
          a.data(), b.data(), g.data(), da.data(), db.data(), packs, add_a, add_b, da16, db16);
    };
    packed ? launch(std::integral_constant<int, P>{}) : launch(std::integral_constant<int, 1>{});
    DRT_CUDA_CHECK_LAUNCH();
    return;
  }
  swiglu_backward_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(a.data(), rows_of(a), b.data(), rows_of(b), g.data(),
                                                            rows_of(g), da.data(), rows_of(da), db.data(), rows_of(db),
                                                            n, total, add_a, add_b);
  DRT_CUDA_CHECK_LAUNCH();
}

// swiglu_backward that also returns the bf16 copies of da and db as written (device scratch), for
// the gate and up projections' backward GEMMs; where the tensors are not all contiguous it
// writes the gradients alone and returns no copies.
inline void swiglu_backward_rounded(const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& g,
                                    const Tensor<float>& da, const Tensor<float>& db, bool add_a, bool add_b,
                                    std::shared_ptr<void>& da16, std::shared_ptr<void>& db16) {
  bool contiguous = true;
  for (const Tensor<float>* t : {&a, &b, &g, &da, &db}) contiguous &= t->is_contiguous();
  if (!contiguous) return swiglu_backward(a, b, g, da, db, add_a, add_b);
  const std::size_t bytes = static_cast<std::size_t>(a.numel()) * sizeof(__nv_bfloat16);
  da16 = detail::device_scratch(bytes);
  db16 = detail::device_scratch(bytes);
  swiglu_backward(a, b, g, da, db, add_a, add_b, static_cast<__nv_bfloat16*>(da16.get()),
                  static_cast<__nv_bfloat16*>(db16.get()));
}

}  // namespace drt::cuda
