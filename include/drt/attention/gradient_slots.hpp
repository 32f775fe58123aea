// drt/attention/gradient_slots.hpp — the gradient buffers of an attention op's q, k and v.
//
// Each is taken with Node::grad_slot() (drt/autodiff/var.hpp), so that a fresh buffer can be set
// by the backward instead of zero-filled and added into. When two of q, k, v are one node
// (attention(x, x, x, ...)), one pass would set the buffer and another add into it, so all three
// take the zero-filled grad_buffer() instead.
#pragma once

#include "drt/autodiff/var.hpp"

namespace drt::detail {

template <class T>
struct QkvGradientSlots {
  Tensor<T> dq, dk, dv;  // undefined where no gradient is wanted
  bool fresh_dq = false, fresh_dk = false, fresh_dv = false;
  bool distinct;  // q, k, v are three nodes

  QkvGradientSlots(const Var<T>& q, const Var<T>& k, const Var<T>& v)
      : distinct(q.node() != k.node() && q.node() != v.node() && k.node() != v.node()) {
    auto take = [this](const Var<T>& x, Tensor<T>& buffer, bool& fresh) {
      if (!x.requires_grad()) return;
      if (!distinct) {
        buffer = x.node()->grad_buffer();
        return;
      }
      const auto slot = x.node()->grad_slot();
      buffer = slot.buffer;
      fresh = slot.fresh;
    };
    take(q, dq, fresh_dq);
    take(k, dk, fresh_dk);
    take(v, dv, fresh_dv);
  }

  // For a backward that only adds (the CPU's): the fresh buffers start at zero.
  void zero_fresh() const {
    if (fresh_dq) dq.fill(T(0));
    if (fresh_dk) dk.fill(T(0));
    if (fresh_dv) dv.fill(T(0));
  }
  bool contiguous() const {
    return (!dq.defined() || dq.is_contiguous()) && (!dk.defined() || dk.is_contiguous()) &&
           (!dv.defined() || dv.is_contiguous());
  }
  // Their addresses for a backward that takes null for "not wanted".
  const Tensor<T>* dq_or_null() const { return dq.defined() ? &dq : nullptr; }
  const Tensor<T>* dk_or_null() const { return dk.defined() ? &dk : nullptr; }
  const Tensor<T>* dv_or_null() const { return dv.defined() ? &dv : nullptr; }
};

}  // namespace drt::detail
