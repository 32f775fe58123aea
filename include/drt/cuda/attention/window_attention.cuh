// drt/cuda/attention/window_attention.cuh — sliding-window ALiBi attention on the GPU, forward and
// backward (the CPU op in drt/attention/window_attention.hpp is the reference).
//
// Shapes: q (B, T, H, d), k and v (B, T, Hkv, d), slopes (H), out (B, T, H, d), lse (B, H, T);
// query t of head h sees keys j ∈ [t − W, t] of kv head h / (H / Hkv) with score
// scale·⟨q_t, k_j⟩ − slope_h·(t − j).
//
// Three versions, each an online softmax over the window (running max, running sum, rescaled
// accumulator) with a backward that recomputes probabilities from lse as flash attention does;
// dK and dV walk, for each key, the queries that can see it, so no two threads write the same
// row and no atomics are needed: the result is the same on every run.
//   version 1 (any d ≤ 256, float or double): one warp per query row (forward, dQ) or key row
//     (dK, dV), lanes splitting d: simple, about 1 TFLOP/s.
//   version 2 (float, d ≤ 64; what DRT uses in fp32 and tf32 modes): one thread per row, tiles
//     of 64 keys (or queries) staged in shared memory (drt/cuda/attention/tiles.cuh); fp32 CUDA
//     cores.
//   version 3 (float, d = 64, matmul_precision() == bf16): flash-attention-2 style on bf16
//     tensor cores (mma.sync m16n8k16, drt/cuda/attention/mma.cuh), fp32 accumulators and
//     softmax; one warp per 16 rows of a 64-row tile.
//   version 4 (the same calls as version 3; drt/cuda/attention/window_attention_v4.cuh): version 3's
//     math with K/V (and Q/dO) tiles copied by cp.async from bf16 copies into two shared-memory
//     stages, fewer registers held per warp, the mask only on tiles that need it, and 128-query
//     blocks of 8 warps for the forward and dQ. The forward can hand its bf16 copies of q, k, v
//     to the backward (WindowAttentionBf16Copies, drt/attention/window_attention.hpp, where the
//     op that holds them is), which then rounds only dO, inside the δ kernel.
// window_attention_version() says which version a call takes.
//
// Included by drt/attention/window_attention.hpp (under nvcc) after it declares
// WindowAttentionBf16Copies; not meant to be included on its own.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "drt/core/precision.hpp"
#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/attention/tiles.cuh"
#include "drt/cuda/attention/version.cuh"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace attention {

struct WindowShape {
  int B, T, H, Hkv, d, W, heads_per_kv;
};

template <class T>
__global__ void window_forward_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                      T* out, T* lse) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int lane = lane_index();
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const int kv = h / s.heads_per_kv;
  const T* qrow = q + row * s.d;
  const T slope = slopes[h];
  T running_max = minus_infinity<T>(), running_sum = T(0), acc[kPerLane] = {};
  for (int j = (t > s.W ? t - s.W : 0); j <= t; ++j) {
    const long long key = (static_cast<long long>(b) * s.T + j) * s.Hkv + kv;
    const T score = scale * warp_dot(qrow, k + key * s.d, s.d, lane) - slope * T(t - j);
    const T new_max = ::fmax(running_max, score);
    const T rescale = device_exp(running_max - new_max), p = device_exp(score - new_max);
    running_sum = running_sum * rescale + p;
    running_max = new_max;
    const T* vrow = v + key * s.d;
    for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) acc[i] = acc[i] * rescale + p * vrow[e];
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) out[row * s.d + e] = acc[i] / running_sum;
  if (lane == 0) lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = running_max + device_log(running_sum);
}

// δ_t = ⟨dO_t, O_t⟩ per query row, laid out like lse (B, H, T). With dout16 (float only: version
// 4's dK/dV reads dO as bf16), the warp also writes its row of dO rounded to bf16 (nearest even,
// as bf16_copy rounds) from the values it reads here anyway: one pass over dO instead of two.
template <class T>
__global__ void window_delta_kernel(const T* out, const T* dout, WindowShape s, T* delta, __nv_bfloat16* dout16) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const T value = warp_dot(out + row * s.d, dout + row * s.d, s.d, lane_index());
  if (lane_index() == 0) delta[(static_cast<long long>(b) * s.H + h) * s.T + t] = value;
  if constexpr (std::is_same_v<T, float>) {
    if (dout16 != nullptr)
      for (int e = lane_index(); e < s.d; e += kWarp) dout16[row * s.d + e] = __float2bfloat16_rn(dout[row * s.d + e]);
  }
}

