// gca (hand-written forward and backward) against gca_composed (generic ops, tape gradients), and
// gca_composed itself against finite differences, so that the reference is verified on its own.
#include <drt/attention/gca.hpp>
#include <drt/attention/gca_composed.hpp>
#include <drt/core.hpp>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

struct Case {
  Index Z, H, Hkv, M, N, d, B, E, Kc;
};

// Random chunks with every kind of slot: valid, index −1 (weight left nonzero: the index alone
// must empty it), and a valid index with weight 0.
struct Slots {
  IndexTensor index;
  Tensor<double> weight;
};
Slots random_slots(const Case& c, std::uint64_t seed) {
  Slots s{IndexTensor::empty({c.Z, c.Kc}), rand({c.Z, c.Kc}, seed + 1, 0.1, 1.0)};
  for (Index z = 0; z < c.Z; ++z)
    for (Index i = 0; i < c.Kc; ++i) {
      s.index(z, i) = static_cast<std::int32_t>(random_bits(seed, static_cast<std::uint64_t>(z * c.Kc + i)) % c.E);
      if ((z + i) % 4 == 1) s.index(z, i) = -1;
      if ((z + 2 * i) % 5 == 3 && s.index(z, i) >= 0) s.weight(z, i) = 0.0;
    }
  return s;
}

// Largest |a − b| over the elements where keep(element) holds, over max(1, largest |b|).
template <class Keep>
double relative_error(const Tensor<double>& a, const Tensor<double>& b, Keep keep) {
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double diff = 0, size = 1;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!keep(i)) continue;
    diff = std::max(diff, std::abs(x[i] - y[i]));
    size = std::max(size, std::abs(y[i]));
  }
  return diff / size;
}

struct Result {
  Tensor<double> out, dq, dk, dv, dw;
};

template <class Op>
Result run(Op op, const Case& c, const Slots& s, double scale) {
  tape().reset();
  const Var<double> q = variable(rand({c.Z, c.H, c.M, c.d}, 41)), k = variable(rand({c.B, c.E, c.N, c.Hkv, c.d}, 42)),
                    v = variable(rand({c.B, c.E, c.N, c.Hkv, c.d}, 43)), w = variable(s.weight);
  const Var<double> out = op(q, k, v, s.index, w, scale);
  backward(out, rand(out.shape(), 44));  // the same upstream gradient for both ops
  auto grad = [](const Var<double>& x) { return x.has_grad() ? x.grad().clone() : Tensor<double>::zeros(x.shape()); };
  Result r{out.value().clone(), grad(q), grad(k), grad(v), grad(w)};
  tape().reset();
  return r;
}

const Case kCases[] = {
    {4, 4, 2, 3, 5, 4, 2, 3, 1},   // Kc = 1, two sequences
    {6, 6, 2, 4, 6, 8, 3, 4, 3},   // Kc = 3, three heads per kv head
    {4, 8, 2, 5, 7, 4, 1, 9, 8},   // Kc = 8, four heads per kv head
    {2, 2, 2, 3, 4, 4, 2, 2, 8},   // Kc = 8 with chunks retrieved more than once (E = 2)
};

}  // namespace

