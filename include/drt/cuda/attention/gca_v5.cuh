// drt/cuda/attention/gca_v5.cuh — version 5 of Grouped Cross-Attention on the GPU: the forward and
// the backward's query-major pass with 32 queries per warp. Included by gca.cuh after version 4,
// whose helpers (chunk stages, block starts, per-chunk softmax and gradients, launches) it
// reuses; not meant to be included on its own. The key-major pass (dK/dV) is version 4's.
//
// Shapes (as every GCA version): q (Z, H, 64, 64) fp32; k16, v16 (B, E, 64, Hkv, 64) bf16 copies
// of the chunk memory; index, weight (Z, Kc); out (Z, H, 64, 64); lse (Z, H, Kc, 64).
//
// Same math, roundings and numerics as version 4 (bf16 mma.sync with fp32 accumulators; per
// chunk, P·w/Σ_n P is rounded to bf16 before P·V). What changes is the work of one warp. In
// version 4 a warp owns 16 queries, and every chunk it multiplies costs it a whole K and V tile
// of ldmatrix reads (16 KB) for 64 tensor-core instructions: one 512-byte shared-memory read per
// two mma, which keeps the shared-memory pipe, not the tensor cores, the busiest. Here a block of
// two warps takes the 64 queries of (z, h), 32 per warp as two 16-row m-tiles, and each K or V
// fragment a warp loads feeds both (mma.cuh's multiply_pair_*): half the shared-memory reads per
// product, and half the warps per chunk waiting at its barriers. The price is registers (two
// m-tiles of S and of the output, and Q for both): ≤ 204 under a hint of 5 blocks (10 warps) per
// SM, against version 4's 20 warps of ≤ 102.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/bf16.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::attention {
namespace gca_v5 {

inline constexpr int kWarps = 2;  // warp w owns queries 32w..32w+31 of the (z, h) block
inline constexpr int kThreads = kWarps * kWarp;
inline constexpr int kRowsPerWarp = 32;

}  // namespace gca_v5

