// test_cuda_nn — the neural-network ops and the landmark retrieval on device tensors, forward and
// backward through the tape, each compared with the same graph on the CPU (the reference).
//
// Labelled `gpu`; without a GPU every test FAILS in SetUp (see gpu_test.hpp). Every test runs in
// fp32 and fp64. Each graph is built twice from the same inputs (as variables, so every input
// gets a gradient), backward is seeded with the same random gradient, and the output value and
// every input's gradient are compared.
//
// Tolerances (inputs O(1), lanes up to 3,000 elements):
//   exact (bitwise)      dropout (the device draws the CPU's uniforms bit for bit and applies the
//                        same single multiplication), masked_fill, top-k indices / values / their
//                        gradient (gathers and one addition into a zero buffer), retrieval indices,
//                        fp32 Gumbel noise (see below); RMSNorm's value and gradients on two GPU
//                        runs (fixed orders of addition, no atomics)
//   fp32                 |gpu − cpu| ≤ 2e-6 + 2e-5·|cpu|: CUDA's expf/logf are within 2 ulp
//                        (glibc's within 1), the lane sums are trees instead of a loop (a few ulp
//                        each over ≤ 3,000 terms of one sign), and nvcc contracts a·b + c into FMAs
//   fp64                 ≤ 1e-13 + 1e-12·|cpu| (the same reasons; fp64 rounding is 2^29 times smaller)
//   sums over rows       (RMSNorm's dγ: up to 140,001 rows, mixed signs) atol max(above, 4·ε·rows):
//                        the rounding of a sum grows with its count of terms
//   fp64 Gumbel noise    ≤ 1e-15 + 1e-15·|cpu|: the uniforms are identical, but −log(−log u) uses
//                        CUDA's log (≤ 1 ulp) instead of glibc's (< 0.52 ulp): the last bit may
//                        differ. fp32 noise is rounded from that double: compared exactly.
#include "gpu_test.hpp"

#include <drt/model/retrieval.hpp>
#include <drt/nn.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace drt;
using namespace drt::gpu_test;

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double atol = 2e-6, rtol = 2e-5;
};
template <>
struct Tol<double> {
  static constexpr double atol = 1e-13, rtol = 1e-12;
};

template <class T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// A copy that outlives tape().reset(): host values leave the arena; device values get their own block.
template <class U>
Tensor<U> keep(const Tensor<U>& t) {
  return t.clone();
}

template <class T>
struct Run {
  Tensor<T> value;
  std::vector<Tensor<T>> grads;  // one per input; undefined where the input got no gradient
};

// Builds graph(vars) with the inputs copied to `device` (variables, or constants where
// wants_grad[i] is false), runs backward from a fixed random seed gradient, and keeps the value
// and the inputs' gradients.
template <class T, class Graph>
Run<T> run(Device device, const std::vector<Tensor<T>>& inputs, Graph&& graph, const std::vector<bool>& wants_grad) {
  std::vector<Var<T>> vars;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor<T> t = inputs[i].to(device);
    vars.push_back(wants_grad.empty() || wants_grad[i] ? variable(t) : constant(t));
  }
  const Var<T> out = graph(vars);
  Run<T> r{keep(out.value()), {}};
  if (out.requires_grad()) {
    backward(out, uniform<T>(out.shape(), 4242).to(device));
    for (const Var<T>& v : vars) r.grads.push_back(v.has_grad() ? keep(v.grad()) : Tensor<T>());
  }
  tape().reset();
  return r;
}

// The graph on the CPU and on the GPU; the value and every gradient within atol + rtol·|cpu|
// (the gradients within grad_atol, when given, instead of atol).
template <class T, class Graph>
void check_op(const std::string& what, const std::vector<Tensor<T>>& inputs, Graph&& graph, double atol, double rtol,
              const std::vector<bool>& wants_grad = {}, double grad_atol = -1) {
  SCOPED_TRACE(what);
  const Run<T> cpu = run(Device::cpu, inputs, graph, wants_grad);
  const Run<T> gpu = run(Device::cuda, inputs, graph, wants_grad);
  expect_close(cpu.value, gpu.value, atol, rtol, (what + ": value").c_str());
  ASSERT_EQ(cpu.grads.size(), gpu.grads.size()) << what << ": one output needs a gradient, the other not";
  ASSERT_EQ(cpu.grads.size(), inputs.size()) << what << ": the test expects every op to be differentiable";
  for (std::size_t i = 0; i < cpu.grads.size(); ++i) {
    const bool wanted = wants_grad.empty() || wants_grad[i];
    ASSERT_EQ(cpu.grads[i].defined(), wanted) << what << ": input " << i;
    ASSERT_EQ(gpu.grads[i].defined(), wanted) << what << ": input " << i;
    if (wanted)
      expect_close(cpu.grads[i], gpu.grads[i], grad_atol >= 0 ? grad_atol : atol, rtol,
                   (what + ": gradient of input " + std::to_string(i)).c_str());
  }
}

template <class T, class Graph>
void check_op_exact(const std::string& what, const std::vector<Tensor<T>>& inputs, Graph&& graph) {
  check_op<T>(what, inputs, graph, 0.0, 0.0);
}

// Uniform in [lo, hi) with a few entries set to −inf (masked positions).
template <class T>
Tensor<T> with_some_minus_inf(Tensor<T> x, std::uint64_t seed) {
  const Index n = x.numel();
  std::vector<T> v = x.to_vector();
  for (Index i = 0; i < n; ++i)
    if (random_bits(seed, static_cast<std::uint64_t>(i)) % 7 == 0) v[static_cast<std::size_t>(i)] = -kInf<T>;
  return Tensor<T>::from(x.shape(), v);
}

