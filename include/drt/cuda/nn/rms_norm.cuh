// drt/cuda/nn/rms_norm.cuh — RMSNorm on the device (the kernels behind drt/nn/rms_norm.hpp).
//
// Shapes: x (rows..., D) any strides, gamma (D) any stride → y (rows..., D) row-major;
//         inv_rms (rows) = 1/sqrt(mean(x²) + eps), kept for the backward.
//
// Forward and dx: one group of threads per row (a warp for D ≤ 1024, else a block), the CPU's
// formulas: r = 1/sqrt(Σx²/D + eps), y = x·r·γ;  dx += r·(g·γ − x·r·c) with c = (Σ g·γ·x)·r/D
// (or dx = ..., when dx is fresh: Node::grad_slot, drt/autodiff/var.hpp; it is then written
// without being read). Where every row they touch is contiguous and starts on a 16-byte boundary
// (and D is a multiple of the pack), they move 16-byte packs (float4 / double2) instead of single
// elements: a quarter of the load instructions and four times the bytes in flight per load. Each
// thread adds its packs' elements in order, then the group reduces in a fixed order, so the sums
// stay deterministic (their order differs from the element path's, within rounding).
//
// dγ = Σ_rows g·x·r, deterministically and without atomics: partial sums per chunk of rows into a
// scratch (chunks, D), then pass 2 adds the chunks. How rows are cut into chunks depends only on
// the row count, never on the GPU, and every sum runs in a fixed order.
//
// When x and γ both want a gradient and a warp takes a row (D ≤ kWarpLaneMax: the model's case),
// dx and dγ's partial sums come from one kernel, so x and g are read from memory once instead of
// twice (dx and dγ's pass 1 each read both: 2.3 + 1.6 ms of a training micro-batch). A block of
// kFusedWarps warps takes a chunk of consecutive rows, a multiple of kFusedWarps long (at most
// kFusedChunks chunks); warp w takes the chunk's rows w, w + kFusedWarps, ... in order. A lane
// owns the same columns (packs lane, lane + 32, ...) in every row, so it keeps their running
// g·x·r in registers across its rows (at most kWarpLaneMax/32 = 32 elements: 24 floats for
// D = 768). At the end the warps' sums meet in shared memory and are added in warp order, one
// thread per column, into the chunk's row of the scratch.
//
// Otherwise (block per row, or only one of the gradients) dx has its own kernel and dγ's pass 1
// is its own: the rows are cut into at most kGammaChunks chunks of equal length (the last may be
// shorter); one block per (chunk, kGammaColumns columns) first finds its rows' offsets in x and g
// (one thread per row, into shared memory: the division per axis is paid once per row, not per
// element), then each thread adds, for each of its columns, the chunk's rows in order.
//
// Pass 2 (both ways): a block per kGammaSumColumns columns, whose L = kBlock / kGammaSumColumns
// lanes split the chunks (lane l adds chunks l, l + L, l + 2L, ... in order: L loads in flight
// per column instead of one chain of dependent loads), then the lanes' sums are added in lane
// order through shared memory into dγ. Adjacent threads take adjacent columns, so the reads
// coalesce.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>

#include "drt/core/memory.hpp"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

inline constexpr Index kGammaChunks = 512;             // at most this many chunks of rows (pass 1)
inline constexpr int kGammaColumnsPerThread = 4;       // columns one pass-1 thread keeps sums for
inline constexpr Index kGammaColumns = Index(kBlock) * kGammaColumnsPerThread;  // columns per pass-1 block
inline constexpr int kGammaSumColumns = 8;             // columns per pass-2 block (one 32-byte sector of fp32)
inline constexpr int kFusedWarps = kBlock / 32;        // warps per block of the fused dx + dγ kernel
inline constexpr Index kFusedChunks = 1024;            // at most this many chunks of rows (fused kernel)
// Columns whose warp sums meet in shared memory at once (32 KiB: all of D ≤ 1024 in fp32, half in fp64).
template <class T>
inline constexpr int kFusedSumColumns = static_cast<int>(4096 / sizeof(T));

