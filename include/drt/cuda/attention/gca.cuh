// drt/cuda/attention/gca.cuh — Grouped Cross-Attention on the GPU, forward and backward (the CPU
// op in drt/attention/gca.hpp is the reference and states the math).
//
// Shapes: q (Z, H, M, d), k and v (B, E, N, Hkv, d), index (Z, Kc) int32 (−1 = empty slot),
// weight (Z, Kc), out (Z, H, M, d), lse (Z, H, Kc, M) (−inf for a skipped slot).
//
// Version 1 (any shape, float or double): one warp per query (z, h, m), lanes splitting d, an
// online softmax per retrieved chunk, chunks read in place through `index`. The backward:
//   1. per query: recompute o_i, δ_i = ⟨dO, o_i⟩, dQ += scale·Σ_i w_i Σ_n P (⟨dO, v_n⟩ − δ_i) k_n;
//   2. per (z, i): dW[z, i] += Σ_{h,m} δ (one thread; H·M terms);
//   3. per key (z, h, i, n) of a retrieved chunk: its dK/dV contribution summed over the M
//      queries, then added to the chunk memory with atomics (several rows retrieve the same
//      chunk), so fp32 dK/dV may differ in the last bits between runs.
// Version 2 (float, M, N, d ≤ 64; DRT's shapes): the same passes with one thread per query (or
// per key) and the retrieved chunk (or the row's queries) staged in shared memory as a tile
// (drt/cuda/attention/tiles.cuh); blocks per (z, h) or per (z, i, h). Both are fp32 CUDA-core
// kernels.
// Version 3 (float, M = N = d = 64, and matmul_precision() == bf16): the products on bf16 tensor
// cores (mma.sync, drt/cuda/attention/mma.cuh) with fp32 accumulators and an fp32 softmax; one
// block of four warps per (z, h), each warp owning 16 queries. q, k, v (and dO) are rounded to
// bf16, as cuBLAS's operands are in bf16 mode (k and v into a bf16 copy made once per call,
// which the blocks gather from; q and dO as they are staged); so are P (before P·V) and, in the
// backward, P and dS (before the products that consume them). Everything stored stays fp32.
// Version 4 (the same calls; gca_v4.cuh): version 3's math with cp.async-staged chunks and fewer
// registers, P normalised and weighted before P·V, and a backward in two passes (query-major:
// dQ, δ, dW fused; key-major per memory chunk: dK/dV in registers, no atomics).
// Version 5 (gca_v5.cuh; sm_90a builds on H100/H200): version 4's kernels with every product on
// Hopper's warpgroup MMA (wgmma).
// gca_version() says which version a call takes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "drt/core/precision.hpp"
#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/fresh_gradients.cuh"
#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/bf16.cuh"
#include "drt/cuda/attention/tiles.cuh"
#include "drt/cuda/attention/version.cuh"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace attention {

struct GcaShape {
  int Z, H, M, d, B, E, N, Hkv, Kc, rows_per_sequence, heads_per_kv;
};

// Row of key/value n of chunk e, sequence b, kv head g in the (B, E, N, Hkv, d) memory.
__device__ inline long long gca_key_row(const GcaShape& s, int b, int e, int n, int g) {
  return ((static_cast<long long>(b) * s.E + e) * s.N + n) * s.Hkv + g;
}

template <class T>
__global__ void gca_forward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index, const T* weight,
                                   GcaShape s, T scale, T* out, T* lse) {
  const long long query = warp_index();  // (z, h, m) in q's row order
  if (query >= static_cast<long long>(s.Z) * s.H * s.M) return;
  const int lane = lane_index();
  const int m = static_cast<int>(query % s.M), h = static_cast<int>((query / s.M) % s.H), z = static_cast<int>(query / (static_cast<long long>(s.M) * s.H));
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const T* qrow = q + query * s.d;
  T total[kPerLane] = {};
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const T w = weight[z * s.Kc + i];
    T* lse_slot = lse + ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == T(0)) {  // skipped, as on the CPU
      if (lane == 0) *lse_slot = minus_infinity<T>();
      continue;
    }
    T running_max = minus_infinity<T>(), running_sum = T(0), acc[kPerLane] = {};
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T score = scale * warp_dot(qrow, k + key * s.d, s.d, lane);
      const T new_max = ::fmax(running_max, score);
      const T rescale = device_exp(running_max - new_max), p = device_exp(score - new_max);
      running_sum = running_sum * rescale + p;
      running_max = new_max;
      const T* vrow = v + key * s.d;
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) acc[c] = acc[c] * rescale + p * vrow[x];
    }
    const T norm = w / running_sum;
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) total[c] += norm * acc[c];
    if (lane == 0) *lse_slot = running_max + device_log(running_sum);
  }
  for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) out[query * s.d + x] = total[c];
}

