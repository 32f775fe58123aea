// test_cuda_autodiff — the core indexing/reduction ops, cast and random fills, every
// differentiable op of drt/autodiff (forward AND backward through the tape), AdamW and gradient
// clipping on device tensors, each compared with the same computation on the CPU.
//
// Labelled `gpu` (see tests/cuda/CMakeLists.txt): without a GPU every test FAILS in SetUp.
//
// How a differentiable op is checked: the same graph is built from the same inputs as
// `variable`s on the CPU and on the GPU, backward runs from the same random seed gradient, and
// the output and the gradient of every input are compared. Every test runs in fp32 and fp64.
//
// Tolerances, |gpu − cpu| ≤ atol + rtol·|cpu| (inputs uniform in [-1, 1] unless stated):
//   copies, views, concat, gathers, index_select, embedding forward,
//   cast, random fills, max/argmax and its backward, select                exact (bitwise)
//   elementwise ops and their backward (fp32): 4e-6 + 4e-6·|cpu| — CUDA's expf/logf/tanhf/...
//       are within 2 ulp (glibc's within 1), and a backward expression chains up to ~5 such
//       operations: ≤ ~10 ulp ≈ 1.2e-6 relative, with a margin of 3
//   anything summed over n terms in a different order (add_sum_to, sums, sum_all, matmul,
//       scatter_add's atomics with repeated indices) (fp32): 2e-7·n + 4e-6·|cpu| — every term
//       is in [-1, 1] (inputs are chosen so) and each addition rounds by ≤ 2^-24·|partial sum|;
//       the CPU's sequential partial sums are random walks of size ~0.6·√k, so its rounding
//       errors (random signs) add up to ~2^-24·√(Σk·0.33) ≈ 2.4e-8·n, and the GPU's tree order
//       is more accurate still: 2e-7·n is ~8 standard deviations
//   AdamW (fp32): the kernel rounds every operation as the CPU loop does (no FMA): 0 expected;
//       1e-7 + 4e-7·|cpu| allowed (2-3 ulp, in case a host compiler contracts)
//   fp64 everything: 1e-12·|cpu| relative, plus 1e-14 (elementwise) or 1e-15·n (sums) absolute
//   grad_norm (double accumulation for both types): 1e-12 relative (the two orders of ~10^5
//       positive terms differ by ~2^-53·√n ≈ 1e-14 relative); clipped gradients: the scale may
//       differ by that much, so 2 ulp in fp32 and 1e-13 relative in fp64
#include "gpu_test.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <drt/nn/cross_entropy.hpp>
#include <drt/nn/rms_norm.hpp>
#include <drt/nn/swiglu.hpp>
#include <drt/optim.hpp>

namespace {

using namespace drt;  // operators and functions on expression nodes and Vars
using namespace drt::gpu_test;

// ---- tolerances ----------------------------------------------------------------------------------

struct Tol {
  double atol, rtol;
};
template <class T>
constexpr bool kFloat = std::is_same_v<T, float>;

template <class T>
Tol exact() {
  return {0.0, 0.0};
}
template <class T>
Tol elementwise() {
  return kFloat<T> ? Tol{4e-6, 4e-6} : Tol{1e-14, 1e-12};
}
// Sums of n terms in another order.
template <class T>
Tol summed(double n) {
  return kFloat<T> ? Tol{2e-7 * n + 4e-6, 4e-6} : Tol{1e-15 * n + 1e-14, 1e-12};
}

template <class T>
void expect_near(const Tensor<T>& cpu, const Tensor<T>& gpu, Tol tol, const std::string& what) {
  expect_close(cpu, gpu, tol.atol, tol.rtol, what.c_str());
}

// ---- the graph comparison -----------------------------------------------------------------------

template <class T>
using Graph = std::function<Var<T>(const std::vector<Var<T>>&, Device)>;

// Runs `f` on variables holding `inputs` on `device`; backward from a random seed gradient. The
// output value first, then each input's gradient (zeros when none reached it), all cloned out of
// the step's arena before the tape is reset.
template <class T>
std::vector<Tensor<T>> run_graph(Device device, const std::vector<Tensor<T>>& inputs, const Graph<T>& f) {
  tape().reset();
  std::vector<Var<T>> vars;
  for (const Tensor<T>& x : inputs) vars.push_back(variable(x.to(device)));
  Var<T> y = f(vars, device);
  EXPECT_EQ(y.device(), device);
  std::vector<Tensor<T>> out{y.value().clone()};
  backward(y, random_uniform<T>(y.shape(), 991, T(-1), T(1), device));
  for (const Var<T>& v : vars)
    out.push_back(v.has_grad() ? v.grad().clone() : Tensor<T>::zeros(v.shape(), nullptr, device));
  tape().reset();
  return out;
}

template <class T>
void compare_graph(const std::string& what, const std::vector<Tensor<T>>& inputs, const Graph<T>& f, Tol value_tol,
                   Tol grad_tol) {
  SCOPED_TRACE(what);
  const std::vector<Tensor<T>> cpu = run_graph(Device::cpu, inputs, f), gpu = run_graph(Device::cuda, inputs, f);
  ASSERT_EQ(cpu.size(), gpu.size());
  expect_near(cpu[0], gpu[0], value_tol, what + ": value");
  for (std::size_t i = 1; i < cpu.size(); ++i)
    expect_near(cpu[i], gpu[i], grad_tol, what + ": gradient of input " + std::to_string(i - 1));
}
template <class T>
void compare_graph(const std::string& what, const std::vector<Tensor<T>>& inputs, const Graph<T>& f, Tol tol) {
  compare_graph(what, inputs, f, tol, tol);
}

template <class T>
class GpuOps : public Gpu {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GpuOps, Types);

IndexTensor ids(const Shape& shape, const std::vector<std::int32_t>& values) { return IndexTensor::from(shape, values); }

// The message of the drt::Error that f throws ("" and a test failure if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a drt::Error";
  return "";
}

