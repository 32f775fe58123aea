// test_cuda_window_mma — window attention versions 3, 4 and 5 (bf16 tensor cores, taken in bf16
// mode at d = 64; version 5 by default where the build and GPU run wgmma (sm_90a, compute
// capability 9.0), else 4; older ones under attention::VersionCap) against the CPU op in double,
// output and the gradients of q, k and v; and the versions against each other. Version 5 changes
// only the forward (wgmma.cuh); its backward is version 4's.
//
// The CPU op runs on the SAME bf16-rounded q, k, v and output gradient (rounded here, on the
// host), so the inputs version 3 rounds as it stages them are exact, and what is left is the
// rounding it does inside:
//   - P is rounded to bf16 before O += P·V and dV += Pᵀ·dO, and dS before dQ += dS·K and
//     dK += dSᵀ·Q: a relative error of at most 2^-9 (bf16's unit roundoff) on each term.
//     out = Σ_j P_j v_j / Σ_j P_j with P_j ≥ 0 is then off by at most 2^-9 · Σ_j P_j |v_j| / Σ_j P_j
//     ≤ 2^-9 · max|v| ≈ 0.2% of max|v|; the gradients are sums of up to W + 1 = 513 terms
//     P_tj dO_t or dS_tj q_t of either sign, whose rounding errors are independent: they grow
//     like √n while a sum of n terms of random sign grows like √n too, so the error relative to
//     the tensor's largest magnitude stays near 2^-9, with a worst case a few times that.
//   - δ = ⟨dO, O⟩ uses the GPU's O (off by the 0.2% above), entering dS = P ∘ (dP − δ): again
//     ~2^-9 relative.
//   - Everything else is fp32 (products accumulated in fp32 by the tensor cores, softmax, lse,
//     exp2f): ~1e-6.
// So the expected error is ~0.1–0.5% of each tensor's largest magnitude and the worst case ~1%:
// 2e-2 relative to that magnitude bounds it, and still catches any fragment-layout or mask
// mistake (those move whole probabilities: errors of order the tensor's magnitude itself).
// Version 4 rounds the same values at the same points as version 3 (only the ALiBi bias is summed
// in another order, ~1e-7 relative), so the two agree far inside that bound: kV3V4Tol.
//
// Version 4's backward reads the forward's bf16 copies of q, k, v (WindowAttentionBf16Copies):
// tested by overwriting an input between forward and backward, and by a forward and a backward
// under different precisions (each falls back to rounding its own inputs). Fresh gradient
// buffers are set and existing ones added into, by every version.
#include "gpu_test.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>

#include <drt/attention/window_attention.hpp>
#include <drt/autodiff/elementwise.hpp>
#include <drt/autodiff/reduce.hpp>
#include <drt/nn/alibi.hpp>

namespace {

using namespace drt;
using namespace drt::gpu_test;

constexpr double kBf16Tol = 2e-2;
// Version 4 against version 3, relative to the largest |v3|: a P or dS whose bf16 rounding flips
// between them moves one term by 2^-8 of itself; a layout or mask mistake moves whole terms.
constexpr double kV3V4Tol = 2e-3;

// |gpu − cpu| ≤ tol · max|cpu|, the GPU result in float against the CPU's in double.
void expect_near_relative_to_max(const Tensor<double>& cpu, const Tensor<float>& gpu, double tol,
                                 const std::string& what) {
  double largest = 0;
  for (double v : cpu.to_vector()) largest = std::max(largest, std::abs(v));
  ASSERT_GT(largest, 0.0) << what;
  expect_close(cpu.cast<float>(), gpu, tol * largest, 0.0, what.c_str());
}

Tensor<float> rounded_to_bf16(Tensor<float> t) {
  float* x = t.data();
  for (Index i = 0; i < t.numel(); ++i) x[i] = round_to_precision(x[i], Precision::bf16);
  return t;
}

struct WindowCase {
  Index B, T, H, Hkv, W;
};

template <class T>
struct Result {
  Tensor<T> out, dq, dk, dv;
};

template <class T>
Result<T> run_window(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& seed,
                     const Tensor<T>& slopes, Index window, T scale, Device device) {
  const Var<T> vq = variable(q.to(device)), vk = variable(k.to(device)), vv = variable(v.to(device));
  const Var<T> out = window_attention(vq, vk, vv, slopes, window, scale);
  backward(out, seed.to(device));
  Result<T> r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone()};
  tape().reset();
  return r;
}

