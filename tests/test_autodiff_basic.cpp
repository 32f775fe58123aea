// Gradient checks of the elementwise, reduction and matmul ops, and tape behaviour.
#include <cmath>

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

// One op for several weights on one input (q, k, v): the same values as one linear per weight,
// and its gradients, including an output no gradient reaches and an input whose gradient also
// arrives by another path (so its buffer is written fresh by one op and added to by the other).
TEST(Matmul, LinearWithSharedInput) {
  const auto x = rand({2, 3, 4}, 15), w1 = rand({5, 4}, 16), w2 = rand({6, 4}, 17), w3 = rand({2, 4}, 18);
  {
    const Var<double> xv = constant(x), a = constant(w1), b = constant(w2);
    const auto y = linear_shared_input(xv, {&a, &b});
    ASSERT_EQ(y.size(), 2);
    EXPECT_EQ(y[0].value().to_vector(), linear(xv, a).value().to_vector());
    EXPECT_EQ(y[1].value().to_vector(), linear(xv, b).value().to_vector());
    tape().reset();
  }
  expect_gradients_match(
      [](const Inputs& v) {
        const auto y = linear_shared_input(v[0], {&v[1], &v[2], &v[3]});
        return concat({y[0], y[1], y[2]}, -1);
      },
      {x, w1, w2, w3});
  expect_gradients_match(
      [](const Inputs& v) {
        const auto y = linear_shared_input(v[0], {&v[1], &v[2], &v[3]});
        return concat({y[2], v[0] * 2.0, y[0]}, -1);  // y[1] unused
      },
      {x, w1, w2, w3});
  expect_gradients_match(
      [](const Inputs& v) {
        const Var<double> twice = v[0] * 2.0;  // recorded first, so its backward runs after the linear's
        const auto y = linear_shared_input(v[0], {&v[1]});
        return concat({y[0], twice}, -1);
      },
      {x, w1});
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

// Rounding to an operand precision: round to nearest, ties to even, at the 8th (bf16) or 11th
// (tf32) significant bit; exactly representable values, ±inf and NaN pass through.
TEST(MatmulPrecision, RoundsOperandsToNearestEven) {
  const float ulp_bf16 = std::ldexp(1.0f, -7);  // spacing of bf16 values in [1, 2)
  EXPECT_EQ(round_to_precision(1.0f + ulp_bf16 / 2, Precision::bf16), 1.0f);  // tie → even (1.0)
  EXPECT_EQ(round_to_precision(1.0f + 3 * ulp_bf16 / 2, Precision::bf16), 1.0f + 2 * ulp_bf16);  // tie → even
  EXPECT_EQ(round_to_precision(1.0f + 0.6f * ulp_bf16, Precision::bf16), 1.0f + ulp_bf16);
  EXPECT_EQ(round_to_precision(-1.0f - 0.4f * ulp_bf16, Precision::bf16), -1.0f);
  const float ulp_tf32 = std::ldexp(1.0f, -10);
  EXPECT_EQ(round_to_precision(1.0f + 0.6f * ulp_tf32, Precision::tf32), 1.0f + ulp_tf32);
  EXPECT_EQ(round_to_precision(1.0f + 0.6f * ulp_tf32, Precision::bf16), 1.0f);
  EXPECT_EQ(round_to_precision(0.1f, Precision::fp32), 0.1f);
  EXPECT_EQ(round_to_precision(0.375f, Precision::bf16), 0.375f);
  EXPECT_TRUE(std::isinf(round_to_precision(INFINITY, Precision::bf16)));
  EXPECT_TRUE(std::isnan(round_to_precision(NAN, Precision::bf16)));
  EXPECT_EQ(parse_precision("bf16", "x"), Precision::bf16);
  try {
    parse_precision("fp16", "run.json: key 'precision'");
    FAIL() << "fp16 is not a precision drt has";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("run.json: key 'precision': unknown precision 'fp16'"), std::string::npos)
        << e.what();
  }
}

