// drt/autodiff/view.hpp — differentiable views (reshape, permute, transpose, slice, unsqueeze,
// squeeze, broadcast_to) and the two shape ops that copy (contiguous, concat).
//
// Shapes: reshape       (...) → any shape with as many elements (one extent may be -1)
//         permute       (d0, ..., dn) → (d_order[0], ..., d_order[n]); transpose swaps two axes
//         slice         (..., A, ...) → (..., ⌈(end − begin) / step⌉, ...)
//         unsqueeze     adds an axis of extent 1; squeeze removes one
//         broadcast_to  (...) → a shape it broadcasts to (NumPy rules)
//         concat        parts (..., Aᵢ, ...) → (..., ΣAᵢ, ...)
//
// A view's output value shares the input's memory: nothing is copied. Its backward takes the
// same view of the input's gradient buffer and adds the output gradient into it, so each
// gradient element lands on exactly the input element the view read.
#pragma once

#include <array>
#include <initializer_list>
#include <memory>
#include <type_traits>

#include "drt/autodiff/var.hpp"
#include "drt/core/indexing.hpp"
#include "drt/core/reduce.hpp"

namespace drt {
namespace detail {

// How a view maps x's elements to its output's.
enum class ViewKind {
  same_order,  // every element, in x's order (reshape, unsqueeze, squeeze)
  reordered,   // every element, in another order (permute, transpose)
  part,        // some elements (slice)
};

// The output of a view op: `value` is view(x.value()) (or, for reshape, of a copy of it), and
// backward adds the output gradient into view(x's gradient buffer). A view that covers every
// element assigns the first gradient instead (Node::grad_slot), and one that keeps the order
// hands the output's gradient buffer itself to x where it can (Var::accumulate_grad_of); a
// slice must add into a zeroed buffer, since it writes only part of it.
template <class T, class View>
Var<T> view_output(const Var<T>& x, const Tensor<T>& value, View view, ViewKind kind) {
  Var<T> out = make_output(value, {&x});
  if (out.requires_grad())
    record_backward(out, [x, view, out, kind] {
      if (kind == ViewKind::part) return void(view(x.node()->grad_buffer()) += out.grad());
      // Gradient buffers are contiguous, so the output's, reshaped, is x's gradient in x's order.
      if (kind == ViewKind::same_order) return x.accumulate_grad_of(out, out.grad().reshape(x.shape()));
      const auto slot = x.node()->grad_slot();
      if (slot.fresh) view(slot.buffer).assign(out.grad());
      else view(slot.buffer) += out.grad();
    });
  return out;
}

}  // namespace detail

// A view with a new shape. A non-contiguous value is first copied into the step's arena.
template <class T>
Var<T> reshape(const Var<T>& x, Shape shape) {
  const Tensor<T> value = x.value().contiguous(step_arena()).reshape(shape);
  const Shape resolved = value.shape();  // with any -1 filled in
  // Gradient buffers are always contiguous, so the same reshape applies to them.
  return detail::view_output(x, value, [resolved](const Tensor<T>& t) { return t.reshape(resolved); },
                             detail::ViewKind::same_order);
}

// Output axis i is input axis order[i].
template <class T>
Var<T> permute(const Var<T>& x, std::initializer_list<int> order) {
  DRT_CHECK(static_cast<int>(order.size()) == x.rank(), "permute: ", order.size(), " axes given for shape ",
            x.shape().str());
  std::array<int, kMaxRank> axes{};
  std::copy(order.begin(), order.end(), axes.begin());
  const int count = x.rank();
  return detail::view_output(x, x.value().permute(axes.data(), count),
                             [axes, count](const Tensor<T>& t) { return t.permute(axes.data(), count); },
                             detail::ViewKind::reordered);
}

template <class T>
Var<T> transpose(const Var<T>& x, int a, int b) {
  return detail::view_output(x, x.value().transpose(a, b), [a, b](const Tensor<T>& t) { return t.transpose(a, b); },
                             detail::ViewKind::reordered);
}

// Elements begin, begin + step, ... < end along `axis`.
template <class T>
Var<T> slice(const Var<T>& x, int axis, Index begin, Index end, Index step = 1) {
  return detail::view_output(
      x, x.value().slice(axis, begin, end, step), [=](const Tensor<T>& t) { return t.slice(axis, begin, end, step); },
      detail::ViewKind::part);
}

template <class T>
Var<T> unsqueeze(const Var<T>& x, int axis) {
  return detail::view_output(x, x.value().unsqueeze(axis), [axis](const Tensor<T>& t) { return t.unsqueeze(axis); },
                             detail::ViewKind::same_order);
}

template <class T>
Var<T> squeeze(const Var<T>& x, int axis) {
  return detail::view_output(x, x.value().squeeze(axis), [axis](const Tensor<T>& t) { return t.squeeze(axis); },
                             detail::ViewKind::same_order);
}

// A stride-0 view; backward sums the gradient over the repeated axes.
template <class T>
Var<T> broadcast_to(const Var<T>& x, const Shape& shape) {
  Var<T> out = make_output(x.value().broadcast_to(shape), {&x});
  if (out.requires_grad()) record_backward(out, [x, out] { add_sum_to(x.node()->grad_buffer(), out.grad()); });
  return out;
}

// A row-major value: copied into the step's arena unless it already is one. Gradient: identity.
template <class T>
Var<T> contiguous(const Var<T>& x) {
  Var<T> out = make_output(x.value().contiguous(step_arena()), {&x});
  if (out.requires_grad()) record_backward(out, [x, out] { x.accumulate_grad_of(out); });
  return out;
}

// Joins the parts along `axis` (a copy); each part's gradient is its slice of the output's.
template <class T>
Var<T> concat(std::initializer_list<Var<T>> parts, int axis) {
  const int count = static_cast<int>(parts.size());
  DRT_CHECK(count > 0, "concat: no tensors to concatenate");
  const Var<T>* in = parts.begin();
  const int a = in[0].shape().normalize_axis(axis);
  Tensor<T> value = Tensor<T>::empty(detail::concat_shape(count, a, [in](int i) { return in[i].shape(); }),
                                     step_arena(), in[0].device());
  Index begin = 0;
  for (int i = 0; i < count; ++i) {
    value.slice(a, begin, begin + in[i].size(a)).assign(in[i].value());
    begin += in[i].size(a);
  }
  Var<T> out = make_output(value, {});
  if (tape().grad_enabled())
    for (const Var<T>& p : parts) out.node()->requires_grad |= p.requires_grad();
  if (out.requires_grad()) {
    // The closure outlives `parts`; keep the handles in the arena (a std::vector would be a heap
    // allocation on every step).
    static_assert(std::is_trivially_copyable_v<Var<T>> && std::is_trivially_destructible_v<Var<T>>);
    Var<T>* saved = step_arena()->allocate_array<Var<T>>(static_cast<std::size_t>(count));
    std::uninitialized_copy(parts.begin(), parts.end(), saved);
    record_backward(out, [saved, count, a, out] {
      Index from = 0;
      for (int i = 0; i < count; ++i) {
        const Index n = saved[i].size(a);
        saved[i].accumulate_grad(out.grad().slice(a, from, from + n));
        from += n;
      }
    });
  }
  return out;
}

}  // namespace drt
