// Gradient checks of the differentiable views, concat, index_select, gather, scatter_add and
// embedding; the raw indexing ops against naive loops; embedding's padding row and errors.
#include <drt/core.hpp>

#include <string>
#include <vector>

#include "support/gradcheck.hpp"

using namespace drt;
using drt::testing::expect_gradients_match;
using drt::testing::Inputs;
using drt::testing::rand;

namespace {

IndexTensor ids(const Shape& shape, const std::vector<std::int32_t>& values) { return IndexTensor::from(shape, values); }

// Runs f and returns the message of the drt::Error it throws ("" and a test failure if none).
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

}  // namespace

// ---- views -----------------------------------------------------------------------------------

TEST(ViewGradients, ReshapeIncludingInferredAndNonContiguous) {
  expect_gradients_match([](const Inputs& x) { return reshape(x[0], {4, 6}); }, {rand({2, 3, 4}, 1)});
  expect_gradients_match([](const Inputs& x) { return reshape(x[0], {-1, 2}); }, {rand({2, 3, 4}, 2)});
  expect_gradients_match([](const Inputs& x) { return reshape(x[0], {20}); }, {rand({4, 5}, 3).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return reshape(x[0], {1, 3, 1}); }, {rand({3}, 4)});
  expect_gradients_match([](const Inputs& x) { return reshape(x[0], {0, 5}); }, {rand({2, 0, 5}, 5)});
}

TEST(ViewGradients, PermuteAndTranspose) {
  expect_gradients_match([](const Inputs& x) { return permute(x[0], {2, 0, 1}); }, {rand({2, 3, 4}, 6)});
  expect_gradients_match([](const Inputs& x) { return permute(x[0], {1, 0}); }, {rand({4, 5}, 7).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return transpose(x[0], 0, -1); }, {rand({2, 3, 4}, 8)});
  // A view of a view, then an op that reads the strided result.
  expect_gradients_match([](const Inputs& x) { return exp(transpose(permute(x[0], {1, 2, 0}), 0, 1)); },
                         {rand({2, 1, 4}, 9)});
}

TEST(ViewGradients, SliceWithStepAndEmptyRange) {
  expect_gradients_match([](const Inputs& x) { return slice(x[0], 1, 1, 6, 2); }, {rand({3, 7}, 10)});
  expect_gradients_match([](const Inputs& x) { return slice(x[0], -1, 0, 3); }, {rand({4, 5}, 11).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return slice(x[0], 0, 2, 2); }, {rand({3, 4}, 12)});
  // Two overlapping slices of one input: both gradients must land on the shared elements.
  expect_gradients_match([](const Inputs& x) { return slice(x[0], 0, 0, 3) * slice(x[0], 0, 1, 4); },
                         {rand({4, 2}, 13)});
}

TEST(ViewGradients, UnsqueezeSqueezeBroadcast) {
  expect_gradients_match([](const Inputs& x) { return unsqueeze(x[0], 1); }, {rand({3, 4}, 14)});
  expect_gradients_match([](const Inputs& x) { return unsqueeze(x[0], -1); }, {rand({4, 3}, 15).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return squeeze(x[0], 1); }, {rand({3, 1, 4}, 16)});
  expect_gradients_match([](const Inputs& x) { return broadcast_to(x[0], {2, 3, 4}); }, {rand({3, 1}, 17)});
  expect_gradients_match([](const Inputs& x) { return broadcast_to(x[0], {5, 4}); }, {rand({4}, 18)});
  expect_gradients_match([](const Inputs& x) { return broadcast_to(x[0], {3, 2}); },
                         {rand({2, 3}, 19).transpose(0, 1)});
}

TEST(ViewGradients, ContiguousAndConcat) {
  expect_gradients_match([](const Inputs& x) { return contiguous(x[0]); }, {rand({4, 5}, 20).transpose(0, 1)});
  expect_gradients_match([](const Inputs& x) { return contiguous(x[0]); }, {rand({2, 3}, 21)});
  expect_gradients_match([](const Inputs& x) { return concat({x[0], x[1], x[2]}, 1); },
                         {rand({2, 3, 4}, 22), rand({2, 1, 4}, 23), rand({4, 2, 2}, 24).permute({2, 1, 0})});
  expect_gradients_match([](const Inputs& x) { return concat({x[0], x[1]}, -1); }, {rand({3, 2}, 25), rand({3, 4}, 26)});
  expect_gradients_match([](const Inputs& x) { return concat({x[0], x[1]}, 0); }, {rand({0, 3}, 27), rand({2, 3}, 28)});
  // The same Var twice: both slices of the gradient add up on it.
  expect_gradients_match([](const Inputs& x) { return concat({x[0], x[0]}, 0); }, {rand({2, 3}, 29)});
}

