// drt/nn/topk.hpp — the k largest values along an axis, with their positions.
//
// Shapes: x (..., A, ...) → values and indices (..., k, ...): the axis of extent A becomes k.
// Sorted descending; equal values are ordered by the lower index first; −inf values are allowed.
// The indices carry no gradient; the gradient of the values goes back to the picked positions.
//
// Each lane keeps a binary heap of its current k best positions, worst at the root, directly in
// its own slots of the output index tensor: no scratch memory, O(A log k) per lane, and the final
// heap sort leaves the slots best-first.
//
// On the device (drt/cuda/nn/topk.cuh) the indices come back on the device and are the CPU's
// exactly: the order (value, then lower index) is total, so the k best are unique.
#pragma once

#include <cstdint>
#include <limits>
#include <utility>

#include "drt/autodiff/var.hpp"
#include "drt/core/reduce.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/topk.cuh"
#endif

namespace drt {

template <class T>
struct TopK {
  Var<T> values;
  IndexTensor indices;
};

namespace detail {

// A lane of x (read only) and the lane's k index slots, used as a heap ordered worst-first.
template <class T>
struct TopKHeap {
  const T* x;
  Index x_step;
  std::int32_t* slot;
  Index slot_step;

  // a ranks below b: smaller value, or the same value at a higher index.
  bool worse(std::int32_t a, std::int32_t b) const {
    const T va = x[a * x_step], vb = x[b * x_step];
    return va < vb || (va == vb && a > b);
  }
  std::int32_t& at(Index i) const { return slot[i * slot_step]; }

  void sift_up(Index i) const {
    while (i > 0) {
      const Index parent = (i - 1) / 2;
      if (!worse(at(i), at(parent))) return;
      std::swap(at(i), at(parent));
      i = parent;
    }
  }
  void sift_down(Index i, Index size) const {
    for (;;) {
      const Index left = 2 * i + 1, right = left + 1;
      Index worst = i;
      if (left < size && worse(at(left), at(worst))) worst = left;
      if (right < size && worse(at(right), at(worst))) worst = right;
      if (worst == i) return;
      std::swap(at(i), at(worst));
      i = worst;
    }
  }

  // Fills the k slots with the positions of the k best of the lane's n elements, best first.
  void select(Index n, Index k) const {
    if (k == 0) return;
    for (Index c = 0; c < n; ++c) {
      const auto candidate = static_cast<std::int32_t>(c);
      if (c < k) {
        at(c) = candidate;
        sift_up(c);
      } else if (worse(at(0), candidate)) {
        at(0) = candidate;
        sift_down(0, k);
      }
    }
    for (Index end = k - 1; end > 0; --end) {  // heap sort: the worst goes last
      std::swap(at(0), at(end));
      sift_down(0, end);
    }
  }
};

inline Shape with_extent(Shape s, int axis, Index extent) {
  s[axis] = extent;
  return s;
}

}  // namespace detail

// Raw forward: the positions of the k largest along `axis` (from `arena`, else the heap).
template <class T>
IndexTensor topk_indices(const Tensor<T>& x, int k, int axis = -1, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  const Index n = x.shape()[a];
  DRT_CHECK(k >= 0 && k <= n, "topk: k = ", k, " is outside [0, ", n, "], the extent of axis ", a, " of shape ",
            x.shape().str());
  DRT_CHECK(n <= std::numeric_limits<std::int32_t>::max(), "topk: axis ", a, " of shape ", x.shape().str(),
            " is too long for 32-bit indices");
  if (!x.on_host()) {
    IndexTensor idx = IndexTensor::empty(detail::with_extent(x.shape(), a, k), arena, x.device());
    DRT_ON_DEVICE("topk", cuda::topk_select(x, k, a, idx));
    return idx;
  }
  IndexTensor idx = IndexTensor::empty(detail::with_extent(x.shape(), a, k), arena);
  const Index xs = x.strides()[a], is = idx.strides()[a];
  detail::parallel_for_lanes(detail::lane_count(x.shape(), a), x.numel(), [&](Index lane) {
    const detail::TopKHeap<T> heap{x.data() + detail::lane_offset(x, a, lane), xs,
                                   idx.data() + detail::lane_offset(idx, a, lane), is};
    heap.select(n, k);
  });
  return idx;
}

// values = x gathered at the top-k positions;  dx[picked] += g
template <class T>
TopK<T> topk(const Var<T>& x, int k, int axis = -1) {
  const int a = x.shape().normalize_axis(axis);
  const Tensor<T>& xv = x.value();
  IndexTensor idx = topk_indices(xv, k, a, step_arena());
  Tensor<T> values = Tensor<T>::empty(idx.shape(), step_arena(), xv.device());
  const Index xs = xv.strides()[a], is = idx.strides()[a], vs = values.strides()[a];
  if (!xv.on_host()) {
    DRT_ON_DEVICE("topk", cuda::topk_values(xv, idx, a, values));
  } else {
    detail::parallel_for_lanes(detail::lane_count(idx.shape(), a), idx.numel(), [&](Index lane) {
      const T* in = xv.data() + detail::lane_offset(xv, a, lane);
      const std::int32_t* pi = idx.data() + detail::lane_offset(idx, a, lane);
      T* pv = values.data() + detail::lane_offset(values, a, lane);
      for (Index p = 0; p < k; ++p) pv[p * vs] = in[pi[p * is] * xs];
    });
  }
  Var<T> out = make_output(values, {&x});
  if (out.requires_grad())
    record_backward(out, [x, idx, a, k, out] {
      const Tensor<T>& g = out.grad();
      const Tensor<T>& dx = x.node()->grad_buffer();
      if (!g.on_host()) {
        DRT_ON_DEVICE("topk", cuda::topk_backward(g, idx, a, dx));
        return;
      }
      const Index gs = g.strides()[a], ds = dx.strides()[a], is = idx.strides()[a];
      // Lanes touch disjoint parts of dx, and a lane's k positions are distinct: no races.
      detail::parallel_for_lanes(detail::lane_count(idx.shape(), a), idx.numel(), [&](Index lane) {
        const T* pg = g.data() + detail::lane_offset(g, a, lane);
        const std::int32_t* pi = idx.data() + detail::lane_offset(idx, a, lane);
        T* pd = dx.data() + detail::lane_offset(dx, a, lane);
        for (Index p = 0; p < k; ++p) pd[pi[p * is] * ds] += pg[p * gs];
      });
    });
  return TopK<T>{out, idx};
}

}  // namespace drt
