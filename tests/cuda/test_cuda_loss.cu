// test_cuda_loss — cross_entropy on the device against the CPU op, with the class count C ≤ V
// that the GPU models use to score their padded LM head in place (model/padded_vocab.hpp), and
// both backward modes of the kernel: a fresh gradient buffer written whole (zeros included), and
// an existing one added to.
//
// Labelled `gpu`; without a GPU every test FAILS in SetUp (gpu_test.hpp). Every test runs in fp32
// and fp64: the logits are variables, the loss's gradient is seeded with 0.73 (not 1: the kernel
// reads it on the device), and the loss and the logits' gradient are compared with the same graph
// on the CPU.
//
// Tolerances (the same reasons as test_cuda_nn: CUDA's expf/logf within 2 ulp, glibc's within 1;
// group sums are trees, the CPU's a loop; the online log-sum-exp multiplies each thread's sum by
// one more exp(m − M); nvcc contracts a·b + c into FMAs):
//   rows of up to 3,004 columns   fp32 2e-6 + 2e-5·|cpu|,  fp64 1e-13 + 1e-12·|cpu|
//   rows of 50,304 columns        fp32 1e-5 + 1e-4·|cpu|,  fp64 1e-12 + 1e-11·|cpu|: the CPU's
//                                 sequential Σ exp of 50,265 terms rounds ~√n·ε (up to n·ε) relative;
//                                 the gradient (elements ~1e-6) with no absolute term, 1e-20.
// What is exact: the gradient's columns ≥ C and its ignored rows (0, written by the kernel into a
// buffer first filled with NaN), and two runs on the device (bitwise: fixed order everywhere).
#include "gpu_test.hpp"

#include <drt/model.hpp>
#include <drt/nn.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using namespace drt;
using namespace drt::gpu_test;

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double atol = 2e-6, rtol = 2e-5, wide_atol = 1e-5, wide_rtol = 1e-4;
};
template <>
struct Tol<double> {
  static constexpr double atol = 1e-13, rtol = 1e-12, wide_atol = 1e-12, wide_rtol = 1e-11;
};

template <class T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// Fills a few device blocks of `elements` elements with NaN and returns them to the allocator's
// cache, so that the next allocations of that size (the logits' copy, their gradient) likely reuse
// them: a gradient element that the kernel forgot to write then shows as NaN, not a lucky zero.
template <class T>
void poison_device_cache(Index elements) {
  std::vector<Tensor<T>> blocks;
  for (int i = 0; i < 8; ++i)
    blocks.push_back(Tensor<T>::full({elements}, std::numeric_limits<T>::quiet_NaN(), nullptr, Device::cuda));
}

template <class T>
struct Run {
  Tensor<T> loss;
  Tensor<T> grad;  // the logits' gradient
};

// graph(logits) on `device`, backward seeded with 0.73; keeps the loss and the
// logits' gradient (copies that outlive tape().reset()).
template <class T, class Graph>
Run<T> run(Device device, const Tensor<T>& logits, Graph&& graph) {
  if (device == Device::cuda) poison_device_cache<T>(logits.numel());
  const Var<T> x = variable(logits.to(device));
  const Var<T> out = graph(x);
  const Tensor<T> seed = Tensor<T>::full(out.shape(), T(0.73));
  backward(out, seed.to(device));
  Run<T> r{out.value().clone(), x.grad().clone()};
  tape().reset();
  return r;
}

// The loss within atol + rtol·|cpu|, the gradient within grad_atol (atol when not given) + rtol·|cpu|.
template <class T, class Graph>
void check(const std::string& what, const Tensor<T>& logits, Graph&& graph, double atol = Tol<T>::atol,
           double rtol = Tol<T>::rtol, double grad_atol = -1) {
  SCOPED_TRACE(what);
  const Run<T> cpu = run(Device::cpu, logits, graph);
  const Run<T> gpu = run(Device::cuda, logits, graph);
  expect_close(cpu.loss, gpu.loss, atol, rtol, (what + ": loss").c_str());
  expect_close(cpu.grad, gpu.grad, grad_atol >= 0 ? grad_atol : atol, rtol, (what + ": gradient").c_str());
}

