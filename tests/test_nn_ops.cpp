// The neural-network ops: values against naive loops or known math, gradient checks, edge cases.
#include <drt/nn.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool all_finite(const Tensor<double>& t) {
  for (double v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}

// Runs f and expects a drt::Error whose message contains every one of `parts`.
template <class F>
void expect_error_naming(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected a drt::Error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  tape().reset();
}

// Distinct values k·0.1 (k = 0..n−1) in a random order: far apart compared with a
// finite-difference step, so max-like ops never switch their choice under perturbation.
Tensor<double> well_separated(const Shape& shape, std::uint64_t seed) {
  const Index n = shape.numel();
  std::vector<double> v(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) v[i] = 0.1 * static_cast<double>(i) - 0.05 * static_cast<double>(n);
  for (Index i = n - 1; i > 0; --i) std::swap(v[i], v[random_bits(seed, i) % static_cast<std::uint64_t>(i + 1)]);
  return Tensor<double>::from(shape, v);
}

// Softmax of a (3-D) tensor along `axis`, computed the obvious way.
Tensor<double> naive_softmax3(const Tensor<double>& x, int axis, bool log_space) {
  Tensor<double> y(x.shape());
  for (Index i = 0; i < x.size(0); ++i)
    for (Index j = 0; j < x.size(1); ++j)
      for (Index k = 0; k < x.size(2); ++k) {
        double total = 0;
        for (Index m = 0; m < x.size(axis); ++m) {
          Index id[3] = {i, j, k};
          id[axis] = m;
          total += std::exp(x(id[0], id[1], id[2]));
        }
        y(i, j, k) = log_space ? x(i, j, k) - std::log(total) : std::exp(x(i, j, k)) / total;
      }
  return y;
}

}  // namespace

// ---- softmax / log_softmax -------------------------------------------------------------------

TEST(Softmax, MatchesNaiveAndRowsSumToOne) {
  const auto x = rand({3, 4, 5}, 1, -3, 3);
  for (int axis : {0, 1, 2}) {
    const auto y = softmax(x, axis);
    const auto ly = log_softmax(x, axis);
    const auto ref = naive_softmax3(x, axis, false), lref = naive_softmax3(x, axis, true);
    for (Index i = 0; i < 3; ++i)
      for (Index j = 0; j < 4; ++j)
        for (Index k = 0; k < 5; ++k) {
          EXPECT_NEAR(y(i, j, k), ref(i, j, k), 1e-14);
          EXPECT_NEAR(ly(i, j, k), lref(i, j, k), 1e-13);
        }
    const auto sums = sum(y, axis);
    for (double s : sums.to_vector()) EXPECT_NEAR(s, 1.0, 1e-14);
  }
  // Subtracting the maximum makes huge logits harmless: softmax is shift invariant.
  const auto shifted = softmax(eval(x + 1000.0), -1), plain = softmax(x, -1);
  const auto a = shifted.to_vector(), b = plain.to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12);
  // Float agrees with double.
  const auto yf = softmax(x.cast<float>(), 1).cast<double>().to_vector(), yd = softmax(x, 1).to_vector();
  for (std::size_t i = 0; i < yf.size(); ++i) EXPECT_NEAR(yf[i], yd[i], 1e-6);
}

TEST(Softmax, GradientsOnSeveralRanksAxesAndViews) {
  const auto x1 = rand({6}, 2, -2, 2), x2 = rand({3, 5}, 3, -2, 2), x3 = rand({2, 3, 4}, 4, -2, 2);
  const auto view = rand({5, 6}, 5, -2, 2).transpose(0, 1).slice(0, 1, 6, 2);  // (3, 5), strided
  for (const auto& x : {x1, x2, x3, view})
    for (int axis = -1; axis < x.rank(); ++axis) {
      expect_gradients_match([=](const Inputs& v) { return softmax(v[0], axis); }, {x});
      expect_gradients_match([=](const Inputs& v) { return log_softmax(v[0], axis); }, {x});
    }
  // Length-1 lanes and an empty batch.
  expect_gradients_match([](const Inputs& v) { return softmax(v[0], 1); }, {rand({4, 1}, 6)});
  expect_gradients_match([](const Inputs& v) { return log_softmax(v[0], 0); }, {rand({0, 3}, 7)});
}

