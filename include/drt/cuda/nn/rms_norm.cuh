// drt/cuda/nn/rms_norm.cuh — RMSNorm on the device (the kernels behind drt/nn/rms_norm.hpp).
//
// Shapes: x (rows..., D) any strides, gamma (D) any stride → y (rows..., D) row-major;
//         inv_rms (rows) = 1/sqrt(mean(x²) + eps), kept for the backward.
//
// Forward and dx: one group of threads per row (a warp for D ≤ 1024, else a block), the CPU's
// formulas: r = 1/sqrt(Σx²/D + eps), y = x·r·γ;  dx += r·(g·γ − x·r·c) with c = (Σ g·γ·x)·r/D.
// Where every row they touch is contiguous and starts on a 16-byte boundary (and D is a multiple
// of the pack), they move 16-byte packs (float4 / double2) instead of single elements: a quarter
// of the load instructions and four times the bytes in flight per load. Each thread adds its
// packs' elements in order, then the group reduces in a fixed order, so the sums stay
// deterministic (their order differs from the element path's, within rounding).
//
// dγ = Σ_rows g·x·r, deterministically and without atomics, in two passes. The rows are cut into
// at most kGammaChunks chunks of equal length (the last may be shorter); the cut depends only on
// the row count, never on the GPU. Pass 1: one block per (chunk, kGammaColumns columns); the
// block first finds its rows' offsets in x and g (one thread per row, into shared memory: the
// division per axis is paid once per row, not per element), then each thread adds, for each of
// its columns, the chunk's rows in order into a scratch (chunks, D). Pass 2: a block per
// kGammaSumColumns columns, whose L = kBlock / kGammaSumColumns lanes split the chunks (lane l
// adds chunks l, l + L, l + 2L, ... in order: L loads in flight per column instead of one chain
// of dependent loads), then the lanes' sums are added in lane order through shared memory into
// dγ. Adjacent threads take adjacent columns, so the reads coalesce.
#pragma once

#include <cstdint>
#include <type_traits>

#include "drt/core/memory.hpp"
#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

inline constexpr Index kGammaChunks = 512;             // at most this many chunks of rows (pass 1)
inline constexpr int kGammaColumnsPerThread = 4;       // columns one pass-1 thread keeps sums for
inline constexpr Index kGammaColumns = Index(kBlock) * kGammaColumnsPerThread;  // columns per pass-1 block
inline constexpr int kGammaSumColumns = 8;             // columns per pass-2 block (one 32-byte sector of fp32)

// Whether every row of t (along the last axis) is contiguous and starts on a 16-byte boundary, so
// that it can be walked in packs of `width` elements (the caller checks that width divides D).
template <class T>
bool rows_in_packs(const Tensor<T>& t, Index width) {
  const int r = t.rank();
  if (r == 0 || reinterpret_cast<std::uintptr_t>(t.data()) % 16 != 0 || t.strides()[r - 1] != 1) return false;
  for (int d = 0; d < r - 1; ++d)
    if (t.shape()[d] != 1 && t.strides()[d] % width != 0) return false;
  return true;
}

// ---- forward and dx -------------------------------------------------------------------------------

template <int G, int W, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_kernel(const T* x, Lanes xl, const T* gamma, Index gs, Index D, T eps, T* y, T* inv_rms, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const T* in = x + start_of(xl, row);
  const Index xs = xl.step, packs = D / W;
  T squares = T(0);
#pragma unroll 4
  for (Index k = t; k < packs; k += G) {
    const Pack<T, W> v = load_pack<W>(in, k, xs);
#pragma unroll
    for (int w = 0; w < W; ++w) squares += v.v[w] * v.v[w];
  }
  squares = group_reduce<G>(squares, SumOp{});
  const T r = T(1) / dev_sqrt((D ? squares / T(D) : T(0)) + eps);
  if (t == 0) inv_rms[row] = r;
  T* out = y + row * D;
#pragma unroll 4
  for (Index k = t; k < packs; k += G) {
    const Pack<T, W> v = load_pack<W>(in, k, xs), gm = load_pack<W>(gamma, k, gs);
    Pack<T, W> o;
#pragma unroll
    for (int w = 0; w < W; ++w) o.v[w] = v.v[w] * r * gm.v[w];
    store_pack<W>(out, k, 1, o);
  }
}

