// bench_step — one training step of the demo model (examples/tiny_attention.hpp) at the demo's
// size, against the GEMM speed of this machine measured in the same run.
//
// Shapes (as in examples/demo.cpp): B = 32 sequences of T = 20 tokens (copy task, 16 symbols,
// copy length 10, V = 17), D = 64, H = 4 heads, 2 layers, SwiGLU hidden F = 128, tied head.
//
// Benchmarks:
//   step/forward_backward   zero_grad, loss = model.loss(tokens, targets), backward, tape().reset()
//   step/with_adamw         the same plus clip_grad_norm and AdamW (the whole demo step)
//   gemm512/eigen/...       raw Eigen `C.noalias() = A * B`, 512², 1 and 2 threads
//
// Achieved GFLOP/s counts the model's matrix products analytically: 6 · (weights used in
// matrix products) · tokens for forward + backward, plus 12 · B · T² · D per layer for the two
// attention products (Q·Kᵀ and P·V: 2 · B·T²·D FLOPs each forward, twice that backward). The
// softmax, norms, SwiGLU gates, cross-entropy and the optimiser are not counted: they are
// memory-bound and small next to the products. The summary prints that figure over the Eigen
// GEMM figure: the share of this machine's matrix-product speed that a whole step achieves.
//
// Defaults: --benchmark_min_time=0.2 --benchmark_repetitions=15
// --benchmark_enable_random_interleaving=true (each can be overridden on the command line).
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
#include <drt/optim.hpp>

#include "tiny_attention.hpp"

namespace {

using drt::Index;
using drt::IndexTensor;
using drt::Parameter;
using drt::Var;
using drt::examples::CopyTask;
using drt::examples::TinyAttention;
using drt::examples::TinyAttentionConfig;

// The demo's sizes (examples/demo.cpp).
const CopyTask kTask{.symbols = 16, .length = 10};
constexpr Index kBatch = 32;

TinyAttentionConfig demo_config() {
  return TinyAttentionConfig{.vocab = kTask.vocab(), .dim = 64, .heads = 4, .layers = 2, .mlp_hidden = 128,
                             .seq_len = kTask.seq_len(), .seed = 1};
}

Index tokens_per_step() { return kBatch * kTask.seq_len(); }

// Weights that take part in a matrix product per token: per layer Wq, Wk, Wv, Wo (D×D each) and
// the SwiGLU gate, up and down projections (3·D·F); then the LM head (V×D). The embedding lookup
// and the norm gains do no matrix product.
double matmul_weights(const TinyAttentionConfig& c) {
  const double D = double(c.dim), F = double(c.mlp_hidden), V = double(c.vocab);
  return double(c.layers) * (4 * D * D + 3 * D * F) + V * D;
}

// FLOPs of one forward + backward.
double step_flops(const TinyAttentionConfig& c) {
  const double tokens = double(tokens_per_step()), T = double(kTask.seq_len());
  const double dense = 6.0 * matmul_weights(c) * tokens;
  const double attention = double(c.layers) * 12.0 * double(kBatch) * T * T * double(c.dim);
  return dense + attention;
}

// ---- the training step --------------------------------------------------------------------------

void training_step(benchmark::State& state, bool with_optimiser) {
  const TinyAttentionConfig config = demo_config();
  TinyAttention model(config);
  const std::vector<Parameter<float>*> params = model.parameters();
  drt::AdamW<float> optimiser(params, {.beta1 = 0.9, .beta2 = 0.98, .weight_decay = 0.01});
  IndexTensor tokens({kBatch, kTask.seq_len()}), targets({kBatch, kTask.seq_len()});
  kTask.fill(1, 0, tokens, targets);

  auto step = [&] {
    optimiser.zero_grad();
    const Var<float> loss = model.loss(tokens, targets);
    drt::backward(loss);
    if (with_optimiser) {
      drt::clip_grad_norm(params, 1.0);
      optimiser.step(1e-3);
    }
    benchmark::DoNotOptimize(loss.item());
    drt::tape().reset();
  };
  for (int i = 0; i < 3; ++i) step();  // the tape's arena reaches its steady-state size

  const std::int64_t allocations_before = drt::heap_allocation_count();
  for (auto _ : state) step();
  const double allocations = double(drt::heap_allocation_count() - allocations_before);

  state.counters["tokens/s"] = rate(double(tokens_per_step()));
  state.counters["GFLOP/s"] = rate(step_flops(config) * 1e-9);
  state.counters["allocs/step"] = benchmark::Counter(allocations, benchmark::Counter::kAvgIterations);
}

void register_benchmarks() {
  auto add = [](const char* name, auto fn) { return benchmark::RegisterBenchmark(name, fn)->UseRealTime(); };
  add("step/forward_backward", [](benchmark::State& s) { training_step(s, false); });
  add("step/with_adamw", [](benchmark::State& s) { training_step(s, true); });
  add("gemm512/eigen/1thread", [](benchmark::State& s) { eigen_gemm(s, 1); });
  add("gemm512/eigen/2threads", [](benchmark::State& s) { eigen_gemm(s, 2); });
}

// ---- reporting ----------------------------------------------------------------------------------

void print_summary(const CapturingReporter& r) {
  const TinyAttentionConfig c = demo_config();
  std::printf("\nSummary of THIS run (medians over %zu repetitions)\n",
              r.repetitions("step/forward_backward", "GFLOP/s"));
  std::printf("  model: %lld layers, D %lld, H %lld, F %lld, V %lld; batch %lld x %lld tokens\n",
              (long long)c.layers, (long long)c.dim, (long long)c.heads, (long long)c.mlp_hidden, (long long)c.vocab,
              (long long)kBatch, (long long)kTask.seq_len());
  std::printf("  counted FLOPs per forward+backward: %.1f M (6 x %.0f matmul weights x %lld tokens + attention)\n",
              step_flops(c) * 1e-6, matmul_weights(c), (long long)tokens_per_step());
  const double eigen1 = r.median("gemm512/eigen/1thread", "GFLOP/s");
  const double eigen2 = r.median("gemm512/eigen/2threads", "GFLOP/s");
  std::printf("  Eigen sgemm 512^2: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (2 threads)\n", eigen1, eigen2);
  for (const char* name : {"step/forward_backward", "step/with_adamw"}) {
    const double gflops = r.median(name, "GFLOP/s");
    std::printf("  %-22s %9.0f tokens/s  %6.2f GFLOP/s  = %5.1f%% of Eigen 2-thread GEMM (%5.1f%% of 1-thread)"
                "  allocs/step %.2f\n",
                name, r.median(name, "tokens/s"), gflops, 100 * gflops / eigen2, 100 * gflops / eigen1,
                r.median(name, "allocs/step"));
  }
}

}  // namespace

int main(int argc, char** argv) {
  return run_benchmarks(argc, argv, /*repetitions=*/15, register_benchmarks, print_summary);
}