TEST(Softmax, NegativeInfinityGivesZeroProbabilityAndNoNaN) {
  // Row 0 partially masked, row 1 entirely masked, row 2 unmasked.
  auto x = rand({3, 4}, 8);
  x(0, 1) = -kInf;
  x(0, 3) = -kInf;
  for (Index k = 0; k < 4; ++k) x(1, k) = -kInf;
  const auto seed = rand({3, 4}, 9);

  Var<double> xv = variable(x);
  Var<double> y = softmax(xv);
  backward(y, seed);
  EXPECT_TRUE(all_finite(y.value()));
  EXPECT_TRUE(all_finite(xv.grad()));
  EXPECT_EQ(y.value()(0, 1), 0.0);
  EXPECT_EQ(y.value()(0, 3), 0.0);
  EXPECT_NEAR(y.value()(0, 0) + y.value()(0, 2), 1.0, 1e-15);
  for (Index k = 0; k < 4; ++k) {
    EXPECT_EQ(y.value()(1, k), 0.0);
    EXPECT_EQ(xv.grad()(1, k), 0.0);
  }
  EXPECT_EQ(xv.grad()(0, 1), 0.0);
  EXPECT_EQ(xv.grad()(0, 3), 0.0);
  tape().reset();

  xv = variable(x);
  y = log_softmax(xv);
  backward(y, seed);
  EXPECT_EQ(y.value()(0, 1), -kInf);
  for (Index k = 0; k < 4; ++k) EXPECT_EQ(y.value()(1, k), -kInf);
  EXPECT_TRUE(std::isfinite(y.value()(0, 0)) && std::isfinite(y.value()(2, 0)));
  EXPECT_TRUE(all_finite(xv.grad()));
  for (Index k = 0; k < 4; ++k) EXPECT_EQ(xv.grad()(1, k), 0.0);
  EXPECT_EQ(xv.grad()(0, 1), 0.0);
  // The finite entries get exactly the gradient of log_softmax over the unmasked entries alone.
  const Tensor<double> dx = xv.grad().clone();
  tape().reset();
  Var<double> kept = variable(Tensor<double>::from({2}, {x(0, 0), x(0, 2)}));
  backward(log_softmax(kept), Tensor<double>::from({2}, {seed(0, 0), seed(0, 2)}));
  EXPECT_NEAR(dx(0, 0), kept.grad()(0), 1e-14);
  EXPECT_NEAR(dx(0, 2), kept.grad()(1), 1e-14);
  tape().reset();

  // Finite differences agree where entries are −inf too (they stay −inf when perturbed).
  expect_gradients_match([](const Inputs& v) { return softmax(v[0]); }, {x});
}

// ---- cross_entropy ---------------------------------------------------------------------------

TEST(CrossEntropy, MatchesNaiveWithIgnoredTargets) {
  const auto logits = rand({2, 3, 5}, 10, -3, 3);
  const auto targets = IndexTensor::from({2, 3}, {4, -100, 0, 2, 1, -100});
  double total = 0;
  int count = 0;
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j) {
      if (targets(i, j) == -100) continue;
      double z = 0;
      for (Index v = 0; v < 5; ++v) z += std::exp(logits(i, j, v));
      total += std::log(z) - logits(i, j, targets(i, j));
      ++count;
    }
  EXPECT_NEAR(cross_entropy(constant(logits), targets).item(), total / count, 1e-14);
  EXPECT_NEAR(cross_entropy(constant(logits.cast<float>()), targets).item(), total / count, 1e-5);
  tape().reset();

  expect_gradients_match([=](const Inputs& v) { return cross_entropy(v[0], targets); }, {logits});
  // A strided view of the logits, a strided view of the targets and another ignore_index.
  const auto view = rand({5, 4}, 11, -2, 2).transpose(0, 1);  // (4, 5)
  const auto targets_view = IndexTensor::from({4, 2}, {1, 0, 9, 0, 3, 0, 0, 0}).select(1, 0);  // {1, 9, 3, 0}
  expect_gradients_match([=](const Inputs& v) { return cross_entropy(v[0], targets_view, 9); }, {view});
  // A single position: logits (V), target ().
  expect_gradients_match([](const Inputs& v) { return cross_entropy(v[0], IndexTensor::full({}, 2)); },
                         {rand({6}, 12)});
}

