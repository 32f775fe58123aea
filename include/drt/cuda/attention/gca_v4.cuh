// drt/cuda/attention/gca_v4.cuh — version 4 of Grouped Cross-Attention on the GPU (forward and
// backward). Included by gca.cuh after version 3, whose shape (GcaShape), slot helpers and chunk
// buffers (gca_mma) it reuses; not meant to be included on its own.
//
// Shapes (as every GCA version): q, dout, dq (Z, H, 64, 64) fp32; k, v, dk, dv (B, E, 64, Hkv, 64)
// fp32 (the kernels gather chunks from bf16 copies k16, v16 of the same shape); index, weight,
// dweight (Z, Kc); out (Z, H, 64, 64); lse, delta (Z, H, Kc, 64). M = N = d = 64.
//
// Same math and numerics contract as version 3 (bf16 mma.sync m16n8k16 through ldmatrix, fp32
// accumulators and softmax in base 2, one warp per 16 rows of a 64-row tile, mma.cuh's fragment
// layouts and loaders). What changes, because Nsight Compute showed version 3 limited by
// occupancy (133 / 128 registers, 12–18% of warp slots active, tensor pipes busy 15–18%) and its
// backward by 3.2 GB of float2 atomics into dK/dV:
//   - Forward: the chunk's softmax is complete before P·V (one 64-key tile, no online rescale),
//     so P is scaled by w / Σ_n P before it is packed to bf16 and multiplied straight into the
//     output accumulator: no per-chunk O accumulator (32 registers), and P is packed 16 columns
//     at a time. Q is staged through the second chunk stage (free until chunk 2 is requested),
//     so shared memory is the two K/V stages alone (36,864 bytes). The next chunk is requested
//     BEFORE waiting for the current one (cp.async.wait_group 1), as window version 4 does.
//   - Backward in two passes and no float atomics into the chunk memory:
//       1. query-major (grid (Z, H), as version 3): δ = ⟨dO, o_i⟩ per slot and query, dQ, and the
//          weight gradient dW[z, i] = Σ_{h,m} δ summed per warp and added with one atomic per
//          (warp, slot) (version 3 ran version 2's separate kernel over δ). It also writes the
//          bf16-rounded q and dO it staged anyway (for pass 2: no separate copy kernels).
//       2. key-major (grid (E, Hkv, B)): the block of chunk e, kv head g collects, in (z, i)
//          order, the slots of its sequence that retrieved e (a stable compaction of `index` in
//          shared memory), then walks them (× the heads of the group) through two cp.async
//          stages of Q, dO, lse, δ, accumulating dK and dV in registers like flash attention's
//          dK/dV kernel, and adds them to its own rows once. Deterministic: no atomics, the
//          contributions summed in (z, i, h) order.
//   - __launch_bounds__ carries a minimum-blocks hint so that ptxas keeps each kernel within the
//     registers that hint allows (see docs/kernels.md, "GCA version 4", for the counts).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/bf16.cuh"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::attention {
namespace gca_v4 {

using namespace mma;
using gca_mma::ChunkBuffers;
using gca_mma::fetch_chunk;
using gca_mma::kSize;
using gca_mma::kThreads;  // 4 warps; warp w owns rows 16w..16w+15 of a 64-row tile
using gca_mma::kWarps;
using gca_mma::next_filled_slot;
using gca_mma::slot_skipped;

// Entries of `index` a dK/dV block collects at a time (16 KB of shared memory): a whole
// sequence's slots at DRT's shape (259 rows × 8 slots = 2,072), so one pipeline per block there.
inline constexpr int kListCapacity = 4096;
inline constexpr int kScanPerThread = 8;  // consecutive entries each thread tests per round

// The pipeline step at the top of tile i (as window version 4): request tile i + 1 (if any) into
// the other stage, wait for this thread's copies of tile i (one commit group per tile, so "all
// but the newest group" is exactly tile i and everything before it), then a barrier makes every
// thread's copies visible. The barrier at the BOTTOM of the previous iteration is what makes the
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

// stage_bf16 for 64 contiguous fp32 rows of 64 (src), which also writes the rounded rows to
// `copy` (64 contiguous bf16 rows; nullptr: no copy): the backward's pass 1 rounds q and dO for
// its own products and hands the same bf16 values to pass 2. All threads of the block call it.
__device__ inline void stage_bf16_and_keep(BfTile& tile, const float* src, __nv_bfloat16* copy) {
  constexpr int kVectorsPerRow = kTileCols / 4;
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kTileRows * kVectorsPerRow; idx += blockDim.x) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * 4;
    const float4 x = *reinterpret_cast<const float4*>(src + r * kTileCols + c);
    const uint2 packed{pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w)};
    *reinterpret_cast<uint2*>(&tile.at[r][c]) = packed;
    if (copy != nullptr) *reinterpret_cast<uint2*>(copy + r * kTileCols + c) = packed;
  }
}

