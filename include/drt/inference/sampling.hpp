// drt/inference/sampling.hpp — choosing the next token from logits: greedy, or a draw after
// temperature, top-k and top-p (nucleus) filtering.
//
// Shapes: logits (V).
//
// temperature 0 means greedy (argmax, ties to the lower id). Otherwise p ∝ exp(logit / T),
// restricted to the k most likely tokens (top_k > 0), then to the smallest set of the most
// likely whose mass reaches top_p (top_p < 1), renormalised. The draw is a pure function of
// (seed, step): the same seed gives the same continuation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"

namespace drt {

struct SamplingOptions {
  double temperature = 0;  // 0: greedy
  int top_k = 0;           // 0: no limit
  double top_p = 1;        // 1: no limit
  std::uint64_t seed = 0;

  void validate() const {
    DRT_CHECK(temperature >= 0 && std::isfinite(temperature), "sampling: temperature ", temperature, " must be >= 0");
    DRT_CHECK(top_k >= 0, "sampling: top_k ", top_k, " must be >= 0");
    DRT_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p ", top_p, " must lie in (0, 1]");
  }
};

template <class T>
std::int32_t sample_token(const Tensor<T>& logits, const SamplingOptions& options, std::uint64_t step) {
  DRT_CHECK(logits.rank() == 1 && logits.numel() > 0 && logits.is_contiguous(), "sample_token: logits must be (V), got ",
            logits.shape().str());
  const T* x = logits.data();
  const Index V = logits.numel();
  if (options.temperature == 0) return static_cast<std::int32_t>(std::max_element(x, x + V) - x);

  std::vector<std::int32_t> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return x[a] > x[b]; });
  Index keep = options.top_k > 0 ? std::min<Index>(V, options.top_k) : V;
  std::vector<double> p(static_cast<std::size_t>(keep));
  double total = 0;
  for (Index i = 0; i < keep; ++i) total += (p[i] = std::exp((double(x[order[i]]) - double(x[order[0]])) / options.temperature));
  // Nucleus: the smallest prefix (most likely first) whose mass reaches top_p.
  double mass = 0;
  for (Index i = 0; i < keep; ++i) {
    mass += p[i] / total;
    if (mass >= options.top_p) {
      keep = i + 1;
      break;
    }
  }
  double kept = 0;
  for (Index i = 0; i < keep; ++i) kept += p[i];
  double u = uniform01(options.seed, step) * kept;
  for (Index i = 0; i < keep; ++i)
    if ((u -= p[i]) <= 0) return order[i];
  return order[keep - 1];
}

}  // namespace drt
