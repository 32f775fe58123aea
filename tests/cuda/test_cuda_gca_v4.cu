// test_cuda_gca_v4 — GCA versions 4 and 5 (gca_v4.cuh: bf16 tensor cores with cp.async-staged
// chunks, a query-major backward pass for dQ, δ and dW and a key-major pass for dK/dV without
// atomics; gca_v5.cuh: version 4's three kernels on wgmma), taken in bf16
// mode at M = N = d = 64, against the CPU op in double, output and the gradients of q, k, v and
// the weights; against version 3 (and 5 against 4); and the dispatch that picks them. Version 5
// runs only in sm_90a builds on a compute capability 9.0 GPU (wgmma_available); elsewhere its
// tests fail, saying so (a GPU test never skips).
//
// The CPU op runs on the SAME bf16-rounded q, k, v and output gradient (rounded here, on the
// host), so the inputs version 4 rounds as it stages them are exact, and what is left is the
// rounding it does inside, as for version 3 (test_cuda_attention.cu states the bound): P·w/Σ
// (forward), w·P and dS (backward) are rounded to bf16 before the products that consume them, a
// relative error of at most 2^-9 per term, so each result is off by a few 2^-9 of its tensor's
// largest magnitude at worst; δ = Σ_n P dP and dW are fp32 throughout. Hence 2e-2 relative to
// each tensor's largest |cpu| (kBf16Tol, as version 3's tests), far below what a fragment-layout,
// list or pipeline mistake does (whole probabilities, whole chunks' contributions moved).
//
// Versions 3 and 4 round the same quantities except in the forward (version 3 rounds P and
// scales P·V by w/Σ after the product; version 4 rounds P·w/Σ), and sum dK/dV and dW in other
// orders (version 3 by atomics): they agree within a few 2^-9 of the largest entry's bf16
// rounding, ~1e-3; kV3V4Tol = 5e-3.
//
// The cases cover: several rows (and several slots of one row) retrieving the same chunk, so
// dK/dV sum many contributions in one block; empty slots (index −1), a zero weight on a filled
// slot, a row with every slot empty; B > 1; grouped heads (H a multiple of Hkv > 1 per kv head);
// Kc = 1, 3, 5, 8 and 40 (the forward's slot table filled in two ballots); Z not a multiple of
// anything; a sequence with more slots than the dK/dV block collects at once
// (gca_v4::kListCapacity), so that block walks its list in two windows; and gradient buffers
// that are fresh (set) or not (added into).
#include "gpu_test.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include <drt/attention/gca.hpp>

namespace {

using namespace drt;
using namespace drt::gpu_test;

constexpr double kBf16Tol = 2e-2;
constexpr double kV3V4Tol = 5e-3;

// |gpu − ref| ≤ tol · max|ref|, `ref` on the host (any precision), `gpu` a DEVICE tensor (as
// expect_close asserts).
template <class T>
void expect_near_relative_to_max(const Tensor<T>& ref, const Tensor<float>& gpu, double tol, const std::string& what) {
  double largest = 0;
  for (T v : ref.to_vector()) largest = std::max(largest, std::abs(double(v)));
  ASSERT_GT(largest, 0.0) << what;
  expect_close(ref.template cast<float>(), gpu, tol * largest, 0.0, what.c_str());
}

Tensor<float> rounded_to_bf16(Tensor<float> t) {
  float* x = t.data();
  for (Index i = 0; i < t.numel(); ++i) x[i] = round_to_precision(x[i], Precision::bf16);
  return t;
}

struct GcaV4Case {
  const char* name;
  Index B, rows, H, Hkv, E, Kc;
  // index(z, i) for z in 0..Z−1 (−1 = empty); weights are random in [0.05, 1] unless zeroed.
  std::function<std::int32_t(Index z, Index i)> chunk;
  std::vector<std::pair<Index, Index>> zero_weights;  // (z, i) given weight 0
};

// The bf16-rounded inputs of a case (the CPU op then sees exactly what the kernels stage).
struct GcaV4Inputs {
  Index Z;
  Tensor<float> q, k, v, seed, weight;
  IndexTensor index;
  // 4× the usual 1/√d: peaked softmaxes, so a probability applied to the wrong key shows.
  float scale = 0.5f;
  explicit GcaV4Inputs(const GcaV4Case& c)
      : Z(c.B * c.rows),
        q(rounded_to_bf16(uniform<float>({c.B * c.rows, c.H, 64, 64}, 31))),
        k(rounded_to_bf16(uniform<float>({c.B, c.E, 64, c.Hkv, 64}, 32))),
        v(rounded_to_bf16(uniform<float>({c.B, c.E, 64, c.Hkv, 64}, 33))),
        seed(rounded_to_bf16(uniform<float>({c.B * c.rows, c.H, 64, 64}, 34))),
        weight(uniform<float>({c.B * c.rows, c.Kc}, 35, 0.05f, 1.0f)),
        index(IndexTensor::empty({c.B * c.rows, c.Kc})) {
    for (Index z = 0; z < Z; ++z)
      for (Index i = 0; i < c.Kc; ++i) index(z, i) = c.chunk(z, i);
    for (const auto& [z, i] : c.zero_weights) weight(z, i) = 0.0f;
  }
};

template <class T>
struct Result {
  Tensor<T> out, dq, dk, dv, dw;
};

// The CPU op in double on the same (bf16-rounded) values; host tensors.
Result<double> run_cpu(const GcaV4Inputs& in) {
  const Var<double> vq = variable(in.q.cast<double>()), vk = variable(in.k.cast<double>());
  const Var<double> vv = variable(in.v.cast<double>()), vw = variable(in.weight.cast<double>());
  const Var<double> out = gca(vq, vk, vv, in.index, vw, double(in.scale));
  backward(out, in.seed.cast<double>());
  Result<double> r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone(), vw.grad().clone()};
  tape().reset();
  return r;
}