// A row's filled slots in order, with their chunks and weights, in shared memory: the loop over
// the row's chunks then finds the next one without touching global memory (next_filled_slot
// reads index and weight: one or more L1 round trips in front of every chunk's fetch).
inline constexpr int kMaxSlots = 64;  // the largest Kc versions 4+ take (gca_version checks)
struct FilledSlots {
  int count;
  int slot[kMaxSlots];  // slot i of the row
  int chunk[kMaxSlots];  // index[z, i]
  float weight[kMaxSlots];  // weight[z, i] (≠ 0)
};

// Fills `filled` for row z (a stable compaction by warp 0, 32 slots per ballot); visible to the
// block after the next barrier. All threads of the block call it.
__device__ inline void collect_filled_slots(FilledSlots& filled, const std::int32_t* index, const float* weight,
                                            int z, int Kc) {
  if (threadIdx.x >= kWarp) return;
  const int lane = threadIdx.x;
  int count = 0;
  for (int base = 0; base < Kc; base += kWarp) {
    const int i = base + lane;
    const int e = i < Kc ? index[z * Kc + i] : -1;
    const float w = i < Kc ? weight[z * Kc + i] : 0.0f;
    const bool is_filled = e >= 0 && w != 0.0f;  // as slot_skipped
    const unsigned mask = __ballot_sync(0xffffffffu, is_filled);
    if (is_filled) {
      const int at = count + __popc(mask & ((1u << lane) - 1u));
      filled.slot[at] = i;
      filled.chunk[at] = e;
      filled.weight[at] = w;
    }
    count += __popc(mask);
  }
  if (lane == 0) filled.count = count;
}

// The block's 64 output rows (out_rows: row 0 of them) from this warp's accumulators.
__device__ inline void store_output(float* out_rows, const Accumulator16x64& total) {
  const FragmentLane at;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<float2*>(out_rows + at.row(2 * half) * kSize + at.col(j, 0)) =
          make_float2(total.c[j][2 * half], total.c[j][2 * half + 1]);
}

// dq += scale·dQ for the block's 64 query rows (dq_rows: row 0 of them), dQ in this warp's
// accumulators; with `assign`, dq = scale·dQ (a fresh, uninitialised buffer: nothing to read). The
// block owns those rows: no atomics.
__device__ inline void add_query_gradient(float* dq_rows, const Accumulator16x64& dq_acc, float scale, bool assign) {
  const FragmentLane at;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float2* cell = reinterpret_cast<float2*>(dq_rows + at.row(2 * half) * kSize + at.col(j, 0));
      const float2 old = assign ? float2{} : *cell;
      *cell = make_float2(old.x + scale * dq_acc.c[j][2 * half], old.y + scale * dq_acc.c[j][2 * half + 1]);
    }
}

// dk += scale·dK and dv += dV on the rows of chunk e, sequence b, kv head g (dK, dV in this warp's
// accumulators, rows = keys); with assign_dk / assign_dv the buffer is fresh (uninitialised) and
// is set instead. The block owns those rows: no atomics. dk or dv may be null. Every old value is
// loaded before anything is stored: the compiler cannot tell dk from dv, so interleaved
// read-modify-writes ran one memory latency each, in sequence (Nsight Compute put half of the
// key pass's stall samples there).
__device__ inline void add_chunk_gradients(float* dk, float* dv, const Accumulator16x64& dk_acc,
                                           const Accumulator16x64& dv_acc, const GcaShape& s, int b, int e, int g,
                                           float scale, bool assign_dk, bool assign_dv) {
  const FragmentLane at;
  const long long key[2] = {gca_key_row(s, b, e, at.row(0), g) * kSize, gca_key_row(s, b, e, at.row(2), g) * kSize};
  const bool read_dk = dk && !assign_dk, read_dv = dv && !assign_dv;
  float2 old_dk[2][8], old_dv[2][8];
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = at.col(j, 0);
      old_dk[half][j] = read_dk ? *reinterpret_cast<const float2*>(dk + key[half] + c) : float2{};
      old_dv[half][j] = read_dv ? *reinterpret_cast<const float2*>(dv + key[half] + c) : float2{};
    }
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = at.col(j, 0);
      if (dk)
        *reinterpret_cast<float2*>(dk + key[half] + c) =
            make_float2(old_dk[half][j].x + scale * dk_acc.c[j][2 * half],
                        old_dk[half][j].y + scale * dk_acc.c[j][2 * half + 1]);
      if (dv)
        *reinterpret_cast<float2*>(dv + key[half] + c) =
            make_float2(old_dv[half][j].x + dv_acc.c[j][2 * half], old_dv[half][j].y + dv_acc.c[j][2 * half + 1]);
    }
}

