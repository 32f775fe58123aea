// bench_attention — speed of drt's two attention ops, of GCA composed from generic ops, and of a
// tiny DRT training step, against the GEMM speed of this machine measured in the same run.
//
// Shapes (a CPU-sized version of DRT's, spec §6.1 and §12.6), float:
//   GCA        Z = 16 query rows, H = Hkv = 4 heads, M = N = 64, d = 64, Kc = 8 slots (all full),
//              one sequence with E = 32 chunks in memory, τ = 1/8
//   window     B = 1, T = 4096, H = Hkv = 4, d = 64, W = 512, standard ALiBi slopes
//   drt_tiny   the reference unit-test model: D = 128, H = 2, Hkv = 1, F = 512, V = 100, L_c = 63,
//              k = 8, W = 512, 1 encoder layer, decoder_layers [1, 1, 1]; 4,032 tokens (64 chunks)
//
// Benchmarks:
//   gca/forward, gca/forward_backward                    drt::gca (hand-written kernels)
//   gca_composed/forward, gca_composed/forward_backward  drt::gca_composed (gather, matmul, softmax)
//   window/forward, window/forward_backward              drt::window_attention
//   drt_tiny_4032/forward_backward                       zero_grad, loss, backward (no optimiser)
//   gemm512/eigen/{1thread,2threads}                     raw Eigen `C.noalias() = A * B`, 512²
//
// FLOPs (spec §6.5 with the factor Kc it leaves out): GCA forward 4·Z·H·Kc·M·N·d, the backward
// 2.5× the forward (so forward + backward is 3.5×). Window attention forward 4·B·H·T·(W + 1)·d
// (it overcounts the first W positions, which see fewer keys: ~6% here), backward 2.5× as for GCA.
// The composed GCA is credited with the same FLOPs as gca (it does the same useful work), so its
// GFLOP/s ratio to gca is the inverse of their time ratio.
//
// The summary compares drt's ops with the Eigen GEMM on as many threads as drt used
// (OMP_NUM_THREADS=1 gives the single-thread comparison, which a shared machine disturbs least).
// It prints medians over repetitions that are interleaved in random order, so that the noise of a
// shared machine hits both sides of a ratio alike. Defaults: --benchmark_min_time=0.2
// --benchmark_repetitions=9 --benchmark_enable_random_interleaving=true; any of them can be
// overridden on the command line.
#include <benchmark/benchmark.h>

#include "support/capturing_reporter.hpp"
#include "support/eigen_gemm.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <drt/attention/gca.hpp>
#include <drt/attention/gca_composed.hpp>
#include <drt/attention/window_attention.hpp>
#include <drt/model.hpp>

namespace {

using drt::Index;
using drt::IndexTensor;
using drt::Parameter;
using drt::Shape;
using drt::Tensor;
using drt::Var;

// ---- GCA ------------------------------------------------------------------------------------------

constexpr Index kZ = 16, kHeads = 4, kKvHeads = 4, kQueries = 64, kKeys = 64, kWidth = 64, kSlots = 8, kChunks = 32;
constexpr double kGcaForwardFlops = 4.0 * kZ * kHeads * kSlots * kQueries * kKeys * kWidth;
constexpr double kBackwardFactor = 2.5;  // backward FLOPs / forward FLOPs

struct GcaInputs {
  Parameter<float> q{drt::random_uniform<float>({kZ, kHeads, kQueries, kWidth}, 1, -1, 1)};
  Parameter<float> k{drt::random_uniform<float>({1, kChunks, kKeys, kKvHeads, kWidth}, 2, -1, 1)};
  Parameter<float> v{drt::random_uniform<float>({1, kChunks, kKeys, kKvHeads, kWidth}, 3, -1, 1)};
  Parameter<float> weight{drt::softmax(drt::random_uniform<float>({kZ, kSlots}, 4, -2, 2), -1)};
  IndexTensor index = distinct_chunks();
  Tensor<float> upstream = drt::random_uniform<float>({kZ, kHeads, kQueries, kWidth}, 5, -1, 1);
  float scale = 1.0f / std::sqrt(float(kWidth));