// Pass 1: δ (Z, H, Kc, M) and dQ.
template <class T>
__global__ void gca_query_backward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index,
                                          const T* weight, GcaShape s, T scale, const T* lse, const T* dout,
                                          T* delta, T* dq) {
  const long long query = warp_index();
  if (query >= static_cast<long long>(s.Z) * s.H * s.M) return;
  const int lane = lane_index();
  const int m = static_cast<int>(query % s.M), h = static_cast<int>((query / s.M) % s.H), z = static_cast<int>(query / (static_cast<long long>(s.M) * s.H));
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const T *qrow = q + query * s.d, *dorow = dout + query * s.d;
  T dq_acc[kPerLane] = {};
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const T w = weight[z * s.Kc + i];
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == T(0)) {
      if (lane == 0) delta[stat] = T(0);
      continue;
    }
    const T row_lse = lse[stat];
    T o[kPerLane] = {};  // o_i, recomputed from lse
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T p = device_exp(scale * warp_dot(qrow, k + key * s.d, s.d, lane) - row_lse);
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) o[c] += p * v[key * s.d + x];
    }
    T partial = T(0);
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) partial += dorow[x] * o[c];
    const T slot_delta = warp_sum(partial);
    if (lane == 0) delta[stat] = slot_delta;
    if (!dq) continue;
    for (int n = 0; n < s.N; ++n) {
      const long long key = gca_key_row(s, b, e, n, g);
      const T* krow = k + key * s.d;
      const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - row_lse);
      const T ds = w * p * (warp_dot(dorow, v + key * s.d, s.d, lane) - slot_delta);
      for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) dq_acc[c] += ds * krow[x];
    }
  }
  if (dq)
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) dq[query * s.d + x] += scale * dq_acc[c];
}

// Pass 2: dW[z, i] += Σ_{h,m} δ.
template <class T>
__global__ void gca_weight_backward_kernel(const T* delta, GcaShape s, T* dweight) {
  const long long slot = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;  // (z, i)
  if (slot >= static_cast<long long>(s.Z) * s.Kc) return;
  const int i = static_cast<int>(slot % s.Kc), z = static_cast<int>(slot / s.Kc);
  T acc = T(0);
  for (int h = 0; h < s.H; ++h)
    for (int m = 0; m < s.M; ++m) acc += delta[((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m];
  dweight[slot] += acc;
}

// Pass 3: for key n of the chunk that (z, i) retrieved, head h: its dK and dV over the M queries.
template <class T>
__global__ void gca_key_backward_kernel(const T* q, const T* k, const T* v, const std::int32_t* index, const T* weight,
                                        GcaShape s, T scale, const T* lse, const T* delta, const T* dout, T* dk, T* dv) {
  const long long item = warp_index();  // (z, h, i, n)
  if (item >= static_cast<long long>(s.Z) * s.H * s.Kc * s.N) return;
  const int lane = lane_index();
  const int n = static_cast<int>(item % s.N), i = static_cast<int>((item / s.N) % s.Kc);
  const int h = static_cast<int>((item / (static_cast<long long>(s.N) * s.Kc)) % s.H);
  const int z = static_cast<int>(item / (static_cast<long long>(s.N) * s.Kc * s.H));
  const int e = index[z * s.Kc + i];
  const T w = weight[z * s.Kc + i];
  if (e < 0 || w == T(0)) return;
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const long long key = gca_key_row(s, b, e, n, g);
  const T *krow = k + key * s.d, *vrow = v + key * s.d;
  T dk_acc[kPerLane] = {}, dv_acc[kPerLane] = {};
  for (int m = 0; m < s.M; ++m) {
    const long long query = (static_cast<long long>(z) * s.H + h) * s.M + m;
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    const T *qrow = q + query * s.d, *dorow = dout + query * s.d;
    const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - lse[stat]);
    const T ds = w * p * (warp_dot(dorow, vrow, s.d, lane) - delta[stat]);
    for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) {
      dk_acc[c] += ds * qrow[x];
      dv_acc[c] += w * p * dorow[x];
    }
  }
  for (int c = 0, x = lane; x < s.d; ++c, x += kWarp) {
    if (dk) atomicAdd(dk + key * s.d + x, scale * dk_acc[c]);
    if (dv) atomicAdd(dv + key * s.d + x, dv_acc[c]);
  }
}

// ---- version 2: tiled, one thread per row ------------------------------------------------------

// Stages rows n < N of chunk e (sequence b, kv head g) of the memory `base`.
__device__ inline void stage_chunk(tiles::Tile& tile, const float* base, const GcaShape& s, int b, int e, int g) {
  tiles::stage(tile, s.d, [&](int n) -> const float* { return n < s.N ? base + gca_key_row(s, b, e, n, g) * s.d : nullptr; });
}