// The end of a key pass: its chunk's gradients. A chunk that no step reached (nobody retrieved it)
// adds nothing, so its rows are left alone, unless they are a fresh buffer, which gets zeros
// (dk_acc and dv_acc are still zero then).
__device__ inline void finish_chunk_gradients(float* dk, float* dv, const Accumulator16x64& dk_acc,
                                              const Accumulator16x64& dv_acc, const GcaShape& s, int b, int e, int g,
                                              float scale, bool started, bool assign_dk, bool assign_dv) {
  float* dk_rows = started || assign_dk ? dk : nullptr;
  float* dv_rows = started || assign_dv ? dv : nullptr;
  if (dk_rows || dv_rows) add_chunk_gradients(dk_rows, dv_rows, dk_acc, dv_acc, s, b, e, g, scale, assign_dk, assign_dv);
}

// Sum over all 32 lanes (every lane gets it).
__device__ inline float warp_total(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The query pass's middle, shared by versions 4 and 5. With P in p and dP in ds (this warp's 16
// rows of one slot): δ = Σ_n P dP per row goes to delta_rows (the slot's 64 δ), the warp's rows'
// sum of δ is added to *dweight_slot (one atomic per warp; nullptr: none), and, with make_ds, ds
// becomes dS = w P (dP − δ).
__device__ inline void slot_delta_and_ds(Accumulator16x64& ds, const Accumulator16x64& p, float w, float* delta_rows,
                                         float* dweight_slot, bool make_ds) {
  const FragmentLane at;
  float slot_delta[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) slot_delta[u / 2] += p.c[j][u] * ds.c[j][u];
  slot_delta[0] = group_sum(slot_delta[0]);
  slot_delta[1] = group_sum(slot_delta[1]);
  if (at.pair == 0) {
    delta_rows[at.row(0)] = slot_delta[0];
    delta_rows[at.row(2)] = slot_delta[1];
  }
  if (dweight_slot) {  // the warp's 16 rows: each row's δ counted once (by its pair-0 lane)
    const float rows = warp_total(at.pair == 0 ? slot_delta[0] + slot_delta[1] : 0.0f);
    if (threadIdx.x % kWarp == 0) atomicAdd(dweight_slot, rows);
  }
  if (!make_ds) return;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) ds.c[j][u] = w * p.c[j][u] * (ds.c[j][u] - slot_delta[u / 2]);
}

// One chunk's softmax for a warp's 16 rows, in registers, with the fusion weight w folded in: the
// raw products S (16×64) become P·w/Σ_n P, P = exp2(to_log2·S − max) (base 2), and row_lse gets
// each of this lane's two rows' log-sum-exp (natural log, as the backward reads it). The row max
// is taken over the raw products (to_log2 > 0, so it is the max of the scores too); each
// probability is then one FFMA and one MUFU. The whole chunk's softmax is known here, so its
// normalisation and weight go into P before the product: out += bf16(P·w/Σ)·V needs no O
// accumulator of its own. (Σ ≥ 1: the max's own term is 1; the fast division is within 2 ulp.)
__device__ inline void weighted_chunk_softmax(Accumulator16x64& p, float to_log2, float w, float (&row_lse)[2]) {
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) row_max[u / 2] = fmaxf(row_max[u / 2], p.c[j][u]);
  row_max[0] = group_max(row_max[0]) * to_log2;
  row_max[1] = group_max(row_max[1]) * to_log2;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      p.c[j][u] = exp2_flush(fmaf(p.c[j][u], to_log2, -row_max[u / 2]));
      row_sum[u / 2] += p.c[j][u];
    }
  row_sum[0] = group_sum(row_sum[0]);
  row_sum[1] = group_sum(row_sum[1]);
  const float norm[2] = {__fdividef(w, row_sum[0]), __fdividef(w, row_sum[1])};
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) p.c[j][u] *= norm[u / 2];
  row_lse[0] = row_max[0] * kLn2 + logf(row_sum[0]);
  row_lse[1] = row_max[1] * kLn2 + logf(row_sum[1]);
}

}  // namespace gca_v4

