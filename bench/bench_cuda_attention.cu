// bench_cuda_attention — drt's two attention ops on the GPU at the DRT training shapes, forward
// and backward timed apart, in ms and TFLOP/s, beside the reference GCA kernel's H200 figures
// (performance-anchors §1: 0.809 ms forward, 5.78 ms backward) and flash SDPA's.
//
//   bench_cuda_attention [reps [batch]]     (default 5 repetitions, batch 4)
//
// Shapes and FLOPs: bench/support/attention_bench.hpp (config_63 at 16,380 tokens × batch 4).
// bench/kernel_lab.cu runs every version of both ops and checks each against the CPU op.
//
// The "v2" lines run in the default fp32 precision (version 2 of the kernels: tiled, fp32 CUDA
// cores); the "(bf16)" lines run with matmul_precision() = bf16, which takes the newest version
// (bf16 tensor cores, fp32 accumulators) at these shapes; the line names the version that ran. FLOPs are counted the same way for
// both, and as bench/sdpa_baseline.py counts PyTorch's flash attention on the same work.
#include <cstdio>
#include <string>

#include "support/attention_bench.hpp"

namespace {

using namespace drt;
using namespace drt::bench;
namespace attention = drt::cuda::attention;

void report(const char* name, const Timing& t, double flops, double ref_forward_ms, double ref_backward_ms) {
  std::printf("%-20s forward %8.3f ms %6.1f TFLOP/s   backward %8.3f ms %6.1f TFLOP/s", name, t.forward_ms,
              forward_tflops(flops, t), t.backward_ms, backward_tflops(flops, t));
  if (ref_forward_ms > 0)
    std::printf("   (%.3f / %.2f ms; ratio to drt %.2f / %.2f)", ref_forward_ms, ref_backward_ms,
                ref_forward_ms / t.forward_ms, ref_backward_ms / t.backward_ms);
  std::printf("\n");
}

// Version 2 in fp32 mode, then `bf16_version` (what the dispatch takes) in bf16 mode.
template <class Inputs>
void compare_versions(const char* name, const Inputs& in, int bf16_version, int reps, double ref_forward_ms,
                      double ref_backward_ms) {
  auto run = [&] { return in.run(); };
  auto drop_gradients = [&] { in.drop_input_gradients(); };  // fresh input gradients, as in training
  const Timing v2 = time_forward_backward(reps, in.out_shape(), run, drop_gradients);
  report((std::string(name) + " v2").c_str(), v2, in.flops(), 0, 0);
  MatmulPrecisionScope bf16(Precision::bf16);
  const Timing newest = time_forward_backward(reps, in.out_shape(), run, drop_gradients);
  report((std::string(name) + " v" + std::to_string(bf16_version) + " (bf16)").c_str(), newest, in.flops(), ref_forward_ms,
         ref_backward_ms);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::stoi(argv[1]) : 5;
  const Index batch = argc > 2 ? std::stol(argv[2]) : 4;
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line as it comes, even when piped
  try {
    std::printf("device %s, batch %lld; in brackets: PyTorch flash SDPA on the same work (window) and the\n"
                "reference Triton kernel (GCA) on an H200, and their time over drt's\n",
                cuda::device_description().c_str(), static_cast<long long>(batch));
    const bool paper_batch = batch == 4;  // the figures in brackets were measured at batch 4
    // flash SDPA: bench/sdpa_baseline.py, 2026-12-02; the reference: performance-anchors §1.
    const int window_version = attention::window_attention_version<float>(64, Precision::bf16);
    const attention::GcaShape gca_shape{int(batch * 259), 12, 64, 64, int(batch), 259, 64, 12, 8, 259, 1};
    const int gca_version = attention::gca_version<float>(gca_shape, Precision::bf16);
    compare_versions("window attention", WindowInputs::drt_training(batch), window_version, reps, paper_batch ? 0.444 : 0,
                     1.71);
    compare_versions("GCA", GcaInputs::drt_training(batch), gca_version, reps, paper_batch ? 0.809 : 0, 5.78);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