// dQ_t += scale · Σ_j P_tj (⟨dO_t, v_j⟩ − δ_t) k_j
template <class T>
__global__ void window_dq_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                 const T* lse, const T* delta, const T* dout, T* dq) {
  const long long row = warp_index();
  if (row >= static_cast<long long>(s.B) * s.T * s.H) return;
  const int lane = lane_index();
  const int h = static_cast<int>(row % s.H), t = static_cast<int>((row / s.H) % s.T), b = static_cast<int>(row / (static_cast<long long>(s.H) * s.T));
  const int kv = h / s.heads_per_kv;
  const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
  const T row_lse = lse[stat], row_delta = delta[stat], slope = slopes[h];
  const T *qrow = q + row * s.d, *dorow = dout + row * s.d;
  T acc[kPerLane] = {};
  for (int j = (t > s.W ? t - s.W : 0); j <= t; ++j) {
    const long long key = (static_cast<long long>(b) * s.T + j) * s.Hkv + kv;
    const T* krow = k + key * s.d;
    const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - slope * T(t - j) - row_lse);
    const T ds = p * (warp_dot(dorow, v + key * s.d, s.d, lane) - row_delta);
    for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) acc[i] += ds * krow[e];
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) dq[row * s.d + e] += scale * acc[i];
}

// For key j of kv head g: dK_j += scale · Σ dS_tj q_t and dV_j += Σ P_tj dO_t over the heads of
// the group and the queries t ∈ [j, j + W].
template <class T>
__global__ void window_dkv_kernel(const T* q, const T* k, const T* v, const T* slopes, WindowShape s, T scale,
                                  const T* lse, const T* delta, const T* dout, T* dk, T* dv) {
  const long long key = warp_index();  // (b, j, g) in k's row order
  if (key >= static_cast<long long>(s.B) * s.T * s.Hkv) return;
  const int lane = lane_index();
  const int g = static_cast<int>(key % s.Hkv), j = static_cast<int>((key / s.Hkv) % s.T), b = static_cast<int>(key / (static_cast<long long>(s.Hkv) * s.T));
  const T *krow = k + key * s.d, *vrow = v + key * s.d;
  T dk_acc[kPerLane] = {}, dv_acc[kPerLane] = {};
  for (int h = g * s.heads_per_kv; h < (g + 1) * s.heads_per_kv; ++h) {
    const T slope = slopes[h];
    const int last = (j + s.W < s.T - 1 ? j + s.W : s.T - 1);
    for (int t = j; t <= last; ++t) {
      const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
      const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
      const T *qrow = q + row * s.d, *dorow = dout + row * s.d;
      const T p = device_exp(scale * warp_dot(qrow, krow, s.d, lane) - slope * T(t - j) - lse[stat]);
      const T ds = p * (warp_dot(dorow, vrow, s.d, lane) - delta[stat]);
      for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) {
        dk_acc[i] += ds * qrow[e];
        dv_acc[i] += p * dorow[e];
      }
    }
  }
  for (int i = 0, e = lane; e < s.d; ++i, e += kWarp) {
    if (dk) dk[key * s.d + e] += scale * dk_acc[i];
    if (dv) dv[key * s.d + e] += dv_acc[i];
  }
}

// ---- version 2: tiled, one thread per row ------------------------------------------------------
// Grid (⌈T/64⌉, H, B) for the query-side kernels, (⌈T/64⌉, Hkv, B) for the key side; 64 threads.

// Query t = t0 + threadIdx.x; key tiles cover [t0 − W, t0 + 63]; each thread masks its own window.
static __global__ void __launch_bounds__(tiles::kTile) window_forward_tiled(const float* q, const float* k, const float* v,
                                                                     const float* slopes, WindowShape s, float scale,
                                                                     float* out, float* lse) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int t = t0 + threadIdx.x;
  const bool active = t < s.T;
  const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
  float qr[kTileD];
  load_row(qr, q + (active ? row : 0) * s.d, s.d, scale);
  const float slope = slopes[h];
  OnlineSoftmax softmax;
  const int first = t0 > s.W ? t0 - s.W : 0, last = min(s.T - 1, t0 + kTile - 1);
  for (int j0 = first; j0 <= last; j0 += kTile) {
    __syncthreads();
    auto key_row = [&](const float* base) {
      return [=](int r) -> const float* {
        const int j = j0 + r;
        return j <= last ? base + ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * s.d : nullptr;
      };
    };
    stage(keys, s.d, key_row(k));
    stage(values, s.d, key_row(v));
    __syncthreads();
    if (!active) continue;
    softmax.add_tile(qr, keys, values, min(kTile, last - j0 + 1), [&](int r) {
      const int j = j0 + r;
      return (j <= t && j >= t - s.W) ? -slope * float(t - j) : -INFINITY;
    });
  }
  if (!active) return;
  const float inv = 1.0f / softmax.sum;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) out[row * s.d + c] = softmax.acc[c] * inv;
  lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = softmax.max + logf(softmax.sum);
}