template <class T>
class NnGpu : public Gpu {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(NnGpu, Types);

// ---- softmax, log_softmax --------------------------------------------------------------------------

TYPED_TEST(NnGpu, SoftmaxAndLogSoftmax) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const Tensor<T> x = uniform<T>({3, 37, 45}, 1, T(-3), T(3));
  for (const bool log_space : {false, true}) {
    const std::string name = log_space ? "log_softmax" : "softmax";
    auto op = [log_space](const Var<T>& v, int axis) { return log_space ? log_softmax(v, axis) : softmax(v, axis); };
    check_op<T>(
        name + " last axis", {x}, [&](const auto& v) { return op(v[0], -1); }, atol, rtol);
    check_op<T>(
        name + " middle axis (strided lanes)", {x}, [&](const auto& v) { return op(v[0], 1); }, atol, rtol);
    check_op<T>(
        name + " of a transposed view", {x}, [&](const auto& v) { return op(transpose(v[0], 0, 2), -1); }, atol, rtol);
    // Masked entries, and a lane that is entirely −inf (zeros / −inf, no gradient, never NaN).
    Tensor<T> masked = with_some_minus_inf(uniform<T>({6, 29}, 2), 3);
    masked.select(0, 4).fill(-kInf<T>);
    check_op<T>(
        name + " with −inf entries and a fully masked lane", {masked}, [&](const auto& v) { return op(v[0], -1); },
        atol, rtol);
    // Long lanes: one block per lane (non-multiple of the block size), with masked entries too.
    Tensor<T> long_lanes = with_some_minus_inf(uniform<T>({5, 3001}, 4, T(-3), T(3)), 5);
    long_lanes.select(0, 2).fill(-kInf<T>);
    check_op<T>(
        name + " long lanes", {long_lanes}, [&](const auto& v) { return op(v[0], -1); }, atol, rtol);
    check_op<T>(
        name + " long strided lanes", {uniform<T>({2100, 3}, 6)}, [&](const auto& v) { return op(v[0], 0); }, atol,
        rtol);
    check_op<T>(
        name + " lanes of one element", {uniform<T>({4, 1}, 7)}, [&](const auto& v) { return op(v[0], -1); }, atol,
        rtol);
  }
}

TYPED_TEST(NnGpu, RawSoftmaxStaysOnTheDevice) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({7, 50}, 8);
  const Tensor<T> y = softmax(x.to(Device::cuda), -1);
  EXPECT_EQ(y.device(), Device::cuda);
  expect_close(softmax(x, -1), y, Tol<T>::atol, Tol<T>::rtol, "raw softmax");
  expect_close(log_softmax(x, 0), log_softmax(x.to(Device::cuda), 0), Tol<T>::atol, Tol<T>::rtol, "raw log_softmax");
}

// ---- cross_entropy ---------------------------------------------------------------------------------

TYPED_TEST(NnGpu, CrossEntropy) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  // (4, 9) positions over V = 37, a few ignored targets (−100), one −inf logit that is not a target.
  Tensor<T> logits = uniform<T>({4, 9, 37}, 10, T(-4), T(4));
  logits(1, 2, 5) = -kInf<T>;
  IndexTensor targets = IndexTensor::empty({4, 9});
  for (Index i = 0; i < 36; ++i) targets.data()[i] = static_cast<std::int32_t>(random_bits(11, i) % 37);
  targets(1, 2) = 6;
  targets(0, 3) = targets(2, 8) = targets(3, 0) = -100;
  check_op<T>(
      "cross_entropy", {logits}, [&](const auto& v) { return cross_entropy(v[0], targets); }, atol, rtol);
  // The targets may already live on the device (copied back for the checks).
  const IndexTensor device_targets = targets.to(Device::cuda);
  check_op<T>(
      "cross_entropy with device targets", {logits},
      [&](const auto& v) { return cross_entropy(v[0], v[0].value().on_host() ? targets : device_targets); }, atol,
      rtol);
  // A strided vocabulary axis (a transposed view) and a strided target view; another ignore_index.
  IndexTensor wide = IndexTensor::empty({9, 2});
  for (Index i = 0; i < 18; ++i) wide.data()[i] = static_cast<std::int32_t>(random_bits(12, i) % 37);
  wide(4, 0) = 3;
  check_op<T>(
      "cross_entropy of a transposed view", {uniform<T>({37, 9}, 13)},
      [&](const auto& v) { return cross_entropy(transpose(v[0], 0, 1), wide.select(1, 0), 3); }, atol, rtol);
  // A long vocabulary: one block per position.
  IndexTensor long_targets = IndexTensor::empty({5});
  for (Index i = 0; i < 5; ++i) long_targets.data()[i] = static_cast<std::int32_t>(random_bits(14, i) % 3001);
  long_targets.data()[2] = -100;
  check_op<T>(
      "cross_entropy, V = 3001", {uniform<T>({5, 3001}, 15, T(-4), T(4))},
      [&](const auto& v) { return cross_entropy(v[0], long_targets); }, atol, rtol);
  // Every target ignored: loss 0, gradient 0 (defined).
  const IndexTensor ignored = IndexTensor::full({3}, -100);
  check_op<T>(
      "cross_entropy, every target ignored", {uniform<T>({3, 11}, 16)},
      [&](const auto& v) { return cross_entropy(v[0], ignored); }, atol, rtol);
  // A −inf target logit gives +inf (not NaN) on both.
  Tensor<T> inf_target = uniform<T>({2, 5}, 17);
  inf_target(1, 3) = -kInf<T>;
  const IndexTensor t2 = IndexTensor::from({2}, {0, 3});
  const Run<T> cpu = run<T>(Device::cpu, {inf_target}, [&](const auto& v) { return cross_entropy(v[0], t2); }, {});
  const Run<T> gpu = run<T>(Device::cuda, {inf_target}, [&](const auto& v) { return cross_entropy(v[0], t2); }, {});
  EXPECT_EQ(cpu.value.item(), kInf<T>);
  EXPECT_EQ(gpu.value.item(), kInf<T>);
  expect_close(cpu.grads[0], gpu.grads[0], atol, rtol, "gradient with a −inf target logit");
  // A bad target is named on the device path too, before any work.
  const IndexTensor bad = IndexTensor::from({2}, {0, 5});
  EXPECT_THROW(cross_entropy(constant(inf_target.to(Device::cuda)), bad), Error);
  tape().reset();
}

