// drt_demo — trains a small attention model to copy sequences, on the CPU, in about a minute.
//
//     drt_demo [--steps N] [--seed S]
//
// Each training sequence is  s₁ … s_L SEP s₁ … s_L  with fresh random symbols; the loss is scored
// on the copied half only, so it starts near ln(V) (guessing) and falls towards 0 once attention
// has learnt to look back L+1 positions. The last line is the accuracy on sequences never seen
// in training. Everything is seeded: two runs with the same arguments print the same losses
// (whatever the number of threads).
//
// On a machine shared with other busy programs, OMP_WAIT_POLICY=passive stops OpenMP threads
// from spinning while a descheduled peer holds up the team (it can make training many times
// slower there); OMP_NUM_THREADS=1 is the other cure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <drt/optim.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "tiny_attention.hpp"

using namespace drt;
using drt::examples::CopyTask;
using drt::examples::TinyAttention;
using drt::examples::TinyAttentionConfig;

namespace {

struct Options {
  std::int64_t steps = 2500;
  std::uint64_t seed = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--steps") && has_value) {
      o.steps = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--seed") && has_value) {
      o.seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s [--steps N] [--seed S]\n", argv[0]);
      std::exit(2);
    }
  }
  if (o.steps < 1) {
    std::fprintf(stderr, "--steps must be at least 1\n");
    std::exit(2);
  }
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const CopyTask task{.symbols = 32, .length = 20};
  const Index batch = 32, T = task.seq_len();

  TinyAttention model(TinyAttentionConfig{.vocab = task.vocab(), .dim = 64, .heads = 4, .layers = 2,
                                          .mlp_hidden = 128, .seq_len = T, .seed = options.seed});
  const std::vector<Parameter<float>*> params = model.parameters();
  AdamW<float> optimiser(params, {.beta1 = 0.9, .beta2 = 0.98, .weight_decay = 0.01});
  const CosineSchedule schedule{
      .peak_lr = 3e-3, .warmup_steps = options.steps / 20, .total_steps = options.steps, .min_lr = 1e-4};
  const double max_grad_norm = 1.0;

  std::printf("copy task: %lld symbols, copy length %lld, vocabulary %lld (ln V = %.3f)\n",
              static_cast<long long>(task.symbols), static_cast<long long>(task.length),
              static_cast<long long>(task.vocab()), std::log(static_cast<double>(task.vocab())));
  std::printf("model: %lld layers, width %lld, %lld heads, %lld parameters; batch %lld x %lld tokens, %lld steps\n",
              static_cast<long long>(model.config().layers), static_cast<long long>(model.config().dim),
              static_cast<long long>(model.config().heads), static_cast<long long>(model.parameter_count()),
              static_cast<long long>(batch), static_cast<long long>(T), static_cast<long long>(options.steps));

#ifdef _OPENMP
  std::printf("threads: %d (OpenMP)\n", omp_get_max_threads());
#endif

  IndexTensor tokens({batch, T}), targets({batch, T});
  const std::int64_t report_every = std::max<std::int64_t>(1, options.steps / 20);
  const auto start = std::chrono::steady_clock::now();
  auto interval_start = start;
  double loss_sum = 0, accuracy_sum = 0;
  std::int64_t interval_steps = 0;

  for (std::int64_t step = 0; step < options.steps; ++step) {
    task.fill(options.seed, static_cast<std::uint64_t>(step), tokens, targets);
    optimiser.zero_grad();
    const Var<float> logits = model.logits(tokens);
    const Var<float> loss = cross_entropy(logits, targets, -100);
    backward(loss);
    clip_grad_norm(params, max_grad_norm);
    optimiser.step(schedule.lr(step));

    loss_sum += loss.item();
    accuracy_sum += examples::copy_accuracy(logits.value(), targets);
    ++interval_steps;
    tape().reset();  // frees the step's intermediates; the memory is reused by the next step

    if (step == 0 || (step + 1) % report_every == 0 || step + 1 == options.steps) {
      const double interval = seconds_since(interval_start);
      std::printf("step %5lld  loss %.4f  copy accuracy %5.1f%%  lr %.2e  %7.0f tokens/s  %6.1f s\n",
                  static_cast<long long>(step + 1), loss_sum / interval_steps, 100 * accuracy_sum / interval_steps,
                  schedule.lr(step), static_cast<double>(interval_steps * batch * T) / interval, seconds_since(start));
      std::fflush(stdout);
      loss_sum = accuracy_sum = 0;
      interval_steps = 0;
      interval_start = std::chrono::steady_clock::now();
    }
  }

  // Held-out: sequences from another seed stream, never trained on.
  NoGradGuard no_grad;
  const int eval_batches = 16;
  double accuracy = 0;
  for (int i = 0; i < eval_batches; ++i) {
    task.fill(~options.seed, static_cast<std::uint64_t>(i), tokens, targets);
    accuracy += examples::copy_accuracy(model.logits(tokens).value(), targets);
    tape().reset();
  }
  std::printf("held-out copy accuracy: %.1f%% on %lld fresh sequences (chance %.1f%%); %.1f s in all\n",
              100 * accuracy / eval_batches, static_cast<long long>(eval_batches * batch), 100.0 / task.symbols,
              seconds_since(start));
  return 0;
}
