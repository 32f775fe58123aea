// bench_core — speed of drt's core kernels against the obvious alternatives, in one run:
//
//   * 512×512 float GEMM: drt::gemm / drt::matmul against raw Eigen `C.noalias() = A * B`,
//     with 1 and 2 threads (drt calls Eigen's kernel itself, so the ratio should be ~1);
//   * a batched matmul (8 × 256×64 · 64×256), for information;
//   * an elementwise chain y = silu(a)·b + c·exp(−a) over 1M floats: one fused expression
//     against the same chain evaluated step by step into materialised temporaries, and a
//     hand-written loop as the reference;
//   * softmax over the rows of a 4096×1024 matrix (drt::softmax).
//
// After the benchmarks it prints a summary of the ratios measured in THIS run (medians over
// repetitions that are interleaved in random order, so that the noise of a shared machine hits
// both sides of a ratio alike). Defaults: --benchmark_min_time=0.2 --benchmark_repetitions=15
// --benchmark_enable_random_interleaving=true; any of them can be overridden on the command line.
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

#include <drt/core.hpp>
#include <drt/nn/softmax.hpp>

namespace {

using drt::Index;
using drt::Shape;
using drt::Tensor;

// ---- matrix products ---------------------------------------------------------------------------

void drt_gemm(benchmark::State& state, int threads) {
  const auto A = drt::random_uniform<float>({kGemmSize, kGemmSize}, 1, -1, 1);
  const auto B = drt::random_uniform<float>({kGemmSize, kGemmSize}, 2, -1, 1);
  const auto C = Tensor<float>::empty({kGemmSize, kGemmSize});
  for (auto _ : state) {
    drt::gemm(A, B, C, 1.0f, 0.0f, threads);
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = rate(kGemmFlops * 1e-9);
}

// matmul allocates its output; from an arena, as inside a training step.
void drt_matmul(benchmark::State& state) {
  const auto A = drt::random_uniform<float>({kGemmSize, kGemmSize}, 1, -1, 1);
  const auto B = drt::random_uniform<float>({kGemmSize, kGemmSize}, 2, -1, 1);
  drt::Arena arena;
  for (auto _ : state) {
    Tensor<float> C = drt::matmul(A, B, &arena);
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
    arena.reset();
  }
  state.counters["GFLOP/s"] = rate(kGemmFlops * 1e-9);
}

constexpr Index kBatch = 8, kRows = 256, kInner = 64, kCols = 256;
constexpr double kBatchedFlops = 2.0 * kBatch * kRows * kInner * kCols;

void drt_batched_matmul(benchmark::State& state) {
  const auto A = drt::random_uniform<float>({kBatch, kRows, kInner}, 3, -1, 1);
  const auto B = drt::random_uniform<float>({kBatch, kInner, kCols}, 4, -1, 1);
  drt::Arena arena;
  for (auto _ : state) {
    Tensor<float> C = drt::matmul(A, B, &arena);
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
    arena.reset();
  }
  state.counters["GFLOP/s"] = rate(kBatchedFlops * 1e-9);
}

// The same batch with Eigen: one (OpenMP-parallel) product per batch entry.
void eigen_batched_matmul(benchmark::State& state) {
  std::vector<Eigen::MatrixXf> A, B, C;
  for (Index i = 0; i < kBatch; ++i) {
    A.push_back(Eigen::MatrixXf::Random(kRows, kInner));
    B.push_back(Eigen::MatrixXf::Random(kInner, kCols));
    C.emplace_back(kRows, kCols);
  }
  for (auto _ : state) {
    for (Index i = 0; i < kBatch; ++i) C[i].noalias() = A[i] * B[i];
    benchmark::DoNotOptimize(C.back().data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = rate(kBatchedFlops * 1e-9);
}

// ---- an elementwise chain: y = silu(a) * b + c * exp(-a) -------------------------------------------

constexpr Index kChainSize = Index(1) << 20;

// The operators on expression nodes live in namespace drt, which argument-dependent lookup does
// not reach from a node (its type lives in drt::expr); code outside drt brings them in like this.
using namespace drt;  // NOLINT

struct ChainInputs {
  Tensor<float> a = drt::random_uniform<float>({kChainSize}, 5, -3, 3);
  Tensor<float> b = drt::random_uniform<float>({kChainSize}, 6, -1, 1);
  Tensor<float> c = drt::random_uniform<float>({kChainSize}, 7, -1, 1);
  Tensor<float> y = Tensor<float>::empty({kChainSize});
};

void chain_fused(benchmark::State& state) {
  ChainInputs in;
  for (auto _ : state) {
    in.y.assign(silu(in.a) * in.b + in.c * exp(-in.a));
    benchmark::DoNotOptimize(in.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["Melem/s"] = rate(kChainSize * 1e-6);
}

// What an eager library does: each step is its own pass, writing a full temporary.
void chain_op_by_op(benchmark::State& state) {
  ChainInputs in;
  const Shape s{kChainSize};
  const auto silu_a = Tensor<float>::empty(s), left = Tensor<float>::empty(s), neg_a = Tensor<float>::empty(s),
             exp_neg_a = Tensor<float>::empty(s), right = Tensor<float>::empty(s);
  for (auto _ : state) {
    silu_a.assign(silu(in.a));
    left.assign(silu_a * in.b);
    neg_a.assign(-in.a);
    exp_neg_a.assign(exp(neg_a));
    right.assign(in.c * exp_neg_a);
    in.y.assign(left + right);
    benchmark::DoNotOptimize(in.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["Melem/s"] = rate(kChainSize * 1e-6);
}

// The same arithmetic written by hand, parallelised like drt's evaluator.
void chain_hand_loop(benchmark::State& state) {
  ChainInputs in;
  const float *a = in.a.data(), *b = in.b.data(), *c = in.c.data();
  float* y = in.y.data();
  for (auto _ : state) {
#pragma omp parallel for schedule(static) if (kChainSize >= drt::expr::kParallelThreshold)
    for (Index i = 0; i < kChainSize; ++i) {
      const float x = a[i];
      y[i] = x / (1.0f + std::exp(-x)) * b[i] + c[i] * std::exp(-x);
    }
    benchmark::DoNotOptimize(y);
    benchmark::ClobberMemory();
  }
  state.counters["Melem/s"] = rate(kChainSize * 1e-6);
}

// ---- softmax over rows --------------------------------------------------------------------------

constexpr Index kSoftmaxRows = 4096, kSoftmaxCols = 1024;

void softmax_rows(benchmark::State& state) {
  const auto x = drt::random_uniform<float>({kSoftmaxRows, kSoftmaxCols}, 8, -4, 4);
  drt::Arena arena;
  for (auto _ : state) {
    Tensor<float> y = drt::softmax(x, -1, &arena);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    arena.reset();
  }
  const double elements = double(kSoftmaxRows) * kSoftmaxCols;
  state.counters["Melem/s"] = rate(elements * 1e-6);
  // Effective bandwidth: the least traffic possible (read x once, write y once) per second.
  state.counters["GB/s"] = rate(elements * 2 * sizeof(float) * 1e-9);
}

void register_benchmarks() {
  auto add = [](const char* name, auto fn) { return benchmark::RegisterBenchmark(name, fn)->UseRealTime(); };
  add("gemm512/eigen/1thread", [](benchmark::State& s) { eigen_gemm(s, 1); });
  add("gemm512/drt/1thread", [](benchmark::State& s) { drt_gemm(s, 1); });
  add("gemm512/eigen/2threads", [](benchmark::State& s) { eigen_gemm(s, 2); });
  add("gemm512/drt/2threads", [](benchmark::State& s) { drt_gemm(s, 2); });
  add("matmul512/drt_arena/2threads", drt_matmul);
  add("batched_matmul_8x256x64x256/drt", drt_batched_matmul);
  add("batched_matmul_8x256x64x256/eigen", eigen_batched_matmul);
  add("chain_1M/fused", chain_fused);
  add("chain_1M/op_by_op", chain_op_by_op);
  add("chain_1M/hand_loop", chain_hand_loop);
  add("softmax_4096x1024/drt", softmax_rows);
}

// ---- reporting ----------------------------------------------------------------------------------

void print_ratio(const CapturingReporter& r, const char* what, const std::string& num, const std::string& den,
                 const std::string& counter, const char* unit) {
  const double a = r.median(num, counter), b = r.median(den, counter);
  if (std::isnan(a) || std::isnan(b)) {
    std::printf("  %-44s (not run)\n", what);
    return;
  }
  std::printf("  %-44s %8.1f / %8.1f %-8s = %5.2f  (best-of: %5.2f)\n", what, a, b, unit, a / b,
              r.best(num, counter) / r.best(den, counter));
}

void print_summary(const CapturingReporter& r) {
  std::printf("\nSummary of THIS run (medians over the repetitions; ratio = first / second)\n");
  print_ratio(r, "GEMM 512^2, 1 thread:  drt::gemm / Eigen", "gemm512/drt/1thread", "gemm512/eigen/1thread",
              "GFLOP/s", "GFLOP/s");
  print_ratio(r, "GEMM 512^2, 2 threads: drt::gemm / Eigen", "gemm512/drt/2threads", "gemm512/eigen/2threads",
              "GFLOP/s", "GFLOP/s");
  print_ratio(r, "matmul 512^2 (arena output) / Eigen, 2 thr", "matmul512/drt_arena/2threads",
              "gemm512/eigen/2threads", "GFLOP/s", "GFLOP/s");
  print_ratio(r, "batched 8x(256x64x256): drt / Eigen", "batched_matmul_8x256x64x256/drt",
              "batched_matmul_8x256x64x256/eigen", "GFLOP/s", "GFLOP/s");
  print_ratio(r, "chain 1M: fused / op-by-op (speed-up)", "chain_1M/fused", "chain_1M/op_by_op", "Melem/s",
              "Melem/s");
  print_ratio(r, "chain 1M: fused / hand-written loop", "chain_1M/fused", "chain_1M/hand_loop", "Melem/s",
              "Melem/s");
  std::printf("  %-44s %8.1f Melem/s, %.1f GB/s effective\n", "softmax 4096x1024 along rows",
              r.median("softmax_4096x1024/drt", "Melem/s"), r.median("softmax_4096x1024/drt", "GB/s"));
  const double g1 = r.median("gemm512/drt/1thread", "GFLOP/s") / r.median("gemm512/eigen/1thread", "GFLOP/s");
  const double g2 = r.median("gemm512/drt/2threads", "GFLOP/s") / r.median("gemm512/eigen/2threads", "GFLOP/s");
  const double fused = r.median("chain_1M/fused", "Melem/s") / r.median("chain_1M/op_by_op", "Melem/s");
  auto verdict = [](bool measured, bool pass) { return !measured ? "not run" : pass ? "PASS" : "FAIL"; };
  std::printf("\nAcceptance: drt GEMM >= 90%% of Eigen (1 and 2 threads): %s;  fused chain faster than op-by-op: %s\n",
              verdict(!std::isnan(g1) && !std::isnan(g2), g1 >= 0.9 && g2 >= 0.9),
              verdict(!std::isnan(fused), fused > 1.0));
}

}  // namespace

int main(int argc, char** argv) {
  return run_benchmarks(argc, argv, /*repetitions=*/15, register_benchmarks, print_summary);
}
