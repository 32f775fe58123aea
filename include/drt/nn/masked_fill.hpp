// drt/nn/masked_fill.hpp — overwrite masked positions with a constant (e.g. −inf before softmax).
//
// Shapes: x (...), mask broadcastable to x's shape → x's shape. mask != 0 marks a position to fill.
// Filled positions no longer depend on x, so their gradient is 0.
#pragma once

#include "drt/autodiff/var.hpp"

namespace drt {

template <class T>
Var<T> masked_fill(const Var<T>& x, const Tensor<T>& mask, T value) {
  DRT_CHECK(broadcastable_to(mask.shape(), x.shape()), "masked_fill: mask of shape ", mask.shape().str(),
            " cannot be broadcast to input of shape ", x.shape().str());
  Tensor<T> y = Tensor<T>::empty(x.shape(), step_arena());
  y.assign(select(mask, value, x.value()));
  Var<T> out = make_output(y, {&x});
  if (out.requires_grad())
    record_backward(out, [x, mask, out] { x.accumulate_grad(select(mask, T(0), out.grad())); });
  return out;
}

}  // namespace drt
