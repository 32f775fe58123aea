// First translation unit. Linking fails if any non-inline definition sits in a drt header.
#include <drt/core.hpp>
#include <drt/inference.hpp>
#include <drt/model.hpp>
#include <drt/optim.hpp>
#include <drt/train.hpp>

#include <cstdio>

double second_unit_sum();

int main() {
  drt::Tensor<double> t = drt::Tensor<double>::full({3}, 2.0);
  const double here = drt::sum_all(drt::eval(t * t)) + drt::tape().size();
  const double there = second_unit_sum();
  std::printf("this unit %g, other unit %g\n", here, there);
  return (here == 12.0 && there == 24.0) ? 0 : 1;
}