// Under the switch a float product is the exact product of the rounded operands (the CPU's
// emulation of a tensor core); the switch is scoped, and doubles never see it.
TEST(MatmulPrecision, Bf16ProductIsTheProductOfRoundedOperands) {
  const auto a = random_uniform<float>({33, 70}, 3, -1, 1), b = random_uniform<float>({70, 21}, 4, -1, 1);
  auto rounded = [](const Tensor<float>& t, Precision p) {
    Tensor<float> r = t.clone();
    for (Index i = 0; i < r.numel(); ++i) r.data()[i] = round_to_precision(r.data()[i], p);
    return r;
  };
  const Tensor<float> exact = matmul(a, b);
  for (Precision p : {Precision::bf16, Precision::tf32}) {
    const Tensor<float> expected = matmul(rounded(a, p), rounded(b, p));
    Tensor<float> got, got_t;
    {
      MatmulPrecisionScope scope(p);
      got = matmul(a, b);
      got_t = matmul(a.transpose(0, 1).contiguous().transpose(0, 1), b);  // a transposed view, rounded too
    }
    EXPECT_EQ(matmul_precision(), Precision::fp32);
    EXPECT_EQ(got.to_vector(), expected.to_vector()) << precision_name(p);
    EXPECT_EQ(got_t.to_vector(), expected.to_vector()) << precision_name(p);
    EXPECT_NE(got.to_vector(), exact.to_vector()) << precision_name(p) << " rounded nothing";
  }
  const auto ad = random_uniform<double>({8, 9}, 5, -1, 1), bd = random_uniform<double>({9, 4}, 6, -1, 1);
  const Tensor<double> exact_d = matmul(ad, bd);
  MatmulPrecisionScope scope(Precision::bf16);
  EXPECT_EQ(matmul(ad, bd).to_vector(), exact_d.to_vector());
}

