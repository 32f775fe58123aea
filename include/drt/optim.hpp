// drt/optim.hpp — training utilities: the optimiser, the learning-rate schedule, gradient clipping.
#pragma once

#include "drt/optim/adamw.hpp"     // defines: AdamWConfig, AdamW<T>
#include "drt/optim/clip.hpp"      // defines: grad_norm, clip_grad_norm
#include "drt/optim/schedule.hpp"  // defines: CosineSchedule
