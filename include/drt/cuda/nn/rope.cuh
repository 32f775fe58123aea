// drt/cuda/nn/rope.cuh — rotary position embedding on the device (the kernels behind
// drt/nn/rope.hpp).
//
// Shapes: freq (d/2) double, θ^(−2i/d) as the CPU computes it (std::pow on the host);
//         cos, sin (S, d/2) in T;  in, out (..., S, d) any strides (out may be the gradient buffer).
//
// The tables are made on the device from the host's frequencies: angle = (s + offset)·freq[i] in
// double, exactly the CPU's product, then CUDA's double cos/sin (within 1-2 ulp of glibc's), then
// rounded to T. The rotation computes the CPU's formula per pair (x_i, x_{i+d/2}) with the same
// operations in the same order; a warp takes 32 rows at a time, finds where each row starts once
// (lane k for row k, by shuffle to the threads that rotate it; 32-bit arithmetic where it fits),
// and a row's pairs go to adjacent threads, so the loads coalesce. The input is typically a
// permuted view ((B, H, T, d) over (B, T, H, d) storage); the one-thread-per-pair version divided
// in 64 bits per axis and pair and took 292 µs for a (16640, 768) tensor that the bandwidth moves
// in ~25 µs.
#pragma once

#include <algorithm>
#include <cstdint>

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

inline constexpr int kRopeRows = 4;  // rows a rotation thread loads before it stores (loads in flight)

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

// Where row `row` of `in` and of `out` (same extents, rows along the last axis) starts, and where
// its position s = row mod S starts in the cos/sin tables (s·half): S is the innermost of the row
// axes, so s is the first remainder of the walk. One division per axis, for both tensors at once;
// the loop is unrolled over kMaxRank so that the extents and strides are read from the kernel's
// parameters (a run-time trip count would index them dynamically, through a per-thread copy in
// local memory).
template <class I>
struct RopeRow {
  I in, out, table;
};
template <class I>
__device__ RopeRow<I> rope_row(const Lanes& il, const Lanes& ol, I row, I half) {
  RopeRow<I> at{0, 0, 0};
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d)
    if (d >= kMaxRank - il.count) {
      const I extent = I(il.dims[d]), q = row / extent, k = row - q * extent;
      if (d == kMaxRank - 1) at.table = k * half;
      at.in += k * I(il.strides[d]);
      at.out += k * I(ol.strides[d]);
      row = q;
    }
  return at;
}

template <class I>
__device__ RopeRow<I> shuffle_row(const RopeRow<I>& r, int from) {
  return {__shfl_sync(0xffffffffu, r.in, from), __shfl_sync(0xffffffffu, r.out, from),
          __shfl_sync(0xffffffffu, r.table, from)};
}

