// Raw Tensor behaviour: creation, element access, views sharing memory, copies, length-1 and
// empty dimensions, lazy expressions (broadcast and strided) against naive loops, printing and
// shape errors.
#include <gtest/gtest.h>

#include <drt/core.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

using namespace drt;

namespace {

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

void expect_mentions(const std::string& message, std::initializer_list<const char*> parts) {
  for (const char* p : parts) EXPECT_NE(message.find(p), std::string::npos) << "'" << p << "' not in: " << message;
}

// 0, 1, 2, ... in row-major order, reshaped.
Tensor<float> counting(const Shape& shape) { return Tensor<float>::arange(shape.numel()).reshape(shape); }

}  // namespace

// ---- creation and access ---------------------------------------------------------------------

TEST(Tensor, CreationAndElementAccess) {
  const auto z = Tensor<float>::zeros({2, 3});
  EXPECT_EQ(z.shape(), Shape({2, 3}));
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.rank(), 2);
  EXPECT_TRUE(z.is_contiguous());
  EXPECT_TRUE(z.owns_memory());
  EXPECT_EQ(z.strides()[0], 3);
  EXPECT_EQ(z.strides()[1], 1);
  for (float v : z.to_vector()) EXPECT_EQ(v, 0.f);

  const auto f = Tensor<double>::full({4}, 2.5);
  for (double v : f.to_vector()) EXPECT_EQ(v, 2.5);

  const auto t = Tensor<double>::from({2, 2}, {1, 2, 3, 4});
  EXPECT_EQ(t(0, 0), 1);
  EXPECT_EQ(t(0, 1), 2);
  EXPECT_EQ(t(1, 0), 3);
  EXPECT_EQ(t(1, 1), 4);
  t(1, 0) = 7;
  EXPECT_EQ(t.data()[2], 7);

  const auto r = Tensor<std::int32_t>::arange(5);
  for (Index i = 0; i < 5; ++i) EXPECT_EQ(r(i), i);
  EXPECT_EQ(Tensor<float>::full({}, 3.f).item(), 3.f);
  EXPECT_EQ(Tensor<float>::full({1, 1}, 4.f).item(), 4.f);

  Arena arena;
  const auto a = Tensor<float>::zeros({3, 5}, &arena);
  EXPECT_FALSE(a.owns_memory());
  for (float v : a.to_vector()) EXPECT_EQ(v, 0.f);
  EXPECT_FALSE(Tensor<float>().defined());

  expect_mentions(error_of([] { Tensor<float>::from({2, 2}, {1, 2, 3}); }), {"from", "(2, 2)"});
  expect_mentions(error_of([&] { t(2, 0); }), {"out of range", "(2, 2)"});
  expect_mentions(error_of([&] { t(0); }), {"(2, 2)"});
}

// ---- views share memory ----------------------------------------------------------------------

TEST(TensorViews, ReshapeSharesMemoryAndInfersMinusOne) {
  const auto base = counting({2, 3, 4});
  const auto r = base.reshape({4, -1});
  EXPECT_EQ(r.shape(), Shape({4, 6}));
  EXPECT_EQ(r.data(), base.data());
  EXPECT_EQ(r(2, 1), base(1, 0, 1));  // element 13
  r(3, 5) = -1;
  EXPECT_EQ(base(1, 2, 3), -1);
  EXPECT_EQ(base.reshape({-1}).shape(), Shape({24}));
  EXPECT_EQ(base.reshape({2, -1, 2}).shape(), Shape({2, 6, 2}));
}

TEST(TensorViews, PermuteAndTransposeShareMemory) {
  const auto base = counting({2, 3, 4});
  const auto p = base.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), Shape({4, 2, 3}));
  EXPECT_FALSE(p.is_contiguous());
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) EXPECT_EQ(p(k, i, j), base(i, j, k));
  p(3, 1, 2) = 100;
  EXPECT_EQ(base(1, 2, 3), 100);

  const auto t = base.transpose(0, -1);
  EXPECT_EQ(t.shape(), Shape({4, 3, 2}));
  t(0, 2, 1) = 200;
  EXPECT_EQ(base(1, 2, 0), 200);
}