// ---- rms_norm --------------------------------------------------------------------------------------

TYPED_TEST(NnGpu, RmsNorm) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const T eps = T(1e-5);
  // dγ sums one term per row (mixed signs, so some sums are near 0): its rounding grows with the
  // count of rows, hence an absolute tolerance of 4·ε·rows for the gradients (at least atol).
  auto grad_atol = [&](Index rows) { return std::max(atol, 4 * double(std::numeric_limits<T>::epsilon()) * rows); };
  // 42 rows: too few for a warp per row, so a block per row; the 2,100 rows below take a warp each.
  check_op<T>(
      "rms_norm", {uniform<T>({6, 7, 129}, 20), uniform<T>({129}, 21, T(0.5), T(1.5))},
      [&](const auto& v) { return rms_norm(v[0], v[1], eps); }, atol, rtol, {}, grad_atol(42));
  // Strided input rows (a transposed view) and a strided gamma (every other element).
  check_op<T>(
      "rms_norm of views", {uniform<T>({33, 6}, 22), uniform<T>({66}, 23, T(0.5), T(1.5))},
      [&](const auto& v) { return rms_norm(transpose(v[0], 0, 1), slice(v[1], 0, 0, 66, 2), eps); }, atol, rtol, {},
      grad_atol(6));
  // Long rows (one block per row) and D = 1.
  check_op<T>(
      "rms_norm, D = 1500", {uniform<T>({3, 1500}, 24), uniform<T>({1500}, 25)},
      [&](const auto& v) { return rms_norm(v[0], v[1], eps); }, atol, rtol, {}, grad_atol(3));
  check_op<T>(
      "rms_norm, D = 1", {uniform<T>({5, 1}, 26), uniform<T>({1}, 27)},
      [&](const auto& v) { return rms_norm(v[0], v[1], T(0)); }, atol, rtol, {}, grad_atol(5));
  // Many rows: dγ is summed over 2,100 rows in several chunks.
  check_op<T>(
      "rms_norm, 2100 rows", {uniform<T>({2100, 70}, 28), uniform<T>({70}, 29)},
      [&](const auto& v) { return rms_norm(v[0], v[1], eps); }, atol, rtol, {}, grad_atol(2100));
  // Gamma alone needs a gradient (x a constant), and x alone.
  check_op<T>(
      "rms_norm, gamma's gradient only", {uniform<T>({40, 9}, 30), uniform<T>({9}, 31)},
      [&](const auto& v) { return rms_norm(v[0], v[1], eps); }, atol, rtol, {false, true}, grad_atol(40));
  check_op<T>("rms_norm, x's gradient only", {uniform<T>({40, 9}, 32), uniform<T>({9}, 33)},
              [&](const auto& v) { return rms_norm(v[0], v[1], eps); }, atol, rtol, {true, false});
  // config_63's width over many rows: forward and dx in 16-byte packs (contiguous aligned rows);
  // dγ in 485 chunks of 11 rows, the last of 7. x's gradient at the plain tolerance, γ's at the
  // rows' one.
  auto plain = [&](const auto& v) { return rms_norm(v[0], v[1], eps); };
  const Tensor<T> many = uniform<T>({5331, 768}, 34), gamma768 = uniform<T>({768}, 35, T(0.5), T(1.5));
  check_op<T>("rms_norm, 5331 rows of 768, x's gradient", {many, gamma768}, plain, atol, rtol, {true, false});
  check_op<T>("rms_norm, 5331 rows of 768, gamma's gradient", {many, gamma768}, plain, atol, rtol, {false, true},
              grad_atol(5331));
  // More rows than kGammaChunks·kBlock: a chunk's 274 rows span two tiles of dγ's first pass.
  check_op<T>("rms_norm, 140001 rows", {uniform<T>({140001, 3}, 36), uniform<T>({3}, 37)}, plain, atol, rtol,
              {false, true}, grad_atol(140001));
  // Row views (300 rows, a warp each): starting 4 columns in, the rows are 16-byte aligned (stride
  // 772) and go in packs; 1 column in they are not and go element by element; aligned rows with a
  // misaligned gamma too.
  const Tensor<T> wide = uniform<T>({300, 772}, 38);
  check_op<T>(
      "rms_norm of aligned row slices", {wide, gamma768},
      [&](const auto& v) { return rms_norm(slice(v[0], 1, 4, 772), v[1], eps); }, atol, rtol, {}, grad_atol(300));
  check_op<T>(
      "rms_norm of misaligned row slices", {wide, gamma768},
      [&](const auto& v) { return rms_norm(slice(v[0], 1, 1, 769), v[1], eps); }, atol, rtol, {}, grad_atol(300));
  check_op<T>(
      "rms_norm with a misaligned gamma", {uniform<T>({300, 768}, 39), uniform<T>({769}, 40, T(0.5), T(1.5))},
      [&](const auto& v) { return rms_norm(v[0], slice(v[1], 0, 1, 769), eps); }, atol, rtol, {}, grad_atol(300));
}

// ---- rms_norm's fused backward ---------------------------------------------------------------------
// With x and γ both wanting a gradient and D ≤ 1024, one kernel writes dx and dγ's per-chunk
// partial sums (drt/cuda/nn/rms_norm.cuh): a block of 8 warps per chunk of rows, the chunk's length
// a multiple of 8 from the row count alone (at most 1,024 chunks).