// Rows per chunk of the fused kernel, from the row count alone: a multiple of kFusedWarps (every
// warp of a chunk but the last gets the same count of rows), as few as keep to kFusedChunks chunks.
inline Index fused_rows_per_chunk(Index rows) {
  const Index per_warp = (rows + Index(kFusedWarps) * kFusedChunks - 1) / (Index(kFusedWarps) * kFusedChunks);
  return (per_warp > 0 ? per_warp : 1) * kFusedWarps;
}

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
    rms_norm_kernel(const T* x, Lanes xl, const T* gamma, Index gs, Index D, T eps, T* y, T* inv_rms, Index rows,
                    __nv_bfloat16* y16) {
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
    if (y16 != nullptr) store_bf16_pack<W>(y16 + row * D, k, o);
  }
}

template <int G, int W, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_dx_kernel(const T* x, Lanes xl, const T* gamma, Index gs, const T* g, Lanes gl, const T* inv_rms, Index D,
                       T* dx, Lanes dl, bool add, Index rows) {
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
    Pack<T, W> vd = add ? load_pack<W>(d, k, ds) : Pack<T, W>{};  // a fresh dx is written, not read
#pragma unroll
    for (int w = 0; w < W; ++w) vd.v[w] += r * (vg.v[w] * gm.v[w] - v.v[w] * r * c);
    store_pack<W>(d, k, ds, vd);
  }
}

// dx (+)= as rms_norm_dx_kernel with a warp per row, and partial[chunk, :] = Σ over the chunk's
// rows of g·x·r: block = chunk (kFusedWarps warps), warp w takes rows begin + w, begin + w +
// kFusedWarps, ... Lane t owns packs t, t + 32, ... (K of them at most) of every row. The first
// loop over a row is unrolled 8 times, not fully: fully, the element path (K = 32) took 255
// registers and spilled in fp64 (now 80 with fp32 packs, 3 blocks per SM; none spill). x, γ, g
// are only read and dx, partial only written, with no overlap: hence __restrict__.
template <int W, class T>
__global__ void __launch_bounds__(kBlock)
    rms_norm_dx_gamma_kernel(const T* __restrict__ x, Lanes xl, const T* __restrict__ gamma, Index gs,
                             const T* __restrict__ g, Lanes gl, const T* __restrict__ inv_rms, Index D,
                             T* __restrict__ dx, Lanes dl, bool add, Index rows, Index rows_per_chunk,
                             T* __restrict__ partial, __nv_bfloat16* __restrict__ dx16) {
  constexpr int K = static_cast<int>(kWarpLaneMax / 32) / W;
  constexpr int C = kFusedSumColumns<T>;
  static_assert(C % W == 0, "a pack's columns meet in one round");
  __shared__ alignas(16) T sums[kFusedWarps][C];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const Index chunk = blockIdx.x, begin = chunk * rows_per_chunk;
  const Index end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  const Index xs = xl.step, os = gl.step, ds = dl.step;
  const int packs = static_cast<int>(D / W);  // ≤ kWarpLaneMax
  Pack<T, W> acc[K];  // Σ g·x·r over this warp's rows, for the lane's packs
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int w = 0; w < W; ++w) acc[i].v[w] = T(0);
  for (Index row = begin + warp; row < end; row += kFusedWarps) {  // the same count for the whole warp
    const T* in = x + start_of(xl, row);
    const T* pg = g + start_of(gl, row);
    T* d = dx + start_of(dl, row);
    T dot = T(0);  // Σ g·γ·x̂ (without the r), as in rms_norm_dx_kernel
#pragma unroll 8
    for (int i = 0; i < K; ++i) {
      const int k = lane + i * 32;
      if (k >= packs) break;
      const Pack<T, W> vg = load_pack<W>(pg, k, os), gm = load_pack<W>(gamma, k, gs), v = load_pack<W>(in, k, xs);
#pragma unroll
      for (int w = 0; w < W; ++w) dot += vg.v[w] * gm.v[w] * v.v[w];
    }
    dot = group_reduce<32>(dot, SumOp{});
    const T r = inv_rms[row];
    const T c = D ? dot * r / T(D) : T(0);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int k = lane + i * 32;
      if (k < packs) {
        const Pack<T, W> vg = load_pack<W>(pg, k, os), gm = load_pack<W>(gamma, k, gs), v = load_pack<W>(in, k, xs);
        Pack<T, W> vd = add ? load_pack<W>(d, k, ds) : Pack<T, W>{};
#pragma unroll
        for (int w = 0; w < W; ++w) {
          vd.v[w] += r * (vg.v[w] * gm.v[w] - v.v[w] * r * c);
          acc[i].v[w] += vg.v[w] * v.v[w] * r;
        }
        store_pack<W>(d, k, ds, vd);
        if (dx16 != nullptr) store_bf16_pack<W>(dx16 + row * D, k, vd);  // dx row-major (checked by the caller)
      }
    }
  }
  // The warps' sums, C columns at a time: each warp stores its packs of the round's columns, then
  // thread j adds column j's kFusedWarps sums in warp order. Every thread reaches both barriers.
  for (Index base = 0; base < D; base += C) {
    __syncthreads();  // the previous round's readers are done
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int k = lane + i * 32;
      if (k < packs && k * W >= base && k * W < base + C) store_pack<W>(sums[warp], k - base / W, 1, acc[i]);
    }
    __syncthreads();
    const int n = static_cast<int>(D - base < C ? D - base : C);
    for (int j = static_cast<int>(threadIdx.x); j < n; j += kBlock) {
      T total = sums[0][j];
#pragma unroll
      for (int w = 1; w < kFusedWarps; ++w) total += sums[w][j];
      partial[chunk * D + base + j] = total;
    }
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