TEST(TensorViews, SliceWithStepAndSelectShareMemory) {
  const auto base = counting({3, 10});
  const auto s = base.slice(1, 1, 8, 3);  // columns 1, 4, 7
  EXPECT_EQ(s.shape(), Shape({3, 3}));
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 3; ++j) EXPECT_EQ(s(i, j), base(i, 1 + 3 * j));
  s(2, 2) = -5;
  EXPECT_EQ(base(2, 7), -5);
  EXPECT_EQ(base.slice(1, 0, 10, 4).shape(), Shape({3, 3}));  // 0, 4, 8

  const auto row = base.select(0, 1);
  EXPECT_EQ(row.shape(), Shape({10}));
  row(4) = 42;
  EXPECT_EQ(base(1, 4), 42);
  const auto col = base.select(1, 9);
  EXPECT_EQ(col.shape(), Shape({3}));
  col(0) = 43;
  EXPECT_EQ(base(0, 9), 43);
}

TEST(TensorViews, UnsqueezeSqueezeShareMemory) {
  const auto base = counting({3, 4});
  const auto u = base.unsqueeze(1);
  EXPECT_EQ(u.shape(), Shape({3, 1, 4}));
  u(2, 0, 3) = -7;
  EXPECT_EQ(base(2, 3), -7);
  EXPECT_EQ(base.unsqueeze(-1).shape(), Shape({3, 4, 1}));
  EXPECT_EQ(base.unsqueeze(0).shape(), Shape({1, 3, 4}));
  const auto sq = u.squeeze(1);
  EXPECT_EQ(sq.shape(), Shape({3, 4}));
  sq(0, 0) = -8;
  EXPECT_EQ(base(0, 0), -8);
  expect_mentions(error_of([&] { base.squeeze(0); }), {"squeeze", "(3, 4)"});
}

TEST(TensorViews, BroadcastToUsesStrideZero) {
  const auto base = counting({3, 1});
  const auto b = base.broadcast_to({2, 3, 4});
  EXPECT_EQ(b.shape(), Shape({2, 3, 4}));
  EXPECT_EQ(b.strides()[0], 0);
  EXPECT_EQ(b.strides()[2], 0);
  EXPECT_EQ(b.data(), base.data());
  base(1, 0) = 9;  // one write is seen at every repeated position
  for (Index i = 0; i < 2; ++i)
    for (Index k = 0; k < 4; ++k) EXPECT_EQ(b(i, 1, k), 9);
  b(1, 2, 3) = 11;  // and a write through the view lands on the single base element
  EXPECT_EQ(base(2, 0), 11);
  expect_mentions(error_of([&] { base.broadcast_to({3, 2, 2}); }), {"broadcast_to", "(3, 1)", "(3, 2, 2)"});
}

TEST(TensorCopies, ContiguousAndCloneCopy) {
  const auto base = counting({3, 4});
  const auto same = base.contiguous();
  EXPECT_EQ(same.data(), base.data());  // already row-major: no copy

  const auto t = base.transpose(0, 1);
  const auto c = t.contiguous();
  EXPECT_NE(c.data(), base.data());
  EXPECT_TRUE(c.is_contiguous());
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 3; ++j) EXPECT_EQ(c(i, j), base(j, i));
  c(0, 0) = 99;
  EXPECT_EQ(base(0, 0), 0);

  const auto k = base.clone();
  EXPECT_NE(k.data(), base.data());
  k(1, 1) = -1;
  EXPECT_EQ(base(1, 1), 5);
  EXPECT_EQ(base.reshape({12}).to_vector(), counting({12}).to_vector());

  Arena arena;
  const auto in_arena = t.contiguous(&arena);
  EXPECT_FALSE(in_arena.owns_memory());
  EXPECT_EQ(in_arena.to_vector(), t.to_vector());
  // Reshaping a non-contiguous tensor is refused rather than silently copying.
  expect_mentions(error_of([&] { t.reshape({12}); }), {"reshape", "contiguous"});
}

