// drt/cuda/attention/window_attention_v5.cuh — version 5 of sliding-window ALiBi attention on the
// GPU: the forward and dQ with 32 queries per warp. Included by window_attention.cuh after
// version 4, whose helpers (stages, masks, staging, epilogues, launches) it reuses; not meant to
// be included on its own. dK/dV and δ of a version-5 call are version 4's.
//
// Same math, roundings, block geometry (128 queries, key tiles from t0 − W to the diagonal) and
// copies for the backward as version 4's forward and dQ. What changes is the work of one warp:
// version 4 has 8 warps of 16 queries, each reading the whole K and V tile from shared memory
// (16 KB of ldmatrix for 64 tensor-core instructions in the forward), so the shared-memory pipe,
// not the tensor cores, bounds the loop. Here 4 warps own 32 queries each, as two 16-row m-tiles
// that share every K and V fragment (mma.cuh's multiply_pair_*): half the shared-memory reads of
// K and V per product, and half the warps at each tile's barriers. The price is registers (two
// m-tiles of every accumulator): 227 (forward) and 255 (dQ), no spill, 2 blocks of 4 warps per SM.
// A warp whose 32 queries see a tile computes both m-tiles; an m-tile that does not see it gets
// only masked scores (−∞) and adds nothing (window_mma::OnlineSoftmax16 keeps such rows exact).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::attention {
namespace window_v5 {

inline constexpr int kWarps = 4;  // warp w owns queries t0 + 32w .. t0 + 32w + 31
inline constexpr int kThreads = kWarps * kWarp;
inline constexpr int kRowsPerWarp = 32;
static_assert(kWarps * kRowsPerWarp == window_v4::kQueries, "version 5 keeps version 4's 128-query blocks");

// Whether a warp's 32 queries first_query.. see key tile j0 at all.
__device__ inline bool warp_pair_sees_tile(int first_query, int j0, int window) {
  return j0 <= first_query + kRowsPerWarp - 1 && j0 + window_mma::kTile - 1 >= first_query - window;
}

}  // namespace window_v5