// Grid (Z, H), 64 threads: thread m is query (z, h, m).
static __global__ void __launch_bounds__(tiles::kTile) gca_forward_tiled(const float* q, const float* k, const float* v,
                                                                  const std::int32_t* index, const float* weight,
                                                                  GcaShape s, float scale, float* out, float* lse) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int z = blockIdx.x, h = blockIdx.y, m = threadIdx.x;
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const bool active = m < s.M;
  const long long query = (static_cast<long long>(z) * s.H + h) * s.M + (active ? m : 0);
  float qr[kTileD], total[kTileD] = {};
  load_row(qr, q + query * s.d, s.d, scale);
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const float w = weight[z * s.Kc + i];
    float* lse_slot = lse + ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == 0.0f) {  // skipped, as on the CPU (the same for the whole block)
      if (active) *lse_slot = -INFINITY;
      continue;
    }
    __syncthreads();
    stage_chunk(keys, k, s, b, e, g);
    stage_chunk(values, v, s, b, e, g);
    __syncthreads();
    if (!active) continue;
    OnlineSoftmax softmax;
    softmax.add_tile(qr, keys, values, s.N, [](int) { return 0.0f; });
    const float norm = w / softmax.sum;
#pragma unroll
    for (int c = 0; c < kTileD; ++c) total[c] += norm * softmax.acc[c];
    *lse_slot = softmax.max + logf(softmax.sum);
  }
  if (!active) return;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) out[query * s.d + c] = total[c];
}

// Pass 1: δ (Z, H, Kc, M) and dQ. Grid (Z, H), thread m. δ_i = ⟨dO, o_i⟩ = Σ_n P_n ⟨dO, v_n⟩ is
// summed first (a scalar: no o_i in registers), then dQ += w_i Σ_n P_n (⟨dO, v_n⟩ − δ_i) k_n.
static __global__ void __launch_bounds__(tiles::kTile) gca_query_backward_tiled(const float* q, const float* k,
                                                                         const float* v, const std::int32_t* index,
                                                                         const float* weight, GcaShape s, float scale,
                                                                         const float* lse, const float* dout,
                                                                         float* delta, float* dq) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int z = blockIdx.x, h = blockIdx.y, m = threadIdx.x;
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const bool active = m < s.M;
  const long long query = (static_cast<long long>(z) * s.H + h) * s.M + (active ? m : 0);
  float qr[kTileD], dor[kTileD], acc[kTileD] = {};
  load_row(qr, q + query * s.d, s.d, scale);
  load_row(dor, dout + query * s.d, s.d);
  for (int i = 0; i < s.Kc; ++i) {
    const int e = index[z * s.Kc + i];
    const float w = weight[z * s.Kc + i];
    const long long stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M + m;
    if (e < 0 || w == 0.0f) {
      if (active) delta[stat] = 0.0f;
      continue;
    }
    __syncthreads();
    stage_chunk(keys, k, s, b, e, g);
    stage_chunk(values, v, s, b, e, g);
    __syncthreads();
    if (!active) continue;
    const float row_lse = lse[stat];
    float slot_delta = 0.0f;
    for (int n = 0; n < s.N; ++n)
      slot_delta += expf(dot(qr, keys.row[n]) - row_lse) * dot(dor, values.row[n]);
    delta[stat] = slot_delta;
    if (!dq) continue;
    for (int n = 0; n < s.N; ++n) {
      const float p = expf(dot(qr, keys.row[n]) - row_lse);
      axpy(acc, w * p * (dot(dor, values.row[n]) - slot_delta), keys.row[n]);
    }
  }
  if (!active || !dq) return;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) dq[query * s.d + c] += scale * acc[c];
}

// Pass 3: grid (Z, Kc, H), thread n is key n of the chunk that (z, i) retrieved, kv head g; the
// row's M queries (and their dO, lse, δ) are staged. Atomics add into the chunk memory.
//   want_dv: dV_n += Σ_m w P_mn dO_m           (registers: k_n, dV_n)
//   else:    dK_n += scale · Σ_m dS_mn q_m       (registers: k_n, v_n, dK_n)
template <bool want_dv>
static __global__ void __launch_bounds__(tiles::kTile) gca_key_backward_tiled(const float* q, const float* k, const float* v,
                                                                       const std::int32_t* index, const float* weight,
                                                                       GcaShape s, float scale, const float* lse,
                                                                       const float* delta, const float* dout,
                                                                       float* grad) {
  using namespace tiles;
  __shared__ Tile queries, douts;
  __shared__ float tile_lse[kTile], tile_delta[kTile];
  const int z = blockIdx.x, i = blockIdx.y, h = blockIdx.z, n = threadIdx.x;
  const int e = index[z * s.Kc + i];
  const float w = weight[z * s.Kc + i];
  if (e < 0 || w == 0.0f) return;  // the whole block: no gradient for a skipped slot
  const int b = z / s.rows_per_sequence, g = h / s.heads_per_kv;
  const bool active = n < s.N;
  const long long key = gca_key_row(s, b, e, active ? n : 0, g);
  const long long first_query = (static_cast<long long>(z) * s.H + h) * s.M;
  const long long first_stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * s.M;
  stage(queries, s.d, [&](int r) -> const float* { return r < s.M ? q + (first_query + r) * s.d : nullptr; });
  stage(douts, s.d, [&](int r) -> const float* { return r < s.M ? dout + (first_query + r) * s.d : nullptr; });
  if (threadIdx.x < kTile) {
    tile_lse[threadIdx.x] = threadIdx.x < s.M ? lse[first_stat + threadIdx.x] : 0.0f;
    tile_delta[threadIdx.x] = threadIdx.x < s.M ? delta[first_stat + threadIdx.x] : 0.0f;
  }
  __syncthreads();
  if (!active) return;
  float kr[kTileD], vr[kTileD], acc[kTileD] = {};
  load_row(kr, k + key * s.d, s.d, scale);
  if (!want_dv) load_row(vr, v + key * s.d, s.d);
  for (int r = 0; r < s.M; ++r) {
    const float wp = w * expf(dot(kr, queries.row[r]) - tile_lse[r]);
    if (want_dv) axpy(acc, wp, douts.row[r]);
    else axpy(acc, wp * (dot(vr, douts.row[r]) - tile_delta[r]), queries.row[r]);
  }
  const float factor = want_dv ? 1.0f : scale;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) atomicAdd(grad + key * s.d + c, factor * acc[c]);
}

