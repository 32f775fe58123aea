// drt/cuda/nn/common.cuh — what the nn kernels share: walking lanes of strided tensors, group
// reductions, precision-matched math, and the counter-based random numbers of core/random.hpp.
//
// A lane is the 1-D run of elements along one axis with every other index fixed, numbered
// row-major over the other axes exactly as drt/nn/lanes.hpp numbers them on the CPU, so lane l
// of a device tensor is lane l of the CPU op. `Lanes` is the device-side copy of that walk.
//
// Per-lane kernels (softmax, cross-entropy, RMSNorm, top-k) give each lane a *group* of G
// threads: G = 32 (one warp, 8 lanes per block) for lanes of up to kWarpLaneMax elements, else
// G = kBlock (one block per lane). A group reduces with warp shuffles, then (G = kBlock) through
// shared memory, in a fixed order: the result does not depend on timing (deterministic), though
// its order of additions differs from the CPU's sequential loop (floats agree to rounding).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::nn_detail {

inline constexpr int kBlock = 256;           // threads per block of every nn kernel
inline constexpr Index kWarpLaneMax = 1024;  // lanes up to this long get one warp, longer ones a block
inline constexpr Index kFewLanes = 256;      // fewer lanes than this may each get a block instead

// ---- lanes ------------------------------------------------------------------------------------

// The lanes of one tensor along one axis: the other axes' extents and strides (right-aligned,
// `count` of them), and the stride along the axis.
struct Lanes {
  Index dims[kMaxRank];
  Index strides[kMaxRank];
  int count;
  Index step;
  // Offset (in elements) of the first element of lane `lane` (drt::detail::lane_offset). Kernels
  // use start_of (below), the same walk unrolled.
  __host__ __device__ Index offset(Index lane) const {
    Index off = 0;
    for (int d = kMaxRank - 1; d >= kMaxRank - count; --d) {
      off += (lane % dims[d]) * strides[d];
      lane /= dims[d];
    }
    return off;
  }
};

// Lanes of t along `axis` (normalised); axis −1 skips nothing: the lanes are then single elements
// numbered row-major, with step 1.
template <class U>
Lanes lanes_along(const Tensor<U>& t, int axis) {
  Lanes l{};
  int k = kMaxRank;
  for (int d = t.rank() - 1; d >= 0; --d) {
    if (d == axis) continue;
    --k;
    l.dims[k] = t.shape()[d];
    l.strides[k] = t.strides()[d];
  }
  l.count = kMaxRank - k;
  l.step = axis >= 0 ? t.strides()[axis] : 1;
  return l;
}

// Rows: lanes along the last axis (drt::detail::row_offset / row_step); a scalar is one row of
// one element.
template <class U>
Lanes rows_of(const Tensor<U>& t) {
  return lanes_along(t, t.rank() - 1);
}

// Blocks for `lanes` lanes given G threads per lane.
inline unsigned lane_blocks(Index lanes, int group) {
  const Index per_block = kBlock / group;
  return static_cast<unsigned>((lanes + per_block - 1) / per_block);
}

// Blocks for a grid-stride loop over `n` elements (capped: each thread then takes several).
inline unsigned element_blocks(Index n) {
  const Index blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// Lanes::offset with the axis loop unrolled over kMaxRank: the kernels then read the extents and
// strides straight from their parameters. A loop with a run-time count indexes them dynamically,
// which makes every thread copy each Lanes (96 bytes) into local memory first: for a warp per row
// of 768 floats, as many bytes of local stores as the row itself, per Lanes.
__device__ inline Index start_of(const Lanes& l, Index lane) {
  Index off = 0;
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d)
    if (d >= kMaxRank - l.count) {
      const Index q = lane / l.dims[d];
      off += (lane - q * l.dims[d]) * l.strides[d];
      lane = q;
    }
  return off;
}

// ---- 16-byte packs --------------------------------------------------------------------------------

// W consecutive elements moved by one load or store (W = 1: a single element).
template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};
template <class T>
inline constexpr int kPackWidth = static_cast<int>(16 / sizeof(T));  // float4, double2

