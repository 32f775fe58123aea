// tools/command_train.hpp — `drt train --run RUN.json` starts a training run; `drt train --resume
// RUN.json` continues it from <out_dir>/checkpoint. The run file says everything (model,
// optimiser, schedule, data, budget: drt/train/run_config.hpp, docs/training.md).
//
// Output: a progress line every log_every steps
//   step 120/2000  loss 2.3456  lr 1.2e-03  grad-norm 0.87  tok/s 12345  elapsed 1m02s  eta 9m58s
// (plus "mfu <percent>" with --device cuda, and "eval <loss>" on evaluation steps), the same numbers in <out_dir>/losses.csv, and a
// checkpoint every checkpoint_every steps and when the run stops. Ctrl-C finishes the current
// step, writes a checkpoint and exits 130. A bad run file stops before anything is written.
#pragma once

#include <csignal>
#include <ostream>
#include <string>

#include "args.hpp"
#include "device_flag.hpp"
#include "drt/train.hpp"

namespace drt::cli {

inline const CommandSpec& train_spec() {
  static const CommandSpec spec{
      "train",
      "Train a DRT or baseline model from a JSON run file; --resume continues it exactly.",
      {{"run", "FILE", "start the run of this run file (its out_dir must hold no checkpoint)"},
       {"resume", "FILE", "continue the run of this run file from <out_dir>/checkpoint, bit for bit"},
       {"steps", "N", "stop once N steps are done (the schedule still follows the run file's steps)"},
       device_flag_spec()}};
  return spec;
}

namespace detail {
inline volatile std::sig_atomic_t train_interrupted = 0;
inline void on_interrupt(int) { train_interrupted = 1; }
}  // namespace detail

inline int run_train(const Args& args, std::ostream& out) {
  if (args.has("run") == args.has("resume"))
    throw UsageError("give exactly one of --run FILE (a new run) and --resume FILE (continue one)");
  const bool resume = args.has("resume");
  train::TrainOptions options;
  if (args.has("steps")) {
    options.stop_at = args.integer("steps");
    if (options.stop_at < 1) throw UsageError("flag --steps needs a positive integer, got " + args.text("steps"));
  }
  const Device device = device_flag(args);
  if (device != Device::cpu) options.peak_flops = gpu_peak_flops();
  train::Trainer trainer(train::RunConfig::load(args.text(resume ? "resume" : "run")), device);
  if (resume) trainer.resume();

  detail::train_interrupted = 0;
  options.interrupt = &detail::train_interrupted;
  auto* previous = std::signal(SIGINT, detail::on_interrupt);
  try {
    trainer.train(out, options);
  } catch (...) {
    std::signal(SIGINT, previous);
    throw;
  }
  std::signal(SIGINT, previous);
  return detail::train_interrupted ? 130 : 0;
}

}  // namespace drt::cli