// Forward. Grid (Z, H), 128 threads (4 warps): warp w computes queries 16w..16w+15 of (z, h) over
// the Kc retrieved chunks, its Q held as A fragments. Per filled slot i (weight w), in registers:
//   S = Q·Kᵀ (fp32), base-2 scores x = log2(e)·scale·S, P = exp2(x − max) (fp32),
//   out += bf16(P · w / Σ_n P) · V,   lse_i = ln2·max + ln Σ_n P.
// Skipped slots (index −1 or weight 0) get lse = −inf and no work, as in versions 1–3.
// Chunk i + 1 is copied (cp.async, from the bf16 copies k16, v16) into the other stage while
// chunk i is multiplied. Registers: ≤ 102 (5 blocks of 4 warps per SM: ptxas -v of CUDA 13 gives
// 96 and a 28-byte spill); shared: 37,636 bytes (the stages and the slot table; 6 blocks fit).
static __global__ void __launch_bounds__(gca_v4::kThreads, 5)
    gca_forward_v4(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16, const std::int32_t* index,
                   const float* weight, GcaShape s, float scale, float* out, float* lse) {
  using namespace gca_v4;
  __shared__ ChunkBuffers chunks;
  __shared__ FilledSlots filled;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // lse of slot 0
  const int first = next_filled_slot(index, weight, z, s.Kc, 0);
  // The first chunk's copy starts first, so it flies while Q is rounded to bf16 (plain loads)
  // into stage 1, which the first chunk does not use, and the slot table is built.
  if (first < s.Kc) fetch_chunk(chunks, 0, k16, v16, s, b, index[z * s.Kc + first], kv);
  collect_filled_slots(filled, index, weight, z, s.Kc);
  stage_bf16(chunks.keys[1], [&](int r) { return q + (first_query + r) * kSize; });
  for (int slot = 0; slot < s.Kc; ++slot)  // skipped, as on the CPU: −inf marks them for the backward
    if (threadIdx.x < kSize && slot_skipped(index, weight, z, s.Kc, slot))
      lse[first_stat + slot * kSize + threadIdx.x] = -INFINITY;
  __syncthreads();
  std::uint32_t qa[4][4];  // this warp's 16 queries as A fragments, for every chunk
  load_a_rows(qa, chunks.keys[1], at.row0);
  __syncthreads();  // every warp has its Q: stage 1 may now receive the second chunk
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 total;
  total.zero();
  const int count = filled.count;
  for (int n = 0; n < count; ++n) {
    const int stage = n & 1;
    next_tile_then_wait(n + 1 < count,
                        [&] { fetch_chunk(chunks, stage ^ 1, k16, v16, s, b, filled.chunk[n + 1], kv); });
    const int i = filled.slot[n];
    const float w = filled.weight[n];
    Accumulator16x64 p;  // S, then P, then P·w/Σ
    p.zero();
    multiply_by_transposed(p, qa, chunks.keys[stage]);
    float row_lse[2];
    weighted_chunk_softmax(p, to_log2, w, row_lse);
    multiply_packed(total, p, chunks.values[stage]);
    if (at.pair == 0) {
      float* lse_slot = lse + first_stat + i * kSize;
      lse_slot[at.row(0)] = row_lse[0];
      lse_slot[at.row(2)] = row_lse[1];
    }
    __syncthreads();  // every warp is done with this stage before it is refilled (chunk after next)
  }
  store_output(out + first_query * kSize, total);
}

namespace gca_v4 {

// Pass 1's shared memory: the block's Q and dO (resident), two stages of K, V and the slot table.
// 6 × 9,216 + 772 = 56,068 bytes: dynamic (above the 48 KB of static shared memory).
struct QueryShared {
  BfTile queries, douts;
  ChunkBuffers chunks;
  FilledSlots filled;
};

}  // namespace gca_v4