// dQ_t += scale · Σ_j P_tj (⟨dO_t, v_j⟩ − δ_t) k_j, one thread per query, key tiles as forward.
static __global__ void __launch_bounds__(tiles::kTile) window_dq_tiled(const float* q, const float* k, const float* v,
                                                                const float* slopes, WindowShape s, float scale,
                                                                const float* lse, const float* delta, const float* dout,
                                                                float* dq) {
  using namespace tiles;
  __shared__ Tile keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const int t = t0 + threadIdx.x;
  const bool active = t < s.T;
  const long long row = (static_cast<long long>(b) * s.T + t) * s.H + h;
  const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + (active ? t : 0);
  float qr[kTileD], dor[kTileD], acc[kTileD] = {};
  load_row(qr, q + (active ? row : 0) * s.d, s.d, scale);
  load_row(dor, dout + (active ? row : 0) * s.d, s.d);
  const float slope = slopes[h], row_lse = lse[stat], row_delta = delta[stat];
  const int first = t0 > s.W ? t0 - s.W : 0, last = min(s.T - 1, t0 + kTile - 1);
  for (int j0 = first; j0 <= last; j0 += kTile) {
    __syncthreads();
    auto key_row = [&](const float* base) {
      return [=](int r) -> const float* {
        const int j = j0 + r;
        return j <= last ? base + ((static_cast<long long>(b) * s.T + j) * s.Hkv + g) * s.d : nullptr;
      };
    };
    stage(keys, s.d, key_row(k));
    stage(values, s.d, key_row(v));
    __syncthreads();
    if (!active) continue;
    // Every thread walks the same rows in step (a shared row is then one broadcast read) and
    // skips the keys outside its window.
    const int rows = min(kTile, last - j0 + 1);
    for (int r = 0; r < rows; ++r) {
      const int j = j0 + r;
      if (j > t || j < t - s.W) continue;
      const float p = expf(dot(qr, keys.row[r]) - slope * float(t - j) - row_lse);
      axpy(acc, p * (dot(dor, values.row[r]) - row_delta), keys.row[r]);
    }
  }
  if (!active) return;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) dq[row * s.d + c] += scale * acc[c];
}

