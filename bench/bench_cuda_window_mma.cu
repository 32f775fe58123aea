// bench_cuda_window_mma — window attention at the DRT training shape, version 2 (fp32 mode: tiled
// fp32 CUDA cores) against version 3 (bf16 mode: bf16 tensor cores, fp32 accumulators), forward
// and backward timed apart, in ms and TFLOP/s, with the version-3 / version-2 speed-up.
//
//   bench_cuda_window_mma [batch [reps]]     (default batch 4, 5 repetitions)
//
// Shape: B 4, T 16,380, H = Hkv = 12, d 64, W 512 (513 keys per query). FLOPs as
// bench_cuda_attention counts them (flash attention's convention): forward 4·d per (query, key)
// pair (QKᵀ and PV), backward 2.5× the forward. PyTorch flash SDPA (bf16) does this work on an
// H200 in 0.444 ms forward and 1.71 ms backward (bench/sdpa_baseline.py).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <drt/core.hpp>
#include <drt/cuda.cuh>
#include <drt/attention/window_attention.hpp>
#include <drt/nn/alibi.hpp>

namespace {

using namespace drt;
using Clock = std::chrono::steady_clock;

struct Timing {
  double forward_ms = 0, backward_ms = 0;
};

// Forward, then backward with a random output gradient, `reps` times after one warm-up; each
// phase synchronised apart.
template <class Forward>
Timing time_op(int reps, const Shape& out_shape, Forward forward) {
  const Tensor<float> seed = random_uniform<float>(out_shape, 99, -1.f, 1.f).to(Device::cuda);
  Timing t;
  for (int r = 0; r <= reps; ++r) {
    cuda::synchronize();
    const auto t0 = Clock::now();
    const Var<float> out = forward();
    cuda::synchronize();
    const auto t1 = Clock::now();
    backward(out, seed);
    cuda::synchronize();
    const auto t2 = Clock::now();
    tape().reset();
    if (r == 0) continue;  // warm-up
    t.forward_ms += std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
    t.backward_ms += std::chrono::duration<double, std::milli>(t2 - t1).count() / reps;
  }
  return t;
}

void report(const char* name, const Timing& t, double forward_flops) {
  const double fwd = forward_flops / (t.forward_ms * 1e-3) / 1e12, bwd = 2.5 * forward_flops / (t.backward_ms * 1e-3) / 1e12;
  std::printf("%-30s forward %8.3f ms %6.1f TFLOP/s   backward %8.3f ms %6.1f TFLOP/s\n", name, t.forward_ms, fwd,
              t.backward_ms, bwd);
}

}  // namespace

int main(int argc, char** argv) {
  const Index batch = argc > 1 ? std::stol(argv[1]) : 4;
  const int reps = argc > 2 ? std::stoi(argv[2]) : 5;
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line as it comes, even when piped
  try {
    std::printf("device %s\n", cuda::device_description().c_str());
    const Index B = batch, T = 16380, H = 12, d = 64, W = 512;
    const float scale = 1.0f / 8.0f;  // 1/√64
    // Parameters, not variables: leaves that outlive tape().reset() between repetitions.
    auto input = [&](std::uint64_t seed) {
      return Parameter<float>(random_uniform<float>({B, T, H, d}, seed, -1.f, 1.f).to(Device::cuda));
    };
    const Parameter<float> q = input(1), k = input(2), v = input(3);
    const Tensor<float> slopes = alibi_slopes<float>(static_cast<int>(H));
    double pairs = 0;  // query t sees min(t, W) + 1 keys
    for (Index t = 0; t < T; ++t) pairs += double(std::min(t, W) + 1);
    const double flops = 4.0 * d * pairs * double(B * H);
    auto run = [&] { return window_attention(q, k, v, slopes, W, scale); };
    std::printf("window attention B %lld T %lld H %lld d %lld W %lld\n", static_cast<long long>(B),
                static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(d),
                static_cast<long long>(W));
    const Timing v2 = time_op(reps, {B, T, H, d}, run);
    report("v2 (fp32, tiled CUDA cores)", v2, flops);
    Timing v3;
    {
      MatmulPrecisionScope bf16(Precision::bf16);
      v3 = time_op(reps, {B, T, H, d}, run);
    }
    report("v3 (bf16 mma)", v3, flops);
    std::printf("speed-up v3 / v2: forward %.2fx, backward %.2fx\n", v2.forward_ms / v3.forward_ms,
                v2.backward_ms / v3.backward_ms);
    if (batch == 4)
      std::printf("PyTorch flash SDPA on H200: forward 0.444 ms, backward 1.71 ms; v3 reaches %.0f%% / %.0f%% of it\n",
                  100.0 * 0.444 / v3.forward_ms, 100.0 * 1.71 / v3.backward_ms);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_window_mma: %s\n", e.what());
    return 1;
  }
  return 0;
}
