// drt/nn/gumbel.hpp — Gumbel noise, for sampling by perturb-and-take-the-max (Gumbel-max / top-k).
//
// Shapes: gumbel_noise (shape) → (shape), on `device`;  add_gumbel x (...) → (...) on x's device.
// Element at row-major logical index i is standard_gumbel(seed, i): reproducible per seed on any
// thread count or device. argmax(x + noise) samples from softmax(x).
// On the device each thread draws its own element (drt/cuda/nn/gumbel.cuh): the same uniforms as
// the CPU bit for bit; the logarithms are CUDA's, so fp64 noise may differ in the last bit.
#pragma once

#include <cstdint>

#include "drt/autodiff/var.hpp"
#include "drt/core/random.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/gumbel.cuh"
#endif

namespace drt {

template <class T>
Tensor<T> gumbel_noise(const Shape& shape, std::uint64_t seed, Arena* arena = nullptr, Device device = Device::cpu) {
  if (device != Device::cpu) {
    Tensor<T> noise = Tensor<T>::empty(shape, arena, device);
    DRT_ON_DEVICE("gumbel_noise", cuda::gumbel_noise_fill(noise, seed));
    return noise;
  }
  Tensor<T> noise = Tensor<T>::empty(shape, arena);
  T* out = noise.data();
  const Index n = noise.numel();
  parallel_for(n, n, [&](Index i) { out[i] = static_cast<T>(standard_gumbel(seed, static_cast<std::uint64_t>(i))); });
  return noise;
}

// y = x + gumbel_noise(x.shape(), seed), in one pass;  dx = g
template <class T>
Var<T> add_gumbel(const Var<T>& x, std::uint64_t seed) {
  const Tensor<T>& xv = x.value();
  Tensor<T> y = Tensor<T>::empty(xv.shape(), step_arena(), xv.device());
  const Index n = detail::row_length(xv.shape()), xs = detail::row_step(xv);
  if (!xv.on_host()) {
    DRT_ON_DEVICE("add_gumbel", cuda::add_gumbel_forward(xv, y, seed));
  } else {
    detail::parallel_for_lanes(detail::row_count(xv.shape()), xv.numel(), [&](Index row) {
      const T* in = xv.data() + detail::row_offset(xv, row);
      T* out = y.data() + row * n;
      for (Index j = 0; j < n; ++j)
        out[j] = in[j * xs] + static_cast<T>(standard_gumbel(seed, static_cast<std::uint64_t>(row * n + j)));
    });
  }
  Var<T> out = make_output(y, {&x});
  if (out.requires_grad()) record_backward(out, [x, out] { x.accumulate_grad_of(out); });
  return out;
}

}  // namespace drt
