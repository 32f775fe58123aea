// drt/cuda/attention/window_attention_v4.cuh — version 4 of sliding-window ALiBi attention on the
// GPU (forward and backward). Included by window_attention.cuh after version 3, whose shape
// (WindowShape) and helpers (window_mma: tile walk, masks, online softmax) it reuses; not meant
// to be included on its own.
//
// Same math, same numerics contract and same tile geometry inside a warp as version 3 (bf16
// mma.sync m16n8k16, fp32 accumulators and softmax, base-2 scores, one warp per 16 rows of a
// 64-row tile, the fragment layouts and loaders of mma.cuh). What changes is how tiles reach
// shared memory and how many registers a warp holds, because Nsight Compute showed version 3
// limited by occupancy (244 / 255 / 168 registers, 12–18% of warp slots active):
//   - K/V (and, for dK/dV, Q/dO) tiles are copied with cp.async from bf16 copies of the inputs
//     (drt/cuda/bf16.cuh) into two shared-memory stages: the next tile lands while the current
//     one is multiplied, with no registers held for it (version 3 held the next tile pair as 64
//     float4 registers per thread). The copies cost one pass over the inputs (read fp32, write
//     bf16) but halve the bytes every later tile read moves, and a tile is read by ~9 blocks.
//     Each input is rounded once per forward and backward pair: the forward rounds k and v
//     (bf16_copy) and, when the op will run a backward, writes the bf16 Q rows it stages anyway
//     to a copy of q; the backward reads those three (WindowAttentionBf16Copies) and gets dO's
//     copy from the δ kernel, which reads dO anyway. Without them (another version or precision
//     in the forward) the backward rounds k, v, q itself, as it used to.
//   - Operands that stay in shared memory anyway (Q, dO in dQ; K, V in dK/dV) have their A
//     fragments loaded 16 columns at a time where they are used, instead of being held as
//     32 registers for the whole kernel; P and dS are packed to bf16 16 columns at a time.
//   - The window/causal mask is applied only to (warp, tile) pairs that need it: most of a
//     warp's 9 key tiles lie strictly inside the band and take only the ALiBi bias, computed as
//     two FMAs from a per-row constant and a compile-time column offset.
//   - Forward and dQ take 128 queries per block (8 warps): each K/V tile then serves 128 queries,
//     halving the key tiles read per query (10 per 128 instead of 9 per 64).
// __launch_bounds__ carries a minimum-blocks hint so that ptxas keeps each kernel within the
// registers that hint allows (see docs/kernels.md, "Version 4", for the counts).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/fresh_gradients.cuh"
#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/bf16.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::attention {
namespace window_v4 {

using namespace mma;
using window_mma::first_key_tile;
using window_mma::kD;
using window_mma::kTile;
using window_mma::OnlineSoftmax16;
using window_mma::warp_keys_see_tile;
using window_mma::warp_sees_tile;

inline constexpr int kQueryWarps = 8;                  // forward and dQ: 128 queries per block
inline constexpr int kQueryThreads = kQueryWarps * kWarp;
inline constexpr int kQueries = kQueryWarps * 16;      // = 2 tiles of 64
inline constexpr int kKeyWarps = 4;                    // dK/dV: 64 keys per block, as version 3
inline constexpr int kKeyThreads = kKeyWarps * kWarp;

// Whether a warp's 16 queries first_query.. against key tile j0 need the per-entry mask: some
// key after a query (j > t), some key below a window (j < t − W), or a query row past T. Keys
// past T never need their own test: they only occur beside queries they follow (j > t) or
// queries past T.
__device__ inline bool query_strip_needs_mask(int first_query, int j0, const WindowShape& s) {
  return j0 + kTile - 1 > first_query || j0 < first_query + 15 - s.W || first_query + 16 > s.T;
}

// The same for a warp's 16 keys first_key.. against query tile t0 (the dK/dV orientation).
__device__ inline bool key_strip_needs_mask(int first_key, int t0, const WindowShape& s) {
  return t0 < first_key + 15 || t0 + kTile - 1 > first_key + s.W || t0 + kTile > s.T;
}

// Raw products x = ⟨q_t, k_j⟩ of a tile whose ROWS are queries (t = t0 + at.row(u)) and whose
// columns are keys (j = j0 + at.col(jj, u)) become base-2 scores
//   log2(e)·(scale·x − slope·(t − j)),
// and, when kMasked, −∞ outside the window (j > t, j < t − W) or past T (t ≥ T), exactly as
// window_mma::window_scores. For this lane, t − j = dt[half] − c with dt[half] = t − j0 − 2·pair
// and c = 8·jj + u % 2 a compile-time constant, so the bias is one FMA on a per-row constant:
// −bf·(t − j) = −bf·dt + bf·c.
template <bool kMasked>
__device__ inline void query_row_scores(Accumulator16x64& x, const FragmentLane& at, float score_factor,
                                        float bias_factor, int t0, int j0, const WindowShape& s) {
  int dt[2];
  float row_bias[2];
  bool row_inside[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    dt[half] = t - j0 - 2 * at.pair;
    row_bias[half] = -bias_factor * float(dt[half]);
    row_inside[half] = t < s.T;
  }
#pragma unroll
  for (int jj = 0; jj < 8; ++jj)
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int c = 8 * jj + u % 2;
      float score = fmaf(x.c[jj][u], score_factor, fmaf(bias_factor, float(c), row_bias[u / 2]));
      if constexpr (kMasked) {
        const int t_minus_j = dt[u / 2] - c;
        if (t_minus_j < 0 || t_minus_j > s.W || !row_inside[u / 2]) score = -INFINITY;
      }
      x.c[jj][u] = score;
    }
}

