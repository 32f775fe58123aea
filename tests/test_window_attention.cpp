// Sliding-window ALiBi attention against a naive float64 implementation and finite differences.
#include <drt/attention/window_attention.hpp>
#include <drt/core.hpp>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

Tensor<double> naive_window_attention(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                                      const Tensor<double>& slopes, Index W, double scale) {
  const Index B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hkv = k.size(2);
  Tensor<double> out = Tensor<double>::zeros(q.shape());
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < T; ++i) {
        const Index g = h / (H / Hkv);
        std::vector<double> s;
        double mx = -1e300;
        for (Index j = std::max<Index>(0, i - W); j <= i; ++j) {
          double dot = 0;
          for (Index c = 0; c < d; ++c) dot += q(b, i, h, c) * k(b, j, g, c);
          s.push_back(scale * dot - slopes(h) * double(i - j));
          mx = std::max(mx, s.back());
        }
        double total = 0;
        for (double x : s) total += std::exp(x - mx);
        for (Index j = std::max<Index>(0, i - W), n = 0; j <= i; ++j, ++n)
          for (Index c = 0; c < d; ++c) out(b, i, h, c) += std::exp(s[n] - mx) / total * v(b, j, g, c);
      }
  return out;
}

}  // namespace

TEST(WindowAttention, ForwardMatchesNaiveAcrossBlocksAndWindows) {
  const auto slopes = Tensor<double>::from({4}, {0.5, 0.25, 0.125, 0.0625});
  for (Index W : {0, 5, 63, 64, 200})
    for (Index T : {1, 70, 150}) {
      const auto q = rand({2, T, 4, 8}, 1), k = rand({2, T, 2, 8}, 2), v = rand({2, T, 2, 8}, 3);
      const auto expected = naive_window_attention(q, k, v, slopes, W, 0.3);
      const auto got = window_attention(constant(q), constant(k), constant(v), slopes, W, 0.3).value();
      double worst = 0;
      for (Index i = 0; i < got.numel(); ++i) worst = std::max(worst, std::abs(got.data()[i] - expected.data()[i]));
      EXPECT_LT(worst, 1e-12) << "W=" << W << " T=" << T;
      tape().reset();
    }
}

TEST(WindowAttention, GradientsWithGroupedHeads) {
  const auto slopes = Tensor<double>::from({2}, {0.5, 0.125});
  // Two query blocks (T = 67 > 64) with a window reaching into the first; then a short window.
  for (auto [T, W] : {std::pair<Index, Index>{67, 66}, {12, 3}}) {
    expect_gradients_match(
        [&](const Inputs& x) { return window_attention(x[0], x[1], x[2], slopes, W, 0.7); },
        {rand({1, T, 2, 2}, 4), rand({1, T, 1, 2}, 5), rand({1, T, 1, 2}, 6)});
  }
}

TEST(WindowAttention, ShapeErrorsNameBothShapes) {
  const auto slopes = Tensor<double>::from({4}, {0.5, 0.25, 0.125, 0.0625});
  try {
    window_attention(constant(rand({1, 5, 4, 8}, 1)), constant(rand({1, 6, 2, 8}, 2)), constant(rand({1, 6, 2, 8}, 3)),
                     slopes, 3, 1.0);
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("(1, 5, 4, 8)"), std::string::npos) << m;
    EXPECT_NE(m.find("(1, 6, 2, 8)"), std::string::npos) << m;
  }
  tape().reset();
}