// The bf16-rounded inputs of a case (the CPU op then sees exactly what the kernels stage).
struct WindowInputs {
  Tensor<float> q, k, v, seed, slopes;
  // 4× the usual 1/√d: peaked softmaxes, so a probability applied to the wrong key shows
  // (near-uniform probabilities would hide it).
  float scale = 0.5f;
  explicit WindowInputs(const WindowCase& c, Index d = 64)
      : q(rounded_to_bf16(uniform<float>({c.B, c.T, c.H, d}, 21))),
        k(rounded_to_bf16(uniform<float>({c.B, c.T, c.Hkv, d}, 22))),
        v(rounded_to_bf16(uniform<float>({c.B, c.T, c.Hkv, d}, 23))),
        seed(rounded_to_bf16(uniform<float>({c.B, c.T, c.H, d}, 24))),
        slopes(alibi_slopes<float>(static_cast<int>(c.H))) {}
};

// The GPU op in bf16 mode with the attention version capped at `version` (and checked to be the
// one the dispatch takes).
Result<float> run_bf16_version(const WindowInputs& in, const WindowCase& c, int version) {
  cuda::attention::VersionCap cap(version);
  MatmulPrecisionScope scope(Precision::bf16);  // forward and backward both in bf16 mode
  EXPECT_EQ(cuda::attention::window_attention_version<float>(64, matmul_precision()), version);
  return run_window(in.q, in.k, in.v, in.seed, in.slopes, c.W, in.scale, Device::cuda);
}

// The CPU op in double on the same inputs: the reference.
Result<double> run_cpu(const WindowInputs& in, const WindowCase& c) {
  return run_window(in.q.cast<double>(), in.k.cast<double>(), in.v.cast<double>(), in.seed.cast<double>(),
                    alibi_slopes<double>(static_cast<int>(c.H)), c.W, double(in.scale), Device::cpu);
}

void check_bf16_version(const WindowCase& c, int version) {
  SCOPED_TRACE(::testing::Message() << "v" << version << " B" << c.B << " T" << c.T << " H" << c.H << "/" << c.Hkv
                                    << " W" << c.W);
  const WindowInputs in(c);
  const Tensor<float>&q = in.q, &k = in.k, &v = in.v, &seed = in.seed, &slopes = in.slopes;
  const float scale = in.scale;
  const Result<double> cpu = run_cpu(in, c);
  const Result<float> gpu = run_bf16_version(in, c, version);
  expect_near_relative_to_max(cpu.out, gpu.out, kBf16Tol, "out");
  expect_near_relative_to_max(cpu.dq, gpu.dq, kBf16Tol, "dq");
  expect_near_relative_to_max(cpu.dk, gpu.dk, kBf16Tol, "dk");
  expect_near_relative_to_max(cpu.dv, gpu.dv, kBf16Tol, "dv");
  // And a bf16 version ran: version 2 (fp32 mode) on the same inputs differs by far more than
  // fp32 rounding (the bf16 P).
  const Result<float> fp32 = run_window(q, k, v, seed, slopes, c.W, scale, Device::cuda);
  EXPECT_GT(max_abs_difference(gpu.out.to(Device::cpu), fp32.out.to(Device::cpu)), 1e-5);
  EXPECT_GT(max_abs_difference(gpu.dk.to(Device::cpu), fp32.dk.to(Device::cpu)), 1e-5);
}

// The newest window version this build and GPU run.
int newest_window_version() { return cuda::attention::wgmma::wgmma_available() ? 5 : 4; }

TEST_F(Gpu, WindowAttentionVersionFollowsPrecision) {
  using cuda::attention::window_attention_version;
  EXPECT_EQ(window_attention_version<float>(64, Precision::bf16), newest_window_version());
  EXPECT_EQ(window_attention_version<float>(64, Precision::fp32), 2);
  EXPECT_EQ(window_attention_version<float>(64, Precision::tf32), 2);
  EXPECT_EQ(window_attention_version<float>(64, Precision::bf16, /*vector_aligned=*/false), 2);
  EXPECT_EQ(window_attention_version<float>(32, Precision::bf16), 2);
  EXPECT_EQ(window_attention_version<float>(80, Precision::bf16), 1);
  EXPECT_EQ(window_attention_version<double>(64, Precision::bf16), 1);
}