// Forward. Shapes and outputs as window_forward_v4 (q16 and out16 included). Grid (⌈T/128⌉, H, B),
// 128 threads (4 warps); warp w owns queries t0 + 32w .. t0 + 32w + 31 as two m-tiles, held as A
// fragments. Per key tile, for each m-tile: S = Q·Kᵀ, base-2 scores (the mask only where that
// m-tile's strip needs it), online softmax; then O += bf16(P)·V for both m-tiles, each V fragment
// loaded once. Shared: 36,864 bytes (the two K/V stages).
static __global__ void __launch_bounds__(window_v5::kThreads, 2)
    window_forward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const float* slopes,
                      WindowShape s, float scale, float* out, float* lse, __nv_bfloat16* q16, __nv_bfloat16* out16) {
  using namespace window_v4;
  __shared__ KeyValueStages kv;
  const int t0 = blockIdx.x * kQueries, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int warp_row0 = threadIdx.x / kWarp * window_v5::kRowsPerWarp;  // 0, 32, 64, 96
  const FragmentLane at[2] = {FragmentLane(warp_row0), FragmentLane(warp_row0 + 16)};
  const int first_tile = first_key_tile(t0, s.W), last_tile = last_key_tile(t0, kQueries, s);
  fetch_key_tile(kv, 0, k16, v16, s, b, first_tile, g);  // flies while Q is staged
  stage_queries_and_keep(kv, q, s, b, t0, h, q16);
  std::uint32_t qa[2][4][4];  // this warp's two m-tiles of queries, for every key tile
#pragma unroll
  for (int m = 0; m < 2; ++m) load_a_rows(qa[m], at[m].row0 < kTile ? kv.keys[1] : kv.values[1], at[m].row0 % kTile);
  __syncthreads();  // every warp has its Q: stage 1 may now receive key tile 1
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + warp_row0;
  OnlineSoftmax16 softmax[2];
  Accumulator16x64 o[2];
  o[0].zero();
  o[1].zero();
  for (int j0 = first_tile, i = 0; j0 <= last_tile; j0 += kTile, ++i) {
    const int stage = i & 1;
    next_tile_then_wait(j0 < last_tile, [&] { fetch_key_tile(kv, stage ^ 1, k16, v16, s, b, j0 + kTile, g); });
    if (first_query < s.T && window_v5::warp_pair_sees_tile(first_query, j0, s.W)) {
      Accumulator16x64 scores[2];
      scores[0].zero();
      scores[1].zero();
      multiply_pair_by_transposed(scores, qa, kv.keys[stage]);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        if (query_strip_needs_mask(first_query + 16 * m, j0, s))
          query_row_scores<true>(scores[m], at[m], score_factor, bias_factor, t0, j0, s);
        else
          query_row_scores<false>(scores[m], at[m], score_factor, bias_factor, t0, j0, s);
        softmax[m].add_tile(scores[m], o[m]);
      }
      multiply_pair_packed(o, scores, kv.values[stage]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled (tile i + 2)
  }
  store_query_rows(o[0], softmax[0], at[0], t0, b, h, s, out, lse, out16);
  store_query_rows(o[1], softmax[1], at[1], t0, b, h, s, out, lse, out16);
}

// dQ. Shapes and outputs as window_dq_v4 (dq16 included). Grid (⌈T/128⌉, H, B), 128 threads;
// warp w owns queries t0 + 32w .. + 31 as two m-tiles and walks the forward's key tiles. Per tile,
// for both m-tiles with each K or V fragment loaded once: S = Q·Kᵀ, P = exp2(S − lse),
// dP = dO·Vᵀ, dS = P ∘ (dP − δ), dQ += bf16(dS)·K; Q's and dO's A fragments come from shared
// memory where used. Shared: 73,728 bytes (window_v4::DqShared).
static __global__ void __launch_bounds__(window_v5::kThreads, 2)
    window_dq_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const float* slopes,
                 WindowShape s, float scale, const float* lse, const float* delta, const float* dout, float* dq,
                 __nv_bfloat16* dq16) {
  using namespace window_v4;
  extern __shared__ __align__(16) unsigned char dq_v5_shared_bytes[];
  DqShared& sh = *reinterpret_cast<DqShared*>(dq_v5_shared_bytes);
  const int t0 = blockIdx.x * kQueries, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int warp_row0 = threadIdx.x / kWarp * window_v5::kRowsPerWarp;
  const FragmentLane at[2] = {FragmentLane(warp_row0), FragmentLane(warp_row0 + 16)};
  const int first_tile = first_key_tile(t0, s.W), last_tile = last_key_tile(t0, kQueries, s);
  fetch_key_tile(sh.kv, 0, k16, v16, s, b, first_tile, g);
  stage_queries_and_douts(sh, q, dout, s, b, t0, h);  // visible at the loop's first barrier
  float row_lse[2][2], row_delta[2][2];  // per m-tile, this lane's two queries; lse in base 2
  load_row_statistics(row_lse[0], row_delta[0], at[0], lse, delta, s, b, t0, h);
  load_row_statistics(row_lse[1], row_delta[1], at[1], lse, delta, s, b, t0, h);
  const BfTile& my_queries = sh.queries[warp_row0 / kTile];  // both m-tiles lie in one 64-row tile
  const BfTile& my_douts = sh.douts[warp_row0 / kTile];
  const int my_row = warp_row0 % kTile;
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + warp_row0;
  Accumulator16x64 dq_acc[2];
  dq_acc[0].zero();
  dq_acc[1].zero();
  for (int j0 = first_tile, i = 0; j0 <= last_tile; j0 += kTile, ++i) {
    const int stage = i & 1;
    next_tile_then_wait(j0 < last_tile, [&] { fetch_key_tile(sh.kv, stage ^ 1, k16, v16, s, b, j0 + kTile, g); });
    if (first_query < s.T && window_v5::warp_pair_sees_tile(first_query, j0, s.W)) {
      Accumulator16x64 p[2];  // S, then P
      p[0].zero();
      p[1].zero();
      multiply_pair_rows_by_transposed(p, my_queries, my_row, sh.kv.keys[stage]);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        if (query_strip_needs_mask(first_query + 16 * m, j0, s))
          query_row_scores<true>(p[m], at[m], score_factor, bias_factor, t0, j0, s);
        else
          query_row_scores<false>(p[m], at[m], score_factor, bias_factor, t0, j0, s);
        window_mma::probabilities_from_lse(p[m], at[m], [&](int u, int) { return row_lse[m][u / 2]; });
      }
      Accumulator16x64 ds[2];  // dP, then dS
      ds[0].zero();
      ds[1].zero();
      multiply_pair_rows_by_transposed(ds, my_douts, my_row, sh.kv.values[stage]);
#pragma unroll
      for (int m = 0; m < 2; ++m)
        window_mma::score_gradients(ds[m], p[m], at[m], [&](int u, int) { return row_delta[m][u / 2]; });
      multiply_pair_packed(dq_acc, ds, sh.kv.keys[stage]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  add_query_gradient_rows(dq_acc[0], at[0], t0, b, h, s, scale, dq, dq16);
  add_query_gradient_rows(dq_acc[1], at[1], t0, b, h, s, scale, dq, dq16);
}

namespace window_v5 {

// Host side: as window_v4::forward (the same copies kept for the backward), with this kernel.
static inline void forward(const float* q, const float* k, const float* v, const float* slopes, const WindowShape& s,
                           float scale, float* out, float* lse, WindowAttentionBf16Copies* keep,
                           std::shared_ptr<void>* out_rounded = nullptr) {
  window_v4::forward_with(window_forward_v5, kThreads, q, k, v, slopes, s, scale, out, lse, keep, out_rounded);
}

// As window_v4::backward, with this version's dQ kernel (dK/dV and δ are version 4's).
static inline void backward(const float* q, const float* k, const float* v, const float* slopes, const WindowShape& s,
                            float scale, const float* out, const float* lse, float* delta, const float* dout, float* dq,
                            float* dk, float* dv, const WindowAttentionBf16Copies* saved,
                            WindowAttentionBf16Copies* gradient_copies = nullptr) {
  window_v4::backward_with(window_dq_v5, kThreads, q, k, v, slopes, s, scale, out, lse, delta, dout, dq, dk, dv,
                           saved, gradient_copies);
}

}  // namespace window_v5
}  // namespace drt::cuda::attention