// For key j = j0 + threadIdx.x of kv head g: over the heads of its group and the queries
// t ∈ [j, j + W] (staged 64 at a time with their lse and δ):
//   want_dv: dV_j += Σ P_tj dO_t            (registers: k_j, dV_j)
//   else:    dK_j += scale · Σ dS_tj q_t     (registers: k_j, v_j, dK_j)
// Two launches rather than one keeps each under ~200 registers.
template <bool want_dv>
static __global__ void __launch_bounds__(tiles::kTile) window_dkv_tiled(const float* q, const float* k, const float* v,
                                                                 const float* slopes, WindowShape s, float scale,
                                                                 const float* lse, const float* delta,
                                                                 const float* dout, float* grad) {
  using namespace tiles;
  __shared__ Tile queries, douts;
  __shared__ float tile_lse[kTile], tile_delta[kTile];
  const int j0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z;
  const int j = j0 + threadIdx.x;
  const bool active = j < s.T;
  const long long key = (static_cast<long long>(b) * s.T + (active ? j : 0)) * s.Hkv + g;
  float kr[kTileD], vr[kTileD], acc[kTileD] = {};
  load_row(kr, k + key * s.d, s.d, scale);  // pre-scaled: ⟨q, k·scale⟩ is the score
  if (!want_dv) load_row(vr, v + key * s.d, s.d);
  const int last = min(s.T - 1, j0 + kTile - 1 + s.W);
  for (int h = g * s.heads_per_kv; h < (g + 1) * s.heads_per_kv; ++h) {
    const float slope = slopes[h];
    for (int t0 = j0; t0 <= last; t0 += kTile) {
      __syncthreads();
      auto query_row = [&](const float* base) {
        return [=](int r) -> const float* {
          const int t = t0 + r;
          return t <= last ? base + ((static_cast<long long>(b) * s.T + t) * s.H + h) * s.d : nullptr;
        };
      };
      stage(queries, s.d, query_row(q));
      stage(douts, s.d, query_row(dout));
      if (threadIdx.x < kTile) {
        const int t = t0 + threadIdx.x;
        const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
        tile_lse[threadIdx.x] = t <= last ? lse[stat] : 0.0f;
        tile_delta[threadIdx.x] = t <= last ? delta[stat] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int rows = min(kTile, last - t0 + 1);
      for (int r = 0; r < rows; ++r) {  // in step across threads, as in window_dq_tiled
        const int t = t0 + r;
        if (t < j || t > j + s.W) continue;
        const float p = expf(dot(kr, queries.row[r]) - slope * float(t - j) - tile_lse[r]);
        if (want_dv) axpy(acc, p, douts.row[r]);
        else axpy(acc, p * (dot(vr, douts.row[r]) - tile_delta[r]), queries.row[r]);
      }
    }
  }
  if (!active) return;
  const float factor = want_dv ? 1.0f : scale;
  #pragma unroll
  for (int c = 0; c < tiles::kTileD; ++c)
    if (c < s.d) grad[key * s.d + c] += factor * acc[c];
}

// ---- version 3: bf16 tensor cores (mma.sync m16n8k16), flash-attention-2 style ------------------
// float, d = 64 only (DRT's head width: one 64-wide bf16 tile per row block; other shapes keep
// versions 1 and 2), taken when matmul_precision() is bf16. q, k, v, dO stay fp32 in memory and
// are rounded to bf16 as they are staged; products accumulate in fp32, the softmax and its
// statistics (lse, δ) are fp32, and P and dS are rounded to bf16 only to feed the next product.
// Tiles of 64 queries and 64 keys start at multiples of 64, so a block's key tiles run from the
// one holding t0 − W to the diagonal one (9 tiles at W = 512). Scores are kept in base 2
// (log2(e)·score): 2^x is one instruction (mma::exp2_flush).
namespace window_mma {

using namespace mma;

inline constexpr int kTile = kTileRows;  // queries or keys per tile
inline constexpr int kD = kTileCols;     // the one head width version 3 takes
inline constexpr int kWarps = kTile / 16;  // each warp owns 16 rows of the tile
inline constexpr int kThreads = kWarps * kWarp;

// Row t of sequence b, head `head` of a (B, T, heads, 64) tensor, or nullptr past the end.
__device__ inline const float* row_or_null(const float* x, const WindowShape& s, int b, int t, int head, int heads) {
  return t < s.T ? x + ((static_cast<long long>(b) * s.T + t) * heads + head) * kD : nullptr;
}

// Two 64×64 fp32 tiles (K and V, or Q and dO) held in registers between their global loads and
// their bf16 stores: a kernel issues the loads of its next tile pair before computing on the
// current one, so the L2 latency hides behind the tensor-core work (one block's own warps
// would otherwise all wait on it at every tile). 8 float4 per tile per thread.
struct TilePairPrefetch {
  static constexpr int kPerThread = kTile * kD / 4 / kThreads;
  float4 first[kPerThread], second[kPerThread];

  // src(r) as in stage_bf16 (mma.cuh); blockDim.x must be kThreads.
  template <class RowFirst, class RowSecond>
  __device__ void load(RowFirst row_first, RowSecond row_second) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = threadIdx.x + i * kThreads, r = idx / (kD / 4), c = idx % (kD / 4) * 4;
      const float *a = row_first(r), *b = row_second(r);
      first[i] = a ? __ldg(reinterpret_cast<const float4*>(a + c)) : make_float4(0.f, 0.f, 0.f, 0.f);
      second[i] = b ? __ldg(reinterpret_cast<const float4*>(b + c)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  __device__ void store(BfTile& tile_first, BfTile& tile_second) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = threadIdx.x + i * kThreads, r = idx / (kD / 4), c = idx % (kD / 4) * 4;
      store_bf16x4(tile_first, r, c, first[i]);
      store_bf16x4(tile_second, r, c, second[i]);
    }
  }
};

// The first key tile query tile t0 can reach (the one holding t0 − W).
__device__ inline int first_key_tile(int t0, int window) { return t0 > window ? (t0 - window) / kTile * kTile : 0; }

// Whether some (query, key) of the tiles at t0 and j0 falls outside the window or past T; tiles
// strictly inside the band skip the per-entry mask.
__device__ inline bool tile_needs_mask(int t0, int j0, const WindowShape& s) {
  return j0 + kTile - 1 > t0 || j0 < t0 + kTile - 1 - s.W || t0 + kTile > s.T;
}

// Whether a warp's 16 queries (first_query ..) meet key tile j0, or its 16 keys (first_key ..)
// meet query tile t0, at all: a warp skips the products of tiles its rows cannot see.
__device__ inline bool warp_sees_tile(int first_query, int j0, int window) {
  return j0 <= first_query + 15 && j0 + kTile - 1 >= first_query - window;
}
__device__ inline bool warp_keys_see_tile(int first_key, int t0, int window) {
  return t0 + kTile - 1 >= first_key && t0 <= first_key + 15 + window;
}

// Raw products x = ⟨q_t, k_j⟩ become base-2 scores log2(e)·(scale·x − slope·(t − j)), or −∞
// outside the window (j < t − W, j > t) and for queries past T (padding rows; keys past T are
// only ever beside such queries, since j ≤ t). query_key(r, c) gives (t, j) of tile entry (r, c).
template <class QueryKey>
__device__ inline void window_scores(Accumulator16x64& x, const FragmentLane& at, float score_factor,
                                     float bias_factor, const WindowShape& s, bool masked, QueryKey query_key) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int2 tj = query_key(at.row(u), at.col(j, u));
      const float score = fmaf(x.c[j][u], score_factor, -bias_factor * float(tj.x - tj.y));
      const bool outside = tj.y > tj.x || tj.y < tj.x - s.W || tj.x >= s.T;
      x.c[j][u] = masked && outside ? -INFINITY : score;
    }
}

// Base-2 scores become probabilities exp2(score − lse): lse_of(u, col) is the base-2 lse of the
// entry's query (a row of this lane for the query-side kernel, a column for the key side).
template <class LseOf>
__device__ inline void probabilities_from_lse(Accumulator16x64& x, const FragmentLane& at, LseOf lse_of) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) x.c[j][u] = exp2_flush(x.c[j][u] - lse_of(u, at.col(j, u)));
}

// dP becomes dS = P ∘ (dP − δ) in place; delta_of as lse_of above.
template <class DeltaOf>
__device__ inline void score_gradients(Accumulator16x64& dp, const Accumulator16x64& p, const FragmentLane& at,
                                       DeltaOf delta_of) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) dp.c[j][u] = p.c[j][u] * (dp.c[j][u] - delta_of(u, at.col(j, u)));
}

