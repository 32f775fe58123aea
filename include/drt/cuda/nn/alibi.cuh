// drt/cuda/nn/alibi.cuh — the ALiBi bias added to device scores (the kernel behind drt/nn/alibi.hpp).
//
// Shapes: scores (..., H, Tq, Tk) any strides, slopes (H) on the device (stride ms) → y row-major:
//   y[..., h, i, j] = scores[..., h, i, j] − m_h · ((i + query_offset) − j)
// One thread per element, the CPU's arithmetic (the distance is an integer, rounded to T once).
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <class T>
__global__ void __launch_bounds__(kBlock)
    add_alibi_kernel(const T* s, Lanes sl, const T* slopes, Index ms, T* y, Index H, Index Tq, Index Tk,
                     Index query_offset, Index total) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index row = e / Tk, j = e % Tk;
    const Index i = row % Tq, h = (row / Tq) % H;
    const T m = slopes[h * ms];
    y[e] = s[start_of(sl, row) + j * sl.step] - m * static_cast<T>(i + query_offset - j);
  }
}

}  // namespace nn_detail

// y (row-major, scores' shape) = scores − slope·distance.
template <class T>
void add_alibi_forward(const Tensor<T>& scores, const Tensor<T>& slopes, Index query_offset, const Tensor<T>& y) {
  using namespace nn_detail;
  const int r = scores.rank();
  const Index H = scores.shape()[r - 3], Tq = scores.shape()[r - 2], Tk = scores.shape()[r - 1];
  const Index total = scores.numel();
  if (total == 0) return;
  add_alibi_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(scores.data(), rows_of(scores), slopes.data(),
                                                      slopes.strides()[0], y.data(), H, Tq, Tk, query_offset, total);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
