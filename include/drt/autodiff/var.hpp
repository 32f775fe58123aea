// drt/autodiff/var.hpp — Var<T> (a tensor on the tape) and Parameter<T> (a trainable tensor).
//
// A Var is a light handle to a Node: the node's value, its gradient (allocated when a gradient
// first reaches it) and whether any gradient must flow to it. Intermediate nodes live in the
// tape's arena; a Parameter owns its node, so its value and gradient persist across steps and
// gradients accumulate into it until zero_grad().
//
// Writing a differentiable op takes three steps, always in this order (see elementwise.hpp):
//   1. compute the output value (usually one fused expression) into the tape's arena;
//   2. `Var<T> out = make_output(value, {inputs...})`;
//   3. `if (out.requires_grad()) record_backward(out, [=] { input.accumulate_grad(...); });`
#pragma once

#include <initializer_list>
#include <memory>

#include "drt/autodiff/tape.hpp"
#include "drt/core/expr.hpp"

namespace drt {

template <class T>
struct Node {
  Tensor<T> value;
  Tensor<T> grad;  // undefined until a gradient reaches this node
  bool requires_grad = false;
  int grad_readers = 0;  // backward records still to run that read `grad` (record_backward)
  bool grad_given = false;  // an input has taken `grad` as its own (Var::accumulate_grad_of)
  // A bf16 copy of `grad`, written by the op that last wrote `grad` in the same pass (on the GPU
  // with bf16 GEMMs), for the GEMMs that read `grad` next (linear's backward), which would
  // otherwise round it in a pass of their own. Every other write of `grad` goes through
  // grad_buffer() or grad_slot(), which drop it, so it is null or exactly bf16(grad).
  std::shared_ptr<void> grad_rounded;

  // The gradient buffer, created zero-filled in the tape's arena on first use, on the value's
  // device (so that the same ops record and run backward on the GPU).
  const Tensor<T>& grad_buffer() {
    grad_rounded.reset();
    if (!grad.defined()) grad = Tensor<T>::zeros(value.shape(), &tape().arena(), value.device());
    return grad;
  }

  // The gradient buffer for a writer that sets every element of it, and whether it is fresh: a
  // fresh buffer is *uninitialised*, so the writer must assign (or run its GEMM with beta = 0),
  // not add. The first gradient of a node then costs one write instead of a zero-fill plus a
  // read-modify-write, which on the GPU is most of a memory-bound backward op's traffic.
  struct Slot {
    const Tensor<T>& buffer;
    bool fresh;
  };
  Slot grad_slot() {
    grad_rounded.reset();
    const bool fresh = !grad.defined();
    if (fresh) grad = Tensor<T>::empty(value.shape(), &tape().arena(), value.device());
    return {grad, fresh};
  }
};

template <class T>
class Var {
 public:
  using value_type = T;
  Var() = default;
  explicit Var(Node<T>* node) : node_(node) {}

  bool defined() const { return node_ != nullptr; }
  const Tensor<T>& value() const { return node_->value; }
  // The gradient; undefined when no gradient has reached this Var.
  const Tensor<T>& grad() const { return node_->grad; }
  bool has_grad() const { return node_->grad.defined(); }
  bool requires_grad() const { return node_ && node_->requires_grad; }
  const Shape& shape() const { return node_->value.shape(); }
  int rank() const { return shape().rank(); }
  Index size(int axis) const { return shape().dim(axis); }
  Index numel() const { return shape().numel(); }
  T item() const { return value().item(); }
  Device device() const { return node_->value.device(); }
  Node<T>* node() const { return node_; }

  // grad += e, when this Var wants a gradient (grad = e for the first one). `e` is a tensor or
  // an expression with this Var's shape (or one that broadcasts to it).
  template <class E>
  void accumulate_grad(const E& e) const {
    if (!requires_grad()) return;
    const auto slot = node_->grad_slot();
    if (slot.fresh) slot.buffer.assign(e);
    else slot.buffer += e;
  }

  // grad += out's gradient, for an op that passes its output's gradient through unchanged
  // (a + b, a reshape, ...); `g` is that gradient seen in this Var's shape. When this is the
  // first gradient here and out's record is the last reader of out's gradient, which backward
  // then frees (KeepGradients::leaves_only), this Var takes out's buffer as its own instead of
  // a copy of it: in a training step those copies were 180 launches per micro-batch on the GPU.
  // Only one input of a record may take it (Node::grad_given): in a + b, b's gradient is a copy,
  // or two inputs would share one buffer and a later gradient of one would land on the other.
  // Where this Var's gradient ends up equal to out's, element for element in the same order, it
  // shares out's bf16 copy of it too (Node::grad_rounded).
  void accumulate_grad_of(const Var<T>& out, const Tensor<T>& g) const {
    if (!requires_grad()) return;
    Node<T>* o = out.node();
    const bool fresh = !node_->grad.defined();
    const bool same_order = g.shape() == shape() && g.is_contiguous();
    const bool can_take =
        fresh && same_order && !o->grad_given && tape().releasing_gradients() && o->grad_readers == 1;
    const bool shares_copy = fresh && same_order && o->grad_rounded != nullptr && g.data() == o->grad.data() &&
                             g.numel() == o->grad.numel();
    if (can_take) {
      node_->grad = g;
      o->grad_given = true;
    } else {
      accumulate_grad(g);
      if (!fresh || !node_->grad.is_contiguous()) return;
    }
    if (shares_copy) node_->grad_rounded = o->grad_rounded;
  }
  void accumulate_grad_of(const Var<T>& out) const { accumulate_grad_of(out, out.grad()); }