TEST(Views, ShareMemoryWithTheirInput) {
  tape().reset();
  Var<double> x = variable(rand({3, 4}, 30));
  EXPECT_EQ(reshape(x, {4, 3}).value().data(), x.value().data());
  EXPECT_EQ(permute(x, {1, 0}).value().data(), x.value().data());
  EXPECT_EQ(slice(x, 1, 2, 4).value().data(), x.value().data() + 2);
  EXPECT_EQ(broadcast_to(x, {2, 3, 4}).value().data(), x.value().data());
  EXPECT_EQ(broadcast_to(x, {2, 3, 4}).value().strides()[0], 0);
  // A non-contiguous value is copied once, then viewed.
  Var<double> t = transpose(x, 0, 1);
  const Tensor<double> r = reshape(t, {12}).value();
  EXPECT_NE(r.data(), x.value().data());
  for (Index k = 0; k < 12; ++k) EXPECT_EQ(r(k), x.value()(k % 3, k / 3));
  tape().reset();
}

// ---- indexing --------------------------------------------------------------------------------

TEST(IndexingGradients, IndexSelectWithRepeatedIndices) {
  const IndexTensor idx = ids({5}, {2, 0, 2, 3, 2});
  expect_gradients_match([=](const Inputs& x) { return index_select(x[0], 0, idx); }, {rand({4, 3}, 31)});
  expect_gradients_match([=](const Inputs& x) { return index_select(x[0], 1, idx); },
                         {rand({5, 2, 3}, 32).permute({1, 0, 2})});
  expect_gradients_match([=](const Inputs& x) { return index_select(x[0], -1, idx); }, {rand({2, 4}, 33)});
  const IndexTensor none = IndexTensor::zeros({0});
  expect_gradients_match([=](const Inputs& x) { return index_select(x[0], 0, none); }, {rand({3, 2}, 34)});
}

TEST(IndexingGradients, GatherWithRepeatedIndices) {
  // index (2, 3) into x (4, 3) along 0; index (3, 2) into x (3, 5) along 1 (narrower on axis 0 too).
  const IndexTensor i0 = ids({2, 3}, {3, 0, 3, 3, 1, 0});
  const IndexTensor i1 = ids({2, 4}, {4, 4, 0, 2, 1, 1, 1, 3});
  expect_gradients_match([=](const Inputs& x) { return gather(x[0], 0, i0); }, {rand({4, 3}, 35)});
  expect_gradients_match([=](const Inputs& x) { return gather(x[0], 1, i1); }, {rand({3, 5}, 36)});
  expect_gradients_match([=](const Inputs& x) { return gather(x[0], -1, i1); }, {rand({5, 3}, 37).transpose(0, 1)});
  const IndexTensor i3 = ids({2, 2, 1}, {1, 0, 1, 1});
  expect_gradients_match([=](const Inputs& x) { return gather(x[0], 1, i3); }, {rand({2, 3, 2}, 38)});
}

TEST(IndexingGradients, ScatterAddToBaseAndSource) {
  const IndexTensor idx = ids({2, 3}, {0, 2, 2, 1, 2, 0});
  expect_gradients_match([=](const Inputs& x) { return scatter_add(x[0], 0, idx, x[1]); },
                         {rand({3, 3}, 39), rand({2, 3}, 40)});
  // Source larger than the index (its uncovered part gets no gradient) and strided.
  expect_gradients_match([=](const Inputs& x) { return scatter_add(x[0], 1, idx, x[1]); },
                         {rand({2, 4}, 41), rand({4, 3}, 42).transpose(0, 1)});
}

TEST(IndexingGradients, EmbeddingWithRepeatedIdsAndStridedWeight) {
  const IndexTensor tokens = ids({2, 3}, {1, 4, 1, 0, 1, 4});
  expect_gradients_match([=](const Inputs& x) { return embedding(x[0], tokens); }, {rand({5, 3}, 43)});
  expect_gradients_match([=](const Inputs& x) { return embedding(x[0], tokens); }, {rand({3, 5}, 44).transpose(0, 1)});
  expect_gradients_match([=](const Inputs& x) { return embedding(x[0], tokens.transpose(0, 1)); }, {rand({5, 2}, 45)});
  expect_gradients_match([=](const Inputs& x) { return embedding(x[0], ids({}, {3})); }, {rand({5, 2}, 46)});
}

