// drt/nn/rms_norm.hpp — RMSNorm: scale each row to unit root-mean-square, then by a learned gain.
//
// Shapes: x (..., D), gamma (D) → (..., D):  y = x · γ / sqrt(mean(x²) + eps) over the last axis.
//
// The forward keeps r = 1/sqrt(mean(x²) + eps) per row (one number per row) for the backward:
//   x̂ = x·r,  dγ = Σ_rows g ⊙ x̂,  dx = r · (g⊙γ − x̂ · mean(g⊙γ⊙x̂)).
// On the device the same formulas run in drt/cuda/nn/rms_norm.cuh (dγ deterministic, no atomics;
// dx and dγ from one pass over x and g where a warp takes a row).
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>

#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/var.hpp"
#include "drt/core/precision.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/rms_norm.cuh"
#endif

namespace drt {

// `rounded`, when given: on the GPU with bf16 GEMMs (float), the kernel also writes y's bf16 copy
// there, for the projections that read y next (with_rounded, drt/autodiff/matmul.hpp); elsewhere
// it is left empty.
template <class T>
Var<T> rms_norm(const Var<T>& x, const Var<T>& gamma, T eps, std::shared_ptr<void>* rounded = nullptr) {
  DRT_CHECK(x.rank() >= 1 && gamma.rank() == 1 && gamma.size(0) == x.size(-1), "rms_norm: input of shape ",
            x.shape().str(), " does not match gamma of shape ", gamma.shape().str(),
            " (gamma must be (D) with D the input's last extent)");
  DRT_CHECK(eps >= T(0), "rms_norm: eps must be non-negative, got ", eps);
  DRT_CHECK(x.device() == gamma.device(), "rms_norm: the input lives on ", device_name(x.device()), " but gamma on ",
            device_name(gamma.device()));
  const Tensor<T>& xv = x.value();
  const Tensor<T>& gv = gamma.value();
  const Index D = xv.size(-1), rows = detail::row_count(xv.shape());
  Tensor<T> y = Tensor<T>::empty(xv.shape(), step_arena(), xv.device());
  Tensor<T> inv_rms = Tensor<T>::empty(Shape{rows}, step_arena(), xv.device());
  const Index xs = detail::row_step(xv), gs = gv.strides()[0];
  if (!xv.on_host()) {
    bool done = false;
    if constexpr (std::is_same_v<T, float>)
      if (rounded != nullptr && matmul_precision() == Precision::bf16) {
        DRT_ON_DEVICE("rms_norm", *rounded = cuda::rms_norm_forward_rounded(xv, gv, eps, y, inv_rms));
        done = true;
      }
    if (!done) DRT_ON_DEVICE("rms_norm", cuda::rms_norm_forward(xv, gv, eps, y, inv_rms));
  } else {
    detail::parallel_for_lanes(rows, xv.numel(), [&](Index row) {
      const T* in = xv.data() + detail::row_offset(xv, row);
      T* out = y.data() + row * D;
      T squares = T(0);
      for (Index j = 0; j < D; ++j) squares += in[j * xs] * in[j * xs];
      const T r = T(1) / std::sqrt((D ? squares / T(D) : T(0)) + eps);
      inv_rms.data()[row] = r;
      for (Index j = 0; j < D; ++j) out[j] = in[j * xs] * r * gv.data()[j * gs];
    });
  }

  Var<T> out = make_output(y, {&x, &gamma});
  if (out.requires_grad())
    record_backward(out, [x, gamma, inv_rms, out] {
      const Tensor<T>& xv = x.value();
      const Tensor<T>& gv = gamma.value();
      const Tensor<T>& g = out.grad();
      if (!xv.on_host()) {
        // One call for both gradients (one pass over x and g where it can). A fresh dx (x's first
        // gradient, the usual case) is written, not zero-filled and added to; undefined: not wanted.
        Tensor<T> dx, dgamma;
        [[maybe_unused]] bool add_dx = false;  // unused where a host compiler drops the device call
        if (x.requires_grad()) {
          const auto slot = x.node()->grad_slot();
          dx = slot.buffer;
          add_dx = !slot.fresh;
        }
        if (gamma.requires_grad()) dgamma = gamma.node()->grad_buffer();
        if constexpr (std::is_same_v<T, float>)
          if (x.requires_grad() && x.node() != gamma.node() && matmul_precision() == Precision::bf16) {
            // With dx's bf16 copy (Node::grad_rounded), which the residual adds hand on to the
            // output projections' backward (Var::accumulate_grad_of). Not for rms_norm(x, x),
            // where dγ lands on dx after the copy is written.
            DRT_ON_DEVICE("rms_norm", x.node()->grad_rounded = cuda::rms_norm_backward_rounded(
                                          xv, gv, g, inv_rms, dx, add_dx, dgamma, step_arena()));
            return;
          }
        DRT_ON_DEVICE("rms_norm", cuda::rms_norm_backward(xv, gv, g, inv_rms, dx, add_dx, dgamma, step_arena()));
        return;
      }
      const Index D = xv.size(-1), rows = inv_rms.numel();
      const Index xs = detail::row_step(xv), gs = gv.strides()[0], os = detail::row_step(g);
      const T* r = inv_rms.data();
      if (x.requires_grad()) {
        const Tensor<T>& dx = x.node()->grad_buffer();
        const Index ds = detail::row_step(dx);
        detail::parallel_for_lanes(rows, xv.numel(), [&](Index row) {
          const T* in = xv.data() + detail::row_offset(xv, row);
          const T* pg = g.data() + detail::row_offset(g, row);
          T* d = dx.data() + detail::row_offset(dx, row);
          T dot = T(0);  // Σ g·γ·x̂
          for (Index j = 0; j < D; ++j) dot += pg[j * os] * gv.data()[j * gs] * in[j * xs];
          const T c = D ? dot * r[row] / T(D) : T(0);
          for (Index j = 0; j < D; ++j)
            d[j * ds] += r[row] * (pg[j * os] * gv.data()[j * gs] - in[j * xs] * r[row] * c);
        });
      }
      if (gamma.requires_grad()) {
        // Threads own blocks of columns and walk every row: no races, and the same order of
        // additions whatever the thread count.
        const Tensor<T>& dgamma = gamma.node()->grad_buffer();
        const Index dgs = dgamma.strides()[0];
        constexpr Index kBlock = 64;
        detail::parallel_for_lanes((D + kBlock - 1) / kBlock, xv.numel(), [&](Index block) {
          const Index begin = block * kBlock, end = std::min(D, begin + kBlock);
          T acc[kBlock] = {};
          for (Index row = 0; row < rows; ++row) {
            const T* in = xv.data() + detail::row_offset(xv, row);
            const T* pg = g.data() + detail::row_offset(g, row);
            for (Index j = begin; j < end; ++j) acc[j - begin] += pg[j * os] * in[j * xs] * r[row];
          }
          for (Index j = begin; j < end; ++j) dgamma.data()[j * dgs] += acc[j - begin];
        });
      }
    });
  return out;
}

// then(rms_norm(x, γ)), for a `then` whose GEMMs read the norm's output first (the projections
// after a pre-norm): on the GPU with bf16 GEMMs the norm's kernel writes the output's bf16 copy
// too, and those GEMMs read it instead of rounding the output in a pass of their own.
template <class T, class Then>
auto rms_norm_then(const Var<T>& x, const Var<T>& gamma, T eps, Then then) {
  std::shared_ptr<void> rounded;
  const Var<T> y = rms_norm(x, gamma, eps, &rounded);
  return with_rounded(y, std::move(rounded), [&] { return then(y); });
}

}  // namespace drt
