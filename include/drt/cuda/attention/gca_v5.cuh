// drt/cuda/attention/gca_v5.cuh — version 5 of Grouped Cross-Attention on the GPU: version 4's
// three kernels (the forward and the two backward passes) with their products on Hopper's
// warpgroup MMA (wgmma.cuh) instead of mma.sync. Included by gca.cuh after version 4, whose slot
// table, retrieval lists, shapes and host side it reuses; not meant to be included on its own.
//
// Shapes (as every GCA version): q, dout, dq (Z, H, 64, 64) fp32; k16, v16 (B, E, 64, Hkv, 64)
// bf16 copies of the chunk memory; dk, dv (B, E, 64, Hkv, 64) fp32; index, weight, dweight
// (Z, Kc); out (Z, H, 64, 64); lse, delta (Z, H, Kc, 64).
//
// Same math and numerics as version 4 (bf16 products, fp32 accumulators and softmax in base 2,
// the same quantities rounded to bf16 in the same places), and the same blocks: a block is one
// warpgroup whose warp w owns rows 16w..16w+15 of a 64-row tile. What changes:
//   - every product is four wgmma k-steps (m64n64k16) for the whole 64-row tile, B read by the
//     hardware straight from shared memory: no ldmatrix, and each tile is read once per block
//     instead of once per warp. Where A is a resident tile (the backward's Q, dO, K, V) it is read
//     from shared memory too; where it was just computed (P, dS) it comes from registers;
//   - the staged tiles are SwizzledTiles (the layout wgmma reads), filled by cp.async as before in
//     the backward passes, and by the tensor memory accelerator in the forward (tma.cuh: one
//     thread asks for a chunk's K and V, an mbarrier says when they are in);
//   - the forward rounds Q once into a shared tile that its Q·Kᵀ reads as A: no registers hold
//     Q (96 registers, five blocks per SM);
//   - a product that is not needed at once runs while the warps compute: the backward issues S
//     and dP together and computes P while dP runs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/tma.cuh"
#include "drt/cuda/attention/wgmma.cuh"