// Pass 2: dgamma += Σ over chunks of partial (chunks, D).
template <class T>
void rms_norm_gamma_sum(const Tensor<T>& partial, Index chunks, const Tensor<T>& dgamma) {
  const Index D = partial.shape()[1];
  const unsigned blocks = static_cast<unsigned>((D + kGammaSumColumns - 1) / kGammaSumColumns);
  rms_norm_gamma_sum_kernel<<<blocks, kBlock, 0, ::drt::cuda::stream()>>>(partial.data(), chunks, D, dgamma.data(),
                                                                          dgamma.strides()[0]);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace nn_detail

// y (row-major, x's shape) and inv_rms (rows); with y16, y's bf16 copy too (y.numel() elements).
template <class T>
void rms_norm_forward(const Tensor<T>& x, const Tensor<T>& gamma, T eps, const Tensor<T>& y, const Tensor<T>& inv_rms,
                      __nv_bfloat16* y16 = nullptr) {
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
                                                                                     eps, y.data(), inv_rms.data(), rows, y16);
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

// rms_norm_forward that returns y's bf16 copy as well (device scratch, freed with its last owner),
// for the bf16 GEMMs that read y next: the projections after a norm.
inline std::shared_ptr<void> rms_norm_forward_rounded(const Tensor<float>& x, const Tensor<float>& gamma, float eps,
                                                      const Tensor<float>& y, const Tensor<float>& inv_rms) {
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(y.numel()) * sizeof(__nv_bfloat16));
  rms_norm_forward(x, gamma, eps, y, inv_rms, static_cast<__nv_bfloat16*>(copy.get()));
  return copy;
}

// dx += the gradient of x, from the output's gradient g (dx = ..., without reading dx, when !add).
template <class T>
void rms_norm_backward_x(const Tensor<T>& x, const Tensor<T>& gamma, const Tensor<T>& g, const Tensor<T>& inv_rms,
                         const Tensor<T>& dx, bool add = true) {
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
        x.data(), xl, gamma.data(), gs, g.data(), gl, inv_rms.data(), D, dx.data(), dl, add, rows);
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
  rms_norm_gamma_sum(partial, used_chunks, dgamma);
}