// ---- core: random fills and cast --------------------------------------------------------------------

TYPED_TEST(GpuOps, RandomFillsOnTheDeviceEqualTheHostOnes) {
  using T = TypeParam;
  const Shape s{7, 33, 5};
  const Tensor<T> hu = random_uniform<T>(s, 11, T(-2), T(3)), du = random_uniform<T>(s, 11, T(-2), T(3), Device::cuda);
  EXPECT_EQ(du.device(), Device::cuda);
  expect_near(hu, du, exact<T>(), "random_uniform");
  expect_near(random_normal<T>(s, 12, T(1), T(2)), random_normal<T>(s, 12, T(1), T(2), Device::cuda), exact<T>(),
              "random_normal");
  // A fill into a strided device view draws the values in the view's logical order, as on the host.
  Tensor<T> h = Tensor<T>::zeros({5, 33, 7});
  Tensor<T> d = Tensor<T>::zeros({5, 33, 7}, nullptr, Device::cuda);
  fill_normal(h.permute({2, 1, 0}).slice(1, 1, 30, 3), 13, T(0), T(1));
  fill_normal(d.permute({2, 1, 0}).slice(1, 1, 30, 3), 13, T(0), T(1));
  expect_near(h, d, exact<T>(), "fill_normal into a strided view");
}

TYPED_TEST(GpuOps, CastMatchesTheHost) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({9, 70}, 20, T(-300), T(300));
  const Tensor<T> dx = x.to(Device::cuda);
  expect_near(x.template cast<double>(), dx.template cast<double>(), exact<double>(), "to double");
  expect_near(x.template cast<float>(), dx.template cast<float>(), exact<float>(), "to float");
  // A transposed view, to an integer type (truncation toward zero) and back.
  const IndexTensor hi = x.transpose(0, 1).template cast<std::int32_t>();
  const IndexTensor di = dx.transpose(0, 1).template cast<std::int32_t>();
  EXPECT_EQ(di.device(), Device::cuda);
  EXPECT_EQ(hi.shape(), di.shape());
  EXPECT_EQ(hi.to_vector(), di.to_vector());
  expect_near(hi.template cast<T>(), di.template cast<T>(), exact<T>(), "int32 to T");
  EXPECT_EQ(Tensor<T>::zeros({0, 3}, nullptr, Device::cuda).template cast<float>().shape(), (Shape{0, 3}));
}

// ---- core: indexing --------------------------------------------------------------------------------

TYPED_TEST(GpuOps, RawIndexingMatchesTheHost) {
  using T = TypeParam;
  const Tensor<T> a = uniform<T>({2, 3, 4}, 30), b = uniform<T>({2, 3, 70}, 31), c = uniform<T>({3, 2, 1}, 32);
  const Tensor<T> da = a.to(Device::cuda), db = b.to(Device::cuda), dc = c.to(Device::cuda);
  // concat along the last axis, one part a permuted view.
  expect_near(concat({a, b, c.permute({1, 0, 2})}, 2), concat({da, db, dc.permute({1, 0, 2})}, 2), exact<T>(), "concat");
  expect_near(concat({a, a}, 0), concat({da, da}, 0), exact<T>(), "concat along 0");

  // index_select: repeated indices, a strided input, a strided index, an empty index.
  const Tensor<T> x = uniform<T>({6, 37, 5}, 33);
  const Tensor<T> dx = x.to(Device::cuda);
  const IndexTensor pick = ids({7}, {36, 0, 5, 5, 17, 36, 1});
  expect_near(index_select(x, 1, pick), index_select(dx, 1, pick), exact<T>(), "index_select");
  expect_near(index_select(x.transpose(0, 2), 1, pick.slice(0, 0, 7, 2)),
              index_select(dx.transpose(0, 2), 1, pick.slice(0, 0, 7, 2)), exact<T>(), "index_select strided");
  expect_near(index_select(x, 0, IndexTensor::zeros({0})), index_select(dx, 0, IndexTensor::zeros({0})), exact<T>(),
              "index_select empty");
  // The index may already be on the device.
  expect_near(index_select(x, -1, ids({3}, {4, 0, 4})), index_select(dx, -1, ids({3}, {4, 0, 4}).to(Device::cuda)),
              exact<T>(), "index_select with a device index");

  // gather: the index narrower than x outside the axis, and along the last axis of a view.
  const IndexTensor g0 = ids({2, 3, 2}, {5, 0, 1, 1, 2, 3, 4, 5, 0, 0, 1, 2});
  expect_near(gather(x, 0, g0), gather(dx, 0, g0), exact<T>(), "gather along 0");
  const IndexTensor g2 = random_uniform<double>({6, 37, 9}, 34, 0.0, 4.999).template cast<std::int32_t>();
  expect_near(gather(x, 2, g2), gather(dx, 2, g2), exact<T>(), "gather along 2");
  expect_near(gather(x.permute({2, 1, 0}), 0, g2.permute({2, 1, 0})),
              gather(dx.permute({2, 1, 0}), 0, g2.permute({2, 1, 0}).to(Device::cuda)), exact<T>(), "gather of views");

  // scatter_add: repeated targets (atomics), a source larger than the index and strided.
  Tensor<T> dst = uniform<T>({4, 50}, 35);
  Tensor<T> ddst = dst.to(Device::cuda);
  const IndexTensor si = random_uniform<double>({3, 50}, 36, 0.0, 3.999).template cast<std::int32_t>();
  const Tensor<T> src = uniform<T>({50, 5}, 37);
  scatter_add(dst, 0, si, src.transpose(0, 1));
  scatter_add(ddst, 0, si, src.to(Device::cuda).transpose(0, 1));
  expect_near(dst, ddst, summed<T>(4), "scatter_add");
}

