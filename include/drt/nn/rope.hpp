// drt/nn/rope.hpp — rotary position embedding (RoPE), in the rotate-half layout of Llama / HF.
//
// Shapes: x (..., S, d) → (..., S, d), with S positions along axis −2 and d even.
//
// The pair (x_i, x_{i+d/2}), i < d/2, is rotated by the angle p·θ^(−2i/d), p = s + position_offset:
//   out_i       = x_i cos − x_{i+d/2} sin
//   out_{i+d/2} = x_{i+d/2} cos + x_i sin
// A rotation is orthogonal, so the backward is the inverse rotation (the angle negated).
// The angles are computed in double: p·freq loses digits in float at long positions.
// On the device the frequencies still come from the host (the same std::pow); the cos/sin tables
// and the rotations are kernels (drt/cuda/nn/rope.cuh).
#pragma once

#include <cmath>

#include "drt/autodiff/var.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/rope.cuh"
#endif

namespace drt {
namespace detail {

// out = rotation of `in` by `direction`·angle (+1 forward, −1 backward); row-major cos/sin tables
// (S, d/2). Adds into out when `accumulate`, else overwrites it.
template <class T>
void rotate_pairs(const Tensor<T>& in, const Tensor<T>& out, const T* cos_table, const T* sin_table, T direction,
                  bool accumulate) {
  const Index d = in.size(-1), half = d / 2, S = in.size(-2);
  const Index is = in.strides()[in.rank() - 1], os = out.strides()[out.rank() - 1];
  parallel_for_lanes(row_count(in.shape()), in.numel(), [&](Index row) {
    const T* src = in.data() + row_offset(in, row);
    T* dst = out.data() + row_offset(out, row);
    const T* c = cos_table + (row % S) * half;
    const T* s = sin_table + (row % S) * half;
    for (Index i = 0; i < half; ++i) {
      const T lo = src[i * is], hi = src[(i + half) * is], sn = direction * s[i];
      const T new_lo = lo * c[i] - hi * sn, new_hi = hi * c[i] + lo * sn;
      if (accumulate) {
        dst[i * os] += new_lo;
        dst[(i + half) * os] += new_hi;
      } else {
        dst[i * os] = new_lo;
        dst[(i + half) * os] = new_hi;
      }
    }
  });
}

// rope on a device tensor: the frequencies as the CPU computes them, the tables and the rotation
// on the device; the backward rotates by the negated angle with the same tables.
template <class T>
Var<T> rope_on_device(const Var<T>& x, T theta, Index position_offset) {
  const Index S = x.size(-2), d = x.size(-1), half = d / 2;
  const Device device = x.device();
  Tensor<double> freq = Tensor<double>::empty(Shape{half}, step_arena());
  for (Index i = 0; i < half; ++i)
    freq.data()[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d));
  const Tensor<double> device_freq = freq.to(device, step_arena());
  const Tensor<T> cos_table = Tensor<T>::empty(Shape{S, half}, step_arena(), device);
  const Tensor<T> sin_table = Tensor<T>::empty(Shape{S, half}, step_arena(), device);
  Tensor<T> y = Tensor<T>::empty(x.shape(), step_arena(), device);
  DRT_ON_DEVICE("rope", cuda::rope_tables(device_freq, S, position_offset, cos_table, sin_table));
  DRT_ON_DEVICE("rope", cuda::rope_rotate(x.value(), y, cos_table, sin_table, T(1), false));
  Var<T> out = make_output(y, {&x});
  if (out.requires_grad())
    record_backward(out, [x, cos_table, sin_table, out] {
      [[maybe_unused]] const auto dx = x.node()->grad_slot();  // a fresh buffer is written, not added to
      DRT_ON_DEVICE("rope", cuda::rope_rotate(out.grad(), dx.buffer, cos_table, sin_table, T(-1), !dx.fresh));
    });
  return out;
}

}  // namespace detail

template <class T>
Var<T> rope(const Var<T>& x, T theta = T(10000), Index position_offset = 0) {
  DRT_CHECK(x.rank() >= 2, "rope: input needs (..., S, d) axes, got shape ", x.shape().str());
  const Index S = x.size(-2), d = x.size(-1), half = d / 2;
  DRT_CHECK(d % 2 == 0, "rope: the last extent d = ", d, " of shape ", x.shape().str(), " must be even");
  DRT_CHECK(theta > T(0), "rope: theta must be positive, got ", theta);
  if (!x.value().on_host()) return detail::rope_on_device(x, theta, position_offset);

  T* cos_table = step_arena()->allocate_array<T>(static_cast<std::size_t>(S * half));
  T* sin_table = step_arena()->allocate_array<T>(static_cast<std::size_t>(S * half));
  for (Index i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d));
    for (Index s = 0; s < S; ++s) {
      const double angle = static_cast<double>(s + position_offset) * freq;
      cos_table[s * half + i] = static_cast<T>(std::cos(angle));
      sin_table[s * half + i] = static_cast<T>(std::sin(angle));
    }
  }
  Tensor<T> y = Tensor<T>::empty(x.shape(), step_arena());
  detail::rotate_pairs(x.value(), y, cos_table, sin_table, T(1), false);

  Var<T> out = make_output(y, {&x});
  if (out.requires_grad())
    record_backward(out, [x, cos_table, sin_table, out] {
      const auto dx = x.node()->grad_slot();
      detail::rotate_pairs(out.grad(), dx.buffer, cos_table, sin_table, T(-1), !dx.fresh);
    });
  return out;
}

}  // namespace drt