// Fills `count` device blocks of x's shape with NaN and returns them to the allocator's cache, so
// that the next allocations of that size (x's copy, y, g, x's gradient) likely reuse them: a fresh
// dx that the kernel added to instead of writing, or an element it forgot, then shows as NaN.
template <class T>
void poison_device_cache(const Shape& shape, int count = 16) {
  std::vector<Tensor<T>> blocks;
  for (int i = 0; i < count; ++i)
    blocks.push_back(Tensor<T>::full(shape, std::numeric_limits<T>::quiet_NaN(), nullptr, Device::cuda));
}

// The graph on the CPU and twice on the GPU (the device cache poisoned before each): the value and
// input 0's gradient (x's) within atol + rtol·|cpu|, the other inputs' (γs: sums over rows) within
// sum_atol; and the two GPU runs the same bits (every sum runs in a fixed order).
template <class T, class Graph>
void check_rms_norm_backward(const std::string& what, const std::vector<Tensor<T>>& inputs, Graph&& graph,
                             double atol, double rtol, double sum_atol, const std::vector<bool>& wants_grad = {}) {
  SCOPED_TRACE(what);
  const Run<T> cpu = run(Device::cpu, inputs, graph, wants_grad);
  poison_device_cache<T>(inputs[0].shape());
  const Run<T> gpu = run(Device::cuda, inputs, graph, wants_grad);
  poison_device_cache<T>(inputs[0].shape());
  const Run<T> again = run(Device::cuda, inputs, graph, wants_grad);
  expect_close(cpu.value, gpu.value, atol, rtol, (what + ": value").c_str());
  expect_close(gpu.value, again.value, 0.0, 0.0, (what + ": value, GPU run twice").c_str());
  ASSERT_EQ(cpu.grads.size(), inputs.size()) << what;
  ASSERT_EQ(gpu.grads.size(), inputs.size()) << what;
  ASSERT_EQ(again.grads.size(), inputs.size()) << what;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const bool wanted = wants_grad.empty() || wants_grad[i];
    ASSERT_EQ(cpu.grads[i].defined(), wanted) << what << ": input " << i;
    ASSERT_EQ(gpu.grads[i].defined(), wanted) << what << ": input " << i;
    if (!wanted) continue;
    const std::string name = what + ": gradient of input " + std::to_string(i);
    expect_close(cpu.grads[i], gpu.grads[i], i == 0 ? atol : sum_atol, rtol, name.c_str());
    expect_close(gpu.grads[i], again.grads[i], 0.0, 0.0, (name + ", GPU run twice").c_str());
  }
}

TYPED_TEST(NnGpu, RmsNormFusedBackward) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const T eps = T(1e-5);
  auto sum_atol = [&](Index rows) { return std::max(atol, 4 * double(std::numeric_limits<T>::epsilon()) * rows); };
  auto plain = [&](const auto& v) { return rms_norm(v[0], v[1], eps); };
  // Both gradients, x's fresh: dx written into a NaN-filled buffer, not added to.
  //   16,380 rows (the model's micro-batch): 1,024 chunks of 16 (two rows per warp), the last of 12.
  //   8,203 rows of 1,024 (every lane's 32 columns in use; fp64's warp sums meet in two rounds):
  //     513 chunks of 16, the last of 11 (warps 0–2 two rows, 3–7 one).
  //   1,000 columns: some lanes own one pack fewer than others; 77 rows: 10 chunks of 8, the last of 5.
  //   Fewer rows than warps (3 rows, and 1): one chunk, warps without rows add zeros.
  check_rms_norm_backward<T>("fused, 16380 rows of 96",
                             {uniform<T>({4, 4095, 96}, 50), uniform<T>({96}, 51, T(0.5), T(1.5))}, plain, atol,
                             rtol, sum_atol(16380));
  check_rms_norm_backward<T>("fused, 8203 rows of 1024",
                             {uniform<T>({8203, 1024}, 52), uniform<T>({1024}, 53, T(0.5), T(1.5))}, plain, atol,
                             rtol, sum_atol(8203));
  check_rms_norm_backward<T>("fused, 77 rows of 1000", {uniform<T>({7, 11, 1000}, 54), uniform<T>({1000}, 55)},
                             plain, atol, rtol, sum_atol(77));
  const Tensor<T> gamma768 = uniform<T>({768}, 56, T(0.5), T(1.5));
  check_rms_norm_backward<T>("fused, 3 rows of 768", {uniform<T>({3, 768}, 57), gamma768}, plain, atol, rtol,
                             sum_atol(3));
  check_rms_norm_backward<T>("fused, 1 row of 768", {uniform<T>({1, 768}, 58), gamma768}, plain, atol, rtol,
                             sum_atol(1));
  // The unfused paths with a fresh dx too: a block per row (D = 1500), and x's gradient alone.
  check_rms_norm_backward<T>("D = 1500", {uniform<T>({40, 1500}, 66), uniform<T>({1500}, 67)}, plain, atol, rtol,
                             sum_atol(40));
  check_rms_norm_backward<T>("x's gradient only", {uniform<T>({300, 768}, 68), gamma768}, plain, atol, rtol,
                             sum_atol(300), {true, false});
  // Element by element (a transposed view: a row's elements 300 apart, no packs), 300 rows.
  check_rms_norm_backward<T>(
      "fused, rows of a transposed view", {uniform<T>({768, 300}, 59), gamma768},
      [&](const auto& v) { return rms_norm(transpose(v[0], 0, 1), v[1], eps); }, atol, rtol, sum_atol(300));
  // x's gradient arrives twice, so the kernel adds to dx: the add's gradient first (it runs
  // backward before rms_norm), or the other rms_norm's (the later op's record runs first). With a
  // warp per row (fused), a block per row (D = 1500), and x's gradient alone (dx kernel only).
  const Tensor<T> x5331 = uniform<T>({5331, 768}, 60);
  auto plus_x = [&](const auto& v) { return rms_norm(v[0], v[1], eps) + v[0]; };
  check_rms_norm_backward<T>("fused, rms_norm(x) + x", {x5331, gamma768}, plus_x, atol, rtol, sum_atol(5331));
  check_rms_norm_backward<T>(
      "fused, rms_norm(x, γ) · rms_norm(x, γ2)",
      {x5331, gamma768, uniform<T>({768}, 61, T(0.5), T(1.5))},
      [&](const auto& v) { return rms_norm(v[0], v[1], eps) * rms_norm(v[0], v[2], eps); }, atol, rtol,
      sum_atol(5331));
  check_rms_norm_backward<T>("rms_norm(x) + x, D = 1500", {uniform<T>({40, 1500}, 62), uniform<T>({1500}, 63)},
                             plus_x, atol, rtol, sum_atol(40));
  check_rms_norm_backward<T>("rms_norm(x) + x, x's gradient only", {x5331, gamma768}, plus_x, atol, rtol,
                             sum_atol(5331), {true, false});
  // x is its own γ (one row): x's fresh gradient is written by the dx pass, then dγ is added to
  // the same buffer. Fused (768) and not (1500).
  auto self = [&](const auto& v) { return rms_norm(v[0], v[0], eps); };
  check_rms_norm_backward<T>("rms_norm(x, x), D = 768", {uniform<T>({768}, 64, T(0.5), T(1.5))}, self, atol, rtol,
                             sum_atol(1));
  check_rms_norm_backward<T>("rms_norm(x, x), D = 1500", {uniform<T>({1500}, 65, T(0.5), T(1.5))}, self, atol, rtol,
                             sum_atol(1));
}