TYPED_TEST(GpuOps, BadIndicesThrowTheHostMessageAndWriteNothing) {
  using T = TypeParam;
  const Tensor<T> x = Tensor<T>::zeros({3, 4}, nullptr, Device::cuda);
  // A host index is checked on the host, a device index by a kernel: the same message, naming
  // the first bad value in row-major order.
  for (bool device_index : {false, true}) {
    SCOPED_TRACE(device_index ? "device index" : "host index");
    auto on = [&](const IndexTensor& i) { return device_index ? i.to(Device::cuda) : i; };
    const std::string m1 = error_of([&] { index_select(x, 1, on(ids({3}, {1, 11, 12}))); });
    EXPECT_NE(m1.find("index_select: index 11 is out of range for axis 1 of extent 4"), std::string::npos) << m1;
    const std::string m2 = error_of([&] { gather(x, 0, on(ids({1, 3}, {0, -5, 7}))); });
    EXPECT_NE(m2.find("gather: index -5 is out of range for axis 0 of extent 3"), std::string::npos) << m2;
    Tensor<T> dst = Tensor<T>::zeros({3, 4}, nullptr, Device::cuda);
    const std::string m3 =
        error_of([&] { scatter_add(dst, 0, on(ids({1, 2}, {1, 3})), Tensor<T>::full({1, 2}, T(1), nullptr, Device::cuda)); });
    EXPECT_NE(m3.find("scatter_add: index 3 is out of range"), std::string::npos) << m3;
    for (T v : dst.to_vector()) EXPECT_EQ(v, T(0));  // nothing written before the error
    Parameter<T> w(Tensor<T>::zeros({7, 2}, nullptr, Device::cuda));
    const std::string m4 = error_of([&] { embedding(w, on(ids({3}, {0, 9, 1}))); });
    EXPECT_NE(m4.find("embedding: id 9 is outside the vocabulary [0, 7)"), std::string::npos) << m4;
    tape().reset();
  }
}

// ---- core: sum_all and add_sum_to ------------------------------------------------------------------

TYPED_TEST(GpuOps, SumAllAndAddSumToMatchTheHost) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({5, 67, 301}, 40);
  const Tensor<T> dx = x.to(Device::cuda);
  const double n = double(x.numel());
  // sum_all: a large contiguous tensor, a strided view, an empty one.
  auto scalar = [](T v, Device d) { return Tensor<T>::full({}, v, nullptr, d); };
  expect_near(scalar(sum_all(x), Device::cpu), scalar(sum_all(dx), Device::cuda), summed<T>(n), "sum_all");
  expect_near(sum_all_tensor(x.transpose(0, 2).slice(0, 3, 250, 2)), sum_all_tensor(dx.transpose(0, 2).slice(0, 3, 250, 2)),
              summed<T>(n / 2), "sum_all of a view");
  EXPECT_EQ(sum_all(Tensor<T>::zeros({0, 4}, nullptr, Device::cuda)), T(0));
  EXPECT_EQ(sum_all_tensor(dx).device(), Device::cuda);

  // add_sum_to into every kind of broadcast destination, from a contiguous and a strided x.
  const std::vector<Shape> targets{{301}, {5, 1, 301}, {5, 67, 1}, {1, 67, 1}, {67, 301}, {1, 1, 1}, {}, {5, 1, 1}};
  for (const Tensor<T>& src : {x, x.transpose(0, 1).contiguous().transpose(0, 1)}) {
    // The same layout on the device (to() makes a row-major copy).
    const Tensor<T> dsrc =
        src.is_contiguous() ? src.to(Device::cuda) : src.to(Device::cuda).transpose(0, 1).contiguous().transpose(0, 1);
    for (const Shape& s : targets) {
      SCOPED_TRACE("into " + s.str() + (src.is_contiguous() ? "" : " from a strided x"));
      Tensor<T> dst = uniform<T>(s, 41);
      Tensor<T> ddst = dst.to(Device::cuda);
      add_sum_to(dst, src);
      add_sum_to(ddst, dsrc);
      expect_near(dst, ddst, summed<T>(n / double(std::max<Index>(s.numel(), 1))), "add_sum_to");
    }
  }
  // A strided destination (a column slice of a wider tensor); only the slice changes.
  Tensor<T> wide = uniform<T>({67, 310}, 42);
  Tensor<T> dwide = wide.to(Device::cuda);
  add_sum_to(wide.slice(1, 4, 305), x);
  add_sum_to(dwide.slice(1, 4, 305), dx);
  expect_near(wide, dwide, summed<T>(5), "add_sum_to into a strided destination");
}

// ---- autodiff: elementwise ------------------------------------------------------------------------