 protected:
  Node<T>* node_ = nullptr;
};

// A tensor that is not differentiated (inputs, targets, constants).
template <class T>
Var<T> constant(const Tensor<T>& value) {
  Node<T>* n = tape().arena().make<Node<T>>();
  n->value = value;
  return Var<T>(n);
}

// A tensor that receives a gradient without being a Parameter (gradient checks, inputs whose
// gradient you want). Its gradient lives in the arena like any intermediate.
template <class T>
Var<T> variable(const Tensor<T>& value) {
  Var<T> v = constant(value);
  v.node()->requires_grad = true;
  return v;
}

// The output of an op: it requires a gradient when recording is on and any input does.
template <class T>
Var<T> make_output(const Tensor<T>& value, std::initializer_list<const Var<T>*> inputs) {
  Var<T> out = constant(value);
  if (tape().grad_enabled())
    for (const Var<T>* in : inputs) out.node()->requires_grad |= in->requires_grad();
  return out;
}

namespace detail {
// Called by each record that read n's gradient, after it ran: the last one frees the gradient
// when backward releases intermediate gradients (KeepGradients::leaves_only).
template <class T>
void done_reading_grad(Node<T>* n) {
  if (--n->grad_readers == 0 && tape().releasing_gradients()) {
    n->grad = Tensor<T>();
    n->grad_rounded.reset();
  }
}
}  // namespace detail

// Records `fn` to run during backward if a gradient has reached `out` by then. `fn` may be a
// mutable lambda (to let go of what it holds once it has run: window_attention's bf16 copies).
// An op that records its own closure with tape().record instead (several outputs) must count
// its outputs' readers the same way (see linear_shared_input, drt/autodiff/matmul.hpp).
template <class T, class F>
void record_backward(const Var<T>& out, F fn) {
  Node<T>* o = out.node();
  ++o->grad_readers;
  tape().record([o, fn]() mutable {
    if (o->grad.defined()) fn();
    detail::done_reading_grad(o);
  });
}

// The arena for intermediates of the current step.
inline Arena* step_arena() { return &tape().arena(); }

// A trainable tensor. Its node is owned (not in the arena): the value and gradient persist
// across steps. A Parameter is a Var, so every op accepts it directly.
template <class T>
class Parameter : public Var<T> {
 public:
  Parameter() = default;
  explicit Parameter(const Tensor<T>& initial_value) : owned_(std::make_unique<Node<T>>()) {
    owned_->value = initial_value.clone();
    owned_->grad = Tensor<T>::zeros(initial_value.shape(), nullptr, initial_value.device());
    owned_->requires_grad = true;
    this->node_ = owned_.get();
  }
  // A Parameter over existing storage (no copy): its value and gradient are these tensors, so
  // another Parameter may own views of the same memory (drt/model/padded_vocab.hpp).
  static Parameter sharing(const Tensor<T>& value, const Tensor<T>& grad) {
    DRT_CHECK(value.shape() == grad.shape(), "Parameter::sharing: value ", value.shape().str(), " and gradient ",
              grad.shape().str(), " differ");
    Parameter p;
    p.owned_ = std::make_unique<Node<T>>();
    p.owned_->value = value;
    p.owned_->grad = grad;
    p.owned_->requires_grad = true;
    p.node_ = p.owned_.get();
    return p;
  }
  Parameter(Parameter&&) noexcept = default;
  Parameter& operator=(Parameter&&) noexcept = default;

  void zero_grad() const { this->node_->grad.fill(T(0)); }
  // Moves value and gradient to `device` (a copy; no-op when there already). The Parameter keeps
  // its address, so models and optimisers that point at it stay valid.
  void move_to(Device device) {
    this->node_->value = this->node_->value.to(device);
    this->node_->grad = this->node_->grad.to(device);
  }
  // The tensors themselves (heap memory, stable across steps).
  const Tensor<T>& value() const { return this->node_->value; }
  const Tensor<T>& grad() const { return this->node_->grad; }

 private:
  std::unique_ptr<Node<T>> owned_;
};

// Which gradients backward() leaves readable until tape().reset(): every node's (the default),
// or only the leaves' (Parameters and variable()s, which no record produces). leaves_only frees
// each intermediate's gradient as soon as the records that read it have run: what training
// needs, in the memory of the gradients in flight instead of one per op of the step.
enum class KeepGradients { all, leaves_only };

// Seeds d(loss)/d(loss) = 1 and runs the tape backwards. `loss` must have one element.
template <class T>
void backward(const Var<T>& loss, KeepGradients keep = KeepGradients::all) {
  DRT_CHECK(loss.numel() == 1, "backward: the loss must have one element, got shape ", loss.shape().str());
  DRT_CHECK(loss.requires_grad(), "backward: the loss does not depend on anything that requires a gradient");
  loss.node()->grad_buffer().fill(T(1));
  tape().run_backward(keep == KeepGradients::leaves_only);
}

// Runs the tape backwards from `out` seeded with `seed` (same shape as out).
template <class T>
void backward(const Var<T>& out, const Tensor<T>& seed) {
  DRT_CHECK(seed.shape() == out.shape(), "backward: seed shape ", seed.shape().str(), " differs from output shape ",
            out.shape().str());
  DRT_CHECK(out.requires_grad(), "backward: the output does not depend on anything that requires a gradient");
  out.node()->grad_buffer().assign(seed);
  tape().run_backward();
}

}  // namespace drt
