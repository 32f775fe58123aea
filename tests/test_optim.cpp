// AdamW against a scalar re-implementation, the cosine schedule at its landmarks, gradient
// clipping, and AdamW minimising a quadratic through the tape.
#include <drt/core.hpp>
#include <drt/optim.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

using namespace drt;

namespace {

// Textbook AdamW on one scalar, written from the paper's formulas (not from adamw.hpp).
struct ScalarAdamW {
  double p, m = 0, v = 0;
  int t = 0;
  void step(double g, double lr, const AdamWConfig& c) {
    ++t;
    p = p - lr * c.weight_decay * p;
    m = c.beta1 * m + (1 - c.beta1) * g;
    v = c.beta2 * v + (1 - c.beta2) * g * g;
    const double m_hat = m / (1 - std::pow(c.beta1, t));
    const double v_hat = v / (1 - std::pow(c.beta2, t));
    p = p - lr * m_hat / (std::sqrt(v_hat) + c.eps);
  }
};

// A made-up gradient that varies with the step and the element (sign changes included).
double fake_gradient(int step, std::size_t param, std::size_t k, double p) {
  return std::sin(1.3 * step + 0.7 * static_cast<double>(k) + static_cast<double>(param)) * (1.0 + 0.1 * k) + 0.3 * p;
}

void compare_with_scalar_reference(const AdamWConfig& config) {
  std::vector<Parameter<double>> params;
  params.emplace_back(random_uniform<double>({3, 4}, 1, -1, 1));
  params.emplace_back(random_uniform<double>({5}, 2, -1, 1));
  params.emplace_back(random_uniform<double>({2, 1, 3}, 3, -1, 1));
  std::vector<Parameter<double>*> ptrs;
  std::vector<std::vector<ScalarAdamW>> reference;
  for (auto& p : params) {
    ptrs.push_back(&p);
    std::vector<ScalarAdamW> r;
    for (double x : p.value().to_vector()) r.push_back(ScalarAdamW{x});
    reference.push_back(r);
  }
  AdamW<double> opt(ptrs, config);

  for (int step = 0; step < 7; ++step) {
    const double lr = 0.01 * (1 + step % 3);  // a changing lr, as a schedule would give
    for (std::size_t i = 0; i < params.size(); ++i) {
      double* g = params[i].grad().data();
      for (std::size_t k = 0; k < reference[i].size(); ++k) {
        g[k] = fake_gradient(step, i, k, reference[i][k].p);
        reference[i][k].step(g[k], lr, config);
      }
    }
    opt.step(lr);
    EXPECT_EQ(opt.steps(), step + 1);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto p = params[i].value().to_vector();
      const auto m = opt.first_moment(i).to_vector();
      const auto v = opt.second_moment(i).to_vector();
      for (std::size_t k = 0; k < p.size(); ++k) {
        EXPECT_NEAR(p[k], reference[i][k].p, 1e-12) << "step " << step << " param " << i << " element " << k;
        EXPECT_NEAR(m[k], reference[i][k].m, 1e-12);
        EXPECT_NEAR(v[k], reference[i][k].v, 1e-12);
      }
    }
  }
  opt.zero_grad();
  for (auto& p : params)
    for (double g : p.grad().to_vector()) EXPECT_EQ(g, 0.0);
}

}  // namespace

TEST(AdamW, MatchesScalarReferenceWithoutWeightDecay) {
  compare_with_scalar_reference(AdamWConfig{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0});
}

TEST(AdamW, MatchesScalarReferenceWithWeightDecay) {
  compare_with_scalar_reference(AdamWConfig{.beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1});
}

TEST(AdamW, FirstStepMovesEachElementByLr) {
  // With bias correction, step 1 gives m̂ = g and v̂ = g², so |Δp| = lr·|g|/(|g|+ε) ≈ lr.
  Parameter<float> p(Tensor<float>::from({4}, {1.0f, -2.0f, 0.5f, 3.0f}));
  p.grad().assign(Tensor<float>::from({4}, {0.3f, -7.0f, 1e-3f, 20.0f}));
  AdamW<float> opt({&p}, {});
  opt.step(0.01);
  const auto v = p.value().to_vector();
  EXPECT_NEAR(v[0], 1.0f - 0.01f, 1e-6);
  EXPECT_NEAR(v[1], -2.0f + 0.01f, 1e-6);
  EXPECT_NEAR(v[2], 0.5f - 0.01f, 1e-5);
  EXPECT_NEAR(v[3], 3.0f - 0.01f, 1e-6);
}