TEST_F(Gpu, WindowAttentionVersionCapLowersVersion4) {
  using cuda::attention::VersionCap;
  using cuda::attention::window_attention_version;
  for (int cap = 4; cap >= 1; --cap) {
    VersionCap lab(cap);
    EXPECT_EQ(window_attention_version<float>(64, Precision::bf16), cap) << "cap " << cap;
    EXPECT_EQ(window_attention_version<float>(64, Precision::fp32), cap >= 2 ? 2 : 1) << "cap " << cap;
  }
  {
    VersionCap newest(cuda::attention::kNewestVersion);
    EXPECT_EQ(window_attention_version<float>(64, Precision::bf16), newest_window_version());
  }
  EXPECT_THROW({ VersionCap bad(cuda::attention::kNewestVersion + 1); }, Error);
}

TEST_F(Gpu, WindowAttentionBf16TensorCoresMatchCpu) {
  for (const WindowCase& c : {
           WindowCase{1, 100, 2, 2, 512},  // T below W and not a multiple of 64: one partial tile pair
           WindowCase{1, 256, 2, 2, 64},   // window edges on tile edges
           WindowCase{1, 300, 3, 3, 100},  // window edge inside a tile; T tail of 44
           WindowCase{2, 230, 4, 2, 100},  // grouped heads (2 per kv head), two sequences
           WindowCase{2, 700, 4, 2, 512},  // DRT's window: 9 key tiles per query tile
       })
    check_bf16_version(c, 3);
}

// Version 4: 128-query blocks for the forward and dQ, so T is also chosen around multiples of 128;
// warps whose 16 rows lie wholly past T, tiles the mask is skipped on (W = 512, T ≥ 640), and
// dK/dV's flat (head, query tile) walk over 2 and 4 heads per kv head.
TEST_F(Gpu, WindowAttentionVersion4MatchesCpu) {
  for (const WindowCase& c : {
           WindowCase{1, 100, 2, 2, 512},   // T below W and below one 128-query block
           WindowCase{1, 130, 2, 2, 512},   // a second 128-query block with 2 rows
           WindowCase{1, 256, 2, 2, 64},    // window edges on tile edges
           WindowCase{1, 300, 3, 3, 100},   // window edge inside a tile; T tail of 44
           WindowCase{2, 230, 4, 2, 100},   // grouped heads (2 per kv head), two sequences
           WindowCase{2, 700, 4, 2, 512},   // DRT's window: 10 key tiles per 128 queries
           WindowCase{1, 1100, 4, 1, 512},  // 4 heads per kv head; interior tiles without mask
           WindowCase{3, 200, 4, 2, 1},     // W = 1: two keys per query, almost every tile masked
       })
    check_bf16_version(c, 4);
}

// Version 5 (the forward on wgmma: warpgroups of 64 queries, a warp that does not meet a tile its
// warpgroup meets gets masked scores) on version 4's cases, and W = 30, where the band is narrower
// than a warpgroup: its first and last warps meet different tiles.
TEST_F(Gpu, WindowAttentionVersion5MatchesCpu) {
  ASSERT_EQ(newest_window_version(), 5) << "version 5 needs sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a, the default) and an H100/H200";
  for (const WindowCase& c : {
           WindowCase{1, 100, 2, 2, 512},
           WindowCase{1, 130, 2, 2, 512},
           WindowCase{1, 256, 2, 2, 64},
           WindowCase{1, 300, 3, 3, 100},
           WindowCase{2, 230, 4, 2, 100},
           WindowCase{2, 700, 4, 2, 512},
           WindowCase{1, 1100, 4, 1, 512},
           WindowCase{3, 200, 4, 2, 1},
           WindowCase{1, 400, 2, 2, 30},
       })
    check_bf16_version(c, 5);
}