TEST(CrossEntropy, AllTargetsIgnoredGivesZeroLossAndGradient) {
  Var<double> logits = variable(rand({3, 4}, 13));
  Var<double> loss = cross_entropy(logits, IndexTensor::full({3}, -100));
  EXPECT_EQ(loss.item(), 0.0);
  backward(loss);
  ASSERT_TRUE(logits.has_grad());
  for (double g : logits.grad().to_vector()) EXPECT_EQ(g, 0.0);
  tape().reset();
}

TEST(CrossEntropy, BadTargetsAndShapesAreNamed) {
  const auto logits = constant(rand({2, 5}, 14));
  expect_error_naming([&] { cross_entropy(logits, IndexTensor::from({2}, {1, 7})); }, {"cross_entropy", "7", "5"});
  expect_error_naming([&] { cross_entropy(logits, IndexTensor::from({2}, {-3, 0})); }, {"-3", "5"});
  expect_error_naming([&] { cross_entropy(logits, IndexTensor::zeros({3})); }, {"(2, 5)", "(3)"});
}

TEST(CrossEntropy, PartiallyMaskedLogitsStayFinite) {
  auto x = rand({2, 4}, 15);
  x(0, 2) = -kInf;
  Var<double> xv = variable(x);
  Var<double> loss = cross_entropy(xv, IndexTensor::from({2}, {1, 3}));
  backward(loss);
  EXPECT_TRUE(std::isfinite(loss.item()));
  EXPECT_TRUE(all_finite(xv.grad()));
  EXPECT_EQ(xv.grad()(0, 2), 0.0);
  tape().reset();
}

// classes = C < V (the GPU model's padded head): only columns [0, C) are classes. The loss is the
// loss of the first C columns, whatever the others hold, and they get a zero gradient.
TEST(CrossEntropy, FewerClassesThanColumnsIgnoresTheRest) {
  auto logits = rand({2, 3, 7}, 18, -3, 3);
  logits(0, 1, 5) = 40;  // a huge extra column would dominate a softmax over all 7
  logits(1, 2, 6) = -kInf;
  const auto targets = IndexTensor::from({2, 3}, {4, -100, 0, 2, 1, 3});
  const Tensor<double> first = logits.slice(2, 0, 5).clone();
  const double expected = cross_entropy(constant(first), targets).item();
  EXPECT_EQ(cross_entropy(constant(logits), targets, -100, 5).item(), expected);  // the same loops over C
  EXPECT_EQ(cross_entropy(constant(logits.cast<float>()), targets, -100, 5).item(),
            cross_entropy(constant(first.cast<float>()), targets).item());
  EXPECT_EQ(cross_entropy(constant(logits), targets, -100, -1).item(), cross_entropy(constant(logits), targets).item());
  tape().reset();

  // The gradient: the sliced logits' gradient in columns [0, C), exactly 0 beyond.
  Var<double> whole = variable(logits), part = variable(first);
  backward(cross_entropy(whole, targets, -100, 5));
  backward(cross_entropy(part, targets));
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 7; ++k) EXPECT_EQ(whole.grad()(i, j, k), k < 5 ? part.grad()(i, j, k) : 0.0) << i << j << k;
  tape().reset();

  // Finite differences in double, over every column (the extra ones included: their derivative is 0).
  expect_gradients_match([=](const Inputs& v) { return cross_entropy(v[0], targets, -100, 5); }, {rand({2, 3, 7}, 19)});
  // A strided vocabulary axis, another ignore_index, C = 1 (a certain class: loss and gradient 0).
  const auto view = rand({6, 4}, 20, -2, 2).transpose(0, 1);  // (4, 6)
  const auto t4 = IndexTensor::from({4}, {1, 9, 3, 0});
  expect_gradients_match([=](const Inputs& v) { return cross_entropy(v[0], t4, 9, 4); }, {view});
  expect_gradients_match([](const Inputs& v) { return cross_entropy(v[0], IndexTensor::zeros({3}), -100, 1); },
                         {rand({3, 5}, 21)});
  // The logits used twice: the cross-entropy adds into a gradient that already exists.
  expect_gradients_match(
      [=](const Inputs& v) { return cross_entropy(v[0], targets, -100, 5) + sum_all(v[0] * v[0]); },
      {rand({2, 3, 7}, 22)});
}

