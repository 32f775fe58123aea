// drt/cuda/core/strided.cuh — walking a strided view from a kernel, for the core ops' kernels.
//
// A kernel thread that handles element p (row-major position) of a shape turns p into a
// multi-index once and then into an offset for each tensor it reads or writes, each with its
// own strides (a broadcast operand has stride 0 along the broadcast axes). Shapes are padded at
// the front to kMaxRank (extent 1, stride 0) so that every thread runs the same fixed-length,
// unrolled loop whatever the rank.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "drt/core/shape.hpp"

namespace drt::cuda::strided {

// A shape padded at the front to kMaxRank.
struct Dims {
  Index d[kMaxRank];
};
// Strides padded the same way (0 for the added axes).
struct Steps {
  Index s[kMaxRank];
};

// The position in a padded array of axis `axis` of a tensor of rank `rank`.
inline int padded_axis(int rank, int axis) { return kMaxRank - rank + axis; }

inline Dims dims_of(const Shape& shape) {
  Dims out{};
  const int lead = kMaxRank - shape.rank();
  for (int i = 0; i < kMaxRank; ++i) out.d[i] = i < lead ? 1 : shape[i - lead];
  return out;
}
inline Steps steps_of(const Shape& shape, const Strides& strides) {
  Steps out{};
  const int lead = kMaxRank - shape.rank();
  for (int i = 0; i < kMaxRank; ++i) out.s[i] = i < lead ? 0 : strides[i - lead];
  return out;
}

// The multi-index of row-major position p.
__device__ inline void unravel(Index p, const Dims& dims, Index* idx) {
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d) {
    idx[d] = p % dims.d[d];
    p /= dims.d[d];
  }
}
__device__ inline Index offset(const Index* idx, const Steps& steps) {
  Index off = 0;
#pragma unroll
  for (int d = 0; d < kMaxRank; ++d) off += idx[d] * steps.s[d];
  return off;
}
// unravel + offset for one tensor.
__device__ inline Index offset_of(Index p, const Dims& dims, const Steps& steps) {
  Index off = 0;
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d) {
    off += (p % dims.d[d]) * steps.s[d];
    p /= dims.d[d];
  }
  return off;
}

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (n > 0): enough to fill the GPU many times over.
inline unsigned grid_for(Index n) {
  return static_cast<unsigned>(std::min<Index>((n + kThreads - 1) / kThreads, Index(1) << 16));
}

}  // namespace drt::cuda::strided