// Versions 4 and 5 round the same values at the same points; only the order of the fp32 sums
// inside a product differs.
TEST_F(Gpu, WindowAttentionVersion5AgreesWithVersion4) {
  ASSERT_EQ(newest_window_version(), 5) << "version 5 needs sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a, the default) and an H100/H200";
  for (const WindowCase& c : {WindowCase{2, 700, 4, 2, 512}, WindowCase{1, 1100, 4, 1, 512}}) {
    SCOPED_TRACE(::testing::Message() << "B" << c.B << " T" << c.T << " H" << c.H << "/" << c.Hkv << " W" << c.W);
    const WindowInputs in(c);
    const Result<float> v4 = run_bf16_version(in, c, 4), v5 = run_bf16_version(in, c, 5);
    expect_near_relative_to_max(v4.out.to(Device::cpu).cast<double>(), v5.out, kV3V4Tol, "out");
    expect_near_relative_to_max(v4.dq.to(Device::cpu).cast<double>(), v5.dq, kV3V4Tol, "dq");
    expect_near_relative_to_max(v4.dk.to(Device::cpu).cast<double>(), v5.dk, kV3V4Tol, "dk");
  }
}

// Versions 3 and 4 on the same inputs, against each other (far tighter than against the CPU).
TEST_F(Gpu, WindowAttentionVersion4AgreesWithVersion3) {
  for (const WindowCase& c : {
           WindowCase{1, 300, 3, 3, 100},
           WindowCase{2, 700, 4, 2, 512},
           WindowCase{1, 1100, 4, 1, 512},
       }) {
    SCOPED_TRACE(::testing::Message() << "B" << c.B << " T" << c.T << " H" << c.H << "/" << c.Hkv << " W" << c.W);
    const WindowInputs in(c);
    const Result<float> v3 = run_bf16_version(in, c, 3);
    const Result<float> v4 = run_bf16_version(in, c, 4);
    const Tensor<float>* pairs[][2] = {{&v3.out, &v4.out}, {&v3.dq, &v4.dq}, {&v3.dk, &v4.dk}, {&v3.dv, &v4.dv}};
    const char* names[] = {"out", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i)
      expect_near_relative_to_max(pairs[i][0]->to(Device::cpu).cast<double>(), pairs[i][1]->to(Device::cuda), kV3V4Tol,
                                  names[i]);
  }
}

// The GPU op with its forward under `forward_precision` and its backward under
// `backward_precision`, and between(q, k, v) called in between with the device tensors the
// forward read (a test may overwrite them there).
template <class Between>
Result<float> run_split(const WindowInputs& in, const WindowCase& c, Precision forward_precision,
                        Precision backward_precision, Between between) {
  const Var<float> vq = variable(in.q.to(Device::cuda)), vk = variable(in.k.to(Device::cuda)),
                   vv = variable(in.v.to(Device::cuda));
  Var<float> out;
  {
    MatmulPrecisionScope scope(forward_precision);
    out = window_attention(vq, vk, vv, in.slopes, c.W, in.scale);
  }
  between(vq.value(), vk.value(), vv.value());
  {
    MatmulPrecisionScope scope(backward_precision);
    backward(out, in.seed.to(Device::cuda));
  }
  Result<float> r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone()};
  tape().reset();
  return r;
}