// ---- rope ------------------------------------------------------------------------------------------

TYPED_TEST(NnGpu, Rope) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  check_op<T>(
      "rope", {uniform<T>({2, 3, 17, 10}, 40)}, [&](const auto& v) { return rope(v[0], T(10000), 5); }, atol, rtol);
  // Far positions (the angle in double), another theta, and a strided input (S and batch swapped).
  check_op<T>(
      "rope at position 100000", {uniform<T>({17, 2, 64}, 41)},
      [&](const auto& v) { return rope(transpose(v[0], 0, 1), T(500000), 100000); }, atol, rtol);
  check_op<T>(
      "rope, d = 2, S = 1", {uniform<T>({3, 1, 2}, 42)}, [&](const auto& v) { return rope(v[0], T(10), 7); }, atol,
      rtol);
  // (B, H, T, 64) over (B, T, H, 64) storage, as attention takes it: 900 rows (not a multiple of
  // the 32 rows a warp takes at a time).
  check_op<T>(
      "rope of a (B, H, T, 64) view", {uniform<T>({2, 150, 3, 64}, 43)},
      [&](const auto& v) { return rope(permute(v[0], {0, 2, 1, 3}), T(10000), 0); }, atol, rtol);
  // A 5-D view with d = 128 (two pairs per thread), and a strided last axis with d = 6 (groups of
  // 4 threads, 8 rows side by side).
  check_op<T>(
      "rope of a 5-D view, d = 128", {uniform<T>({2, 19, 2, 3, 128}, 44)},
      [&](const auto& v) { return rope(permute(v[0], {0, 2, 3, 1, 4}), T(10000), 3); }, atol, rtol);
  check_op<T>(
      "rope with a strided last axis, d = 6", {uniform<T>({6, 2, 40}, 45)},
      [&](const auto& v) { return rope(transpose(v[0], 0, 2), T(100), 1); }, atol, rtol);
  // Two ropes of one input: the second backward adds into a gradient that is not zero.
  check_op<T>(
      "rope twice, one gradient", {uniform<T>({2, 3, 33, 32}, 46)},
      [&](const auto& v) { return rope(v[0], T(10000), 0) + rope(v[0], T(500), 9); }, atol, rtol);
}

// The rotation alone against the CPU's loop, where the op never sends it: an output that is a
// permuted view with a strided last axis, overwritten and accumulated into, both directions, from
// a 5-D permuted input (228 rows). The whole output storage is compared: nothing is written
// outside the view.
TYPED_TEST(NnGpu, RopeRotateIntoViews) {
  using T = TypeParam;
  const Tensor<T> in_store = uniform<T>({2, 19, 3, 2, 32}, 140);   // (B, S, H, c, d)
  const Tensor<T> out_store = uniform<T>({19, 2, 3, 2, 64}, 141);  // (S, B, H, c, 2d)
  const Tensor<T> cos_table = uniform<T>({19, 16}, 142), sin_table = uniform<T>({19, 16}, 143);
  auto in_view = [](const Tensor<T>& t) { return t.permute({0, 2, 3, 1, 4}); };  // (B, H, c, S, d)
  auto out_view = [](const Tensor<T>& t) { return t.permute({1, 2, 3, 0, 4}).slice(4, 1, 64, 2); };
  const Tensor<T> device_in = in_store.to(Device::cuda);
  const Tensor<T> device_cos = cos_table.to(Device::cuda), device_sin = sin_table.to(Device::cuda);
  for (const bool accumulate : {false, true})
    for (const T direction : {T(1), T(-1)}) {
      SCOPED_TRACE(std::string(accumulate ? "accumulate" : "overwrite") + (direction > 0 ? ", forward" : ", backward"));
      const Tensor<T> cpu = out_store.clone(), gpu = out_store.to(Device::cuda);
      detail::rotate_pairs(in_view(in_store), out_view(cpu), cos_table.data(), sin_table.data(), direction, accumulate);
      cuda::rope_rotate(in_view(device_in), out_view(gpu), device_cos, device_sin, direction, accumulate);
      expect_close(cpu, gpu, Tol<T>::atol, Tol<T>::rtol, "output storage");
    }
}

// ---- swiglu, swiglu_mlp ----------------------------------------------------------------------------

