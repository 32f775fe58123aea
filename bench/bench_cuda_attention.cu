// bench_cuda_attention — drt's two attention ops on the GPU at the DRT training shapes, forward
// and backward timed apart, in ms and TFLOP/s, beside the reference GCA kernel's H200 figures
// (performance-anchors §1: 0.809 ms forward, 5.78 ms backward) and flash SDPA's.
//
//   bench_cuda_attention [reps [batch]]     (default 5 repetitions, batch 4)
//
// Shapes (config_63 at 16,380 tokens × batch 4, as issue 7 states them):
//   window attention  B 4, T 16,380, H = Hkv = 12, d 64, W 512 (513 keys per query)
//   GCA               Z 1036 query rows (4 × 259 chunks), H 12, M = N = 64, Kc 8, d 64
// FLOPs as flash attention counts them: forward 4·d per (query, key) pair (QKᵀ and PV), backward
// 2.5× the forward (recomputing P, then dV, dP, dQ, dK).
//
// The plain lines run in the default fp32 precision (version 2 of the kernels: tiled, fp32 CUDA
// cores); the "v3 (bf16 mma)" lines run with matmul_precision() = bf16, which takes version 3
// (bf16 tensor cores, fp32 accumulators) at these shapes. FLOPs are counted the same way for
// both, and as bench/sdpa_baseline.py counts PyTorch's flash attention on the same work.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <drt/core.hpp>
#include <drt/cuda.cuh>
#include <drt/attention/gca.hpp>
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

void report(const char* name, const Timing& t, double forward_flops, double ref_forward_ms, double ref_backward_ms) {
  const double fwd = forward_flops / (t.forward_ms * 1e-3) / 1e12, bwd = 2.5 * forward_flops / (t.backward_ms * 1e-3) / 1e12;
  std::printf("%-18s forward %8.3f ms %6.1f TFLOP/s   backward %8.3f ms %6.1f TFLOP/s", name, t.forward_ms, fwd,
              t.backward_ms, bwd);
  if (ref_forward_ms > 0)
    std::printf("   (reference on H200: %.3f / %.2f ms; ratio ref/drt %.2f / %.2f)", ref_forward_ms, ref_backward_ms,
                ref_forward_ms / t.forward_ms, ref_backward_ms / t.backward_ms);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::stoi(argv[1]) : 5;
  const Index batch = argc > 2 ? std::stol(argv[2]) : 4;
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line as it comes, even when piped
  try {
    std::printf("device %s\n", cuda::device_description().c_str());
    const float scale = 1.0f / 8.0f;  // 1/√64
    {
      const Index B = batch, T = 16380, H = 12, d = 64, W = 512;
      // Parameters, not variables: leaves that outlive tape().reset() between repetitions.
      auto input = [&](std::uint64_t seed) {
        return Parameter<float>(random_uniform<float>({B, T, H, d}, seed, -1.f, 1.f).to(Device::cuda));
      };
      const Parameter<float> q = input(1), k = input(2), v = input(3);
      const Tensor<float> slopes = alibi_slopes<float>(static_cast<int>(H));
      // Query t sees min(t, W) + 1 keys.
      double pairs = 0;
      for (Index t = 0; t < T; ++t) pairs += double(std::min(t, W) + 1);
      const double flops = 4.0 * d * pairs * double(B * H);
      auto run_window = [&] { return window_attention(q, k, v, slopes, W, scale); };
      const Timing v2 = time_op(reps, {B, T, H, d}, run_window);
      report("window attention", v2, flops, 0, 0);
      MatmulPrecisionScope bf16(Precision::bf16);
      const Timing v3 = time_op(reps, {B, T, H, d}, run_window);
      report("window v3 (bf16 mma)", v3, flops, 0, 0);
      std::printf("%-18s v3 / v2 %.1fx forward, %.1fx backward", "", v2.forward_ms / v3.forward_ms,
                  v2.backward_ms / v3.backward_ms);
      // PyTorch flash SDPA on the same work on an H200 (bench/sdpa_baseline.py, 2026-12-02).
      if (batch == 4)
        std::printf("; flash SDPA on H200 0.444 / 1.71 ms: v3 at %.0f%% / %.0f%% of it", 100 * 0.444 / v3.forward_ms,
                    100 * 1.71 / v3.backward_ms);
      std::printf("\n");
    }
    {
      const Index B = batch, rows = 259, Z = B * rows, H = 12, M = 64, N = 64, d = 64, Kc = 8, E = rows;
      const Parameter<float> q(random_uniform<float>({Z, H, M, d}, 4, -1.f, 1.f).to(Device::cuda));
      const Parameter<float> k(random_uniform<float>({B, E, N, H, d}, 5, -1.f, 1.f).to(Device::cuda));
      const Parameter<float> v(random_uniform<float>({B, E, N, H, d}, 6, -1.f, 1.f).to(Device::cuda));
      const Parameter<float> w(random_uniform<float>({Z, Kc}, 7, 0.05f, 1.f).to(Device::cuda));
      // Every slot filled, with past chunks of the row's own sequence (the full-cost case).
      IndexTensor index = IndexTensor::empty({Z, Kc});
      for (Index z = 0; z < Z; ++z)
        for (Index i = 0; i < Kc; ++i) index(z, i) = static_cast<std::int32_t>((z % rows * 5 + i * 31) % E);
      const IndexTensor device_index = index.to(Device::cuda);
      const double flops = 4.0 * double(Z * H * M) * double(Kc * N) * double(d);
      auto run_gca = [&] { return gca(q, k, v, device_index, w, scale); };
      report("GCA", time_op(reps, {Z, H, M, d}, run_gca), flops, batch == 4 ? 0.809 : 0, 5.78);
      {
        MatmulPrecisionScope bf16(Precision::bf16);
        report("GCA v3 (bf16 mma)", time_op(reps, {Z, H, M, d}, run_gca), flops, batch == 4 ? 0.809 : 0, 5.78);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