// The backward reads the forward's bf16 copies (k's and v's for dQ, q's for dK and dV) instead of
// rounding those inputs again: shown by breaking the promise that makes that valid (tape values
// do not change between forward and backward), as RoundedOperandsAreReusedInsideAScope
// (test_cuda_core) does for GEMMs. With k's storage overwritten after the forward, dQ must still
// be the CPU's dQ for the OLD k; a backward that rounded k again would give the new k's dQ
// (asserted to be far apart). Likewise q and dK, dV. Not checked: dK and dV after k is
// overwritten, dQ after q is (those kernels read k, v and q as fp32, once per block).
TEST_F(Gpu, WindowAttentionVersion4BackwardReadsTheForwardsCopies) {
  const WindowCase c{2, 700, 4, 2, 512};
  const WindowInputs in(c);
  ASSERT_GE(cuda::attention::window_attention_version<float>(64, Precision::bf16), 4);  // 5: its forward's copies
  WindowInputs with_new_k = in, with_new_q = in;
  with_new_k.k = rounded_to_bf16(uniform<float>(in.k.shape(), 31));
  with_new_q.q = rounded_to_bf16(uniform<float>(in.q.shape(), 32));
  const Result<double> cpu = run_cpu(in, c), cpu_new_k = run_cpu(with_new_k, c), cpu_new_q = run_cpu(with_new_q, c);
  auto largest = [](const Tensor<double>& t) {
    double m = 0;
    for (double x : t.to_vector()) m = std::max(m, std::abs(x));
    return m;
  };
  // The overwritten inputs move the gradients checked below by far more than the tolerance.
  ASSERT_GT(max_abs_difference(cpu.dq, cpu_new_k.dq), 10 * kBf16Tol * largest(cpu.dq));
  ASSERT_GT(max_abs_difference(cpu.dk, cpu_new_q.dk), 10 * kBf16Tol * largest(cpu.dk));
  ASSERT_GT(max_abs_difference(cpu.dv, cpu_new_q.dv), 10 * kBf16Tol * largest(cpu.dv));

  const Result<float> k_overwritten = run_split(
      in, c, Precision::bf16, Precision::bf16,
      [&](const Tensor<float>&, const Tensor<float>& k, const Tensor<float>&) { k.copy_from(with_new_k.k.to(Device::cuda)); });
  expect_near_relative_to_max(cpu.out, k_overwritten.out, kBf16Tol, "out");
  expect_near_relative_to_max(cpu.dq, k_overwritten.dq, kBf16Tol, "dq with k overwritten after the forward");

  const Result<float> q_overwritten = run_split(
      in, c, Precision::bf16, Precision::bf16,
      [&](const Tensor<float>& q, const Tensor<float>&, const Tensor<float>&) { q.copy_from(with_new_q.q.to(Device::cuda)); });
  expect_near_relative_to_max(cpu.dk, q_overwritten.dk, kBf16Tol, "dk with q overwritten after the forward");
  expect_near_relative_to_max(cpu.dv, q_overwritten.dv, kBf16Tol, "dv with q overwritten after the forward");
}

// A forward and a backward under different precisions: a version-2 backward after a version-4
// forward ignores the forward's copies, and a version-4 backward after a version-2 forward (which
// kept none) rounds q, k and v itself. Both match the CPU.
TEST_F(Gpu, WindowAttentionForwardAndBackwardUnderDifferentPrecisions) {
  const WindowCase c{2, 700, 4, 2, 512};
  const WindowInputs in(c);
  const Result<double> cpu = run_cpu(in, c);
  const auto nothing = [](const Tensor<float>&, const Tensor<float>&, const Tensor<float>&) {};
  const Result<float> fp32 = run_split(in, c, Precision::fp32, Precision::fp32, nothing);
  for (const auto& [forward_precision, backward_precision] : {std::pair{Precision::bf16, Precision::fp32},
                                                              std::pair{Precision::fp32, Precision::bf16}}) {
    SCOPED_TRACE(::testing::Message() << "forward " << precision_name(forward_precision) << ", backward "
                                      << precision_name(backward_precision));
    const Result<float> gpu = run_split(in, c, forward_precision, backward_precision, nothing);
    expect_near_relative_to_max(cpu.out, gpu.out, kBf16Tol, "out");
    expect_near_relative_to_max(cpu.dq, gpu.dq, kBf16Tol, "dq");
    expect_near_relative_to_max(cpu.dk, gpu.dk, kBf16Tol, "dk");
    expect_near_relative_to_max(cpu.dv, gpu.dv, kBf16Tol, "dv");
    // The bf16 half ran version 4: its results differ from all-fp32 ones by more than fp32 rounding.
    const Tensor<float>& bf16_result = forward_precision == Precision::bf16 ? gpu.out : gpu.dk;
    const Tensor<float>& fp32_result = forward_precision == Precision::bf16 ? fp32.out : fp32.dk;
    EXPECT_GT(max_abs_difference(bf16_result.to(Device::cpu), fp32_result.to(Device::cpu)), 1e-5);
  }
}

