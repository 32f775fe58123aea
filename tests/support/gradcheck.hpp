// tests/support/gradcheck.hpp — the one gradient check every differentiable op goes through.
//
// expect_gradients_match(f, inputs) compares the tape's gradient of L = Σ f(x) ⊙ R (R a fixed
// random tensor, so every output element matters with a different weight) with central finite
// differences, in double precision, for every element of every input. Inputs may be
// non-contiguous views (transposes, slices): each element is perturbed where it lives.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "drt/autodiff/elementwise.hpp"
#include "drt/autodiff/reduce.hpp"
#include "drt/core/random.hpp"

namespace drt::testing {

using Inputs = std::vector<Var<double>>;
using Function = std::function<Var<double>(const Inputs&)>;

struct GradcheckOptions {
  double step = 1e-6;           // finite-difference step
  double tolerance = 1e-6;      // max relative error, per element and in norm
  std::uint64_t seed = 1234;    // seed of the output weights R
};

// Returns the largest relative error seen; reports each mismatching input with gtest.
inline double expect_gradients_match(const Function& f, const std::vector<Tensor<double>>& inputs,
                                     GradcheckOptions opt = {}) {
  tape().reset();
  // Analytic gradients from the tape.
  Inputs vars;
  for (const auto& t : inputs) vars.push_back(variable(t));
  Var<double> y = f(vars);
  const Tensor<double> weights = random_uniform<double>(y.shape(), opt.seed, -1.0, 1.0);
  Var<double> loss = sum_all(y * constant(weights));
  backward(loss);
  std::vector<Tensor<double>> analytic;
  for (const auto& v : vars)
    analytic.push_back(v.has_grad() ? v.grad().clone() : Tensor<double>::zeros(v.shape()));
  tape().reset();

  auto objective = [&]() {
    NoGradGuard no_grad;
    Inputs cs;
    for (const auto& t : inputs) cs.push_back(constant(t));
    const double value = sum_all(eval(f(cs).value() * weights));
    tape().reset();
    return value;
  };

  double worst = 0.0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor<double>& x = inputs[i];
    std::vector<double> numeric;
    x.for_each_offset([&](Index off) {
      double& xi = x.data()[off];
      const double saved = xi;
      xi = saved + opt.step;
      const double up = objective();
      xi = saved - opt.step;
      const double down = objective();
      xi = saved;
      numeric.push_back((up - down) / (2 * opt.step));
    });
    const std::vector<double> exact = analytic[i].to_vector();
    double diff2 = 0, norm2 = 0, worst_elem = 0;
    std::size_t worst_at = 0;
    for (std::size_t k = 0; k < numeric.size(); ++k) {
      const double d = std::abs(exact[k] - numeric[k]);
      const double rel = d / std::max(1.0, std::max(std::abs(exact[k]), std::abs(numeric[k])));
      if (rel > worst_elem) worst_elem = rel, worst_at = k;
      diff2 += d * d;
      norm2 += numeric[k] * numeric[k];
    }
    const double rel_norm = std::sqrt(diff2) / std::max(1e-12, std::sqrt(norm2));
    const double err = std::max(worst_elem, norm2 > 1e-20 ? rel_norm : 0.0);
    worst = std::max(worst, err);
    EXPECT_LT(err, opt.tolerance) << "input " << i << " of shape " << x.shape().str()
                                  << ": worst element " << worst_at << " analytic "
                                  << (exact.empty() ? 0 : exact[worst_at]) << " numeric "
                                  << (numeric.empty() ? 0 : numeric[worst_at]) << ", norm-wise relative error "
                                  << rel_norm;
  }
  return worst;
}

// A random double tensor (heap) with values in [low, high).
inline Tensor<double> rand(const Shape& shape, std::uint64_t seed, double low = -1, double high = 1) {
  return random_uniform<double>(shape, seed, low, high);
}

}  // namespace drt::testing
