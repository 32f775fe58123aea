// drt/cuda/attention/window_attention_v5.cuh — version 5 of sliding-window ALiBi attention's
// forward on the GPU: version 4's forward with its two products on Hopper's warpgroup MMA
// (wgmma.cuh). Included by window_attention.cuh after version 4, whose helpers (scores, masks,
// tile walk) it reuses; not meant to be included on its own. The backward of a version-5 call is
// version 4's, reading the bf16 copies this forward keeps.
//
// Same math, numerics and block geometry as version 4's forward: 128 queries per block, warp w
// owning queries t0 + 16w .. + 15 with its Q held as A fragments, 64-key tiles in two cp.async
// stages, base-2 scores with the mask only where a warp's strip needs it, online softmax,
// O += bf16(P)·V. What changes:
//   - the block is two warpgroups (queries t0.. and t0 + 64..), and each issues S = Q·Kᵀ and
//     O += P·V as four wgmma k-steps for its 64 rows: each K or V tile is read from shared memory
//     once per warpgroup instead of once per warp (version 4's ldmatrix traffic: 8 warps × 16 KB
//     per tile pair);
//   - a warpgroup works on a tile when any of its warps meets it (wgmma needs all four); a warp
//     that does not meet it gets only masked scores, which the online softmax turns into zeros;
//   - the stages are SwizzledTiles, and Q's A fragments (and the backward's bf16 copy of q) come
//     straight from global memory (load_a_rows_global).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/wgmma.cuh"

namespace drt::cuda::attention {
namespace window_v5 {

using window_v4::kQueries;       // 128 queries per block
using window_v4::kQueryThreads;  // two warpgroups
using window_mma::kD;
using window_mma::kTile;

// K and V tiles, twice (stage i % 2 holds key tile i of the walk): 4 × 8 KB.
struct KeyValueStages {
  wgmma::SwizzledTile keys[2], values[2];
};

// Starts copying key tile j0 (K and V rows j0..j0+63 of kv head g, zeros past T) into `stage`.
__device__ inline void fetch_key_tile(KeyValueStages& kv, int stage, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                      const WindowShape& s, int b, int j0, int g) {
  const long long first_row = ((static_cast<long long>(b) * s.T + j0) * s.Hkv + g) * kD;
  const long long row_stride = static_cast<long long>(s.Hkv) * kD;
  wgmma::stage_rows_swizzled_async<kQueryThreads>(kv.keys[stage], k + first_row, row_stride, s.T - j0);
  wgmma::stage_rows_swizzled_async<kQueryThreads>(kv.values[stage], v + first_row, row_stride, s.T - j0);
  mma::commit_async_copies();
}

}  // namespace window_v5

// Forward. Shapes and outputs as version 4's (window_forward_v4): q (B, T, H, 64) fp32, k16, v16
// (B, T, Hkv, 64) bf16, out (B, T, H, 64), lse (B, H, T); q16 (nullable) receives bf16(q) for
// the backward, out16 (nullable) bf16(out). Grid (⌈T/128⌉, H, B), 256 threads (2 warpgroups).
// Shared: 32,768 bytes.
static __global__ void __launch_bounds__(window_v5::kQueryThreads, 2)
    window_forward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const float* slopes,
                      WindowShape s, float scale, float* out, float* lse, __nv_bfloat16* q16, __nv_bfloat16* out16) {
#if defined(DRT_WGMMA_DEVICE)
  using namespace window_v5;
  using namespace mma;
  __shared__ KeyValueStages kv;
  const int t0 = blockIdx.x * kQueries, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const FragmentLane at;  // at.row0 = 16·warp, 0..112: rows of the 128-query block
  const int first_tile = window_mma::first_key_tile(t0, s.W), last_tile = window_v4::last_key_tile(t0, kQueries, s);
  window_v5::fetch_key_tile(kv, 0, k16, v16, s, b, first_tile, g);
  std::uint32_t qa[4][4];  // this warp's 16 queries, for every key tile
  {
    const int top = t0 + at.row(0), bottom = t0 + at.row(2);
    auto row = [&](int t) { return ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD; };
    const bool keep = q16 != nullptr;
    load_a_rows_global(qa, top < s.T ? q + row(top) : nullptr, bottom < s.T ? q + row(bottom) : nullptr, at.pair,
                       keep && top < s.T ? q16 + row(top) : nullptr, keep && bottom < s.T ? q16 + row(bottom) : nullptr);
  }
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + at.row0;
  const int group_first_query = t0 + at.row0 / 64 * 64;  // this warpgroup's 64 queries
  window_mma::OnlineSoftmax16 softmax;
  Accumulator16x64 o;
  o.zero();
  for (int j0 = first_tile, i = 0; j0 <= last_tile; j0 += kTile, ++i) {
    const int stage = i & 1;
    if (j0 < last_tile) {
      window_v5::fetch_key_tile(kv, stage ^ 1, k16, v16, s, b, j0 + kTile, g);
      wait_async_copies_but<1>();
    } else {
      wait_async_copies_but<0>();
    }
    wgmma::fence_shared_for_wgmma();
    __syncthreads();
    // The warpgroup meets the tile if its first or last warp does (the band is convex).
    const bool group_meets = group_first_query < s.T && (window_mma::warp_sees_tile(group_first_query, j0, s.W) ||
                                                         window_mma::warp_sees_tile(group_first_query + 48, j0, s.W));
    if (group_meets) {
      Accumulator16x64 scores;
      wgmma::fence();
      wgmma::multiply_by_transposed_async(scores, qa, kv.keys[stage], /*accumulate=*/false);
      wgmma::wait<0>();
      wgmma::hold(scores);
      wgmma::hold(qa);
      if (first_query >= s.T || !window_mma::warp_sees_tile(first_query, j0, s.W) ||
          window_v4::query_strip_needs_mask(first_query, j0, s))
        window_v4::query_row_scores<true>(scores, at, score_factor, bias_factor, t0, j0, s);
      else
        window_v4::query_row_scores<false>(scores, at, score_factor, bias_factor, t0, j0, s);
      softmax.add_tile(scores, o);
      std::uint32_t pa[4][4];
      a_fragments(pa, scores);
      wgmma::fence();
      wgmma::multiply_accumulate_async(o, pa, kv.values[stage]);
      wgmma::wait<0>();
      wgmma::hold(o);
      wgmma::hold(pa);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled (tile i + 2)
  }
  window_v4::write_query_rows(o, softmax, at, t0, b, h, s, out, lse, out16);
#endif
}

}  // namespace drt::cuda::attention