TEST(CrossEntropy, TargetsMustBeClasses) {
  const auto logits = constant(rand({2, 5}, 23));
  // A column that exists but is not a class is an error, naming the class count and the width.
  expect_error_naming([&] { cross_entropy(logits, IndexTensor::from({2}, {1, 3}), -100, 3); },
                      {"cross_entropy", "target 3", "[0, 3)", "5"});
  expect_error_naming([&] { cross_entropy(logits, IndexTensor::from({2}, {1, 0}), -100, 6); },
                      {"cross_entropy", "6 classes", "5 columns"});
  // C = 0 is fine when nothing is counted.
  EXPECT_EQ(cross_entropy(logits, IndexTensor::full({2}, -100), -100, 0).item(), 0.0);
  tape().reset();
}

// ---- rms_norm --------------------------------------------------------------------------------

TEST(RmsNorm, MatchesNaiveLoop) {
  const auto x = rand({4, 6}, 16, -2, 2), gamma = rand({6}, 17, 0.5, 1.5);
  const double eps = 1e-5;
  const auto y = rms_norm(constant(x), constant(gamma), eps).value();
  for (Index i = 0; i < 4; ++i) {
    double ms = 0;
    for (Index j = 0; j < 6; ++j) ms += x(i, j) * x(i, j) / 6;
    for (Index j = 0; j < 6; ++j) EXPECT_NEAR(y(i, j), x(i, j) * gamma(j) / std::sqrt(ms + eps), 1e-14);
  }
  tape().reset();
}

TEST(RmsNorm, Gradients) {
  const auto gamma = rand({5}, 18, 0.5, 1.5);
  for (const auto& x : {rand({5}, 19), rand({3, 5}, 20), rand({2, 3, 5}, 21), rand({5, 4}, 22).transpose(0, 1)})
    expect_gradients_match([](const Inputs& v) { return rms_norm(v[0], v[1], 1e-6); }, {x, gamma});
  expect_gradients_match([](const Inputs& v) { return rms_norm(v[0], v[1], 0.1); },
                         {rand({3, 1}, 23), rand({1}, 24)});
  // More than one 64-column block of gamma.
  expect_gradients_match([](const Inputs& v) { return rms_norm(v[0], v[1], 1e-6); },
                         {rand({2, 70}, 25), rand({70}, 26)});
  expect_error_naming([] { rms_norm(constant(rand({3, 5}, 1)), constant(rand({4}, 2)), 1e-5); },
                      {"rms_norm", "(3, 5)", "(4)"});
}

// ---- swiglu ----------------------------------------------------------------------------------

TEST(Swiglu, MatchesDefinitionAndGradients) {
  const auto gate = rand({3, 4}, 27, -4, 4), up = rand({3, 4}, 28);
  const auto y = swiglu(constant(gate), constant(up)).value();
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 4; ++j)
      EXPECT_NEAR(y(i, j), gate(i, j) / (1 + std::exp(-gate(i, j))) * up(i, j), 1e-15);
  tape().reset();
  expect_gradients_match([](const Inputs& v) { return swiglu(v[0], v[1]); }, {gate, up});
  expect_gradients_match([](const Inputs& v) { return swiglu(v[0], v[1]); },
                         {rand({4, 3}, 29).transpose(0, 1), rand({2, 3, 4}, 30).select(0, 1)});
  // Only one of the two inputs wants a gradient.
  expect_gradients_match([=](const Inputs& v) { return swiglu(v[0], constant(up)); }, {gate});
  expect_gradients_match([=](const Inputs& v) { return swiglu(constant(gate), v[0]); }, {up});
  expect_error_naming([] { swiglu(constant(rand({2, 3}, 1)), constant(rand({3, 2}, 2))); },
                      {"swiglu", "(2, 3)", "(3, 2)"});
}

