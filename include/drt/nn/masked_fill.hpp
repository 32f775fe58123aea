// drt/nn/masked_fill.hpp — overwrite masked positions with a constant (e.g. −inf before softmax).
//
// Shapes: x (...), mask broadcastable to x's shape → x's shape. mask != 0 marks a position to fill.
// Filled positions no longer depend on x, so their gradient is 0.
// On the device this is one fused expression kernel each way; a host mask is copied over first.
#pragma once

#include "drt/autodiff/var.hpp"

namespace drt {

template <class T>
Var<T> masked_fill(const Var<T>& x, const Tensor<T>& mask, T value) {
  DRT_CHECK(broadcastable_to(mask.shape(), x.shape()), "masked_fill: mask of shape ", mask.shape().str(),
            " cannot be broadcast to input of shape ", x.shape().str());
  // The mask follows x to its device (one copy; none when it is there already, as on the CPU).
  const Tensor<T> m = mask.to(x.device(), step_arena());
  Tensor<T> y = Tensor<T>::empty(x.shape(), step_arena(), x.device());
  y.assign(select(m, value, x.value()));
  Var<T> out = make_output(y, {&x});
  if (out.requires_grad())
    record_backward(out, [x, m, out] { x.accumulate_grad(select(m, T(0), out.grad())); });
  return out;
}

}  // namespace drt
