// drt/cuda/attention/tiles.cuh — the building blocks of the tiled attention kernels (version 2).
//
// Version 1 (warp_math.cuh) gives each query row a warp whose lanes split d, so every score is a
// shuffle reduction and every key row is read from global memory once per query: about
// 1 TFLOP/s on an H200. Version 2 gives each query row (or key row) ONE thread that keeps its
// row in registers, and a block of kTile threads walks tiles of kTile rows that it has staged in
// shared memory together. All threads of a warp read the same shared row at the same time (a
// broadcast, no bank conflicts), so a score is d register FMAs fed by d/4 vector loads, and a
// key row leaves global memory once per tile of queries instead of once per query.
//
// Rows are at most kTileD = 64 wide (DRT's head width): narrower heads are zero-padded in
// registers and in shared memory, which changes no dot product. fp32 only: these are CUDA-core
// kernels; tensor cores (bf16 mma/wgmma) are issue 7.
#pragma once

#include <cuda_runtime.h>

namespace drt::cuda::attention::tiles {

inline constexpr int kTile = 64;   // rows per tile, threads per block
inline constexpr int kTileD = 64;  // the widest head the tiled kernels take
inline constexpr int kSub = 16;    // scores computed together before one softmax rescale

// A tile of kTile rows of kTileD floats in shared memory (rows 16-byte aligned for float4 reads).
struct alignas(16) Tile {
  float row[kTile][kTileD];
};

// Cooperatively stages rows r = 0..kTile-1 into `tile`: row r comes from `src(r)` (a pointer to d
// floats, or nullptr for a row that does not exist: zeros). Every thread of the block calls it.
template <class RowPointer>
__device__ inline void stage(Tile& tile, int d, RowPointer src) {
  for (int idx = threadIdx.x; idx < kTile * kTileD; idx += blockDim.x) {
    const int r = idx / kTileD, c = idx % kTileD;
    const float* p = src(r);
    tile.row[r][c] = (p != nullptr && c < d) ? p[c] : 0.0f;
  }
}

// A row of d floats into registers, times `factor`, zero-padded to kTileD.
__device__ inline void load_row(float (&dst)[kTileD], const float* src, int d, float factor = 1.0f) {
#pragma unroll
  for (int c = 0; c < kTileD; ++c) dst[c] = c < d ? factor * src[c] : 0.0f;
}

// ⟨a (registers), b (a shared row)⟩ with four independent partial sums.
__device__ inline float dot(const float (&a)[kTileD], const float* b) {
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma unroll
  for (int c = 0; c < kTileD / 4; ++c) {
    const float4 x = b4[c];
    s0 += a[4 * c] * x.x;
    s1 += a[4 * c + 1] * x.y;
    s2 += a[4 * c + 2] * x.z;
    s3 += a[4 * c + 3] * x.w;
  }
  return (s0 + s1) + (s2 + s3);
}

// acc (registers) += alpha · b (a shared row).
__device__ inline void axpy(float (&acc)[kTileD], float alpha, const float* b) {
  const float4* b4 = reinterpret_cast<const float4*>(b);
#pragma unroll
  for (int c = 0; c < kTileD / 4; ++c) {
    const float4 x = b4[c];
    acc[4 * c] += alpha * x.x;
    acc[4 * c + 1] += alpha * x.y;
    acc[4 * c + 2] += alpha * x.z;
    acc[4 * c + 3] += alpha * x.w;
  }
}

// Online softmax over the keys of a staged tile for one query (registers q, pre-scaled):
// state (running max, running sum, accumulator of p·v). `bias(j)` is the additive score term of
// tile row j, or −inf when the query may not see that key. Rows are taken kSub at a time: their
// scores first, then one rescale of the accumulator, then the value rows.
struct OnlineSoftmax {
  float max = -INFINITY, sum = 0.0f;
  float acc[kTileD] = {};

  template <class Bias>
  __device__ void add_tile(const float (&q)[kTileD], const Tile& keys, const Tile& values, int rows, Bias bias) {
    for (int j0 = 0; j0 < rows; j0 += kSub) {
      float score[kSub];
      float tile_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
        const int j = j0 + u;
        const float b = j < rows ? bias(j) : -INFINITY;
        score[u] = b == -INFINITY ? -INFINITY : dot(q, keys.row[j]) + b;
        tile_max = fmaxf(tile_max, score[u]);
      }
      if (tile_max == -INFINITY) continue;  // nothing visible in these rows
      const float new_max = fmaxf(max, tile_max);
      const float rescale = expf(max - new_max);  // max = −inf gives 0: acc and sum are 0 anyway
#pragma unroll
      for (int c = 0; c < kTileD; ++c) acc[c] *= rescale;
      sum *= rescale;
      max = new_max;
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
        if (score[u] == -INFINITY) continue;
        const float p = expf(score[u] - new_max);
        sum += p;
        axpy(acc, p, values.row[j0 + u]);
      }
    }
  }
};

}  // namespace drt::cuda::attention::tiles
