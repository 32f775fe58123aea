// drt/optim/clip.hpp — clipping the gradients by their global L2 norm.
//
// ‖g‖ = √(Σ over every parameter, Σ over its elements g²). If ‖g‖ > max_norm, every gradient is
// multiplied by max_norm / (‖g‖ + 1e-6), so the direction of the update is kept and its size
// bounded. The norm before clipping is returned (worth logging: spikes announce instability).
// A non-finite norm leaves the gradients untouched; the caller should then skip the step.
#pragma once

#include <cmath>
#include <vector>

#include "drt/autodiff/var.hpp"
#include "drt/core/error.hpp"

namespace drt {

template <class T>
double grad_norm(const std::vector<Parameter<T>*>& params) {
  double total = 0.0;  // accumulate in double: float sums of ~1e6 squares lose digits
  for (const Parameter<T>* p : params) {
    const Tensor<T>& g = p->grad();
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
