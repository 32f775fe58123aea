// bench_cuda_train — whole-model training steps on the GPU: tokens/s, model FLOPs utilisation and
// peak device memory, beside cuBLAS's own GEMM speed in the same precision, measured in the same
// run (the ratio says how much of the GPU's matrix speed a whole DRT step turns into model FLOPs).
//
//   bench_cuda_train [--config FILE] [--batch B] [--micro-batch b] [--seq-len T] [--steps N]
//                    [--precision fp32|tf32|bf16] [--phases] [--profile] [--kernels]
//   default: tests/data/config_63.json (the paper's 146M DRT), batch 1, 16,380 tokens, 5 steps, fp32
//
// A step is what `drt train` does: forward and backward of B sequences (as B/b micro-batches of
// b sequences whose gradients add up, when --micro-batch is given), clip at 1.0, AdamW. The
// precision switch (drt/core/precision.hpp) sets how the GEMMs compute; everything stored stays
// fp32. The first step (allocations, cuBLAS heuristics) is not timed. --phases times the same
// steps again with a synchronisation after forward, backward and clip + AdamW, to show where
// the time goes; --profile times one more step's backward op by op (drt/autodiff/profile.hpp)
// and prints the ops that take the most. --kernels brackets one more micro-batch's forward and
// backward (a second one under the step's weight rounding, as micro-batches 2.. of a step run)
// with cudaProfilerStart/Stop, for a per-kernel profile of just that:
//   ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv
//       bench_cuda_train --precision bf16 --steps 1 --kernels
// or, where nsys and ncu do not run, the CUPTI timeline (bench/support/cupti_timeline.cpp):
//   CUDA_INJECTION64_PATH=build/bench/libcupti_timeline.so DRT_TIMELINE=t.csv
//       bench_cuda_train --precision bf16 --steps 1 --kernels        (one command line)
//   python3 bench/support/timeline_gaps.py t.csv --kernels 40
#include <cublas_v2.h>
#include <cuda_profiler_api.h>

#include <chrono>
#include <cstdio>
#include <string>

#include <drt/cuda.cuh>
#include <drt/model.hpp>
#include <drt/optim.hpp>

namespace {

using namespace drt;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// cuBLAS GEMM through drt::gemm at n³ in the current precision, FLOP/s.
double gemm_flops_per_second(Index n) {
  const Tensor<float> a = random_uniform<float>({n, n}, 1, -1.f, 1.f).to(Device::cuda);
  const Tensor<float> b = random_uniform<float>({n, n}, 2, -1.f, 1.f).to(Device::cuda);
  const Tensor<float> c = Tensor<float>::empty({n, n}, nullptr, Device::cuda);
  gemm(a, b, c);
  cuda::synchronize();
  const int reps = 10;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) gemm(a, b, c);
  cuda::synchronize();
  return 2.0 * double(n) * double(n) * double(n) * reps / seconds_since(t0);
}

