// drt/core/expr.hpp — lazy elementwise expressions over tensors (expression templates).
//
//     Tensor<float> y = eval(silu(a) * b + 1.0f);        // one pass, no temporaries
//     out.assign(select(gt(x, 0.0f), x, 0.1f * x));      // into existing memory
//     grad += dy * sigmoid(x);                           // accumulate in place
//
// `a * b` on tensors does no work: it builds a small value (a Binary node holding two Leaf
// nodes). The work happens when an expression is written into a destination by eval(),
// assign() or +=: every element is computed once, reading each input once, with no
// intermediate tensors. Inputs may be any strided view; shapes broadcast as in NumPy.
//
// Every node answers the same four questions, which is all the evaluator needs:
//   shape()            the broadcast shape of the expression
//   bind(dst_shape)    fix the strides each leaf uses to walk the destination's shape
//   flat(dst_shape)    true if every leaf is contiguous with exactly dst's shape, so that the
//                      evaluator may use one flat loop (the common, vectorisable case)
//   at(i) / row(j)     the value at flat position i, or at column j of the current row after
//                      seek(row index) in the general strided path
// and one more, `devices()`: a bit mask of the devices its tensors live on, so that evaluation
// can send an expression over device tensors to the device and refuse one that mixes devices.
//
// On a device (drt/cuda/README.md): when this header is compiled by nvcc it includes
// drt/cuda/evaluate.cuh, and an expression written into a device tensor runs as one fused
// CUDA kernel built from the same node types and function objects (which are host-device for
// that reason). Compiled by a host compiler, writing into a device tensor throws.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "drt/core/device.hpp"
#include "drt/core/parallel.hpp"
#include "drt/core/tensor.hpp"

namespace drt {
namespace expr {

struct Node {};  // base of every expression node; marks a type as an expression

// The bit of a device in a node's devices() mask.
inline unsigned device_bit(Device d) { return 1u << static_cast<unsigned>(d); }

// A tensor read by an expression.
template <class T>
struct Leaf : Node {
  using value_type = T;
  explicit Leaf(const Tensor<T>& t)
      : data(t.data()), shape_(t.shape()), strides(t.strides()), contiguous(t.is_contiguous()), device(t.device()) {}

  Shape shape() const { return shape_; }
  void bind(const Shape& dst) {
    const int lead = dst.rank() - shape_.rank();
    for (int i = 0; i < dst.rank(); ++i) {
      const int src = i - lead;
      walk[i] = (src < 0 || shape_[src] != dst[i]) ? 0 : strides[src];
    }
    inner = dst.rank() ? walk[dst.rank() - 1] : 0;
  }
  bool flat(const Shape& dst) const { return contiguous && shape_ == dst; }
  bool unit_inner() const { return inner == 1; }
  T at(Index i) const { return data[i]; }
  void seek(const Index* idx, int outer_rank) {
    Index off = 0;
    for (int d = 0; d < outer_rank; ++d) off += idx[d] * walk[d];
    row_data = data + off;
  }
  template <bool Unit>
  T row(Index j) const {
    return Unit ? row_data[j] : row_data[j * inner];
  }

