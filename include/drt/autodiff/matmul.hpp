// drt/autodiff/matmul.hpp — differentiable matrix products.
//
// Shapes: matmul  A (..., M, K) · B (..., K, N) → (..., M, N)   (B may be a shared (K, N))
//         linear  x (..., K), W (N, K)          → (..., N)        y = x · Wᵀ, no bias
//         linear_shared_input  x (..., K), W_i (N_i, K) → y_i (..., N_i)
#pragma once

#include <memory>
#include <vector>

#include "drt/autodiff/var.hpp"
#include "drt/core/matmul.hpp"
#include "drt/core/reduce.hpp"

namespace drt {

// C = A·B;  dA = dC·Bᵀ, dB = Aᵀ·dC (summed over the batch when B is shared)
template <class T>
Var<T> matmul(const Var<T>& A, const Var<T>& B) {
  Var<T> out = make_output(matmul(A.value(), B.value(), step_arena()), {&A, &B});
  if (out.requires_grad())
    record_backward(out, [A, B, out] {
      const Tensor<T>& g = out.grad();
      if (A.requires_grad()) A.accumulate_grad(matmul(g, B.value().transpose(-1, -2), step_arena()));
      if (B.requires_grad()) {
        if (B.rank() == 2 && A.rank() > 2) {
          // Shared B: flatten the batch into rows, then one GEMM: dB = A_flatᵀ · g_flat.
          const Tensor<T> a2 = A.value().contiguous(step_arena()).reshape(Shape{-1, A.size(-1)});
          const Tensor<T> g2 = g.reshape(Shape{-1, g.size(-1)});
          gemm(a2.transpose(0, 1), g2, B.node()->grad_buffer(), T(1), T(1));
        } else {
          B.accumulate_grad(matmul(A.value().transpose(-1, -2), g, step_arena()));
        }
      }
    });
  return out;
}

// The outputs of linear_shared_input, one per weight: a fixed-size array, since a training step
// must not touch the heap (tests/test_allocation.cpp).
inline constexpr int kMaxSharedInputWeights = 4;
template <class T>
struct SharedInputOutputs {
  Var<T> y[kMaxSharedInputWeights];
  int count = 0;
  const Var<T>& operator[](int i) const { return y[i]; }
  int size() const { return count; }
};

// y_i = x · W_iᵀ for several weights that read the same input (attention's q, k and v; SwiGLU's
// gate and up). One op rather than one linear per weight so that, with bf16 GEMMs, x is rounded
// once in the forward and once in the backward, and each output's gradient once for its two
// GEMMs (RoundedOperandReuse, drt/core/precision.hpp), not once per GEMM.
//   forward   y_i = x W_iᵀ
//   backward  dx += Σ_i dy_i W_i  (written, not added, when x has no gradient yet);  dW_i += dy_iᵀ x
template <class T>
SharedInputOutputs<T> linear_shared_input(const Var<T>& x, std::initializer_list<const Var<T>*> weights) {
  DRT_CHECK(weights.size() >= 1 && weights.size() <= std::size_t(kMaxSharedInputWeights), "linear_shared_input: ",
            weights.size(), " weights given, 1 to ", kMaxSharedInputWeights, " allowed");
  for (const Var<T>* W : weights)
    DRT_CHECK(W->rank() == 2 && x.size(-1) == W->size(1), "linear: input ", x.shape().str(),
              " does not match weight ", W->shape().str(), " (expected last axis ", W->size(1), ")");
  const Tensor<T> x2 = x.value().contiguous(step_arena()).reshape(Shape{-1, x.size(-1)});
  SharedInputOutputs<T> outs, ws;  // ws: the weights, in the same order
  bool any_grad = false;
  std::shared_ptr<void> x_rounded;  // the forward's bf16 copy of x (GPU, bf16 GEMMs), for dW
  {
    RoundedOperandReuse reuse;  // x, read by every product
    for (const Var<T>* W : weights) {
      Shape out_shape = x.shape();
      out_shape[out_shape.rank() - 1] = W->size(0);
      const Tensor<T> y = Tensor<T>::empty(out_shape, step_arena(), x.device());
      gemm(x2, W->value().transpose(0, 1), y.reshape(Shape{-1, W->size(0)}));
      ws.y[ws.count++] = *W;
      outs.y[outs.count] = make_output(y, {&x, W});
      any_grad |= outs.y[outs.count++].requires_grad();
    }
    if (any_grad) x_rounded = reuse.find(x2.data(), x2.numel());
  }
  if (any_grad) {
    for (int i = 0; i < outs.count; ++i) ++outs[i].node()->grad_readers;  // as record_backward counts
    // The backward reuses the forward's rounding of x (x is a tape value: it does not change
    // before backward) and lets it go once it has run: one rounding of x per step instead of two.
    tape().record([x, x2, ws, outs, x_rounded]() mutable {
      RoundedOperandReuse reuse;  // x2 and each dy_i, each read by two products
      if (x_rounded) reuse.remember(x2.data(), x2.numel(), std::move(x_rounded));
      for (int i = 0; i < outs.count; ++i) {
        if (!outs[i].has_grad()) continue;  // no gradient reached y_i
        const Var<T>& W = ws[i];
        const Tensor<T> g2 = outs[i].grad().reshape(Shape{-1, W.size(0)});
        // The op that wrote dy_i may have written its bf16 copy too (Node::grad_rounded).
        const std::shared_ptr<void>& dy_rounded = outs[i].node()->grad_rounded;
        if (dy_rounded && g2.data() == outs[i].grad().data() && outs[i].grad().is_contiguous())
          reuse.remember(g2.data(), g2.numel(), dy_rounded);
        if (x.requires_grad()) {
          const auto dx = x.node()->grad_slot();
          gemm(g2, W.value(), dx.buffer.reshape(Shape{-1, W.size(1)}), T(1), dx.fresh ? T(0) : T(1));
        }
        if (W.requires_grad()) gemm(g2.transpose(0, 1), x2, W.node()->grad_buffer(), T(1), T(1));
      }
      for (int i = 0; i < outs.count; ++i) detail::done_reading_grad(outs[i].node());
    });
  }
  return outs;
}

// make() with `rounded`, a bf16 copy of x's values that the op producing x wrote in the same pass
// (rms_norm, swiglu: on the GPU with bf16 GEMMs), standing in for the rounding pass of every GEMM
// inside make() that reads x, and for linear's backward dW, which keeps the forward's copy. The
// scope promises for x's storage alone; without a copy (CPU, fp32 GEMMs) it is make() itself,
// and nothing is allocated.
template <class T, class Make>
auto with_rounded(const Var<T>& x, std::shared_ptr<void> rounded, Make make) {
  if (!rounded) return make();
  const std::vector<const void*> named{x.value().data()};
  RoundedOperandReuse reuse(named);
  reuse.remember(x.value().data(), x.numel(), std::move(rounded));
  return make();
}

// y = x · Wᵀ (a bias-free linear layer; W is stored (out_features, in_features) as in PyTorch)
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& W) {
  return linear_shared_input(x, {&W})[0];
}

}  // namespace drt
