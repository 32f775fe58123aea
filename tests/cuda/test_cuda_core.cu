// test_cuda_core — the CUDA backend's foundation, every op compared with the CPU op.
//
// Labelled `gpu` in ctest and registered only with -DDRT_GPU_TESTS=ON (CI compiles this file for
// sm_90 but never runs it). On a machine without a GPU every test FAILS in SetUp: a GPU test that
// skipped would look like a pass.
//
// Tolerances (fp32, inputs uniform in [-1, 1] unless stated):
//   copies, fills, max/argmax, select, + − × ÷ by exact numbers    exact (bitwise equal)
//   + − × ÷, exp, log, tanh, sigmoid, silu, pow, ...               |gpu − cpu| ≤ 2e-6 + 2e-6·|cpu|
//       (CUDA's expf/logf/tanhf are within 2 ulp of the exact value, glibc's within 1)
//   sums along an axis (different addition order)                  ≤ 1e-6·n + 1e-6·|cpu|
//   GEMM, exact fp32 mode (cuBLAS vs Eigen, different order)       ≤ 2e-6·K (entries are O(√K))
//   GEMM, TF32 mode (10-bit mantissa inputs)                       ≤ 2e-3·K·... see the test
//   fp64 everything                                                 ≤ 1e-12 relative
#include "gpu_test.hpp"

#include <drt/io/bfloat16.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using drt::Device;
using drt::Index;
using drt::Shape;
using drt::Tensor;
namespace cuda = drt::cuda;
using namespace drt;  // operators and functions on expression nodes
using namespace drt::gpu_test;

constexpr double kAtol = 2e-6, kRtol = 2e-6;

// ---- copies ----------------------------------------------------------------------------------------

TEST_F(Gpu, CopiesRoundTripExactly) {
  const Tensor<float> h = uniform<float>({3, 4, 5}, 1);
  const Tensor<float> d = cuda::to_device(h);
  EXPECT_EQ(d.device(), Device::cuda);
  EXPECT_TRUE(d.owns_memory());
  EXPECT_EQ(cuda::to_host(d).to_vector(), h.to_vector());
  // Strided views on either side: host transposed view → device, device view → host.
  expect_equal(h.transpose(0, 2).contiguous(), cuda::to_device(h.transpose(0, 2)), "host view to device");
  EXPECT_EQ(d.permute({2, 0, 1}).to_vector(), h.permute({2, 0, 1}).to_vector());
  EXPECT_EQ(d.slice(1, 1, 4, 2).to_vector(), h.slice(1, 1, 4, 2).to_vector());
  // Device → device into a strided destination, and a broadcast source.
  Tensor<float> dt = Tensor<float>::zeros({5, 4, 3}, nullptr, Device::cuda);
  dt.transpose(0, 2).copy_from(d);
  expect_equal(h.transpose(0, 2).contiguous(), dt, "device copy into a transposed view");
  Tensor<float> row = uniform<float>({5}, 2);
  Tensor<float> b = Tensor<float>::empty({3, 4, 5}, nullptr, Device::cuda);
  b.copy_from(cuda::to_device(row));
  expect_equal(row.broadcast_to({3, 4, 5}).contiguous(), b, "broadcast copy");
  // Host strided destination from the device.
  Tensor<float> ht = Tensor<float>::zeros({5, 4, 3});
  ht.transpose(0, 2).copy_from(d);
  EXPECT_EQ(ht.transpose(0, 2).contiguous().to_vector(), h.to_vector());
  // Other element types travel too.
  const auto ints = Tensor<std::int32_t>::from({4}, {1, -2, 3, 1 << 30});
  EXPECT_EQ(cuda::to_device(ints).to_vector(), ints.to_vector());
  const Tensor<double> hd = uniform<double>({7, 3}, 3);
  EXPECT_EQ(cuda::to_device(hd).transpose(0, 1).to_vector(), hd.transpose(0, 1).to_vector());
}

