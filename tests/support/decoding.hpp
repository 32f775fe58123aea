// tests/support/decoding.hpp — what the CPU and GPU decoding tests share: models with every
// parameter moved off its initial value, random token ids, and "logits for every row".
#pragma once

#include <cstdint>
#include <vector>

#include <drt/model.hpp>

namespace drt::test_support {

// Every parameter perturbed, the norms' gains included, so that lmk_norm is not the identity
// (the reference's decoder skips it, spec §14 A5, which only shows with trained gains). Equal
// seeds give equal models (on the host: call it before move_to).
template <class Model>
void perturb(const Model& model, std::uint64_t seed) {
  std::uint64_t counter = 0;
  for (const auto& p : model.named_parameters()) {
    const Tensor<float>& v = p.parameter->value();
    for (Index i = 0; i < v.numel(); ++i) v.data()[i] += 0.3f * static_cast<float>(uniform01(seed, counter++) - 0.5);
  }
}

// n ids drawn from [low, high).
inline std::vector<std::int32_t> random_ids(Index n, int low, int high, std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[i] = low + static_cast<int>(random_bits(seed, i) % static_cast<std::uint64_t>(high - low));
  return ids;
}

// 0, 1, ..., n − 1: a feed's logit rows for every token.
inline std::vector<Index> all_rows(Index n) {
  std::vector<Index> rows(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) rows[i] = i;
  return rows;
}

}  // namespace drt::test_support