// The GPU op in float under `precision`, the attention version capped at `cap`; `expected` is the
// version the dispatch must take there. Device tensors (cloned out of the tape's arena).
Result<float> run_gpu(const GcaV4Inputs& in, Precision precision, int cap, int expected) {
  cuda::attention::VersionCap lab(cap);
  MatmulPrecisionScope scope(precision);  // forward and backward both in this mode
  const cuda::attention::GcaShape shape = cuda::attention::gca_shape(in.q.shape(), in.k.shape(), in.index.shape());
  EXPECT_EQ(cuda::attention::gca_version<float>(shape, matmul_precision()), expected);
  const Var<float> vq = variable(in.q.to(Device::cuda)), vk = variable(in.k.to(Device::cuda));
  const Var<float> vv = variable(in.v.to(Device::cuda)), vw = variable(in.weight.to(Device::cuda));
  const Var<float> out = gca(vq, vk, vv, in.index, vw, in.scale);
  backward(out, in.seed.to(Device::cuda));
  Result<float> r{out.value().clone(), vq.grad().clone(), vk.grad().clone(), vv.grad().clone(), vw.grad().clone()};
  tape().reset();
  return r;
}

Result<float> run_version(const GcaV4Inputs& in, int version) { return run_gpu(in, Precision::bf16, version, version); }

std::vector<GcaV4Case> cases() {
  return {
      // Version 3's test case: grouped heads (2 per kv head), 2 sequences, empty slots from the
      // pattern (index(0, 0) = −1), a zero weight on a filled slot.
      {"v3 case", 2, 3, 4, 2, 5, 3,
       [](Index z, Index i) { return static_cast<std::int32_t>((z * 7 + i * 3) % 6) - 1; }, {{1, 1}}},
      // Kc = 8 over 3 chunks: every chunk retrieved by many rows and twice by some rows; row 0
      // retrieves nothing at all (all slots empty); Z = 7.
      {"hot chunks, Kc 8", 1, 7, 2, 2, 3, 8,
       [](Index z, Index i) { return z == 0 ? -1 : static_cast<std::int32_t>((z + i) % 4) - 1; }, {{3, 2}, {6, 7}}},
      // 3 sequences of 5 rows (Z = 15), 3 heads on one kv head; every row retrieves chunk 0 in
      // slot 0, and chunk E − 1 = 3 is never retrieved (its gradients must stay 0).
      {"3 heads per kv head, Kc 5", 3, 5, 3, 1, 4, 5,
       [](Index z, Index i) {
         if (i == 0) return 0;
         return static_cast<std::int32_t>((z * 3 + i) % 4) - 1;  // −1, 0, 1, 2
       },
       {{4, 0}}},
      // Kc = 40: the slot table is filled in two ballots of 32 slots; every fourth slot empty.
      {"Kc 40", 1, 3, 2, 2, 5, 40,
       [](Index z, Index i) { return i % 4 == 3 ? -1 : static_cast<std::int32_t>((z * 3 + i) % 5); }, {{1, 33}}},
      // Kc = 1: one slot per row; one of them empty.
      {"Kc 1", 2, 2, 2, 2, 2, 1, [](Index z, Index) { return z == 1 ? -1 : static_cast<std::int32_t>(z % 2); }, {}},
  };
}