  const T* data;
  Shape shape_;
  Strides strides;
  bool contiguous;
  Device device;
  unsigned devices() const { return device_bit(device); }
  Strides walk{};
  Index inner = 0;
  const T* row_data = nullptr;
};

// A constant broadcast to every element.
template <class T>
struct Scalar : Node {
  using value_type = T;
  explicit Scalar(T v) : value(v) {}
  Shape shape() const { return Shape{}; }
  void bind(const Shape&) {}
  bool flat(const Shape&) const { return true; }
  bool unit_inner() const { return true; }
  T at(Index) const { return value; }
  void seek(const Index*, int) {}
  template <bool Unit>
  T row(Index) const { return value; }
  unsigned devices() const { return 0; }  // a number lives wherever it is needed
  T value;
};

template <class Op, class A>
struct Unary : Node {
  using value_type = typename A::value_type;
  Unary(Op o, A x) : op(o), a(x) {}
  Shape shape() const { return a.shape(); }
  void bind(const Shape& dst) { a.bind(dst); }
  bool flat(const Shape& dst) const { return a.flat(dst); }
  bool unit_inner() const { return a.unit_inner(); }
  value_type at(Index i) const { return op(a.at(i)); }
  void seek(const Index* idx, int r) { a.seek(idx, r); }
  template <bool Unit>
  value_type row(Index j) const { return op(a.template row<Unit>(j)); }
  unsigned devices() const { return a.devices(); }
  Op op;
  A a;
};

template <class Op, class A, class B>
struct Binary : Node {
  using value_type = typename A::value_type;
  static_assert(std::is_same_v<value_type, typename B::value_type>, "mixing element types in one expression");
  Binary(Op o, A x, B y) : op(o), a(x), b(y) {}
  Shape shape() const { return broadcast_shapes(a.shape(), b.shape(), "elementwise op"); }
  void bind(const Shape& dst) { a.bind(dst), b.bind(dst); }
  bool flat(const Shape& dst) const { return a.flat(dst) && b.flat(dst); }
  bool unit_inner() const { return a.unit_inner() && b.unit_inner(); }
  value_type at(Index i) const { return op(a.at(i), b.at(i)); }
  void seek(const Index* idx, int r) { a.seek(idx, r), b.seek(idx, r); }
  template <bool Unit>
  value_type row(Index j) const { return op(a.template row<Unit>(j), b.template row<Unit>(j)); }
  unsigned devices() const { return a.devices() | b.devices(); }
  Op op;
  A a;
  B b;
};

// cond != 0 ? a : b, elementwise.
template <class C, class A, class B>
struct Select : Node {
  using value_type = typename A::value_type;
  Select(C c, A x, B y) : cond(c), a(x), b(y) {}
  Shape shape() const {
    return broadcast_shapes(cond.shape(), broadcast_shapes(a.shape(), b.shape(), "select"), "select");
  }
  void bind(const Shape& dst) { cond.bind(dst), a.bind(dst), b.bind(dst); }
  bool flat(const Shape& dst) const { return cond.flat(dst) && a.flat(dst) && b.flat(dst); }
  bool unit_inner() const { return cond.unit_inner() && a.unit_inner() && b.unit_inner(); }
  value_type at(Index i) const { return cond.at(i) != 0 ? a.at(i) : b.at(i); }
  void seek(const Index* idx, int r) { cond.seek(idx, r), a.seek(idx, r), b.seek(idx, r); }
  template <bool Unit>
  value_type row(Index j) const {
    return cond.template row<Unit>(j) != 0 ? a.template row<Unit>(j) : b.template row<Unit>(j);
  }
  unsigned devices() const { return cond.devices() | a.devices() | b.devices(); }
  C cond;
  A a;
  B b;
};

// --- elementwise functions ------------------------------------------------------------------
// Each is a stateless function object, so that the compiler inlines it into the loop. They are
// DRT_HOST_DEVICE (empty for a host compiler) so that a CUDA kernel computes exactly the same
// formula as the CPU loop.
struct Add { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a + b; } };
struct Sub { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a - b; } };
struct Mul { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a * b; } };
struct Div { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a / b; } };
struct Maximum { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a > b ? a : b; } };
struct Minimum { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return a < b ? a : b; } };
struct Pow { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return std::pow(a, b); } };
struct Eq { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a == b); } };
struct Ne { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a != b); } };
struct Lt { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a < b); } };
struct Le { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a <= b); } };
struct Gt { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a > b); } };
struct Ge { template <class T> DRT_HOST_DEVICE T operator()(T a, T b) const { return T(a >= b); } };