template <int G, int W, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_dx_kernel(const T* x, Lanes xl, const T* gamma, Index gs, const T* g, Lanes gl, const T* inv_rms, Index D,
                       T* dx, Lanes dl, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const T* in = x + start_of(xl, row);
  const T* pg = g + start_of(gl, row);
  T* d = dx + start_of(dl, row);
  const Index xs = xl.step, os = gl.step, ds = dl.step, packs = D / W;
  T dot = T(0);  // Σ g·γ·x̂ (without the r)
#pragma unroll 4
  for (Index k = t; k < packs; k += G) {
    const Pack<T, W> vg = load_pack<W>(pg, k, os), gm = load_pack<W>(gamma, k, gs), v = load_pack<W>(in, k, xs);
#pragma unroll
    for (int w = 0; w < W; ++w) dot += vg.v[w] * gm.v[w] * v.v[w];
  }
  dot = group_reduce<G>(dot, SumOp{});
  const T r = inv_rms[row];
  const T c = D ? dot * r / T(D) : T(0);
#pragma unroll 4
  for (Index k = t; k < packs; k += G) {
    const Pack<T, W> vg = load_pack<W>(pg, k, os), gm = load_pack<W>(gamma, k, gs), v = load_pack<W>(in, k, xs);
    Pack<T, W> vd = load_pack<W>(d, k, ds);
#pragma unroll
    for (int w = 0; w < W; ++w) vd.v[w] += r * (vg.v[w] * gm.v[w] - v.v[w] * r * c);
    store_pack<W>(d, k, ds, vd);
  }
}

// ---- dγ -----------------------------------------------------------------------------------------

// partial[chunk, j] = Σ over the chunk's rows of g·x·r (rows in order), for the block's columns
// j = blockIdx.x·kGammaColumns + threadIdx.x + c·kBlock. Grid: (column blocks, chunks).
template <class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_gamma_partial_kernel(const T* x, Lanes xl, const T* g, Lanes gl, const T* inv_rms, Index D, Index rows,
                                  Index rows_per_chunk, T* partial) {
  __shared__ Index x_at[kBlock], g_at[kBlock];  // offsets of up to kBlock rows
  __shared__ T r_at[kBlock];
  const Index chunk = blockIdx.y;
  const Index begin = chunk * rows_per_chunk;
  const Index end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  const Index first = Index(blockIdx.x) * kGammaColumns + threadIdx.x;
  Index x_col[kGammaColumnsPerThread], g_col[kGammaColumnsPerThread];  // column offsets within a row
  T acc[kGammaColumnsPerThread];
#pragma unroll
  for (int c = 0; c < kGammaColumnsPerThread; ++c) {
    const Index j = first + Index(c) * kBlock;
    x_col[c] = j * xl.step;
    g_col[c] = j * gl.step;
    acc[c] = T(0);
  }
  // Rows in tiles of kBlock (one tile unless a chunk is longer): every thread reaches both
  // barriers, including those without a column.
  for (Index tile = begin; tile < end; tile += kBlock) {
    const int n = static_cast<int>(end - tile < kBlock ? end - tile : kBlock);
    __syncthreads();  // the previous tile's readers are done
    if (static_cast<int>(threadIdx.x) < n) {
      const Index row = tile + threadIdx.x;
      x_at[threadIdx.x] = start_of(xl, row);
      g_at[threadIdx.x] = start_of(gl, row);
      r_at[threadIdx.x] = inv_rms[row];
    }
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < n; ++k) {
      const T* xr = x + x_at[k];
      const T* gr = g + g_at[k];
      const T r = r_at[k];
#pragma unroll
      for (int c = 0; c < kGammaColumnsPerThread; ++c)
        if (first + Index(c) * kBlock < D) acc[c] += gr[g_col[c]] * xr[x_col[c]] * r;
    }
  }
#pragma unroll
  for (int c = 0; c < kGammaColumnsPerThread; ++c) {
    const Index j = first + Index(c) * kBlock;
    if (j < D) partial[chunk * D + j] = acc[c];
  }
}