TYPED_TEST(GpuOps, ElementwiseVarOpsWithBroadcastingMatchTheHost) {
  using T = TypeParam;
  // Divisors in [1, 2], so that every term of every gradient is in [-1, 1].
  const Tensor<T> a = uniform<T>({4, 33, 65}, 50), b = uniform<T>({65}, 51, T(1), T(2)),
                  c = uniform<T>({4, 1, 65}, 52, T(1), T(2)), d = uniform<T>({33, 1}, 53);
  // Gradients of broadcast operands are sums over the repeated axes: up to 4·65 terms (d's).
  const Tol tol = summed<T>(4 * 65);
  compare_graph<T>("a + b", {a, b}, [](const auto& v, Device) { return v[0] + v[1]; }, elementwise<T>(), tol);
  compare_graph<T>("a - c", {a, c}, [](const auto& v, Device) { return v[0] - v[1]; }, elementwise<T>(), tol);
  compare_graph<T>("d * a", {d, a}, [](const auto& v, Device) { return v[0] * v[1]; }, elementwise<T>(), tol);
  compare_graph<T>("a / c / b", {a, c, b}, [](const auto& v, Device) { return v[0] / v[1] / v[2]; }, elementwise<T>(), tol);
  compare_graph<T>("select(a > 0, a, d)", {a, d},
                   [](const auto& v, Device) {
                     const Tensor<T> cond = eval(gt(v[0].value(), T(0)), step_arena());
                     return select(cond, v[0], v[1]);
                   },
                   exact<T>(), tol);
  // A permuted (strided) operand against a contiguous one.
  const Tensor<T> p = uniform<T>({65, 33, 4}, 54);
  compare_graph<T>("a * permuted", {a, p},
                   [](const auto& v, Device) { return v[0] * permute(v[1], {2, 1, 0}); }, elementwise<T>(), elementwise<T>());
}

TYPED_TEST(GpuOps, ElementwiseVarOpsWithPlainNumbersMatchTheHost) {
  using T = TypeParam;
  const Tensor<T> a = uniform<T>({3, 129}, 55, T(0.25), T(2));
  const std::vector<std::pair<const char*, Graph<T>>> ops{
      {"x * 2", [](const auto& v, Device) { return v[0] * 2.0f; }},
      {"2 * x", [](const auto& v, Device) { return 2.0 * v[0]; }},
      {"x + 1", [](const auto& v, Device) { return v[0] + 1; }},
      {"1.5 + x", [](const auto& v, Device) { return 1.5f + v[0]; }},
      {"x - 0.5", [](const auto& v, Device) { return v[0] - 0.5; }},
      {"2 - x", [](const auto& v, Device) { return 2.0f - v[0]; }},
      {"x / 3", [](const auto& v, Device) { return v[0] / 3; }},
      {"1 / x", [](const auto& v, Device) { return 1.0f / v[0]; }},
      {"(x * 3 - 1) / 7 + 2", [](const auto& v, Device) { return (v[0] * 3 - 1) / 7 + 2; }},
  };
  for (const auto& [name, f] : ops) {
    compare_graph<T>(name, {a}, f, elementwise<T>());
    // The result lives where the Var does: no host scalar is involved.
    tape().reset();
    EXPECT_EQ(f({variable(a.to(Device::cuda))}, Device::cuda).device(), Device::cuda) << name;
    tape().reset();
  }
}

TYPED_TEST(GpuOps, UnaryVarOpsMatchTheHost) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({5, 77, 3}, 56, T(-2), T(2)), pos = uniform<T>({5, 77, 3}, 57, T(0.2), T(3));
  const std::vector<std::pair<const char*, Graph<T>>> on_any{
      {"-x", [](const auto& v, Device) { return -v[0]; }},
      {"exp", [](const auto& v, Device) { return exp(v[0]); }},
      {"square", [](const auto& v, Device) { return square(v[0]); }},
      {"abs", [](const auto& v, Device) { return abs(v[0]); }},
      {"tanh", [](const auto& v, Device) { return tanh(v[0]); }},
      {"sigmoid", [](const auto& v, Device) { return sigmoid(v[0]); }},
      {"relu", [](const auto& v, Device) { return relu(v[0]); }},
      {"sin", [](const auto& v, Device) { return sin(v[0]); }},
      {"cos", [](const auto& v, Device) { return cos(v[0]); }},
      {"silu", [](const auto& v, Device) { return silu(v[0]); }},
      {"tanh of a transposed view", [](const auto& v, Device) { return tanh(transpose(v[0], 0, 2)); }},
  };
  for (const auto& [name, f] : on_any) compare_graph<T>(name, {x}, f, elementwise<T>());
  const std::vector<std::pair<const char*, Graph<T>>> on_positive{
      {"log", [](const auto& v, Device) { return log(v[0]); }},
      {"sqrt", [](const auto& v, Device) { return sqrt(v[0]); }},
      {"rsqrt", [](const auto& v, Device) { return rsqrt(v[0]); }},
      {"pow 1.7", [](const auto& v, Device) { return pow(v[0], T(1.7)); }},
  };
  for (const auto& [name, f] : on_positive) compare_graph<T>(name, {pos}, f, elementwise<T>());
}

// ---- autodiff: reductions -------------------------------------------------------------------------