TEST(AdamW, StateCanBeWrittenBack) {
  // Two optimisers; the second receives the first's state and must then agree step for step.
  Parameter<double> a(random_uniform<double>({6}, 5)), b(a.value());
  AdamW<double> oa({&a}, {.weight_decay = 0.05}), ob({&b}, {.weight_decay = 0.05});
  for (int s = 0; s < 3; ++s) {
    a.grad().assign(a.value() * 2.0 + 1.0);
    oa.step(0.02);
  }
  b.value().copy_from(a.value());
  ob.first_moment(0).copy_from(oa.first_moment(0));
  ob.second_moment(0).copy_from(oa.second_moment(0));
  ob.set_steps(oa.steps());
  for (int s = 0; s < 3; ++s) {
    a.grad().assign(a.value() * 2.0 + 1.0);
    b.grad().assign(b.value() * 2.0 + 1.0);
    oa.step(0.02);
    ob.step(0.02);
  }
  EXPECT_EQ(a.value().to_vector(), b.value().to_vector());
}

TEST(AdamW, RejectsBadConfigAndDuplicates) {
  Parameter<float> p(Tensor<float>::zeros({2}));
  auto message = [&](AdamWConfig c) {
    try {
      AdamW<float> opt({&p}, c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({.beta1 = 1.0}).find("beta1"), std::string::npos);
  EXPECT_NE(message({.beta2 = -0.1}).find("beta2"), std::string::npos);
  EXPECT_NE(message({.eps = 0}).find("eps"), std::string::npos);
  EXPECT_NE(message({.weight_decay = -1}).find("weight_decay"), std::string::npos);
  EXPECT_NE(message({.lr = -1}).find("lr"), std::string::npos);
  EXPECT_THROW(AdamW<float>({&p, &p}, {}), Error);
  AdamW<float> opt({&p}, {});
  EXPECT_THROW(opt.step(std::nan("")), Error);
}

TEST(AdamW, MinimisesAQuadratic) {
  // L(x) = Σ w·(x − c)², minimum at x = c; gradients come from the tape.
  const Tensor<float> target = random_uniform<float>({3, 5}, 11, -2, 2);
  const Tensor<float> weights = random_uniform<float>({3, 5}, 12, 0.5, 4);
  Parameter<float> x(Tensor<float>::zeros({3, 5}));
  AdamW<float> opt({&x}, {});
  float first_loss = 0, loss_value = 0;
  for (int step = 0; step < 600; ++step) {
    opt.zero_grad();
    Var<float> loss = sum_all(square(x - constant(target)) * constant(weights));
    backward(loss);
    loss_value = loss.item();
    if (step == 0) first_loss = loss_value;
    opt.step(step < 400 ? 0.05 : 0.005);
    tape().reset();
  }
  EXPECT_LT(loss_value, 1e-4f * first_loss);
  const auto xs = x.value().to_vector(), cs = target.to_vector();
  for (std::size_t k = 0; k < xs.size(); ++k) EXPECT_NEAR(xs[k], cs[k], 1e-2);
}

TEST(CosineSchedule, ValuesAtLandmarks) {
  const CosineSchedule s{.peak_lr = 1.0, .warmup_steps = 10, .total_steps = 110, .min_lr = 0.1};
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);   // 1 · (0+1)/10
  EXPECT_DOUBLE_EQ(s.lr(4), 0.5);
  EXPECT_DOUBLE_EQ(s.lr(9), 1.0);   // last warm-up step reaches the peak
  EXPECT_DOUBLE_EQ(s.lr(10), 1.0);  // decay starts at the peak
  EXPECT_NEAR(s.lr(60), 0.55, 1e-12);  // halfway through the decay: (peak + min)/2
  EXPECT_NEAR(s.lr(35), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4)), 1e-12);
  EXPECT_DOUBLE_EQ(s.lr(110), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(5000), 0.1);
  for (std::int64_t k = 10; k < 110; ++k) EXPECT_GT(s.lr(k), s.lr(k + 1));
}

