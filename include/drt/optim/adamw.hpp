// drt/optim/adamw.hpp — AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).
//
// Shapes: every parameter p has moments m and v of p's shape; the step count t is shared.
//
// One step, for each element, in this order:
//     p ← p − lr·wd·p                       (decoupled decay: it does not pass through m or v)
//     m ← β1·m + (1 − β1)·g
//     v ← β2·v + (1 − β2)·g²
//     p ← p − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
// The four lines are one loop over the parameter's memory (read p, g, m, v once, write p, m, v
// once). m and v are allocated when the optimiser is built, so step() never touches the heap.
//
// The state (m, v and the step count) is reachable through first_moment(i), second_moment(i),
// steps() and set_steps(), so that a checkpoint can save it and write it back in place.
//
// On a device: m and v live on their parameter's device (and follow it there when the parameter
// is moved after the optimiser was built: the first step() moves them, values kept). A device
// parameter is updated by one fused kernel with the same formula (drt/cuda/optim/adamw.cuh),
// in files that nvcc compiles.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "drt/autodiff/var.hpp"
#include "drt/core/error.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/optim/adamw.cuh"
#endif

namespace drt {

struct AdamWConfig {
  double lr = 1e-3;  // used by step() without an argument; schedules pass their own lr
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

inline void validate(const AdamWConfig& c) {
  DRT_CHECK(std::isfinite(c.lr) && c.lr >= 0, "AdamWConfig: lr must be finite and >= 0, got ", c.lr);
  DRT_CHECK(c.beta1 >= 0 && c.beta1 < 1, "AdamWConfig: beta1 must be in [0, 1), got ", c.beta1);
  DRT_CHECK(c.beta2 >= 0 && c.beta2 < 1, "AdamWConfig: beta2 must be in [0, 1), got ", c.beta2);
  DRT_CHECK(c.eps > 0, "AdamWConfig: eps must be > 0, got ", c.eps);
  DRT_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0, "AdamWConfig: weight_decay must be finite and >= 0, got ",
            c.weight_decay);
}

template <class T>
class AdamW {
 public:
  AdamW(std::vector<Parameter<T>*> params, AdamWConfig config = {}) : params_(std::move(params)), config_(config) {
    validate(config_);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      DRT_CHECK(params_[i] != nullptr && params_[i]->defined(), "AdamW: parameter ", i, " is null or undefined");
      DRT_CHECK(params_[i]->value().is_contiguous() && params_[i]->grad().is_contiguous(), "AdamW: parameter ", i,
                " of shape ", params_[i]->shape().str(), " is not contiguous");
      for (std::size_t j = 0; j < i; ++j)
        DRT_CHECK(params_[j] != params_[i], "AdamW: parameter ", i, " is listed twice (also at ", j,
                  "); a tied weight must appear once");
      m_.push_back(Tensor<T>::zeros(params_[i]->shape(), nullptr, params_[i]->device()));
      v_.push_back(Tensor<T>::zeros(params_[i]->shape(), nullptr, params_[i]->device()));
    }
  }

  // One update of every parameter with learning rate `lr`, from the gradients as they are now.
  void step(double lr) {
    DRT_CHECK(std::isfinite(lr) && lr >= 0, "AdamW::step: lr must be finite and >= 0, got ", lr);
    ++steps_;
    const double t = static_cast<double>(steps_);
    const T decay = static_cast<T>(1.0 - lr * config_.weight_decay);
    const T b1 = static_cast<T>(config_.beta1), b2 = static_cast<T>(config_.beta2);
    // lr·m̂/(√v̂ + ε) = (lr/bc1)·m / (√v/√bc2 + ε): fold the corrections into two scalars.
    const T step_size = static_cast<T>(lr / (1.0 - std::pow(config_.beta1, t)));
    const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(1.0 - std::pow(config_.beta2, t)));
    const T eps = static_cast<T>(config_.eps);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (m_[i].device() != params_[i]->device()) follow_parameter(i);
      if (!params_[i]->value().on_host()) {
        step_on_device(i, decay, b1, b2, step_size, inv_sqrt_bc2, eps);
        continue;
      }
      T* p = params_[i]->value().data();
      const T* g = params_[i]->grad().data();
      T* m = m_[i].data();
      T* v = v_[i].data();
      const Index n = params_[i]->numel();
      auto update = [=](Index k) {
        const T gk = g[k];
        const T mk = b1 * m[k] + (T(1) - b1) * gk;
        const T vk = b2 * v[k] + (T(1) - b2) * gk * gk;
        m[k] = mk;
        v[k] = vk;
        p[k] = decay * p[k] - step_size * mk / (std::sqrt(vk) * inv_sqrt_bc2 + eps);
      };
      // Small parameters skip the parallel region altogether: libgomp allocates a team on every
      // entry into a region that runs on one thread (an `if` clause that is false included).
      if (n >= expr::kParallelThreshold) {
#pragma omp parallel for schedule(static)
        for (Index k = 0; k < n; ++k) update(k);
      } else {
        for (Index k = 0; k < n; ++k) update(k);
      }
    }
  }
  void step() { step(config_.lr); }

  void zero_grad() {
    for (Parameter<T>* p : params_) p->zero_grad();
  }

  // --- state, for checkpoints ---------------------------------------------------------------
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) {
    DRT_CHECK(steps >= 0, "AdamW::set_steps: step count must be >= 0, got ", steps);
    steps_ = steps;
  }
  std::size_t size() const { return params_.size(); }
  const std::vector<Parameter<T>*>& parameters() const { return params_; }
  // m and v of parameter i: tensors with the parameter's shape, on its device (heap memory on
  // the host); write into them to restore (copy_from works across devices).
  const Tensor<T>& first_moment(std::size_t i) const { return m_.at(i); }
  const Tensor<T>& second_moment(std::size_t i) const { return v_.at(i); }
  const AdamWConfig& config() const { return config_; }

 private:
  // Moves the moments of parameter i to its device (it was moved after the optimiser was built).
  void follow_parameter(std::size_t i) {
    m_[i] = m_[i].to(params_[i]->device());
    v_[i] = v_[i].to(params_[i]->device());
  }

  // The update of a device parameter: one kernel.
  void step_on_device(std::size_t i, T decay, T b1, T b2, T step_size, T inv_sqrt_bc2, T eps) {
    const Parameter<T>& param = *params_[i];
    DRT_CHECK(param.grad().device() == param.device(), "AdamW: parameter ", i, " lives on ", device_name(param.device()),
              " but its gradient on ", device_name(param.grad().device()));
    DRT_ON_DEVICE("AdamW::step",
                  cuda::adamw_update(param.value(), param.grad(), m_[i], v_[i], decay, b1, b2, step_size, inv_sqrt_bc2, eps));
  }

  std::vector<Parameter<T>*> params_;
  AdamWConfig config_;
  std::vector<Tensor<T>> m_, v_;
  std::int64_t steps_ = 0;
};

}  // namespace drt