TEST(Swiglu, MlpGradients) {
  expect_gradients_match([](const Inputs& v) { return swiglu_mlp(v[0], v[1], v[2], v[3]); },
                         {rand({2, 3, 4}, 31), rand({5, 4}, 32), rand({5, 4}, 33), rand({4, 5}, 34)});
  expect_error_naming(
      [] { swiglu_mlp(constant(rand({2, 4}, 1)), constant(rand({5, 4}, 2)), constant(rand({5, 4}, 3)), constant(rand({5, 4}, 4))); },
      {"swiglu_mlp", "(5, 4)"});
}

// ---- rope ------------------------------------------------------------------------------------

TEST(Rope, MatchesNaiveRotationAndPreservesPairNorms) {
  const Index B = 2, S = 5, d = 8, offset = 3;
  const double theta = 500;
  const auto x = rand({B, S, d}, 35);
  const auto y = rope(constant(x), theta, offset).value();
  for (Index b = 0; b < B; ++b)
    for (Index s = 0; s < S; ++s)
      for (Index i = 0; i < d / 2; ++i) {
        const double angle = double(s + offset) * std::pow(theta, -2.0 * double(i) / double(d));
        const double lo = x(b, s, i), hi = x(b, s, i + d / 2);
        EXPECT_NEAR(y(b, s, i), lo * std::cos(angle) - hi * std::sin(angle), 1e-14);
        EXPECT_NEAR(y(b, s, i + d / 2), hi * std::cos(angle) + lo * std::sin(angle), 1e-14);
        EXPECT_NEAR(std::hypot(y(b, s, i), y(b, s, i + d / 2)), std::hypot(lo, hi), 1e-14);
      }
  // Position 0 without offset is the identity.
  const auto y0 = rope(constant(x)).value();
  for (Index j = 0; j < d; ++j) EXPECT_EQ(y0(1, 0, j), x(1, 0, j));
  tape().reset();
}

TEST(Rope, Gradients) {
  expect_gradients_match([](const Inputs& v) { return rope(v[0], 10000.0, 7); }, {rand({3, 4}, 36)});
  expect_gradients_match([](const Inputs& v) { return rope(v[0], 100.0); }, {rand({2, 2, 3, 6}, 37)});
  // (S, B, d) seen as (B, S, d): positions along a strided axis.
  expect_gradients_match([](const Inputs& v) { return rope(v[0], 50.0, 2); }, {rand({4, 2, 6}, 38).transpose(0, 1)});
  expect_error_naming([] { rope(constant(rand({2, 3, 5}, 1))); }, {"rope", "5", "(2, 3, 5)"});
}

// ---- alibi -----------------------------------------------------------------------------------

TEST(Alibi, SlopesFollowTheGeometricFormula) {
  const auto m = alibi_slopes<double>(12);
  ASSERT_EQ(m.shape(), Shape{12});
  EXPECT_NEAR(m(0), std::pow(2.0, -2.0 / 3.0), 1e-15);
  EXPECT_NEAR(m(11), 1.0 / 256.0, 1e-15);
  const auto m8 = alibi_slopes<double>(8);  // the paper's 1/2, 1/4, ..., 1/256
  for (Index h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(m8(h), 1.0 / double(2 << h));
  const auto m5 = alibi_slopes<float>(5);
  for (Index h = 0; h < 5; ++h) EXPECT_NEAR(m5(h), std::pow(2.0, -8.0 * double(h + 1) / 5.0), 1e-7);
  EXPECT_THROW(alibi_slopes<double>(0), Error);
}

TEST(Alibi, AddsTheDistancePenaltyAndPassesGradientsThrough) {
  const Index B = 2, H = 3, Tq = 4, Tk = 6, offset = 2;
  const auto scores = rand({B, H, Tq, Tk}, 39);
  const auto m = alibi_slopes<double>(int(H));
  const auto y = add_alibi(constant(scores), m, offset).value();
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < Tq; ++i)
        for (Index j = 0; j < Tk; ++j)
          EXPECT_NEAR(y(b, h, i, j), scores(b, h, i, j) - m(h) * double(i + offset - j), 1e-15);
  tape().reset();
  expect_gradients_match([=](const Inputs& v) { return add_alibi(v[0], m, offset); }, {scores});
  expect_gradients_match([=](const Inputs& v) { return add_alibi(v[0], m, 0); },
                         {rand({3, 5, 4}, 40).transpose(1, 2)});  // (H=3, Tq=4, Tk=5), strided
  expect_error_naming([&] { add_alibi(constant(rand({2, 4, 4}, 1)), m, 0); }, {"add_alibi", "(2, 4, 4)", "(3)"});
}