TEST(GcaComposed, MatchesGcaOutputAndAllGradients) {
  for (const Case& c : kCases) {
    const Slots s = random_slots(c, 100 + static_cast<std::uint64_t>(c.Kc));
    const double scale = 1.0 / std::sqrt(double(c.d));
    const Result fast = run([](auto&&... a) { return gca(a...); }, c, s, scale);
    const Result ref = run([](auto&&... a) { return gca_composed(a...); }, c, s, scale);
    auto all = [](std::size_t) { return true; };
    // gca treats weight-0 slots as masked and gives them no weight gradient (by design).
    auto weighted = [&](std::size_t i) { return s.weight.data()[i] != 0.0; };
    const std::string at = "Z=" + std::to_string(c.Z) + " H=" + std::to_string(c.H) + " Hkv=" +
                           std::to_string(c.Hkv) + " Kc=" + std::to_string(c.Kc);
    EXPECT_LT(relative_error(fast.out, ref.out, all), 1e-12) << "output, " << at;
    EXPECT_LT(relative_error(fast.dq, ref.dq, all), 1e-12) << "dq, " << at;
    EXPECT_LT(relative_error(fast.dk, ref.dk, all), 1e-12) << "dk, " << at;
    EXPECT_LT(relative_error(fast.dv, ref.dv, all), 1e-12) << "dv, " << at;
    EXPECT_LT(relative_error(fast.dw, ref.dw, weighted), 1e-12) << "dweight, " << at;
    // Not vacuous: something flowed everywhere that was compared.
    for (const Tensor<double>* t : {&ref.out, &ref.dq, &ref.dk, &ref.dv, &ref.dw}) {
      double largest = 0;
      for (double x : t->to_vector()) largest = std::max(largest, std::abs(x));
      EXPECT_GT(largest, 1e-3) << at;
    }
  }
}

TEST(GcaComposed, EmptySlotsContributeNothing) {
  // Index −1 empties a slot whatever its weight; gradients through it are exactly 0.
  const Case c{2, 2, 1, 3, 4, 4, 1, 2, 2};
  const Slots s{IndexTensor::from({2, 2}, {-1, -1, 0, -1}), Tensor<double>::from({2, 2}, {0.7, 0.3, 1.0, 0.9})};
  const Result r = run([](auto&&... a) { return gca_composed(a...); }, c, s, 0.5);
  for (Index m = 0; m < c.M; ++m)
    for (Index j = 0; j < c.d; ++j) {
      EXPECT_EQ(r.out(0, 0, m, j), 0.0);
      EXPECT_EQ(r.dq(0, 1, m, j), 0.0);
    }
  EXPECT_EQ(r.dw(0, 0), 0.0);
  EXPECT_EQ(r.dw(0, 1), 0.0);
  EXPECT_EQ(r.dw(1, 1), 0.0);
  for (Index n = 0; n < c.N; ++n)
    for (Index j = 0; j < c.d; ++j) EXPECT_EQ(r.dk(0, 1, n, 0, j), 0.0);  // chunk 1 is never retrieved
}

TEST(GcaComposed, GradientsMatchFiniteDifferences) {
  // Grouped heads, an empty slot, a weight-0 slot, and q given as a transposed (non-contiguous) view.
  // Small, because every input element costs two evaluations.
  const Case c{2, 4, 2, 2, 3, 2, 2, 3, 3};
  const Slots s = random_slots(c, 7);
  ASSERT_EQ(s.index(0, 1), -1);
  ASSERT_EQ(s.weight(1, 1), 0.0);
  expect_gradients_match(
      [&](const Inputs& x) { return gca_composed(transpose(x[0], 2, 3), x[1], x[2], s.index, x[3], 0.7); },
      {rand({c.Z, c.H, c.d, c.M}, 11), rand({c.B, c.E, c.N, c.Hkv, c.d}, 12), rand({c.B, c.E, c.N, c.Hkv, c.d}, 13),
       s.weight});
}

TEST(GcaComposed, RejectsWhatGcaRejects) {
  tape().reset();
  const Var<double> q = constant(rand({2, 3, 2, 4}, 1)), k = constant(rand({1, 2, 3, 2, 4}, 2));
  const Var<double> w = constant(rand({2, 1}, 3));
  EXPECT_THROW(gca_composed(q, k, k, IndexTensor::zeros({2, 1}), w, 1.0), Error);  // 3 heads, 2 kv heads
  const Var<double> q2 = constant(rand({2, 2, 2, 4}, 4));
  EXPECT_THROW(gca_composed(q2, k, k, IndexTensor::full({2, 1}, 2), w, 1.0), Error);  // chunk 2 of 2
  tape().reset();
}
