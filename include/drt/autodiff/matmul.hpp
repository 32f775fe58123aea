// drt/autodiff/matmul.hpp — differentiable matrix products.
//
// Shapes: matmul  A (..., M, K) · B (..., K, N) → (..., M, N)   (B may be a shared (K, N))
//         linear  x (..., K), W (N, K)          → (..., N)        y = x · Wᵀ, no bias
#pragma once

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

// y = x · Wᵀ (a bias-free linear layer; W is stored (out_features, in_features) as in PyTorch)
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& W) {
  DRT_CHECK(W.rank() == 2 && x.size(-1) == W.size(1), "linear: input ", x.shape().str(),
            " does not match weight ", W.shape().str(), " (expected last axis ", W.size(1), ")");
  const Tensor<T> xv = x.value().contiguous(step_arena());
  const Tensor<T> x2 = xv.reshape(Shape{-1, x.size(-1)});
  Shape out_shape = x.shape();
  out_shape[out_shape.rank() - 1] = W.size(0);
  Tensor<T> y = Tensor<T>::empty(out_shape, step_arena(), x.device());
  gemm(x2, W.value().transpose(0, 1), y.reshape(Shape{-1, W.size(0)}));
  Var<T> out = make_output(y, {&x, &W});
  if (out.requires_grad())
    record_backward(out, [x, x2, W, out] {
      const Tensor<T> g2 = out.grad().reshape(Shape{-1, W.size(0)});
      if (x.requires_grad()) {
        // dx = g · W, written straight into x's gradient (accumulating).
        const Tensor<T>& dx = x.node()->grad_buffer();
        gemm(g2, W.value(), dx.reshape(Shape{-1, W.size(1)}), T(1), T(1));
      }
      if (W.requires_grad()) gemm(g2.transpose(0, 1), x2, W.node()->grad_buffer(), T(1), T(1));
    });
  return out;
}

}  // namespace drt
