// drt/autodiff/elementwise.hpp — differentiable elementwise ops with NumPy broadcasting.
//
// Shapes: inputs broadcast to a common shape S; the output has shape S. In backward, the
// gradient of an input that was broadcast is summed back to the input's own shape.
//
// Forward and backward sit together; each is one fused expression (one pass over memory).
#pragma once

#include "drt/autodiff/var.hpp"
#include "drt/core/reduce.hpp"

namespace drt {
namespace detail {

// in.grad += out.grad, summed over broadcast axes when `in` is smaller than out.
template <class T>
void pass_broadcast(const Var<T>& in, const Var<T>& out) {
  if (!in.requires_grad()) return;
  if (in.shape() == out.shape()) in.accumulate_grad_of(out);
  else add_sum_to(in.node()->grad_buffer(), out.grad());
}

// in.grad += e, summing over broadcast axes when `in` is smaller than e's shape.
template <class T, class E>
void accumulate_broadcast(const Var<T>& in, const E& e) {
  if (!in.requires_grad()) return;
  const Shape es = expr::node(e).shape();
  if (es == in.shape()) {
    in.accumulate_grad(e);
  } else {
    add_sum_to(in.node()->grad_buffer(), eval(e, step_arena()));
  }
}

// A plain number as a constant Var of shape () on `device`. (The operators below with a plain
// number no longer use it: they keep the number in the expression, which needs no tensor.)
template <class T>
Var<T> scalar_var(T v, Device device = Device::cpu) {
  return constant(Tensor<T>::full(Shape{}, v, step_arena(), device));
}

}  // namespace detail

// ---- binary ops ------------------------------------------------------------------------------

// out = a + b;  da = g, db = g
template <class T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) {
  Var<T> out = make_output(eval(a.value() + b.value(), step_arena()), {&a, &b});
  if (out.requires_grad())
    record_backward(out, [a, b, out] {
      detail::pass_broadcast(a, out);
      detail::pass_broadcast(b, out);
    });
  return out;
}

// out = a - b;  da = g, db = -g
template <class T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) {
  Var<T> out = make_output(eval(a.value() - b.value(), step_arena()), {&a, &b});
  if (out.requires_grad())
    record_backward(out, [a, b, out] {
      detail::accumulate_broadcast(b, -out.grad());  // before a may take out's gradient as its own
      detail::pass_broadcast(a, out);
    });
  return out;
}

// out = a * b;  da = g * b, db = g * a
template <class T>
Var<T> operator*(const Var<T>& a, const Var<T>& b) {
  Var<T> out = make_output(eval(a.value() * b.value(), step_arena()), {&a, &b});
  if (out.requires_grad())
    record_backward(out, [a, b, out] {
      detail::accumulate_broadcast(a, out.grad() * b.value());
      detail::accumulate_broadcast(b, out.grad() * a.value());
    });
  return out;
}

// out = a / b;  da = g / b, db = -g * a / b²
template <class T>
Var<T> operator/(const Var<T>& a, const Var<T>& b) {
  Var<T> out = make_output(eval(a.value() / b.value(), step_arena()), {&a, &b});
  if (out.requires_grad())
    record_backward(out, [a, b, out] {
      detail::accumulate_broadcast(a, out.grad() / b.value());
      detail::accumulate_broadcast(b, -out.grad() * out.value() / b.value());
    });
  return out;
}

// With a plain number on either side. The number stays a number inside the expression (an
// expr::Scalar), so it lives wherever the Var does (host or device) and costs no tensor; the
// arithmetic is the one a shape-() constant Var would give, and only the Var gets a gradient.
// out = a + s, s + a;  da = g
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator+(const Var<T>& a, S s) {
  Var<T> out = make_output(eval(a.value() + T(s), step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, out] { a.accumulate_grad_of(out); });
  return out;
}
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator+(S s, const Var<T>& a) {
  Var<T> out = make_output(eval(T(s) + a.value(), step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, out] { a.accumulate_grad_of(out); });
  return out;
}
// out = a - s;  da = g
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator-(const Var<T>& a, S s) {
  Var<T> out = make_output(eval(a.value() - T(s), step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, out] { a.accumulate_grad_of(out); });
  return out;
}
// out = s - a;  da = -g
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator-(S s, const Var<T>& a) {
  Var<T> out = make_output(eval(T(s) - a.value(), step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, out] { a.accumulate_grad(-out.grad()); });
  return out;
}
// out = a · s, s · a;  da = g · s
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator*(const Var<T>& a, S s) {
  const T c = T(s);
  Var<T> out = make_output(eval(a.value() * c, step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, c, out] { a.accumulate_grad(out.grad() * c); });
  return out;
}
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator*(S s, const Var<T>& a) {
  const T c = T(s);
  Var<T> out = make_output(eval(c * a.value(), step_arena()), {&a});
  if (out.requires_grad()) record_backward(out, [a, c, out] { a.accumulate_grad(out.grad() * c); });
  return out;
}
// out = a / s, computed as a · (1/s) (one division, then products);  da = g · (1/s)
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator/(const Var<T>& a, S s) { return a * (T(1) / T(s)); }
// out = s / a;  da = -g · out / a
template <class T, class S> requires std::is_arithmetic_v<S>
Var<T> operator/(S s, const Var<T>& a) {
  Var<T> out = make_output(eval(T(s) / a.value(), step_arena()), {&a});
  if (out.requires_grad())
    record_backward(out, [a, out] { a.accumulate_grad(-out.grad() * out.value() / a.value()); });
  return out;
}

