// drt/cuda/nn/dropout.cuh — inverted dropout on the device (the kernel behind drt/nn/dropout.hpp).
//
// Shapes: src, dst (...) the same shape, any strides. The element at row-major logical index i is
// kept iff uniform01(seed, i) >= p, the CPU's counter-based draw computed on the device bit for
// bit (common.cuh): the mask is identical to the CPU's for the same seed, and the backward
// recomputes it instead of storing it. One thread per element.
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock) dropout_kernel(const T* src, Lanes sl, T* dst, Lanes dl, Index n, Index total,
                                                         double p, T scale, std::uint64_t seed, bool accumulate) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index row = e / n, j = e % n;  // e = row·n + j, the row-major index the CPU draws with
    const bool keep = uniform01(seed, static_cast<std::uint64_t>(e)) >= p;
    const T v = keep ? src[start_of(sl, row) + j * sl.step] * scale : T(0);
    T& out = dst[start_of(dl, row) + j * dl.step];
    if (accumulate)
      out += v;
    else
      out = v;
  }
}

}  // namespace nn_detail

// dst (+)= keep(i) ? src·scale : 0 over the row-major index i of src's shape.
template <class T>
void dropout_apply(const Tensor<T>& src, const Tensor<T>& dst, double p, T scale, std::uint64_t seed, bool accumulate) {
  using namespace nn_detail;
  const Index total = src.numel(), n = src.rank() ? src.shape()[src.rank() - 1] : 1;
  if (total == 0) return;
  dropout_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(src.data(), rows_of(src), dst.data(), rows_of(dst), n, total, p,
                                                    scale, seed, accumulate);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
