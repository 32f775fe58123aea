// bench/support/attention_bench.hpp — what the attention benchmarks share (bench_cuda_attention,
// kernel_lab): the DRT training shapes' inputs on the GPU, their FLOPs, and forward/backward
// timing. Compiled by nvcc only.
//
// Shapes (config_63 at 16,380 tokens × batch B, as issue 7 states them at B = 4):
//   window attention  B, T 16,380, H = Hkv = 12, d 64, W 512 (513 keys per query)
//   GCA               Z = B × 259 query rows, H 12, M = N = 64, Kc 8, d 64
// FLOPs as flash attention counts them: forward 4·d per (query, key) pair (QKᵀ and PV), backward
// 2.5× the forward (recomputing P, then dV, dP, dQ, dK).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include <drt/attention/gca.hpp>
#include <drt/attention/window_attention.hpp>
#include <drt/core.hpp>
#include <drt/cuda.cuh>
#include <drt/nn/alibi.hpp>

namespace drt::bench {

struct Timing {
  double forward_ms = 0, backward_ms = 0;
};

struct NothingToPrepare {
  void operator()() const {}
};

// Forward, then backward with a random output gradient, `reps` times after one warm-up; each
// phase synchronised apart and timed alone (no copy of the output gradient). `prepare` runs
// untimed before each repetition.
template <class Forward, class Prepare = NothingToPrepare>
Timing time_forward_backward(int reps, const Shape& out_shape, Forward forward, Prepare prepare = {}) {
  using Clock = std::chrono::steady_clock;
  const Tensor<float> seed = random_uniform<float>(out_shape, 99, -1.f, 1.f).to(Device::cuda);
  Timing t;
  for (int r = 0; r <= reps; ++r) {
    prepare();
    cuda::synchronize();
    const auto t0 = Clock::now();
    const Var<float> out = forward();
    cuda::synchronize();
    const auto t1 = Clock::now();
    // The output's gradient is `seed` itself, as PyTorch's out.backward(grad) takes it, not a copy
    // (backward(out, seed) copies): the ops' backwards only read it, and a copy would add a pass
    // over the output (~200 MB, ~0.13 ms at the training shape) that is no part of the op.
    out.node()->grad = seed;
    tape().run_backward();
    cuda::synchronize();
    const auto t2 = Clock::now();
    tape().reset();
    if (r == 0) continue;  // warm-up
    t.forward_ms += std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
    t.backward_ms += std::chrono::duration<double, std::milli>(t2 - t1).count() / reps;
  }
  return t;
}

inline double forward_tflops(double flops, const Timing& t) { return flops / (t.forward_ms * 1e-3) / 1e12; }
inline double backward_tflops(double flops, const Timing& t) { return 2.5 * flops / (t.backward_ms * 1e-3) / 1e12; }

// As in a training step, where the ops' inputs are activations (q, k, v of window attention, q
// of GCA) or the chunk memory (GCA's k, v), whose gradient buffers start empty: the backward then
// sets them (Node::grad_slot) rather than adding into them. Untimed, before each repetition
// (time_forward_backward's `prepare`).
inline void drop_gradients(std::initializer_list<const Parameter<float>*> inputs) {
  for (const Parameter<float>* p : inputs) p->node()->grad = Tensor<float>();
}

// Parameters, not variables: leaves that outlive tape().reset() between repetitions.
struct WindowInputs {
  Index B, T, H, Hkv, d, W;
  Parameter<float> q, k, v;
  Tensor<float> slopes;
  float scale;

  WindowInputs(Index B_, Index T_, Index H_, Index Hkv_, Index d_, Index W_, Device device)
      : B(B_), T(T_), H(H_), Hkv(Hkv_), d(d_), W(W_),
        q(random_uniform<float>({B_, T_, H_, d_}, 1, -1.f, 1.f).to(device)),
        k(random_uniform<float>({B_, T_, Hkv_, d_}, 2, -1.f, 1.f).to(device)),
        v(random_uniform<float>({B_, T_, Hkv_, d_}, 3, -1.f, 1.f).to(device)),
        slopes(alibi_slopes<float>(static_cast<int>(H_))),
        scale(1.0f / std::sqrt(float(d_))) {}
  static WindowInputs drt_training(Index batch) { return {batch, 16380, 12, 12, 64, 512, Device::cuda}; }
  void drop_input_gradients() const { drop_gradients({&q, &k, &v}); }

  Var<float> run() const { return window_attention(q, k, v, slopes, W, scale); }
  Shape out_shape() const { return {B, T, H, d}; }
  double flops() const {  // query t sees min(t, W) + 1 keys
    double pairs = 0;
    for (Index t = 0; t < T; ++t) pairs += double(std::min(t, W) + 1);
    return 4.0 * double(d) * pairs * double(B * H);
  }
};

struct GcaInputs {
  Index B, rows, H, Hkv, M, N, d, Kc, E;
  Parameter<float> q, k, v, w;
  IndexTensor index;
  float scale;

  GcaInputs(Index B_, Index rows_, Index H_, Index Hkv_, Index M_, Index N_, Index d_, Index Kc_, Device device)
      : B(B_), rows(rows_), H(H_), Hkv(Hkv_), M(M_), N(N_), d(d_), Kc(Kc_), E(rows_),
        q(random_uniform<float>({B_ * rows_, H_, M_, d_}, 4, -1.f, 1.f).to(device)),
        k(random_uniform<float>({B_, rows_, N_, Hkv_, d_}, 5, -1.f, 1.f).to(device)),
        v(random_uniform<float>({B_, rows_, N_, Hkv_, d_}, 6, -1.f, 1.f).to(device)),
        w(random_uniform<float>({B_ * rows_, Kc_}, 7, 0.05f, 1.f).to(device)),
        index(IndexTensor::empty({B_ * rows_, Kc_})),
        scale(1.0f / std::sqrt(float(d_))) {
    // Every slot filled with chunks of the row's own sequence (the full-cost case).
    for (Index z = 0; z < B * rows; ++z)
      for (Index i = 0; i < Kc; ++i) index(z, i) = static_cast<std::int32_t>((z % rows * 5 + i * 31) % E);
    if (device != Device::cpu) index = index.to(device);
  }
  static GcaInputs drt_training(Index batch) { return {batch, 259, 12, 12, 64, 64, 64, 8, Device::cuda}; }

  Var<float> run() const { return gca(q, k, v, index, w, scale); }
  void drop_input_gradients() const { drop_gradients({&q, &k, &v}); }
  Shape out_shape() const { return {B * rows, H, M, d}; }
  double flops() const { return 4.0 * double(B * rows * H * M) * double(Kc * N) * double(d); }
};

}  // namespace drt::bench
