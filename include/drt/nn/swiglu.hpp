// drt/nn/swiglu.hpp — the SwiGLU gate and the SwiGLU feed-forward block (as in Llama).
//
// Shapes: swiglu      gate (...), up (...) (same shape) → (...):  silu(gate) · up
//         swiglu_mlp  x (..., D), w_gate (F, D), w_up (F, D), w_down (D, F) → (..., D)
//                     with F the hidden width: w_down · (silu(w_gate x) · (w_up x))
//
// swiglu is fused: one pass forward, and one pass backward that produces both gradients
//   d gate = g · up · σ(gate)·(1 + gate·(1 − σ(gate))),   d up = g · silu(gate).
// On the device the expressions are fused kernels already; the two-gradient pass is
// drt/cuda/nn/swiglu.cuh.
#pragma once

#include <memory>
#include <type_traits>

#include "drt/autodiff/elementwise.hpp"
#include "drt/autodiff/matmul.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/swiglu.cuh"
#endif

namespace drt {

// `rounded`, when given: on the GPU with bf16 GEMMs (and float, contiguous, aligned tensors), the
// kernel also writes a bf16 copy of the output there, for the GEMM that reads it next
// (swiglu_mlp); elsewhere it is left empty.
template <class T>
Var<T> swiglu(const Var<T>& gate, const Var<T>& up, std::shared_ptr<void>* rounded = nullptr) {
  DRT_CHECK(gate.shape() == up.shape(), "swiglu: gate of shape ", gate.shape().str(), " and up of shape ",
            up.shape().str(), " must have the same shape");
  Tensor<T> value;
  if constexpr (std::is_same_v<T, float>) {
    if (rounded != nullptr && !gate.value().on_host() && matmul_precision() == Precision::bf16) {
      value = Tensor<T>::empty(gate.shape(), step_arena(), gate.device());
      DRT_ON_DEVICE("swiglu", *rounded = cuda::swiglu_forward_rounded(gate.value(), up.value(), value));
      if (!*rounded) value = Tensor<T>();  // the kernel does not apply: the expression below
    }
  }
  if (!value.defined()) value = eval(silu(gate.value()) * up.value(), step_arena());
  Var<T> out = make_output(value, {&gate, &up});
  if (out.requires_grad())
    record_backward(out, [gate, up, out] {
      const Tensor<T>& a = gate.value();
      const Tensor<T>& b = up.value();
      const Tensor<T>& g = out.grad();
      if (!gate.requires_grad() || !up.requires_grad()) {  // one gradient: one expression pass
        gate.accumulate_grad(g * b * sigmoid(a) * (T(1) + a * (T(1) - sigmoid(a))));
        up.accumulate_grad(g * silu(a));
        return;
      }
      // Fresh buffers (the usual case: gate and up are a linear's outputs) are written, not added to.
      const auto gate_slot = gate.node()->grad_slot();
      const auto up_slot = up.node()->grad_slot();
      const Tensor<T>& da = gate_slot.buffer;
      const Tensor<T>& db = up_slot.buffer;
      const bool add_a = !gate_slot.fresh, add_b = !up_slot.fresh;
      if (!a.on_host()) {
        if constexpr (std::is_same_v<T, float>)
          if (matmul_precision() == Precision::bf16) {
            // The gate and up projections' backward read these bf16 copies (Node::grad_rounded).
            std::shared_ptr<void> da16, db16;
            DRT_ON_DEVICE("swiglu", cuda::swiglu_backward_rounded(a, b, g, da, db, add_a, add_b, da16, db16));
            gate.node()->grad_rounded = std::move(da16);
            up.node()->grad_rounded = std::move(db16);
            return;
          }
        DRT_ON_DEVICE("swiglu", cuda::swiglu_backward(a, b, g, da, db, add_a, add_b));
        return;
      }
      const Index n = detail::row_length(a.shape());
      const Index as = detail::row_step(a), bs = detail::row_step(b), gs = detail::row_step(g);
      const Index das = detail::row_step(da), dbs = detail::row_step(db);
      detail::parallel_for_lanes(detail::row_count(a.shape()), a.numel(), [&](Index row) {
        const T* pa = a.data() + detail::row_offset(a, row);
        const T* pb = b.data() + detail::row_offset(b, row);
        const T* pg = g.data() + detail::row_offset(g, row);
        T* pda = da.data() + detail::row_offset(da, row);
        T* pdb = db.data() + detail::row_offset(db, row);
        for (Index j = 0; j < n; ++j) {
          const T z = pa[j * as], s = T(1) / (T(1) + std::exp(-z)), gj = pg[j * gs];
          T* to_a = pda + j * das;
          T* to_b = pdb + j * dbs;
          *to_a = (add_a ? *to_a : T(0)) + gj * pb[j * bs] * s * (T(1) + z * (T(1) - s));
          *to_b = (add_b ? *to_b : T(0)) + gj * z * s;
        }
      });
    });
  return out;
}

template <class T>
Var<T> swiglu_mlp(const Var<T>& x, const Var<T>& w_gate, const Var<T>& w_up, const Var<T>& w_down) {
  DRT_CHECK(w_gate.rank() == 2 && w_up.shape() == w_gate.shape() && w_down.rank() == 2 &&
                w_down.size(0) == w_gate.size(1) && w_down.size(1) == w_gate.size(0),
            "swiglu_mlp: weights must be w_gate (F, D), w_up (F, D), w_down (D, F); got w_gate ",
            w_gate.shape().str(), ", w_up ", w_up.shape().str(), ", w_down ", w_down.shape().str());
  const auto gate_up = linear_shared_input(x, {&w_gate, &w_up});
  // With bf16 GEMMs on the GPU the gate writes its output's bf16 copy as well, and the down
  // projection (and its backward's dW, linear_shared_input) reads that copy instead of rounding
  // the output in a pass of its own.
  std::shared_ptr<void> rounded;
  const Var<T> h = swiglu(gate_up[0], gate_up[1], &rounded);
  return with_rounded(h, std::move(rounded), [&] { return linear(h, w_down); });
}

}  // namespace drt