IndexTensor random_tokens(Index B, Index T, int vocab, std::uint64_t seed) {
  IndexTensor t = IndexTensor::empty({B, T});
  for (Index i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<int>(random_bits(seed, i) % std::uint64_t(vocab - 2));
  return t;
}

struct Options {
  std::string config = DRT_SOURCE_DIR "/tests/data/config_63.json";
  Index batch = 1, micro_batch = 0, seq_len = 16380;
  int steps = 5;
  Precision precision = Precision::fp32;
  bool phases = false;
  bool profile = false;
  bool kernels = false;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--phases" || flag == "--profile" || flag == "--kernels") {
      (flag == "--phases" ? o.phases : flag == "--profile" ? o.profile : o.kernels) = true;
      continue;
    }
    DRT_CHECK(i + 1 < argc, "bench_cuda_train: ", flag, " needs a value");
    const std::string value = argv[++i];
    if (flag == "--config") o.config = value;
    else if (flag == "--batch") o.batch = std::stol(value);
    else if (flag == "--micro-batch") o.micro_batch = std::stol(value);
    else if (flag == "--seq-len") o.seq_len = std::stol(value);
    else if (flag == "--steps") o.steps = std::stoi(value);
    else if (flag == "--precision") o.precision = parse_precision(value, "--precision");
    else throw Error("bench_cuda_train: unknown flag " + flag);
  }
  if (o.micro_batch == 0) o.micro_batch = o.batch;
  DRT_CHECK(o.batch > 0 && o.micro_batch > 0 && o.batch % o.micro_batch == 0, "bench_cuda_train: --batch ", o.batch,
            " must be a positive multiple of --micro-batch ", o.micro_batch);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    std::printf("device %s\n", cuda::device_description().c_str());
    set_matmul_precision(o.precision);
    const ModelConfig c = ModelConfig::load(o.config);
    DrtModel<float> model(c, 0);
    model.move_to(Device::cuda);
    const auto params = parameter_pointers(model.named_parameters());
    const std::vector<const void*> weights = weight_storages(model.named_parameters());
    AdamW<float> opt(params, AdamWConfig{.lr = 1e-4, .weight_decay = 0.01});
    const Index accum = o.batch / o.micro_batch;
    std::printf("model %s: %lld parameters; batch %lld x %lld tokens (%lld micro-batch%s of %lld); GEMMs in %s\n",
                o.config.c_str(), static_cast<long long>(model.parameter_count()), static_cast<long long>(o.batch),
                static_cast<long long>(o.seq_len), static_cast<long long>(accum), accum > 1 ? "es" : "",
                static_cast<long long>(o.micro_batch), precision_name(o.precision));

    double phase_seconds[3] = {0, 0, 0};  // forward, backward, optimiser
    bool timing_phases = false;
    auto phase_done = [&](int phase, Clock::time_point& t) {
      if (!timing_phases) return;
      cuda::synchronize();
      phase_seconds[phase] += seconds_since(t);
      t = Clock::now();
    };
    auto step = [&](std::uint64_t seed) {
      auto t = Clock::now();
      float loss_sum = 0;
      {
        RoundedOperandReuse rounded_weights(weights);  // as drt train
        for (Index a = 0; a < accum; ++a) {
          const IndexTensor tokens = random_tokens(o.micro_batch, o.seq_len, c.vocab_size, seed * 1000 + a);
          const Var<float> loss = model.loss(tokens, ForwardOptions{.training = true, .noise_seed = seed * 1000 + a});
          loss_sum += loss.item();
          phase_done(0, t);
          backward(accum > 1 ? loss * (1.0f / float(accum)) : loss, KeepGradients::leaves_only);  // as drt train
          tape().reset();
          phase_done(1, t);
        }
      }
      clip_grad_norm(params, 1.0);
      opt.step(1e-4);
      opt.zero_grad();
      phase_done(2, t);
      return loss_sum / float(accum);
    };
    const auto w0 = Clock::now();
    const float first_loss = step(0);
    cuda::synchronize();
    std::printf("warm-up step %.2f s, loss %.4f\n", seconds_since(w0), double(first_loss));

    const auto t0 = Clock::now();
    float last_loss = 0;
    for (int s = 1; s <= o.steps; ++s) last_loss = step(std::uint64_t(s));
    cuda::synchronize();
    const double seconds = seconds_since(t0) / o.steps;
    const double tokens = double(o.batch * o.seq_len);
    const double model_flops = drt_training_flops_per_token(c) * tokens / seconds;
    const auto mem = cuda::allocator_stats();
    const double gemm_flops = gemm_flops_per_second(4096);
    const double peak = cuda::peak_bf16_flops();
    std::printf("step %.3f s   %.0f tokens/s   model %.1f TFLOP/s   loss %.4f\n", seconds, tokens / seconds,
                model_flops / 1e12, double(last_loss));
    std::printf("cuBLAS %s GEMM 4096^3 in this run: %.1f TFLOP/s   ratio model/GEMM %.3f\n",
                precision_name(o.precision), gemm_flops / 1e12, model_flops / gemm_flops);
    if (peak > 0) std::printf("MFU vs dense bf16 peak (%.0f TFLOP/s): %.1f%%\n", peak / 1e12, 100 * model_flops / peak);
    std::printf("peak device memory in use %.2f GiB (allocator), cudaMalloc calls %lld\n",
                double(mem.peak_bytes_in_use) / double(1 << 30), static_cast<long long>(mem.malloc_calls));

    if (o.phases) {
      timing_phases = true;
      for (int s = 1; s <= o.steps; ++s) step(std::uint64_t(s));
      std::printf("phases per step (synchronised): forward %.3f s, backward %.3f s, clip + AdamW %.3f s\n",
                  phase_seconds[0] / o.steps, phase_seconds[1] / o.steps, phase_seconds[2] / o.steps);
    }
    if (o.profile) {
      BackwardProfile profile([] { cuda::synchronize(); });
      tape().set_backward_observer(&profile);
      step(std::uint64_t(o.steps + 1));
      tape().set_backward_observer(nullptr);
      std::printf("backward of one step, op by op (synchronised after each):\n%s", profile.table(25).c_str());
    }
    if (o.kernels) {
      // A micro-batch after the step's first, as in steps: the weights were rounded by the first.
      RoundedOperandReuse rounded_weights(weights);
      const IndexTensor tokens = random_tokens(o.micro_batch, o.seq_len, c.vocab_size, 999);
      for (int pass = 0; pass < 2; ++pass) {
        cuda::synchronize();
        if (pass == 1) cudaProfilerStart();
        backward(model.loss(tokens, ForwardOptions{.training = true, .noise_seed = 999}), KeepGradients::leaves_only);
        tape().reset();
        cuda::synchronize();
      }
      cudaProfilerStop();
      std::printf("profiled one micro-batch's forward and backward (--kernels), the step's weights already rounded\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
