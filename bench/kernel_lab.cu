// kernel_lab — every version of drt's two attention kernels, side by side: how each version
// is built, its error against the CPU op, and its speed at the DRT training shape, so that a
// reader can follow how the fast version was reached (issue 7's kernel lab).
//
//   kernel_lab [reps [batch]] [--only window|gca] [--profile]     (default 3 repetitions, batch 4)
//
// --profile runs one more forward and backward of each op's newest version after its lab, between
// cudaProfilerStart and cudaProfilerStop, so that Nsight Compute started with
// `--profile-from-start off` sees those kernels alone, at the training shape, on a warm L2:
//   ncu --profile-from-start off --clock-control none --section SpeedOfLight
//       --section MemoryWorkloadAnalysis build/bench/kernel_lab 1 4 --only gca --profile
// (one command line).
//
// The versions live in drt/cuda/attention/window_attention.cuh and gca.cuh; a call takes the
// newest one that fits it, and attention::VersionCap (version.cuh) lowers that ceiling here:
//   v1  one warp per query (or key) row, lanes splitting d; every key row read from global memory
//       once per query. fp32 CUDA cores.
//   v2  one thread per row; 64-row tiles staged in shared memory and read as broadcasts, so a key
//       row leaves global memory once per 64 queries. fp32 CUDA cores.
//   v3  bf16 tensor cores (mma.sync m16n8k16 through ldmatrix) with fp32 accumulators and an
//       fp32 softmax, flash-attention style; taken in bf16 precision mode (drt/core/precision.hpp).
//   v4  v3's math with tiles copied by cp.async from bf16 copies into two shared-memory stages and
//       fewer registers (higher occupancy); also bf16 mode. Window attention: the mask only on
//       tiles that need it, 128-query blocks. GCA: P normalised and weighted before P·V (no
//       per-chunk O accumulator), and a backward in two passes, query-major (dQ, δ and dW fused)
//       and key-major per memory chunk (dK/dV in registers, no atomics).
//   v5  Hopper's warpgroup MMA (wgmma, sm_90a builds on H100/H200): each product issued once for
//       a block's 64 rows, B (and a resident A) read from swizzled shared memory. GCA: all three
//       kernels (forward, query pass, key pass); the forward's chunks come by the tensor memory
//       accelerator (tma.cuh). Window attention: the forward, two warpgroups per block; its
//       backward is v4's. Where the build or GPU has no wgmma, the lab stops at v4.
// One more GCA line times the newest version with the chunk memory's bf16 copies made before the
// timing (as the authors' kernel takes bf16 k and v): the rest of an op's time is the kernels.
//
// Error: the op on a small shape (window: B 2, T 300, H 4 / Hkv 2, d 64, W 100; GCA: Z 6, H 4 /
// Hkv 2, M = N = d = 64, Kc 3, empty slots and a zero weight) on the GPU against the CPU op in
// double on the same inputs; the largest |gpu − cpu| over the output and every input gradient,
// relative to that tensor's largest |cpu|. fp32 versions sit near 1e-6; v3, v4 near 1e-3 (their
// operands and P, dS are rounded to bf16; tests/cuda/ states the bounds).
// Time: forward and backward at the DRT training shape (bench/support/attention_bench.hpp),
// FLOPs as flash attention counts them. Both ops' input gradients start empty in every
// repetition, as in a training step: versions 4 and 5 then set them instead of adding into them,
// the others add into zeros. The backward's time is the op's alone: the output's gradient is the
// seed tensor itself, not a copy (time_forward_backward).
#include <cuda_profiler_api.h>

#include <cmath>
#include <cstdio>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/attention_bench.hpp"