namespace drt::cuda::attention {
namespace gca_v5 {

using gca_mma::kSize;
using gca_mma::kThreads;  // one warpgroup
using gca_v4::FilledSlots;
static_assert(kThreads == wgmma::kWarpgroupThreads, "a GCA block is one warpgroup");

// The block's Q and two stages of one chunk's K and V (5 × 8 KB, each tile on a 1 KB atom), an
// mbarrier per stage, and the slot table.
struct ForwardShared {
  wgmma::SwizzledTile queries;  // the block's Q, rounded once
  wgmma::SwizzledTile keys[2], values[2];
  std::uint64_t chunk_in[2];  // stage s's chunk has arrived (tma.cuh; one phase per chunk)
  FilledSlots filled;
};

// The chunk memory's bf16 copies k16 and v16 as tensor maps (tma::head_rows_map): the box at
// {0, g, (b·E + e)·N} is chunk e of sequence b, kv head g.
struct ChunkMaps {
  const CUtensorMap& keys;
  const CUtensorMap& values;
};

// lse = −inf for the row's skipped slots (those not in the slot table), as on the CPU: the
// backward reads −inf as "no work". lse_rows: the block's lse of slot 0; one query per thread of
// threads 0..63, from the shared table rather than from index and weight in global memory.
__device__ inline void mark_skipped_slots(float* lse_rows, const FilledSlots& filled, int Kc) {
  if (threadIdx.x >= kSize) return;
  for (int slot = 0, f = 0; slot < Kc; ++slot) {
    if (f < filled.count && filled.slot[f] == slot) ++f;
    else lse_rows[slot * kSize + threadIdx.x] = -INFINITY;
  }
}

// The forward's fetch, by thread 0: chunk e of sequence b, kv head g into stage `stage`.
__device__ inline void fetch_chunk(ForwardShared& sh, int stage, const ChunkMaps& maps, const GcaShape& s, int b, int e,
                                   int g) {
  const int first_row = (b * s.E + e) * s.N;  // < 2^31: forward() checks
  tma::expect_bytes(sh.chunk_in[stage], 2 * sizeof(wgmma::SwizzledTile));
  tma::load_tile_async(sh.keys[stage], maps.keys, g, first_row, sh.chunk_in[stage]);
  tma::load_tile_async(sh.values[stage], maps.values, g, first_row, sh.chunk_in[stage]);
}

// Starts copying chunk e of sequence b, kv head g (64 rows, Hkv rows apart) into keys and values,
// as one commit group (cp.async, by every thread: the backward passes).
__device__ inline void fetch_chunk(wgmma::SwizzledTile& keys, wgmma::SwizzledTile& values, const __nv_bfloat16* k16,
                                   const __nv_bfloat16* v16, const GcaShape& s, int b, int e, int g) {
  const long long first_row = gca_key_row(s, b, e, 0, g) * kSize, row_stride = static_cast<long long>(s.Hkv) * kSize;
  wgmma::stage_rows_swizzled_async<kThreads>(keys, k16 + first_row, row_stride);
  wgmma::stage_rows_swizzled_async<kThreads>(values, v16 + first_row, row_stride);
  mma::commit_async_copies();
}

// gca_v4::next_tile_then_wait for tiles that wgmma reads: the copies are fenced for the async
// proxy before the barrier publishes them.
template <class Fetch>
__device__ inline void next_tile_then_wait(bool has_next, Fetch fetch_next) {
  if (has_next) {
    fetch_next();
    mma::wait_async_copies_but<1>();
  } else {
    mma::wait_async_copies_but<0>();
  }
  wgmma::fence_shared_for_wgmma();  // this thread's copies and zeros, for the wgmmas
  __syncthreads();                  // everyone's
}

}  // namespace gca_v5

// Forward. Grid (Z, H), 128 threads (one warpgroup). Per filled slot i (weight w), as version 4:
//   S = Q·Kᵀ (wgmma), x = log2(e)·scale·S, P = exp2(x − max), out += bf16(P·w/Σ_n P)·V (wgmma),
//   lse_i = ln2·max + ln Σ_n P;  skipped slots get lse = −inf and no work.
// The chunks' K and V come by the tensor memory accelerator (tma.cuh): thread 0 asks for chunk
// n + 1 into the other stage while chunk n is multiplied, and everyone waits on that stage's
// mbarrier. A barrier at the end of step n frees chunk n's stage for chunk n + 2.
// Shared: 41,984 bytes (Q, the stages, their mbarriers, the slot table padded to the next atom);
// 96 registers (ptxas, CUDA 13): five blocks per SM. At 96 ptxas serialises the wgmma k-steps
// (info C7512); a hint of four blocks pipelines them in 106 registers but measured slower
// (357 against 353 µs; docs/kernels.md).
static __global__ void __launch_bounds__(gca_v5::kThreads, 5)
    gca_forward_v5(const float* q, const __grid_constant__ CUtensorMap keys_map,
                   const __grid_constant__ CUtensorMap values_map, const std::int32_t* index, const float* weight,
                   GcaShape s, float scale, float* out, float* lse) {
#if defined(DRT_WGMMA_DEVICE)
  using namespace gca_v5;
  using namespace mma;
  __shared__ ForwardShared sh;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // lse of slot 0
  const ChunkMaps maps{keys_map, values_map};
  // The block's waits on memory overlap: Q's loads fly while warp 0 reads the row's index and
  // weight into the slot table (all slots at once) and thread 0 requests the first chunk.
  wgmma::Fp32TileInFlight<kThreads> queries;
  queries.load(q + first_query * kSize);
  gca_v4::collect_filled_slots(sh.filled, index, weight, z, s.Kc);
  if (threadIdx.x < 32) __syncwarp();  // warp 0's table, for thread 0
  if (threadIdx.x == 0) {
    tma::init_barrier(sh.chunk_in[0], 1);
    tma::init_barrier(sh.chunk_in[1], 1);
    tma::fence_barrier_init();
    if (sh.filled.count > 0) fetch_chunk(sh, 0, maps, s, b, sh.filled.chunk[0], kv);
  }
  queries.store_rounded(sh.queries);
  wgmma::fence_shared_for_wgmma();  // Q, for the wgmmas (published by the barrier below)
  __syncthreads();  // the slot table, Q and the initialised mbarriers
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 total;
  total.zero();
  const int count = sh.filled.count;
  for (int n = 0; n < count; ++n) {
    const int stage = n & 1;
    if (threadIdx.x == 0 && n + 1 < count) fetch_chunk(sh, stage ^ 1, maps, s, b, sh.filled.chunk[n + 1], kv);
    tma::wait(sh.chunk_in[stage], (n >> 1) & 1);  // chunk n is in
    const int i = sh.filled.slot[n];
    const float w = sh.filled.weight[n];
    Accumulator16x64 p;  // S, then P·w/Σ
    wgmma::fence();
    wgmma::multiply_tile_by_transposed_async(p, sh.queries, sh.keys[stage]);
    wgmma::wait<0>();
    wgmma::hold(p);
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
    if (n + 2 < count) __syncthreads();  // every warp is done with this stage: chunk n + 2 may come
  }
  mark_skipped_slots(lse + first_stat, sh.filled, s.Kc);
  gca_v4::store_output(out + first_query * kSize, total);
#endif
}

namespace gca_v5 {

// The query pass's shared memory: the block's Q and dO (resident, rounded once), two stages of a
// chunk's K and V with the slot's lse rows, the slot table: ~50 KB, dynamic, with an atom of
// slack for the alignment (align_to_atom).
struct QueryBackwardShared {
  wgmma::SwizzledTile queries, douts;
  wgmma::SwizzledTile keys[2], values[2];
  float lse[2][kSize];  // the slot's lse rows, staged with its chunk
  FilledSlots filled;
};

// fetch_chunk for the query pass: slot `slot` of row z retrieved chunk e; its 64 lse values (from
// lse_rows, the block's lse of slot 0) join the chunk's commit group, so that the step never
// waits on a global load.
__device__ inline void fetch_chunk_and_lse(QueryBackwardShared& sh, int stage, const __nv_bfloat16* k16,
                                           const __nv_bfloat16* v16, const GcaShape& s, int b, int e, int g,
                                           const float* lse_rows, int slot) {
  if (threadIdx.x < kSize) mma::copy_async_4(&sh.lse[stage][threadIdx.x], lse_rows + slot * kSize + threadIdx.x);
  fetch_chunk(sh.keys[stage], sh.values[stage], k16, v16, s, b, e, g);  // commits the group
}

// The key pass's shared memory: the chunk's K and V (resident), two stages of Q and dO with their
// lse and δ rows, and the list of slots that retrieved the chunk (as gca_v4::KeyShared).
struct KeyBackwardShared {
  wgmma::SwizzledTile keys, values;
  wgmma::SwizzledTile queries[2], douts[2];
  float lse[2][kSize], delta[2][kSize];
  float weight[2];  // the step's slot weight
  int warp_totals[gca_mma::kWarps];
  int list[gca_v4::kListCapacity];
};

}  // namespace gca_v5

// Backward pass 1 (query-major), version 4's math with its three products on wgmma. Grid (Z, H),
// one warpgroup; warp w owns queries 16w..16w+15 of (z, h). Q and dO are rounded once into
// shared memory (and, for pass 2, into q16 and dout16), and both S = Q·Kᵀ and dP = dO·Vᵀ read
// their A from there (no registers hold Q or dO). Per filled slot i (weight w):
//   S and dP issued together; P = exp2(log2(e)·(scale·S − lse)) while dP runs;
//   δ = Σ_n P dP → delta, dW[z, i] += Σ over the warp's rows of δ (one atomic per warp and slot);
//   dS = w P (dP − δ);  dQ += bf16(dS)·K (A from registers, K read as MN-major B).
// Then dq += scale·dQ. Skipped slots get δ = 0 and no gradient. dq and dweight may be null.
static __global__ void __launch_bounds__(gca_v5::kThreads, 4)
    gca_query_backward_v5(const float* q, const __nv_bfloat16* k16, const __nv_bfloat16* v16,
                          const std::int32_t* index, const float* weight, GcaShape s, float scale, const float* lse,
                          const float* dout, float* delta, float* dq, float* dweight, __nv_bfloat16* q16,
                          __nv_bfloat16* dout16, FreshGradients fresh) {
#if defined(DRT_WGMMA_DEVICE)
  using namespace gca_v5;
  using namespace mma;
  extern __shared__ unsigned char gca_query_shared_v5[];
  QueryBackwardShared& sh = *reinterpret_cast<QueryBackwardShared*>(wgmma::align_to_atom(gca_query_shared_v5));
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // δ of slot 0
  const int first = gca_mma::next_filled_slot(index, weight, z, s.Kc, 0);
  const float* lse_rows = lse + first_stat;
  if (first < s.Kc) fetch_chunk_and_lse(sh, 0, k16, v16, s, b, index[z * s.Kc + first], kv, lse_rows, first);
  gca_v4::collect_filled_slots(sh.filled, index, weight, z, s.Kc);
  wgmma::stage_two_bf16_swizzled<kThreads>(sh.queries, q + first_query * kSize,
                                           q16 ? q16 + first_query * kSize : nullptr, sh.douts,
                                           dout + first_query * kSize, dout16 ? dout16 + first_query * kSize : nullptr);
  for (int slot = 0; slot < s.Kc; ++slot)  // nothing flowed through a skipped slot
    if (threadIdx.x < kSize && gca_mma::slot_skipped(index, weight, z, s.Kc, slot))
      delta[first_stat + slot * kSize + threadIdx.x] = 0.0f;
  wgmma::fence_shared_for_wgmma();  // Q and dO, for the wgmmas (published by the barrier below)
  __syncthreads();                  // the slot table, Q and dO
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 dq_acc;
  dq_acc.zero();
  const int count = sh.filled.count;
  for (int n = 0; n < count; ++n) {
    const int stage = n & 1;
    next_tile_then_wait(n + 1 < count, [&] {
      fetch_chunk_and_lse(sh, stage ^ 1, k16, v16, s, b, sh.filled.chunk[n + 1], kv, lse_rows, sh.filled.slot[n + 1]);
    });
    const int i = sh.filled.slot[n];
    const float w = sh.filled.weight[n];
    const long long stat = first_stat + i * kSize;
    const float lse_log2[2] = {sh.lse[stage][at.row(0)] * kLog2e, sh.lse[stage][at.row(2)] * kLog2e};
    Accumulator16x64 p, ds;  // S then P;  dP then dS
    wgmma::fence();
    wgmma::multiply_tile_by_transposed_async(p, sh.queries, sh.keys[stage]);
    wgmma::multiply_tile_by_transposed_async(ds, sh.douts, sh.values[stage]);
    wgmma::wait<1>();  // S (dP may still run)
    wgmma::hold(p);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) p.c[j][u] = exp2_flush(p.c[j][u] * to_log2 - lse_log2[u / 2]);
    wgmma::wait<0>();
    wgmma::hold(ds);
    gca_v4::slot_delta_and_ds(ds, p, w, delta + stat, dweight ? dweight + z * s.Kc + i : nullptr, dq != nullptr);
    if (dq) {
      std::uint32_t dsa[4][4];  // bf16(dS) as A fragments
      a_fragments(dsa, ds);
      wgmma::fence();
      wgmma::multiply_accumulate_async(dq_acc, dsa, sh.keys[stage]);
      wgmma::wait<0>();
      wgmma::hold(dq_acc);
      wgmma::hold(dsa);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  if (dq) gca_v4::add_query_gradient(dq + first_query * kSize, dq_acc, scale, fresh.dq);
#endif
}

// Backward pass 2 (key-major): dK and dV, version 4's walk with its four products on wgmma. Grid
// (E, Hkv, B), one warpgroup; the block owns chunk e of sequence b, kv head g, and warp w its keys
// 16w..16w+15. The slots that retrieved e are collected as in version 4 and walked (× the heads
// of the group) through two stages of Q, dO, lse and δ. Per step, keys as rows:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ issued together (A = K, V from shared memory);
//   Pᵀ = w·exp2(log2(e)·(scale·Sᵀ − lse)) while dPᵀ runs;  dSᵀ = Pᵀ ∘ (dPᵀ − δ);
//   dV += bf16(Pᵀ)·dO and dK += bf16(dSᵀ)·Q issued together (A from registers).
// Then dk += scale·dK and dv += dV on the block's own rows (no atomics). dk or dv may be null.
static __global__ void __launch_bounds__(gca_v5::kThreads, 3)
    gca_key_backward_v5(const __nv_bfloat16* k16, const __nv_bfloat16* v16, const __nv_bfloat16* q16,
                        const __nv_bfloat16* dout16, const std::int32_t* index, const float* weight, GcaShape s,
                        float scale, const float* lse, const float* delta, float* dk, float* dv,
                        FreshGradients fresh) {
#if defined(DRT_WGMMA_DEVICE)
  using namespace gca_v5;
  using namespace mma;
  extern __shared__ unsigned char gca_key_shared_v5[];
  KeyBackwardShared& sh = *reinterpret_cast<KeyBackwardShared*>(wgmma::align_to_atom(gca_key_shared_v5));
  const int e = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const FragmentLane at;
  const int heads = s.heads_per_kv;
  // Step i: list entry i / heads, query head g·heads + i % heads.
  auto fetch_step = [&](int i, int stage) {
    const int entry = sh.list[i / heads];
    const int z = entry / s.Kc, slot = entry % s.Kc, h = g * heads + i % heads;
    const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + slot) * kSize;
    wgmma::stage_rows_swizzled_async<kThreads>(sh.queries[stage], q16 + first_query * kSize, kSize);
    wgmma::stage_rows_swizzled_async<kThreads>(sh.douts[stage], dout16 + first_query * kSize, kSize);
    if (threadIdx.x < kSize) {
      copy_async_4(&sh.lse[stage][threadIdx.x], lse + stat + threadIdx.x);
      copy_async_4(&sh.delta[stage][threadIdx.x], delta + stat + threadIdx.x);
    }
    // The weight comes with the stage: read from global memory in the step, it put a memory
    // latency in front of the step's softmax.
    if (threadIdx.x == 0) copy_async_4(&sh.weight[stage], weight + entry);
    commit_async_copies();
  };
  const float to_log2 = scale * kLog2e;
  const long long sequence_first = static_cast<long long>(b) * s.rows_per_sequence * s.Kc;
  const long long sequence_end = sequence_first + static_cast<long long>(s.rows_per_sequence) * s.Kc;
  // K and V are requested before the scan (their rows depend only on the block's chunk), so their
  // latency overlaps it; they join the first step's commit group. A chunk nobody retrieved reads
  // them for nothing, and waits for them before it leaves.
  {
    const long long first_row = gca_key_row(s, b, e, 0, g) * kSize, row_stride = static_cast<long long>(s.Hkv) * kSize;
    wgmma::stage_rows_swizzled_async<kThreads>(sh.keys, k16 + first_row, row_stride);
    wgmma::stage_rows_swizzled_async<kThreads>(sh.values, v16 + first_row, row_stride);
  }
  bool started = false;  // some step ran: the accumulators hold gradients
  Accumulator16x64 dk_acc, dv_acc;
  dk_acc.zero();
  dv_acc.zero();
  for (long long from = sequence_first; from < sequence_end; from += gca_v4::kListCapacity) {
    const long long to = from + gca_v4::kListCapacity < sequence_end ? from + gca_v4::kListCapacity : sequence_end;
    const int steps = gca_v4::collect_retrievals(sh.warp_totals, sh.list, index, weight, e, from, to) * heads;
    if (steps == 0) continue;
    started = true;
    fetch_step(0, 0);
    for (int i = 0; i < steps; ++i) {
      const int stage = i & 1;
      next_tile_then_wait(i + 1 < steps, [&] { fetch_step(i + 1, stage ^ 1); });
      const float w = sh.weight[stage];
      const float* stage_lse = sh.lse[stage];
      const float* stage_delta = sh.delta[stage];
      Accumulator16x64 p, ds;  // Sᵀ then w·Pᵀ;  dPᵀ then dSᵀ (rows keys, columns queries)
      wgmma::fence();
      wgmma::multiply_tile_by_transposed_async(p, sh.keys, sh.queries[stage]);
      wgmma::multiply_tile_by_transposed_async(ds, sh.values, sh.douts[stage]);
      wgmma::wait<1>();  // Sᵀ (dPᵀ may still run)
      wgmma::hold(p);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u)
          p.c[j][u] = w * exp2_flush(p.c[j][u] * to_log2 - stage_lse[at.col(j, u)] * kLog2e);
      wgmma::wait<0>();  // dPᵀ
      wgmma::hold(ds);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u) ds.c[j][u] = p.c[j][u] * (ds.c[j][u] - stage_delta[at.col(j, u)]);
      // Both packed before either product is issued: the four fp32 tiles (Pᵀ, dSᵀ, dK, dV) are
      // never live beside the A fragments the products hold until they finish.
      std::uint32_t pa[4][4], dsa[4][4];  // bf16(w·Pᵀ), bf16(dSᵀ) as A fragments
      a_fragments(pa, p);
      a_fragments(dsa, ds);
      wgmma::fence();
      wgmma::multiply_accumulate_async(dv_acc, pa, sh.douts[stage]);
      wgmma::multiply_accumulate_async(dk_acc, dsa, sh.queries[stage]);
      wgmma::wait<0>();
      wgmma::hold(dv_acc);
      wgmma::hold(dk_acc);
      wgmma::hold(pa);
      wgmma::hold(dsa);
      __syncthreads();  // every warp is done with this stage before it is refilled
    }
  }
  if (!started) wait_async_copies();  // nobody retrieved this chunk: K and V were never waited for
  gca_v4::finish_chunk_gradients(dk, dv, dk_acc, dv_acc, s, b, e, g, scale, started, fresh.dk, fresh.dv);