// ---- version 3: bf16 tensor cores (mma.sync), M = N = d = 64 ------------------------------------

namespace gca_mma {  // version 3's constants and helpers (the window kernels have their own)

using namespace mma;

inline constexpr int kSize = 64;               // M = N = d: one 64×64 tile per chunk, per row's queries
inline constexpr int kWarps = 4;               // warp w owns queries 16w..16w+15
inline constexpr int kThreads = kWarps * kWarp;

// Keys and values, twice: the next retrieved chunk lands (cp.async) in one pair while the warps
// multiply the current chunk from the other, so the gather's latency hides behind the products.
struct ChunkBuffers {
  BfTile keys[2], values[2];
};

// Starts fetching chunk e of sequence b, kv head g of the bf16 memory into buffer `which`.
__device__ inline void fetch_chunk(ChunkBuffers& chunks, int which, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                   const GcaShape& s, int b, int e, int g) {
  // The chunk's 64 rows are Hkv rows apart in the (B, E, N, Hkv, d) memory.
  const long long first_row = gca_key_row(s, b, e, 0, g) * kSize, row_stride = static_cast<long long>(s.Hkv) * kSize;
  stage_rows_async<kThreads>(chunks.keys[which], k + first_row, row_stride);
  stage_rows_async<kThreads>(chunks.values[which], v + first_row, row_stride);
  commit_async_copies();
}

// Waits until the fetched chunk has landed for the whole block. The barrier also guarantees that
// every warp is done with the chunk before, so its buffer may take the next fetch.
__device__ inline void wait_for_chunk() {
  wait_async_copies();
  __syncthreads();
}

// A slot is skipped (no work, no gradient) when it retrieved nothing or has weight exactly 0.
__device__ inline bool slot_skipped(const std::int32_t* index, const float* weight, int z, int Kc, int i) {
  return index[z * Kc + i] < 0 || weight[z * Kc + i] == 0.0f;
}

// The first slot at or after i that is not skipped, or Kc.
__device__ inline int next_filled_slot(const std::int32_t* index, const float* weight, int z, int Kc, int i) {
  while (i < Kc && slot_skipped(index, weight, z, Kc, i)) ++i;
  return i;
}

// The backward's shared memory: eight bf16 tiles, 73,728 bytes (dynamic: above the 48 KB of
// static shared memory).
struct BackwardShared {
  BfTile queries, douts, weighted_probs, dscores;
  ChunkBuffers chunks;
};

}  // namespace gca_mma