struct Neg { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return -a; } };
struct Exp { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::exp(a); } };
struct Log { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::log(a); } };
struct Sqrt { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::sqrt(a); } };
struct Rsqrt { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return T(1) / std::sqrt(a); } };
struct Abs { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::abs(a); } };
struct Square { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return a * a; } };
struct Tanh { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::tanh(a); } };
struct Sin { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::sin(a); } };
struct Cos { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return std::cos(a); } };
struct Relu { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return a > T(0) ? a : T(0); } };
struct Sigmoid { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return T(1) / (T(1) + std::exp(-a)); } };
struct Silu { template <class T> DRT_HOST_DEVICE T operator()(T a) const { return a / (T(1) + std::exp(-a)); } };

// --- turning operands into nodes -----------------------------------------------------------
template <class X>
inline constexpr bool is_node_v = std::is_base_of_v<Node, X>;
template <class X>
struct is_tensor : std::false_type {};
template <class T>
struct is_tensor<Tensor<T>> : std::true_type {};

// Tensors and expression nodes; plain numbers are accepted beside them and become Scalars.
template <class X>
concept Operand = is_node_v<std::remove_cvref_t<X>> || is_tensor<std::remove_cvref_t<X>>::value;

template <class X>
struct value_of { using type = typename X::value_type; };

template <class T>
Leaf<T> node(const Tensor<T>& t) {
  DRT_CHECK(t.defined(), "expression: an operand tensor is undefined");
  return Leaf<T>(t);
}
template <class X>
  requires is_node_v<X>
const X& node(const X& x) { return x; }

// Converts a number to a Scalar of the element type of the other operand.
template <class Like, class X>
auto node_like(const X& x) {
  if constexpr (std::is_arithmetic_v<X>) {
    return Scalar<typename value_of<std::remove_cvref_t<Like>>::type>(static_cast<typename value_of<std::remove_cvref_t<Like>>::type>(x));
  } else {
    return node(x);
  }
}

template <class Op, class A, class B>
auto binary(const A& a, const B& b) {
  if constexpr (std::is_arithmetic_v<A>) {
    auto nb = node(b);
    return Binary<Op, Scalar<typename decltype(nb)::value_type>, decltype(nb)>(Op{}, Scalar<typename decltype(nb)::value_type>(static_cast<typename decltype(nb)::value_type>(a)), nb);
  } else if constexpr (std::is_arithmetic_v<B>) {
    auto na = node(a);
    return Binary<Op, decltype(na), Scalar<typename decltype(na)::value_type>>(Op{}, na, Scalar<typename decltype(na)::value_type>(static_cast<typename decltype(na)::value_type>(b)));
  } else {
    auto na = node(a);
    auto nb = node(b);
    return Binary<Op, decltype(na), decltype(nb)>(Op{}, na, nb);
  }
}

template <class A, class B>
concept BinaryOperands = (Operand<A> && (Operand<B> || std::is_arithmetic_v<B>)) ||
                         (std::is_arithmetic_v<A> && Operand<B>);

// --- evaluation ----------------------------------------------------------------------------
inline constexpr Index kParallelThreshold = kParallelWork;  // elements; below this, one thread

// Throws unless every tensor of `e` lives on `device` (the destination's).
template <class E>
void check_devices(const E& e, Device device) {
  const unsigned mask = e.devices();
  DRT_CHECK((mask & ~device_bit(device)) == 0, "expression: its tensors live on ",
            (mask == (device_bit(Device::cpu) | device_bit(Device::cuda)) ? "both the cpu and cuda"
                                                                          : "another device"),
            " but the destination is on ", device_name(device), "; copy them with to() first");
}

// The device an expression's tensors live on (the CPU for a tensor-free expression).
template <class E>
Device device_of(const E& e) {
  return (e.devices() & device_bit(Device::cuda)) ? Device::cuda : Device::cpu;
}