TYPED_TEST(NnGpu, Swiglu) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const Tensor<T> a = uniform<T>({4, 33, 20}, 50, T(-4), T(4)), b = uniform<T>({4, 33, 20}, 51);
  auto graph = [](const auto& v) { return swiglu(v[0], v[1]); };
  check_op<T>("swiglu, both gradients (fused kernel)", {a, b}, graph, atol, rtol);
  check_op<T>("swiglu, gate's gradient only", {a, b}, graph, atol, rtol, {true, false});
  check_op<T>("swiglu, up's gradient only", {a, b}, graph, atol, rtol, {false, true});
  check_op<T>(
      "swiglu of views", {uniform<T>({20, 33}, 52), uniform<T>({33, 20}, 53)},
      [](const auto& v) { return swiglu(transpose(v[0], 0, 1), v[1]); }, atol, rtol);
  check_op<T>(
      "swiglu_mlp",
      {uniform<T>({2, 5, 8}, 54), uniform<T>({12, 8}, 55), uniform<T>({12, 8}, 56), uniform<T>({8, 12}, 57)},
      [](const auto& v) { return swiglu_mlp(v[0], v[1], v[2], v[3]); }, atol, rtol);
}

// ---- dropout ---------------------------------------------------------------------------------------

TYPED_TEST(NnGpu, DropoutMasksAreTheCpusBitForBit) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({5, 37, 41}, 60);
  check_op_exact<T>("dropout", {x}, [](const auto& v) { return dropout(v[0], T(0.3), 1234); });
  check_op_exact<T>("dropout, another seed and p", {x}, [](const auto& v) { return dropout(v[0], T(0.85), 99); });
  check_op_exact<T>("dropout of a transposed view", {x},
                    [](const auto& v) { return dropout(transpose(v[0], 0, 2), T(0.5), 7); });
  check_op_exact<T>("dropout, p = 0", {x}, [](const auto& v) { return dropout(v[0], T(0), 7); });
  check_op_exact<T>("dropout, not training", {x}, [](const auto& v) { return dropout(v[0], T(0.5), 7, false); });
  // The mask really drops about p of the elements (so the exact comparison above compared masks).
  const Tensor<T> y = dropout(constant(Tensor<T>::full({100000}, T(1)).to(Device::cuda)), T(0.3), 5).value();
  Index dropped = 0;
  for (T v : y.to_vector()) dropped += v == T(0);
  EXPECT_NEAR(double(dropped) / 100000.0, 0.3, 0.01);
  tape().reset();
}

// ---- Gumbel noise ----------------------------------------------------------------------------------

TYPED_TEST(NnGpu, GumbelNoise) {
  using T = TypeParam;
  // fp32: exact; fp64: the last bit may differ (CUDA's log vs glibc's, see the top of the file).
  const double tol = std::is_same_v<T, float> ? 0.0 : 1e-15;
  const Tensor<T> noise = gumbel_noise<T>({7, 301}, 77, nullptr, Device::cuda);
  EXPECT_EQ(noise.device(), Device::cuda);
  expect_close(gumbel_noise<T>({7, 301}, 77), noise, tol, tol, "gumbel_noise");
  expect_close(gumbel_noise<T>({3, 100000}, 78), gumbel_noise<T>({3, 100000}, 78, nullptr, Device::cuda), tol, tol,
               "gumbel_noise, 300000 elements");
  check_op<T>(
      "add_gumbel", {uniform<T>({6, 19, 7}, 79)}, [](const auto& v) { return add_gumbel(v[0], 123); }, tol, tol);
  check_op<T>(
      "add_gumbel of a transposed view", {uniform<T>({6, 19, 7}, 80)},
      [](const auto& v) { return add_gumbel(transpose(v[0], 0, 2), 124); }, tol, tol);
}

// ---- masked_fill -----------------------------------------------------------------------------------

TYPED_TEST(NnGpu, MaskedFill) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({3, 5, 7}, 90);
  Tensor<T> mask = Tensor<T>::zeros({5, 7});
  for (Index i = 0; i < 35; ++i) mask.data()[i] = random_bits(91, i) % 3 == 0 ? T(1) : T(0);
  // A host mask is copied over; a device mask is used as it is; broadcasting either way.
  check_op_exact<T>("masked_fill, host mask", {x}, [&](const auto& v) { return masked_fill(v[0], mask, -kInf<T>); });
  const Tensor<T> device_mask = mask.to(Device::cuda);
  check_op_exact<T>("masked_fill, device mask", {x}, [&](const auto& v) {
    return masked_fill(v[0], v[0].value().on_host() ? mask : device_mask, T(2.5));
  });
}

// ---- ALiBi -----------------------------------------------------------------------------------------

TYPED_TEST(NnGpu, Alibi) {
  using T = TypeParam;
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const Tensor<T> slopes = alibi_slopes<T>(4);
  check_op<T>(
      "add_alibi, host slopes", {uniform<T>({2, 4, 5, 7}, 100)},
      [&](const auto& v) { return add_alibi(v[0], slopes, 3); }, atol, rtol);
  const Tensor<T> device_slopes = slopes.to(Device::cuda);
  check_op<T>(
      "add_alibi, device slopes, transposed scores", {uniform<T>({2, 4, 7, 5}, 101)},
      [&](const auto& v) {
        return add_alibi(transpose(v[0], 2, 3), v[0].value().on_host() ? slopes : device_slopes, 0);
      },
      atol, rtol);
  check_op<T>(
      "add_alibi, one query far into the sequence", {uniform<T>({3, 1, 40}, 102)},
      [&](const auto& v) { return add_alibi(v[0], alibi_slopes<T>(3), 1000); }, atol, rtol);
}

// ---- top-k -----------------------------------------------------------------------------------------