// Backward pass 1 (query-major). Grid (Z, H), 128 threads; warp w owns queries 16w..16w+15 of
// (z, h). Per filled slot i (weight w), with Q's and dO's A fragments read from shared memory
// where used:
//   P  = exp2(log2(e)·(scale·Q Kᵀ − lse))     recomputed (fp32)
//   dP = dO Vᵀ                                (fp32)
//   δ  = Σ_n P dP  (= ⟨dO, o_i⟩)              written to delta: pass 2 needs it
//   dW[z, i] += Σ over the warp's rows of δ   one atomic per warp and slot (12 heads × 4 warps
//                                             add into each dW entry)
//   dS = w P (dP − δ);  dQ += bf16(dS) K      (dQ stays in registers over all chunks)
// Then dq += scale·dQ (this block owns those rows: no atomics). q16 and dout16 (nullable) receive
// the bf16-rounded Q and dO rows, for pass 2. Skipped slots get δ = 0 and no gradient, as in
// versions 2 and 3. dq and dweight may be null.
// Registers: ≤ 128 (4 blocks of 4 warps per SM); shared: 56,068 bytes (QueryShared).
static __global__ void __launch_bounds__(gca_v4::kThreads, 4)
    gca_query_backward_v4(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16,
                          const std::int32_t* index, const float* weight, GcaShape s, float scale, const float* lse,
                          const float* dout, float* delta, float* dq, float* dweight, __nv_bfloat16* q16,
                          __nv_bfloat16* dout16, FreshGradients fresh) {
  using namespace gca_v4;
  extern __shared__ __align__(16) unsigned char gca_query_shared_bytes[];
  QueryShared& sh = *reinterpret_cast<QueryShared*>(gca_query_shared_bytes);
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // δ of slot 0
  const int first = next_filled_slot(index, weight, z, s.Kc, 0);
  if (first < s.Kc) fetch_chunk(sh.chunks, 0, k16, v16, s, b, index[z * s.Kc + first], kv);
  collect_filled_slots(sh.filled, index, weight, z, s.Kc);  // visible at the loop's first barrier
  // Q and dO are read once per block: plain loads, rounded (visible at the loop's first barrier).
  stage_bf16_and_keep(sh.queries, q + first_query * kSize, q16 ? q16 + first_query * kSize : nullptr);
  stage_bf16_and_keep(sh.douts, dout + first_query * kSize, dout16 ? dout16 + first_query * kSize : nullptr);
  for (int slot = 0; slot < s.Kc; ++slot)  // nothing flowed through a skipped slot
    if (threadIdx.x < kSize && slot_skipped(index, weight, z, s.Kc, slot))
      delta[first_stat + slot * kSize + threadIdx.x] = 0.0f;
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 dq_acc;
  dq_acc.zero();
  // The count is read after the first barrier (inside the loop's first step, which it publishes
  // along with Q and dO); a row with no filled slot has nothing to wait for.
  for (int n = 0;; ++n) {
    if (n == 0) __syncthreads();  // the slot table, Q and dO are visible from here on
    if (n >= sh.filled.count) break;
    const int stage = n & 1;
    next_tile_then_wait(n + 1 < sh.filled.count,
                        [&] { fetch_chunk(sh.chunks, stage ^ 1, k16, v16, s, b, sh.filled.chunk[n + 1], kv); });
    const BfTile &keys = sh.chunks.keys[stage], &values = sh.chunks.values[stage];
    const int i = sh.filled.slot[n];
    const float w = sh.filled.weight[n];
    const long long stat = first_stat + i * kSize;
    const float lse_log2[2] = {lse[stat + at.row(0)] * kLog2e, lse[stat + at.row(2)] * kLog2e};
    Accumulator16x64 p;  // S, then P
    p.zero();
    multiply_rows_by_transposed(p, sh.queries, at.row0, keys);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) p.c[j][u] = exp2_flush(p.c[j][u] * to_log2 - lse_log2[u / 2]);
    Accumulator16x64 ds;  // dP, then dS
    ds.zero();
    multiply_rows_by_transposed(ds, sh.douts, at.row0, values);
    slot_delta_and_ds(ds, p, w, delta + stat, dweight ? dweight + z * s.Kc + i : nullptr, dq != nullptr);
    if (dq) {
      multiply_packed(dq_acc, ds, keys);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  if (dq) add_query_gradient(dq + first_query * kSize, dq_acc, scale, fresh.dq);
}

namespace gca_v4 {

// Pass 2's shared memory: the chunk's K and V (resident), two stages of Q, dO with their lse and
// δ rows, and the list of slots that retrieved the chunk.
// 6 × 9,216 + 1,024 + 16 + 16,384 = 72,720 bytes: dynamic (3 blocks per SM).
struct KeyShared {
  BfTile keys, values;
  BfTile queries[2], douts[2];
  float lse[2][kSize], delta[2][kSize];
  int warp_totals[kWarps];
  int list[kListCapacity];  // entries z·Kc + i, increasing
};

// Writes to list[0..count) the entries p in [from, to) (p = z·Kc + i, to − from ≤ kListCapacity)
// whose slot retrieved chunk e with a nonzero weight, in increasing order, and returns count (the
// same in every thread). A stable compaction: each thread tests kScanPerThread consecutive
// entries (its loads independent, so one memory latency per round), and its matches go after
// those of the threads before it (warp scan by shuffles, warps by warp_totals). Ends with a
// barrier: the list is then visible to the whole block. All threads of the block call it.
// (warp_totals and list are shared memory: KeyShared's, or version 5's.)
__device__ inline int collect_retrievals(int (&warp_totals)[kWarps], int* list, const std::int32_t* index,
                                         const float* weight, int e, long long from, long long to) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  int count = 0;
  for (long long base = from; base < to; base += static_cast<long long>(kThreads) * kScanPerThread) {
    const long long first = base + static_cast<long long>(threadIdx.x) * kScanPerThread;
    unsigned matches = 0;  // bit u: entry first + u retrieved e
#pragma unroll
    for (int u = 0; u < kScanPerThread; ++u) {
      const long long p = first + u;
      if (p < to && index[p] == e && weight[p] != 0.0f) matches |= 1u << u;
    }
    const int mine = __popc(matches);
    int inclusive = mine;  // matches of lanes 0..lane
#pragma unroll
    for (int offset = 1; offset < kWarp; offset <<= 1) {
      const int before = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += before;
    }
    if (lane == kWarp - 1) warp_totals[warp] = inclusive;
    __syncthreads();
    int position = count + inclusive - mine, round_total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) position += warp_totals[w];
      round_total += warp_totals[w];
    }
#pragma unroll
    for (int u = 0; u < kScanPerThread; ++u)
      if (matches >> u & 1u) list[position++] = static_cast<int>(first + u);
    count += round_total;
    __syncthreads();  // warp_totals are read before the next round rewrites them; list published
  }
  return count;
}

}  // namespace gca_v4