// Gradients of some inputs only: the op then holds only the copies its backward will read (k's
// and v's for dQ alone, q's for dK and dV alone), and the backward makes dO's copy only for dK
// and dV. The gradients asked for still match the CPU.
TEST_F(Gpu, WindowAttentionVersion4GradientsOfSomeInputs) {
  const WindowCase c{1, 300, 3, 3, 100};
  const WindowInputs in(c);
  const Result<double> cpu = run_cpu(in, c);
  MatmulPrecisionScope bf16(Precision::bf16);
  for (const bool query_side : {true, false}) {
    SCOPED_TRACE(query_side ? "dq alone" : "dk and dv alone");
    auto input = [](const Tensor<float>& x, bool wanted) {
      return wanted ? variable(x.to(Device::cuda)) : constant(x.to(Device::cuda));
    };
    const Var<float> vq = input(in.q, query_side), vk = input(in.k, !query_side), vv = input(in.v, !query_side);
    const Var<float> out = window_attention(vq, vk, vv, in.slopes, c.W, in.scale);
    backward(out, in.seed.to(Device::cuda));
    if (query_side) {
      expect_near_relative_to_max(cpu.dq, vq.grad(), kBf16Tol, "dq");
      EXPECT_FALSE(vk.has_grad());
    } else {
      expect_near_relative_to_max(cpu.dk, vk.grad(), kBf16Tol, "dk");
      expect_near_relative_to_max(cpu.dv, vv.grad(), kBf16Tol, "dv");
      EXPECT_FALSE(vq.has_grad());
    }
    tape().reset();
  }
}

// Version 4's forward can write its output's bf16 copy for the output projection as it writes the
// output (the op's `rounded`). The output must be the same with and without it, bit for bit, and
// the copy exactly bf16_copy of it, padding rows past T included (T = 700 is not a multiple of
// the 128-query block). Without bf16 (version 2) no copy is made.
TEST_F(Gpu, WindowAttentionVersion4WritesTheBf16CopyOfItsOutput) {
  const WindowCase c{2, 700, 4, 2, 512};
  const WindowInputs in(c);
  auto forward = [&](Precision p, std::shared_ptr<void>* rounded) {
    MatmulPrecisionScope scope(p);
    tape().reset();
    const Tensor<float> out = window_attention(constant(in.q.to(Device::cuda)), constant(in.k.to(Device::cuda)),
                                               constant(in.v.to(Device::cuda)), in.slopes, c.W, in.scale, rounded)
                                  .value()
                                  .clone();
    tape().reset();
    return out;
  };
  std::shared_ptr<void> copy, none;
  const Tensor<float> with_copy = forward(Precision::bf16, &copy), plain = forward(Precision::bf16, nullptr);
  EXPECT_EQ(with_copy.to_vector(), plain.to_vector());
  expect_bf16_copy_of(with_copy, copy, "window attention's output");
  forward(Precision::fp32, &none);
  EXPECT_FALSE(none) << "a copy from version 2";
}

// Version 4's backward writes the bf16 copies of dq, dk, dv as they end up (Node::grad_rounded,
// for the q, k, v projections' backward), exactly bf16_copy of each gradient; q, k and v also
// feed a product recorded after the attention, whose backward runs first, so the kernels add to
// an existing gradient and the copies must be of the sums. Version 2 (fp32) writes none.
TEST_F(Gpu, WindowAttentionVersion4BackwardWritesTheBf16CopiesOfItsGradients) {
  const WindowCase c{2, 700, 4, 2, 512};
  const WindowInputs in(c);
  for (Precision p : {Precision::bf16, Precision::fp32}) {
    SCOPED_TRACE(p == Precision::bf16 ? "bf16" : "fp32");
    MatmulPrecisionScope scope(p);
    tape().reset();
    const Var<float> q = variable(in.q.to(Device::cuda)), k = variable(in.k.to(Device::cuda)),
                     v = variable(in.v.to(Device::cuda));
    const Var<float> out = window_attention(q, k, v, in.slopes, c.W, in.scale);
    const Var<float> side = sum_all(q) + sum_all(k * 2.0f) + sum_all(v * 3.0f);  // its backward runs first
    backward(sum_all(out * constant(in.seed.to(Device::cuda))) + side);
    for (const Var<float>* x : {&q, &k, &v}) {
      if (p == Precision::bf16) expect_bf16_copy_of(x->grad(), x->node()->grad_rounded, "a gradient of the attention");
      else EXPECT_FALSE(x->node()->grad_rounded) << "a copy from version 2";
    }
    tape().reset();
  }
}