TYPED_TEST(GpuOps, ReductionsMatchTheHost) {
  using T = TypeParam;
  Tensor<T> x = uniform<T>({6, 37, 130}, 60);
  x(1, 2, 7) = x(1, 2, 9) = T(5);  // a tie along the last axis: the first position gets the gradient
  x(4, 3, 11) = x(4, 30, 11) = T(5);  // and one along axis 1
  for (int axis : {0, 1, 2, -1}) {
    for (bool keep : {false, true}) {
      const std::string at = " axis " + std::to_string(axis) + (keep ? " keepdim" : "");
      const double n = double(x.shape().dim(axis));
      compare_graph<T>("sum" + at, {x}, [=](const auto& v, Device) { return sum(v[0], axis, keep); }, summed<T>(n),
                       exact<T>());
      compare_graph<T>("mean" + at, {x}, [=](const auto& v, Device) { return mean(v[0], axis, keep); }, summed<T>(n),
                       exact<T>());
      compare_graph<T>("max" + at, {x}, [=](const auto& v, Device) { return max(v[0], axis, keep); }, exact<T>(),
                       exact<T>());
    }
  }
  compare_graph<T>("max of a view", {x}, [](const auto& v, Device) { return max(transpose(v[0], 1, 2), 1); }, exact<T>(),
                   exact<T>());
  const double n = double(x.numel());
  compare_graph<T>("sum_all", {x}, [](const auto& v, Device) { return sum_all(v[0]); }, summed<T>(n), exact<T>());
  compare_graph<T>("mean_all of a view", {x}, [](const auto& v, Device) { return mean_all(slice(v[0], 2, 1, 120, 3)); },
                   summed<T>(n / 3), elementwise<T>());
  // A loss the way a model makes one: a chain ending in mean_all, backward seeded with 1.
  tape().reset();
  auto loss_grad = [&](Device d) {
    Var<T> xv = variable(x.to(d));
    Var<T> loss = mean_all(square(tanh(xv) - T(0.5)));
    backward(loss);
    std::vector<Tensor<T>> r{loss.value().clone(), xv.grad().clone()};
    tape().reset();
    return r;
  };
  const auto cpu = loss_grad(Device::cpu), gpu = loss_grad(Device::cuda);
  expect_near(cpu[0], gpu[0], summed<T>(n), "mean_all loss");
  expect_near(cpu[1], gpu[1], elementwise<T>(), "mean_all loss gradient");
}

// ---- autodiff: views, contiguous, concat ------------------------------------------------------------

TYPED_TEST(GpuOps, ViewsAndConcatMatchTheHost) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({4, 6, 35}, 70), y = uniform<T>({4, 6, 3}, 71), z = uniform<T>({35}, 72);
  const Tol sum3 = summed<T>(4 * 6 * 3);
  compare_graph<T>("reshape", {x}, [](const auto& v, Device) { return reshape(v[0], {24, -1}); }, exact<T>());
  compare_graph<T>("reshape of a transposed view (copied)", {x},
                   [](const auto& v, Device) { return reshape(transpose(v[0], 0, 2), {-1}); }, exact<T>());
  compare_graph<T>("permute", {x}, [](const auto& v, Device) { return permute(v[0], {1, 2, 0}); }, exact<T>());
  compare_graph<T>("slice with a step", {x}, [](const auto& v, Device) { return slice(v[0], 2, 1, 34, 4); }, exact<T>());
  compare_graph<T>("empty slice", {x}, [](const auto& v, Device) { return slice(v[0], 1, 3, 3); }, exact<T>());
  compare_graph<T>("unsqueeze, squeeze", {x},
                   [](const auto& v, Device) { return squeeze(unsqueeze(v[0], 1), 1) * unsqueeze(v[0], 0); },
                   elementwise<T>());
  compare_graph<T>("broadcast_to", {z},
                   [](const auto& v, Device) { return broadcast_to(unsqueeze(v[0], 0), {3, 4, 35}); }, exact<T>(), sum3);
  compare_graph<T>("contiguous", {x}, [](const auto& v, Device) { return contiguous(transpose(v[0], 0, 1)); },
                   exact<T>());
  compare_graph<T>("concat", {x, y},
                   [](const auto& v, Device) { return concat({v[0], v[1], transpose(transpose(v[1], 0, 1), 0, 1)}, 2); },
                   exact<T>(), summed<T>(2));
  compare_graph<T>("concat along 0 of views", {x, y},
                   [](const auto& v, Device) { return concat({slice(v[0], 2, 0, 3), v[1]}, 0); }, exact<T>());
}

// ---- autodiff: indexing and embedding ----------------------------------------------------------------

TYPED_TEST(GpuOps, IndexingVarOpsMatchTheHost) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({5, 40, 3}, 80);
  const IndexTensor pick = ids({9}, {39, 0, 7, 7, 7, 20, 39, 1, 2});
  // Repeated indices: a gradient row gets up to 3 additions (atomics on the device).
  const Tol rep = summed<T>(3);
  compare_graph<T>("index_select along 1", {x}, [=](const auto& v, Device) { return index_select(v[0], 1, pick); },
                   exact<T>(), rep);
  compare_graph<T>("index_select of a view, device index", {x},
                   [=](const auto& v, Device d) { return index_select(permute(v[0], {2, 0, 1}), 2, pick.to(d)); },
                   exact<T>(), rep);
  const IndexTensor gi = random_uniform<double>({5, 60, 2}, 81, 0.0, 39.999).template cast<std::int32_t>();
  compare_graph<T>("gather along 1", {x}, [=](const auto& v, Device) { return gather(v[0], 1, gi); }, exact<T>(),
                   summed<T>(10));
  const IndexTensor si = random_uniform<double>({2, 40, 3}, 82, 0.0, 3.999).template cast<std::int32_t>();
  // A source larger than the index (its uncovered part gets no gradient).
  const Tensor<T> base = uniform<T>({4, 40, 3}, 83), src = uniform<T>({3, 45, 3}, 84);
  compare_graph<T>("scatter_add", {base, src},
                   [=](const auto& v, Device) { return scatter_add(v[0], 0, si, v[1]); }, summed<T>(3), exact<T>());
  const Tensor<T> src_t = uniform<T>({45, 3, 3}, 85);  // permuted in the graph: a strided source
  compare_graph<T>("scatter_add from a view, device index", {base, src_t},
                   [=](const auto& v, Device d) { return scatter_add(v[0], 0, si.to(d), permute(v[1], {1, 0, 2})); },
                   summed<T>(3), exact<T>());
}

