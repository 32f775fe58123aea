// test_cuda_attention — sliding-window ALiBi attention and GCA on the GPU against the CPU ops:
// outputs and the gradients of every input, fp64 and fp32.
//
// Tolerances. fp64: only the order of additions differs (online softmax over single keys on the
// GPU, blocked GEMMs on the CPU): 1e-11 relative to each tensor's largest magnitude. fp32: the
// same with float rounding through a softmax and two dot products of length d ≤ 64 and sums over
// ≤ 200 keys: 2e-5 for outputs, 1e-4 for gradients (GCA's dK/dV add with atomics in any order).
#include "gpu_test.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <drt/attention/gca.hpp>
#include <drt/attention/window_attention.hpp>
#include <drt/nn/alibi.hpp>

namespace {

using namespace drt;
using namespace drt::gpu_test;

// |gpu − cpu| ≤ tol · max(1, max|cpu|): inputs are O(1), so outputs and gradients are too, except
// where they vanish exactly (W = 0: every query sees only itself, so dQ and dK are 0 up to rounding).
template <class T>
void expect_near_scaled(const Tensor<T>& cpu, const Tensor<T>& gpu, double tol, const std::string& what) {
  double scale = 1;
  for (T v : cpu.to_vector()) scale = std::max(scale, std::abs(double(v)));
  expect_close(cpu, gpu, tol * scale, 0.0, what.c_str());
}

template <class T>
constexpr double value_tol() { return std::is_same_v<T, double> ? 1e-11 : 2e-5; }
template <class T>
constexpr double grad_tol() { return std::is_same_v<T, double> ? 1e-11 : 1e-4; }

struct WindowCase {
  Index B, T, H, Hkv, d, W;
};

template <class T>
void check_window(const WindowCase& c) {
  SCOPED_TRACE(::testing::Message() << "B" << c.B << " T" << c.T << " H" << c.H << "/" << c.Hkv << " d" << c.d << " W" << c.W);
  const Tensor<T> q = uniform<T>({c.B, c.T, c.H, c.d}, 1), k = uniform<T>({c.B, c.T, c.Hkv, c.d}, 2);
  const Tensor<T> v = uniform<T>({c.B, c.T, c.Hkv, c.d}, 3), seed = uniform<T>({c.B, c.T, c.H, c.d}, 4);
  const Tensor<T> slopes = alibi_slopes<T>(static_cast<int>(c.H));
  const T scale = T(1) / std::sqrt(T(c.d));
  struct Result {
    Tensor<T> out, dq, dk, dv;
  };
  auto run = [&](Device device) {
    const Var<T> vq = variable(q.to(device)), vk = variable(k.to(device)), vv = variable(v.to(device));
    const Var<T> out = window_attention(vq, vk, vv, slopes, c.W, scale);
    backward(out, seed.to(device));
    Result r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone()};
    tape().reset();
    return r;
  };
  const Result cpu = run(Device::cpu), gpu = run(Device::cuda);
  expect_near_scaled(cpu.out, gpu.out, value_tol<T>(), "out");
  expect_near_scaled(cpu.dq, gpu.dq, grad_tol<T>(), "dq");
  expect_near_scaled(cpu.dk, gpu.dk, grad_tol<T>(), "dk");
  expect_near_scaled(cpu.dv, gpu.dv, grad_tol<T>(), "dv");
}

TEST_F(Gpu, WindowAttentionMatchesCpu) {
  for (const WindowCase& c : {WindowCase{2, 150, 4, 2, 40, 17}, WindowCase{1, 70, 2, 2, 64, 0},
                              WindowCase{2, 90, 4, 1, 33, 200}, WindowCase{1, 300, 3, 3, 64, 128},
                              WindowCase{1, 100, 2, 1, 80, 30}}) {
    // float with d ≤ 64 takes the tiled kernels (version 2); d = 80 and double take version 1.
    check_window<double>(c);
    check_window<float>(c);
  }
}

// The kernel lab's cap (drt/cuda/attention/version.cuh): under VersionCap(1) calls that would
// take version 2 take version 1, which still matches the CPU.
TEST_F(Gpu, VersionCapSelectsAnOlderWindowKernel) {
  EXPECT_EQ(cuda::attention::window_attention_version<float>(64, Precision::fp32), 2);
  cuda::attention::VersionCap cap(1);
  EXPECT_EQ(cuda::attention::window_attention_version<float>(64, Precision::fp32), 1);
  EXPECT_EQ(cuda::attention::window_attention_version<float>(64, Precision::bf16), 1);
  check_window<float>(WindowCase{1, 300, 3, 3, 64, 128});
  EXPECT_THROW({ cuda::attention::VersionCap bad(0); }, Error);
}

