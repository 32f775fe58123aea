// drt/nn/softmax.hpp — softmax and log-softmax along one axis, with their gradients.
//
// Shapes: x (..., A, ...) → the same shape; each lane along `axis` (extent A) is normalised.
//
// The lane's maximum is subtracted before exponentiating, so large logits never overflow.
// −inf entries (masked positions) get probability exactly 0 (log-probability −inf) and zero
// gradient. A lane that is entirely −inf (a fully masked row) gives all zeros from softmax and
// all −inf from log_softmax, with zero gradient: never NaN.
//
// Device tensors run the same rules in drt/cuda/nn/softmax.cuh (one warp or block per lane).
#pragma once

#include <cmath>
#include <limits>

#include "drt/autodiff/var.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/softmax.cuh"
#endif

namespace drt {
namespace detail {

template <class T>
T lane_max(const T* x, Index n, Index step) {
  T m = -std::numeric_limits<T>::infinity();
  for (Index k = 0; k < n; ++k) m = x[k * step] > m ? x[k * step] : m;
  return m;
}

// log Σ exp(x) over a lane; −inf for a lane that is empty or entirely −inf.
template <class T>
T lane_logsumexp(const T* x, Index n, Index step) {
  const T m = lane_max(x, n, step);
  if (m == -std::numeric_limits<T>::infinity()) return m;
  T s = T(0);
  for (Index k = 0; k < n; ++k) s += std::exp(x[k * step] - m);
  return m + std::log(s);
}

}  // namespace detail

// Raw forward: a fresh row-major tensor (from `arena`, else the heap).
template <class T>
Tensor<T> softmax(const Tensor<T>& x, int axis = -1, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  if (!x.on_host()) {
    Tensor<T> y = Tensor<T>::empty(x.shape(), arena, x.device());
    DRT_ON_DEVICE("softmax", cuda::softmax_forward(x, a, y));
    return y;
  }
  Tensor<T> y = Tensor<T>::empty(x.shape(), arena);
  const Index n = x.shape()[a], xs = x.strides()[a], ys = y.strides()[a];
  detail::parallel_for_lanes(detail::lane_count(x.shape(), a), x.numel(), [&](Index lane) {
    const T* in = x.data() + detail::lane_offset(x, a, lane);
    T* out = y.data() + detail::lane_offset(y, a, lane);
    const T m = detail::lane_max(in, n, xs);
    if (m == -std::numeric_limits<T>::infinity()) {  // fully masked: no probability anywhere
      for (Index k = 0; k < n; ++k) out[k * ys] = T(0);
      return;
    }
    T s = T(0);
    for (Index k = 0; k < n; ++k) s += (out[k * ys] = std::exp(in[k * xs] - m));
    const T inv = T(1) / s;
    for (Index k = 0; k < n; ++k) out[k * ys] *= inv;
  });
  return y;
}

template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, int axis = -1, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  if (!x.on_host()) {
    Tensor<T> y = Tensor<T>::empty(x.shape(), arena, x.device());
    DRT_ON_DEVICE("log_softmax", cuda::log_softmax_forward(x, a, y));
    return y;
  }
  Tensor<T> y = Tensor<T>::empty(x.shape(), arena);
  const Index n = x.shape()[a], xs = x.strides()[a], ys = y.strides()[a];
  detail::parallel_for_lanes(detail::lane_count(x.shape(), a), x.numel(), [&](Index lane) {
    const T* in = x.data() + detail::lane_offset(x, a, lane);
    T* out = y.data() + detail::lane_offset(y, a, lane);
    const T lse = detail::lane_logsumexp(in, n, xs);
    // An all −inf lane has lse = −inf; x − lse would be NaN there, the answer is −inf.
    for (Index k = 0; k < n; ++k)
      out[k * ys] = lse == -std::numeric_limits<T>::infinity() ? lse : in[k * xs] - lse;
  });
  return y;
}

// y = softmax(x);  dx = y ⊙ (g − Σ g·y)   (y = 0 at −inf entries, so their gradient is 0)
template <class T>
Var<T> softmax(const Var<T>& x, int axis = -1) {
  const int a = x.shape().normalize_axis(axis);
  Var<T> out = make_output(softmax(x.value(), a, step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, out] {
      const Tensor<T>& y = out.value();
      const Tensor<T>& g = out.grad();
      const Tensor<T>& dx = x.node()->grad_buffer();
      if (!y.on_host()) {
        DRT_ON_DEVICE("softmax", cuda::softmax_backward(y, g, dx, a));
        return;
      }
      const Index n = y.shape()[a], ys = y.strides()[a], gs = g.strides()[a], ds = dx.strides()[a];
      detail::parallel_for_lanes(detail::lane_count(y.shape(), a), y.numel(), [&](Index lane) {
        const T* py = y.data() + detail::lane_offset(y, a, lane);
        const T* pg = g.data() + detail::lane_offset(g, a, lane);
        T* pd = dx.data() + detail::lane_offset(dx, a, lane);
        T dot = T(0);
        for (Index k = 0; k < n; ++k) dot += pg[k * gs] * py[k * ys];
        for (Index k = 0; k < n; ++k) pd[k * ds] += py[k * ys] * (pg[k * gs] - dot);
      });
    });
  return out;
}

// y = log_softmax(x);  dx_j = g_j − p_j Σ_k g_k with p = exp(y). An entry with y = −inf is
// constant (−inf whatever the finite inputs), so its g takes no part and its x gets no gradient.
template <class T>
Var<T> log_softmax(const Var<T>& x, int axis = -1) {
  const int a = x.shape().normalize_axis(axis);
  Var<T> out = make_output(log_softmax(x.value(), a, step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, out] {
      constexpr T minus_inf = -std::numeric_limits<T>::infinity();
      const Tensor<T>& y = out.value();
      const Tensor<T>& g = out.grad();
      const Tensor<T>& dx = x.node()->grad_buffer();
      if (!y.on_host()) {
        DRT_ON_DEVICE("log_softmax", cuda::log_softmax_backward(y, g, dx, a));
        return;
      }
      const Index n = y.shape()[a], ys = y.strides()[a], gs = g.strides()[a], ds = dx.strides()[a];
      detail::parallel_for_lanes(detail::lane_count(y.shape(), a), y.numel(), [&](Index lane) {
        const T* py = y.data() + detail::lane_offset(y, a, lane);
        const T* pg = g.data() + detail::lane_offset(g, a, lane);
        T* pd = dx.data() + detail::lane_offset(dx, a, lane);
        T total = T(0);
        for (Index k = 0; k < n; ++k)
          if (py[k * ys] != minus_inf) total += pg[k * gs];
        for (Index k = 0; k < n; ++k)
          if (py[k * ys] != minus_inf) pd[k * ds] += pg[k * gs] - std::exp(py[k * ys]) * total;
      });
    });
  return out;
}

}  // namespace drt