TYPED_TEST(GpuOps, EmbeddingMatchesTheHostAndSkipsThePaddingRow) {
  using T = TypeParam;
  const Index V = 50, D = 67;
  const Tensor<T> w = uniform<T>({V, D}, 90);
  const IndexTensor tokens = random_uniform<double>({4, 33}, 91, 0.0, V - 0.001).template cast<std::int32_t>();
  // Padding row 3, repeated ids (132 positions over 50 rows: ~3 additions per row).
  const Tol rep = summed<T>(12);
  compare_graph<T>("embedding", {w}, [=](const auto& v, Device) { return embedding(v[0], tokens); }, exact<T>(), rep);
  compare_graph<T>("embedding with padding", {w}, [=](const auto& v, Device) { return embedding(v[0], tokens, 3); },
                   exact<T>(), rep);
  compare_graph<T>("embedding, strided ids on the device", {w},
                   [=](const auto& v, Device d) { return embedding(v[0], tokens.to(d).transpose(0, 1), 3); }, exact<T>(),
                   rep);
  compare_graph<T>("embedding of a transposed weight", {w.transpose(0, 1).contiguous()},
                   [=](const auto& v, Device) { return embedding(transpose(v[0], 0, 1), tokens); }, exact<T>(), rep);
  compare_graph<T>("embedding of one id", {w}, [=](const auto& v, Device) { return embedding(v[0], ids({}, {7})); },
                   exact<T>());
  compare_graph<T>("embedding of no ids", {w},
                   [=](const auto& v, Device) { return embedding(v[0], IndexTensor::zeros({2, 0})); }, exact<T>());

  // The padding row is read but gets exactly nothing.
  tape().reset();
  Parameter<T> weight(w.to(Device::cuda));
  weight.zero_grad();
  Var<T> out = embedding(weight, ids({2, 3}, {3, 4, 3, 0, 3, 4}), 3);
  EXPECT_EQ(out.value().select(0, 0).select(0, 0).to_vector(), w.select(0, 3).to_vector());
  backward(out, Tensor<T>::full({2, 3, D}, T(1), nullptr, Device::cuda));
  for (T g : weight.grad().select(0, 3).to_vector()) ASSERT_EQ(g, T(0));
  for (T g : weight.grad().select(0, 4).to_vector()) ASSERT_EQ(g, T(2));
  tape().reset();
}

// ---- autodiff: matmul ---------------------------------------------------------------------------

TYPED_TEST(GpuOps, MatmulBackwardMatchesTheHost) {
  using T = TypeParam;
  ASSERT_EQ(matmul_precision(), Precision::fp32);
  const Index M = 19, K = 45, N = 33;
  const Tensor<T> A = uniform<T>({M, K}, 100), B = uniform<T>({K, N}, 101);
  const Tensor<T> Ab = uniform<T>({3, 2, M, K}, 102), Bb = uniform<T>({3, 2, K, N}, 103);
  // Each entry of a product or of its gradient is a sum of K, N or M (·batch) terms.
  const Tol tol = summed<T>(double(std::max({K, N, M * 6})));
  compare_graph<T>("matmul 2-D", {A, B}, [](const auto& v, Device) { return matmul(v[0], v[1]); }, tol);
  compare_graph<T>("matmul batched", {Ab, Bb}, [](const auto& v, Device) { return matmul(v[0], v[1]); }, tol);
  compare_graph<T>("matmul with a shared B", {Ab, B}, [](const auto& v, Device) { return matmul(v[0], v[1]); }, tol);
  compare_graph<T>("matmul of transposed views", {A, B},
                   [](const auto& v, Device) { return matmul(transpose(v[1], 0, 1), transpose(v[0], 0, 1)); }, tol);
  const Tensor<T> x = uniform<T>({2, 7, K}, 104), W = uniform<T>({N, K}, 105);
  compare_graph<T>("linear", {x, W}, [](const auto& v, Device) { return linear(v[0], v[1]); }, tol);
}

// With bf16 GEMMs, linear's backward computes dW from the forward's bf16 copy of x (a tape value
// does not change before backward) instead of rounding x again. Proven by breaking that promise:
// x's storage is overwritten between forward and backward, and dW is still gᵀ·x of the old x,
// as the CPU computes it with the switch on (rounded operands, fp32 sums: tolerance as in
// test_cuda_core's bf16 products, 2e-6 per summed term).
TEST_F(Gpu, LinearBackwardReusesTheForwardRoundingOfItsInput) {
  const Index R = 48, I = 64, O = 32;
  const Tensor<float> x_old = uniform<float>({R, I}, 71), x_new = uniform<float>({R, I}, 72);
  const Tensor<float> W0 = uniform<float>({O, I}, 73), g = uniform<float>({R, O}, 74);
  MatmulPrecisionScope bf16(Precision::bf16);
  tape().reset();
  const Var<float> x = variable(cuda::to_device(x_old));
  Parameter<float> W(cuda::to_device(W0));
  const Var<float> y = linear(x, W);
  x.value().copy_from(cuda::to_device(x_new));
  backward(y, cuda::to_device(g));
  expect_close(drt::matmul(g.transpose(0, 1), x_old), W.grad(), 2e-6 * R, 0, "dW from the forward's copy of x");
  tape().reset();
}

