// drt/cuda/nn/gumbel.cuh — Gumbel noise on the device (the kernels behind drt/nn/gumbel.hpp).
//
// Shapes: gumbel_noise → out (...) row-major;  add_gumbel x (...) any strides → y (...) row-major.
// Element i (row-major) is standard_gumbel(seed, i) = −log(−log(uniform01(seed, i))) computed in
// double and rounded to T, as on the CPU. The uniforms are the CPU's bit for bit (common.cuh);
// the two logarithms are CUDA's (within 1 ulp) where the CPU uses glibc's, so fp64 noise may
// differ in its last bit, and fp32 noise (rounded from it) practically never. One thread per
// element, drawn on the device: no host work, no copy.
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock) gumbel_noise_kernel(T* out, Index total, std::uint64_t seed) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock)
    out[e] = static_cast<T>(standard_gumbel(seed, static_cast<std::uint64_t>(e)));
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    add_gumbel_kernel(const T* x, Lanes xl, T* y, Index n, Index total, std::uint64_t seed) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index row = e / n, j = e % n;
    y[e] = x[start_of(xl, row) + j * xl.step] + static_cast<T>(standard_gumbel(seed, static_cast<std::uint64_t>(e)));
  }
}

}  // namespace nn_detail

// out (row-major) = Gumbel(0, 1) noise of element index i.
template <class T>
void gumbel_noise_fill(const Tensor<T>& out, std::uint64_t seed) {
  using namespace nn_detail;
  DRT_CHECK(out.is_contiguous(), "gumbel_noise: the device output must be row-major");
  const Index total = out.numel();
  if (total == 0) return;
  gumbel_noise_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(out.data(), total, seed);
  DRT_CUDA_CHECK_LAUNCH();
}

// y (row-major) = x + the noise of its row-major index.
template <class T>
void add_gumbel_forward(const Tensor<T>& x, const Tensor<T>& y, std::uint64_t seed) {
  using namespace nn_detail;
  const Index total = x.numel(), n = x.rank() ? x.shape()[x.rank() - 1] : 1;
  if (total == 0) return;
  add_gumbel_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), rows_of(x), y.data(), n, total, seed);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