// The targets' shape for logits of shape (rows..., V).
Shape target_shape(const Shape& logits) { return Shape::from(logits.begin(), logits.end() - 1); }

// Targets (rows...) in [0, classes), every `ignore_every`-th one ignored (−100).
IndexTensor random_targets(const Shape& shape, Index classes, std::uint64_t seed, Index ignore_every = 5) {
  IndexTensor t = IndexTensor::empty(shape);
  for (Index i = 0; i < t.numel(); ++i)
    t.data()[i] = i % ignore_every == 2 ? -100 : static_cast<std::int32_t>(random_bits(seed, i) % classes);
  return t;
}

// Uniform logits with a few −inf entries (never at a counted target: the loss would be +inf and
// compare trivially), and large values in the columns ≥ C, which must not matter.
template <class T>
Tensor<T> logits_with_padding(const Shape& shape, Index classes, const IndexTensor& targets, std::uint64_t seed) {
  Tensor<T> x = uniform<T>(shape, seed, T(-4), T(4));
  const Index V = shape.dim(-1), rows = x.numel() / V;
  std::vector<T> v = x.to_vector();
  for (Index r = 0; r < rows; ++r)
    for (Index k = 0; k < V; ++k) {
      T& e = v[static_cast<std::size_t>(r * V + k)];
      if (k >= classes) e = T(50) + T(k % 3);
      else if (k != targets.data()[r] && random_bits(seed + 1, static_cast<std::uint64_t>(r * V + k)) % 11 == 0)
        e = -kInf<T>;
    }
  return Tensor<T>::from(shape, v);
}

// The gradient's columns ≥ C and its rows with an ignored target, exactly 0 (host copies).
template <class T>
void expect_zero_outside_classes(const Tensor<T>& grad, const IndexTensor& targets, Index classes, const char* what) {
  const Index V = grad.shape().dim(-1), rows = targets.numel();
  const std::vector<T> g = grad.to_vector();
  const IndexTensor t = targets.is_contiguous() ? targets : targets.clone();
  for (Index r = 0; r < rows; ++r)
    for (Index k = 0; k < V; ++k)
      if (k >= classes || t.data()[r] == -100)
        ASSERT_EQ(g[static_cast<std::size_t>(r * V + k)], T(0)) << what << ": row " << r << " column " << k;
}

template <class T>
class LossGpu : public Gpu {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LossGpu, Types);

// A fresh gradient buffer (the logits feed only the loss): the kernel writes every element.
TYPED_TEST(LossGpu, FewerClassesFreshGradient) {
  using T = TypeParam;
  struct Case {
    const char* what;
    Shape shape;
    Index classes;
  };
  const std::vector<Case> cases = {
      {"warp per row, 16-byte words, C < V (C mod 4 = 1)", {4, 9, 40}, 37},
      {"warp per row, words, C = V", {6, 64}, 64},
      {"warp per row, one element at a time (V = 37)", {7, 37}, 30},
      {"block per row, words, C < V", {5, 3004}, 3001},
      {"block per row, one element at a time (V = 3001)", {5, 3001}, 2999},
      {"C = 1", {3, 8}, 1},
  };
  for (const Case& c : cases) {
    const IndexTensor targets = random_targets(target_shape(c.shape), c.classes, 18);
    const Tensor<T> x = logits_with_padding<T>(c.shape, c.classes, targets, 17);
    const auto graph = [&](const Var<T>& v) { return cross_entropy(v, targets, -100, c.classes); };
    check<T>(c.what, x, graph);
    expect_zero_outside_classes(run(Device::cuda, x, graph).grad, targets, c.classes, c.what);
  }
}