struct GcaCase {
  Index B, rows_per_sequence, H, Hkv, M, E, N, d, Kc;
};

template <class T>
void check_gca(const GcaCase& c) {
  const Index Z = c.B * c.rows_per_sequence;
  SCOPED_TRACE(::testing::Message() << "Z" << Z << " H" << c.H << "/" << c.Hkv << " M" << c.M << " N" << c.N << " d" << c.d
                                    << " Kc" << c.Kc);
  const Tensor<T> q = uniform<T>({Z, c.H, c.M, c.d}, 5), k = uniform<T>({c.B, c.E, c.N, c.Hkv, c.d}, 6);
  const Tensor<T> v = uniform<T>({c.B, c.E, c.N, c.Hkv, c.d}, 7), seed = uniform<T>({Z, c.H, c.M, c.d}, 8);
  // Retrieved chunks, with empty slots (−1) and a zero weight among them.
  IndexTensor index = IndexTensor::empty({Z, c.Kc});
  Tensor<T> weight = uniform<T>({Z, c.Kc}, 9, T(0.05), T(1));
  for (Index z = 0; z < Z; ++z)
    for (Index i = 0; i < c.Kc; ++i) index(z, i) = static_cast<std::int32_t>((z * 7 + i * 3) % (c.E + 1)) - 1;
  if (Z * c.Kc > 2) weight(0, c.Kc - 1) = T(0);
  const T scale = T(1) / std::sqrt(T(c.d));
  struct Result {
    Tensor<T> out, dq, dk, dv, dw;
  };
  auto run = [&](Device device) {
    const Var<T> vq = variable(q.to(device)), vk = variable(k.to(device)), vv = variable(v.to(device));
    const Var<T> vw = variable(weight.to(device));
    const Var<T> out = gca(vq, vk, vv, index, vw, scale);
    backward(out, seed.to(device));
    Result r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone(), vw.grad().clone()};
    tape().reset();
    return r;
  };
  const Result cpu = run(Device::cpu), gpu = run(Device::cuda);
  expect_near_scaled(cpu.out, gpu.out, value_tol<T>(), "out");
  expect_near_scaled(cpu.dq, gpu.dq, grad_tol<T>(), "dq");
  expect_near_scaled(cpu.dk, gpu.dk, grad_tol<T>(), "dk");
  expect_near_scaled(cpu.dv, gpu.dv, grad_tol<T>(), "dv");
  expect_near_scaled(cpu.dw, gpu.dw, grad_tol<T>(), "dweight");
}

TEST_F(Gpu, GcaMatchesCpu) {
  for (const GcaCase& c : {GcaCase{2, 3, 4, 2, 5, 4, 37, 40, 3}, GcaCase{1, 2, 2, 2, 64, 3, 64, 64, 1},
                           GcaCase{3, 2, 6, 3, 7, 5, 65, 16, 4}}) {
    // float with M, N, d ≤ 64 takes the tiled kernels (version 2); N = 65 and double take version 1.
    check_gca<double>(c);
    check_gca<float>(c);
  }
}

TEST_F(Gpu, VersionCapSelectsAnOlderGcaKernel) {
  const cuda::attention::GcaShape shape{2, 2, 64, 64, 1, 3, 64, 2, 1, 2, 1};
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, Precision::bf16), cuda::attention::wgmma::wgmma_available() ? 5 : 4);
  cuda::attention::VersionCap cap(1);
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, Precision::bf16), 1);
  check_gca<float>(GcaCase{1, 2, 2, 2, 64, 3, 64, 64, 1});
}