// The newest GCA version this build and GPU run at DRT's shapes.
int newest_gca_version() { return cuda::attention::wgmma::wgmma_available() ? 5 : 4; }

void check_against_cpu(const GcaV4Case& c, int version = 4) {
  SCOPED_TRACE(::testing::Message() << c.name << ": B" << c.B << " Z" << c.B * c.rows << " H" << c.H << "/" << c.Hkv
                                    << " E" << c.E << " Kc" << c.Kc << ", version " << version);
  const GcaV4Inputs in(c);
  const Result<double> cpu = run_cpu(in);
  const Result<float> gpu = run_version(in, version);
  expect_near_relative_to_max(cpu.out, gpu.out, kBf16Tol, "out");
  expect_near_relative_to_max(cpu.dq, gpu.dq, kBf16Tol, "dq");
  expect_near_relative_to_max(cpu.dk, gpu.dk, kBf16Tol, "dk");
  expect_near_relative_to_max(cpu.dv, gpu.dv, kBf16Tol, "dv");
  expect_near_relative_to_max(cpu.dw, gpu.dw, kBf16Tol, "dweight");
}

TEST_F(Gpu, GcaVersion4MatchesCpu) {
  for (const GcaV4Case& c : cases()) check_against_cpu(c);
}

// One sequence of 520 rows × 8 slots = 4,160 entries, more than kListCapacity (4,096): the dK/dV
// blocks collect and walk their slots in two windows. 3 chunks, so each is retrieved ~1,000 times.
// Versions 4 and 5 (whose key pass walks the same lists).
TEST_F(Gpu, GcaVersion4WalksLongRetrievalLists) {
  static_assert(cuda::attention::gca_v4::kListCapacity < 520 * 8);
  for (int version = 4; version <= newest_gca_version(); ++version)
    check_against_cpu({"long lists", 1, 520, 1, 1, 3, 8,
                       [](Index z, Index i) { return static_cast<std::int32_t>((z * 5 + i) % 4) - 1; }, {{517, 2}}},
                      version);
}

// Gradients of a chunk nobody retrieved stay exactly as they were (0 here): the dK/dV block of
// such a chunk writes nothing.
TEST_F(Gpu, GcaVersion4LeavesUnretrievedChunksAlone) {
  const GcaV4Case c = cases()[2];  // chunk 3 is never retrieved
  const GcaV4Inputs in(c);
  for (int version = 4; version <= newest_gca_version(); ++version) {
    SCOPED_TRACE(::testing::Message() << "version " << version);
    const Result<float> gpu = run_version(in, version);
    const Tensor<float> dk = gpu.dk.to(Device::cpu), dv = gpu.dv.to(Device::cpu);
    for (Index b = 0; b < c.B; ++b)
      for (Index n = 0; n < 64; ++n)
        for (Index x = 0; x < 64; ++x) {
          ASSERT_EQ(dk(b, 3, n, 0, x), 0.0f);
          ASSERT_EQ(dv(b, 3, n, 0, x), 0.0f);
        }
  }
}

