// bench_cuda_train — whole-model training steps on the GPU: tokens/s, model FLOPs utilisation and
// peak device memory, beside cuBLAS's own fp32 GEMM speed measured in the same run (the ratio
// says how much of the GPU's fp32 matrix speed a whole DRT step turns into model FLOPs).
//
//   bench_cuda_train [config.json [batch [seq_len [steps]]]]
//   default: tests/data/config_63.json (the paper's 146M DRT), batch 1, 16,380 tokens, 5 steps
//
// A step is what `drt train` does: forward, backward, clip at 1.0, AdamW (fp32 throughout for
// now: bf16 mixed precision is still to come). The first step (allocations, cuBLAS heuristics)
// is not timed. Then the same steps again with the phases timed apart (a synchronisation after
// each: forward, backward, clip + AdamW), and once more with cuBLAS in TF32 mode, to show where
// the time goes.
#include <cublas_v2.h>

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

// cuBLAS fp32 GEMM (exact fp32 mode, as drt's default) at n³, FLOP/s.
double cublas_fp32_flops(Index n) {
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

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = argc > 1 ? argv[1] : DRT_SOURCE_DIR "/tests/data/config_63.json";
  const Index batch = argc > 2 ? std::stol(argv[2]) : 1;
  const Index seq_len = argc > 3 ? std::stol(argv[3]) : 16380;
  const int steps = argc > 4 ? std::stoi(argv[4]) : 5;
  try {
    std::printf("device %s\n", cuda::device_description().c_str());
    const ModelConfig c = ModelConfig::load(config_path);
    DrtModel<float> model(c, 0);
    model.move_to(Device::cuda);
    const auto params = parameter_pointers(model.named_parameters());
    AdamW<float> opt(params, AdamWConfig{.lr = 1e-4, .weight_decay = 0.01});
    std::printf("model %s: %lld parameters, batch %lld x %lld tokens, fp32\n", config_path.c_str(),
                static_cast<long long>(model.parameter_count()), static_cast<long long>(batch),
                static_cast<long long>(seq_len));

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
      const IndexTensor tokens = random_tokens(batch, seq_len, c.vocab_size, seed);
      const Var<float> loss = model.loss(tokens, ForwardOptions{.training = true, .noise_seed = seed});
      const float l = loss.item();
      phase_done(0, t);
      backward(loss);
      tape().reset();
      phase_done(1, t);
      clip_grad_norm(params, 1.0);
      opt.step(1e-4);
      opt.zero_grad();
      phase_done(2, t);
      return l;
    };
    const auto w0 = Clock::now();
    const float first_loss = step(0);
    cuda::synchronize();
    std::printf("warm-up step %.2f s, loss %.4f\n", seconds_since(w0), double(first_loss));

    const auto t0 = Clock::now();
    for (int s = 1; s <= steps; ++s) step(std::uint64_t(s));
    cuda::synchronize();
    const double seconds = seconds_since(t0) / steps;
    const double tokens_per_second = double(batch * seq_len) / seconds;
    const double model_flops = tokens_per_second * drt_training_flops_per_token(c);
    const double gemm_flops = cublas_fp32_flops(4096);
    const double peak = cuda::peak_bf16_flops();
    const cuda::AllocatorStats mem = cuda::allocator_stats();
    std::printf("step %.3f s   %.0f tokens/s   model %.1f TFLOP/s\n", seconds, tokens_per_second, model_flops / 1e12);
    std::printf("cuBLAS fp32 GEMM 4096^3 in this run: %.1f TFLOP/s   ratio model/GEMM %.2f\n", gemm_flops / 1e12,
                model_flops / gemm_flops);
    if (peak > 0) std::printf("MFU vs dense bf16 peak (%.0f TFLOP/s): %.1f%%\n", peak / 1e12, 100 * model_flops / peak);
    std::printf("peak device memory in use %.2f GiB (allocator), cudaMalloc calls %lld\n",
                double(mem.peak_bytes_in_use) / double(1 << 30), static_cast<long long>(mem.malloc_calls));

    timing_phases = true;
    for (int s = 1; s <= steps; ++s) step(std::uint64_t(s));
    std::printf("phases per step (synchronised): forward %.3f s, backward %.3f s, clip + AdamW %.3f s\n",
                phase_seconds[0] / steps, phase_seconds[1] / steps, phase_seconds[2] / steps);
    timing_phases = false;
    cuda::set_math_mode(cuda::MathMode::tf32);
    step(0);
    cuda::synchronize();
    const auto t1 = Clock::now();
    for (int s = 1; s <= steps; ++s) step(std::uint64_t(s));
    cuda::synchronize();
    const double tf32_seconds = seconds_since(t1) / steps;
    std::printf("with TF32 GEMMs: step %.3f s   %.0f tokens/s   (%.2fx the fp32 step)\n", tf32_seconds,
                double(batch * seq_len) / tf32_seconds, seconds / tf32_seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