// The transposed orientation (dK/dV): ROWS are keys (j = j0 + at.row(u)), columns queries
// (t = t0 + at.col(jj, u)). Here t − j = dk[half] + c with dk[half] = t0 + 2·pair − j, c as
// above, and a query is past T when c ≥ T − t0 − 2·pair.
template <bool kMasked>
__device__ inline void key_row_scores(Accumulator16x64& x, const FragmentLane& at, float score_factor,
                                      float bias_factor, int t0, int j0, const WindowShape& s) {
  int dk[2];
  float row_bias[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    dk[half] = t0 + 2 * at.pair - (j0 + at.row(2 * half));
    row_bias[half] = -bias_factor * float(dk[half]);
  }
  const int columns_inside = s.T - t0 - 2 * at.pair;  // c < this: query t < T
#pragma unroll
  for (int jj = 0; jj < 8; ++jj)
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int c = 8 * jj + u % 2;
      float score = fmaf(x.c[jj][u], score_factor, fmaf(-bias_factor, float(c), row_bias[u / 2]));
      if constexpr (kMasked) {
        const int t_minus_j = dk[u / 2] + c;
        if (t_minus_j < 0 || t_minus_j > s.W || c >= columns_inside) score = -INFINITY;
      }
      x.c[jj][u] = score;
    }
}

// K and V tiles, twice: stage i % 2 holds key tile i of a block's walk while stage (i + 1) % 2
// receives tile i + 1 (cp.async). 4 × 9,216 = 36,864 bytes.
struct KeyValueStages {
  BfTile keys[2], values[2];
};

// Starts copying key tile j0 (K and V rows j0..j0+63 of kv head g, zeros past T) into `stage`
// and commits the copies as one group. All kThreads threads of the block call it.
template <int kThreads>
__device__ inline void fetch_key_tile(KeyValueStages& kv, int stage, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                      const WindowShape& s, int b, int j0, int g) {
  const long long first_row = ((static_cast<long long>(b) * s.T + j0) * s.Hkv + g) * kD;
  const long long row_stride = static_cast<long long>(s.Hkv) * kD;
  stage_rows_async<kThreads>(kv.keys[stage], k + first_row, row_stride, s.T - j0);
  stage_rows_async<kThreads>(kv.values[stage], v + first_row, row_stride, s.T - j0);
  commit_async_copies();
}

// The pipeline step every kernel here takes at the top of tile i: request tile i + 1 (if any)
// into the other stage, wait for this thread's copies of tile i (one commit group per tile, so
// "all but the newest group" is exactly tile i), then a barrier makes every thread's copies and
// zero stores visible. The barrier at the BOTTOM of the previous iteration is what makes the
// request safe: every warp was done reading the other stage (tile i − 1) before anyone refills it.
template <class Fetch>
__device__ inline void next_tile_then_wait(bool has_next, Fetch fetch_next) {
  if (has_next) {
    fetch_next();
    wait_async_copies_but<1>();
  } else {
    wait_async_copies_but<0>();
  }
  __syncthreads();
}