// The online softmax of one warp's 16 rows (each lane holds 2 of them: u / 2 = 0, 1). row_sum
// holds this lane's partial sums (its 16 columns of each tile); the 4 lanes of a row share
// row_max and every rescale, so the partial sums are added only once, at the end.
struct OnlineSoftmax16 {
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  // Scores (base 2) become unnormalised probabilities against the new running max, and `o` is
  // rescaled to that max. A row that has seen only masked keys keeps max −∞ and shifts by 0, so
  // its probabilities are exp2(−∞) = 0 rather than NaN.
  __device__ void add_tile(Accumulator16x64& scores, Accumulator16x64& o) {
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) tile_max[u / 2] = fmaxf(tile_max[u / 2], scores.c[j][u]);
    float shift[2], rescale[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float new_max = fmaxf(row_max[half], group_max(tile_max[half]));
      shift[half] = new_max == -INFINITY ? 0.0f : new_max;
      rescale[half] = exp2_flush(row_max[half] - shift[half]);
      row_max[half] = new_max;
      row_sum[half] *= rescale[half];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        scores.c[j][u] = exp2_flush(scores.c[j][u] - shift[u / 2]);
        row_sum[u / 2] += scores.c[j][u];
        o.c[j][u] *= rescale[u / 2];
      }
  }
};

}  // namespace window_mma

// Shapes: q (B, T, H, 64), k, v (B, T, Hkv, 64), out (B, T, H, 64), lse (B, H, T).
// Grid (⌈T/64⌉, H, B), 128 threads (4 warps); warp w owns queries t0 + 16w .. t0 + 16w + 15.
// Shared memory: Q, K, V as bf16 tiles (3 × 9,216 bytes). Per key tile, all in registers:
// S = Q·Kᵀ (fp32), base-2 scores with ALiBi and mask, online softmax, O += bf16(P)·V; then
// out = O / l and lse = m + log l, as version 2 writes them.
static __global__ void __launch_bounds__(window_mma::kThreads) window_forward_mma(const float* q, const float* k,
                                                                          const float* v, const float* slopes,
                                                                          WindowShape s, float scale, float* out,
                                                                          float* lse) {
  using namespace window_mma;
  __shared__ BfTile queries, keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const FragmentLane at;
  stage_bf16(queries, [&](int r) { return row_or_null(q, s, b, t0 + r, h, s.H); });
  __syncthreads();
  std::uint32_t qa[4][4];  // this warp's 16 queries as A fragments, for every key tile
  load_a_rows(qa, queries, at.row0);
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + at.row0;
  OnlineSoftmax16 softmax;
  Accumulator16x64 o;
  o.zero();
  TilePairPrefetch next;
  auto load_keys = [&](int j0) {
    next.load([&](int r) { return row_or_null(k, s, b, j0 + r, g, s.Hkv); },
              [&](int r) { return row_or_null(v, s, b, j0 + r, g, s.Hkv); });
  };
  load_keys(first_key_tile(t0, s.W));
  for (int j0 = first_key_tile(t0, s.W); j0 <= t0; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous key tile
    next.store(keys, values);
    __syncthreads();
    if (j0 < t0) load_keys(j0 + kTile);
    if (!warp_sees_tile(first_query, j0, s.W)) continue;
    Accumulator16x64 scores;
    scores.zero();
    multiply_by_transposed(scores, qa, keys);
    window_scores(scores, at, score_factor, bias_factor, s, tile_needs_mask(t0, j0, s),
                  [&](int r, int c) { return make_int2(t0 + r, j0 + c); });
    softmax.add_tile(scores, o);
    std::uint32_t pa[4][4];
    a_fragments(pa, scores);
    multiply(o, pa, values);
  }
  const float row_sum[2] = {group_sum(softmax.row_sum[0]), group_sum(softmax.row_sum[1])};  // all lanes shuffle
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    if (t >= s.T) continue;  // padding rows: nothing to write (their l may be 0)
    const float inv = 1.0f / row_sum[half];
    float* out_row = out + ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      *reinterpret_cast<float2*>(out_row + at.col(j, 0)) =
          make_float2(o.c[j][2 * half] * inv, o.c[j][2 * half + 1] * inv);
    if (at.pair == 0)
      lse[(static_cast<long long>(b) * s.H + h) * s.T + t] = softmax.row_max[half] * kLn2 + logf(row_sum[half]);
  }
}

// Backward. Each kernel computes S in the orientation whose A fragment its last product needs,
// so dS never goes through shared memory: window_dkv_mma computes Sᵀ = K·Qᵀ (keys as rows), so
// bf16(dSᵀ) in registers is already the A operand of dK += dSᵀ·Q (and bf16(Pᵀ) that of
// dV += Pᵀ·dO); window_dq_mma computes S = Q·Kᵀ, so bf16(dS) is the A operand of dQ += dS·K.
// The price is S and dP computed twice (14·d FLOPs per (query, key) pair rather than 10·d);
// what it buys is no atomics on dQ (the result is the same on every run, like versions 1 and 2)
// and no shared-memory round trip and barrier between the two halves of a tile.

