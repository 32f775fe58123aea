// drt/optim/schedule.hpp — the learning rate as a function of the step: linear warm-up, then a
// cosine decay.
//
// Steps count from 0 (the first optimiser step is step 0). With W = warmup_steps and
// N = total_steps:
//     s < W:        lr(s) = peak · (s + 1) / W          (step W−1 is the first at full peak; the
//                                                          first step is not wasted at lr 0)
//     W ≤ s < N:    lr(s) = min + (peak − min) · ½(1 + cos(π · (s − W) / (N − W)))
//     s ≥ N:        lr(s) = min
// So lr(W) = peak, lr(W + (N − W)/2) = (peak + min)/2 and lr(N) = min.
#pragma once

#include <cmath>
#include <cstdint>

#include "drt/core/error.hpp"

namespace drt {

struct CosineSchedule {
  double peak_lr = 1e-3;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  double min_lr = 0.0;

  void validate() const {
    DRT_CHECK(std::isfinite(peak_lr) && peak_lr > 0, "CosineSchedule: peak_lr must be finite and > 0, got ", peak_lr);
    DRT_CHECK(warmup_steps >= 0, "CosineSchedule: warmup_steps must be >= 0, got ", warmup_steps);
    DRT_CHECK(total_steps >= warmup_steps, "CosineSchedule: total_steps (", total_steps,
              ") must be >= warmup_steps (", warmup_steps, ")");
    DRT_CHECK(min_lr >= 0 && min_lr <= peak_lr, "CosineSchedule: min_lr must be in [0, peak_lr = ", peak_lr,
              "], got ", min_lr);
  }

  double lr(std::int64_t step) const {
    validate();
    DRT_CHECK(step >= 0, "CosineSchedule::lr: step must be >= 0, got ", step);
    if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return min_lr;
    const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
  }
};

}  // namespace drt