// cond != 0 ? a : b, with cond a constant tensor (e.g. from gt(x.value(), 0)).
// da = g where cond, db = g elsewhere.
template <class T>
Var<T> select(const Tensor<T>& cond, const Var<T>& a, const Var<T>& b) {
  Var<T> out = make_output(eval(select(cond, a.value(), b.value()), step_arena()), {&a, &b});
  if (out.requires_grad())
    record_backward(out, [cond, a, b, out] {
      detail::accumulate_broadcast(a, select(cond, out.grad(), T(0)));
      detail::accumulate_broadcast(b, select(cond, T(0), out.grad()));
    });
  return out;
}

// ---- unary ops -------------------------------------------------------------------------------
// Each line: forward expression; backward expression in terms of x, y (= output) and g.

#define DRT_UNARY_VAR_OP(name, forward, backward)                                   \
  template <class T>                                                                \
  Var<T> name(const Var<T>& x_) {                                                   \
    Var<T> out = make_output(eval(forward, step_arena()), {&x_});                   \
    if (out.requires_grad())                                                        \
      record_backward(out, [x_, out] {                                              \
        [[maybe_unused]] const Tensor<T>& x = x_.value();                           \
        [[maybe_unused]] const Tensor<T>& y = out.value();                          \
        const Tensor<T>& g = out.grad();                                            \
        x_.accumulate_grad(backward);                                               \
      });                                                                           \
    return out;                                                                     \
  }

// The forward expressions name the input `x_.value()`; the backward ones use x, y and g.
DRT_UNARY_VAR_OP(operator-, -x_.value(), -g)
DRT_UNARY_VAR_OP(exp, exp(x_.value()), g * y)
DRT_UNARY_VAR_OP(log, log(x_.value()), g / x)
DRT_UNARY_VAR_OP(sqrt, sqrt(x_.value()), g * T(0.5) / y)
DRT_UNARY_VAR_OP(rsqrt, rsqrt(x_.value()), g * T(-0.5) * y * y * y)
DRT_UNARY_VAR_OP(square, square(x_.value()), g * T(2) * x)
DRT_UNARY_VAR_OP(abs, abs(x_.value()), select(gt(x, T(0)), g, select(lt(x, T(0)), -g, T(0))))
DRT_UNARY_VAR_OP(tanh, tanh(x_.value()), g * (T(1) - y * y))
DRT_UNARY_VAR_OP(sigmoid, sigmoid(x_.value()), g * y * (T(1) - y))
DRT_UNARY_VAR_OP(relu, relu(x_.value()), select(gt(x, T(0)), g, T(0)))
DRT_UNARY_VAR_OP(sin, sin(x_.value()), g * cos(x))
DRT_UNARY_VAR_OP(cos, cos(x_.value()), -g * sin(x))
// silu(x) = x·σ(x);  silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
DRT_UNARY_VAR_OP(silu, silu(x_.value()), g * sigmoid(x) * (T(1) + x * (T(1) - sigmoid(x))))
#undef DRT_UNARY_VAR_OP

// x^p for a constant exponent p;  dx = g · p · x^(p−1)
template <class T>
Var<T> pow(const Var<T>& x, T p) {
  Var<T> out = make_output(eval(pow(x.value(), p), step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, p, out] { x.accumulate_grad(out.grad() * p * pow(x.value(), p - T(1))); });
  return out;
}

}  // namespace drt
