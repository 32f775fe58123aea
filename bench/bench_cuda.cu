// bench_cuda — the CUDA backend's foundation against the obvious alternatives, in one run:
//
//   * the elementwise chain y = silu(a)·b + c·exp(−a) over 16M floats: one fused kernel (drt's
//     device expression) against the same chain evaluated op by op into device temporaries
//     (what an eager library does), reported in effective GB/s (16 bytes of traffic per element
//     for the fused kernel: three reads and one write);
//   * a 4096³ fp32 GEMM: drt::gemm on device tensors against cublasGemmEx called directly with the
//     same arguments, in exact fp32, TF32 and bf16 (the ratio should be ~1 in fp32 and TF32, where
//     drt adds host work only; in bf16 drt also rounds both operands into bf16 copies).
//
// Times are taken with CUDA events around each iteration (manual time), so host overhead that
// overlaps the GPU's work does not count, and launch latency is included once per iteration.
// Prints the ratios measured in THIS run at the end; name the GPU model with every figure.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <drt/core.hpp>
#include <drt/cuda.cuh>

namespace {

using drt::Device;
using drt::Index;
using drt::Tensor;
namespace cuda = drt::cuda;
using namespace drt;

constexpr Index kChain = Index(1) << 24;  // 16M floats: 64 MiB per array, far beyond L2
constexpr Index kGemm = 4096;

Tensor<float> device_uniform(const drt::Shape& s, std::uint64_t seed) {
  return cuda::to_device(drt::random_uniform<float>(s, seed, -1.0f, 1.0f));
}

// Runs `body` once per iteration between two events; reports the GPU time.
template <class Body>
void time_on_gpu(benchmark::State& state, Body body) {
  cudaEvent_t start, stop;
  DRT_CUDA_CHECK(cudaEventCreate(&start));
  DRT_CUDA_CHECK(cudaEventCreate(&stop));
  body();  // warm-up (allocator, cuBLAS heuristics)
  for (auto _ : state) {
    DRT_CUDA_CHECK(cudaEventRecord(start));
    body();
    DRT_CUDA_CHECK(cudaEventRecord(stop));
    DRT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    DRT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

benchmark::Counter per_second(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- the elementwise chain ----------------------------------------------------------------------

struct Chain {
  Tensor<float> a = device_uniform({kChain}, 1), b = device_uniform({kChain}, 2), c = device_uniform({kChain}, 3);
  Tensor<float> out = Tensor<float>::empty({kChain}, nullptr, Device::cuda);
};

// Made once: filling 3×16M random floats on the host is slower than the benchmarks themselves.
Chain& chain() {
  static Chain x;
  return x;
}
void chain_fused(benchmark::State& state) {
  Chain& x = chain();
  time_on_gpu(state, [&] { x.out.assign(silu(x.a) * x.b + x.c * exp(-x.a)); });
  state.counters["GB/s"] = per_second(16.0 * kChain * 1e-9);
}

// One kernel per op, each into a fresh temporary from the caching allocator.
void chain_op_by_op(benchmark::State& state) {
  Chain& x = chain();
  drt::Arena arena;
  time_on_gpu(state, [&] {
    const Tensor<float> s = eval(silu(x.a), &arena);
    const Tensor<float> sb = eval(s * x.b, &arena);
    const Tensor<float> na = eval(-x.a, &arena);
    const Tensor<float> e = eval(exp(na), &arena);
    const Tensor<float> ce = eval(x.c * e, &arena);
    x.out.assign(sb + ce);
  });
  state.counters["GB/s"] = per_second(16.0 * kChain * 1e-9);  // same useful work as the fused one
}

// ---- GEMM -----------------------------------------------------------------------------------------

// Two shapes: the classic square one, and a prefill segment's MLP product (16,320 rows of width
// 768 times a 768 × 2048 weight), where rounding the operands costs most next to the product.
struct GemmShape {
  const char* name;
  Index M, K, N;
};
constexpr GemmShape kGemmShapes[] = {{"gemm4096", kGemm, kGemm, kGemm}, {"gemm_prefill", 16320, 768, 2048}};

struct Gemm {
  explicit Gemm(const GemmShape& s)
      : shape(s), A(device_uniform({s.M, s.K}, 4)), B(device_uniform({s.K, s.N}, 5)),
        C(Tensor<float>::empty({s.M, s.N}, nullptr, Device::cuda)), A16(cuda::bf16_copy(A.data(), A.numel())),
        B16(cuda::bf16_copy(B.data(), B.numel())) {}
  GemmShape shape;
  Tensor<float> A, B, C;
  // bf16 copies of A and B for the cuBLAS baseline (drt makes its own on every call).
  std::shared_ptr<void> A16, B16;
  double flops() const { return 2.0 * double(shape.M) * double(shape.K) * double(shape.N); }
};
Gemm& gemm_operands(int shape) {
  static std::map<int, std::unique_ptr<Gemm>> made;
  auto& g = made[shape];
  if (!g) g = std::make_unique<Gemm>(kGemmShapes[shape]);
  return *g;
}

// drt::gemm under the precision switch; in bf16 that includes rounding both operands to bf16.
void gemm_drt(benchmark::State& state, int shape, Precision precision) {
  Gemm& g = gemm_operands(shape);
  MatmulPrecisionScope scope(precision);
  time_on_gpu(state, [&] { drt::gemm(g.A, g.B, g.C); });
  state.counters["TFLOP/s"] = per_second(g.flops() * 1e-12);
}

// The same product straight through cuBLAS (row-major C = A·B as column-major Cᵀ = Bᵀ·Aᵀ), on
// operands already in the input type; `fast_bf16`: fp32 operands with CUBLAS_COMPUTE_32F_FAST_16BF,
// cuBLAS rounding them to bf16 itself (the candidate for drt's bf16 mode without its own copies).
void cublas_product(const Gemm& g, Precision precision, bool fast_bf16) {
  const bool bf16 = precision == Precision::bf16 && !fast_bf16;
  const cublasComputeType_t compute = fast_bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                      : precision == Precision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                     : CUBLAS_COMPUTE_32F;
  const cudaDataType_t in = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const void* a = bf16 ? g.A16.get() : g.A.data();
  const void* b = bf16 ? g.B16.get() : g.B.data();
  const float alpha = 1, beta = 0;
  const int M = int(g.shape.M), K = int(g.shape.K), N = int(g.shape.N);
  DRT_CUBLAS_CHECK(cublasGemmEx(cuda::blas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, b, in, N, a, in, K, &beta,
                                g.C.data(), CUDA_R_32F, N, compute, CUBLAS_GEMM_DEFAULT));
}
void gemm_cublas(benchmark::State& state, int shape, Precision precision, bool fast_bf16) {
  Gemm& g = gemm_operands(shape);
  time_on_gpu(state, [&] { cublas_product(g, precision, fast_bf16); });
  state.counters["TFLOP/s"] = per_second(g.flops() * 1e-12);
}

// How far cuBLAS's own bf16 rounding (FAST_16BF) lands from drt's bf16 product, against how far
// the bf16 product is from exact fp32: if the first is far below the second, the two roundings
// agree up to summation order.
void print_fast_bf16_agreement(int shape) {
  Gemm& g = gemm_operands(shape);
  auto product = [&](auto run) {
    run();
    return g.C.to(Device::cpu);
  };
  const Tensor<float> exact = product([&] { MatmulPrecisionScope s(Precision::fp32); drt::gemm(g.A, g.B, g.C); });
  const Tensor<float> ours = product([&] { MatmulPrecisionScope s(Precision::bf16); drt::gemm(g.A, g.B, g.C); });
  const Tensor<float> fast = product([&] { cublas_product(g, Precision::bf16, true); });
  double to_exact = 0, to_fast = 0;
  for (Index i = 0; i < exact.numel(); ++i) {
    to_exact = std::max(to_exact, double(std::abs(ours.data()[i] - exact.data()[i])));
    to_fast = std::max(to_fast, double(std::abs(ours.data()[i] - fast.data()[i])));
  }
  std::printf("  %s: max |drt bf16 - cuBLAS FAST_16BF| = %.3g; max |drt bf16 - fp32| = %.3g\n", g.shape.name, to_fast,
              to_exact);
}

void register_benchmarks() {
  auto manual = [](benchmark::internal::Benchmark* b) { b->UseManualTime()->Unit(benchmark::kMicrosecond); };
  manual(benchmark::RegisterBenchmark("chain_16M/fused", chain_fused));
  manual(benchmark::RegisterBenchmark("chain_16M/op_by_op", chain_op_by_op));
  for (int shape = 0; shape < 2; ++shape) {
    for (Precision p : {Precision::fp32, Precision::tf32, Precision::bf16}) {
      const std::string name = std::string(kGemmShapes[shape].name) + "/" + precision_name(p);
      manual(benchmark::RegisterBenchmark((name + "/drt").c_str(), gemm_drt, shape, p));
      manual(benchmark::RegisterBenchmark((name + "/cublas").c_str(), gemm_cublas, shape, p, false));
    }
    const std::string fast = std::string(kGemmShapes[shape].name) + "/bf16/cublas_fast16bf";
    manual(benchmark::RegisterBenchmark(fast.c_str(), gemm_cublas, shape, Precision::bf16, true));
  }
}

// Keeps each repetition's counters (the shared support/capturing_reporter.hpp reads a field that
// newer Google Benchmark releases renamed, and the GPU machine has a newer one).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Iteration)
        for (const auto& [name, counter] : r.counters) samples_[r.run_name.function_name][name].push_back(counter.value);
    ConsoleReporter::ReportRuns(runs);
  }
  double median(const std::string& name, const std::string& counter) const {
    auto b = samples_.find(name);
    if (b == samples_.end() || !b->second.count(counter)) return NAN;
    std::vector<double> v = b->second.at(counter);
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  }

 private:
  std::map<std::string, std::map<std::string, std::vector<double>>> samples_;
};

void print_ratio(const RatioReporter& r, const char* what, const std::string& num, const std::string& den,
                 const std::string& counter) {
  const double a = r.median(num, counter), b = r.median(den, counter);
  if (std::isnan(a) || std::isnan(b)) return (void)std::printf("  %-42s (not run)\n", what);
  std::printf("  %-42s %9.1f / %9.1f %-7s = %5.2f\n", what, a, b, counter.c_str(), a / b);
}

void print_summary(const RatioReporter& r) {
  std::printf("\nSummary of THIS run on %s (medians; ratio = first / second)\n",
              cuda::device_count() ? cuda::device_description().c_str() : "no GPU");
  print_ratio(r, "chain 16M: fused / op-by-op (speed-up)", "chain_16M/fused", "chain_16M/op_by_op", "GB/s");
  print_ratio(r, "GEMM 4096^3 fp32: drt / cuBLAS direct", "gemm4096/fp32/drt", "gemm4096/fp32/cublas", "TFLOP/s");
  print_ratio(r, "GEMM 4096^3 tf32: drt / cuBLAS direct", "gemm4096/tf32/drt", "gemm4096/tf32/cublas", "TFLOP/s");
  print_ratio(r, "GEMM 4096^3 bf16: drt (rounding included) / cuBLAS on bf16 operands", "gemm4096/bf16/drt",
              "gemm4096/bf16/cublas", "TFLOP/s");
  print_ratio(r, "GEMM 4096^3: drt tf32 / drt fp32", "gemm4096/tf32/drt", "gemm4096/fp32/drt", "TFLOP/s");
  print_ratio(r, "GEMM 4096^3: drt bf16 / drt fp32", "gemm4096/bf16/drt", "gemm4096/fp32/drt", "TFLOP/s");
  print_ratio(r, "GEMM 4096^3 bf16: cuBLAS FAST_16BF on fp32 / drt", "gemm4096/bf16/cublas_fast16bf", "gemm4096/bf16/drt",
              "TFLOP/s");
  print_ratio(r, "GEMM prefill bf16: drt / cuBLAS on bf16 operands", "gemm_prefill/bf16/drt", "gemm_prefill/bf16/cublas",
              "TFLOP/s");
  print_ratio(r, "GEMM prefill bf16: cuBLAS FAST_16BF on fp32 / drt", "gemm_prefill/bf16/cublas_fast16bf",
              "gemm_prefill/bf16/drt", "TFLOP/s");
  for (int shape = 0; shape < 2; ++shape) print_fast_bf16_agreement(shape);
}

}  // namespace

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_cuda: no CUDA device\n");
    return 1;
  }
  std::string reps = "--benchmark_repetitions=5", min_time = "--benchmark_min_time=0.2";
  std::vector<char*> args{argv[0], reps.data(), min_time.data()};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  register_benchmarks();
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_summary(reporter);
  benchmark::Shutdown();
  return 0;
}