// Shapes: q, dout (B, T, H, 64), k, v, dk, dv (B, T, Hkv, 64), lse, delta (B, H, T).
// Grid (⌈T/64⌉, Hkv, B), 128 threads; warp w owns keys j0 + 16w .. j0 + 16w + 15 of kv head g
// and walks, for every head of the group, the query tiles from the diagonal one to the one
// holding j0 + 63 + W. Shared memory: K, V, Q, dO as bf16 tiles and the tile's lse and δ
// (4 × 9,216 + 512 bytes). Per query tile: Sᵀ = K·Qᵀ, Pᵀ = exp(Sᵀ − lse), dV += bf16(Pᵀ)·dO,
// dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − δ), dK += bf16(dSᵀ)·Q. Adds scale·dK into dk and dV into dv
// (either may be null), as version 2 does.
static __global__ void __launch_bounds__(window_mma::kThreads) window_dkv_mma(const float* q, const float* k, const float* v,
                                                                      const float* slopes, WindowShape s, float scale,
                                                                      const float* lse, const float* delta,
                                                                      const float* dout, float* dk, float* dv) {
  using namespace window_mma;
  __shared__ BfTile keys, values, queries, douts;
  __shared__ float tile_lse[kTile], tile_delta[kTile];  // lse in base 2
  const int j0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z;
  const FragmentLane at;
  stage_bf16(keys, [&](int r) { return row_or_null(k, s, b, j0 + r, g, s.Hkv); });
  stage_bf16(values, [&](int r) { return row_or_null(v, s, b, j0 + r, g, s.Hkv); });
  const float score_factor = scale * kLog2e;
  const int first_key = j0 + at.row0;
  const int last_tile = min(s.T - 1, j0 + kTile - 1 + s.W) / kTile * kTile;
  Accumulator16x64 dk_acc, dv_acc;
  dk_acc.zero();
  dv_acc.zero();
  for (int h = g * s.heads_per_kv; h < (g + 1) * s.heads_per_kv; ++h) {
    const float bias_factor = slopes[h] * kLog2e;
    for (int t0 = j0; t0 <= last_tile; t0 += kTile) {
      __syncthreads();  // every warp is done with the previous query tile (and K, V are staged)
      stage_bf16(queries, [&](int r) { return row_or_null(q, s, b, t0 + r, h, s.H); });
      stage_bf16(douts, [&](int r) { return row_or_null(dout, s, b, t0 + r, h, s.H); });
      if (threadIdx.x < kTile) {
        const int t = t0 + threadIdx.x;
        const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
        tile_lse[threadIdx.x] = t < s.T ? lse[stat] * kLog2e : 0.0f;
        tile_delta[threadIdx.x] = t < s.T ? delta[stat] : 0.0f;
      }
      __syncthreads();
      if (!warp_keys_see_tile(first_key, t0, s.W)) continue;
      Accumulator16x64 p;  // Sᵀ, then Pᵀ: rows keys, columns queries
      p.zero();
      {
        std::uint32_t ka[4][4];
        load_a_rows(ka, keys, at.row0);
        multiply_by_transposed(p, ka, queries);
      }
      window_scores(p, at, score_factor, bias_factor, s, tile_needs_mask(t0, j0, s),
                    [&](int r, int c) { return make_int2(t0 + c, j0 + r); });
      probabilities_from_lse(p, at, [&](int, int c) { return tile_lse[c]; });
      {
        std::uint32_t pa[4][4];
        a_fragments(pa, p);
        multiply(dv_acc, pa, douts);
      }
      Accumulator16x64 ds;  // dPᵀ, then dSᵀ
      ds.zero();
      {
        std::uint32_t va[4][4];
        load_a_rows(va, values, at.row0);
        multiply_by_transposed(ds, va, douts);
      }
      score_gradients(ds, p, at, [&](int, int c) { return tile_delta[c]; });
      std::uint32_t dsa[4][4];
      a_fragments(dsa, ds);
      multiply(dk_acc, dsa, queries);
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
        float2* x = reinterpret_cast<float2*>(dk + key + c);
        *x = make_float2(x->x + scale * dk_acc.c[jj][2 * half], x->y + scale * dk_acc.c[jj][2 * half + 1]);
      }
      if (dv) {
        float2* x = reinterpret_cast<float2*>(dv + key + c);
        *x = make_float2(x->x + dv_acc.c[jj][2 * half], x->y + dv_acc.c[jj][2 * half + 1]);
      }
    }
  }
}