TEST(Embedding, PaddingRowReadsButGetsNoGradient) {
  tape().reset();
  const Index V = 5, D = 3;
  const int pad = 1;
  const IndexTensor tokens = ids({2, 3}, {1, 4, 1, 0, 2, 4});
  Parameter<double> weight(rand({V, D}, 47));
  Var<double> out = embedding(weight, tokens, pad);
  // Values: every position reads its row, the padding row included.
  for (Index p = 0; p < 6; ++p)
    for (Index j = 0; j < D; ++j) EXPECT_EQ(out.value()(p / 3, p % 3, j), weight.value()(tokens(p / 3, p % 3), j));
  const Tensor<double> seed = rand({2, 3, D}, 48);
  backward(out, seed);
  // Gradients: the naive scatter of the seed, skipping the padding row.
  Tensor<double> expected = Tensor<double>::zeros({V, D});
  for (Index p = 0; p < 6; ++p)
    for (Index j = 0; j < D; ++j)
      if (tokens(p / 3, p % 3) != pad) expected(tokens(p / 3, p % 3), j) += seed(p / 3, p % 3, j);
  for (Index v = 0; v < V; ++v)
    for (Index j = 0; j < D; ++j) EXPECT_NEAR(weight.grad()(v, j), expected(v, j), 1e-12) << v << ", " << j;
  for (Index j = 0; j < D; ++j) EXPECT_EQ(weight.grad()(pad, j), 0.0);
  EXPECT_NE(weight.grad()(4, 0), 0.0);  // a row read twice got a (summed) gradient
  tape().reset();
}

TEST(Embedding, OutOfRangeIdNamesTheIdAndVocabulary) {
  tape().reset();
  Parameter<float> weight(Tensor<float>::zeros({7, 2}));
  expect_mentions(error_of([&] { embedding(weight, ids({3}, {0, 9, 1})); }), {"embedding", "9", "7"});
  expect_mentions(error_of([&] { embedding(weight, ids({1}, {-3})); }), {"embedding", "-3", "7"});
  tape().reset();
}

TEST(Indexing, OutOfRangeIndexNamesTheValueAndExtent) {
  const Tensor<float> x = Tensor<float>::zeros({3, 4});
  expect_mentions(error_of([&] { index_select(x, 1, ids({2}, {1, 11})); }), {"index_select", "11", "4"});
  expect_mentions(error_of([&] { gather(x, 0, ids({1, 2}, {0, 5})); }), {"gather", "5", "3"});
  Tensor<float> dst = Tensor<float>::zeros({3, 4});
  expect_mentions(error_of([&] { scatter_add(dst, 0, ids({1, 2}, {1, -1}), Tensor<float>::full({1, 2}, 1.f)); }),
                  {"scatter_add", "-1", "3"});
  for (float v : dst.to_vector()) EXPECT_EQ(v, 0.f);  // nothing written before the error
  expect_mentions(error_of([&] { gather(x, 0, ids({4, 5}, std::vector<std::int32_t>(20, 0))); }),
                  {"gather", "(4, 5)", "(3, 4)"});
}

// ---- raw ops against naive loops -------------------------------------------------------------

TEST(RawIndexing, ConcatMatchesNaiveLoop) {
  const Tensor<float> a = random_uniform<float>({2, 3, 4}, 50), b = random_uniform<float>({2, 3, 2}, 51);
  const Tensor<float> c = random_uniform<float>({3, 2, 1}, 52).permute({1, 0, 2});  // (2, 3, 1), strided
  const Tensor<float> out = concat({a, b, c}, 2);
  ASSERT_EQ(out.shape(), Shape({2, 3, 7}));
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 7; ++k) {
        const float ref = k < 4 ? a(i, j, k) : k < 6 ? b(i, j, k - 4) : c(i, j, 0);
        EXPECT_EQ(out(i, j, k), ref);
      }
  const Tensor<float> parts[] = {a, a};
  Arena arena;
  const Tensor<float> twice = concat(parts, 2, 0, &arena);
  ASSERT_EQ(twice.shape(), Shape({4, 3, 4}));
  EXPECT_FALSE(twice.owns_memory());
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) EXPECT_EQ(twice(i, j, k), a(i % 2, j, k));
}

TEST(RawIndexing, IndexSelectMatchesNaiveLoop) {
  const Tensor<double> x = rand({6, 4, 5}, 53).permute({1, 0, 2});  // (4, 6, 5), strided
  const IndexTensor idx = ids({8}, {5, 0, 5, 3, 3, 1, 0, 2});
  const Tensor<double> out = index_select(x, 1, idx);
  ASSERT_EQ(out.shape(), Shape({4, 8, 5}));
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 8; ++j)
      for (Index k = 0; k < 5; ++k) EXPECT_EQ(out(i, j, k), x(i, idx(j), k));
  // A strided index (every second entry of a longer one).
  const IndexTensor every_other = idx.slice(0, 0, 8, 2);
  const Tensor<double> sel = index_select(x, 1, every_other);
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 4; ++j)
      for (Index k = 0; k < 5; ++k) EXPECT_EQ(sel(i, j, k), x(i, idx(2 * j), k));
}

