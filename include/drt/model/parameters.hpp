// drt/model/parameters.hpp — named parameters and their initialisation.
//
// Every trainable tensor of a model is listed with its name in the reference's PyTorch
// state_dict (e.g. "model.lower_layers.0.self_attn.q_proj.weight"), so checkpoints load in both
// directions without a renaming table. Initialisation follows the reference (spec §8): linear
// and embedding weights from N(0, initializer_range), RMSNorm gains 1.
#pragma once

#include <string>
#include <vector>

#include "drt/autodiff/var.hpp"
#include "drt/core/random.hpp"

namespace drt {

template <class T>
struct NamedParameter {
  std::string name;
  Parameter<T>* parameter;
};
template <class T>
using ParameterList = std::vector<NamedParameter<T>>;

// A (rows, cols) weight drawn from N(0, std) with its own seed from `gen`.
template <class T>
Parameter<T> normal_parameter(const Shape& shape, double std, Generator& gen) {
  return Parameter<T>(random_normal<T>(shape, gen.draw(), T(0), static_cast<T>(std)));
}

template <class T>
Parameter<T> ones_parameter(Index size) {
  return Parameter<T>(Tensor<T>::full(Shape{size}, T(1)));
}

// Number of trainable values in a list of parameters.
template <class T>
std::int64_t count_elements(const ParameterList<T>& list) {
  std::int64_t n = 0;
  for (const auto& p : list) n += p.parameter->value().numel();
  return n;
}

template <class T>
std::vector<Parameter<T>*> parameter_pointers(const ParameterList<T>& list) {
  std::vector<Parameter<T>*> out;
  for (const auto& p : list) out.push_back(p.parameter);
  return out;
}

// Where the weight matrices (the parameters of rank 2) keep their values: the storages that a
// RoundedOperandReuse scope over a whole step or prefill segment promises for (precision.hpp).
template <class T>
std::vector<const void*> weight_storages(const ParameterList<T>& list) {
  std::vector<const void*> out;
  for (const auto& p : list)
    if (p.parameter->rank() == 2) out.push_back(p.parameter->value().data());
  return out;
}

}  // namespace drt