// Grid (Z, H), kThreads threads: warp w computes queries 16w..16w+15 of (z, h) over all Kc
// chunks. One block per (z, h), not per (z, h, chunk): the output then sums over chunks in
// registers and is written once, with no second pass or atomics, and Z·H blocks (12,432 at the
// DRT shape) already fill the GPU many times over. Per chunk, all in registers:
//   S = scale·Q Kᵀ (fp32), P = exp(S − max) (fp32; one 64-key tile, so no online rescale),
//   O_i = bf16(P)·V, out += w / Σ_n P · O_i, lse = max + log Σ_n P.
// k and v are the bf16 copies of the chunk memory. Shared memory: Q and two pairs of K, V as
// bf16 tiles (5 × 9,216 = 46,080 bytes).
static __global__ void __launch_bounds__(gca_mma::kThreads) gca_forward_mma(const float* q, const __nv_bfloat16* k,
                                                               const __nv_bfloat16* v,
                                                               const std::int32_t* index, const float* weight,
                                                               GcaShape s, float scale, float* out, float* lse) {
  using namespace gca_mma;
  __shared__ BfTile queries;
  __shared__ ChunkBuffers chunks;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  const long long first_stat = (static_cast<long long>(z) * s.H + h) * s.Kc * kSize;  // lse of slot 0
  int i = next_filled_slot(index, weight, z, s.Kc, 0);
  if (i < s.Kc) fetch_chunk(chunks, 0, k, v, s, b, index[z * s.Kc + i], kv);
  stage_bf16(queries, [&](int r) { return q + (first_query + r) * kSize; });
  for (int slot = 0; slot < s.Kc; ++slot)  // skipped, as on the CPU: −inf marks them for the backward
    if (threadIdx.x < kSize && slot_skipped(index, weight, z, s.Kc, slot))
      lse[first_stat + slot * kSize + threadIdx.x] = -INFINITY;
  __syncthreads();
  std::uint32_t qa[4][4];  // this warp's 16 queries as A fragments, for every chunk
  load_a_rows(qa, queries, at.row0);
  const float to_log2 = scale * kLog2e;  // softmax in base 2: exp2f is one instruction
  Accumulator16x64 total;
  total.zero();
  for (int buffer = 0; i < s.Kc; buffer ^= 1) {
    wait_for_chunk();
    const int next = next_filled_slot(index, weight, z, s.Kc, i + 1);
    if (next < s.Kc) fetch_chunk(chunks, buffer ^ 1, k, v, s, b, index[z * s.Kc + next], kv);
    const float w = weight[z * s.Kc + i];
    float* lse_slot = lse + first_stat + i * kSize;
    const BfTile &keys = chunks.keys[buffer], &values = chunks.values[buffer];
    Accumulator16x64 p;
    p.zero();
    multiply_by_transposed(p, qa, keys);
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        p.c[j][u] *= to_log2;
        row_max[u / 2] = fmaxf(row_max[u / 2], p.c[j][u]);
      }
    row_max[0] = group_max(row_max[0]);
    row_max[1] = group_max(row_max[1]);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        p.c[j][u] = exp2f(p.c[j][u] - row_max[u / 2]);
        row_sum[u / 2] += p.c[j][u];
      }
    row_sum[0] = group_sum(row_sum[0]);
    row_sum[1] = group_sum(row_sum[1]);
    std::uint32_t pa[4][4];
    a_fragments(pa, p);
    Accumulator16x64 o;
    o.zero();
    multiply(o, pa, values);
    const float norm[2] = {w / row_sum[0], w / row_sum[1]};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) total.c[j][u] += norm[u / 2] * o.c[j][u];
    if (at.pair == 0) {
      lse_slot[at.row(0)] = row_max[0] * kLn2 + logf(row_sum[0]);
      lse_slot[at.row(2)] = row_max[1] * kLn2 + logf(row_sum[1]);
    }
    i = next;
  }
  float* out_rows = out + first_query * kSize;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<float2*>(out_rows + at.row(2 * half) * kSize + at.col(j, 0)) =
          make_float2(total.c[j][2 * half], total.c[j][2 * half + 1]);
}

namespace gca_mma {

// Adds a warp's 16×64 fp32 block, times `factor`, to rows row(r) of the chunk memory `grad`
// (row r of the block is key `first_key + r` of chunk e) with atomics: several rows z retrieve
// the same chunk. Pairs of columns go as one 8-byte atomic (sm_90 has vector atomicAdd).
__device__ inline void add_to_chunk(float* grad, const mma::Accumulator16x64& acc, float factor, const GcaShape& s,
                                    int b, int e, int g, const FragmentLane& at) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float* row = grad + gca_key_row(s, b, e, at.row(2 * half), g) * kSize;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x = factor * acc.c[j][2 * half], y = factor * acc.c[j][2 * half + 1];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(row + at.col(j, 0)), make_float2(x, y));
#else
      atomicAdd(row + at.col(j, 0), x);
      atomicAdd(row + at.col(j, 0) + 1, y);
#endif
    }
  }
}

// Writes a warp's 16×64 fp32 block into its rows of a bf16 tile (the operand of a product
// that other warps read).
__device__ inline void store_block_bf16(mma::BfTile& tile, const mma::Accumulator16x64& acc, const FragmentLane& at) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<std::uint32_t*>(&tile.at[at.row(2 * half)][at.col(j, 0)]) =
          mma::pack_bf16x2(acc.c[j][2 * half], acc.c[j][2 * half + 1]);
}


}  // namespace gca_mma