// A fresh gradient buffer (uninitialised: Node::grad_slot) is set, an existing one added into:
// the backward called directly, on dq, dk, dv buffers full of NaN marked fresh, and on buffers
// holding 0.25 not marked. The first must come out finite and equal to the second minus 0.25,
// including the rows of chunk 3, which nobody retrieves: zeros when fresh. Versions 4 and 5 set
// them in their kernels, and bit for bit (they compute 0.25 + g where the fresh run stores g, and
// g + 0.25 is the same sum); 2 and 3 zero-fill first, and sum dK/dV by atomics, in an order that
// changes from run to run: within 1e-6 of the largest entry.
TEST_F(Gpu, GcaBackwardSetsFreshGradientsAndAddsIntoOthers) {
  const GcaV4Case c = cases()[2];  // chunk 3 is never retrieved
  const GcaV4Inputs in(c);
  const Tensor<float> q = in.q.to(Device::cuda), k = in.k.to(Device::cuda), v = in.v.to(Device::cuda);
  const Tensor<float> w = in.weight.to(Device::cuda), seed = in.seed.to(Device::cuda);
  const IndexTensor index = in.index.to(Device::cuda);
  for (int version = 2; version <= newest_gca_version(); ++version) {
    SCOPED_TRACE(::testing::Message() << "version " << version);
    cuda::attention::VersionCap cap(version);
    MatmulPrecisionScope precision(version >= 3 ? Precision::bf16 : Precision::fp32);
    const cuda::attention::GcaShape shape = cuda::attention::gca_shape(q.shape(), k.shape(), index.shape());
    ASSERT_EQ(cuda::attention::gca_version<float>(shape, matmul_precision()), version);
    const Tensor<float> out = Tensor<float>::empty(q.shape(), nullptr, Device::cuda);
    const Tensor<float> lse = Tensor<float>::empty({q.size(0), q.size(1), c.Kc, 64}, nullptr, Device::cuda);
    cuda::gca_forward(q, k, v, index, w, in.scale, out, lse);
    auto buffers = [&](float value) {
      return std::vector<Tensor<float>>{Tensor<float>::full(q.shape(), value, nullptr, Device::cuda),
                                        Tensor<float>::full(k.shape(), value, nullptr, Device::cuda),
                                        Tensor<float>::full(v.shape(), value, nullptr, Device::cuda)};
    };
    const std::vector<Tensor<float>> fresh = buffers(std::nanf("")), added = buffers(0.25f);
    cuda::gca_backward(q, k, v, index, w, in.scale, lse, seed, &fresh[0], &fresh[1], &fresh[2],
                       static_cast<const Tensor<float>*>(nullptr), cuda::attention::FreshGradients{true, true, true});
    cuda::gca_backward(q, k, v, index, w, in.scale, lse, seed, &added[0], &added[1], &added[2],
                       static_cast<const Tensor<float>*>(nullptr));
    const char* names[] = {"dq", "dk", "dv"};
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
    }
    const Tensor<float> dk = fresh[1].to(Device::cpu), dv = fresh[2].to(Device::cpu);
    for (Index b = 0; b < c.B; ++b)
      for (Index n = 0; n < 64; ++n)
        for (Index x = 0; x < 64; ++x) {
          ASSERT_EQ(dk(b, 3, n, 0, x), 0.0f);
          ASSERT_EQ(dv(b, 3, n, 0, x), 0.0f);
        }
  }
}

// Version 5 (wgmma: the forward and both backward passes) on every case.
TEST_F(Gpu, GcaVersion5MatchesCpu) {
  ASSERT_EQ(newest_gca_version(), 5) << "version 5 needs sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a, the default) and an H100/H200";
  for (const GcaV4Case& c : cases()) check_against_cpu(c, 5);
}

// Versions 4 and 5 round the same quantities in the same places (only the tensor-core instruction
// differs, and with it the order of the fp32 sums inside a product): their outputs and gradients
// agree far more closely than either agrees with the CPU, except where a sum's last bit flips a
// bf16 rounding of P·w/Σ or dS (2^-9 of one term).
TEST_F(Gpu, GcaVersion5AgreesWithVersion4) {
  ASSERT_EQ(newest_gca_version(), 5) << "version 5 needs sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a, the default) and an H100/H200";
  for (const GcaV4Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const GcaV4Inputs in(c);
    const Result<float> v4 = run_version(in, 4), v5 = run_version(in, 5);
    expect_near_relative_to_max(v4.out.to(Device::cpu), v5.out, 2e-3, "out");
    expect_near_relative_to_max(v4.dq.to(Device::cpu), v5.dq, 2e-3, "dq");
    expect_near_relative_to_max(v4.dk.to(Device::cpu), v5.dk, 2e-3, "dk");
    expect_near_relative_to_max(v4.dv.to(Device::cpu), v5.dv, 2e-3, "dv");
    expect_near_relative_to_max(v4.dw.to(Device::cpu), v5.dw, 2e-3, "dweight");
  }
}

