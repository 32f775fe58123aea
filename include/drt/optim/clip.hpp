// drt/optim/clip.hpp — clipping the gradients by their global L2 norm.
//
// ‖g‖ = √(Σ over every parameter, Σ over its elements g²). If ‖g‖ > max_norm, every gradient is
// multiplied by max_norm / (‖g‖ + 1e-6), so the direction of the update is kept and its size
// bounded. The norm before clipping is returned (worth logging: spikes announce instability).
// A non-finite norm leaves the gradients untouched; the caller should then skip the step.
//
// Device gradients: each parameter's Σg² is summed in double on the device (drt/cuda/optim/
// clip.cuh), all of them come back in one copy, and the per-parameter sums are added in the
// same order as on the CPU; the scaling is a device expression. Both need nvcc in the calling
// file.
#pragma once

#include <cmath>
#include <vector>

#include "drt/autodiff/var.hpp"
#include "drt/core/error.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/optim/clip.cuh"
#endif

namespace drt {
namespace detail {

// Σg² of every parameter whose gradient is on a device (0 for the others), in one round trip;
// empty when every gradient is on the host.
template <class T>
std::vector<double> device_sums_of_squares(const std::vector<Parameter<T>*>& params) {
  bool any = false;
  for (const Parameter<T>* p : params) any |= !p->grad().on_host();
  if (!any) return {};
  std::vector<Tensor<T>> grads;
  grads.reserve(params.size());
  for (const Parameter<T>* p : params) grads.push_back(p->grad());
  std::vector<double> sums;
  DRT_ON_DEVICE("grad_norm", sums = cuda::sums_of_squares(grads));
  return sums;
}

}  // namespace detail

template <class T>
double grad_norm(const std::vector<Parameter<T>*>& params) {
  const std::vector<double> on_device = detail::device_sums_of_squares(params);
  double total = 0.0;  // accumulate in double: float sums of ~1e6 squares lose digits
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor<T>& g = params[i]->grad();
    if (!g.on_host()) {
      total += on_device[i];
      continue;
    }
    const T* data = g.data();
    const Index n = g.numel();
    double acc = 0.0;
    if (g.is_contiguous() && n >= expr::kParallelThreshold) {
      // (Only large tensors enter a parallel region: libgomp allocates for a one-thread team.)
#pragma omp parallel for schedule(static) reduction(+ : acc)
      for (Index k = 0; k < n; ++k) acc += static_cast<double>(data[k]) * static_cast<double>(data[k]);
    } else if (g.is_contiguous()) {
      for (Index k = 0; k < n; ++k) acc += static_cast<double>(data[k]) * static_cast<double>(data[k]);
    } else {
      g.for_each_offset([&](Index off) { acc += static_cast<double>(data[off]) * static_cast<double>(data[off]); });
    }
    total += acc;
  }
  return std::sqrt(total);
}

template <class T>
double clip_grad_norm(const std::vector<Parameter<T>*>& params, double max_norm) {
  DRT_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  const double norm = grad_norm(params);
  if (std::isfinite(norm) && norm > max_norm) {
    const T scale = static_cast<T>(max_norm / (norm + 1e-6));
    for (const Parameter<T>* p : params) p->grad().assign(p->grad() * scale);
  }
  return norm;
}

}  // namespace drt