  // Every slot full, each row reading Kc different chunks, spread over the memory.
  static IndexTensor distinct_chunks() {
    IndexTensor index = IndexTensor::empty({kZ, kSlots});
    for (Index z = 0; z < kZ; ++z)
      for (Index i = 0; i < kSlots; ++i) index(z, i) = static_cast<std::int32_t>((z * 5 + i * 3) % kChunks);
    return index;
  }
  void zero_grad() const {
    for (const Parameter<float>* p : {&q, &k, &v, &weight}) p->zero_grad();
  }
};

// `op` is drt::gca or drt::gca_composed.
template <class Op>
void gca_forward(benchmark::State& state, Op op) {
  const GcaInputs in;
  const drt::NoGradGuard no_grad;  // nothing recorded for a backward
  for (auto _ : state) {
    const Var<float> out = op(in.q, in.k, in.v, in.index, in.weight, in.scale);
    benchmark::DoNotOptimize(out.value().data());
    benchmark::ClobberMemory();
    drt::tape().reset();
  }
  state.counters["GFLOP/s"] = rate(kGcaForwardFlops * 1e-9);
}

template <class Op>
void gca_forward_backward(benchmark::State& state, Op op) {
  const GcaInputs in;
  auto step = [&] {
    in.zero_grad();
    const Var<float> out = op(in.q, in.k, in.v, in.index, in.weight, in.scale);
    drt::backward(out, in.upstream);
    benchmark::DoNotOptimize(in.q.grad().data());
    benchmark::ClobberMemory();
    drt::tape().reset();
  };
  step();  // the tape's arena reaches its steady-state size
  for (auto _ : state) step();
  state.counters["GFLOP/s"] = rate((1 + kBackwardFactor) * kGcaForwardFlops * 1e-9);
}

auto fast_gca = [](const auto&... a) { return drt::gca(a...); };
auto composed_gca = [](const auto&... a) { return drt::gca_composed(a...); };

// ---- sliding-window attention -----------------------------------------------------------------------

constexpr Index kBatch = 1, kTime = 4096, kWindow = 512;
constexpr double kWindowForwardFlops = 4.0 * kBatch * kHeads * kTime * (kWindow + 1) * kWidth;

struct WindowInputs {
  Parameter<float> q{drt::random_uniform<float>({kBatch, kTime, kHeads, kWidth}, 11, -1, 1)};
  Parameter<float> k{drt::random_uniform<float>({kBatch, kTime, kKvHeads, kWidth}, 12, -1, 1)};
  Parameter<float> v{drt::random_uniform<float>({kBatch, kTime, kKvHeads, kWidth}, 13, -1, 1)};
  Tensor<float> slopes = drt::alibi_slopes<float>(int(kHeads));
  Tensor<float> upstream = drt::random_uniform<float>({kBatch, kTime, kHeads, kWidth}, 14, -1, 1);
  float scale = 1.0f / std::sqrt(float(kWidth));
};

void window_forward(benchmark::State& state) {
  const WindowInputs in;
  const drt::NoGradGuard no_grad;
  for (auto _ : state) {
    const Var<float> out = drt::window_attention<float>(in.q, in.k, in.v, in.slopes, kWindow, in.scale);
    benchmark::DoNotOptimize(out.value().data());
    benchmark::ClobberMemory();
    drt::tape().reset();
  }
  state.counters["GFLOP/s"] = rate(kWindowForwardFlops * 1e-9);
}

void window_forward_backward(benchmark::State& state) {
  const WindowInputs in;
  auto step = [&] {
    for (const Parameter<float>* p : {&in.q, &in.k, &in.v}) p->zero_grad();
    const Var<float> out = drt::window_attention<float>(in.q, in.k, in.v, in.slopes, kWindow, in.scale);
    drt::backward(out, in.upstream);
    benchmark::DoNotOptimize(in.q.grad().data());
    benchmark::ClobberMemory();
    drt::tape().reset();
  };
  step();
  for (auto _ : state) step();
  state.counters["GFLOP/s"] = rate((1 + kBackwardFactor) * kWindowForwardFlops * 1e-9);
}

// ---- a tiny DRT training step ----------------------------------------------------------------------

constexpr Index kTinyTokens = 4032;  // 64 chunks of 63 tokens

drt::ModelConfig tiny_drt_config() {
  drt::ModelConfig c;
  c.hidden_size = 128;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 512;
  c.vocab_size = 100;
  c.enc_chunk_size = 63;
  c.chunk_topk = 8;
  c.slide_window = 512;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1, 1};
  c.pad_id = 0;
  c.chunk_id = 99;
  c.tie_word_embeddings = true;
  return c;
}

