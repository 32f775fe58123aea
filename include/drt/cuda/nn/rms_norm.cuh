// drt/cuda/nn/rms_norm.cuh — RMSNorm on the device (the kernels behind drt/nn/rms_norm.hpp).
//
// Shapes: x (rows..., D) any strides, gamma (D) any stride → y (rows..., D) row-major;
//         inv_rms (rows) = 1/sqrt(mean(x²) + eps), kept for the backward.
//
// Forward and dx: one group of threads per row (a warp for D ≤ 1024, else a block), the CPU's
// formulas: r = 1/sqrt(Σx²/D + eps), y = x·r·γ;  dx += r·(g·γ − x·r·c) with c = (Σ g·γ·x)·r/D.
// dγ = Σ_rows g·x·r, deterministically and without atomics, in two passes: the rows are cut into
// at most kGammaChunks chunks; pass 1 gives each (chunk, column) one thread that adds its chunk's
// rows in order into a scratch (chunks, D); pass 2 gives each column one thread that adds the
// chunks in order into dγ. Adjacent threads take adjacent columns, so the reads coalesce.
#pragma once

#include "drt/core/memory.hpp"
#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

inline constexpr Index kGammaChunks = 1024;

template <int G, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_kernel(const T* x, Lanes xl, const T* gamma, Index gs, Index D, T eps, T* y, T* inv_rms, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const T* in = x + xl.offset(row);
  const Index xs = xl.step;
  T squares = T(0);
  for (Index j = t; j < D; j += G) squares += in[j * xs] * in[j * xs];
  squares = group_reduce<G>(squares, SumOp{});
  const T r = T(1) / dev_sqrt((D ? squares / T(D) : T(0)) + eps);
  if (t == 0) inv_rms[row] = r;
  T* out = y + row * D;
  for (Index j = t; j < D; j += G) out[j] = in[j * xs] * r * gamma[j * gs];
}

template <int G, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_dx_kernel(const T* x, Lanes xl, const T* gamma, Index gs, const T* g, Lanes gl, const T* inv_rms, Index D,
                       T* dx, Lanes dl, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const T* in = x + xl.offset(row);
  const T* pg = g + gl.offset(row);
  T* d = dx + dl.offset(row);
  const Index xs = xl.step, os = gl.step, ds = dl.step;
  T dot = T(0);  // Σ g·γ·x̂ (without the r)
  for (Index j = t; j < D; j += G) dot += pg[j * os] * gamma[j * gs] * in[j * xs];
  dot = group_reduce<G>(dot, SumOp{});
  const T r = inv_rms[row];
  const T c = D ? dot * r / T(D) : T(0);
  for (Index j = t; j < D; j += G) d[j * ds] += r * (pg[j * os] * gamma[j * gs] - in[j * xs] * r * c);
}

// partial[chunk, j] = Σ over the chunk's rows of g·x·r (rows in order). Grid: (column blocks, chunks).
template <class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_gamma_partial_kernel(const T* x, Lanes xl, const T* g, Lanes gl, const T* inv_rms, Index D, Index rows,
                                  Index rows_per_chunk, T* partial) {
  const Index j = Index(blockIdx.x) * kBlock + threadIdx.x;
  const Index chunk = blockIdx.y;
  if (j >= D) return;
  const Index begin = chunk * rows_per_chunk;
  const Index end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  T acc = T(0);
  for (Index row = begin; row < end; ++row)
    acc += g[gl.offset(row) + j * gl.step] * x[xl.offset(row) + j * xl.step] * inv_rms[row];
  partial[chunk * D + j] = acc;
}

// dgamma[j] += Σ over chunks of partial[chunk, j] (chunks in order).
template <class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_gamma_sum_kernel(const T* partial, Index chunks, Index D, T* dgamma, Index dgs) {
  const Index j = Index(blockIdx.x) * kBlock + threadIdx.x;
  if (j >= D) return;
  T acc = T(0);
  for (Index c = 0; c < chunks; ++c) acc += partial[c * D + j];
  dgamma[j * dgs] += acc;
}

}  // namespace nn_detail