// Forward. Grid (Z, H), 64 threads (2 warps): warp w computes queries 32w..32w+31 of (z, h) over
// the Kc retrieved chunks, as two m-tiles whose Q it holds as A fragments. Per filled slot i
// (weight w), in registers, for each m-tile: S = Q·Kᵀ, P·w/Σ_n P (weighted_chunk_probabilities),
// out += bf16(P·w/Σ)·V, lse_i = ln2·max + ln Σ_n P. Skipped slots get lse = −inf and no work.
// Chunk i + 1 is copied (cp.async) into the other stage while chunk i is multiplied, as in
// version 4. Shared: 36,864 bytes (the two stages).
static __global__ void __launch_bounds__(gca_v5::kThreads, 4)
    gca_forward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const std::int32_t* index,
                   const float* weight, GcaShape s, float scale, float* out, float* lse) {
  using namespace gca_v4;
  __shared__ ChunkBuffers chunks;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const int warp_row0 = threadIdx.x / kWarp * gca_v5::kRowsPerWarp;
  const FragmentLane at[2] = {FragmentLane(warp_row0), FragmentLane(warp_row0 + 16)};
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // lse of slot 0
  int i = start_forward_block(chunks, q, k16, v16, index, weight, s, z, h, lse);
  std::uint32_t qa[2][4][4];  // this warp's two m-tiles of queries as A fragments, for every chunk
  load_a_rows(qa[0], chunks.keys[1], at[0].row0);
  load_a_rows(qa[1], chunks.keys[1], at[1].row0);
  __syncthreads();  // every warp has its Q: stage 1 may now receive the second chunk
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 total[2];
  total[0].zero();
  total[1].zero();
  for (int stage = 0; i < s.Kc; stage ^= 1) {
    const int next = next_filled_slot(index, weight, z, s.Kc, i + 1);
    next_tile_then_wait(next < s.Kc,
                        [&] { fetch_chunk(chunks, stage ^ 1, k16, v16, s, b, index[z * s.Kc + next], kv); });
    const float w = weight[z * s.Kc + i];
    Accumulator16x64 p[2];  // S, then P·w/Σ, per m-tile
    p[0].zero();
    p[1].zero();
    multiply_pair_by_transposed(p, qa, chunks.keys[stage]);
    float row_lse[2][2];
    weighted_chunk_probabilities(p[0], to_log2, w, row_lse[0]);
    weighted_chunk_probabilities(p[1], to_log2, w, row_lse[1]);
    multiply_pair_packed(total, p, chunks.values[stage]);
    if (at[0].pair == 0) {
      float* lse_slot = lse + first_stat + i * kSize;
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        lse_slot[at[m].row(0)] = row_lse[m][0];
        lse_slot[at[m].row(2)] = row_lse[m][1];
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled (chunk after next)
    i = next;
  }
  store_rows(out + first_query * kSize, total[0], at[0]);
  store_rows(out + first_query * kSize, total[1], at[1]);
}

// Backward pass 1 (query-major: δ, dW, dQ). Grid (Z, H), 64 threads; warp w owns queries
// 32w..32w+31 of (z, h) as two m-tiles. Per filled slot, for both m-tiles with each K or V
// fragment loaded once: P = exp2(log2(e)·(scale·Q Kᵀ − lse)), dP = dO Vᵀ, δ = Σ_n P dP (to delta,
// for pass 2), dW[z, i] += the warp's Σ δ (one atomic per warp and slot), dS = w P (dP − δ),
// dQ += bf16(dS) K. Then dq += scale·dQ. As gca_query_backward_v4 otherwise (q16, dout16 for pass 2,
// skipped slots, null dq or dweight). Shared: 55,296 bytes (gca_v4::QueryShared).
static __global__ void __launch_bounds__(gca_v5::kThreads, 4)
    gca_query_backward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16,
                          const std::int32_t* index, const float* weight, GcaShape s, float scale, const float* lse,
                          const float* dout, float* delta, float* dq, float* dweight, __nv_bfloat16* q16,
                          __nv_bfloat16* dout16) {
  using namespace gca_v4;
  extern __shared__ __align__(16) unsigned char gca_query_v5_shared_bytes[];
  QueryShared& sh = *reinterpret_cast<QueryShared*>(gca_query_v5_shared_bytes);
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const int warp_row0 = threadIdx.x / kWarp * gca_v5::kRowsPerWarp;
  const FragmentLane at[2] = {FragmentLane(warp_row0), FragmentLane(warp_row0 + 16)};
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // δ of slot 0
  int i = start_query_backward_block(sh, q, dout, k16, v16, index, weight, s, z, h, delta, q16, dout16);
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 dq_acc[2];
  dq_acc[0].zero();
  dq_acc[1].zero();
  for (int stage = 0; i < s.Kc; stage ^= 1) {
    const int next = next_filled_slot(index, weight, z, s.Kc, i + 1);
    // Its barrier also publishes Q and dO on the first chunk.
    next_tile_then_wait(next < s.Kc,
                        [&] { fetch_chunk(sh.chunks, stage ^ 1, k16, v16, s, b, index[z * s.Kc + next], kv); });
    const BfTile &keys = sh.chunks.keys[stage], &values = sh.chunks.values[stage];
    const float w = weight[z * s.Kc + i];
    const long long stat = first_stat + i * kSize;
    Accumulator16x64 p[2];  // S, then P
    p[0].zero();
    p[1].zero();
    multiply_pair_rows_by_transposed(p, sh.queries, warp_row0, keys);
    Accumulator16x64 ds[2];  // dP, then dS
    ds[0].zero();
    ds[1].zero();
    multiply_pair_rows_by_transposed(ds, sh.douts, warp_row0, values);
    float warp_delta = 0.0f;  // Σ δ over the lane's rows, counted once per row (pair-0 lanes)
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const float lse_log2[2] = {lse[stat + at[m].row(0)] * kLog2e, lse[stat + at[m].row(2)] * kLog2e};
      float slot_delta[2];
      chunk_score_gradients(p[m], ds[m], to_log2, lse_log2, w, dq != nullptr, slot_delta);
      if (at[m].pair == 0) {
        delta[stat + at[m].row(0)] = slot_delta[0];
        delta[stat + at[m].row(2)] = slot_delta[1];
        warp_delta += slot_delta[0] + slot_delta[1];
      }
    }
    if (dweight) {
      const float rows = warp_total(warp_delta);
      if (threadIdx.x % kWarp == 0) atomicAdd(dweight + z * s.Kc + i, rows);
    }
    if (dq) multiply_pair_packed(dq_acc, ds, keys);
    __syncthreads();  // every warp is done with this stage before it is refilled
    i = next;
  }
  if (!dq) return;
  add_rows(dq + first_query * kSize, dq_acc[0], at[0], scale);
  add_rows(dq + first_query * kSize, dq_acc[1], at[1], scale);
}

namespace gca_v5 {

// Host side: as gca_v4::forward, with the version-5 kernel. All tensors fp32, contiguous, on the
// GPU, 16-byte aligned (gca_version checked it), M = N = d = 64.
static inline void forward(const float* q, const float* k, const float* v, const std::int32_t* index,
                           const float* weight, const GcaShape& s, float scale, float* out, float* lse) {
  const long long memory = static_cast<long long>(s.B) * s.E * s.N * s.Hkv * gca_mma::kSize;
  const auto k16 = bf16_operand(k, memory), v16 = bf16_operand(v, memory);
  gca_forward_v5<<<dim3(unsigned(s.Z), unsigned(s.H)), kThreads, 0, ::drt::cuda::stream()>>>(
      q, as_bf16(k16), as_bf16(v16), index, weight, s, scale, out, lse);
  DRT_CUDA_CHECK_LAUNCH();
}

// As gca_v4::backward, with this version's pass 1 (pass 2, dK/dV, is version 4's).
static inline void backward(const float* q, const float* k, const float* v, const std::int32_t* index,
                            const float* weight, const GcaShape& s, float scale, const float* lse, const float* dout,
                            float* delta, float* dq, float* dk, float* dv, float* dweight) {
  gca_v4::backward_with(gca_query_backward_v5, kThreads, q, k, v, index, weight, s, scale, lse, dout, delta, dq, dk,
                        dv, dweight);
}

}  // namespace gca_v5
}  // namespace drt::cuda::attention
