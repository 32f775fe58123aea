// drt/cuda/nn/rope.cuh — rotary position embedding on the device (the kernels behind
// drt/nn/rope.hpp).
//
// Shapes: freq (d/2) double, θ^(−2i/d) as the CPU computes it (std::pow on the host);
//         cos, sin (S, d/2) in T;  in, out (..., S, d) any strides (out may be the gradient buffer).
//
// The tables are made on the device from the host's frequencies: angle = (s + offset)·freq[i] in
// double, exactly the CPU's product, then CUDA's double cos/sin (within 1-2 ulp of glibc's), then
// rounded to T. The rotation is one thread per pair (x_i, x_{i+d/2}), the CPU's formula.
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock)
    rope_tables_kernel(const double* freq, Index S, Index half, Index position_offset, T* cos_table, T* sin_table) {
  const Index total = S * half;
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index s = e / half, i = e % half;
    const double angle = __dmul_rn(static_cast<double>(s + position_offset), freq[i]);
    double sn, cs;
    sincos(angle, &sn, &cs);
    cos_table[e] = static_cast<T>(cs);
    sin_table[e] = static_cast<T>(sn);
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    rope_rotate_kernel(const T* in, Lanes il, T* out, Lanes ol, const T* cos_table, const T* sin_table, Index S,
                       Index half, Index pairs, T direction, bool accumulate) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < pairs; e += Index(gridDim.x) * kBlock) {
    const Index row = e / half, i = e % half;
    const T* src = in + il.offset(row);
    T* dst = out + ol.offset(row);
    const Index tab = (row % S) * half + i;
    const T c = cos_table[tab], sn = direction * sin_table[tab];
    const T lo = src[i * il.step], hi = src[(i + half) * il.step];
    const T new_lo = lo * c - hi * sn, new_hi = hi * c + lo * sn;
    if (accumulate) {
      dst[i * ol.step] += new_lo;
      dst[(i + half) * ol.step] += new_hi;
    } else {
      dst[i * ol.step] = new_lo;
      dst[(i + half) * ol.step] = new_hi;
    }
  }
}

}  // namespace nn_detail

// cos_table, sin_table (S, d/2) on the device from the host-computed frequencies (on the device).
template <class T>
void rope_tables(const Tensor<double>& freq, Index S, Index position_offset, const Tensor<T>& cos_table,
                 const Tensor<T>& sin_table) {
  using namespace nn_detail;
  const Index half = freq.numel();
  if (S * half == 0) return;
  rope_tables_kernel<<<element_blocks(S * half), kBlock, 0, ::drt::cuda::stream()>>>(freq.data(), S, half, position_offset, cos_table.data(),
                                                           sin_table.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// out = (or +=) the rotation of `in` by direction·angle (+1 forward, −1 backward).
template <class T>
void rope_rotate(const Tensor<T>& in, const Tensor<T>& out, const Tensor<T>& cos_table, const Tensor<T>& sin_table,
                 T direction, bool accumulate) {
  using namespace nn_detail;
  const Index d = in.shape()[in.rank() - 1], half = d / 2, S = in.shape()[in.rank() - 2];
  const Index pairs = in.numel() / 2;
  if (pairs == 0) return;
  rope_rotate_kernel<<<element_blocks(pairs), kBlock, 0, ::drt::cuda::stream()>>>(in.data(), rows_of(in), out.data(), rows_of(out),
                                                        cos_table.data(), sin_table.data(), S, half, pairs, direction,
                                                        accumulate);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
