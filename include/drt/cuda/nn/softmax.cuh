// drt/cuda/nn/softmax.cuh — softmax and log-softmax along one axis on the device, and their
// backward passes (the kernels behind drt/nn/softmax.hpp).
//
// Shapes: x (..., A, ...) → y of the same shape; every lane along `axis` (A elements) is one
// group of threads (common.cuh): a warp for A ≤ 1024, a block otherwise. Any strides.
//
// The CPU's rules, step for step: the lane's maximum m is subtracted before exp; a lane that is
// entirely −inf gives softmax 0 (log_softmax −inf) and no gradient; softmax = exp(x − m)·(1/Σ),
// log_softmax = x − (m + log Σ). Only the order of the additions differs (a tree, not a loop).
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <int G, bool Log, class T>
__global__ void __launch_bounds__(kBlock) softmax_kernel(const T* x, Lanes xl, T* y, Lanes yl, Index n, Index lanes) {
  const Index lane = group_lane<G>();
  const int t = group_rank<G>();
  if (lane >= lanes) return;  // only with G = 32: the whole warp leaves
  const T* in = x + start_of(xl, lane);
  T* out = y + start_of(yl, lane);
  const Index xs = xl.step, ys = yl.step;
  T m = kMinusInf<T>;
  for (Index k = t; k < n; k += G) m = MaxOp{}(m, in[k * xs]);
  m = group_reduce<G>(m, MaxOp{});
  if constexpr (!Log) {
    if (m == kMinusInf<T>) {  // fully masked: no probability anywhere (uniform over the group)
      for (Index k = t; k < n; k += G) out[k * ys] = T(0);
      return;
    }
    T s = T(0);
    for (Index k = t; k < n; k += G) s += (out[k * ys] = dev_exp(in[k * xs] - m));
    s = group_reduce<G>(s, SumOp{});
    const T inv = T(1) / s;
    for (Index k = t; k < n; k += G) out[k * ys] *= inv;  // the thread's own elements: no barrier
  } else {
    T lse = m;
    if (m != kMinusInf<T>) {
      T s = T(0);
      for (Index k = t; k < n; k += G) s += dev_exp(in[k * xs] - m);
      lse = m + dev_log(group_reduce<G>(s, SumOp{}));
    }
    for (Index k = t; k < n; k += G) out[k * ys] = lse == kMinusInf<T> ? lse : in[k * xs] - lse;
  }
}

// dx += y ⊙ (g − Σ g·y)                      (softmax)
// dx += g − exp(y)·Σ g   where y ≠ −inf      (log_softmax)
template <int G, bool Log, class T>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_kernel(const T* y, Lanes yl, const T* g, Lanes gl, T* dx, Lanes dl, Index n, Index lanes) {
  const Index lane = group_lane<G>();
  const int t = group_rank<G>();
  if (lane >= lanes) return;
  const T* py = y + start_of(yl, lane);
  const T* pg = g + start_of(gl, lane);
  T* pd = dx + start_of(dl, lane);
  const Index ys = yl.step, gs = gl.step, ds = dl.step;
  T acc = T(0);
  for (Index k = t; k < n; k += G) {
    if constexpr (Log) {
      if (py[k * ys] != kMinusInf<T>) acc += pg[k * gs];
    } else {
      acc += pg[k * gs] * py[k * ys];
    }
  }
  acc = group_reduce<G>(acc, SumOp{});
  for (Index k = t; k < n; k += G) {
    if constexpr (Log) {
      if (py[k * ys] != kMinusInf<T>) pd[k * ds] += pg[k * gs] - dev_exp(py[k * ys]) * acc;
    } else {
      pd[k * ds] += py[k * ys] * (pg[k * gs] - acc);
    }
  }
}

template <bool Log, class T>
void launch_softmax(const Tensor<T>& x, int axis, const Tensor<T>& y) {
  const Index n = x.shape()[axis], lanes = x.numel() / (n ? n : 1);
  if (x.numel() == 0) return;
  const Lanes xl = lanes_along(x, axis), yl = lanes_along(y, axis);
  if (n <= kWarpLaneMax)
    softmax_kernel<32, Log><<<lane_blocks(lanes, 32), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, y.data(), yl, n, lanes);
  else
    softmax_kernel<kBlock, Log><<<lane_blocks(lanes, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, y.data(), yl, n, lanes);
  DRT_CUDA_CHECK_LAUNCH();
}

template <bool Log, class T>
void launch_softmax_backward(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx, int axis) {
  const Index n = y.shape()[axis], lanes = y.numel() / (n ? n : 1);
  if (y.numel() == 0) return;
  const Lanes yl = lanes_along(y, axis), gl = lanes_along(g, axis), dl = lanes_along(dx, axis);
  if (n <= kWarpLaneMax)
    softmax_backward_kernel<32, Log>
        <<<lane_blocks(lanes, 32), kBlock, 0, ::drt::cuda::stream()>>>(y.data(), yl, g.data(), gl, dx.data(), dl, n, lanes);
  else
    softmax_backward_kernel<kBlock, Log>
        <<<lane_blocks(lanes, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(y.data(), yl, g.data(), gl, dx.data(), dl, n, lanes);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace nn_detail

// y = softmax(x) along `axis` (normalised); y has x's shape, any strides.
template <class T>
void softmax_forward(const Tensor<T>& x, int axis, const Tensor<T>& y) {
  nn_detail::launch_softmax<false>(x, axis, y);
}
template <class T>
void log_softmax_forward(const Tensor<T>& x, int axis, const Tensor<T>& y) {
  nn_detail::launch_softmax<true>(x, axis, y);
}
// dx += the gradient through softmax / log_softmax, from its output y and the output's gradient g.
template <class T>
void softmax_backward(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx, int axis) {
  nn_detail::launch_softmax_backward<false>(y, g, dx, axis);
}
template <class T>
void log_softmax_backward(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx, int axis) {
  nn_detail::launch_softmax_backward<true>(y, g, dx, axis);
}

}  // namespace drt::cuda