// Views: a strided vocabulary axis, and rows that start off a 16-byte boundary (one element at a
// time); another ignore_index.
TYPED_TEST(LossGpu, FewerClassesOnViews) {
  using T = TypeParam;
  const IndexTensor t9 = random_targets({9}, 30, 19);
  check<T>("transposed logits", uniform<T>({37, 9}, 20, T(-3), T(3)),
           [&](const Var<T>& v) { return cross_entropy(transpose(v, 0, 1), t9, -100, 30); });
  IndexTensor t6 = random_targets({6}, 37, 21);
  for (Index i = 0; i < 6; ++i)  // this call ignores 7, not −100
    if (t6.data()[i] == -100) t6.data()[i] = 7;
  t6.data()[4] = 7;
  check<T>("columns [1, 41) of (6, 44): an unaligned start", uniform<T>({6, 44}, 22, T(-3), T(3)),
           [&](const Var<T>& v) { return cross_entropy(slice(v, 1, 1, 41), t6, 7, 37); });
}

// The logits used twice: when the cross-entropy's backward runs, their gradient may already
// exist (it adds, to the class columns only) or not (it writes, and the other use adds after).
TYPED_TEST(LossGpu, FewerClassesExistingGradient) {
  using T = TypeParam;
  for (const auto& [shape, classes] : std::vector<std::pair<Shape, Index>>{{{4, 9, 40}, 37}, {{5, 3004}, 3001}, {{7, 37}, 30}}) {
    const std::string what = "shape " + shape.str() + ", C = " + std::to_string(classes);
    const IndexTensor targets = random_targets(target_shape(shape), classes, 25);
    const Tensor<T> x = logits_with_padding<T>(shape, classes, targets, 23);
    const Tensor<T> w = uniform<T>(shape, 24);
    // The other use is tanh(v)·w, finite at the −inf logits (v·w would sum −inf and +inf to NaN).
    // Recorded first, so its backward runs last: the other use's gradient is already there.
    check<T>(what + ", gradient exists", x, [&](const Var<T>& v) {
      return cross_entropy(v, targets, -100, classes) + sum_all(tanh(v) * constant(w.to(v.device())));
    });
    // Recorded last, so its backward runs first: fresh, then the other use adds.
    check<T>(what + ", gradient fresh, added to later", x, [&](const Var<T>& v) {
      return sum_all(tanh(v) * constant(w.to(v.device()))) + cross_entropy(v, targets, -100, classes);
    });
  }
}

// Every target ignored: loss 0; the gradient written as zeros (fresh) or left as it was (existing).
// No rows at all: loss 0 and an empty gradient.
TYPED_TEST(LossGpu, NothingCounted) {
  using T = TypeParam;
  const Tensor<T> x = uniform<T>({3, 44}, 26);
  const IndexTensor ignored = IndexTensor::full({3}, -100);
  const auto alone = [&](const Var<T>& v) { return cross_entropy(v, ignored, -100, 40); };
  check<T>("every target ignored, fresh", x, alone);
  const Run<T> gpu = run(Device::cuda, x, alone);
  EXPECT_EQ(gpu.loss.item(), T(0));
  for (T g : gpu.grad.to_vector()) ASSERT_EQ(g, T(0));
  check<T>("every target ignored, existing", x,
           [&](const Var<T>& v) { return cross_entropy(v, ignored, -100, 40) + sum_all(v * v); });
  check<T>("no rows", Tensor<T>::zeros({0, 10}), [&](const Var<T>& v) {
    return cross_entropy(v, IndexTensor::empty({0}), -100, 7);
  });
}

// A −inf target logit: +inf on both; a row whose classes are all −inf (its padding columns are
// not): lse −inf, only the target's −scale in its gradient.
TYPED_TEST(LossGpu, InfiniteCases) {
  using T = TypeParam;
  Tensor<T> x = uniform<T>({3, 12}, 27);
  for (Index k = 0; k < 10; ++k) x(1, k) = -kInf<T>;
  x(2, 4) = -kInf<T>;
  const auto graph = [](const IndexTensor& t) {
    return [t](const Var<T>& v) { return cross_entropy(v, t, -100, 10); };
  };
  const IndexTensor all_minus_inf_row = IndexTensor::from({3}, {0, 3, -100});
  const IndexTensor minus_inf_target = IndexTensor::from({3}, {0, -100, 4});
  for (const IndexTensor& t : {all_minus_inf_row, minus_inf_target}) {
    const Run<T> cpu = run(Device::cpu, x, graph(t)), gpu = run(Device::cuda, x, graph(t));
    EXPECT_EQ(cpu.loss.item(), kInf<T>);
    EXPECT_EQ(gpu.loss.item(), kInf<T>);
    expect_close(cpu.grad, gpu.grad, Tol<T>::atol, Tol<T>::rtol, "gradient");
    expect_zero_outside_classes(gpu.grad, t, 10, "gradient");
  }
}