// y (row-major, x's shape) and inv_rms (rows).
template <class T>
void rms_norm_forward(const Tensor<T>& x, const Tensor<T>& gamma, T eps, const Tensor<T>& y, const Tensor<T>& inv_rms) {
  using namespace nn_detail;
  const Index D = x.rank() ? x.shape()[x.rank() - 1] : 1, rows = inv_rms.numel();
  if (rows == 0) return;
  const Lanes xl = rows_of(x);
  const Index gs = gamma.strides()[0];
  // A warp per row, unless the rows are too few to fill the GPU that way (a decoding step's one
  // row took 13 µs on one warp).
  if (D <= kWarpLaneMax && rows >= kFewLanes)
    rms_norm_kernel<32>
        <<<lane_blocks(rows, 32), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, gamma.data(), gs, D, eps, y.data(), inv_rms.data(), rows);
  else
    rms_norm_kernel<kBlock>
        <<<lane_blocks(rows, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, gamma.data(), gs, D, eps, y.data(), inv_rms.data(), rows);
  DRT_CUDA_CHECK_LAUNCH();
}

// dx += the gradient of x, from the output's gradient g.
template <class T>
void rms_norm_backward_x(const Tensor<T>& x, const Tensor<T>& gamma, const Tensor<T>& g, const Tensor<T>& inv_rms,
                         const Tensor<T>& dx) {
  using namespace nn_detail;
  const Index D = x.shape()[x.rank() - 1], rows = inv_rms.numel();
  if (rows == 0) return;
  const Lanes xl = rows_of(x), gl = rows_of(g), dl = rows_of(dx);
  const Index gs = gamma.strides()[0];
  if (D <= kWarpLaneMax)
    rms_norm_dx_kernel<32><<<lane_blocks(rows, 32), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, gamma.data(), gs, g.data(), gl,
                                                              inv_rms.data(), D, dx.data(), dl, rows);
  else
    rms_norm_dx_kernel<kBlock><<<lane_blocks(rows, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, gamma.data(), gs, g.data(), gl,
                                                                      inv_rms.data(), D, dx.data(), dl, rows);
  DRT_CUDA_CHECK_LAUNCH();
}

// dgamma += Σ_rows g·x·r, deterministic (two passes, no atomics); `arena` only marks the scratch
// as "need not be zeroed".
template <class T>
void rms_norm_backward_gamma(const Tensor<T>& x, const Tensor<T>& g, const Tensor<T>& inv_rms, const Tensor<T>& dgamma,
                             Arena* arena) {
  using namespace nn_detail;
  const Index D = x.shape()[x.rank() - 1], rows = inv_rms.numel();
  if (rows == 0 || D == 0) return;
  const Index chunks = rows < kGammaChunks ? rows : kGammaChunks;
  const Index rows_per_chunk = (rows + chunks - 1) / chunks;
  const Index used_chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;  // every chunk non-empty
  const Tensor<T> partial = Tensor<T>::empty(Shape{used_chunks, D}, arena, dgamma.device());
  const unsigned column_blocks = static_cast<unsigned>((D + kBlock - 1) / kBlock);
  rms_norm_gamma_partial_kernel<<<dim3(column_blocks, static_cast<unsigned>(used_chunks)), kBlock, 0, ::drt::cuda::stream()>>>(
      x.data(), rows_of(x), g.data(), rows_of(g), inv_rms.data(), D, rows, rows_per_chunk, partial.data());
  DRT_CUDA_CHECK_LAUNCH();
  rms_norm_gamma_sum_kernel<<<column_blocks, kBlock, 0, ::drt::cuda::stream()>>>(partial.data(), used_chunks, D, dgamma.data(),
                                                       dgamma.strides()[0]);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