// Version 3 (bf16 tensor cores, taken in bf16 mode at M = N = d = 64) against the CPU op in
// double on the SAME bf16-rounded q, k, v and dO: what is left is the rounding version 3 does
// inside, where P (before P·V and Pᵀ·dO) and dS (before dS·K and dSᵀ·Q) are rounded to bf16.
// Each such product term then carries a relative error of at most 2^-9 (bf16's unit roundoff),
// so a result Σ_j x_j y_j is off by at most 2^-9 · Σ_j |x_j y_j|: for o = Σ_n P_n v_n / Σ_n P_n
// that is ≤ 2^-9 · max|v| ≈ 0.2% of max|v|, and likewise for the gradients relative to the
// sums of their terms' magnitudes. Those sums exceed a tensor's largest entry by a small factor
// here (terms of mixed sign over 64 keys or queries), so the bound is a few 2^-9 ≈ 1% of each
// tensor's largest magnitude, and independent rounding errors cancel further (measured on an
// H200: 0.11–0.15% for out, dq, dk, dv; < 1e-5 for dweight, whose δ = Σ P dP is fp32 throughout).
// The fp32 sums add ~1e-6. Hence 2e-2 relative to each tensor's largest magnitude: above the
// bound, and far below a fragment-layout mistake, which moves whole probabilities (errors of
// order the largest entry itself). No floor at 1 as above: out here is ≤ ~1.
// Both on the host (the GPU result copied back and widened).
void expect_near_relative_to_max(const Tensor<double>& cpu, const Tensor<double>& gpu, double tol,
                                 const std::string& what) {
  ASSERT_EQ(cpu.shape(), gpu.shape()) << what;
  const std::vector<double> a = cpu.to_vector(), b = gpu.to_vector();
  double largest = 0, worst = 0;
  std::size_t where = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    largest = std::max(largest, std::abs(a[i]));
    const double diff = std::isnan(b[i]) ? INFINITY : std::abs(a[i] - b[i]);
    if (diff > worst) worst = diff, where = i;
  }
  ASSERT_GT(largest, 0.0) << what;
  EXPECT_LE(worst, tol * largest) << what << ": element " << where << " cpu " << a[where] << " gpu " << b[where]
                                  << " (largest |cpu| " << largest << ")";
}

Tensor<float> rounded_to_bf16(Tensor<float> t) {
  float* x = t.data();
  for (Index i = 0; i < t.numel(); ++i) x[i] = round_to_precision(x[i], Precision::bf16);
  return t;
}

constexpr double kBf16Tol = 2e-2;