// ---- dropout ---------------------------------------------------------------------------------

TEST(Dropout, MaskIsReproducibleAndKeepsOneMinusP) {
  const Index n = 1 << 20;
  const double p = 0.3;
  const auto ones = Tensor<double>::full({n}, 1.0);
  const auto a = dropout(constant(ones), p, 42).value(), b = dropout(constant(ones), p, 42).value();
  const auto c = dropout(constant(ones), p, 43).value();
  Index kept = 0, same = 0, differ = 0;
  for (Index i = 0; i < n; ++i) {
    const double keep = uniform01(42, static_cast<std::uint64_t>(i)) >= p ? 1 / (1 - p) : 0.0;
    if (a(i) != keep) ADD_FAILURE() << "element " << i << ": " << a(i) << " instead of " << keep;
    kept += a(i) != 0;
    same += a(i) == b(i);
    differ += a(i) != c(i);
  }
  EXPECT_EQ(same, n);
  EXPECT_GT(differ, n / 4);
  EXPECT_NEAR(double(kept) / double(n), 1 - p, 0.003);
  tape().reset();
}

TEST(Dropout, GradientsIdentityAndErrors) {
  // Row-major logical order holds for views too: the mask of a transposed view is that of its
  // contiguous copy.
  const auto x = rand({6, 5}, 44).transpose(0, 1);
  const auto from_view = dropout(constant(x), 0.5, 7).value(), from_copy = dropout(constant(x.clone()), 0.5, 7).value();
  EXPECT_EQ(from_view.to_vector(), from_copy.to_vector());
  expect_gradients_match([](const Inputs& v) { return dropout(v[0], 0.4, 99); }, {x});
  expect_gradients_match([](const Inputs& v) { return dropout(v[0], 0.2, 5); }, {rand({2, 3, 4}, 45)});
  Var<double> xv = constant(x);
  EXPECT_EQ(dropout(xv, 0.0, 1).value().data(), x.data());
  EXPECT_EQ(dropout(xv, 0.5, 1, false).value().data(), x.data());
  expect_error_naming([&] { dropout(xv, 1.0, 1); }, {"dropout", "1"});
  expect_error_naming([&] { dropout(xv, -0.1, 1); }, {"dropout", "-0.1"});
}

// ---- masked_fill -----------------------------------------------------------------------------

TEST(MaskedFill, FillsWithBroadcastMaskAndBlocksGradient) {
  const auto x = rand({2, 3, 4}, 46);
  const auto mask = Tensor<double>::from({3, 1}, {1, 0, 1});
  const auto y = masked_fill(constant(x), mask, -kInf).value();
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) EXPECT_EQ(y(i, j, k), j == 1 ? x(i, j, k) : -kInf);
  tape().reset();
  expect_gradients_match([=](const Inputs& v) { return masked_fill(v[0], mask, 2.5); }, {x});
  expect_gradients_match([=](const Inputs& v) { return softmax(masked_fill(v[0], mask.transpose(0, 1), -kInf)); },
                         {rand({3, 3}, 47)});
  expect_error_naming([&] { masked_fill(constant(x), Tensor<double>::zeros({2, 4}), 0.0); },
                      {"masked_fill", "(2, 4)", "(2, 3, 4)"});
}

// ---- topk ------------------------------------------------------------------------------------