// dgamma[j] += Σ over chunks of partial[chunk, j]. Thread (lane l, column j): chunks l, l + L, ...
// in order (L = kBlock / kGammaSumColumns lanes, each column's lanes read in parallel); then the
// lanes' sums in lane order. A fixed order: the result does not depend on timing.
template <class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_gamma_sum_kernel(const T* partial, Index chunks, Index D, T* dgamma, Index dgs) {
  constexpr int kLanes = kBlock / kGammaSumColumns;
  __shared__ T sums[kLanes][kGammaSumColumns];
  const int col = threadIdx.x % kGammaSumColumns, lane = threadIdx.x / kGammaSumColumns;
  const Index j = Index(blockIdx.x) * kGammaSumColumns + col;
  T acc = T(0);
  if (j < D) {
#pragma unroll 4
    for (Index c = lane; c < chunks; c += kLanes) acc += partial[c * D + j];
  }
  sums[lane][col] = acc;
  __syncthreads();
  if (lane == 0 && j < D) {
    T total = sums[0][col];
    for (int l = 1; l < kLanes; ++l) total += sums[l][col];
    dgamma[j * dgs] += total;
  }
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
  constexpr int P = kPackWidth<T>;
  const bool packed = D > 0 && D % P == 0 && rows_in_packs(x, P) && rows_in_packs(gamma, P) && rows_in_packs(y, P);
  auto launch = [&](auto group, auto width) {
    constexpr int G = decltype(group)::value, W = decltype(width)::value;
    rms_norm_kernel<G, W><<<lane_blocks(rows, G), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, gamma.data(), gs, D,
                                                                                     eps, y.data(), inv_rms.data(), rows);
  };
  using Warp = std::integral_constant<int, 32>;
  using Block = std::integral_constant<int, kBlock>;
  using One = std::integral_constant<int, 1>;
  using Packs = std::integral_constant<int, P>;
  // A warp per row, unless the rows are too few to fill the GPU that way (a decoding step's one
  // row took 13 µs on one warp).
  if (D <= kWarpLaneMax && rows >= kFewLanes)
    packed ? launch(Warp{}, Packs{}) : launch(Warp{}, One{});
  else
    packed ? launch(Block{}, Packs{}) : launch(Block{}, One{});
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
  constexpr int P = kPackWidth<T>;
  const bool packed = D > 0 && D % P == 0 && rows_in_packs(x, P) && rows_in_packs(gamma, P) && rows_in_packs(g, P) &&
                      rows_in_packs(dx, P);
  auto launch = [&](auto group, auto width) {
    constexpr int G = decltype(group)::value, W = decltype(width)::value;
    rms_norm_dx_kernel<G, W><<<lane_blocks(rows, G), kBlock, 0, ::drt::cuda::stream()>>>(
        x.data(), xl, gamma.data(), gs, g.data(), gl, inv_rms.data(), D, dx.data(), dl, rows);
  };
  using Warp = std::integral_constant<int, 32>;
  using Block = std::integral_constant<int, kBlock>;
  using One = std::integral_constant<int, 1>;
  using Packs = std::integral_constant<int, P>;
  if (D <= kWarpLaneMax)
    packed ? launch(Warp{}, Packs{}) : launch(Warp{}, One{});
  else
    packed ? launch(Block{}, Packs{}) : launch(Block{}, One{});
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
  const Index used_chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;  // every chunk non-empty, ≤ kGammaChunks
  const Tensor<T> partial = Tensor<T>::empty(Shape{used_chunks, D}, arena, dgamma.device());
  const unsigned column_blocks = static_cast<unsigned>((D + kGammaColumns - 1) / kGammaColumns);
  rms_norm_gamma_partial_kernel<<<dim3(column_blocks, static_cast<unsigned>(used_chunks)), kBlock, 0,
                                  ::drt::cuda::stream()>>>(x.data(), rows_of(x), g.data(), rows_of(g), inv_rms.data(), D,
                                                           rows, rows_per_chunk, partial.data());
  DRT_CUDA_CHECK_LAUNCH();
  const unsigned sum_blocks = static_cast<unsigned>((D + kGammaSumColumns - 1) / kGammaSumColumns);
  rms_norm_gamma_sum_kernel<<<sum_blocks, kBlock, 0, ::drt::cuda::stream()>>>(partial.data(), used_chunks, D,
                                                                             dgamma.data(), dgamma.strides()[0]);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