// Whether rms_norm_backward takes the fused kernel (both gradients, a warp per row), the one path
// that can also write dx's bf16 copy.
template <class T>
bool rms_norm_backward_is_fused(const Tensor<T>& x, const Tensor<T>& dx, const Tensor<T>& dgamma) {
  return dx.defined() && dgamma.defined() && x.shape()[x.rank() - 1] <= nn_detail::kWarpLaneMax;
}

// dx (+)= the gradient of x and dgamma += Σ_rows g·x·r, as rms_norm_backward_x and
// rms_norm_backward_gamma; either may be undefined (not wanted). With both wanted and D ≤
// kWarpLaneMax, one kernel reads x and g once for both (then pass 2); otherwise the two above.
template <class T>
void rms_norm_backward(const Tensor<T>& x, const Tensor<T>& gamma, const Tensor<T>& g, const Tensor<T>& inv_rms,
                       const Tensor<T>& dx, bool add_dx, const Tensor<T>& dgamma, Arena* arena,
                       __nv_bfloat16* dx16 = nullptr) {
  using namespace nn_detail;
  const Index D = x.shape()[x.rank() - 1], rows = inv_rms.numel();
  if (!rms_norm_backward_is_fused(x, dx, dgamma)) {
    if (dx.defined()) rms_norm_backward_x(x, gamma, g, inv_rms, dx, add_dx);
    if (dgamma.defined()) rms_norm_backward_gamma(x, g, inv_rms, dgamma, arena);
    return;
  }
  if (rows == 0 || D == 0) return;  // nothing to write
  const Index rows_per_chunk = fused_rows_per_chunk(rows);
  const Index chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;  // every chunk non-empty, ≤ kFusedChunks
  const Tensor<T> partial = Tensor<T>::empty(Shape{chunks, D}, arena, dgamma.device());
  const Lanes xl = rows_of(x), gl = rows_of(g), dl = rows_of(dx);
  const Index gs = gamma.strides()[0];
  constexpr int P = kPackWidth<T>;
  const bool packed = D % P == 0 && rows_in_packs(x, P) && rows_in_packs(gamma, P) && rows_in_packs(g, P) &&
                      rows_in_packs(dx, P);
  auto launch = [&](auto width) {
    constexpr int W = decltype(width)::value;
    rms_norm_dx_gamma_kernel<W><<<static_cast<unsigned>(chunks), kBlock, 0, ::drt::cuda::stream()>>>(
        x.data(), xl, gamma.data(), gs, g.data(), gl, inv_rms.data(), D, dx.data(), dl, add_dx, rows, rows_per_chunk,
        partial.data(), dx16);
  };
  packed ? launch(std::integral_constant<int, P>{}) : launch(std::integral_constant<int, 1>{});
  DRT_CUDA_CHECK_LAUNCH();
  rms_norm_gamma_sum(partial, chunks, dgamma);
}

// rms_norm_backward that also returns dx's bf16 copy as written (device scratch), for the GEMMs
// that read x's gradient next (Node::grad_rounded: the residual stream's gradient reaches the
// output projections through the residual adds); null, with only the gradients written, where
// the fused kernel does not run or dx is not contiguous.
inline std::shared_ptr<void> rms_norm_backward_rounded(const Tensor<float>& x, const Tensor<float>& gamma,
                                                       const Tensor<float>& g, const Tensor<float>& inv_rms,
                                                       const Tensor<float>& dx, bool add_dx, const Tensor<float>& dgamma,
                                                       Arena* arena) {
  if (!rms_norm_backward_is_fused(x, dx, dgamma) || !dx.is_contiguous()) {
    rms_norm_backward(x, gamma, g, inv_rms, dx, add_dx, dgamma, arena);
    return nullptr;
  }
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(dx.numel()) * sizeof(__nv_bfloat16));
  rms_norm_backward(x, gamma, g, inv_rms, dx, add_dx, dgamma, arena, static_cast<__nv_bfloat16*>(copy.get()));
  return copy;
}

}  // namespace drt::cuda