// With bf16 GEMMs, the SwiGLU gate's kernel also writes its output's bf16 copy for the down
// projection. The output must be the fused expression's, bit for bit, and the copy must be what
// the rounding pass it replaces (bf16_copy) makes of that output, bit for bit. 3 × 37 × 29
// elements: not a multiple of 4, so the kernel's one-at-a-time tail runs too.
TEST_F(Gpu, SwigluWritesTheBf16CopyOfItsOutput) {
  const Tensor<float> a = cuda::to_device(uniform<float>({3, 37, 29}, 81, -4.0f, 4.0f));
  const Tensor<float> b = cuda::to_device(uniform<float>({3, 37, 29}, 82));
  MatmulPrecisionScope bf16(Precision::bf16);
  tape().reset();
  std::shared_ptr<void> copy;
  const Tensor<float> out = swiglu(constant(a), constant(b), &copy).value();
  ASSERT_TRUE(copy) << "no copy was written";
  EXPECT_EQ(out.to_vector(), eval(silu(a) * b).to_vector());
  expect_bf16_copy_of(out, copy, "swiglu's output");
  // Without the switch, no copy: the plain expression.
  MatmulPrecisionScope fp32(Precision::fp32);
  std::shared_ptr<void> none;
  swiglu(constant(a), constant(b), &none);
  EXPECT_FALSE(none);
  tape().reset();
}

// ---- a small model step end to end -----------------------------------------------------------------

TYPED_TEST(GpuOps, AModelLikeGraphMatchesTheHost) {
  using T = TypeParam;
  // Embedding → linear → silu ⊙ (a broadcast gate) → max-pooling and mean → a scalar loss.
  const Tensor<T> emb = uniform<T>({30, 16}, 110), W = uniform<T>({24, 16}, 111), gate = uniform<T>({24}, 112);
  const IndexTensor tokens = random_uniform<double>({3, 11}, 113, 0.0, 29.999).template cast<std::int32_t>();
  compare_graph<T>("model", {emb, W, gate},
                   [=](const auto& v, Device) {
                     Var<T> h = linear(embedding(v[0], tokens, 0), v[1]);  // (3, 11, 24)
                     Var<T> y = silu(h) * v[2] + h * 0.5f;
                     return mean_all(max(y, 1)) + sum_all(y) / 100 - mean(sum(y, -1), 0);
                   },
                   summed<T>(3 * 11 * 24), summed<T>(3 * 11 * 24));
}

// ---- optim: AdamW, grad_norm, clip_grad_norm ----------------------------------------------------------

// Runs `steps` AdamW steps on three parameters (odd sizes, one scalar) whose gradients are set
// to fixed random values each step; returns the values and moments, on the host.
template <class T>
std::vector<Tensor<T>> adamw_run(Device device, int steps, bool move_after_building) {
  std::vector<Shape> shapes{{37, 129}, {1001}, {}};
  std::vector<Parameter<T>> params;
  for (std::size_t i = 0; i < shapes.size(); ++i) params.emplace_back(uniform<T>(shapes[i], 120 + i));
  if (!move_after_building)
    for (auto& p : params) p.move_to(device);
  AdamW<T> opt({&params[0], &params[1], &params[2]}, AdamWConfig{1e-2, 0.9, 0.95, 1e-8, 0.1});
  if (move_after_building)
    for (auto& p : params) p.move_to(device);  // the moments follow at the first step
  for (int s = 0; s < steps; ++s) {
    for (std::size_t i = 0; i < params.size(); ++i) params[i].grad().copy_from(uniform<T>(shapes[i], 200 + 10 * s + i));
    opt.step(1e-2 * (1.0 + s) / steps);
  }
  std::vector<Tensor<T>> out;
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(opt.first_moment(i).device(), device);
    EXPECT_EQ(opt.second_moment(i).device(), device);
    out.push_back(params[i].value().to(Device::cpu).clone());
    out.push_back(opt.first_moment(i).to(Device::cpu).clone());
    out.push_back(opt.second_moment(i).to(Device::cpu).clone());
  }
  return out;
}

TYPED_TEST(GpuOps, AdamWStepsOnTheDeviceMatchTheHost) {
  using T = TypeParam;
  const Tol tol = kFloat<T> ? Tol{1e-7, 4e-7} : Tol{1e-15, 1e-12};
  const std::vector<Tensor<T>> cpu = adamw_run<T>(Device::cpu, 5, false);
  for (bool move_after : {false, true}) {
    SCOPED_TRACE(move_after ? "parameters moved after building the optimiser" : "parameters on the device first");
    const std::vector<Tensor<T>> gpu = adamw_run<T>(Device::cuda, 5, move_after);
    ASSERT_EQ(cpu.size(), gpu.size());
    for (std::size_t i = 0; i < cpu.size(); ++i) {
      // expect_close wants the GPU side on the device.
      expect_near(cpu[i], gpu[i].to(Device::cuda), tol, std::string(i % 3 == 0 ? "value" : i % 3 == 1 ? "m" : "v") +
                                                            " of parameter " + std::to_string(i / 3));
    }
  }
}

TYPED_TEST(GpuOps, AdamWStateCanBeWrittenBackOnTheDevice) {
  using T = TypeParam;
  // What a checkpoint does: read the moments (to_vector copies them back) and write them in place
  // (copy_from copies a host tensor over).
  Parameter<T> p(uniform<T>({5, 7}, 130).to(Device::cuda));
  AdamW<T> opt({&p});
  const Tensor<T> m = uniform<T>({5, 7}, 131);
  opt.first_moment(0).copy_from(m);
  EXPECT_EQ(opt.first_moment(0).to_vector(), m.to_vector());
  EXPECT_EQ(opt.first_moment(0).device(), Device::cuda);
}