// The GPU model's shape: V' = 50,304 columns, C = 50,265 classes; twice on the device, bitwise equal.
TYPED_TEST(LossGpu, PaddedVocabularyRows) {
  using T = TypeParam;
  const Shape shape{3, 8, 50304};
  const IndexTensor targets = random_targets({3, 8}, 50265, 29);
  const Tensor<T> x = logits_with_padding<T>(shape, 50265, targets, 28);
  const auto graph = [&](const Var<T>& v) { return cross_entropy(v, targets, -100, 50265); };
  // The gradient's elements are ~1e-6 here (softmax over 50,265 columns): relative error only.
  check<T>("V' = 50,304, C = 50,265", x, graph, Tol<T>::wide_atol, Tol<T>::wide_rtol, 1e-20);
  const Run<T> a = run(Device::cuda, x, graph), b = run(Device::cuda, x, graph);
  expect_equal(a.loss.to(Device::cpu), b.loss, "loss, run twice");
  expect_equal(a.grad.to(Device::cpu), b.grad, "gradient, run twice");
  expect_zero_outside_classes(a.grad, targets, 50265, "gradient");
}

// With bf16 GEMMs a first gradient of the logits comes with its bf16 copy (Node::grad_rounded),
// which the LM head's backward reads instead of rounding the gradient itself. The gradient must be
// the one written without the switch, bit for bit (ignored rows and padding columns included),
// and the copy exactly bf16_copy of it; V = 37 takes the kernel's one-at-a-time path and 3004 a
// block per row. Without the switch there is no copy; a gradient added to an existing one drops it.
TEST_F(Gpu, CrossEntropyBackwardWritesTheBf16CopyOfItsGradient) {
  struct Case {
    const char* what;
    Shape shape;
    Index classes;
  };
  const std::vector<Case> cases = {{"warp per row, 16-byte words", {4, 9, 40}, 37},
                                   {"warp per row, one element at a time", {7, 37}, 30},
                                   {"block per row, words", {5, 3004}, 3001}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const IndexTensor targets = random_targets(target_shape(c.shape), c.classes, 18);
    const Tensor<float> x = cuda::to_device(logits_with_padding<float>(c.shape, c.classes, targets, 17));
    auto gradient = [&](Precision p, std::shared_ptr<void>* copy) {
      MatmulPrecisionScope scope(p);
      tape().reset();
      const Var<float> logits = variable(x);
      backward(cross_entropy(logits, targets, -100, c.classes));
      const Tensor<float> g = logits.grad().clone();
      *copy = logits.node()->grad_rounded;
      tape().reset();
      return g;
    };
    std::shared_ptr<void> copy, none;
    const Tensor<float> with_copy = gradient(Precision::bf16, &copy), plain = gradient(Precision::fp32, &none);
    EXPECT_EQ(with_copy.to_vector(), plain.to_vector());
    expect_bf16_copy_of(with_copy, copy, "the logits' gradient");
    EXPECT_FALSE(none) << "a copy without bf16 GEMMs";
  }
  // A second loss over the same logits adds to the first's gradient: no copy may survive that.
  MatmulPrecisionScope bf16(Precision::bf16);
  tape().reset();
  const IndexTensor targets = random_targets({6}, 40, 19);
  const Var<float> logits = variable(cuda::to_device(uniform<float>({6, 40}, 20)));
  backward(cross_entropy(logits, targets) + cross_entropy(logits, targets));
  EXPECT_FALSE(logits.node()->grad_rounded) << "a copy of the first loss's gradient outlived the second's";
  tape().reset();
}

}  // namespace
