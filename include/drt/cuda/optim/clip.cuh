// drt/cuda/optim/clip.cuh — Σg² of every device gradient, for grad_norm / clip_grad_norm
// (drt/optim/clip.hpp).
//
// Shapes: grads — one tensor per parameter (any shape; undefined or host ones are skipped) →
// one double per parameter.
//
// Each gradient's squares are summed in double (as on the CPU) by the two-pass sum of
// drt/cuda/core/reduce.cuh into its own slot of one device buffer; the buffer comes back in one
// copy, so a whole model costs one wait for the device, not one per parameter. The caller adds
// the per-parameter sums in parameter order, as the CPU does.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "drt/core/tensor.hpp"
#include "drt/cuda/core/reduce.cuh"
#include "drt/cuda/error.cuh"

namespace drt::cuda {

// sums[i] = Σ grads[i]², in double, for every device tensor in grads (0 for the others).
template <class T>
std::vector<double> sums_of_squares(const std::vector<Tensor<T>>& grads) {
  std::vector<double> sums(grads.size(), 0.0);
  if (grads.empty()) return sums;
  const Tensor<double> slots = Tensor<double>::zeros(Shape{Index(grads.size())}, nullptr, Device::cuda);
  bool any = false;
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const Tensor<T>& g = grads[i];
    if (!g.defined() || g.on_host()) continue;
    const Tensor<T> flat = g.contiguous();  // a copy only for a strided view
    sum_of<double>(flat.data(), flat.numel(), slots.data() + i, reduce_detail::Squared<double>{});
    any = true;
  }
  if (any) sums = slots.to_vector();
  return sums;
}

}  // namespace drt::cuda