// ---- length-1 and empty dimensions -----------------------------------------------------------

TEST(TensorEdges, LengthOneDimensions) {
  const auto a = counting({3, 1});
  const auto b = counting({1, 4});
  const auto s = eval(a * 10.f + b);  // (3, 4): an outer sum
  ASSERT_EQ(s.shape(), Shape({3, 4}));
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 4; ++j) EXPECT_EQ(s(i, j), 10.f * i + j);
  const auto one = counting({1, 1, 5});
  EXPECT_EQ(one.permute({2, 1, 0}).shape(), Shape({5, 1, 1}));
  EXPECT_TRUE(one.permute({1, 0, 2}).is_contiguous());  // moving length-1 axes keeps row-major order
  EXPECT_EQ(one.squeeze(0).squeeze(0).to_vector(), counting({5}).to_vector());
  const auto ss = sum(one, 1);
  EXPECT_EQ(ss.shape(), Shape({1, 5}));
  for (Index j = 0; j < 5; ++j) EXPECT_EQ(ss(0, j), j);
}

TEST(TensorEdges, EmptyDimensionsThroughViewsExpressionsAndReductions) {
  const auto e = Tensor<float>::zeros({3, 0, 4});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.permute({2, 0, 1}).shape(), Shape({4, 3, 0}));
  EXPECT_EQ(e.reshape({0, 5}).shape(), Shape({0, 5}));
  EXPECT_EQ(e.reshape({-1, 4}).shape(), Shape({0, 4}));
  EXPECT_EQ(e.slice(0, 1, 3).shape(), Shape({2, 0, 4}));
  EXPECT_EQ(counting({3, 4}).slice(1, 2, 2).shape(), Shape({3, 0}));
  EXPECT_EQ(e.unsqueeze(1).shape(), Shape({3, 1, 0, 4}));
  EXPECT_EQ(e.clone().shape(), e.shape());
  EXPECT_TRUE(e.to_vector().empty());

  // An expression on an empty tensor evaluates to an empty tensor (and touches nothing).
  const auto x = eval(exp(e) * 2.f + Tensor<float>::full({4}, 1.f));
  EXPECT_EQ(x.shape(), Shape({3, 0, 4}));
  e.transpose(0, 2).assign(e.transpose(0, 2) + 1.f);

  // Summing along the empty axis gives zeros; along another axis, an empty result.
  const auto s1 = sum(e, 1);
  ASSERT_EQ(s1.shape(), Shape({3, 4}));
  for (float v : s1.to_vector()) EXPECT_EQ(v, 0.f);
  EXPECT_EQ(sum(e, 1, true).shape(), Shape({3, 1, 4}));
  EXPECT_EQ(sum(e, 0).shape(), Shape({0, 4}));
  EXPECT_EQ(sum_all(e), 0.f);

  // Concatenating with an empty part changes nothing.
  const auto c = concat({counting({2, 3}), Tensor<float>::zeros({0, 3})}, 0);
  EXPECT_EQ(c.to_vector(), counting({2, 3}).to_vector());
}

// ---- expressions against naive loops ---------------------------------------------------------

TEST(TensorExpressions, BroadcastingMatchesNaiveLoop) {
  const auto a = random_uniform<double>({2, 3, 1, 5}, 1, 0.1, 2.0);
  const auto b = random_uniform<double>({3, 4, 1}, 2, -1.0, 1.0);
  const auto c = random_uniform<double>({5}, 3, -1.0, 1.0);
  const auto y = eval(a * b + exp(c) - b / a + maximum(a, c));
  ASSERT_EQ(y.shape(), Shape({2, 3, 4, 5}));
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k)
        for (Index l = 0; l < 5; ++l) {
          const double av = a(i, j, 0, l), bv = b(j, k, 0), cv = c(l);
          EXPECT_NEAR(y(i, j, k, l), av * bv + std::exp(cv) - bv / av + std::max(av, cv), 1e-12);
        }
}

