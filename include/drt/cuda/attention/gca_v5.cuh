// drt/cuda/attention/gca_v5.cuh — version 5 of Grouped Cross-Attention's forward on the GPU:
// version 4's forward with its two products on Hopper's warpgroup MMA (wgmma.cuh) instead of
// mma.sync. Included by gca.cuh after version 4, whose slot table and shapes it reuses; not meant
// to be included on its own. The backward of a version-5 call is version 4's.
//
// Shapes (as every GCA version): q (Z, H, 64, 64) fp32; k16, v16 (B, E, 64, Hkv, 64) bf16 copies
// of the chunk memory; index, weight (Z, Kc); out (Z, H, 64, 64); lse (Z, H, Kc, 64).
//
// Same math and numerics as version 4's forward (bf16 products, fp32 accumulators and softmax in
// base 2, P·w/Σ rounded to bf16 before P·V): the block of (z, h) is one warpgroup whose warp w
// owns queries 16w..16w+15, its Q held as A fragments. What changes:
//   - S = Q·Kᵀ and out += P·V are each four wgmma k-steps (m64n64k16) for the whole 64-row tile,
//     B read by the hardware straight from shared memory: no ldmatrix, and each K or V tile is read
//     once per block instead of once per warp;
//   - the chunk stages are SwizzledTiles (the layout wgmma reads), filled by cp.async as before;
//   - Q's A fragments come straight from global memory (fp32 rounded in registers,
//     load_a_rows_global): no Q tile in shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/wgmma.cuh"

namespace drt::cuda::attention {
namespace gca_v5 {

using gca_mma::kSize;
using gca_mma::kThreads;  // one warpgroup
using gca_v4::FilledSlots;
static_assert(kThreads == wgmma::kWarpgroupThreads, "a GCA block is one warpgroup");

// Two stages of one chunk's K and V (4 × 8 KB, each tile on a 1 KB atom) and the slot table.
struct ForwardShared {
  wgmma::SwizzledTile keys[2], values[2];
  FilledSlots filled;
};

// Starts copying chunk e of sequence b, kv head g (64 rows, Hkv rows apart) into `stage`.
__device__ inline void fetch_chunk(ForwardShared& sh, int stage, const __nv_bfloat16* k16, const __nv_bfloat16* v16,
                                   const GcaShape& s, int b, int e, int g) {
  const long long first_row = gca_key_row(s, b, e, 0, g) * kSize, row_stride = static_cast<long long>(s.Hkv) * kSize;
  wgmma::stage_rows_swizzled_async<kThreads>(sh.keys[stage], k16 + first_row, row_stride);
  wgmma::stage_rows_swizzled_async<kThreads>(sh.values[stage], v16 + first_row, row_stride);
  mma::commit_async_copies();
}

}  // namespace gca_v5

// Forward. Grid (Z, H), 128 threads (one warpgroup). Per filled slot i (weight w), as version 4:
//   S = Q·Kᵀ (wgmma), x = log2(e)·scale·S, P = exp2(x − max), out += bf16(P·w/Σ_n P)·V (wgmma),
//   lse_i = ln2·max + ln Σ_n P;  skipped slots get lse = −inf and no work.
// Chunk i + 1 is copied into the other stage while chunk i is multiplied. Shared: 33,792 bytes
// (the stages, then the slot table, padded to the next atom).
static __global__ void __launch_bounds__(gca_v5::kThreads, 4)
    gca_forward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const std::int32_t* index,
                   const float* weight, GcaShape s, float scale, float* out, float* lse) {
#if defined(DRT_WGMMA_DEVICE)
  using namespace gca_v5;
  using namespace mma;
  __shared__ ForwardShared sh;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // lse of slot 0
  const int first = gca_mma::next_filled_slot(index, weight, z, s.Kc, 0);
  if (first < s.Kc) fetch_chunk(sh, 0, k16, v16, s, b, index[z * s.Kc + first], kv);
  gca_v4::collect_filled_slots(sh.filled, index, weight, z, s.Kc);
  std::uint32_t qa[4][4];  // this warp's 16 queries as A fragments, for every chunk
  const float* my_rows = q + (first_query + at.row0 + at.group) * kSize;
  load_a_rows_global(qa, my_rows, my_rows + 8 * kSize, at.pair);
  for (int slot = 0; slot < s.Kc; ++slot)  // skipped, as on the CPU: −inf marks them for the backward
    if (threadIdx.x < kSize && gca_mma::slot_skipped(index, weight, z, s.Kc, slot))
      lse[first_stat + slot * kSize + threadIdx.x] = -INFINITY;
  __syncthreads();  // the slot table
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 total;
  total.zero();
  const int count = sh.filled.count;
  for (int n = 0; n < count; ++n) {
    const int stage = n & 1;
    if (n + 1 < count) {
      fetch_chunk(sh, stage ^ 1, k16, v16, s, b, sh.filled.chunk[n + 1], kv);
      wait_async_copies_but<1>();
    } else {
      wait_async_copies_but<0>();
    }
    wgmma::fence_shared_for_wgmma();  // this thread's copies and zeros, for the wgmmas
    __syncthreads();                  // everyone's
    const int i = sh.filled.slot[n];
    const float w = sh.filled.weight[n];
    Accumulator16x64 p;  // S, then P·w/Σ
    wgmma::fence();
    wgmma::multiply_by_transposed_async(p, qa, sh.keys[stage], /*accumulate=*/false);
    wgmma::wait<0>();
    wgmma::hold(p);
    wgmma::hold(qa);
    float row_lse[2];
    gca_v4::weighted_chunk_softmax(p, to_log2, w, row_lse);
    std::uint32_t pa[4][4];  // bf16(P·w/Σ) as A fragments
    a_fragments(pa, p);
    wgmma::fence();
    wgmma::multiply_accumulate_async(total, pa, sh.values[stage]);
    if (at.pair == 0) {  // while the product runs
      float* lse_slot = lse + first_stat + i * kSize;
      lse_slot[at.row(0)] = row_lse[0];
      lse_slot[at.row(2)] = row_lse[1];
    }
    wgmma::wait<0>();
    wgmma::hold(total);
    wgmma::hold(pa);
    __syncthreads();  // every warp is done with this stage before it is refilled (chunk after next)
  }
  float* out_rows = out + first_query * kSize;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<float2*>(out_rows + at.row(2 * half) * kSize + at.col(j, 0)) =
          make_float2(total.c[j][2 * half], total.c[j][2 * half + 1]);
#endif
}

}  // namespace drt::cuda::attention