// Pack k of a row: the element k·step when W = 1; elements k·W … k·W + W − 1 of a contiguous,
// pack-aligned row otherwise (step is then 1 and unused).
template <int W, class T>
__device__ Pack<T, W> load_pack(const T* row, Index k, Index step) {
  if constexpr (W == 1) return Pack<T, 1>{{row[k * step]}};
  else return reinterpret_cast<const Pack<T, W>*>(row)[k];
}
template <int W, class T>
__device__ void store_pack(T* row, Index k, Index step, const Pack<T, W>& p) {
  if constexpr (W == 1) row[k * step] = p.v[0];
  else reinterpret_cast<Pack<T, W>*>(row)[k] = p;
}

// Pack k of a contiguous row (elements k·W … k·W + W − 1) into a bf16 copy of the row, rounded
// to nearest even as bf16_copy (drt/cuda/bf16.cuh) rounds: the copy an op leaves for the bf16
// GEMM that reads its output next, written from the values it has in registers anyway.
template <int W, class T>
__device__ void store_bf16_pack(__nv_bfloat16* row, Index k, const Pack<T, W>& p) {
  if constexpr (W == 4 && std::is_same_v<T, float>) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(p.v[0], p.v[1]), hi = __floats2bfloat162_rn(p.v[2], p.v[3]);
    reinterpret_cast<uint2*>(row)[k] =
        uint2{*reinterpret_cast<const unsigned*>(&lo), *reinterpret_cast<const unsigned*>(&hi)};
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) row[k * W + w] = __float2bfloat16_rn(static_cast<float>(p.v[w]));
  }
}

// ---- group reductions -------------------------------------------------------------------------

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {  // the CPU's lane_max: keep the first unless the second is larger
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b > a ? b : a;
  }
};

// Reduces v over the G threads of a group; every thread of the group gets the result. G = 32: one
// warp (no barrier, so a finished warp may leave early); G = kBlock: the whole block, which must
// reach this call together. The xor butterfly gives every thread the same bits (a + b == b + a).
template <int G, class T, class Op>
__device__ T group_reduce(T v, Op op) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
  if constexpr (G > 32) {
    static_assert(G == kBlock, "a group is one warp or one block");
    __shared__ T partial[G / 32];
    __syncthreads();  // the previous call's readers are done with `partial`
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    v = partial[0];
    for (int w = 1; w < G / 32; ++w) v = op(v, partial[w]);
  }
  return v;
}

// The lane and the thread's rank in its group, for a kernel launched with lane_blocks(lanes, G).
template <int G>
__device__ Index group_lane() {
  return Index(blockIdx.x) * (kBlock / G) + threadIdx.x / G;
}
template <int G>
__device__ int group_rank() {
  return static_cast<int>(threadIdx.x % G);
}

// ---- math with the CPU's precision (no fast-math intrinsics) ------------------------------------

__device__ inline float dev_exp(float x) { return expf(x); }
__device__ inline double dev_exp(double x) { return ::exp(x); }
__device__ inline float dev_log(float x) { return logf(x); }
__device__ inline double dev_log(double x) { return ::log(x); }
__device__ inline float dev_sqrt(float x) { return sqrtf(x); }  // correctly rounded (no -use_fast_math)
__device__ inline double dev_sqrt(double x) { return ::sqrt(x); }

template <class T>
inline constexpr T kMinusInf = -std::numeric_limits<T>::infinity();

// ---- counter-based random numbers: drt/core/random.hpp, bit for bit ----------------------------
// The CPU's generator is a pure function of (seed, counter) (drt::random_bits, host-device), so
// each device thread computes its own element: no state, no host round trip. Integer arithmetic and
// the exact double steps of uniform01 give the same bits as the CPU; only standard_gumbel's two
// logarithms go through CUDA's log (within 1 ulp, glibc's within 0.52 ulp), so fp64 Gumbel noise
// can differ from the CPU's in the last bit (fp32 noise, rounded from it, practically never).

// Uniform in (0, 1): (53 random bits + 0.5)·2⁻⁵³, the same IEEE operations as the CPU.
__device__ inline double uniform01(std::uint64_t seed, std::uint64_t counter) {
  return __dmul_rn(__dadd_rn(static_cast<double>(random_bits(seed, counter) >> 11), 0.5), 1.0 / 9007199254740992.0);
}

__device__ inline double standard_gumbel(std::uint64_t seed, std::uint64_t counter) {
  return -::log(-::log(uniform01(seed, counter)));
}

}  // namespace drt::cuda::nn_detail