// A fresh gradient buffer (uninitialised: Node::grad_slot) is set, an existing one added into:
// the backward called directly, on dq, dk, dv buffers full of NaN marked fresh, and on buffers
// holding 0.25 not marked. The first must come out finite and equal to the second minus 0.25 (T
// = 700 ends in a partial tile, whose missing rows must not be read or written). Versions 4 and 5
// (whose backward is 4's) set them in their kernels, bit for bit (they compute 0.25 + g where the
// fresh run stores g, and g + 0.25 is the same sum), with the bf16 copies of what they set;
// versions 2 and 3 zero-fill first: within 1e-6 of the largest entry.
TEST_F(Gpu, WindowAttentionBackwardSetsFreshGradientsAndAddsIntoOthers) {
  const WindowCase c{2, 700, 4, 2, 512};
  const WindowInputs in(c);
  const Tensor<float> q = in.q.to(Device::cuda), k = in.k.to(Device::cuda), v = in.v.to(Device::cuda);
  const Tensor<float> seed = in.seed.to(Device::cuda), slopes = in.slopes.to(Device::cuda);
  for (int version = 2; version <= newest_window_version(); ++version) {
    SCOPED_TRACE(::testing::Message() << "version " << version);
    cuda::attention::VersionCap cap(version);
    MatmulPrecisionScope precision(version >= 3 ? Precision::bf16 : Precision::fp32);
    ASSERT_EQ(cuda::attention::window_attention_version<float>(64, matmul_precision()), version);
    const Tensor<float> out = Tensor<float>::empty(q.shape(), nullptr, Device::cuda);
    const Tensor<float> lse = Tensor<float>::empty({c.B, c.H, c.T}, nullptr, Device::cuda);
    cuda::window_attention_forward(q, k, v, slopes, c.W, in.scale, out, lse);
    auto buffers = [&](float value) {
      return std::vector<Tensor<float>>{Tensor<float>::full(q.shape(), value, nullptr, Device::cuda),
                                        Tensor<float>::full(k.shape(), value, nullptr, Device::cuda),
                                        Tensor<float>::full(v.shape(), value, nullptr, Device::cuda)};
    };
    const std::vector<Tensor<float>> fresh = buffers(std::nanf("")), added = buffers(0.25f);
    WindowAttentionBf16Copies fresh_copies;
    cuda::window_attention_backward(q, k, v, slopes, c.W, in.scale, out, lse, seed, &fresh[0], &fresh[1], &fresh[2],
                                    nullptr, &fresh_copies, cuda::attention::FreshGradients{true, true, true});
    cuda::window_attention_backward(q, k, v, slopes, c.W, in.scale, out, lse, seed, &added[0], &added[1], &added[2]);
    const char* names[] = {"dq", "dk", "dv"};
    const std::shared_ptr<void>* copies[] = {&fresh_copies.q, &fresh_copies.k, &fresh_copies.v};
    for (int t = 0; t < 3; ++t) {
      const std::vector<float> set = fresh[t].to(Device::cpu).to_vector(), sum = added[t].to(Device::cpu).to_vector();
      double largest = 0;
      for (float x : set) largest = std::max(largest, std::abs(double(x)));  // NaN is not larger
      EXPECT_GT(largest, 0.0) << names[t] << " is all zeros";
      const double tolerance = version >= 4 ? 0.0 : 1e-6 * largest;
      for (std::size_t i = 0; i < set.size(); ++i) {
        ASSERT_TRUE(std::isfinite(set[i])) << names[t] << "[" << i << "] kept the buffer's NaN";
        ASSERT_NEAR(set[i] + 0.25f, sum[i], tolerance) << names[t] << "[" << i << "]";
      }
      if (version >= 4) expect_bf16_copy_of(fresh[t], *copies[t], names[t]);
    }
  }
}

}  // namespace