TEST_F(Gpu, GcaBf16TensorCoresMatchCpu) {
  // Version 3 (version 4 has tests/cuda/test_cuda_gca_v4.cu).
  const cuda::attention::VersionCap version_3(3);
  // DRT's shape with small Z: M = N = d = 64, grouped heads (H 4 over Hkv 2), 2 sequences.
  const Index B = 2, rows = 3, Z = B * rows, H = 4, Hkv = 2, M = 64, E = 5, N = 64, d = 64, Kc = 3;
  const Tensor<float> q = rounded_to_bf16(uniform<float>({Z, H, M, d}, 15));
  const Tensor<float> k = rounded_to_bf16(uniform<float>({B, E, N, Hkv, d}, 16));
  const Tensor<float> v = rounded_to_bf16(uniform<float>({B, E, N, Hkv, d}, 17));
  IndexTensor index = IndexTensor::empty({Z, Kc});
  Tensor<float> weight = uniform<float>({Z, Kc}, 19, 0.05f, 1.0f);
  for (Index z = 0; z < Z; ++z)
    for (Index i = 0; i < Kc; ++i) index(z, i) = static_cast<std::int32_t>((z * 7 + i * 3) % (E + 1)) - 1;
  ASSERT_EQ(index(0, 0), -1);  // an empty slot ...
  weight(1, 1) = 0.0f;         // ... and a zero weight on a filled one
  ASSERT_GE(index(1, 1), 0);
  // 4× the usual 1/√d: peaked softmaxes, so a P applied to the wrong keys shows (near-uniform
  // probabilities would hide it).
  const float scale = 0.5f;

  const cuda::attention::GcaShape shape = cuda::attention::gca_shape(q.shape(), k.shape(), index.shape());
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, Precision::bf16), 3);
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, Precision::fp32), 2);
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, Precision::tf32), 2);
  EXPECT_EQ(cuda::attention::gca_version<double>(shape, Precision::bf16), 1);

  const Tensor<float> seed = rounded_to_bf16(uniform<float>({Z, H, M, d}, 18));  // dO
  struct Result {
    Tensor<double> out, dq, dk, dv, dw;
  };
  // Device::cpu: the CPU op in double. Device::cuda: float on the GPU, under precision p.
  auto run = [&](Device device, Precision p) {
    MatmulPrecisionScope scope(p);
    Result r;
    if (device == Device::cpu) {
      const Var<double> vq = variable(q.cast<double>()), vk = variable(k.cast<double>()), vv = variable(v.cast<double>());
      const Var<double> vw = variable(weight.cast<double>());
      const Var<double> out = gca(vq, vk, vv, index, vw, double(scale));
      backward(out, seed.cast<double>());
      r = {out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone(), vw.grad().clone()};
    } else {
      const Var<float> vq = variable(q.to(device)), vk = variable(k.to(device)), vv = variable(v.to(device));
      const Var<float> vw = variable(weight.to(device));
      const Var<float> out = gca(vq, vk, vv, index, vw, scale);
      backward(out, seed.to(device));
      auto host = [](const Tensor<float>& t) { return t.to(Device::cpu).cast<double>(); };
      r = {host(out.value()), host(vq.grad()), host(vk.grad()), host(vv.grad()), host(vw.grad())};
    }
    tape().reset();
    return r;
  };
  const Result cpu = run(Device::cpu, Precision::fp32), gpu = run(Device::cuda, Precision::bf16);
  expect_near_relative_to_max(cpu.out, gpu.out, kBf16Tol, "out");
  expect_near_relative_to_max(cpu.dq, gpu.dq, kBf16Tol, "dq");
  expect_near_relative_to_max(cpu.dk, gpu.dk, kBf16Tol, "dk");
  expect_near_relative_to_max(cpu.dv, gpu.dv, kBf16Tol, "dv");
  expect_near_relative_to_max(cpu.dw, gpu.dw, kBf16Tol, "dweight");
  // And it was version 3 that ran: version 2 (fp32) on the same inputs differs by far more than
  // fp32 rounding (the bf16 P and dS), forward and backward.
  const Result fp32 = run(Device::cuda, Precision::fp32);
  EXPECT_GT(max_abs_difference(gpu.out, fp32.out), 1e-5);
  EXPECT_GT(max_abs_difference(gpu.dq, fp32.dq), 1e-5);
  EXPECT_GT(max_abs_difference(gpu.dk, fp32.dk), 1e-5);
  EXPECT_GT(max_abs_difference(gpu.dv, fp32.dv), 1e-5);
}

// An index already on the GPU (as the retrieval makes it) gives the same result. A bad index there
// is checked on the GPU, without a wait: the op treats the bad slot as empty, and the CPU's message
// comes at the next wait for the GPU (a copy to the host, or cuda::synchronize), once.
TEST_F(Gpu, GcaTakesADeviceIndexAndChecksIt) {
  const Tensor<float> q = uniform<float>({2, 2, 3, 8}, 1).to(Device::cuda);
  const Tensor<float> k = uniform<float>({1, 3, 4, 2, 8}, 2).to(Device::cuda), v = k;
  const Tensor<float> w = Tensor<float>::full({2, 2}, 0.5f).to(Device::cuda);
  IndexTensor index = IndexTensor::from({2, 2}, {0, 2, 1, -1});
  auto run = [&](const IndexTensor& i) { return gca(constant(q), constant(k), constant(v), i, constant(w), 0.3f); };
  const std::vector<float> a = run(index).value().to_vector();
  const std::vector<float> b = run(index.to(Device::cuda)).value().to_vector();
  EXPECT_EQ(a, b);
  index(0, 1) = -1;
  const std::vector<float> slot_empty = run(index.to(Device::cuda)).value().to_vector();
  index(0, 1) = 3;
  const Var<float> bad = run(index.to(Device::cuda));
  try {
    (void)bad.value().to_vector();
    ADD_FAILURE() << "a chunk outside the memory was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("retrieved chunk 3 is outside the memory of 3 chunks"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(bad.value().to_vector(), slot_empty);  // reported once; the bad slot was skipped
  index(0, 1) = 7;
  index(1, 1) = 5;  // two bad entries: the first in row-major order is reported
  (void)run(index.to(Device::cuda));
  try {
    cuda::synchronize();
    ADD_FAILURE() << "cuda::synchronize() did not report the bad index";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("retrieved chunk 7 is outside"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(cuda::synchronize());
  tape().reset();
}

}  // namespace
