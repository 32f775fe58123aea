// drt/autodiff/reduce.hpp — differentiable reductions.
//
// Shapes: x (..., A, ...) → sum/mean/max along that axis → (..., ...), or (..., 1, ...) with
// keepdim; sum_all/mean_all → () (one element).
#pragma once

#include "drt/autodiff/var.hpp"
#include "drt/core/indexing.hpp"
#include "drt/core/reduce.hpp"

namespace drt {

// out = Σ_a x;  dx = g broadcast back along the axis
template <class T>
Var<T> sum(const Var<T>& x, int axis, bool keepdim = false) {
  const int a = x.shape().normalize_axis(axis);
  Var<T> out = make_output(sum(x.value(), a, keepdim, step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, keepdim, out] {
      const Tensor<T> g = keepdim ? out.grad() : out.grad().unsqueeze(a);
      x.accumulate_grad(g);  // broadcasts along axis a
    });
  return out;
}

template <class T>
Var<T> mean(const Var<T>& x, int axis, bool keepdim = false) {
  const Index n = x.shape().dim(axis);
  DRT_CHECK(n > 0, "mean: axis ", axis, " of shape ", x.shape().str(), " is empty");
  return sum(x, axis, keepdim) * (T(1) / T(n));
}

// out = max_a x;  dx = g at the (first) maximum, 0 elsewhere
template <class T>
Var<T> max(const Var<T>& x, int axis, bool keepdim = false) {
  const int a = x.shape().normalize_axis(axis);
  IndexTensor where;
  Var<T> out = make_output(max(x.value(), a, keepdim, step_arena(), &where), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, keepdim, where, out] {
      const Tensor<T> g = keepdim ? out.grad() : out.grad().unsqueeze(a);
      const IndexTensor w = keepdim ? where : where.unsqueeze(a);
      const Tensor<T>& dx = x.node()->grad_buffer();
      if (!dx.on_host()) {
        // dx[lane with coordinate a = argmax] += g[lane]: a scatter_add along a (the argmax
        // came from the device max, so it is in range and on the device already).
        detail::scatter_add_on_device(dx, a, w, g);
        return;
      }
      // Walk every reduced lane; add the lane's gradient at its argmax.
      const Tensor<T> gb = g.broadcast_to(x.shape());
      const IndexTensor wb = w.broadcast_to(x.shape());
      Index idx[kMaxRank] = {};
      for (Index n = 0; n < g.numel(); ++n) {
        Index rest = n;
        for (int d = g.rank() - 1; d >= 0; --d) {
          idx[d] = rest % g.shape()[d];
          rest /= g.shape()[d];
        }
        Index off_g = 0, off_w = 0, off_x = 0;
        for (int d = 0; d < g.rank(); ++d) {
          off_g += idx[d] * gb.strides()[d];
          off_w += idx[d] * wb.strides()[d];
          off_x += idx[d] * dx.strides()[d];
        }
        off_x += static_cast<Index>(wb.data()[off_w]) * dx.strides()[a];
        dx.data()[off_x] += gb.data()[off_g];
      }
    });
  return out;
}

// Sum of every element → a one-element tensor of shape ().
template <class T>
Var<T> sum_all(const Var<T>& x) {
  Tensor<T> v = sum_all_tensor(x.value(), step_arena());  // on x's device
  Var<T> out = make_output(v, {&x});
  if (out.requires_grad()) record_backward(out, [x, out] { x.accumulate_grad(out.grad()); });
  return out;
}

template <class T>
Var<T> mean_all(const Var<T>& x) {
  DRT_CHECK(x.numel() > 0, "mean_all: tensor of shape ", x.shape().str(), " is empty");
  return sum_all(x) * (T(1) / T(x.numel()));
}

}  // namespace drt