TEST(TopK, MatchesPartialSortOnRandomData) {
  const auto x = rand({4, 9, 7}, 48);
  for (int axis : {0, 1, 2})
    for (int k : {1, 3, int(x.size(axis))}) {
      const TopK<double> t = topk(constant(x), k, axis);
      ASSERT_EQ(t.values.size(axis), k);
      // Each lane against std::partial_sort of (−value, index) pairs.
      Index other[2], o = 0;
      for (int d = 0; d < 3; ++d)
        if (d != axis) other[o++] = x.size(d);
      for (Index p = 0; p < other[0]; ++p)
        for (Index q = 0; q < other[1]; ++q) {
          std::vector<std::pair<double, Index>> lane;
          auto at = [&](const auto& t3, Index m) -> auto& {
            Index id[3];
            for (int d = 0, r = 0; d < 3; ++d) id[d] = d == axis ? m : (r++ == 0 ? p : q);
            return t3(id[0], id[1], id[2]);
          };
          for (Index m = 0; m < x.size(axis); ++m) lane.push_back({-at(x, m), m});
          std::partial_sort(lane.begin(), lane.begin() + k, lane.end());
          for (Index m = 0; m < k; ++m) {
            EXPECT_EQ(at(t.values.value(), m), -lane[m].first);
            EXPECT_EQ(at(t.indices, m), lane[m].second);
          }
        }
    }
  tape().reset();
}

TEST(TopK, TiesGoToTheLowerIndexAndInfinityIsAllowed) {
  const auto x = Tensor<double>::from({2, 6}, {1, 3, 3, -kInf, 3, 1,  //
                                               -kInf, -kInf, 2, -kInf, 2, -kInf});
  const TopK<double> t = topk(constant(x), 5);
  EXPECT_EQ(t.indices.to_vector(), (std::vector<std::int32_t>{1, 2, 4, 0, 5, 2, 4, 0, 1, 3}));
  EXPECT_EQ(t.values.value().to_vector(), (std::vector<double>{3, 3, 3, 1, 1, 2, 2, -kInf, -kInf, -kInf}));
  EXPECT_EQ(topk(constant(x), 0).indices.numel(), 0);
  expect_error_naming([&] { topk(constant(x), 7); }, {"topk", "7", "6", "(2, 6)"});
}

TEST(TopK, ValueGradientsScatterBack) {
  expect_gradients_match([](const Inputs& v) { return topk(v[0], 3).values; }, {well_separated({4, 8}, 49)});
  expect_gradients_match([](const Inputs& v) { return topk(v[0], 2, 0).values; }, {well_separated({5, 3, 2}, 50)});
  expect_gradients_match([](const Inputs& v) { return topk(v[0], 2, 1).values; },
                         {well_separated({6, 4}, 51).transpose(0, 1)});
}

// ---- gumbel ----------------------------------------------------------------------------------