// Small integers: many ties, which must go to the lower index as on the CPU; a few −inf.
template <class T>
Tensor<T> tied(const Shape& s, std::uint64_t seed) {
  Tensor<T> x = uniform<T>(s, seed, T(-3), T(3));
  std::vector<T> v = x.to_vector();
  for (T& e : v) e = std::round(e);
  return with_some_minus_inf(Tensor<T>::from(s, v), seed + 1);
}

// transposed: the op sees the input with axes 0 and 1 swapped (a strided view on both devices).
template <class T>
void check_topk(const std::string& what, const Tensor<T>& x, int k, int axis, bool transposed = false) {
  SCOPED_TRACE(what);
  IndexTensor cpu_idx, gpu_idx;
  auto graph = [&](IndexTensor& idx) {
    return [&idx, k, axis, transposed](const std::vector<Var<T>>& v) {
      TopK<T> r = topk(transposed ? transpose(v[0], 0, 1) : v[0], k, axis);
      idx = keep(r.indices);
      return r.values;
    };
  };
  const Run<T> cpu = run<T>(Device::cpu, {x}, graph(cpu_idx), {});
  const Run<T> gpu = run<T>(Device::cuda, {x}, graph(gpu_idx), {});
  ASSERT_EQ(gpu_idx.device(), Device::cuda);
  ASSERT_EQ(cpu_idx.shape(), gpu_idx.shape());
  EXPECT_EQ(cpu_idx.to_vector(), gpu_idx.to_vector()) << "indices";
  expect_equal(cpu.value, gpu.value, "values");
  expect_equal(cpu.grads[0], gpu.grads[0], "gradient");
  // topk_indices alone (no tape).
  const Tensor<T> xs = transposed ? x.transpose(0, 1) : x,
                  dxs = transposed ? x.to(Device::cuda).transpose(0, 1) : x.to(Device::cuda);
  EXPECT_EQ(topk_indices(xs, k, axis).to_vector(), topk_indices(dxs, k, axis).to_vector());
}

TYPED_TEST(NnGpu, TopKMatchesTheCpuIncludingTies) {
  using T = TypeParam;
  check_topk<T>("k = 7 of 50 with ties and −inf", tied<T>({6, 50}, 110), 7, -1);
  check_topk<T>("along axis 0 (strided lanes)", tied<T>({40, 3, 5}, 112), 6, 0);
  check_topk<T>("k = n", tied<T>({4, 9}, 114), 9, -1);
  check_topk<T>("k = 0", tied<T>({4, 9}, 116), 0, -1);
  check_topk<T>("k = 1 on distinct values", uniform<T>({33, 70}, 118), 1, -1);
  check_topk<T>("long lanes (one block each), k = 16", tied<T>({3, 2000}, 119), 16, -1);
  // A lane that is entirely −inf: the lowest indices, in order.
  Tensor<T> masked = tied<T>({3, 12}, 121);
  masked.select(0, 1).fill(-kInf<T>);
  check_topk<T>("a fully masked lane", masked, 5, -1);
  // A transposed view as input.
  check_topk<T>("a transposed view", tied<T>({50, 6}, 123), 4, -1, true);
}

// ---- retrieval -------------------------------------------------------------------------------------

template <class T>
void check_retrieve(const std::string& what, Index B, Index C, Index D, int topk, bool noise) {
  SCOPED_TRACE(what);
  const double atol = Tol<T>::atol, rtol = Tol<T>::rtol;
  const Tensor<T> query = uniform<T>({B, C, D}, 130 + C), keys = uniform<T>({B, C, D}, 131 + C);
  IndexTensor cpu_idx, gpu_idx;
  auto graph = [&](IndexTensor& idx) {
    return [&idx, topk, noise](const std::vector<Var<T>>& v) {
      Retrieval<T> r = retrieve(v[0], v[1], topk, noise, 2024);
      idx = keep(r.index);
      return r.weight;
    };
  };
  const Run<T> cpu = run<T>(Device::cpu, {query, keys}, graph(cpu_idx), {});
  const Run<T> gpu = run<T>(Device::cuda, {query, keys}, graph(gpu_idx), {});
  ASSERT_EQ(gpu_idx.device(), Device::cuda) << "the index stays on the device";
  ASSERT_EQ(cpu_idx.shape(), gpu_idx.shape());
  EXPECT_EQ(cpu_idx.to_vector(), gpu_idx.to_vector()) << "indices";
  expect_close(cpu.value, gpu.value, atol, rtol, "weights");
  expect_close(cpu.grads[0], gpu.grads[0], atol, rtol, "gradient of the query");
  expect_close(cpu.grads[1], gpu.grads[1], atol, rtol, "gradient of the keys");
  // Landmark 0 sees nothing: every slot empty (−1).
  const std::vector<std::int32_t> idx = gpu_idx.to_vector();
  const Index k = gpu_idx.size(-1);
  for (Index j = 0; j < k; ++j) EXPECT_EQ(idx[static_cast<std::size_t>(j)], -1);
}

TYPED_TEST(NnGpu, RetrieveOnTheDevice) {
  using T = TypeParam;
  check_retrieve<T>("B 2, C 13, D 16, top 4, no noise", 2, 13, 16, 4, false);
  check_retrieve<T>("B 2, C 13, D 16, top 4, Gumbel noise", 2, 13, 16, 4, true);
  check_retrieve<T>("B 3, C 40, D 32, top 8, Gumbel noise", 3, 40, 32, 8, true);
  check_retrieve<T>("top-k larger than C", 1, 6, 8, 10, true);
}

// ---- bf16 copies written by the ops that feed bf16 GEMMs -------------------------------------------

