// Second translation unit: uses the same templates and inline functions as main.cpp.
#include <drt/core.hpp>
#include <drt/inference.hpp>
#include <drt/model.hpp>
#include <drt/optim.hpp>
#include <drt/train.hpp>

double second_unit_sum() {
  drt::Tensor<double> t = drt::Tensor<double>::full({3}, 2.0);
  drt::Var<double> x = drt::variable(t);
  drt::Var<double> y = drt::sum_all(x * x);
  drt::backward(y);
  const double g = drt::sum_all(x.grad());
  drt::tape().reset();
  return y.item() + g;  // 12 + 12
}
