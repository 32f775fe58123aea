// bench/support/eigen_gemm.hpp — the baseline every drt benchmark reports against: a 512×512 float
// GEMM through Eigen's own `A * B`, at a given thread count, measured in the same run.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>

// A counter of `per_iteration` units per second of real time (GFLOP/s, tokens/s, ...).
inline benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

inline constexpr long kGemmSize = 512;
inline constexpr double kGemmFlops = 2.0 * kGemmSize * kGemmSize * kGemmSize;

inline void eigen_gemm(benchmark::State& state, int threads) {
  Eigen::setNbThreads(threads);
  const Eigen::MatrixXf A = Eigen::MatrixXf::Random(kGemmSize, kGemmSize);
  const Eigen::MatrixXf B = Eigen::MatrixXf::Random(kGemmSize, kGemmSize);
  Eigen::MatrixXf C(kGemmSize, kGemmSize);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(0);  // back to the default for the benchmarks that follow
  state.counters["GFLOP/s"] = rate(kGemmFlops * 1e-9);
}