TYPED_TEST(GpuOps, GradNormAndClippingMatchTheHost) {
  using T = TypeParam;
  const std::vector<Shape> shapes{{300, 301}, {17}, {}, {4, 0}};
  auto run = [&](std::vector<Device> devices, double max_norm) {
    std::vector<Parameter<T>> params;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      params.emplace_back(uniform<T>(shapes[i], 140 + i));
      params.back().move_to(devices[i]);
      params.back().grad().copy_from(uniform<T>(shapes[i], 150 + i, T(-3), T(3)));
    }
    std::vector<Parameter<T>*> ptrs;
    for (auto& p : params) ptrs.push_back(&p);
    const double norm = max_norm > 0 ? clip_grad_norm(ptrs, max_norm) : grad_norm(ptrs);
    std::vector<Tensor<T>> grads;
    for (auto& p : params) grads.push_back(p.grad().to(Device::cuda).clone());  // on the device to compare
    return std::make_pair(norm, grads);
  };
  const std::vector<Device> host(4, Device::cpu), device(4, Device::cuda),
      mixed{Device::cuda, Device::cpu, Device::cuda, Device::cpu};
  const auto [cpu_norm, cpu_grads] = run(host, 0);
  EXPECT_GT(cpu_norm, 100);
  EXPECT_NEAR(run(device, 0).first, cpu_norm, 1e-12 * cpu_norm);
  EXPECT_NEAR(run(mixed, 0).first, cpu_norm, 1e-12 * cpu_norm);
  // Clipping: the same norm reported, every gradient scaled by the same factor.
  const auto [clipped_norm, clipped] = run(host, 10.0);
  const auto [dclipped_norm, dclipped] = run(device, 10.0);
  EXPECT_NEAR(dclipped_norm, clipped_norm, 1e-12 * clipped_norm);
  const Tol tol = kFloat<T> ? Tol{0, 2.4e-7} : Tol{0, 1e-13};  // the scale may differ in its last bits
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    std::vector<T> h = clipped[i].to_vector();
    expect_near(Tensor<T>::from(shapes[i], h), dclipped[i], tol, "clipped gradient " + std::to_string(i));
  }
  // A non-finite norm leaves the gradients alone.
  Parameter<T> p(Tensor<T>::zeros({3}, nullptr, Device::cuda));
  p.grad().fill(std::numeric_limits<T>::infinity());
  std::vector<Parameter<T>*> one{&p};
  EXPECT_TRUE(std::isinf(clip_grad_norm(one, 1.0)));
  for (T g : p.grad().to_vector()) EXPECT_TRUE(std::isinf(g));
}

// The bf16 copies that ops write for the GEMMs after them, end to end with bf16 GEMMs: a pre-norm
// (rms_norm_then), gate and up projections, SwiGLU (whose backward writes its gradients' copies),
// a head and cross-entropy (whose backward writes the logits' gradient's copy, handed through a
// reshape). The gate also feeds a side term recorded BEFORE SwiGLU, so its backward runs after
// SwiGLU's and adds to the gate's gradient: SwiGLU's copy is then stale and must be dropped, or
// the gate projection's backward would miss the side term's gradient, which dominates here.
// Every gradient must follow the CPU's bf16 emulation (the same rounded operands; fp32 sums in
// another order, and an activation may round to the neighbouring bf16 value: 1% of each
// gradient's largest element), with KeepGradients::all and ::leaves_only alike.
TEST_F(Gpu, GradientCopiesForBf16GemmsAreUsedOnlyWhileTheyHold) {
  const Index R = 24, D = 32, F = 48, V = 40;
  const std::vector<Tensor<float>> inputs = {uniform<float>({R, D}, 91, -2.0f, 2.0f), uniform<float>({D}, 92),
                                             uniform<float>({F, D}, 93),  uniform<float>({F, D}, 94),
                                             uniform<float>({F, F}, 95),  uniform<float>({V, F}, 96),
                                             uniform<float>({R, F}, 97, -4.0f, 4.0f)};
  IndexTensor targets = IndexTensor::empty({2, R / 2});
  for (Index i = 0; i < R; ++i) targets.data()[i] = i % 7 == 3 ? -100 : static_cast<std::int32_t>(random_bits(98, i) % V);
  auto gradients = [&](Device device, KeepGradients keep) {
    MatmulPrecisionScope bf16(Precision::bf16);
    tape().reset();
    std::vector<Var<float>> v;
    for (const Tensor<float>& t : inputs) v.push_back(variable(t.to(device)));
    const Var<float> loss = rms_norm_then(v[0], v[1], 1e-5f, [&](const Var<float>& x) {
      const auto gate_up = linear_shared_input(x, {&v[2], &v[3]});
      const Var<float> side = sum_all(gate_up[0] * v[6]);  // recorded before swiglu: its backward runs after
      const Var<float> h = linear(swiglu(gate_up[0], gate_up[1]), v[4]);
      const Var<float> logits = reshape(linear(h, v[5]), {2, R / 2, V});
      return cross_entropy(logits, targets) + side * 0.25f;
    });
    backward(loss, keep);
    std::vector<Tensor<float>> grads;
    for (const Var<float>& x : v) grads.push_back(x.grad().to(Device::cpu));
    tape().reset();
    return grads;
  };
  const std::vector<Tensor<float>> cpu = gradients(Device::cpu, KeepGradients::all);
  for (KeepGradients keep : {KeepGradients::all, KeepGradients::leaves_only}) {
    SCOPED_TRACE(keep == KeepGradients::all ? "KeepGradients::all" : "KeepGradients::leaves_only");
    const std::vector<Tensor<float>> gpu = gradients(Device::cuda, keep);
    for (std::size_t i = 0; i < cpu.size(); ++i) {
      double largest = 0;
      for (float g : cpu[i].to_vector()) largest = std::max(largest, double(std::abs(g)));
      ASSERT_GT(largest, 0.0) << "input " << i << " got no gradient";
      expect_close(cpu[i], cuda::to_device(gpu[i]), 1e-2 * largest, 0, ("gradient of input " + std::to_string(i)).c_str());
    }
  }
}

}  // namespace