namespace {

using namespace drt;
using namespace drt::bench;
namespace attention = drt::cuda::attention;

Tensor<double> host_double(const Tensor<float>& t) {
  const std::vector<float> values = t.to_vector();
  Tensor<double> out = Tensor<double>::empty(t.shape());
  for (std::size_t i = 0; i < values.size(); ++i) out.data()[i] = values[i];
  return out;
}
// A heap copy: the tape's arena that may hold t is freed by tape().reset().
Tensor<double> host_double(const Tensor<double>& t) { return t.to(Device::cpu).clone(); }

// The output and every input's gradient of op(inputs) with output gradient `seed`, on the host.
template <class T, class Op>
std::vector<Tensor<double>> forward_backward(const std::vector<Tensor<T>>& inputs, const Tensor<T>& seed, Op op) {
  std::vector<Var<T>> vars;
  for (const Tensor<T>& x : inputs) vars.push_back(variable(x));
  const Var<T> out = op(vars);
  backward(out, seed);
  std::vector<Tensor<double>> results{host_double(out.value())};
  for (const Var<T>& v : vars) results.push_back(host_double(v.grad()));
  tape().reset();
  return results;
}

// The GPU op on float inputs against the CPU op on the same values in double.
template <class Op>
double largest_relative_error(const std::vector<Tensor<float>>& inputs, const Tensor<float>& seed, Op op) {
  std::vector<Tensor<float>> on_gpu;
  std::vector<Tensor<double>> on_cpu;
  for (const Tensor<float>& x : inputs) {
    on_gpu.push_back(x.to(Device::cuda));
    on_cpu.push_back(host_double(x));
  }
  const auto gpu = forward_backward<float>(on_gpu, seed.to(Device::cuda), op);
  const auto cpu = forward_backward<double>(on_cpu, host_double(seed), op);
  double worst = 0;
  for (std::size_t t = 0; t < cpu.size(); ++t) {
    double scale = 1e-30, error = 0;
    for (Index i = 0; i < cpu[t].numel(); ++i) {
      scale = std::max(scale, std::abs(cpu[t].data()[i]));
      error = std::max(error, std::abs(cpu[t].data()[i] - gpu[t].data()[i]));
    }
    worst = std::max(worst, error / scale);
  }
  return worst;
}

Tensor<float> uniform(const Shape& shape, std::uint64_t seed, float low = -1.f, float high = 1.f) {
  return random_uniform<float>(shape, seed, low, high);
}

// Each op as a function of its differentiable inputs, for float (GPU) and double (CPU) alike.
double window_error() {
  const Index B = 2, T = 300, H = 4, Hkv = 2, d = 64, W = 100;
  return largest_relative_error(
      {uniform({B, T, H, d}, 11), uniform({B, T, Hkv, d}, 12), uniform({B, T, Hkv, d}, 13)}, uniform({B, T, H, d}, 14),
      [&](const auto& v) {
        using Real = typename std::decay_t<decltype(v[0])>::value_type;
        return window_attention(v[0], v[1], v[2], alibi_slopes<Real>(static_cast<int>(H)), W,
                                Real(1) / std::sqrt(Real(d)));
      });
}

double gca_error() {
  const Index B = 2, rows = 3, Z = B * rows, E = 5, H = 4, Hkv = 2, M = 64, N = 64, d = 64, Kc = 3;
  IndexTensor index = IndexTensor::empty({Z, Kc});  // some slots empty (−1)
  for (Index z = 0; z < Z; ++z)
    for (Index i = 0; i < Kc; ++i) index(z, i) = static_cast<std::int32_t>((z * 7 + i * 3) % (E + 1)) - 1;
  Tensor<float> weight = uniform({Z, Kc}, 25, 0.05f, 1.f);
  weight(0, Kc - 1) = 0.f;  // a zero weight: that slot is skipped
  return largest_relative_error(
      {uniform({Z, H, M, d}, 21), uniform({B, E, N, Hkv, d}, 22), uniform({B, E, N, Hkv, d}, 23), weight},
      uniform({Z, H, M, d}, 24), [&](const auto& v) {
        using Real = typename std::decay_t<decltype(v[0])>::value_type;
        return gca(v[0], v[1], v[2], index, v[3], Real(1) / std::sqrt(Real(d)));
      });
}

const char* kHow[] = {"", "warp per row, fp32", "64-row tiles in shared memory, fp32", "bf16 tensor cores (mma), flash-style",
                      "v3 + cp.async stages, 128-query blocks", "v4, fwd and bwd on wgmma (sm_90a)"};
const char* kGcaHow[] = {"", "warp per row, fp32", "64-row tiles in shared memory, fp32",
                         "bf16 tensor cores (mma), flash-style", "v3 + cp.async stages, key-major dK/dV",
                         "v4, fwd and bwd on wgmma (sm_90a)"};
static_assert(std::size(kHow) == attention::kNewestVersion + 1 && std::size(kGcaHow) == attention::kNewestVersion + 1,
              "a line for every version");

struct Options {
  int reps = 3;
  Index batch = 4;
  bool window = true, gca = true;  // which labs run (--only)
  bool profile = false;            // --profile
};

Options parse(int argc, char** argv) {
  Options o;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--profile") {
      o.profile = true;
    } else if (arg == "--only" && i + 1 < argc) {
      const std::string op = argv[++i];
      if (op != "window" && op != "gca") throw std::invalid_argument("--only takes window or gca, not " + op);
      o.window = op == "window";
      o.gca = op == "gca";
    } else if (positional == 0 && !arg.empty() && arg[0] != '-') {
      o.reps = std::stoi(arg);
      ++positional;
    } else if (positional == 1 && !arg.empty() && arg[0] != '-') {
      o.batch = std::stol(arg);
      ++positional;
    } else {
      throw std::invalid_argument("unknown argument " + arg +
                                  " (usage: kernel_lab [reps [batch]] [--only window|gca] [--profile])");
    }
  }
  return o;
}