// Backward pass 2 (key-major): dK and dV. Grid (E, Hkv, B), 128 threads; the block owns chunk e
// of sequence b, kv head g, and warp w its keys 16w..16w+15. It collects the slots (z, i) of
// sequence b that retrieved e (with weight w ≠ 0), and walks every (slot, head of the group) as
// one flat sequence of steps, pipelined through two stages of Q, dO (the bf16 rows pass 1 wrote),
// lse and δ. Per step, keys as rows (so bf16(w Pᵀ), bf16(dSᵀ) are A operands):
//   Sᵀ = K Qᵀ, Pᵀ = exp2(log2(e)·(scale·Sᵀ − lse)), dV += bf16(w Pᵀ) dO,
//   dPᵀ = V dOᵀ, dSᵀ = w Pᵀ ∘ (dPᵀ − δ), dK += bf16(dSᵀ) Q,
// with K's and V's A fragments read from shared memory as needed. Then dk += scale·dK and
// dv += dV on the block's own rows (no other block writes them: no atomics). dk or dv may be null.
// A chunk nobody retrieved costs one scan of its sequence's index. Registers: ≤ 168 (3 blocks of
// 4 warps per SM; dK and dV alone take 64); shared: 72,720 bytes (KeyShared).
static __global__ void __launch_bounds__(gca_v4::kThreads, 3)
    gca_key_backward_v4(const __nv_bfloat16* k16, const __nv_bfloat16* v16, const __nv_bfloat16* q16,
                        const __nv_bfloat16* dout16, const std::int32_t* index, const float* weight, GcaShape s,
                        float scale, const float* lse, const float* delta, float* dk, float* dv,
                        FreshGradients fresh) {
  using namespace gca_v4;
  extern __shared__ __align__(16) unsigned char gca_key_shared_bytes[];
  KeyShared& sh = *reinterpret_cast<KeyShared*>(gca_key_shared_bytes);
  const int e = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const FragmentLane at;
  const int heads = s.heads_per_kv;
  // Step i: list entry i / heads, query head g·heads + i % heads.
  auto fetch_step = [&](int i, int stage) {
    const int entry = sh.list[i / heads];
    const int z = entry / s.Kc, slot = entry % s.Kc, h = g * heads + i % heads;
    const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + slot) * kSize;
    stage_rows_async<kThreads>(sh.queries[stage], q16 + first_query * kSize, kSize);  // 64 contiguous rows
    stage_rows_async<kThreads>(sh.douts[stage], dout16 + first_query * kSize, kSize);
    if (threadIdx.x < kSize) {  // 4-byte copies: as in window version 4, no alignment assumed
      copy_async_4(&sh.lse[stage][threadIdx.x], lse + stat + threadIdx.x);
      copy_async_4(&sh.delta[stage][threadIdx.x], delta + stat + threadIdx.x);
    }
    commit_async_copies();
  };
  const float to_log2 = scale * kLog2e;
  const long long sequence_first = static_cast<long long>(b) * s.rows_per_sequence * s.Kc;
  const long long sequence_end = sequence_first + static_cast<long long>(s.rows_per_sequence) * s.Kc;
  bool started = false;  // K and V requested, accumulators live
  Accumulator16x64 dk_acc, dv_acc;
  dk_acc.zero();
  dv_acc.zero();
  for (long long from = sequence_first; from < sequence_end; from += kListCapacity) {
    const long long to = from + kListCapacity < sequence_end ? from + kListCapacity : sequence_end;
    // The previous window's last barrier: nobody reads the list any more when it is rewritten.
    const int steps = collect_retrievals(sh.warp_totals, sh.list, index, weight, e, from, to) * heads;
    if (steps == 0) continue;
    if (!started) {  // K and V once, in step 0's commit group (so waiting for step 0 waits for them)
      const long long first_row = gca_key_row(s, b, e, 0, g) * kSize, row_stride = static_cast<long long>(s.Hkv) * kSize;
      stage_rows_async<kThreads>(sh.keys, k16 + first_row, row_stride);
      stage_rows_async<kThreads>(sh.values, v16 + first_row, row_stride);
      started = true;
    }
    fetch_step(0, 0);
    for (int i = 0; i < steps; ++i) {
      const int stage = i & 1;
      next_tile_then_wait(i + 1 < steps, [&] { fetch_step(i + 1, stage ^ 1); });
      const float w = weight[sh.list[i / heads]];
      const float* stage_lse = sh.lse[stage];
      const float* stage_delta = sh.delta[stage];
      Accumulator16x64 p;  // Sᵀ, then w·Pᵀ: rows keys, columns queries
      p.zero();
      multiply_rows_by_transposed(p, sh.keys, at.row0, sh.queries[stage]);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u)
          p.c[j][u] = w * exp2_flush(p.c[j][u] * to_log2 - stage_lse[at.col(j, u)] * kLog2e);
      multiply_packed(dv_acc, p, sh.douts[stage]);
      Accumulator16x64 ds;  // dPᵀ, then dSᵀ
      ds.zero();
      multiply_rows_by_transposed(ds, sh.values, at.row0, sh.douts[stage]);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u) ds.c[j][u] = p.c[j][u] * (ds.c[j][u] - stage_delta[at.col(j, u)]);
      multiply_packed(dk_acc, ds, sh.queries[stage]);
      __syncthreads();  // every warp is done with this stage before it is refilled
    }
  }
  finish_chunk_gradients(dk, dv, dk_acc, dv_acc, s, b, e, g, scale, started, fresh.dk, fresh.dv);
}