template <class T, class E, class Write>
void evaluate(const Tensor<T>& dst, E e, Write write) {
  const Shape& shape = dst.shape();
  DRT_CHECK(broadcastable_to(e.shape(), shape), "assign: expression of shape ", e.shape().str(),
            " does not fit destination of shape ", shape.str());
  check_devices(e, Device::cpu);
  const Index n = shape.numel();
  if (n == 0) return;
  e.bind(shape);
  T* out = dst.data();

  if (dst.is_contiguous() && e.flat(shape)) {  // fast path: flat, vectorisable loops over blocks
    constexpr Index block = 4096;
    parallel_for((n + block - 1) / block, n, [&](Index b) {
      const Index end = std::min(n, (b + 1) * block);
      for (Index i = b * block; i < end; ++i) write(out[i], e.at(i));
    });
    return;
  }

  // General path: walk the destination row by row (a row = the innermost axis).
  const int r = std::max(shape.rank(), 1);
  const Index cols = shape.rank() ? shape[r - 1] : 1;
  const Index rows = n / cols;
  const Index out_inner = shape.rank() ? dst.strides()[r - 1] : 1;
  const bool unit = e.unit_inner() && out_inner == 1;
  parallel_for(rows, n, [&](Index row) {
    E local = e;  // row pointers are per call, so threads never share them
    Index idx[kMaxRank] = {};
    Index rest = row, out_off = 0;
    for (int d = r - 2; d >= 0; --d) {
      idx[d] = rest % shape[d];
      rest /= shape[d];
      out_off += idx[d] * dst.strides()[d];
    }
    local.seek(idx, r - 1);
    T* o = out + out_off;
    if (unit) {
      for (Index j = 0; j < cols; ++j) write(o[j], local.template row<true>(j));
    } else {
      for (Index j = 0; j < cols; ++j) write(o[j * out_inner], local.template row<false>(j));
    }
  });
}

#if defined(__CUDACC__)
}  // namespace expr
namespace cuda {
// Defined in drt/cuda/evaluate.cuh (included at the end of this header under nvcc).
template <class T, class E>
void evaluate(const Tensor<T>& dst, const E& e, bool accumulate);
}  // namespace cuda
namespace expr {
#endif

// dst ← e (or dst += e) for a destination that is not on the host.
template <class T, class E>
void evaluate_on_device(const Tensor<T>& dst, const E& e, bool accumulate) {
#if defined(__CUDACC__)
  cuda::evaluate(dst, e, accumulate);
#else
  (void)e, (void)accumulate;
  DRT_CHECK(false, "expression into a tensor on device '", device_name(dst.device()), "' of shape ",
            dst.shape().str(), ": device expressions are compiled only in files that nvcc compiles");
#endif
}

}  // namespace expr

// ---- the public expression API (namespace drt) --------------------------------------------

template <class T, class E>
void assign_expression(const Tensor<T>& dst, const E& e) {
  if (!dst.on_host()) return expr::evaluate_on_device(dst, expr::node(e), false);
  expr::evaluate(dst, expr::node(e), [](T& o, T v) { o = v; });
}
template <class T, class E>
void add_assign_expression(const Tensor<T>& dst, const E& e) {
  if (!dst.on_host()) return expr::evaluate_on_device(dst, expr::node(e), true);
  expr::evaluate(dst, expr::node(e), [](T& o, T v) { o += v; });
}

// Evaluates an expression into a new tensor (from `arena` if given, else the heap) on the
// device its tensors live on.
template <class E>
  requires expr::Operand<E>
auto eval(const E& e, Arena* arena = nullptr) {
  auto n = expr::node(e);
  using T = typename decltype(n)::value_type;
  Tensor<T> out = Tensor<T>::empty(n.shape(), arena, expr::device_of(n));
  assign_expression(out, n);
  return out;
}

#define DRT_BINARY_OPERATOR(sym, Op)                                   \
  template <class A, class B>                                          \
    requires expr::BinaryOperands<A, B>                                \
  auto operator sym(const A& a, const B& b) {                          \
    return expr::binary<expr::Op>(a, b);                               \
  }
