// drt/nn/dropout.hpp — inverted dropout with a counter-based mask.
//
// Shapes: x (...) → (...). The element at row-major logical index i is kept iff
// uniform01(seed, i) >= p, and kept values are scaled by 1/(1 − p) so the expectation is unchanged.
// The mask is a pure function of (seed, i): the backward recomputes it instead of storing it,
// and it is the same on every thread count and device: the GPU (drt/cuda/nn/dropout.cuh) computes
// the same counter-based draw in each thread, so its masks equal the CPU's bit for bit.
#pragma once

#include <cstdint>

#include "drt/autodiff/var.hpp"
#include "drt/core/random.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/dropout.cuh"
#endif

namespace drt {
namespace detail {

// dst (+)= keep(i) ? src · scale : 0 over the row-major index i of src's shape.
template <class T>
void apply_dropout_mask(const Tensor<T>& src, const Tensor<T>& dst, double p, T scale, std::uint64_t seed,
                        bool accumulate) {
  if (!src.on_host()) {
    DRT_ON_DEVICE("dropout", cuda::dropout_apply(src, dst, p, scale, seed, accumulate));
    return;
  }
  const Index n = row_length(src.shape()), ss = row_step(src), ds = row_step(dst);
  parallel_for_lanes(row_count(src.shape()), src.numel(), [&](Index row) {
    const T* in = src.data() + row_offset(src, row);
    T* out = dst.data() + row_offset(dst, row);
    for (Index j = 0; j < n; ++j) {
      const bool keep = uniform01(seed, static_cast<std::uint64_t>(row * n + j)) >= p;
      const T v = keep ? in[j * ss] * scale : T(0);
      if (accumulate) out[j * ds] += v;
      else out[j * ds] = v;
    }
  });
}

}  // namespace detail

// y = mask ⊙ x / (1 − p);  dx = mask ⊙ g / (1 − p). Identity when p = 0 or not training.
template <class T>
Var<T> dropout(const Var<T>& x, T p, std::uint64_t seed, bool training = true) {
  DRT_CHECK(p >= T(0) && p < T(1), "dropout: p must be in [0, 1), got ", p);
  if (!training || p == T(0)) return x;
  const T scale = T(1) / (T(1) - p);
  Tensor<T> y = Tensor<T>::empty(x.shape(), step_arena(), x.device());
  detail::apply_dropout_mask(x.value(), y, static_cast<double>(p), scale, seed, false);
  Var<T> out = make_output(y, {&x});
  if (out.requires_grad())
    record_backward(out, [x, p, scale, seed, out] {
      detail::apply_dropout_mask(out.grad(), x.node()->grad_buffer(), static_cast<double>(p), scale, seed, true);
    });
  return out;
}

}  // namespace drt