// With bf16 GEMMs RMSNorm's kernel also writes its output's bf16 copy, for the projections after
// it (rms_norm_then). The output must be the plain forward's, bit for bit, and the copy exactly
// bf16_copy of it, on each of the kernel's paths: a warp per row in 16-byte packs, a warp per row
// one element at a time (D = 30), a block per row (D = 1100).
TEST_F(Gpu, RmsNormWritesTheBf16CopyOfItsOutput) {
  for (const Shape& shape : {Shape{3, 37, 64}, Shape{40, 30}, Shape{5, 1100}}) {
    SCOPED_TRACE(shape.str());
    const Tensor<float> x = cuda::to_device(uniform<float>(shape, 61, -3.0f, 3.0f));
    const Tensor<float> gamma = cuda::to_device(uniform<float>({shape.dim(-1)}, 62));
    MatmulPrecisionScope bf16(Precision::bf16);
    tape().reset();
    std::shared_ptr<void> copy;
    const Tensor<float> y = rms_norm(constant(x), constant(gamma), 1e-5f, &copy).value();
    EXPECT_EQ(y.to_vector(), rms_norm(constant(x), constant(gamma), 1e-5f).value().to_vector());
    expect_bf16_copy_of(y, copy, "rms_norm's output");
    MatmulPrecisionScope fp32(Precision::fp32);
    std::shared_ptr<void> none;
    rms_norm(constant(x), constant(gamma), 1e-5f, &none);
    EXPECT_FALSE(none) << "a copy without bf16 GEMMs";
    tape().reset();
  }
}

// RMSNorm's fused backward writes dx's bf16 copy as it writes dx (Node::grad_rounded), fresh or
// added to: x also feeds a product recorded after the norm, whose backward runs first, so the
// norm adds to its gradient and the copy is of the sum. The gradient must equal the one written
// without the switch, bit for bit. A product recorded BEFORE the norm adds to dx after the copy
// was written: the copy must then be gone.
TEST_F(Gpu, RmsNormBackwardWritesTheBf16CopyOfItsInputsGradient) {
  const Tensor<float> x0 = cuda::to_device(uniform<float>({3, 37, 64}, 68, -3.0f, 3.0f));
  const Tensor<float> c = cuda::to_device(uniform<float>({3, 37, 64}, 69));
  const Tensor<float> seed = cuda::to_device(uniform<float>({3, 37, 64}, 70));
  for (bool side_after_norm : {false, true}) {
    SCOPED_TRACE(side_after_norm ? "the other use of x recorded after the norm" : "recorded before the norm");
    auto gradient = [&](Precision p, std::shared_ptr<void>* copy) {
      MatmulPrecisionScope scope(p);
      tape().reset();
      const Var<float> x = variable(x0), gamma = variable(cuda::to_device(uniform<float>({64}, 71)));
      Var<float> side, normed;
      if (!side_after_norm) side = x * constant(c);
      normed = rms_norm(x, gamma, 1e-5f);
      if (side_after_norm) side = x * constant(c);
      backward(normed + side, seed);
      const Tensor<float> g = x.grad().clone();
      *copy = x.node()->grad_rounded;
      tape().reset();
      return g;
    };
    std::shared_ptr<void> copy, none;
    const Tensor<float> with_copy = gradient(Precision::bf16, &copy), plain = gradient(Precision::fp32, &none);
    EXPECT_EQ(with_copy.to_vector(), plain.to_vector());
    EXPECT_FALSE(none) << "a copy without bf16 GEMMs";
    if (side_after_norm) expect_bf16_copy_of(with_copy, copy, "dx");
    else EXPECT_FALSE(copy) << "the copy outlived a later addition to dx";
  }
}

// SwiGLU's backward writes the bf16 copies of both gradients as it writes them, fresh or added
// to, in 16-byte packs (4 × 64) or one element at a time (3 × 37 × 29, and an unaligned view).
// The gradients within the CPU's formula's rounding, the copies exactly bf16_copy of them.
TEST_F(Gpu, SwigluBackwardWritesTheBf16CopiesOfItsGradients) {
  struct Case {
    const char* what;
    Shape shape;
    Index offset;  // elements skipped at the start of each buffer (1: not 16-byte aligned)
  };
  for (const Case& c : {Case{"packs", {4, 64}, 0}, Case{"odd count", {3, 37, 29}, 0}, Case{"unaligned", {8, 16}, 1}}) {
    for (bool add : {false, true}) {
      SCOPED_TRACE(std::string(c.what) + (add ? ", added to" : ", fresh"));
      const Index n = c.shape.numel();
      auto device_view = [&](std::uint64_t seed, float lo, float hi) {
        const Tensor<float> t = cuda::to_device(uniform<float>({n + c.offset}, seed, lo, hi));
        return t.slice(0, c.offset, n + c.offset).reshape(c.shape);
      };
      const Tensor<float> a = device_view(63, -4.0f, 4.0f), b = device_view(64, -1, 1), g = device_view(65, -1, 1);
      const Tensor<float> da = device_view(66, -1, 1), db = device_view(67, -1, 1);
      const Tensor<float> da_before = da.to(Device::cpu), db_before = db.to(Device::cpu);
      std::shared_ptr<void> da16, db16;
      cuda::swiglu_backward_rounded(a, b, g, da, db, add, add, da16, db16);
      // The CPU's formula (drt/nn/swiglu.hpp) on the same inputs.
      const Tensor<float> ha = a.to(Device::cpu), hb = b.to(Device::cpu), hg = g.to(Device::cpu);
      const Tensor<float> sig = eval(sigmoid(ha));
      Tensor<float> want_a = eval(hg * hb * sig * (1.0f + ha * (1.0f - sig)));
      Tensor<float> want_b = eval(hg * ha * sig);
      if (add) want_a = eval(want_a + da_before), want_b = eval(want_b + db_before);
      expect_close(want_a, da, 4e-6, 4e-6, "da");
      expect_close(want_b, db, 4e-6, 4e-6, "db");
      expect_bf16_copy_of(da.contiguous(), da16, "da");
      expect_bf16_copy_of(db.contiguous(), db16, "db");
    }
  }
}

}  // namespace