// The last key tile a block of queries t0..t0+rows−1 reaches (the diagonal one, clipped to T).
__device__ inline int last_key_tile(int t0, int rows, const WindowShape& s) {
  return min(t0 + rows - 1, s.T - 1) / kTile * kTile;
}

// stage_bf16 (mma.cuh), and where kept(r) gives a row of global memory (not nullptr), the same
// bf16 values stored there too: the forward's copy of Q for the backward, from the one rounding.
template <class RowPointer, class KeptRow>
__device__ inline void stage_bf16_and_keep(BfTile& tile, RowPointer src, KeptRow kept) {
  constexpr int kVectorsPerRow = kTileCols / 4;
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kTileRows * kVectorsPerRow; idx += blockDim.x) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * 4;
    const float* row = src(r);
    const float4 x = row ? *reinterpret_cast<const float4*>(row + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    const uint2 packed{pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w)};  // as store_bf16x4
    *reinterpret_cast<uint2*>(&tile.at[r][c]) = packed;
    if (__nv_bfloat16* dst = kept(r)) *reinterpret_cast<uint2*>(dst + c) = packed;
  }
}

// The end of a forward: out = O / l and lse = m + ln l for a warp's 16 queries t0 + at.row(..)
// (rows past T write nothing: their l may be 0), and out's bf16 copy to out16 unless it is
// nullptr. All 32 lanes call it (the row sums are shuffled).
__device__ inline void write_query_rows(const Accumulator16x64& o, const OnlineSoftmax16& softmax, const FragmentLane& at,
                                        int t0, int b, int h, const WindowShape& s, float* out, float* lse,
                                        __nv_bfloat16* out16) {
  const float row_sum[2] = {group_sum(softmax.row_sum[0]), group_sum(softmax.row_sum[1])};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    if (t >= s.T) continue;
    const float inv = 1.0f / row_sum[half];
    const long long row = ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 value = make_float2(o.c[j][2 * half] * inv, o.c[j][2 * half + 1] * inv);
      *reinterpret_cast<float2*>(out + row + at.col(j, 0)) = value;
      if (out16 != nullptr)
        *reinterpret_cast<__nv_bfloat162*>(out16 + row + at.col(j, 0)) = __floats2bfloat162_rn(value.x, value.y);
    }
    if (at.pair == 0)
      lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = softmax.row_max[half] * kLn2 + logf(row_sum[half]);
  }
}

}  // namespace window_v4