// Which scope keeps a rounded copy (the GPU's bf16_operand asks these questions; the copies here
// are stand-ins): a scope naming a storage keeps its copies however deep the read, a plain
// scope keeps the rest, a named scope alone keeps nothing else, of two scopes naming a storage the
// outer keeps it, and a named scope seeded with an earlier scope's copies finds them.
TEST(MatmulPrecision, RoundedOperandScopesKeepWhatTheyPromiseFor) {
  const float weight[4] = {}, activation[4] = {}, memory[4] = {};
  auto copy = [] { return std::make_shared<int>(0); };
  const std::vector<const void*> weights_list{weight}, memory_list{memory};
  std::vector<RoundedOperandReuse::Entry> kept;
  {
    RoundedOperandReuse weights(weights_list);
    {
      RoundedOperandReuse layer;  // as linear_shared_input opens
      RoundedOperandReuse::active()->remember(weight, 4, copy());
      RoundedOperandReuse::active()->remember(activation, 4, copy());
      EXPECT_NE(layer.find(activation, 4), nullptr);
      EXPECT_EQ(layer.copies().size(), 1u) << "the weight's copy belongs to the scope naming it";
    }
    EXPECT_NE(weights.find(weight, 4), nullptr);
    EXPECT_NE(weights.find(weight, 3), nullptr) << "a shorter read of the same storage";
    EXPECT_EQ(weights.find(weight, 5), nullptr) << "a longer read than the copy holds";
    EXPECT_EQ(weights.find(activation, 4), nullptr) << "the activation's copy ended with its scope";
    {
      RoundedOperandReuse group(memory_list);
      RoundedOperandReuse::active()->remember(activation, 4, copy());
      RoundedOperandReuse::active()->remember(memory, 4, copy());
      EXPECT_EQ(group.find(activation, 4), nullptr) << "no scope promised for the activation";
      EXPECT_NE(group.find(memory, 4), nullptr);
      EXPECT_NE(group.find(weight, 4), nullptr) << "an outer scope's copy";
    }
    kept = weights.copies();
  }
  {  // two scopes naming the same storage: the outer one keeps the copy, so it outlives the inner
    RoundedOperandReuse model(memory_list);
    {
      RoundedOperandReuse op(memory_list);
      RoundedOperandReuse::active()->remember(memory, 4, copy());
      EXPECT_TRUE(op.copies().empty()) << "the outer scope promises for longer";
    }
    EXPECT_NE(model.find(memory, 4), nullptr);
  }
  RoundedOperandReuse next(weights_list);
  EXPECT_EQ(next.find(weight, 4), nullptr);
  for (const auto& e : kept) next.remember(e.source, e.elements, e.copy);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(next.find(weight, 4), kept[0].copy);
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

// KeepGradients::leaves_only frees each intermediate gradient once its last reader has run: the
// leaves' gradients are those of a plain backward, the intermediates' are gone, and an output
// read by two records keeps its gradient until the second has run.
TEST(Tape, LeavesOnlyBackwardFreesIntermediateGradients) {
  Parameter<double> w(rand({3, 4}, 21));
  const Tensor<double> x0 = rand({2, 5, 4}, 22);
  auto step = [&](KeepGradients keep) {
    w.zero_grad();
    const Var<double> x = variable(x0);
    const auto y = linear_shared_input(x, {&w});
    const Var<double> h = tanh(reshape(y[0], {10, 3}));
    // An op whose output two records read: d/da of (a + 2a) = 3.
    const Var<double> twice = make_output(h.value().clone(), {&h});
    record_backward(twice, [h, twice] { h.accumulate_grad(twice.grad()); });
    record_backward(twice, [h, twice] { h.accumulate_grad(twice.grad() * 2.0); });
    backward(sum_all(twice * twice), keep);
    std::vector<std::vector<double>> grads = {w.grad().to_vector(), x.grad().to_vector()};
    EXPECT_TRUE(x.has_grad());
    EXPECT_EQ(h.has_grad(), keep == KeepGradients::all);
    EXPECT_EQ(twice.has_grad(), keep == KeepGradients::all);
    EXPECT_EQ(y[0].has_grad(), keep == KeepGradients::all);
    if (keep == KeepGradients::all) {  // both records ran: h's gradient is 3× twice's
      const std::vector<double> gh = h.grad().to_vector(), gt = twice.grad().to_vector();
      for (std::size_t i = 0; i < gh.size(); ++i) EXPECT_DOUBLE_EQ(gh[i], 3.0 * gt[i]);
    }
    tape().reset();
    return grads;
  };
  const auto kept = step(KeepGradients::all), freed = step(KeepGradients::leaves_only);
  EXPECT_EQ(kept, freed);  // so with leaves_only the second record of `twice` ran too
}

// With leaves_only, an op that passes its output's gradient through unchanged (a + b, a reshape)
// hands the output's gradient buffer itself to one input instead of copying it: probes recorded
// on the tape see the buffers' addresses while backward runs. The gradients equal a plain
// backward's, the two inputs of an add never share a buffer, and an input that takes a buffer
// and then receives another gradient adds it there.
TEST(Tape, LeavesOnlyBackwardHandsPassThroughGradientsOn) {
  const Tensor<double> x0 = rand({2, 6}, 31), b0 = rand({2, 6}, 32), c0 = rand({3, 4}, 33);
  auto step = [&](KeepGradients keep) {
    const Var<double> x = variable(x0), b = variable(b0);
    // Records run newest first, so each probe runs between the records either side of it.
    const double* seen[4] = {};  // r's gradient, then m's, b's and s's
    const Var<double> m = x * 2.0;
    const Var<double> m3 = m * 3.0;  // m's second gradient arrives after s's record ran
    tape().record([&] { seen[1] = m.grad().data(), seen[2] = b.grad().data(); });
    const Var<double> s = m + b;
    tape().record([&] { seen[3] = s.grad().data(); });
    const Var<double> r = reshape(s, {3, 4});
    tape().record([&] { seen[0] = r.grad().data(); });
    const Var<double> t = r + reshape(m3, {3, 4});
    backward(sum_all(tanh(t) * constant(c0)), keep);
    std::vector<std::vector<double>> grads = {x.grad().to_vector(), b.grad().to_vector()};
    if (keep == KeepGradients::leaves_only) {
      EXPECT_EQ(seen[3], seen[0]) << "reshape copied its gradient";
      EXPECT_EQ(seen[1], seen[0]) << "a + b copied its gradient to a";
      EXPECT_NE(seen[2], seen[0]) << "both inputs of a + b share one buffer";
    } else {
      EXPECT_NE(seen[3], seen[0]) << "a plain backward keeps every gradient apart";
    }
    tape().reset();
    return grads;
  };
  const auto kept = step(KeepGradients::all), passed = step(KeepGradients::leaves_only);
  EXPECT_EQ(kept, passed);
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

TEST(Tape, BackwardProfileChargesEachRecordToTheOpThatMadeIt) {
  Parameter<double> a(rand({8, 8}, 1)), b(rand({8, 8}, 2));
  Var<double> loss = sum_all(exp(matmul(a, b)));
  const std::size_t records = tape().size();
  int waits = 0;
  BackwardProfile profile([&] { ++waits; });
  tape().set_backward_observer(&profile);
  backward(loss);
  tape().set_backward_observer(nullptr);
  tape().reset();
  EXPECT_EQ(waits, int(2 * records));  // before and after every record
  long calls = 0;
  bool saw_matmul = false;
  for (const auto& e : profile.entries()) {
    calls += e.calls;
    EXPECT_GE(e.seconds, 0.0);
    saw_matmul = saw_matmul || e.op.find("matmul") != std::string::npos;
    EXPECT_EQ(e.op.find("lambda"), std::string::npos) << e.op;  // named after the op, not the closure
  }
  EXPECT_EQ(calls, long(records));
  EXPECT_TRUE(saw_matmul) << profile.table(10);
  EXPECT_NE(profile.table(10).find("total of"), std::string::npos);
}
