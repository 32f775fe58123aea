// GCA against a naive float64 implementation and finite differences (spec §6, §15.1–15.3).
#include <drt/attention/gca.hpp>
#include <drt/core.hpp>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

// out[z,h,m] = Σ_i w[z,i] · softmax_n(scale q·k_n) v_n, written as plainly as possible.
Tensor<double> naive_gca(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                         const IndexTensor& index, const Tensor<double>& w, double scale) {
  const Index Z = q.size(0), H = q.size(1), M = q.size(2), d = q.size(3);
  const Index B = k.size(0), N = k.size(2), Hkv = k.size(3), Kc = index.size(1);
  Tensor<double> out = Tensor<double>::zeros(q.shape());
  for (Index z = 0; z < Z; ++z)
    for (Index h = 0; h < H; ++h)
      for (Index m = 0; m < M; ++m)
        for (Index i = 0; i < Kc; ++i) {
          const int e = index(z, i);
          if (e < 0) continue;
          const Index b = z / (Z / B), g = h / (H / Hkv);
          std::vector<double> s(N);
          double mx = -1e300, total = 0;
          for (Index n = 0; n < N; ++n) {
            s[n] = 0;
            for (Index c = 0; c < d; ++c) s[n] += scale * q(z, h, m, c) * k(b, e, n, g, c);
            mx = std::max(mx, s[n]);
          }
          for (Index n = 0; n < N; ++n) total += std::exp(s[n] - mx);
          for (Index n = 0; n < N; ++n)
            for (Index c = 0; c < d; ++c) out(z, h, m, c) += w(z, i) * std::exp(s[n] - mx) / total * v(b, e, n, g, c);
        }
  return out;
}

struct Case {
  Index Z, H, Hkv, M, N, d, B, E, Kc;
};

IndexTensor random_index(const Case& c, std::uint64_t seed, bool with_empty_slots) {
  IndexTensor idx = IndexTensor::empty({c.Z, c.Kc});
  for (Index z = 0; z < c.Z; ++z)
    for (Index i = 0; i < c.Kc; ++i) {
      int e = static_cast<int>(random_bits(seed, z * c.Kc + i) % c.E);
      if (with_empty_slots && (z + i) % 3 == 2) e = -1;
      idx(z, i) = e;
    }
  return idx;
}

}  // namespace

TEST(Gca, ForwardMatchesNaive) {
  for (const Case& c : {Case{4, 4, 2, 3, 5, 4, 2, 3, 1}, Case{4, 4, 2, 3, 5, 4, 2, 3, 3}, Case{2, 2, 1, 4, 6, 4, 1, 9, 8},
                       Case{2, 2, 2, 3, 150, 4, 1, 3, 3}}) {  // N = 150: three streamed key blocks
    const auto q = rand({c.Z, c.H, c.M, c.d}, 1), k = rand({c.B, c.E, c.N, c.Hkv, c.d}, 2),
               v = rand({c.B, c.E, c.N, c.Hkv, c.d}, 3), w = rand({c.Z, c.Kc}, 4, 0.1, 1.0);
    const IndexTensor idx = random_index(c, 5, true);
    const auto expected = naive_gca(q, k, v, idx, w, 0.5);
    const auto got = gca(constant(q), constant(k), constant(v), idx, constant(w), 0.5).value();
    double worst = 0;
    for (Index i = 0; i < got.numel(); ++i) worst = std::max(worst, std::abs(got.data()[i] - expected.data()[i]));
    EXPECT_LT(worst, 1e-12) << "Kc=" << c.Kc;
    tape().reset();
  }
}

TEST(Gca, GradientsOfQueriesKeysValuesAndWeights) {
  for (const Case& c : {Case{4, 4, 2, 3, 5, 4, 2, 3, 1}, Case{4, 4, 2, 3, 5, 4, 2, 3, 3}, Case{2, 2, 1, 2, 4, 4, 1, 9, 8},
                       Case{1, 1, 1, 2, 70, 2, 1, 2, 2}}) {  // N = 70: two key blocks
    const IndexTensor idx = random_index(c, 7, true);
    expect_gradients_match([&](const Inputs& x) { return gca(x[0], x[1], x[2], idx, x[3], 0.7); },
                           {rand({c.Z, c.H, c.M, c.d}, 11), rand({c.B, c.E, c.N, c.Hkv, c.d}, 12),
                            rand({c.B, c.E, c.N, c.Hkv, c.d}, 13), rand({c.Z, c.Kc}, 14, 0.1, 1.0)});
  }
}

TEST(Gca, ZeroedKeyValueRowIsSoftmaxOffByOne) {
  // One chunk whose last key and value are zero: out = Σ_n exp(s_n) v_n / (1 + Σ_n exp(s_n)) over the others.
  const Case c{1, 1, 1, 2, 4, 3, 1, 1, 1};
  auto k = rand({1, 1, c.N, 1, c.d}, 21), v = rand({1, 1, c.N, 1, c.d}, 22);
  for (Index j = 0; j < c.d; ++j) k(0, 0, c.N - 1, 0, j) = 0, v(0, 0, c.N - 1, 0, j) = 0;
  const auto q = rand({1, 1, c.M, c.d}, 23);
  IndexTensor idx = IndexTensor::zeros({1, 1});
  const auto out = gca(constant(q), constant(k), constant(v), idx, constant(Tensor<double>::full({1, 1}, 1.0)), 1.0).value();
  for (Index m = 0; m < c.M; ++m)
    for (Index j = 0; j < c.d; ++j) {
      double num = 0, den = 1;
      for (Index n = 0; n + 1 < c.N; ++n) {
        double s = 0;
        for (Index t = 0; t < c.d; ++t) s += q(0, 0, m, t) * k(0, 0, n, 0, t);
        num += std::exp(s) * v(0, 0, n, 0, j);
        den += std::exp(s);
      }
      EXPECT_NEAR(out(0, 0, m, j), num / den, 1e-12);
    }
  tape().reset();
}

TEST(Gca, EmptySlotsCostNothingAndNeverNaN) {
  // A row whose every slot is empty (index −1 or weight 0) gives 0 output and finite, zero gradients.
  const Case c{2, 2, 2, 3, 4, 4, 1, 2, 2};
  IndexTensor idx = IndexTensor::from({2, 2}, {-1, -1, 0, 1});
  const auto w = Tensor<double>::from({2, 2}, {0.5, 0.5, 0.0, 0.0});
  Var<double> q = variable(rand({c.Z, c.H, c.M, c.d}, 31)), k = variable(rand({1, 2, c.N, c.Hkv, c.d}, 32)),
              v = variable(rand({1, 2, c.N, c.Hkv, c.d}, 33)), wv = variable(w);
  Var<double> out = gca(q, k, v, idx, wv, 1.0);
  for (double x : out.value().to_vector()) EXPECT_EQ(x, 0.0);
  backward(sum_all(out * 2.0));
  for (const Var<double>* g : {&q, &k, &v, &wv})
    for (double x : g->grad().to_vector()) EXPECT_EQ(x, 0.0);
  tape().reset();
}