// Grid (Z, H), kThreads threads, sizeof(BackwardShared) bytes of dynamic shared memory; k and v
// are the bf16 copies of the chunk memory, dk and dv the fp32 gradients. For each retrieved
// chunk i:
//   per warp (its 16 queries, registers):
//     P  = exp(scale·Q Kᵀ − lse)             recomputed (fp32)
//     dP = dO Vᵀ                             (fp32)
//     δ  = Σ_n P dP  (= ⟨dO, o_i⟩, what version 2 writes; the weight kernel sums it)
//     dS = w P (dP − δ);  dQ += dS K          (dQ stays in registers over all chunks)
//   then w·P and dS go to shared memory as bf16 and each warp takes 16 KEYS instead:
//     dV += (w P)ᵀ dO,  dK += scale · dSᵀ Q   added to the chunk memory with atomics.
// Finally dq += scale · dQ (this block owns those rows: no atomics). Skipped slots get δ = 0
// and no gradient, as in version 2.
static __global__ void __launch_bounds__(gca_mma::kThreads) gca_backward_mma(const float* q, const __nv_bfloat16* k,
                                                                const __nv_bfloat16* v,
                                                                const std::int32_t* index, const float* weight,
                                                                GcaShape s, float scale, const float* lse,
                                                                const float* dout, float* delta, float* dq, float* dk,
                                                                float* dv) {
  using namespace gca_mma;
  extern __shared__ __align__(16) unsigned char gca_shared[];
  BackwardShared& shared = *reinterpret_cast<BackwardShared*>(gca_shared);
  const BfTile &queries = shared.queries, &douts = shared.douts;
  BfTile &weighted_probs = shared.weighted_probs, &dscores = shared.dscores;
  const int z = blockIdx.x, h = blockIdx.y;
  const int b = z / s.rows_per_sequence, kv = h / s.heads_per_kv;
  const FragmentLane at;
  const long long first_query = (static_cast<long long>(z) * s.H + h) * kSize;
  int i = next_filled_slot(index, weight, z, s.Kc, 0);
  if (i < s.Kc) fetch_chunk(shared.chunks, 0, k, v, s, b, index[z * s.Kc + i], kv);
  stage_bf16(shared.queries, [&](int r) { return q + (first_query + r) * kSize; });
  stage_bf16(shared.douts, [&](int r) { return dout + (first_query + r) * kSize; });
  for (int slot = 0; slot < s.Kc; ++slot)  // nothing flowed through a skipped slot
    if (threadIdx.x < kSize && slot_skipped(index, weight, z, s.Kc, slot))
      delta[((static_cast<long long>(z) * s.H + h) * s.Kc + slot) * kSize + threadIdx.x] = 0.0f;
  const float to_log2 = scale * kLog2e;
  Accumulator16x64 dq_acc;
  dq_acc.zero();
  for (int buffer = 0; i < s.Kc; buffer ^= 1) {
    wait_for_chunk();  // its barrier also publishes Q and dO, and frees w·P and dS of the chunk before
    const int next = next_filled_slot(index, weight, z, s.Kc, i + 1);
    if (next < s.Kc) fetch_chunk(shared.chunks, buffer ^ 1, k, v, s, b, index[z * s.Kc + next], kv);
    const BfTile &keys = shared.chunks.keys[buffer], &values = shared.chunks.values[buffer];
    const int e = index[z * s.Kc + i];
    const float w = weight[z * s.Kc + i];
    const long long first_stat = ((static_cast<long long>(z) * s.H + h) * s.Kc + i) * kSize;
    std::uint32_t a[4][4];
    load_a_rows(a, queries, at.row0);
    Accumulator16x64 p;
    p.zero();
    multiply_by_transposed(p, a, keys);
    const float lse_log2[2] = {lse[first_stat + at.row(0)] * kLog2e, lse[first_stat + at.row(2)] * kLog2e};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) p.c[j][u] = exp2f(p.c[j][u] * to_log2 - lse_log2[u / 2]);
    load_a_rows(a, douts, at.row0);
    Accumulator16x64 ds;  // dP, then dS in place
    ds.zero();
    multiply_by_transposed(ds, a, values);
    float slot_delta[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) slot_delta[u / 2] += p.c[j][u] * ds.c[j][u];
    slot_delta[0] = group_sum(slot_delta[0]);
    slot_delta[1] = group_sum(slot_delta[1]);
    if (at.pair == 0) {
      delta[first_stat + at.row(0)] = slot_delta[0];
      delta[first_stat + at.row(2)] = slot_delta[1];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        p.c[j][u] *= w;
        ds.c[j][u] = p.c[j][u] * (ds.c[j][u] - slot_delta[u / 2]);
      }
    if (dq) {
      a_fragments(a, ds);
      multiply(dq_acc, a, keys);
    }
    if (!dk && !dv) {
      i = next;
      continue;
    }
    store_block_bf16(weighted_probs, p, at);
    store_block_bf16(dscores, ds, at);
    __syncthreads();
    // From here the warp's 16 rows are keys row0..row0+15 of the chunk.
    Accumulator16x64 grad;
    if (dv) {
      load_a_rows_transposed(a, weighted_probs, at.row0);
      grad.zero();
      multiply(grad, a, douts);
      add_to_chunk(dv, grad, 1.0f, s, b, e, kv, at);
    }
    if (dk) {
      load_a_rows_transposed(a, dscores, at.row0);
      grad.zero();
      multiply(grad, a, queries);
      add_to_chunk(dk, grad, scale, s, b, e, kv, at);
    }
    i = next;
  }
  if (!dq) return;
  float* dq_rows = dq + first_query * kSize;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float2* cell = reinterpret_cast<float2*>(dq_rows + at.row(2 * half) * kSize + at.col(j, 0));
      const float2 old = *cell;
      *cell = make_float2(old.x + scale * dq_acc.c[j][2 * half], old.y + scale * dq_acc.c[j][2 * half + 1]);
    }
}

}  // namespace attention
}  // namespace drt::cuda