TEST(CosineSchedule, NoWarmupAndZeroMin) {
  const CosineSchedule s{.peak_lr = 3e-4, .warmup_steps = 0, .total_steps = 100};
  EXPECT_DOUBLE_EQ(s.lr(0), 3e-4);
  EXPECT_NEAR(s.lr(50), 1.5e-4, 1e-15);
  EXPECT_EQ(s.lr(100), 0.0);
}

TEST(CosineSchedule, ErrorsNameTheField) {
  auto message = [](CosineSchedule s) {
    try {
      s.lr(0);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({.peak_lr = 0}).find("peak_lr"), std::string::npos);
  EXPECT_NE(message({.peak_lr = 1, .warmup_steps = -1, .total_steps = 5}).find("warmup_steps"), std::string::npos);
  EXPECT_NE(message({.peak_lr = 1, .warmup_steps = 10, .total_steps = 5}).find("total_steps"), std::string::npos);
  EXPECT_NE(message({.peak_lr = 1, .warmup_steps = 1, .total_steps = 5, .min_lr = 2}).find("min_lr"), std::string::npos);
  const CosineSchedule ok{.peak_lr = 1, .warmup_steps = 1, .total_steps = 5};
  EXPECT_THROW(ok.lr(-1), Error);
}

namespace {
std::vector<Parameter<double>> gradient_fixture(double scale) {
  std::vector<Parameter<double>> params;
  params.emplace_back(Tensor<double>::zeros({2, 3}));
  params.emplace_back(Tensor<double>::zeros({4}));
  params[0].grad().assign(random_uniform<double>({2, 3}, 21, -1, 1) * scale);
  params[1].grad().assign(random_uniform<double>({4}, 22, -1, 1) * scale);
  return params;
}
double naive_norm(const std::vector<Parameter<double>>& params) {
  double s = 0;
  for (const auto& p : params)
    for (double g : p.grad().to_vector()) s += g * g;
  return std::sqrt(s);
}
}  // namespace

TEST(ClipGradNorm, ClipsToMaxNormAndReportsTheOriginal) {
  auto params = gradient_fixture(5.0);
  std::vector<Parameter<double>*> ptrs{&params[0], &params[1]};
  const double before = naive_norm(params);
  const auto g0 = params[0].grad().to_vector();
  ASSERT_GT(before, 1.0);
  const double reported = clip_grad_norm(ptrs, 1.0);
  EXPECT_NEAR(reported, before, 1e-12);
  EXPECT_NEAR(naive_norm(params), 1.0, 1e-5);
  // The direction is kept: every element scaled by the same factor.
  const auto g1 = params[0].grad().to_vector();
  for (std::size_t k = 0; k < g0.size(); ++k) EXPECT_NEAR(g1[k], g0[k] / (before + 1e-6), 1e-12);
}

TEST(ClipGradNorm, LeavesSmallGradientsAlone) {
  auto params = gradient_fixture(0.1);
  std::vector<Parameter<double>*> ptrs{&params[0], &params[1]};
  const auto g0 = params[0].grad().to_vector(), g1 = params[1].grad().to_vector();
  const double before = naive_norm(params);
  ASSERT_LT(before, 1.0);
  EXPECT_NEAR(clip_grad_norm(ptrs, 1.0), before, 1e-12);
  EXPECT_EQ(params[0].grad().to_vector(), g0);
  EXPECT_EQ(params[1].grad().to_vector(), g1);
  EXPECT_THROW(clip_grad_norm(ptrs, 0.0), Error);
}

TEST(ClipGradNorm, LargeFloatGradientUsesDoubleAccumulation) {
  // 2^17 elements (the parallel path) of 0.01: norm = 0.01·√n.
  Parameter<float> p(Tensor<float>::zeros({1 << 17}));
  p.grad().fill(0.01f);
  EXPECT_NEAR(grad_norm<float>({&p}), 0.01 * std::sqrt(double(1 << 17)), 1e-5);
}