#endif
}

namespace gca_v5 {

// The forward on the host: the chunk memory's bf16 copies (as gca_v4::forward: once per call, or
// once per RoundedOperandReuse scope naming it), their tensor maps, the launch.
static inline void forward(const float* q, const float* k, const float* v, const std::int32_t* index,
                           const float* weight, const GcaShape& s, float scale, float* out, float* lse) {
  const long long rows = static_cast<long long>(s.B) * s.E * s.N;
  const auto k16 = bf16_operand(k, rows * s.Hkv * kSize), v16 = bf16_operand(v, rows * s.Hkv * kSize);
  const CUtensorMap keys_map = tma::head_rows_map(as_bf16(k16), rows, s.Hkv);
  const CUtensorMap values_map = tma::head_rows_map(as_bf16(v16), rows, s.Hkv);
  gca_forward_v5<<<dim3(unsigned(s.Z), unsigned(s.H)), kThreads, 0, ::drt::cuda::stream()>>>(
      q, keys_map, values_map, index, weight, s, scale, out, lse);
  DRT_CUDA_CHECK_LAUNCH();
}

// Version 5's backward passes for gca_v4::backward (each asks for an atom more than its shared
// memory, for align_to_atom).
static inline gca_v4::BackwardKernels backward_kernels() {
  return {gca_query_backward_v5, int(sizeof(QueryBackwardShared)) + wgmma::kAtomBytes, gca_key_backward_v5,
          int(sizeof(KeyBackwardShared)) + wgmma::kAtomBytes};
}

}  // namespace gca_v5

}  // namespace drt::cuda::attention