// Version 4 builds on version 3's shape and helpers above.
#include "drt/cuda/attention/gca_v4.cuh"
#include "drt/cuda/attention/gca_v5.cuh"

namespace drt::cuda {
namespace attention {

inline bool use_tiled(const GcaShape& s) {
  return s.M <= tiles::kTile && s.N <= tiles::kTile && s.d <= tiles::kTileD;
}

inline GcaShape gca_shape(const Shape& q, const Shape& k, const Shape& index) {
  DRT_CHECK(q[3] <= kMaxHeadDim, "gca on the GPU: head width ", q[3], " is above ", kMaxHeadDim);
  GcaShape s{int(q[0]), int(q[1]), int(q[2]), int(q[3]), int(k[0]), int(k[1]), int(k[2]), int(k[3]), int(index[1]), 0, 0};
  s.rows_per_sequence = s.Z / s.B;
  s.heads_per_kv = s.H / s.Hkv;
  return s;
}

// The version a call takes: 5 (version 4 on wgmma, forward and backward) where 4 fits and the build and the
// device run sm_90a code (wgmma::wgmma_available); 4 (bf16 tensor cores, cp.async stages,
// key-major dK/dV) for float at M = N = d = 64 when the precision switch says bf16, the tensors
// allow 16-byte vector access and Kc ≤ 64 (its slot table's size), or 3 on the same calls under a
// cap of 3 or with Kc > 64;
// 2 (tiled fp32) for other float shapes with M, N, d ≤ 64; 1 for everything else (double,
// larger shapes).
// version_cap() (version.cuh) lowers the ceiling for the kernel lab.
template <class T>
int gca_version(const GcaShape& s, Precision precision, bool vector_aligned = true) {
  if (!std::is_same_v<T, float>) return 1;
  if (precision == Precision::bf16 && vector_aligned && s.M == gca_mma::kSize && s.N == gca_mma::kSize &&
      s.d == gca_mma::kSize) {
    if (version_cap() >= 5 && s.Kc <= gca_v4::kMaxSlots && wgmma::wgmma_available()) return 5;
    if (version_cap() >= 4 && s.Kc <= gca_v4::kMaxSlots) return 4;
    if (version_cap() >= 3) return 3;
  }
  return version_cap() >= 2 && use_tiled(s) ? 2 : 1;
}

}  // namespace attention

// Writes out (Z, H, M, d) and lse (Z, H, Kc, M); everything contiguous and on the GPU.
template <class T>
void gca_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                 const Tensor<T>& weight, T scale, const Tensor<T>& out, const Tensor<T>& lse) {
  const attention::GcaShape s = attention::gca_shape(q.shape(), k.shape(), index.shape());
  const long long queries = static_cast<long long>(s.Z) * s.H * s.M;
  if (queries == 0) return;
  const bool aligned = attention::all_aligned(16, {q.data(), k.data(), v.data(), out.data()});
  const int version = attention::gca_version<T>(s, matmul_precision(), aligned);
  if constexpr (std::is_same_v<T, float>) {
    if (version == 5) {
      attention::gca_v5::forward(q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, out.data(),
                                 lse.data());
      return;
    }
    if (version == 4) {
      attention::gca_v4::forward(q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, out.data(),
                                 lse.data());
      return;
    }
    if (version == 3) {
      // The chunk memory as bf16, once per call: each chunk is gathered ~Kc times (once per row
      // that retrieved it), and that gather is what bounds version 3; bf16 halves its bytes.
      const auto k16 = bf16_operand(k.data(), k.numel()), v16 = bf16_operand(v.data(), v.numel());
      attention::gca_forward_mma<<<dim3(unsigned(s.Z), unsigned(s.H)), attention::gca_mma::kThreads, 0, ::drt::cuda::stream()>>>(
          q.data(), as_bf16(k16), as_bf16(v16), index.data(), weight.data(), s, scale, out.data(),
          lse.data());
      DRT_CUDA_CHECK_LAUNCH();
      return;
    }
    if (version == 2) {
      attention::gca_forward_tiled<<<dim3(unsigned(s.Z), unsigned(s.H)), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
          q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, out.data(), lse.data());
      DRT_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  attention::gca_forward_kernel<T><<<attention::warp_grid(queries), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
      q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, out.data(), lse.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// Adds into dq, dk, dv and dweight (each may be null), as the CPU backward does; sets those that
// `fresh` names instead (their buffers uninitialised).
template <class T>
void gca_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                  const Tensor<T>& weight, T scale, const Tensor<T>& lse, const Tensor<T>& dout, const Tensor<T>* dq,
                  const Tensor<T>* dk, const Tensor<T>* dv, const Tensor<T>* dweight,
                  attention::FreshGradients fresh = {}) {
  const attention::GcaShape s = attention::gca_shape(q.shape(), k.shape(), index.shape());
  const long long queries = static_cast<long long>(s.Z) * s.H * s.M;
  auto data = [](const Tensor<T>* t) -> const void* { return t ? t->data() : nullptr; };
  const bool aligned = attention::all_aligned(16, {q.data(), k.data(), v.data(), dout.data()}) &&
                       attention::all_aligned(8, {data(dq), data(dk), data(dv)});  // float2 gradients
  const int version = attention::gca_version<T>(s, matmul_precision(), aligned);
  const bool sets_fresh = version >= 4 && queries > 0 && s.Kc > 0;
  // These kernels add (or nothing runs): a fresh buffer starts at zero.
  if (!sets_fresh) attention::zero_fresh(dq, dk, dv, fresh);
  if (queries == 0 || s.Kc == 0) return;
  const Tensor<T> delta = Tensor<T>::empty(lse.shape(), nullptr, q.device());
  if constexpr (std::is_same_v<T, float>) {
    if (version >= 4) {
      attention::gca_v4::backward(q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(),
                                  dout.data(), delta.data(), dq ? dq->data() : nullptr, dk ? dk->data() : nullptr,
                                  dv ? dv->data() : nullptr, dweight ? dweight->data() : nullptr, fresh,
                                  version == 5 ? attention::gca_v5::backward_kernels()
                                               : attention::gca_v4::backward_kernels_v4());
      return;
    }
    if (version == 3) {
      constexpr int bytes = int(sizeof(attention::gca_mma::BackwardShared));
      // Set on every call: cheap, and it holds for whichever device is current.
      DRT_CUDA_CHECK(cudaFuncSetAttribute(attention::gca_backward_mma, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
      // The chunk memory as bf16, once per call: each chunk is gathered ~Kc times (once per row
      // that retrieved it), and that gather is what bounds version 3; bf16 halves its bytes.
      const auto k16 = bf16_operand(k.data(), k.numel()), v16 = bf16_operand(v.data(), v.numel());
      attention::gca_backward_mma<<<dim3(unsigned(s.Z), unsigned(s.H)), attention::gca_mma::kThreads, bytes, ::drt::cuda::stream()>>>(
          q.data(), as_bf16(k16), as_bf16(v16), index.data(), weight.data(), s, scale, lse.data(), dout.data(), delta.data(),
          dq ? dq->data() : nullptr, dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
      DRT_CUDA_CHECK_LAUNCH();
      if (dweight) {
        const long long slots = static_cast<long long>(s.Z) * s.Kc;
        attention::gca_weight_backward_kernel<T><<<static_cast<unsigned>((slots + 127) / 128), 128, 0, ::drt::cuda::stream()>>>(
            delta.data(), s, dweight->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      return;
    }
  }
  const bool tiled = version == 2;
  if (tiled) {
    if constexpr (std::is_same_v<T, float>) {
      attention::gca_query_backward_tiled<<<dim3(unsigned(s.Z), unsigned(s.H)), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
          q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), dout.data(), delta.data(),
          dq ? dq->data() : nullptr);
    }
  } else {
    attention::gca_query_backward_kernel<T><<<attention::warp_grid(queries), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
        q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), dout.data(), delta.data(),
        dq ? dq->data() : nullptr);
  }
  DRT_CUDA_CHECK_LAUNCH();
  if (dweight) {
    const long long slots = static_cast<long long>(s.Z) * s.Kc;
    attention::gca_weight_backward_kernel<T><<<static_cast<unsigned>((slots + 127) / 128), 128, 0, ::drt::cuda::stream()>>>(delta.data(), s,
                                                                                                dweight->data());
    DRT_CUDA_CHECK_LAUNCH();
  }
  if constexpr (std::is_same_v<T, float>) {
    if (tiled) {
      const dim3 grid(unsigned(s.Z), unsigned(s.Kc), unsigned(s.H));
      if (dk) {
        attention::gca_key_backward_tiled<false><<<grid, attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), delta.data(), dout.data(),
            dk->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dv) {
        attention::gca_key_backward_tiled<true><<<grid, attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), delta.data(), dout.data(),
            dv->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      return;
    }
  }
  if (dk || dv) {
    const long long keys = queries / s.M * s.Kc * s.N;
    attention::gca_key_backward_kernel<T><<<attention::warp_grid(keys), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
        q.data(), k.data(), v.data(), index.data(), weight.data(), s, scale, lse.data(), delta.data(), dout.data(),
        dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
    DRT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace drt::cuda