TEST(RawIndexing, GatherAndScatterAddMatchNaiveLoops) {
  const Tensor<double> x = rand({4, 5, 3}, 54);
  // index (3, 4, 2): fits x except along the gather axis, where values pick positions.
  std::vector<std::int32_t> values;
  for (int n = 0; n < 24; ++n) values.push_back((n * 7 + 3) % 5);
  const IndexTensor idx = ids({3, 4, 2}, values);
  const Tensor<double> g = gather(x, 1, idx);
  ASSERT_EQ(g.shape(), idx.shape());
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 4; ++j)
      for (Index k = 0; k < 2; ++k) EXPECT_EQ(g(i, j, k), x(i, idx(i, j, k), k));

  // Strided x and index along axis 0.
  const Tensor<double> xt = rand({3, 5}, 55).transpose(0, 1);  // (5, 3)
  const IndexTensor it = ids({3, 2}, {4, 0, 4, 1, 2, 2}).transpose(0, 1);  // (2, 3)
  const Tensor<double> gt = gather(xt, 0, it);
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j) EXPECT_EQ(gt(i, j), xt(it(i, j), j));

  // scatter_add into a strided destination, with a source larger than the index.
  const Tensor<double> dst_base = rand({3, 5, 4}, 56);
  const Tensor<double> dst = dst_base.permute({1, 0, 2}).contiguous().permute({1, 0, 2});  // (3, 5, 4), strided
  ASSERT_FALSE(dst.is_contiguous());
  const Tensor<double> src = rand({3, 4, 3}, 57);
  scatter_add(dst, 1, idx, src);
  Tensor<double> expected = dst_base.clone();
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 4; ++j)
      for (Index k = 0; k < 2; ++k) expected(i, idx(i, j, k), k) += src(i, j, k);
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 5; ++j)
      for (Index k = 0; k < 4; ++k) EXPECT_NEAR(dst(i, j, k), expected(i, j, k), 1e-12);
}

TEST(RawIndexing, LargeEmbeddingForwardMatchesNaiveLoop) {
  // Big enough for the parallel path.
  tape().reset();
  const Index V = 50, D = 64, N = 1200;
  std::vector<std::int32_t> values;
  for (Index n = 0; n < N; ++n) values.push_back(static_cast<std::int32_t>((n * 31 + 7) % V));
  const IndexTensor tokens = ids({N}, values);
  const Tensor<float> w = random_uniform<float>({V, D}, 58);
  const Tensor<float> out = embedding(constant(w), tokens).value();
  ASSERT_EQ(out.shape(), Shape({N, D}));
  for (Index n = 0; n < N; ++n)
    for (Index j = 0; j < D; ++j) ASSERT_EQ(out(n, j), w(values[n], j));
  const Tensor<float> sel = index_select(w, 0, tokens);
  for (Index n = 0; n < N; ++n)
    for (Index j = 0; j < D; ++j) ASSERT_EQ(sel(n, j), w(values[n], j));
  tape().reset();
}

TEST(Views, SteadyStateStepAllocatesNothing) {
  Parameter<float> table(random_uniform<float>({10, 4}, 59));
  Parameter<float> extra(random_uniform<float>({3, 4}, 60));
  const IndexTensor tokens = ids({2, 3}, {1, 2, 2, 9, 0, 1});
  const IndexTensor picks = ids({2}, {1, 1});
  const IndexTensor rows = ids({1, 4}, {0, 3, 2, 1});
  auto step = [&] {
    Var<float> e = embedding(table, tokens, 0);                       // (2, 3, 4)
    Var<float> c = concat({reshape(e, {6, 4}), Var<float>(extra)}, 0);  // (9, 4)
    Var<float> s = index_select(transpose(c, 0, 1), 1, picks);        // (4, 2)
    Var<float> g = gather(slice(c, 0, 0, 8, 2), 0, rows);
    Var<float> y = sum_all(broadcast_to(unsqueeze(s, 0), {3, 4, 2})) + sum_all(contiguous(g));
    backward(y);
    tape().reset();
  };
  step();
  step();
  const auto before = heap_allocation_count();
  step();
  EXPECT_EQ(heap_allocation_count(), before);
}