// Device-to-device copies of views whose layouts the copy kernel simplifies (axes merged,
// elements widened up to 16-byte words where alignment allows) and of ones where it must not
// widen (a base one element off alignment, odd extents), in float, double and int32, and fills
// whose value is repeated across a widened word: all bitwise equal to the host's copies.
TEST_F(Gpu, DeviceViewCopiesInWideWords) {
  const Tensor<float> h = uniform<float>({6, 4, 5, 16}, 4);
  const Tensor<float> d = cuda::to_device(h);
  // The first 8 columns of every row into rows of another tensor: axes 0–2 merge into one, the
  // 8 columns become two 16-byte words (a contiguous pair would be one cudaMemcpy instead).
  Tensor<float> rows = Tensor<float>::zeros({9, 4, 5, 8}, nullptr, Device::cuda);
  rows.slice(0, 2, 8).copy_from(d.slice(3, 0, 8));
  Tensor<float> rows_host = Tensor<float>::zeros({9, 4, 5, 8});
  rows_host.slice(0, 2, 8).copy_from(h.slice(3, 0, 8));
  expect_equal(rows_host, rows, "half rows into a slice of rows");
  // The chunk layout of the decoder: (n, rows, H, d) → (n, H, rows, d), contiguous runs of d.
  expect_equal(h.permute({0, 2, 1, 3}).contiguous(), d.permute({0, 2, 1, 3}).contiguous(), "permuted heads");
  // One element off alignment, and odd extents: no widening, the same values.
  expect_equal(h.slice(3, 1, 14).contiguous(), d.slice(3, 1, 14).contiguous(), "misaligned columns");
  expect_equal(h.slice(3, 1, 9).contiguous(), d.slice(3, 1, 9).contiguous(), "misaligned even columns");
  expect_equal(h.slice(2, 0, 5, 2).contiguous(), d.slice(2, 0, 5, 2).contiguous(), "every other row");
  // Fills of a column block: the value repeated across wide words, the neighbours untouched.
  Tensor<float> block = cuda::to_device(h);
  Tensor<float> block_host = h.contiguous();
  block.slice(3, 4, 12).fill(3.5f);
  block_host.slice(3, 4, 12).fill(3.5f);
  expect_equal(block_host, block, "filled column block");
  // Doubles (8 → 16-byte words) and int32.
  const Tensor<double> hd = uniform<double>({5, 3, 8}, 5);
  EXPECT_EQ(cuda::to_device(hd).permute({1, 0, 2}).contiguous().to_vector(), hd.permute({1, 0, 2}).contiguous().to_vector());
  const auto ints = Tensor<std::int32_t>::from({3, 4}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  EXPECT_EQ(cuda::to_device(ints).slice(1, 1, 3).contiguous().to_vector(), ints.slice(1, 1, 3).contiguous().to_vector());
  EXPECT_EQ(cuda::to_device(ints).transpose(0, 1).contiguous().to_vector(), ints.transpose(0, 1).contiguous().to_vector());
}

// Assigning a tensor of the destination's shape (a plain leaf, not added) between views that are
// not both flat takes the copy path (copy.cuh) instead of the expression kernel: the GCA layer's
// permute and concat and their gradients. The same values as the host, bit for bit, and the
// destination's neighbours untouched; broadcasting and accumulation keep the expression kernel.
TEST_F(Gpu, AssigningATensorToAViewCopies) {
  const Tensor<float> h = uniform<float>({3, 5, 7, 4, 16}, 6);
  const Tensor<float> d = cuda::to_device(h);
  // A GCA layer's query layout: chunks 1.. of (B, C, S, H, d) as (B, C − 1, H, S, d).
  auto gca_queries = [](const Tensor<float>& q) { return q.slice(1, 1, 5).permute({0, 1, 3, 2, 4}); };
  Tensor<float> out_host = Tensor<float>::zeros({3, 4, 4, 7, 16});
  Tensor<float> out = Tensor<float>::zeros({3, 4, 4, 7, 16}, nullptr, Device::cuda);
  out_host.assign(gca_queries(h));
  out.assign(gca_queries(d));
  expect_equal(out_host, out, "permuted source into a flat destination");
  // Into a slice of a bigger tensor (concat's forward; the neighbours keep their zeros).
  Tensor<float> wide_host = Tensor<float>::zeros({3, 6, 7, 4, 16});
  Tensor<float> wide = Tensor<float>::zeros({3, 6, 7, 4, 16}, nullptr, Device::cuda);
  wide_host.slice(1, 1, 6).assign(h);
  wide.slice(1, 1, 6).assign(d);
  expect_equal(wide_host, wide, "flat source into a slice");
  // Both strided, and doubles.
  const Tensor<double> hd = uniform<double>({4, 6, 8}, 7);
  Tensor<double> both_host = Tensor<double>::zeros({8, 6, 9});
  Tensor<double> both = Tensor<double>::zeros({8, 6, 9}, nullptr, Device::cuda);
  both_host.slice(2, 1, 5).assign(hd.permute({2, 1, 0}));
  both.slice(2, 1, 5).assign(cuda::to_device(hd).permute({2, 1, 0}));
  EXPECT_EQ(both_host.to_vector(), both.to_vector());
  // A broadcast source and accumulation: still right.
  wide_host.slice(1, 0, 5) += h;
  wide.slice(1, 0, 5) += d;
  wide_host.slice(1, 5, 6).assign(h.slice(1, 0, 1).slice(0, 0, 1));
  wide.slice(1, 5, 6).assign(d.slice(1, 0, 1).slice(0, 0, 1));
  expect_equal(wide_host, wide, "accumulated, then a broadcast row");
}

TEST_F(Gpu, CreationFillAndItem) {
  const auto z = Tensor<float>::zeros({1000}, nullptr, Device::cuda);
  for (float v : z.to_vector()) ASSERT_EQ(v, 0.0f);
  const auto f = Tensor<float>::full({2, 3}, 2.5f, nullptr, Device::cuda);
  for (float v : f.to_vector()) ASSERT_EQ(v, 2.5f);
  f.slice(1, 1, 2).fill(-1.0f);
  EXPECT_EQ(f.to_vector(), (std::vector<float>{2.5f, -1.0f, 2.5f, 2.5f, -1.0f, 2.5f}));
  EXPECT_EQ(Tensor<double>::full({}, 4.0, nullptr, Device::cuda).item(), 4.0);
  // Host-only access to device data refuses instead of crashing.
  EXPECT_THROW(f(0, 0), drt::Error);
  EXPECT_THROW(f.for_each_offset([](Index) {}), drt::Error);
  EXPECT_EQ(drt::sum_all(f), 4 * 2.5f - 2 * 1.0f);  // reduced on the device
}

// ---- fused elementwise expressions ----------------------------------------------------------------

TEST_F(Gpu, ElementwiseMatchesCpu) {
  const Shape s{4, 33, 65};
  const Tensor<float> a = uniform<float>(s, 10), b = uniform<float>(s, 11), c = uniform<float>(s, 12);
  const Tensor<float> da = cuda::to_device(a), db = cuda::to_device(b), dc = cuda::to_device(c);
#define DRT_COMPARE(expression_of)                                                                   \
  do {                                                                                               \
    auto cpu_ = [&](const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& c) {        \
      return eval(expression_of);                                                                    \
    };                                                                                               \
    expect_close(cpu_(a, b, c), cpu_(da, db, dc), kAtol, kRtol, #expression_of);                     \
  } while (0)
  DRT_COMPARE(a + b);
  DRT_COMPARE(a - b);
  DRT_COMPARE(a * b);
  DRT_COMPARE(a / (abs(b) + 0.5f));
  DRT_COMPARE(a * 2.0f + 1.0f);
  DRT_COMPARE(3.0f - a / 4.0f);
  DRT_COMPARE(-a);
  DRT_COMPARE(exp(a));
  DRT_COMPARE(log(abs(a) + 0.1f));
  DRT_COMPARE(sqrt(abs(a)));
  DRT_COMPARE(rsqrt(abs(a) + 0.1f));
  DRT_COMPARE(abs(a));
  DRT_COMPARE(square(a));
  DRT_COMPARE(tanh(a * 3.0f));
  DRT_COMPARE(sin(a * 3.0f));
  DRT_COMPARE(cos(a * 3.0f));
  DRT_COMPARE(relu(a));
  DRT_COMPARE(sigmoid(a * 4.0f));
  DRT_COMPARE(silu(a * 4.0f));
  DRT_COMPARE(maximum(a, b));
  DRT_COMPARE(minimum(a, 0.25f));
  DRT_COMPARE(pow(abs(a) + 0.1f, 1.7f));
  DRT_COMPARE(select(gt(a, b), a, c));
  DRT_COMPARE(eq(a, a) + ne(a, b) + lt(a, b) + le(a, c) + ge(b, c));
  DRT_COMPARE(silu(a) * b + c * exp(-a));  // the benchmark's fused chain
#undef DRT_COMPARE
}

TEST_F(Gpu, ElementwiseBroadcastingViewsAndAccumulation) {
  const Tensor<float> a = uniform<float>({4, 33, 65}, 20), row = uniform<float>({65}, 21), col = uniform<float>({4, 33, 1}, 22);
  const Tensor<float> t = uniform<float>({65, 33, 4}, 23);
  const Tensor<float> da = cuda::to_device(a), drow = cuda::to_device(row), dcol = cuda::to_device(col),
                      dt = cuda::to_device(t);
  // Broadcasting (stride-0 walks) and a permuted operand: the strided kernel.
  expect_close(eval(a * row + col), eval(da * drow + dcol), kAtol, kRtol, "broadcast");
  expect_close(eval(a + t.permute({2, 1, 0}) * 2.0f), eval(da + dt.permute({2, 1, 0}) * 2.0f), kAtol, kRtol,
               "permuted operand");
  // A strided destination (transposed view) and accumulation.
  Tensor<float> out = Tensor<float>::zeros({65, 33, 4});
  Tensor<float> dout = Tensor<float>::zeros({65, 33, 4}, nullptr, Device::cuda);
  out.permute({2, 1, 0}).assign(exp(a) - row);
  dout.permute({2, 1, 0}).assign(exp(da) - drow);
  expect_close(out, dout, kAtol, kRtol, "strided destination");
  out += t * t;
  dout += dt * dt;
  expect_close(out, dout, kAtol, kRtol, "accumulate (flat)");
  out.permute({2, 1, 0}) += a;
  dout.permute({2, 1, 0}) += da;
  expect_close(out, dout, kAtol, kRtol, "accumulate (strided)");
  // A rank-0 result and doubles.
  const Tensor<double> x = uniform<double>({17, 5}, 24), y = uniform<double>({5}, 25);
  expect_close(eval(tanh(x) * y - sigmoid(y)), eval(tanh(cuda::to_device(x)) * cuda::to_device(y) - sigmoid(cuda::to_device(y))),
               1e-14, 1e-12, "double");
  // Mixing host and device tensors is an error, not a crash.
  EXPECT_THROW(eval(da + row), drt::Error);
  EXPECT_THROW(out.assign(da * 2.0f), drt::Error);
}

// ---- reductions --------------------------------------------------------------------------------

TEST_F(Gpu, SumAndMaxMatchCpu) {
  Tensor<float> x = uniform<float>({6, 37, 300}, 30);
  x.slice(0, 2, 3).slice(1, 5, 6).fill(-std::numeric_limits<float>::infinity());  // a masked lane
  x(1, 2, 7) = x(1, 2, 9) = 5.0f;                                                    // a tie: first wins
  const Tensor<float> dx = cuda::to_device(x);
  for (int axis : {2, 1, 0}) {
    for (bool keep : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "axis " << axis << " keepdim " << keep);
      const double n = double(x.size(axis));
      const Tensor<float> xs = x.slice(0, 0, 2);  // finite lanes for the sum
      expect_close(drt::sum(xs, axis, keep), drt::sum(dx.slice(0, 0, 2), axis, keep), 1e-6 * n, 1e-6, "sum");
      drt::IndexTensor where, dwhere;
      const Tensor<float> m = drt::max(x, axis, keep, nullptr, &where);
      const Tensor<float> dm = drt::max(dx, axis, keep, nullptr, &dwhere);
      expect_equal(m, dm, "max");
      EXPECT_EQ(dwhere.device(), Device::cuda);
      EXPECT_EQ(where.to_vector(), dwhere.to_vector()) << "argmax";
    }
  }
  // A strided input (a transposed view) and integers.
  expect_close(drt::sum(x.slice(0, 0, 2).transpose(1, 2), -1), drt::sum(dx.slice(0, 0, 2).transpose(1, 2), -1),
               1e-6 * 37, 1e-6, "sum of a transposed view");
  const auto ints = Tensor<std::int64_t>::from({2, 3}, {1, 5, -2, 7, 7, 0});
  EXPECT_EQ(drt::sum(cuda::to_device(ints), -1).to_vector(), (std::vector<std::int64_t>{4, 14}));
  // mean is sum then a device expression.
  expect_close(drt::mean(x.slice(0, 0, 2), -1), drt::mean(dx.slice(0, 0, 2), -1), 1e-6, 1e-5, "mean");
}

// ---- GEMM ----------------------------------------------------------------------------------------

TEST_F(Gpu, MatmulMatchesCpuExactFp32) {
  ASSERT_EQ(matmul_precision(), Precision::fp32);
  const Index M = 67, K = 45, N = 33;
  const Tensor<float> A = uniform<float>({M, K}, 40), B = uniform<float>({K, N}, 41);
  const Tensor<float> dA = cuda::to_device(A), dB = cuda::to_device(B);
  const double tol = 2e-6 * K;
  expect_close(drt::matmul(A, B), drt::matmul(dA, dB), tol, 0, "2-D");
  // Transposed views used in place (all four layouts).
  const Tensor<float> At = cuda::to_device(A.transpose(0, 1).contiguous()).transpose(0, 1);
  const Tensor<float> Bt = cuda::to_device(B.transpose(0, 1).contiguous()).transpose(0, 1);
  expect_close(drt::matmul(A, B), drt::matmul(At, dB), tol, 0, "Aᵀ view");
  expect_close(drt::matmul(A, B), drt::matmul(dA, Bt), tol, 0, "Bᵀ view");
  expect_close(drt::matmul(A, B), drt::matmul(At, Bt), tol, 0, "both views");
  // gemm with alpha, beta into a column slice of a wider C (ldc > N).
  Tensor<float> C = uniform<float>({M, N + 7}, 42);
  Tensor<float> dC = cuda::to_device(C);
  drt::gemm(A, B, C.slice(1, 3, 3 + N), 0.5f, 2.0f);
  drt::gemm(dA, dB, dC.slice(1, 3, 3 + N), 0.5f, 2.0f);
  expect_close(C, dC, tol, 0, "gemm alpha beta ldc");
  // Batched: (3, 2, M, K)·(3, 2, K, N); shared B; a batch that is not uniformly strided.
  const Tensor<float> Ab = uniform<float>({3, 2, M, K}, 43), Bb = uniform<float>({3, 2, K, N}, 44);
  const Tensor<float> dAb = cuda::to_device(Ab), dBb = cuda::to_device(Bb);
  expect_close(drt::matmul(Ab, Bb), drt::matmul(dAb, dBb), tol, 0, "batched");
  expect_close(drt::matmul(Ab, B), drt::matmul(dAb, dB), tol, 0, "shared B");
  const Tensor<float> P = uniform<float>({2, 3, M, K}, 45);
  expect_close(drt::matmul(P.permute({1, 0, 2, 3}), Bb), drt::matmul(cuda::to_device(P).permute({1, 0, 2, 3}), dBb), tol,
               0, "permuted batch (copied first)");
  expect_close(drt::matmul(Ab, Bb.transpose(-1, -2).contiguous().transpose(-1, -2)),
               drt::matmul(dAb, dBb.transpose(-1, -2).contiguous().transpose(-1, -2)), tol, 0, "batched Bᵀ views");
  // Doubles are exact to rounding.
  const Tensor<double> Ad = uniform<double>({M, K}, 46), Bd = uniform<double>({K, N}, 47);
  expect_close(drt::matmul(Ad, Bd), drt::matmul(cuda::to_device(Ad), cuda::to_device(Bd)), 1e-13 * K, 0, "double");
}

TEST_F(Gpu, MatmulTf32IsClose) {
  const Index M = 256, K = 512, N = 128;
  const Tensor<float> A = uniform<float>({M, K}, 50), B = uniform<float>({K, N}, 51);
  Tensor<float> d;
  {
    MatmulPrecisionScope tf32(Precision::tf32);
    d = drt::matmul(cuda::to_device(A), cuda::to_device(B));
  }
  // TF32 keeps 10 mantissa bits of each input (relative error ≤ 2^-11 each): each product is off
  // by ≤ 2^-10·|a·b| ≤ 1e-3, and K such errors of random sign add up to about 1e-3·√K.
  expect_close(drt::matmul(A, B), d, 1e-3 * std::sqrt(double(K)) * 3, 0, "tf32");
}

// One output row times a transposed-stored B (a decoding step's linear layers: x·Wᵀ) takes
// cuda/gemv.cuh instead of cuBLAS: W's rows read with 16-byte loads when K allows (K 256) or
// element by element (K 301), x strided, α ≠ 1 and β = 1, in fp32 and in bf16 (operands rounded
// as read), against the CPU (which emulates bf16 rounding). x·B with B row-major stays with
// cuBLAS and is checked too.
TEST_F(Gpu, SingleRowProductsMatchTheCpu) {
  for (const Precision precision : {Precision::fp32, Precision::bf16}) {
    MatmulPrecisionScope scope(precision);
    for (const Index K : {Index(256), Index(301)}) {
      const Index N = 700;
      const double tol = 4e-6 * double(K);
      const Tensor<float> x = uniform<float>({1, K}, 71), W = uniform<float>({N, K}, 72), B = uniform<float>({K, N}, 73);
      const Tensor<float> dx = cuda::to_device(x), dW = cuda::to_device(W), dB = cuda::to_device(B);
      expect_close(drt::matmul(x, W.transpose(0, 1)), drt::matmul(dx, dW.transpose(0, 1)), tol, 0, "x Wt");
      expect_close(drt::matmul(x, B), drt::matmul(dx, dB), tol, 0, "x B");
      const Tensor<float> column = uniform<float>({K, 3}, 74);  // x as a strided view: a column, transposed
      const Tensor<float> strided = column.slice(1, 1, 2).transpose(0, 1);
      const Tensor<float> d_strided = cuda::to_device(column).slice(1, 1, 2).transpose(0, 1);
      expect_close(drt::matmul(strided, W.transpose(0, 1)), drt::matmul(d_strided, dW.transpose(0, 1)), tol, 0,
                   "strided x, Wt");
      Tensor<float> C = uniform<float>({1, N}, 75);
      Tensor<float> dC = cuda::to_device(C);
      drt::gemm(x, W.transpose(0, 1), C, 0.5f, 1.0f);
      drt::gemm(dx, dW.transpose(0, 1), dC, 0.5f, 1.0f);
      expect_close(C, dC, tol, 0, "alpha 0.5, beta 1");
    }
  }
}

// The bf16 copies that bf16 GEMMs read: every element rounded to nearest even, as the host's
// conversion does, for lengths that leave 0–3 elements after the 16-byte loads and for a source
// one float off 16-byte alignment (element by element then).
TEST_F(Gpu, Bf16CopiesRoundEveryElement) {
  const Tensor<float> h = uniform<float>({1031}, 81);
  const Tensor<float> d = cuda::to_device(h);
  for (const Index offset : {Index(0), Index(1)})
    for (const Index n : {Index(1), Index(3), Index(4), Index(7), Index(1024), Index(1030)}) {
      const std::shared_ptr<void> copy = cuda::bf16_copy(d.data() + offset, n);
      std::vector<std::uint16_t> got(static_cast<std::size_t>(n));
      DRT_CUDA_CHECK(cudaMemcpy(got.data(), copy.get(), got.size() * 2, cudaMemcpyDeviceToHost));
      for (Index i = 0; i < n; ++i)
        ASSERT_EQ(got[i], drt::float_to_bfloat16(h.data()[offset + i])) << "offset " << offset << ", n " << n << ", i " << i;
    }
}

// bf16 operands, fp32 sums: the GPU must compute what the CPU's emulation computes (the same
// rounded operands; only the order of the fp32 sums differs), and differ from the exact fp32
// product by what bf16 rounding explains.
TEST_F(Gpu, MatmulBf16MatchesTheCpuEmulation) {
  const Index M = 67, K = 300, N = 45;
  const Tensor<float> A = uniform<float>({M, K}, 52), B = uniform<float>({K, N}, 53);
  const Tensor<float> dA = cuda::to_device(A), dB = cuda::to_device(B);
  const Tensor<float> exact = drt::matmul(A, B);
  MatmulPrecisionScope bf16(Precision::bf16);
  // Same rounded operands: only fp32 summation order differs (as in the exact fp32 test).
  const double tol = 2e-6 * K;
  expect_close(drt::matmul(A, B), drt::matmul(dA, dB), tol, 0, "2-D");
  const Tensor<float> At = cuda::to_device(A.transpose(0, 1).contiguous()).transpose(0, 1);
  expect_close(drt::matmul(A, B), drt::matmul(At, dB), tol, 0, "Aᵀ view");
  // A column slice of a wider A (its span has gaps that the bf16 copy must step over correctly).
  const Tensor<float> wide = uniform<float>({M, K + 9}, 54);
  expect_close(drt::matmul(wide.slice(1, 4, 4 + K), B), drt::matmul(cuda::to_device(wide).slice(1, 4, 4 + K), dB), tol,
               0, "sliced A");
  // Batched with a shared B, and gemm accumulating (beta = 1) into an fp32 C.
  const Tensor<float> Ab = uniform<float>({3, M, K}, 55);
  expect_close(drt::matmul(Ab, B), drt::matmul(cuda::to_device(Ab), dB), tol, 0, "batched, shared B");
  Tensor<float> C = uniform<float>({M, N}, 56);
  Tensor<float> dC = cuda::to_device(C);
  drt::gemm(A, B, C, 1.0f, 1.0f);
  drt::gemm(dA, dB, dC, 1.0f, 1.0f);
  expect_close(C, dC, tol, 0, "gemm beta 1");
  // Against the exact product: bf16 keeps 8 significant bits (relative error ≤ 2^-9 per operand),
  // so each product is off by ≤ 2^-8·|a·b| ≈ 4e-3 for |a|,|b| ≤ 1; K errors of random sign add up
  // to about 4e-3·√K. The rounding must also be visible: bf16 is not silently fp32.
  const Tensor<float> d = drt::matmul(dA, dB);
  expect_close(exact, d, 4e-3 * std::sqrt(double(K)) * 3, 0, "bf16 vs exact fp32");
  EXPECT_GT(max_abs_difference(exact, d.to(Device::cpu)), 1e-4) << "bf16 products equal the exact ones";
  // doubles ignore the switch.
  const Tensor<double> Ad = uniform<double>({M, K}, 57), Bd = uniform<double>({K, N}, 58);
  expect_close(drt::matmul(Ad, Bd), drt::matmul(cuda::to_device(Ad), cuda::to_device(Bd)), 1e-13 * K, 0, "double");
}

// Inside a RoundedOperandReuse scope an operand's storage is rounded once: a later GEMM of the
// scope that reads the same storage gets the first copy. Proven by breaking the scope's promise:
// A changed between two products inside the scope still multiplies as the old A; outside, the
// new A is rounded again.
TEST_F(Gpu, RoundedOperandsAreReusedInsideAScope) {
  const Index M = 40, K = 64, N = 24;
  const Tensor<float> A = uniform<float>({M, K}, 61), B = uniform<float>({K, N}, 62), A2 = uniform<float>({M, K}, 63);
  MatmulPrecisionScope bf16(Precision::bf16);
  const Tensor<float> dA = cuda::to_device(A), dB = cuda::to_device(B);
  const double tol = 2e-6 * K;
  {
    RoundedOperandReuse reuse;
    const Tensor<float> first = drt::matmul(dA, dB);
    expect_close(drt::matmul(A, B), first, tol, 0, "first product in the scope");
    dA.copy_from(cuda::to_device(A2));
    expect_close(drt::matmul(A, B), drt::matmul(dA, dB), tol, 0, "second product reuses the first rounding of A");
    // A read of fewer elements from the same address (the first M − 1 rows) reuses it too.
    expect_close(drt::matmul(A.slice(0, 0, M - 1), B), drt::matmul(dA.slice(0, 0, M - 1), dB), tol, 0, "shorter read");
  }
  expect_close(drt::matmul(A2, B), drt::matmul(dA, dB), tol, 0, "after the scope: rounded again");
}

// ---- the allocator ---------------------------------------------------------------------------------

TEST_F(Gpu, AllocatorReachesSteadyState) {
  const Tensor<float> x = cuda::to_device(uniform<float>({64, 256}, 60));
  const Tensor<float> w = cuda::to_device(uniform<float>({256, 128}, 61));
  drt::Arena arena;  // device tensors ignore it for memory; it means "no need to zero"
  auto step = [&] {
    const Tensor<float> h = drt::matmul(x, w, &arena);
    const Tensor<float> y = eval(silu(h) * 2.0f + 1.0f, &arena);
    const Tensor<float> s = drt::sum(y, -1, false, &arena);
    const Tensor<float> big = Tensor<float>::empty({3 << 20}, &arena, Device::cuda);  // a large bucket
    big.assign(big * 0.0f + 1.0f);
    return s;
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up: the free lists fill
  cuda::synchronize();
  const cuda::AllocatorStats before = cuda::allocator_stats();
  for (int i = 0; i < 20; ++i) step();
  cuda::synchronize();
  const cuda::AllocatorStats after = cuda::allocator_stats();
  EXPECT_EQ(after.malloc_calls, before.malloc_calls) << "cudaMalloc in steady state";
  EXPECT_GT(after.allocations, before.allocations);
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use) << "every step's tensors were returned";
  EXPECT_GT(after.bytes_cached, std::size_t(12) << 20);
  // Freed blocks come back to the cache, and empty_cache gives them to the driver.
  cuda::empty_cache();
  EXPECT_EQ(cuda::allocator_stats().bytes_cached, 0u);
}

// ---- the tape on the device ------------------------------------------------------------------------

TEST_F(Gpu, TapeRunsUnchangedOnDevice) {
  // loss = Σ tanh(x·w) · exp(x) − x / w, same ops on both devices; gradients compared.
  const Tensor<float> x = uniform<float>({8, 40}, 70), w = uniform<float>({8, 40}, 71, 0.5f, 1.5f);
  auto grads = [](const Tensor<float>& xv, const Tensor<float>& wv) {
    drt::Parameter<float> W(wv);
    drt::Var<float> X = drt::variable(xv);
    drt::Var<float> y = drt::tanh(X * W) * drt::exp(X) - X / W;
    drt::Var<float> loss = drt::sum(drt::sum(y, -1), 0);
    drt::backward(loss);
    std::vector<Tensor<float>> out{loss.value().to(Device::cpu).clone(), X.grad().to(Device::cpu).clone(),
                                   W.grad().to(Device::cpu).clone()};  // off the arena before reset
    EXPECT_EQ(W.grad().device(), wv.device());
    drt::tape().reset();
    return out;
  };
  const auto cpu = grads(x, w), gpu = grads(cuda::to_device(x), cuda::to_device(w));
  for (int i = 0; i < 3; ++i) {
    const std::vector<float> a = cpu[i].to_vector(), b = gpu[i].to_vector();
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], 1e-5 + 1e-5 * std::abs(a[j])) << i << ":" << j;
  }
}

}  // namespace