void drt_tiny(benchmark::State& state) {
  const drt::ModelConfig config = tiny_drt_config();
  const drt::DrtModel<float> model(config, 1);
  const auto params = model.named_parameters();
  IndexTensor tokens = IndexTensor::empty({1, kTinyTokens});
  for (Index t = 0; t < kTinyTokens; ++t)  // ordinary tokens: neither padding (0) nor the landmark (99)
    tokens(0, t) = static_cast<std::int32_t>(1 + drt::random_bits(21, static_cast<std::uint64_t>(t)) % 98);
  auto step = [&] {
    for (const auto& p : params) p.parameter->zero_grad();
    const Var<float> loss = model.loss(tokens);
    drt::backward(loss);
    benchmark::DoNotOptimize(loss.item());
    drt::tape().reset();
  };
  step();
  for (auto _ : state) step();
  state.counters["tokens/s"] = rate(double(kTinyTokens));
}

void register_benchmarks() {
  auto add = [](const char* name, auto fn) { return benchmark::RegisterBenchmark(name, fn)->UseRealTime(); };
  add("gca/forward", [](benchmark::State& s) { gca_forward(s, fast_gca); });
  add("gca/forward_backward", [](benchmark::State& s) { gca_forward_backward(s, fast_gca); });
  add("gca_composed/forward", [](benchmark::State& s) { gca_forward(s, composed_gca); });
  add("gca_composed/forward_backward", [](benchmark::State& s) { gca_forward_backward(s, composed_gca); });
  add("window/forward", window_forward);
  add("window/forward_backward", window_forward_backward);
  add("drt_tiny_4032/forward_backward", drt_tiny);
  add("gemm512/eigen/1thread", [](benchmark::State& s) { eigen_gemm(s, 1); });
  add("gemm512/eigen/2threads", [](benchmark::State& s) { eigen_gemm(s, 2); });
}

// ---- reporting ----------------------------------------------------------------------------------

void print_summary(const CapturingReporter& r) {
  const double gemm1 = r.median("gemm512/eigen/1thread", "GFLOP/s");
  const double gemm2 = r.median("gemm512/eigen/2threads", "GFLOP/s");
  // drt's ops use every OpenMP thread: compare them with the GEMM on as many (at most 2).
  const int threads = drt::available_threads();
  const double gemm = threads == 1 ? gemm1 : gemm2;
  const char* gemm_label = threads == 1 ? "GEMM 1 thread" : "GEMM 2 threads";
  std::printf("\nSummary of THIS run (medians over the repetitions; drt ran on %d OpenMP thread%s)\n", threads,
              threads == 1 ? "" : "s");
  std::printf("  Eigen sgemm 512^2: %.1f GFLOP/s on 1 thread, %.1f on 2 threads\n\n", gemm1, gemm2);
  std::printf("  %-32s %10s %10s   %s\n", "benchmark", "ms/iter", "GFLOP/s", "/ Eigen");
  for (const char* name : {"gca/forward", "gca/forward_backward", "gca_composed/forward", "gca_composed/forward_backward",
                           "window/forward", "window/forward_backward"}) {
    const double g = r.median(name, "GFLOP/s");
    std::printf("  %-32s %10.2f %10.1f   %5.2f\n", name, r.median(name, "ms"), g, g / gemm);
  }
  const char* tiny = "drt_tiny_4032/forward_backward";
  std::printf("  %-32s %10.1f %10s   %.0f tokens/s\n\n", tiny, r.median(tiny, "ms"), "-", r.median(tiny, "tokens/s"));

  auto ratio = [&](const std::string& what, const char* num, double den) {
    std::printf("  %-56s %6.2f\n", what.c_str(), r.median(num, "GFLOP/s") / den);
  };
  ratio("GCA forward: gca / gca_composed (speed-up)", "gca/forward", r.median("gca_composed/forward", "GFLOP/s"));
  ratio("GCA forward+backward: gca / gca_composed (speed-up)", "gca/forward_backward",
        r.median("gca_composed/forward_backward", "GFLOP/s"));
  ratio(std::string("GCA forward GFLOP/s / Eigen ") + gemm_label, "gca/forward", gemm);
  ratio(std::string("GCA forward+backward GFLOP/s / Eigen ") + gemm_label, "gca/forward_backward", gemm);
  ratio(std::string("window forward GFLOP/s / Eigen ") + gemm_label, "window/forward", gemm);
  ratio(std::string("window forward+backward GFLOP/s / Eigen ") + gemm_label, "window/forward_backward", gemm);
}

}  // namespace

int main(int argc, char** argv) {
  return run_benchmarks(argc, argv, /*repetitions=*/9, register_benchmarks, print_summary);
}