TEST(Gumbel, NoiseHasTheGumbelMeanAndIsDeterministic) {
  const auto a = gumbel_noise<double>({1 << 20}, 3), b = gumbel_noise<double>({1 << 20}, 3);
  const auto c = gumbel_noise<double>({1 << 20}, 4);
  EXPECT_NEAR(sum_all(a) / double(a.numel()), 0.5772156649, 0.01);  // Euler–Mascheroni; σ/√n ≈ 0.0013
  EXPECT_EQ(a.to_vector(), b.to_vector());
  EXPECT_NE(a.to_vector(), c.to_vector());
  const auto small = gumbel_noise<float>({2, 3}, 3);
  for (Index i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(small.data()[i], float(standard_gumbel(3, i)));
}

TEST(Gumbel, AddGumbelChangesTheTopPickWithExactGradients) {
  const auto x = well_separated({1, 6}, 52);
  const std::int32_t plain = topk(constant(x), 1).indices.item();
  std::uint64_t seed = 0;
  for (; seed < 100; ++seed)
    if (topk(add_gumbel(constant(x), seed), 1).indices.item() != plain) break;
  tape().reset();
  ASSERT_LT(seed, 100u) << "no seed changed the pick";
  const auto noisy = add_gumbel(constant(x), seed).value();
  for (Index j = 0; j < 6; ++j) EXPECT_DOUBLE_EQ(noisy(0, j), x(0, j) + standard_gumbel(seed, j));
  tape().reset();
  expect_gradients_match([=](const Inputs& v) { return topk(add_gumbel(v[0], seed), 2).values; }, {x});
}

// ---- large inputs (the multi-threaded paths) -------------------------------------------------

TEST(NnOps, LargeInputsMatchNaiveLoops) {
  const Index R = 48, V = 1000;  // 48 000 elements: above the parallel threshold
  const auto x = rand({R, V}, 70, -4, 4), gamma = rand({V}, 71, 0.5, 1.5), seed = rand({R, V}, 72);
  std::vector<std::int32_t> t(R);
  for (Index r = 0; r < R; ++r) t[r] = r % 5 == 0 ? -100 : std::int32_t(random_bits(73, r) % V);
  const auto targets = IndexTensor::from({R}, t);

  const auto p = softmax(x);
  const double loss = cross_entropy(constant(x), targets).item();
  Var<double> xv = constant(x), gv = variable(gamma);
  backward(rms_norm(xv, gv, 1e-6), seed);
  const auto y = rms_norm(constant(x), constant(gamma), 1e-6).value();
  const auto top = topk(constant(x), 4);

  double total = 0, count = 0;
  std::vector<double> dgamma(V, 0.0);
  for (Index r = 0; r < R; ++r) {
    double z = 0, squares = 0;
    for (Index v = 0; v < V; ++v) z += std::exp(x(r, v)), squares += x(r, v) * x(r, v);
    for (Index v = 0; v < V; ++v) ASSERT_NEAR(p(r, v), std::exp(x(r, v)) / z, 1e-15);
    if (t[r] != -100) total += std::log(z) - x(r, t[r]), ++count;
    const double inv = 1 / std::sqrt(squares / V + 1e-6);
    for (Index v = 0; v < V; ++v) {
      ASSERT_NEAR(y(r, v), x(r, v) * inv * gamma(v), 1e-13);
      dgamma[v] += seed(r, v) * x(r, v) * inv;
    }
    std::vector<std::pair<double, Index>> lane;
    for (Index v = 0; v < V; ++v) lane.push_back({-x(r, v), v});
    std::partial_sort(lane.begin(), lane.begin() + 4, lane.end());
    for (Index k = 0; k < 4; ++k) ASSERT_EQ(top.indices(r, k), lane[k].second);
  }
  EXPECT_NEAR(loss, total / count, 1e-12);
  for (Index v = 0; v < V; ++v) ASSERT_NEAR(gv.grad()(v), dgamma[v], 1e-11);
  tape().reset();
}

// ---- no heap use in a steady-state step ------------------------------------------------------

TEST(NnOps, SteadyStateStepAllocatesNothing) {
  Parameter<float> x(random_uniform<float>({4, 8, 16}, 60, -1, 1));
  Parameter<float> gamma(random_uniform<float>({16}, 61, 0.5, 1.5));
  Parameter<float> wg(random_uniform<float>({24, 16}, 62, -0.3f, 0.3f)), wu(random_uniform<float>({24, 16}, 63, -0.3f, 0.3f));
  Parameter<float> wd(random_uniform<float>({16, 24}, 64, -0.3f, 0.3f));
  const auto targets = IndexTensor::full({4, 8}, 3);
  const auto mask = Tensor<float>::zeros({8, 1});
  const auto slopes = alibi_slopes<float>(4);
  auto step = [&] {
    Var<float> h = rms_norm(x, gamma, 1e-5f);
    h = rope(h, 10000.0f, 2);
    h = dropout(h, 0.1f, 5);
    h = masked_fill(h, mask, 0.0f);
    h = swiglu_mlp(h, wg, wu, wd);
    h = add_gumbel(h, 9);
    Var<float> scores = add_alibi(log_softmax(h, 1), slopes, 0);
    Var<float> picked = topk(scores, 3).values;
    backward(cross_entropy(scores, targets) + sum_all(picked) + sum_all(softmax(h, 1) * h));
    tape().reset();
  };
  step();
  step();
  const auto before = heap_allocation_count();
  step();
  EXPECT_EQ(heap_allocation_count(), before);
}