// Shapes: q, dout, dq (B, T, H, 64), k, v (B, T, Hkv, 64), lse, delta (B, H, T).
// Grid (⌈T/64⌉, H, B), 128 threads; warp w owns queries t0 + 16w .. t0 + 16w + 15 and walks the
// key tiles of the forward. Shared memory: Q, dO, K, V as bf16 tiles (4 × 9,216 bytes). Per key
// tile: S = Q·Kᵀ, P = exp(S − lse), dP = dO·Vᵀ, dS = P ∘ (dP − δ), dQ += bf16(dS)·K; adds
// scale·dQ into dq.
static __global__ void __launch_bounds__(window_mma::kThreads) window_dq_mma(const float* q, const float* k, const float* v,
                                                                     const float* slopes, WindowShape s, float scale,
                                                                     const float* lse, const float* delta,
                                                                     const float* dout, float* dq) {
  using namespace window_mma;
  __shared__ BfTile queries, douts, keys, values;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / s.heads_per_kv;
  const FragmentLane at;
  stage_bf16(queries, [&](int r) { return row_or_null(q, s, b, t0 + r, h, s.H); });
  stage_bf16(douts, [&](int r) { return row_or_null(dout, s, b, t0 + r, h, s.H); });
  float row_lse[2], row_delta[2];  // this lane's two queries; lse in base 2
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    const long long stat = (static_cast<long long>(b) * s.H + h) * s.T + t;
    row_lse[half] = t < s.T ? lse[stat] * kLog2e : 0.0f;
    row_delta[half] = t < s.T ? delta[stat] : 0.0f;
  }
  __syncthreads();
  std::uint32_t qa[4][4], doa[4][4];  // this warp's queries and output gradients, for every key tile
  load_a_rows(qa, queries, at.row0);
  load_a_rows(doa, douts, at.row0);
  const float score_factor = scale * kLog2e, bias_factor = slopes[h] * kLog2e;
  const int first_query = t0 + at.row0;
  Accumulator16x64 dq_acc;
  dq_acc.zero();
  TilePairPrefetch next;  // as in window_forward_mma
  auto load_keys = [&](int j0) {
    next.load([&](int r) { return row_or_null(k, s, b, j0 + r, g, s.Hkv); },
              [&](int r) { return row_or_null(v, s, b, j0 + r, g, s.Hkv); });
  };
  load_keys(first_key_tile(t0, s.W));
  for (int j0 = first_key_tile(t0, s.W); j0 <= t0; j0 += kTile) {
    __syncthreads();
    next.store(keys, values);
    __syncthreads();
    if (j0 < t0) load_keys(j0 + kTile);
    if (!warp_sees_tile(first_query, j0, s.W)) continue;
    Accumulator16x64 p;  // S, then P
    p.zero();
    multiply_by_transposed(p, qa, keys);
    window_scores(p, at, score_factor, bias_factor, s, tile_needs_mask(t0, j0, s),
                  [&](int r, int c) { return make_int2(t0 + r, j0 + c); });
    probabilities_from_lse(p, at, [&](int u, int) { return row_lse[u / 2]; });
    Accumulator16x64 ds;  // dP, then dS
    ds.zero();
    multiply_by_transposed(ds, doa, values);
    score_gradients(ds, p, at, [&](int u, int) { return row_delta[u / 2]; });
    std::uint32_t dsa[4][4];
    a_fragments(dsa, ds);
    multiply(dq_acc, dsa, keys);
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + at.row(2 * half);
    if (t >= s.T) continue;
    float* dq_row = dq + ((static_cast<long long>(b) * s.T + t) * s.H + h) * kD;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float2* x = reinterpret_cast<float2*>(dq_row + at.col(j, 0));
      *x = make_float2(x->x + scale * dq_acc.c[j][2 * half], x->y + scale * dq_acc.c[j][2 * half + 1]);
    }
  }
}

}  // namespace attention
}  // namespace drt::cuda

// Version 4 builds on version 3's shape and helpers above.
#include "drt/cuda/attention/window_attention_v4.cuh"
#include "drt/cuda/attention/window_attention_v5.cuh"

