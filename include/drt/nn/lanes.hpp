// drt/nn/lanes.hpp — walking strided tensors lane by lane: the shared loop of the nn ops.
//
// A lane is the 1-D run of elements along one axis with every other index fixed. Lanes are
// numbered row-major over the remaining axes (the order of core/reduce.hpp's for_each_lane), so
// lane n of an input and lane n of an output of the same shape are the same logical elements.
// Ops find the first element of lane n in each of their tensors with lane_offset and step along
// the axis with that tensor's own stride: every view (transposed, sliced) works without a copy.
// Device kernels walk lanes the same way, numbered the same (drt/cuda/nn/common.cuh, `Lanes`).
#pragma once

#include "drt/core/expr.hpp"

namespace drt::detail {

inline Index lane_count(const Shape& shape, int axis) {
  Index n = 1;
  for (int d = 0; d < shape.rank(); ++d)
    if (d != axis) n *= shape[d];
  return n;
}

// Offset (in elements) of the first element of lane `lane` of t along `axis` (a normalised
// axis; a negative one skips nothing, so `lane` is then a row-major element index).
template <class U>
Index lane_offset(const Tensor<U>& t, int axis, Index lane) {
  Index off = 0;
  for (int d = t.rank() - 1; d >= 0; --d) {
    if (d == axis) continue;
    off += (lane % t.shape()[d]) * t.strides()[d];
    lane /= t.shape()[d];
  }
  return off;
}

// Offset of the element with row-major logical index i (no axis is skipped).
template <class U>
Index element_offset(const Tensor<U>& t, Index i) {
  return lane_offset(t, -1, i);
}

// Rows are lanes along the last axis; they let elementwise ops that need the row-major index of
// each element (counter-based random numbers) walk any view. A scalar is one row of one element.
inline Index row_count(const Shape& s) { return s.rank() ? lane_count(s, s.rank() - 1) : 1; }
inline Index row_length(const Shape& s) { return s.rank() ? s[s.rank() - 1] : 1; }
template <class U>
Index row_offset(const Tensor<U>& t, Index row) {
  return t.rank() ? lane_offset(t, t.rank() - 1, row) : 0;
}
template <class U>
Index row_step(const Tensor<U>& t) {
  return t.rank() ? t.strides()[t.rank() - 1] : 1;
}

// body(lane) for every lane, spread over threads when the op touches enough elements (`work`).
// The body must not throw: checks belong before the loop.
template <class F>
void parallel_for_lanes(Index lanes, Index work, F&& body) {
  parallel_for(lanes, work, body);
}

}  // namespace drt::detail