// The rotation, a warp per 32 consecutive rows at a time, with index type I (32-bit where every
// offset fits). Lane k of the warp finds where row base + k starts (rope_row); then groups of
// G = 2^group_log2 threads (the smallest power of two ≥ half, at most 32) each take a row at a
// time, R = 32 / G rows side by side, receiving its offsets by shuffle: the index arithmetic is
// paid once per row and spread over the lanes, and a thread's pairs i = t, t + G, ... keep their
// in-row offsets from row to row. Each thread loads kRopeRows rows' elements (and, accumulating,
// the destination's) before it stores any, so that many loads are in flight per thread.
template <class I, class T>
__global__ void __launch_bounds__(kBlock)
    rope_rotate_kernel(const T* in, Lanes il, T* out, Lanes ol, const T* cos_table, const T* sin_table, I rows,
                       I half, int group_log2, T direction, bool accumulate) {
  constexpr int U = kRopeRows;
  const int lane = static_cast<int>(threadIdx.x % 32), G = 1 << group_log2, R = 32 >> group_log2;
  const int sub = lane >> group_log2, t = lane & (G - 1);
  const I in_step = I(il.step), out_step = I(ol.step);
  const I warps = I(gridDim.x) * I(kBlock / 32);
  // Every lane of a warp runs the same iterations of both outer loops (base and k0 depend on the
  // warp only), so every lane reaches every shuffle.
  for (I base = (I(blockIdx.x) * I(kBlock) + I(threadIdx.x)) / 32 * 32; base < rows; base += warps * 32) {
    const RopeRow<I> mine = base + I(lane) < rows ? rope_row<I>(il, ol, base + I(lane), half) : RopeRow<I>{0, 0, 0};
    for (int k0 = 0; k0 < G; k0 += U) {  // step k: group `sub` takes the batch's row k·R + sub
      RopeRow<I> at[U];
      bool live[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int from = (k0 + u) * R + sub;  // < 32 while k0 + u < G
        at[u] = shuffle_row(mine, from & 31);
        live[u] = k0 + u < G && base + I(from) < rows;
      }
      for (I i = I(t); i < half; i += I(G)) {
        const I lo_in = i * in_step, hi_in = (i + half) * in_step, lo_out = i * out_step, hi_out = (i + half) * out_step;
        T lo[U], hi[U], c[U], sn[U], old_lo[U], old_hi[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (!live[u]) continue;
          lo[u] = in[at[u].in + lo_in];
          hi[u] = in[at[u].in + hi_in];
          c[u] = cos_table[at[u].table + i];
          sn[u] = direction * sin_table[at[u].table + i];
          if (accumulate) {
            old_lo[u] = out[at[u].out + lo_out];
            old_hi[u] = out[at[u].out + hi_out];
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (!live[u]) continue;
          const T new_lo = lo[u] * c[u] - hi[u] * sn[u], new_hi = hi[u] * c[u] + lo[u] * sn[u];
          // dst += new is dst = dst + new: the CPU's operation, on the value loaded above.
          out[at[u].out + lo_out] = accumulate ? old_lo[u] + new_lo : new_lo;
          out[at[u].out + hi_out] = accumulate ? old_hi[u] + new_hi : new_hi;
        }
      }
    }
  }
}

// Whether the rows, every offset of `in` and `out` and every table index fit 32-bit unsigned
// arithmetic, with room for the grid-stride loop's last step (base + the grid's warps·32).
template <class T>
bool rope_fits_32(const Tensor<T>& in, const Tensor<T>& out, Index rows, Index half) {
  const Index limit = Index(1) << 31;
  for (const Tensor<T>* t : {&in, &out}) {
    Index last = 0;
    for (int d = 0; d < t->rank(); ++d) {
      if (t->strides()[d] < 0) return false;
      last += (t->shape()[d] - 1) * t->strides()[d];
    }
    if (last >= limit) return false;
  }
  return rows < limit && rows * half < limit;
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
  const Index d = in.shape()[in.rank() - 1], half = d / 2;
  if (in.numel() == 0 || half == 0) return;
  const Index rows = in.numel() / d;
  int group_log2 = 0;  // G = 2^group_log2 threads per row: the smallest power of two ≥ half, at most 32
  while (group_log2 < 5 && (Index(1) << group_log2) < half) ++group_log2;
  // A warp per 32 rows; beyond 65,536 blocks the warps loop.
  const Index rows_per_block = Index(kBlock / 32) * 32;
  const unsigned blocks = static_cast<unsigned>(std::min<Index>((rows + rows_per_block - 1) / rows_per_block, 65536));
  const Lanes il = rows_of(in), ol = rows_of(out);
  if (rope_fits_32(in, out, rows, half))
    rope_rotate_kernel<std::uint32_t><<<blocks, kBlock, 0, ::drt::cuda::stream()>>>(
        in.data(), il, out.data(), ol, cos_table.data(), sin_table.data(), static_cast<std::uint32_t>(rows),
        static_cast<std::uint32_t>(half), group_log2, direction, accumulate);
  else
    rope_rotate_kernel<Index><<<blocks, kBlock, 0, ::drt::cuda::stream()>>>(in.data(), il, out.data(), ol,
                                                                          cos_table.data(), sin_table.data(), rows,
                                                                          half, group_log2, direction, accumulate);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