namespace drt::cuda {
namespace attention {

inline dim3 tiled_grid(const WindowShape& s, int heads) {
  return dim3(static_cast<unsigned>((s.T + tiles::kTile - 1) / tiles::kTile), static_cast<unsigned>(heads),
              static_cast<unsigned>(s.B));
}

// The version a call takes: 5 (version 4 with a wgmma forward) where 4 fits and the build and the
// device run sm_90a code (wgmma::wgmma_available); 4 (bf16 tensor cores, cp.async stages) for
// float at d = 64 when the precision switch says bf16 (the user's one switch: in bf16 mode
// attention takes bf16 operands as GEMMs do) and the tensors allow 16-byte vector access, or 3 on
// the same calls under a cap of 3;
// 2 (tiled fp32) for other float calls with d ≤ 64 (fp32 and tf32 modes included); 1 for
// everything else (double, wider heads).
// version_cap() (version.cuh) lowers the ceiling for the kernel lab.
template <class T>
int window_attention_version(int d, Precision precision, bool vector_aligned = true) {
  if (!std::is_same_v<T, float>) return 1;
  if (precision == Precision::bf16 && vector_aligned && d == window_mma::kD) {
    if (version_cap() >= 5 && wgmma::wgmma_available()) return 5;
    if (version_cap() >= 4) return 4;
    if (version_cap() >= 3) return 3;
  }
  return version_cap() >= 2 && d <= tiles::kTileD ? 2 : 1;
}

inline WindowShape window_shape(const Shape& q, const Shape& k, Index window) {
  DRT_CHECK(q[3] <= kMaxHeadDim, "window_attention on the GPU: head width ", q[3], " is above ", kMaxHeadDim);
  return {int(q[0]), int(q[1]), int(q[2]), int(k[2]), int(q[3]), int(window), int(q[2] / k[2])};
}

}  // namespace attention

// Writes out (B, T, H, d) and lse (B, H, T); all tensors contiguous and on the GPU. With `keep`,
// a call that takes version 4 or 5 puts its bf16 copies of q, k, v there for the backward, and with
// out_rounded the bf16 copy of out (for the output projection's GEMM); other versions leave both
// empty.
template <class T>
void window_attention_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                              Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse,
                              WindowAttentionBf16Copies* keep = nullptr, std::shared_ptr<void>* out_rounded = nullptr) {
  const attention::WindowShape s = attention::window_shape(q.shape(), k.shape(), window);
  const long long rows = static_cast<long long>(s.B) * s.T * s.H;
  if (rows == 0) return;
  const int version = attention::window_attention_version<T>(
      s.d, matmul_precision(), attention::all_aligned(16, {q.data(), k.data(), v.data(), out.data()}));
  if constexpr (std::is_same_v<T, float>) {
    if (version == 5) {
      attention::window_v4::forward(q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data(), keep,
                                    out_rounded, attention::window_forward_v5);
      return;
    }
    if (version == 4) {
      attention::window_v4::forward(q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data(), keep,
                                    out_rounded);
      return;
    }
    if (version == 3) {
      attention::window_forward_mma<<<attention::tiled_grid(s, s.H), attention::window_mma::kThreads, 0, ::drt::cuda::stream()>>>(
          q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data());
      DRT_CUDA_CHECK_LAUNCH();
      return;
    }
    if (version == 2) {
      attention::window_forward_tiled<<<attention::tiled_grid(s, s.H), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
          q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data());
      DRT_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  attention::window_forward_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
      q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// Adds into dq, dk, dv (each may be null), as the CPU backward does, or sets those `fresh` names
// (their buffers not yet initialised). `saved`: what the forward kept (window_attention_forward's
// `keep`); version 4 reads the copies it finds there and rounds the inputs whose copy is missing,
// other versions ignore it. With gradient_copies, version 4 also writes the bf16 copies of dq,
// dk, dv as they end up (for the q, k, v projections' backward GEMMs) and returns them there
// (fields q, k, v); other versions leave it empty.
template <class T>
void window_attention_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                               Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse,
                               const Tensor<T>& dout, const Tensor<T>* dq, const Tensor<T>* dk, const Tensor<T>* dv,
                               const WindowAttentionBf16Copies* saved = nullptr,
                               WindowAttentionBf16Copies* gradient_copies = nullptr,
                               attention::FreshGradients fresh = {}) {
  const attention::WindowShape s = attention::window_shape(q.shape(), k.shape(), window);
  const long long rows = static_cast<long long>(s.B) * s.T * s.H, keys = static_cast<long long>(s.B) * s.T * s.Hkv;
  const int version = attention::window_attention_version<T>(
      s.d, matmul_precision(),
      attention::all_aligned(16, {q.data(), k.data(), v.data(), dout.data(), dq ? dq->data() : nullptr,
                                  dk ? dk->data() : nullptr, dv ? dv->data() : nullptr}));
  // These kernels add (or nothing runs): a fresh buffer starts at zero.
  if (version < 4 || rows == 0) attention::zero_fresh(dq, dk, dv, fresh);
  if (rows == 0) return;
  const Tensor<T> delta = Tensor<T>::empty(lse.shape(), nullptr, q.device());
  if constexpr (std::is_same_v<T, float>) {
    if (version >= 4) {  // δ too, with dO's bf16 copy; version 5's backward is version 4's
      attention::window_v4::backward(q.data(), k.data(), v.data(), slopes.data(), s, scale, out.data(), lse.data(),
                                     delta.data(), dout.data(), dq ? dq->data() : nullptr, dk ? dk->data() : nullptr,
                                     dv ? dv->data() : nullptr, saved, fresh, gradient_copies);
      return;
    }
  }
  attention::window_delta_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
      out.data(), dout.data(), s, delta.data(), nullptr);
  DRT_CUDA_CHECK_LAUNCH();
  if constexpr (std::is_same_v<T, float>) {
    if (version == 3) {
      if (dq) {
        attention::window_dq_mma<<<attention::tiled_grid(s, s.H), attention::window_mma::kThreads, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dq->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dk || dv) {
        attention::window_dkv_mma<<<attention::tiled_grid(s, s.Hkv), attention::window_mma::kThreads, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(),
            dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
        DRT_CUDA_CHECK_LAUNCH();
      }
      return;
    }
    if (version == 2) {
      if (dq) {
        attention::window_dq_tiled<<<attention::tiled_grid(s, s.H), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dq->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dk) {
        attention::window_dkv_tiled<false><<<attention::tiled_grid(s, s.Hkv), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dk->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      if (dv) {
        attention::window_dkv_tiled<true><<<attention::tiled_grid(s, s.Hkv), attention::tiles::kTile, 0, ::drt::cuda::stream()>>>(
            q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dv->data());
        DRT_CUDA_CHECK_LAUNCH();
      }
      return;
    }
  }
  if (dq) {
    attention::window_dq_kernel<T><<<attention::warp_grid(rows), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
        q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(), dq->data());
    DRT_CUDA_CHECK_LAUNCH();
  }
  if (dk || dv) {
    attention::window_dkv_kernel<T><<<attention::warp_grid(keys), attention::kWarpBlockThreads, 0, ::drt::cuda::stream()>>>(
        q.data(), k.data(), v.data(), slopes.data(), s, scale, lse.data(), delta.data(), dout.data(),
        dk ? dk->data() : nullptr, dv ? dv->data() : nullptr);
    DRT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace drt::cuda
