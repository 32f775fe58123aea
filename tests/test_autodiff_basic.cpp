// Gradient checks of the elementwise, reduction and matmul ops, and tape behaviour.
#include <drt/core.hpp>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

TEST(Elementwise, BinaryOpsWithBroadcasting) {
  const auto a = rand({3, 1, 4}, 1), b = rand({2, 4}, 2, 0.5, 2.0);
  expect_gradients_match([](const Inputs& x) { return x[0] + x[1]; }, {a, b});
  expect_gradients_match([](const Inputs& x) { return x[0] - x[1]; }, {a, b});
  expect_gradients_match([](const Inputs& x) { return x[0] * x[1]; }, {a, b});
  expect_gradients_match([](const Inputs& x) { return x[0] / x[1]; }, {a, b});
  expect_gradients_match([](const Inputs& x) { return 2.0 * x[0] - x[1] / 3.0 + 1.0; }, {a, b});
}

TEST(Elementwise, UnaryOpsOnNonContiguousViews) {
  const auto base = rand({4, 5}, 3, 0.2, 1.5);
  const auto view = base.transpose(0, 1).slice(0, 1, 5);  // (4, 4), strided
  for (auto f : std::vector<drt::testing::Function>{
           [](const Inputs& x) { return exp(x[0]); },     [](const Inputs& x) { return log(x[0]); },
           [](const Inputs& x) { return sqrt(x[0]); },    [](const Inputs& x) { return rsqrt(x[0]); },
           [](const Inputs& x) { return tanh(x[0]); },    [](const Inputs& x) { return sigmoid(x[0]); },
           [](const Inputs& x) { return silu(x[0]); },    [](const Inputs& x) { return square(x[0]); },
           [](const Inputs& x) { return -x[0]; },         [](const Inputs& x) { return sin(x[0]); },
           [](const Inputs& x) { return cos(x[0]); },     [](const Inputs& x) { return pow(x[0], 1.7); },
           [](const Inputs& x) { return abs(x[0] - 0.8); }, [](const Inputs& x) { return relu(x[0] - 0.8); }}) {
    expect_gradients_match(f, {view});
  }
}

TEST(Reductions, SumMeanMaxAlongEachAxis) {
  const auto x = rand({3, 4, 5}, 4);
  for (int axis : {0, 1, 2, -1})
    for (bool keep : {false, true}) {
      expect_gradients_match([=](const Inputs& v) { return sum(v[0], axis, keep); }, {x});
      expect_gradients_match([=](const Inputs& v) { return mean(v[0], axis, keep); }, {x});
      expect_gradients_match([=](const Inputs& v) { return max(v[0], axis, keep); }, {x});
    }
  expect_gradients_match([](const Inputs& v) { return sum_all(v[0]); }, {x});
  expect_gradients_match([](const Inputs& v) { return mean_all(v[0]); }, {x});
}

TEST(Matmul, PlainBatchedSharedAndTransposed) {
  expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {rand({3, 4}, 5), rand({4, 2}, 6)});
  expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {rand({2, 3, 4}, 7), rand({2, 4, 5}, 8)});
  expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); }, {rand({2, 3, 4}, 9), rand({4, 5}, 10)});
  expect_gradients_match([](const Inputs& x) { return matmul(x[0], x[1]); },
                         {rand({4, 3}, 11).transpose(0, 1), rand({5, 4}, 12).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return linear(x[0], x[1]); }, {rand({2, 3, 4}, 13), rand({6, 4}, 14)});
}

TEST(Matmul, MatchesNaiveProductOnLargeShapes) {
  const auto a = random_uniform<float>({70, 130}, 1, -1, 1), b = random_uniform<float>({130, 90}, 2, -1, 1);
  const auto c = matmul(a, b);
  double worst = 0;
  for (Index i = 0; i < 70; ++i)
    for (Index j = 0; j < 90; ++j) {
      double ref = 0;
      for (Index k = 0; k < 130; ++k) ref += double(a(i, k)) * double(b(k, j));
      worst = std::max(worst, std::abs(ref - double(c(i, j))));
    }
  EXPECT_LT(worst, 1e-4);
}

TEST(Matmul, ShapeMismatchNamesBothShapes) {
  const auto a = Tensor<float>::zeros({2, 3}), b = Tensor<float>::zeros({4, 5});
  try {
    matmul(a, b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 3)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(4, 5)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("matmul"), std::string::npos) << e.what();
  }
}

TEST(Tape, AccumulatesParameterGradientsAcrossCalls) {
  Parameter<double> w(Tensor<double>::full({2}, 3.0));
  for (int step = 0; step < 2; ++step) {
    backward(sum_all(w * w));  // d/dw = 2w = 6 per call
    tape().reset();
  }
  EXPECT_DOUBLE_EQ(w.grad()(0), 12.0);
  w.zero_grad();
  EXPECT_DOUBLE_EQ(w.grad()(1), 0.0);
}

TEST(Tape, NoGradScopeRecordsNothing) {
  Parameter<double> w(Tensor<double>::full({2}, 3.0));
  {
    NoGradGuard guard;
    Var<double> y = sum_all(exp(w));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(tape().size(), 0u);
  }
  Var<double> y = sum_all(exp(w));
  EXPECT_TRUE(y.requires_grad());
  EXPECT_EQ(tape().size(), 2u);  // one record per op, not per element
  tape().reset();
}
