// The library with its CUDA kernels in two nvcc translation units linked into one program. A
// kernel defined in a header must be a template or `static` (a plain `__global__` function is an
// external symbol: the second unit's copy breaks the link). Building this is the check (CI builds
// it); run on a GPU, both units compute the same loss.
#include <cmath>
#include <cstdio>

#include "tiny_model.hpp"

float second_unit_loss();

int main() {
  drt::DrtModel<float> model(two_unit_config(), 3);
  model.move_to(drt::Device::cuda);
  const float here = model.loss(two_unit_tokens()).item();
  drt::tape().reset();
  const float there = second_unit_loss();
  std::printf("this unit %.6f, other unit %.6f\n", here, there);
  return (std::isfinite(here) && here == there) ? 0 : 1;
}