DRT_BINARY_OPERATOR(+, Add)
DRT_BINARY_OPERATOR(-, Sub)
DRT_BINARY_OPERATOR(*, Mul)
DRT_BINARY_OPERATOR(/, Div)
#undef DRT_BINARY_OPERATOR

#define DRT_BINARY_FUNCTION(name, Op)                                  \
  template <class A, class B>                                          \
    requires expr::BinaryOperands<A, B>                                \
  auto name(const A& a, const B& b) {                                  \
    return expr::binary<expr::Op>(a, b);                               \
  }
DRT_BINARY_FUNCTION(maximum, Maximum)
DRT_BINARY_FUNCTION(minimum, Minimum)
DRT_BINARY_FUNCTION(pow, Pow)
// Comparisons give 1 where true and 0 where false, in the operands' element type.
DRT_BINARY_FUNCTION(eq, Eq)
DRT_BINARY_FUNCTION(ne, Ne)
DRT_BINARY_FUNCTION(lt, Lt)
DRT_BINARY_FUNCTION(le, Le)
DRT_BINARY_FUNCTION(gt, Gt)
DRT_BINARY_FUNCTION(ge, Ge)
#undef DRT_BINARY_FUNCTION

#define DRT_UNARY_FUNCTION(name, Op)                                   \
  template <class A>                                                   \
    requires expr::Operand<A>                                          \
  auto name(const A& a) {                                              \
    auto n = expr::node(a);                                            \
    return expr::Unary<expr::Op, decltype(n)>(expr::Op{}, n);          \
  }
DRT_UNARY_FUNCTION(operator-, Neg)
DRT_UNARY_FUNCTION(exp, Exp)
DRT_UNARY_FUNCTION(log, Log)
DRT_UNARY_FUNCTION(sqrt, Sqrt)
DRT_UNARY_FUNCTION(rsqrt, Rsqrt)
DRT_UNARY_FUNCTION(abs, Abs)
DRT_UNARY_FUNCTION(square, Square)
DRT_UNARY_FUNCTION(tanh, Tanh)
DRT_UNARY_FUNCTION(sin, Sin)
DRT_UNARY_FUNCTION(cos, Cos)
DRT_UNARY_FUNCTION(relu, Relu)
DRT_UNARY_FUNCTION(sigmoid, Sigmoid)
DRT_UNARY_FUNCTION(silu, Silu)
#undef DRT_UNARY_FUNCTION

// cond != 0 ? a : b. Either branch may be a plain number.
template <class C, class A, class B>
  requires expr::Operand<C>
auto select(const C& cond, const A& a, const B& b) {
  auto c = expr::node(cond);
  using T = typename decltype(c)::value_type;
  auto to_node = [](const auto& x) {
    if constexpr (std::is_arithmetic_v<std::remove_cvref_t<decltype(x)>>) return expr::Scalar<T>(static_cast<T>(x));
    else return expr::node(x);
  };
  auto na = to_node(a);
  auto nb = to_node(b);
  return expr::Select<decltype(c), decltype(na), decltype(nb)>(c, na, nb);
}

}  // namespace drt

// Expression nodes live in drt::expr; these using-declarations let argument-dependent lookup find
// the operators and functions for them too, so `(a * b) + exp(-c)` works outside namespace drt.
namespace drt::expr {
using drt::operator+;
using drt::operator-;
using drt::operator*;
using drt::operator/;
using drt::abs;
using drt::cos;
using drt::eq;
using drt::eval;
using drt::exp;
using drt::ge;
using drt::gt;
using drt::le;
using drt::log;
using drt::lt;
using drt::maximum;
using drt::minimum;
using drt::ne;
using drt::pow;
using drt::relu;
using drt::rsqrt;
using drt::select;
using drt::sigmoid;
using drt::silu;
using drt::sin;
using drt::sqrt;
using drt::square;
using drt::tanh;
}  // namespace drt::expr

#if defined(__CUDACC__)
#include "drt/cuda/evaluate.cuh"
#endif