namespace gca_v4 {

// Host side: the launches, with the bf16 copies they read. All tensors fp32, contiguous, on the
// GPU, 16-byte aligned (gradients 8-byte; gca_version checked it), M = N = d = 64.

static inline void forward(const float* q, const float* k, const float* v, const std::int32_t* index,
                           const float* weight, const GcaShape& s, float scale, float* out, float* lse) {
  const long long memory = static_cast<long long>(s.B) * s.E * s.N * s.Hkv * kSize;
  // The chunk memory as bf16, once per call (as version 3; each chunk is gathered ~Kc times), or
  // once per RoundedOperandReuse scope naming it: the decoder's GCA layers of one segment share it.
  const auto k16 = bf16_operand(k, memory), v16 = bf16_operand(v, memory);
  gca_forward_v4<<<dim3(unsigned(s.Z), unsigned(s.H)), kThreads, 0, ::drt::cuda::stream()>>>(
      q, as_bf16(k16), as_bf16(v16), index, weight, s, scale, out, lse);
  DRT_CUDA_CHECK_LAUNCH();
}  // the copies return to the allocator's cache; later work on the one stream is ordered after the kernel

// The two backward passes of version 4's signatures (version 5's have them too), with the dynamic
// shared memory each launch asks for.
using QueryBackwardKernel = void (*)(const float*, const __nv_bfloat16*, const __nv_bfloat16*, const std::int32_t*,
                                     const float*, GcaShape, float, const float*, const float*, float*, float*,
                                     float*, __nv_bfloat16*, __nv_bfloat16*, FreshGradients);
using KeyBackwardKernel = void (*)(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                   const __nv_bfloat16*, const std::int32_t*, const float*, GcaShape, float,
                                   const float*, const float*, float*, float*, FreshGradients);
struct BackwardKernels {
  QueryBackwardKernel query;
  int query_shared_bytes;
  KeyBackwardKernel key;
  int key_shared_bytes;
};
static inline BackwardKernels backward_kernels_v4() {
  return {gca_query_backward_v4, int(sizeof(QueryShared)), gca_key_backward_v4, int(sizeof(KeyShared))};
}

// delta (Z, H, Kc, 64) is scratch for δ. dq, dk, dv, dweight may each be null; all are added
// into, except those `fresh` names, which are set. `kernels`: version 4's passes, or version 5's.
static inline void backward(const float* q, const float* k, const float* v, const std::int32_t* index,
                            const float* weight, const GcaShape& s, float scale, const float* lse, const float* dout,
                            float* delta, float* dq, float* dk, float* dv, float* dweight, FreshGradients fresh,
                            const BackwardKernels& kernels = backward_kernels_v4()) {
  const long long memory = static_cast<long long>(s.B) * s.E * s.N * s.Hkv * kSize;
  const long long queries = static_cast<long long>(s.Z) * s.H * kSize * kSize;
  const auto k16 = bf16_operand(k, memory), v16 = bf16_operand(v, memory);
  const bool keys = dk != nullptr || dv != nullptr;
  // Pass 1 writes the bf16 q and dO that pass 2 reads (only when pass 2 runs).
  std::shared_ptr<void> q16, dout16;
  if (keys) {
    q16 = ::drt::cuda::detail::device_scratch(static_cast<std::size_t>(queries) * sizeof(__nv_bfloat16));
    dout16 = ::drt::cuda::detail::device_scratch(static_cast<std::size_t>(queries) * sizeof(__nv_bfloat16));
  }
  {
    const int bytes = kernels.query_shared_bytes;
    // Set on every call: cheap, and it holds for whichever device is current.
    DRT_CUDA_CHECK(cudaFuncSetAttribute(kernels.query, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    kernels.query<<<dim3(unsigned(s.Z), unsigned(s.H)), kThreads, bytes, ::drt::cuda::stream()>>>(
        q, as_bf16(k16), as_bf16(v16), index, weight, s, scale, lse, dout, delta, dq, dweight,
        static_cast<__nv_bfloat16*>(q16.get()), static_cast<__nv_bfloat16*>(dout16.get()), fresh);
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (!keys) return;
  const int bytes = kernels.key_shared_bytes;
  DRT_CUDA_CHECK(cudaFuncSetAttribute(kernels.key, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  kernels.key<<<dim3(unsigned(s.E), unsigned(s.Hkv), unsigned(s.B)), kThreads, bytes, ::drt::cuda::stream()>>>(
      as_bf16(k16), as_bf16(v16), static_cast<const __nv_bfloat16*>(q16.get()),
      static_cast<const __nv_bfloat16*>(dout16.get()), index, weight, s, scale, lse, delta, dk, dv, fresh);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace gca_v4
}  // namespace drt::cuda::attention