// Forward. Shapes: q (B, T, H, 64) fp32, k16, v16 (B, T, Hkv, 64) bf16 copies of k and v,
// out (B, T, H, 64), lse (B, H, T); q16 (B, T, H, 64) bf16 receives Q as staged (rows < T), for
// the backward, unless it is nullptr; out16 (B, T, H, 64) bf16, unless nullptr, receives out
// rounded to nearest even (bit for bit bf16_copy of out), for the output projection's GEMM.
// Grid (⌈T/128⌉, H, B), 256 threads (8 warps); warp w owns queries t0 + 16w .. t0 + 16w + 15 and
// holds them as A fragments (staged once, through stage 1 of the K/V buffers, which the first
// key tile does not use). Key tiles walk from the one holding t0 − W to the diagonal one
// (10 at W = 512; each warp meets 9 of them). Per tile, all in registers: S = Q·Kᵀ, base-2
// scores (mask only where the warp's strip needs it), online softmax, O += bf16(P)·V; then
// out = O / l and lse = m + log l, as versions 2 and 3 write them.
// Registers: ≤ 128 (2 blocks of 8 warps per SM, twice version 3's warps); shared: 36,864 bytes.
static __global__ void __launch_bounds__(window_v4::kQueryThreads, 2)
    window_forward_v4(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const float* slopes,
                      WindowShape s, float scale, float* out, float* lse, __nv_bfloat16* q16, __nv_bfloat16* out16) {
  using namespace window_v4;
  __shared__ KeyValueStages kv;
  const int t0 = blockIdx.x * kQueries, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const FragmentLane at;  // at.row0 = 16·warp, 0..112: rows of the 128-query block
  const int first_tile = first_key_tile(t0, s.W), last_tile = last_key_tile(t0, kQueries, s);
  // Tile 0's copy starts first so it flies while Q is rounded to bf16 (plain loads) into stage 1:
  // queries t0.. into keys[1], t0 + 64.. into values[1] (and into q16).
  fetch_key_tile<kQueryThreads>(kv, 0, k16, v16, s, b, first_tile, g);
  auto kept_row = [&](int t) -> __nv_bfloat16* {
    return q16 != nullptr && t < s.T ? q16 + ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD : nullptr;
  };
  stage_bf16_and_keep(kv.keys[1], [&](int r) { return window_mma::row_or_null(q, s, b, t0 + r, h, s.H); },
                      [&](int r) { return kept_row(t0 + r); });
  stage_bf16_and_keep(kv.values[1], [&](int r) { return window_mma::row_or_null(q, s, b, t0 + kTile + r, h, s.H); },
                      [&](int r) { return kept_row(t0 + kTile + r); });
  __syncthreads();
  std::uint32_t qa[4][4];  // this warp's 16 queries, for every key tile
  load_a_rows(qa, at.row0 < kTile ? kv.keys[1] : kv.values[1], at.row0 % kTile);
  __syncthreads();  // every warp has its Q: stage 1 may now receive key tile 1
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + at.row0;
  OnlineSoftmax16 softmax;
  Accumulator16x64 o;
  o.zero();
  for (int j0 = first_tile, i = 0; j0 <= last_tile; j0 += kTile, ++i) {
    const int stage = i & 1;
    next_tile_then_wait(j0 < last_tile,
                        [&] { fetch_key_tile<kQueryThreads>(kv, stage ^ 1, k16, v16, s, b, j0 + kTile, g); });
    if (first_query < s.T && warp_sees_tile(first_query, j0, s.W)) {
      Accumulator16x64 scores;
      scores.zero();
      multiply_by_transposed(scores, qa, kv.keys[stage]);
      if (query_strip_needs_mask(first_query, j0, s))
        query_row_scores<true>(scores, at, score_factor, bias_factor, t0, j0, s);
      else
        query_row_scores<false>(scores, at, score_factor, bias_factor, t0, j0, s);
      softmax.add_tile(scores, o);
      multiply_packed(o, scores, kv.values[stage]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled (tile i + 2)
  }
  write_query_rows(o, softmax, at, t0, b, h, s, out, lse, out16);
}

namespace window_v4 {

// dQ's shared memory: its 128 queries' Q and dO (resident), and two stages of K, V.
// 8 × 9,216 = 73,728 bytes: dynamic (above the 48 KB of static shared memory).
struct DqShared {
  BfTile queries[2], douts[2];
  KeyValueStages kv;
};

// dK/dV's: its 64 keys' K and V (resident), and two stages of Q, dO with their lse and δ.
// 6 × 9,216 + 1,024 = 56,320 bytes: dynamic.
struct DkvShared {
  BfTile keys, values;
  BfTile queries[2], douts[2];
  float lse[2][kTile], delta[2][kTile];  // as written by the forward and window_delta_kernel
};

}  // namespace window_v4

// dQ. Shapes: q, dout, dq (B, T, H, 64) fp32, k16, v16 (B, T, Hkv, 64) bf16 copies, lse, delta
// (B, H, T). Grid (⌈T/128⌉, H, B), 256 threads; warp w owns queries t0 + 16w .. + 15 and walks
// the forward's key tiles. Per tile: S = Q·Kᵀ, P = exp2(S − lse), dP = dO·Vᵀ,
// dS = P ∘ (dP − δ), dQ += bf16(dS)·K, with Q's and dO's A fragments read from shared memory as
// needed (version 3 held both: 32 registers). Adds scale·dQ into dq (sets it, when fresh_dq: the
// buffer is fresh), and writes the sum's bf16 copy to dq16 unless it is nullptr (for the q
// projection's backward GEMMs).
// Registers: ≤ 128 (2 blocks of 8 warps per SM); shared: 73,728 bytes (DqShared).
static __global__ void __launch_bounds__(window_v4::kQueryThreads, 2)
    window_dq_v4(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const float* slopes,
                 WindowShape s, float scale, const float* lse, const float* delta, const float* dout, float* dq,
                 __nv_bfloat16* dq16, bool fresh_dq) {
  using namespace window_v4;
  extern __shared__ __align__(16) unsigned char dq_shared_bytes[];
  DqShared& sh = *reinterpret_cast<DqShared*>(dq_shared_bytes);
  const int t0 = blockIdx.x * kQueries, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const FragmentLane at;
  const int first_tile = first_key_tile(t0, s.W), last_tile = last_key_tile(t0, kQueries, s);
  fetch_key_tile<kQueryThreads>(sh.kv, 0, k16, v16, s, b, first_tile, g);
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // Q and dO are read once per block: plain loads, rounded
    stage_bf16(sh.queries[half], [&](int r) { return window_mma::row_or_null(q, s, b, t0 + kTile * half + r, h, s.H); });
    stage_bf16(sh.douts[half], [&](int r) { return window_mma::row_or_null(dout, s, b, t0 + kTile * half + r, h, s.H); });
  }
  float row_lse[2], row_delta[2];  // this lane's two queries; lse in base 2
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
    row_lse[half] = t < s.T ? lse[stat] * kLog2e : 0.0f;
    row_delta[half] = t < s.T ? delta[stat] : 0.0f;
  }
  // Q and dO become visible at the loop's first barrier, before any warp reads them.
  const BfTile& my_queries = sh.queries[at.row0 / kTile];
  const BfTile& my_douts = sh.douts[at.row0 / kTile];
  const int my_row = at.row0 % kTile;
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + at.row0;
  Accumulator16x64 dq_acc;
  dq_acc.zero();
  for (int j0 = first_tile, i = 0; j0 <= last_tile; j0 += kTile, ++i) {
    const int stage = i & 1;
    next_tile_then_wait(j0 < last_tile,
                        [&] { fetch_key_tile<kQueryThreads>(sh.kv, stage ^ 1, k16, v16, s, b, j0 + kTile, g); });
    if (first_query < s.T && warp_sees_tile(first_query, j0, s.W)) {
      Accumulator16x64 p;  // S, then P
      p.zero();
      multiply_rows_by_transposed(p, my_queries, my_row, sh.kv.keys[stage]);
      if (query_strip_needs_mask(first_query, j0, s))
        query_row_scores<true>(p, at, score_factor, bias_factor, t0, j0, s);
      else
        query_row_scores<false>(p, at, score_factor, bias_factor, t0, j0, s);
      window_mma::probabilities_from_lse(p, at, [&](int u, int) { return row_lse[u / 2]; });
      Accumulator16x64 ds;  // dP, then dS
      ds.zero();
      multiply_rows_by_transposed(ds, my_douts, my_row, sh.kv.values[stage]);
      window_mma::score_gradients(ds, p, at, [&](int u, int) { return row_delta[u / 2]; });
      multiply_packed(dq_acc, ds, sh.kv.keys[stage]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    if (t >= s.T) continue;
    const long long row = ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float2* x = reinterpret_cast<float2*>(dq + row + at.col(j, 0));
      const float2 old = fresh_dq ? float2{} : *x;  // a fresh buffer holds nothing yet
      const float2 sum = make_float2(old.x + scale * dq_acc.c[j][2 * half], old.y + scale * dq_acc.c[j][2 * half + 1]);
      *x = sum;
      if (dq16 != nullptr)
        *reinterpret_cast<__nv_bfloat162*>(dq16 + row + at.col(j, 0)) = __floats2bfloat162_rn(sum.x, sum.y);
    }
  }
}

// dK and dV. Shapes: k, v, dk, dv (B, T, Hkv, 64) fp32, q16, dout16 (B, T, H, 64) bf16 copies,
// lse, delta (B, H, T). Grid (⌈T/64⌉, Hkv, B), 128 threads; warp w owns keys j0 + 16w .. + 15 of
// kv head g and walks, for every head of the group, the query tiles from the diagonal one to the
// one holding j0 + 63 + W: one flat sequence of (head, query tile) steps, pipelined through two
// stages of Q, dO, lse, δ. Per step, keys as rows (so bf16(Pᵀ), bf16(dSᵀ) are A operands):
// Sᵀ = K·Qᵀ, Pᵀ = exp2(Sᵀ − lse), dV += bf16(Pᵀ)·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − δ),
// dK += bf16(dSᵀ)·Q, with K's and V's A fragments read from shared memory as needed.
// Adds scale·dK into dk and dV into dv (either may be null), as versions 2 and 3 do, or sets
// those `fresh` names, with the sums' bf16 copies in dk16 and dv16 where those are not nullptr.
// Registers: ≤ 168 (3 blocks of 4 warps per SM; dK and dV alone take 64); shared: 56,320 bytes.
static __global__ void __launch_bounds__(window_v4::kKeyThreads, 3)
    window_dkv_v4(const float* k, const float* v, const __nv_bfloat16* q16, const __nv_bfloat16* dout16,
                  const float* slopes, WindowShape s, float scale, const float* lse, const float* delta, float* dk,
                  float* dv, __nv_bfloat16* dk16, __nv_bfloat16* dv16, FreshGradients fresh) {
  using namespace window_v4;
  extern __shared__ __align__(16) unsigned char dkv_shared_bytes[];
  DkvShared& sh = *reinterpret_cast<DkvShared*>(dkv_shared_bytes);
  const int j0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z;
  const FragmentLane at;
  const int last_tile = min(s.T - 1, j0 + kTile - 1 + s.W) / kTile * kTile;
  const int tiles_per_head = (last_tile - j0) / kTile + 1;
  const int steps = s.heads_per_kv * tiles_per_head;
  // Step i: head g·heads_per_kv + i / tiles_per_head, query tile j0 + 64·(i % tiles_per_head).
  auto head_of = [&](int i) { return g * s.heads_per_kv + i / tiles_per_head; };
  auto tile_of = [&](int i) { return j0 + kTile * (i % tiles_per_head); };
  auto fetch_step = [&](int i, int stage) {
    const int h = head_of(i), t0 = tile_of(i);
    const long long first_row = ((static_cast<long long>(b) * s.T + t0) * s.H + h) * kD;
    const long long row_stride = static_cast<long long>(s.H) * kD;
    stage_rows_async<kKeyThreads>(sh.queries[stage], q16 + first_row, row_stride, s.T - t0);
    stage_rows_async<kKeyThreads>(sh.douts[stage], dout16 + first_row, row_stride, s.T - t0);
    if (threadIdx.x < kTile) {
      const int t = t0 + threadIdx.x;
      const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
      if (t < s.T) {
        copy_async_4(&sh.lse[stage][threadIdx.x], lse + stat);
        copy_async_4(&sh.delta[stage][threadIdx.x], delta + stat);
      } else {  // padding queries: their scores are masked (P = 0); 0 keeps the arithmetic finite
        sh.lse[stage][threadIdx.x] = 0.0f;
        sh.delta[stage][threadIdx.x] = 0.0f;
      }
    }
    commit_async_copies();
  };
  fetch_step(0, 0);
  // K and V are read once per block: plain loads, rounded to bf16 (visible at the first barrier).
  stage_bf16(sh.keys, [&](int r) { return window_mma::row_or_null(k, s, b, j0 + r, g, s.Hkv); });
  stage_bf16(sh.values, [&](int r) { return window_mma::row_or_null(v, s, b, j0 + r, g, s.Hkv); });
  const float score_factor = scale * kLog2e;
  const int first_key = j0 + at.row0;
  Accumulator16x64 dk_acc, dv_acc;
  dk_acc.zero();
  dv_acc.zero();
  for (int i = 0; i < steps; ++i) {
    const int stage = i & 1;
    next_tile_then_wait(i + 1 < steps, [&] { fetch_step(i + 1, stage ^ 1); });
    const int h = head_of(i), t0 = tile_of(i);
    if (first_key < s.T && warp_keys_see_tile(first_key, t0, s.W)) {
      const float bias_factor = slopes[h] * kLog2e;
      Accumulator16x64 p;  // Sᵀ, then Pᵀ: rows keys, columns queries
      p.zero();
      multiply_rows_by_transposed(p, sh.keys, at.row0, sh.queries[stage]);
      if (key_strip_needs_mask(first_key, t0, s))
        key_row_scores<true>(p, at, score_factor, bias_factor, t0, j0, s);
      else
        key_row_scores<false>(p, at, score_factor, bias_factor, t0, j0, s);
      window_mma::probabilities_from_lse(p, at, [&](int, int c) { return sh.lse[stage][c] * kLog2e; });
      multiply_packed(dv_acc, p, sh.douts[stage]);
      Accumulator16x64 ds;  // dPᵀ, then dSᵀ
      ds.zero();
      multiply_rows_by_transposed(ds, sh.values, at.row0, sh.douts[stage]);
      window_mma::score_gradients(ds, p, at, [&](int, int c) { return sh.delta[stage][c]; });
      multiply_packed(dk_acc, ds, sh.queries[stage]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  // Every old value is loaded before anything is stored (none from a fresh buffer): the compiler
  // cannot tell dk from dv, so interleaved read-modify-writes would wait one memory latency each,
  // in sequence (as Nsight Compute found in GCA's key pass).
  const bool read_dk = dk && !fresh.dk, read_dv = dv && !fresh.dv;
  float2 old_dk[2][8], old_dv[2][8];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = j0 + at.row(2 * half);
    const long long key = ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * kD;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int c = at.col(jj, 0);
      old_dk[half][jj] = read_dk && j < s.T ? *reinterpret_cast<const float2*>(dk + key + c) : float2{};
      old_dv[half][jj] = read_dv && j < s.T ? *reinterpret_cast<const float2*>(dv + key + c) : float2{};
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = j0 + at.row(2 * half);
    if (j >= s.T) continue;
    const long long key = ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * kD;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int c = at.col(jj, 0);
      if (dk) {
        const float2 sum = make_float2(old_dk[half][jj].x + scale * dk_acc.c[jj][2 * half],
                                       old_dk[half][jj].y + scale * dk_acc.c[jj][2 * half + 1]);
        *reinterpret_cast<float2*>(dk + key + c) = sum;
        if (dk16 != nullptr) *reinterpret_cast<__nv_bfloat162*>(dk16 + key + c) = __floats2bfloat162_rn(sum.x, sum.y);
      }
      if (dv) {
        const float2 sum =
            make_float2(old_dv[half][jj].x + dv_acc.c[jj][2 * half], old_dv[half][jj].y + dv_acc.c[jj][2 * half + 1]);
        *reinterpret_cast<float2*>(dv + key + c) = sum;
        if (dv16 != nullptr) *reinterpret_cast<__nv_bfloat162*>(dv16 + key + c) = __floats2bfloat162_rn(sum.x, sum.y);
      }
    }
  }
}

namespace window_v4 {

// Host side: the launches, with the bf16 copies they read. All tensors fp32, contiguous, on the
// GPU, 16-byte aligned (window_attention_version checked it).

static inline dim3 query_grid(const WindowShape& s) {
  return dim3(static_cast<unsigned>((s.T + kQueries - 1) / kQueries), static_cast<unsigned>(s.H),
              static_cast<unsigned>(s.B));
}
static inline dim3 key_grid(const WindowShape& s) {
  return dim3(static_cast<unsigned>((s.T + kTile - 1) / kTile), static_cast<unsigned>(s.Hkv),
              static_cast<unsigned>(s.B));
}

// A forward kernel of version 4's signature (version 5's has it too).
using ForwardKernel = void (*)(const float*, const __nv_bfloat16*, const __nv_bfloat16*, const float*, WindowShape,
                               float, float*, float*, __nv_bfloat16*, __nv_bfloat16*);

// With `keep`, the bf16 copies of q (written by the kernel as it stages Q), k and v go there for
// the backward; without, k's and v's return to the allocator's cache after the launch (later work
// on the one stream is ordered after the kernel) and no copy of q is made. With out_rounded, out's
// bf16 copy is written too and returned there. `kernel`: window_forward_v4, or version 5's.
static inline void forward(const float* q, const float* k, const float* v, const float* slopes, const WindowShape& s,
                           float scale, float* out, float* lse, WindowAttentionBf16Copies* keep,
                           std::shared_ptr<void>* out_rounded = nullptr, ForwardKernel kernel = window_forward_v4) {
  const long long q_elements = static_cast<long long>(s.B) * s.T * s.H * kD;
  const long long kv_elements = static_cast<long long>(s.B) * s.T * s.Hkv * kD;
  const auto k16 = bf16_copy(k, kv_elements), v16 = bf16_copy(v, kv_elements);
  const std::shared_ptr<void> q16 =
      keep ? ::drt::cuda::detail::device_scratch(static_cast<std::size_t>(q_elements) * sizeof(__nv_bfloat16)) : nullptr;
  if (out_rounded != nullptr)
    *out_rounded = ::drt::cuda::detail::device_scratch(static_cast<std::size_t>(q_elements) * sizeof(__nv_bfloat16));
  kernel<<<query_grid(s), kQueryThreads, 0, ::drt::cuda::stream()>>>(
      q, as_bf16(k16), as_bf16(v16), slopes, s, scale, out, lse, static_cast<__nv_bfloat16*>(q16.get()),
      out_rounded != nullptr ? static_cast<__nv_bfloat16*>(out_rounded->get()) : nullptr);
  DRT_CUDA_CHECK_LAUNCH();
  if (keep) *keep = WindowAttentionBf16Copies{q16, k16, v16};
}

// δ (B, H, T) = ⟨dO, O⟩ per query into delta, then the gradients, added into dq, dk, dv (each may
// be null) or set where `fresh` says they are fresh.
// The bf16 copies of q, k, v come from `saved` (the forward's) where it holds them, else from a
// rounding pass here; dO's is written by the δ kernel, and only when dK/dV will read it. With
// `gradient_copies`, the bf16 copies of dq, dk, dv as written (those that are not null) go there.
static inline void backward(const float* q, const float* k, const float* v, const float* slopes, const WindowShape& s,
                            float scale, const float* out, const float* lse, float* delta, const float* dout, float* dq,
                            float* dk, float* dv, const WindowAttentionBf16Copies* saved, FreshGradients fresh,
                            WindowAttentionBf16Copies* gradient_copies = nullptr) {
  const long long q_elements = static_cast<long long>(s.B) * s.T * s.H * kD;
  const long long kv_elements = static_cast<long long>(s.B) * s.T * s.Hkv * kD;
  auto scratch = [](long long elements) {
    return ::drt::cuda::detail::device_scratch(static_cast<std::size_t>(elements) * sizeof(__nv_bfloat16));
  };
  const std::shared_ptr<void> dout16 = dk || dv ? scratch(q_elements) : nullptr;
  WindowAttentionBf16Copies written;  // the gradients' copies, when asked for
  if (gradient_copies != nullptr) {
    if (dq) written.q = scratch(q_elements);
    if (dk) written.k = scratch(kv_elements);
    if (dv) written.v = scratch(kv_elements);
  }
  window_delta_kernel<float><<<warp_grid(static_cast<long long>(s.B) * s.T * s.H), kWarpBlockThreads, 0,
                               ::drt::cuda::stream()>>>(out, dout, s, delta, static_cast<__nv_bfloat16*>(dout16.get()));
  DRT_CUDA_CHECK_LAUNCH();
  if (dq) {
    constexpr int bytes = int(sizeof(DqShared));
    // Set on every call: cheap, and it holds for whichever device is current.
    DRT_CUDA_CHECK(cudaFuncSetAttribute(window_dq_v4, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    const auto k16 = saved && saved->k ? saved->k : bf16_copy(k, kv_elements);
    const auto v16 = saved && saved->v ? saved->v : bf16_copy(v, kv_elements);
    window_dq_v4<<<query_grid(s), kQueryThreads, bytes, ::drt::cuda::stream()>>>(
        q, as_bf16(k16), as_bf16(v16), slopes, s, scale, lse, delta, dout, dq,
        static_cast<__nv_bfloat16*>(written.q.get()), fresh.dq);
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (dk || dv) {
    constexpr int bytes = int(sizeof(DkvShared));
    DRT_CUDA_CHECK(cudaFuncSetAttribute(window_dkv_v4, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    const auto q16 = saved && saved->q ? saved->q : bf16_copy(q, q_elements);
    window_dkv_v4<<<key_grid(s), kKeyThreads, bytes, ::drt::cuda::stream()>>>(
        k, v, as_bf16(q16), as_bf16(dout16), slopes, s, scale, lse, delta, dk, dv,
        static_cast<__nv_bfloat16*>(written.k.get()), static_cast<__nv_bfloat16*>(written.v.get()), fresh);
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (gradient_copies != nullptr) *gradient_copies = std::move(written);
}

}  // namespace window_v4
}  // namespace drt::cuda::attention
