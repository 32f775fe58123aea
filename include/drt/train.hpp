// drt/train.hpp — training: run files, the training loop, checkpoints and exact resume
// (`drt train`, docs/training.md). Includes the model.
#pragma once

#include "drt/model.hpp"

#include "drt/train/toy_source.hpp"  // defines: ToySource (synthetic copy / count batches)
#include "drt/train/run_config.hpp"  // defines: RunConfig, DataConfig, make_batch_source
#include "drt/train/checkpoint.hpp"  // defines: TrainState, save/load_optimizer_state, commit_checkpoint, find_checkpoint
#include "drt/train/trainer.hpp"     // defines: Trainer, TrainOptions, StepRecord, TrainableModel, make_model
