// tests/cuda/gpu_test.hpp — what every gpu-labelled test shares: the fixture that FAILS without a
// GPU (a GPU test that skipped would look like a pass), random inputs, and the CPU-vs-GPU
// comparison that names the worst element.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include <drt/core.hpp>
#include <drt/cuda.cuh>

namespace drt::gpu_test {

class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(cuda::device_count(), 0) << "no CUDA device: gpu-labelled tests must run on a machine with a GPU";
  }
};

template <class T>
Tensor<T> uniform(const Shape& s, std::uint64_t seed, T lo = T(-1), T hi = T(1)) {
  return random_uniform<T>(s, seed, lo, hi);
}

// Every element of `gpu` (copied back) within atol + rtol·|cpu| of `cpu`; shapes must match.
template <class T>
void expect_close(const Tensor<T>& cpu, const Tensor<T>& gpu, double atol, double rtol, const char* what) {
  ASSERT_EQ(gpu.device(), Device::cuda) << what;
  ASSERT_EQ(cpu.shape(), gpu.shape()) << what;
  const std::vector<T> a = cpu.to_vector(), b = gpu.to_vector();
  double worst = 0;
  Index where = -1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    const bool same_inf = std::isinf(double(a[i])) && a[i] == b[i];
    if (!same_inf && !(d <= atol + rtol * std::abs(double(a[i])))) {
      if (where < 0 || d > worst) worst = d, where = Index(i);
    }
  }
  EXPECT_LT(where, 0) << what << ": element " << where << " cpu " << (where >= 0 ? double(a[where]) : 0.0)
                      << " gpu " << (where >= 0 ? double(b[where]) : 0.0) << " (|diff| " << worst << ")";
}
// The largest |a - b| over two host tensors of the same shape.
template <class T>
double max_abs_difference(const Tensor<T>& a, const Tensor<T>& b) {
  const std::vector<T> x = a.to_vector(), y = b.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) worst = std::max(worst, std::abs(double(x[i]) - double(y[i])));
  return worst;
}

template <class T>
void expect_equal(const Tensor<T>& cpu, const Tensor<T>& gpu, const char* what) {
  expect_close(cpu, gpu, 0.0, 0.0, what);
}

// `copy` holds t's values as bf16, element for element and bit for bit what bf16_copy
// (drt/cuda/bf16.cuh) makes of t: a copy that an op writes for a bf16 GEMM must be exactly what
// the rounding pass it replaces would have made.
inline void expect_bf16_copy_of(const Tensor<float>& t, const std::shared_ptr<void>& copy, const char* what) {
  ASSERT_TRUE(copy) << what << ": no copy was written";
  ASSERT_TRUE(t.is_contiguous()) << what;
  const std::size_t n = static_cast<std::size_t>(t.numel());
  const std::shared_ptr<void> reference = cuda::bf16_copy(t.data(), t.numel());
  std::vector<std::uint16_t> got(n), want(n);
  ASSERT_EQ(cudaMemcpy(got.data(), copy.get(), n * 2, cudaMemcpyDeviceToHost), cudaSuccess) << what;
  ASSERT_EQ(cudaMemcpy(want.data(), reference.get(), n * 2, cudaMemcpyDeviceToHost), cudaSuccess) << what;
  Index first_difference = -1;
  for (std::size_t i = 0; i < n && first_difference < 0; ++i)
    if (got[i] != want[i]) first_difference = Index(i);
  EXPECT_LT(first_difference, 0) << what << ": the copy differs from bf16_copy first at element " << first_difference;
}

}  // namespace drt::gpu_test