// One forward and backward of the op at the newest version, in bf16, between cudaProfilerStart and
// cudaProfilerStop (--profile).
template <class Inputs, class Prepare>
void run_profiled(const Inputs& at_scale, Prepare prepare) {
  attention::VersionCap cap(attention::kNewestVersion);
  MatmulPrecisionScope precision(Precision::bf16);
  const Tensor<float> seed = random_uniform<float>(at_scale.out_shape(), 99, -1.f, 1.f).to(Device::cuda);
  prepare();
  cuda::synchronize();
  cudaProfilerStart();
  const Var<float> out = at_scale.run();
  backward(out, seed);
  cuda::synchronize();
  cudaProfilerStop();
  tape().reset();
}

// One op, versions 1..newest: what each is, its error, its speed, its speed-up over version 1.
template <class Inputs, class VersionOf, class Error, class Prepare = NothingToPrepare>
void lab(const char* op, int newest, const char* const* how, const Inputs& at_scale, int reps, VersionOf version_of,
         Error error, Prepare prepare = {}) {
  std::printf("\n%s\n%-3s %-38s %-6s %10s %10s %8s %8s %10s %10s\n", op, "v", "how", "runs", "error", "fwd ms",
              "TFLOP/s", "bwd ms", "TFLOP/s", "vs v1");
  Timing first;
  for (int version = 1; version <= newest; ++version) {
    attention::VersionCap cap(version);
    MatmulPrecisionScope precision(version >= 3 ? Precision::bf16 : Precision::fp32);
    const int runs = version_of();  // what the dispatch takes under this cap and precision
    if (runs < version && version > 3) break;  // no such version for this op (or not on this build/GPU)
    const double err = error();
    const Timing t = time_forward_backward(reps, at_scale.out_shape(), [&] { return at_scale.run(); }, prepare);
    if (version == 1) first = t;
    std::printf("%-3d %-38s v%-5d %10.1e %10.3f %8.1f %8.3f %10.1f   %4.1fx / %.1fx\n", version, how[version], runs, err,
                t.forward_ms, forward_tflops(at_scale.flops(), t), t.backward_ms, backward_tflops(at_scale.flops(), t),
                first.forward_ms / t.forward_ms, first.backward_ms / t.backward_ms);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line as it comes, even when piped
  try {
    const Options o = parse(argc, argv);
    std::printf("kernel lab on %s: error on a small shape against the CPU op in double; time at the DRT\n"
                "training shape, batch %lld (config_63, 16,380 tokens)\n",
                cuda::device_description().c_str(), static_cast<long long>(o.batch));
    if (o.window) {
      const WindowInputs window = WindowInputs::drt_training(o.batch);
      auto drop_gradients = [&] { window.drop_input_gradients(); };
      lab("window attention (B x 16,380, H 12, d 64, W 512)", attention::kNewestVersion, kHow, window, o.reps,
          [] { return attention::window_attention_version<float>(64, matmul_precision()); }, window_error,
          drop_gradients);
      if (o.profile) run_profiled(window, drop_gradients);
    }
    if (o.gca) {
      const GcaInputs retrieval = GcaInputs::drt_training(o.batch);
      const Index batch = o.batch;
      const attention::GcaShape shape{int(batch * 259), 12, 64, 64, int(batch), 259, 64, 12, 8, 259, 1};
      auto drop_gradients = [&] { retrieval.drop_input_gradients(); };
      lab("GCA (Z = B x 259, H 12, M = N = d = 64, Kc 8)", attention::kNewestVersion, kGcaHow, retrieval, o.reps,
          [&] { return attention::gca_version<float>(shape, matmul_precision()); }, gca_error, drop_gradients);
      {  // k and v rounded once, in the warm-up repetition: every timed call finds the copies
        const std::vector<const void*> chunk_memory{retrieval.k.value().data(), retrieval.v.value().data()};
        RoundedOperandReuse reuse(chunk_memory);
        MatmulPrecisionScope precision(Precision::bf16);
        const Timing t = time_forward_backward(
            o.reps, retrieval.out_shape(), [&] { return retrieval.run(); }, drop_gradients);
        std::printf("%-3s %-38s v%-5d %10s %10.3f %8.1f %8.3f %10.1f\n", "", "the same, k and v already in bf16",
                    attention::gca_version<float>(shape, matmul_precision()), "", t.forward_ms,
                    forward_tflops(retrieval.flops(), t), t.backward_ms, backward_tflops(retrieval.flops(), t));
      }
      if (o.profile) run_profiled(retrieval, drop_gradients);
    }
    std::printf("\nreference on an H200: flash SDPA on the window's work 0.444 / 1.71 ms (bench/sdpa_baseline.py),\n"
                "the authors' GCA kernel 0.809 / 5.78 ms (performance-anchors section 1), both at batch 4\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_lab: %s\n", e.what());
    return 1;
  }
  return 0;
}