// Versions 3 and 4 on the same inputs, against each other (tighter than against the CPU).
TEST_F(Gpu, GcaVersion4AgreesWithVersion3) {
  const std::vector<GcaV4Case> all = cases();
  for (const GcaV4Case& c : {all[0], all[1], all[2]}) {
    SCOPED_TRACE(c.name);
    const GcaV4Inputs in(c);
    const Result<float> v3 = run_version(in, 3);
    const Result<float> v4 = run_version(in, 4);
    const Tensor<float>* pairs[][2] = {
        {&v3.out, &v4.out}, {&v3.dq, &v4.dq}, {&v3.dk, &v4.dk}, {&v3.dv, &v4.dv}, {&v3.dw, &v4.dw}};
    const char* names[] = {"out", "dq", "dk", "dv", "dweight"};
    for (int i = 0; i < 5; ++i)
      expect_near_relative_to_max(pairs[i][0]->to(Device::cpu), pairs[i][1]->to(Device::cuda), kV3V4Tol, names[i]);
  }
}

// And a bf16 version ran: version 2 (fp32 mode) on the same inputs differs by far more than fp32
// rounding (the bf16 P and dS), forward and backward.
TEST_F(Gpu, GcaVersion4DiffersFromFp32) {
  const GcaV4Inputs in(cases()[0]);
  const Result<float> v4 = run_version(in, 4);
  const Result<float> fp32 = run_gpu(in, Precision::fp32, cuda::attention::kNewestVersion, 2);
  EXPECT_GT(max_abs_difference(v4.out.to(Device::cpu), fp32.out.to(Device::cpu)), 1e-5);
  EXPECT_GT(max_abs_difference(v4.dq.to(Device::cpu), fp32.dq.to(Device::cpu)), 1e-5);
  EXPECT_GT(max_abs_difference(v4.dk.to(Device::cpu), fp32.dk.to(Device::cpu)), 1e-5);
  EXPECT_GT(max_abs_difference(v4.dv.to(Device::cpu), fp32.dv.to(Device::cpu)), 1e-5);
}

TEST_F(Gpu, GcaVersionTakesNewestAndVersionCapLowersIt) {
  using cuda::attention::gca_version;
  using cuda::attention::GcaShape;
  using cuda::attention::VersionCap;
  // {Z, H, M, d, B, E, N, Hkv, Kc, rows_per_sequence, heads_per_kv}: DRT's training shape.
  const GcaShape drt{1036, 12, 64, 64, 4, 259, 64, 12, 8, 259, 1};
  const int newest = newest_gca_version();
  EXPECT_EQ(gca_version<float>(drt, Precision::bf16), newest);
  EXPECT_EQ(gca_version<float>(drt, Precision::fp32), 2);
  EXPECT_EQ(gca_version<float>(drt, Precision::tf32), 2);
  EXPECT_EQ(gca_version<float>(drt, Precision::bf16, /*vector_aligned=*/false), 2);
  EXPECT_EQ(gca_version<double>(drt, Precision::bf16), 1);
  GcaShape narrow = drt;
  narrow.M = 32;  // not version 3's or 4's shape
  EXPECT_EQ(gca_version<float>(narrow, Precision::bf16), 2);
  GcaShape many = drt;  // more slots than version 4's slot table holds: version 3 takes them
  many.Kc = cuda::attention::gca_v4::kMaxSlots;
  EXPECT_EQ(gca_version<float>(many, Precision::bf16), newest);
  many.Kc = cuda::attention::gca_v4::kMaxSlots + 1;
  EXPECT_EQ(gca_version<float>(many, Precision::bf16), 3);
  for (int cap = cuda::attention::kNewestVersion; cap >= 1; --cap) {
    VersionCap lab(cap);
    EXPECT_EQ(gca_version<float>(drt, Precision::bf16), std::min(cap, newest)) << "cap " << cap;
    EXPECT_EQ(gca_version<float>(drt, Precision::fp32), cap >= 2 ? 2 : 1) << "cap " << cap;
  }
  EXPECT_EQ(gca_version<float>(drt, Precision::bf16), newest);  // the caps are gone again
}

}  // namespace