TEST(TensorExpressions, LazyExpressionOverNonContiguousViewsMatchesNaiveLoop) {
  const auto base = random_uniform<float>({6, 8}, 4, -2.f, 2.f);
  const auto u = base.transpose(0, 1).slice(0, 1, 8, 2);         // (4, 6): rows 1, 3, 5, 7 of the transpose
  const auto v = random_uniform<float>({6, 4}, 5).transpose(0, 1);  // (4, 6), strided
  const auto y = eval(tanh(u) * v + select(gt(u, 0.f), u, -u));
  ASSERT_EQ(y.shape(), Shape({4, 6}));
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 6; ++j) {
      const float uu = base(j, 1 + 2 * i), vv = v(i, j);
      EXPECT_NEAR(y(i, j), std::tanh(uu) * vv + std::abs(uu), 1e-6f);
    }

  // Writing (and accumulating) into a strided destination touches exactly its elements.
  const auto dst_base = Tensor<float>::zeros({6, 8});
  const auto dst = dst_base.transpose(0, 1).slice(0, 1, 8, 2);
  dst.assign(u * 2.f);
  dst += v;
  for (Index r = 0; r < 6; ++r)
    for (Index c = 0; c < 8; ++c) {
      const float expected = c % 2 == 1 ? 2.f * base(r, c) + v((c - 1) / 2, r) : 0.f;
      EXPECT_NEAR(dst_base(r, c), expected, 1e-6f) << r << ", " << c;
    }
}

TEST(TensorExpressions, LargeStridedExpressionTakesTheParallelPath) {
  const auto a = random_uniform<float>({300, 200}, 6);
  const auto b = random_uniform<float>({200}, 7);
  const auto y = eval(a.transpose(0, 1) * b.unsqueeze(1) + 1.f);  // (200, 300)
  for (Index i = 0; i < 200; i += 7)
    for (Index j = 0; j < 300; j += 11) EXPECT_FLOAT_EQ(y(i, j), a(j, i) * b(i) + 1.f);
}

// ---- printing --------------------------------------------------------------------------------

TEST(TensorPrinting, ShowsTypeShapeAndValues) {
  std::ostringstream small;
  small << Tensor<double>::from({2, 2}, {1.5, -2, 3.25, 4});
  const std::string s = small.str();
  expect_mentions(s, {"float64", "(2, 2)", "1.5", "-2", "3.25", "4"});

  std::ostringstream large;
  large << counting({2, 100});
  expect_mentions(large.str(), {"float32", "(2, 100)", "...", "99", "197"});

  std::ostringstream ints;
  ints << IndexTensor::from({3}, {7, 8, 9});
  expect_mentions(ints.str(), {"int32", "(3)", "7", "8", "9"});
}

// ---- shape errors name the op and both shapes ------------------------------------------------

TEST(TensorErrors, ShapeErrorsNameTheOpAndBothShapes) {
  const auto a = Tensor<float>::zeros({2, 3}), b = Tensor<float>::zeros({4, 5});
  expect_mentions(error_of([&] { eval(a + b); }), {"elementwise", "(2, 3)", "(4, 5)"});
  expect_mentions(error_of([&] { a.reshape({4, 2}); }), {"reshape", "(2, 3)", "(4, 2)"});
  expect_mentions(error_of([&] { matmul(a, b); }), {"matmul", "(2, 3)", "(4, 5)"});
  expect_mentions(error_of([&] { concat({a, Tensor<float>::zeros({3, 3})}, 1); }), {"concat", "(2, 3)", "(3, 3)"});
  expect_mentions(error_of([&] { concat({a, Tensor<float>::zeros({2, 3, 1})}, 0); }), {"concat", "(2, 3)", "(2, 3, 1)"});
  expect_mentions(error_of([&] { a.assign(b); }), {"(2, 3)", "(4, 5)"});
}
