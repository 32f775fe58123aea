// drt/train/trainer.hpp — the training loop of `drt train`: AdamW, warm-up + cosine schedule,
// gradient clipping and accumulation, progress lines, periodic evaluation, checkpoints and exact
// resume. fp32 on the CPU.
//
// Shapes: B = batch_size sequences per micro-batch, T = seq_len tokens, A = grad_accum
// micro-batches per optimiser step (B·A sequences per step).
//
// One optimiser step s:
//   for a in 0..A−1:   i = s·A + a
//       batch  = train_source.batch(i, B, T)                      (a pure function of (seed, i))
//       loss_a = model.loss(batch, training, noise seed = random_bits(noise_seed, i))
//       backward(loss_a / A)                                       (gradients add up over a)
//   ‖g‖ = clip_grad_norm(clip_norm);  AdamW step with lr = schedule(s);  zero the gradients
// The step's loss is the mean of the A losses. Nothing depends on the wall clock or on thread
// timing, so a run is a pure function of its run file (for a given thread count), and a run
// resumed from a checkpoint computes what the uninterrupted run computes, bit for bit.
//
// On a GPU (`drt train --device cuda`, a program compiled by nvcc) the same loop runs with the
// model's parameters, gradients and AdamW state on the device; batches are made on the host and
// their ids copied over by the ops that read them. The progress line then also shows the model
// FLOPs utilisation against the GPU's dense bf16 peak.
#pragma once

#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "drt/core/parallel.hpp"
#include "drt/model/baseline.hpp"
#include "drt/model/checkpoint.hpp"
#include "drt/model/drt.hpp"
#include "drt/model/flops.hpp"
#include "drt/optim/adamw.hpp"
#include "drt/optim/clip.hpp"
#include "drt/optim/schedule.hpp"
#include "drt/train/checkpoint.hpp"
#include "drt/train/run_config.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drt::train {

// ---- the model, whichever it is ---------------------------------------------------------------

// What the loop needs from a model; DRT and the sliding-window baseline differ only in how a
// batch becomes a loss.
class TrainableModel {
 public:
  virtual ~TrainableModel() = default;
  // Mean next-token loss of the batch. `training` turns DRT's Gumbel noise on (spec §5.3).
  virtual Var<float> loss(const data::Batch& batch, bool training, std::uint64_t noise_seed) const = 0;
  // Logits (B, T, V) in eval mode for tokens (B, T), row t predicting token t + 1 (DRT's
  // landmark rows removed).
  virtual Tensor<float> logits(const IndexTensor& tokens) const = 0;
  virtual ParameterList<float> named_parameters() const = 0;
  virtual void save(const std::string& path) const = 0;  // safetensors, reference names
  virtual void load(const std::string& path) = 0;
  virtual std::int64_t parameter_count() const = 0;
  virtual double flops_per_token() const = 0;  // model FLOPs of one training token (flops.hpp)
  virtual std::string describe() const = 0;
};

template <class Model>
class ModelAdapter final : public TrainableModel {
 public:
  ModelAdapter(const ModelConfig& config, std::uint64_t seed, std::string name, Device device)
      : model_(config, seed), name_(std::move(name)) {
    model_.move_to(device);  // initial weights are drawn on the host, so every device starts equal
  }
  Var<float> loss(const data::Batch& batch, bool training, std::uint64_t noise_seed) const override {
    if constexpr (std::is_same_v<Model, DrtModel<float>>)
      return model_.loss(batch.tokens, ForwardOptions{.training = training, .noise_seed = noise_seed}, &batch.labels);
    else
      return model_.loss(batch.tokens, &batch.labels);
  }
  Tensor<float> logits(const IndexTensor& tokens) const override {
    if constexpr (std::is_same_v<Model, DrtModel<float>>)
      return drop_landmark_rows(model_.logits(tokens).value().to(Device::cpu), model_.config().enc_chunk_size);
    else
      return model_.logits(tokens).value().to(Device::cpu);
  }
  ParameterList<float> named_parameters() const override { return model_.named_parameters(); }
  void save(const std::string& path) const override { save_weights(model_, path); }
  void load(const std::string& path) override { load_weights(model_, path); }
  std::int64_t parameter_count() const override { return model_.parameter_count(); }
  double flops_per_token() const override {
    if constexpr (std::is_same_v<Model, DrtModel<float>>) return drt_training_flops_per_token(model_.config());
    else return baseline_training_flops_per_token(model_.config());
  }
  std::string describe() const override { return name_; }
  const Model& model() const { return model_; }

 private:
  Model model_;
  std::string name_;
};

inline std::unique_ptr<TrainableModel> make_model(const RunConfig& run, Device device = Device::cpu) {
  if (run.model_type == "drt") return std::make_unique<ModelAdapter<DrtModel<float>>>(run.model, run.seed, "DRT", device);
  return std::make_unique<ModelAdapter<SlidingWindowLM<float>>>(run.model, run.seed, "sliding-window baseline", device);
}

// ---- seeds ------------------------------------------------------------------------------------

// Independent streams derived from the run's seed. The model's initial weights use the seed
// itself (DrtModel(config, seed)).
inline std::uint64_t train_data_seed(std::uint64_t seed) { return random_bits(seed, 0x747261696eull); }  // "train"
inline std::uint64_t eval_data_seed(std::uint64_t seed) { return random_bits(seed, 0x6576616cull); }     // "eval"
inline std::uint64_t noise_stream_seed(std::uint64_t seed) { return random_bits(seed, 0x6e6f697365ull); }  // "noise"

// ---- formatting -------------------------------------------------------------------------------

// 62.4 → "1m02s", 3725 → "1h02m05s", 9.2 → "9s".
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  char text[48];
  if (s >= 3600) std::snprintf(text, sizeof text, "%lldh%02lldm%02llds", s / 3600, s / 60 % 60, s % 60);
  else if (s >= 60) std::snprintf(text, sizeof text, "%lldm%02llds", s / 60, s % 60);
  else std::snprintf(text, sizeof text, "%llds", s);
  return text;
}

// ---- the loop ---------------------------------------------------------------------------------

struct StepRecord {
  std::int64_t step = 0;  // 1-based: the number of optimiser steps done after this one
  double loss = 0;        // mean of the micro-batch losses
  double lr = 0;
  double grad_norm = 0;   // before clipping
  bool skipped = false;   // non-finite gradient norm: no update
};

struct TrainOptions {
  // Stop when this many steps are done (0: the run file's `steps`). The schedule and everything
  // else still follow the run file, so stopping early and resuming changes no number.
  std::int64_t stop_at = 0;
  // Called after each file of a checkpoint is written, with its name: lets tests fail mid-way.
  std::function<void(const std::string& file)> after_checkpoint_file;
  // When it becomes non-zero (e.g. from a SIGINT handler), the loop finishes the current step,
  // writes a checkpoint and returns.
  const volatile std::sig_atomic_t* interrupt = nullptr;
  // Called at every evaluation step (eval_every) after the held-out loss, with the step number;
  // its text ends the progress line (e.g. "passkey 0.94" from a task-specific evaluation).
  std::function<std::string(std::int64_t step)> extra_eval;
  // The device's peak FLOP/s (dense bf16); when positive the progress line shows the model FLOPs
  // utilisation, "mfu 12.3%".
  double peak_flops = 0;
};

class Trainer {
 public:
  // Builds the model (initial weights from run.seed) on `device`, the optimiser and the data
  // sources. Writes nothing; sets the OpenMP thread count when run.threads > 0.
  explicit Trainer(RunConfig run, Device device = Device::cpu)
      : run_(std::move(run)),
        device_(device),
        model_(make_model(run_, device)),
        names_(model_->named_parameters()),
        params_(parameter_pointers(names_)),
        optimizer_(params_, run_.optimizer),
        train_source_(make_batch_source(run_, DataStream::train, train_data_seed(run_.seed))),
        eval_source_(make_batch_source(run_, DataStream::eval, eval_data_seed(run_.seed))) {
#ifdef _OPENMP
    if (run_.threads > 0) omp_set_num_threads(run_.threads);
#endif
    DRT_CHECK(train_source_->vocab_size() <= run_.model.vocab_size, run_.source, ": key 'data': the data's ids go up to ",
              train_source_->vocab_size() - 1, " but the model's vocab_size is ", run_.model.vocab_size);
    // Draw one batch of each stream now, so that data too short for seq_len (say) stops the run
    // before anything is written, not at the first evaluation hours later.
    for (const data::BatchSource* source : {train_source_.get(), eval_source_.get()}) {
      try {
        source->batch(0, 1, static_cast<Index>(run_.seq_len));
      } catch (const Error& e) {
        throw Error(drt::detail::concat(run_.source, ": key 'data' (", source == eval_source_.get() ? "evaluation" : "training",
                                        " batches): ", e.what()));
      }
    }
    state_.seed = run_.seed;
  }

  const RunConfig& run() const { return run_; }
  const TrainState& state() const { return state_; }
  TrainableModel& model() { return *model_; }
  const AdamW<float>& optimizer() const { return optimizer_; }
  const data::BatchSource& train_source() const { return *train_source_; }
  std::string losses_path() const { return (std::filesystem::path(run_.out_dir) / "losses.csv").string(); }

  // Loads <out_dir>/checkpoint: weights, AdamW's moments and step count, where the run stands.
  // The run must agree with the checkpoint's run.json on every key that decides the numbers
  // (RunConfig::trajectory_keys()); losses.csv loses the rows written after the checkpoint.
  void resume() {
    const auto found = find_checkpoint(run_.out_dir);
    DRT_CHECK(found, run_.source, ": no checkpoint to resume in ", checkpoint_path(run_.out_dir).string(),
              " (train without --resume first)");
    const std::string dir = found->string();
    auto file = [&](const char* name) { return (*found / name).string(); };
    const nlohmann::json saved_run = detail::parse_json_file(file(checkpoint_files::run), "checkpoint's run file");
    check_same_trajectory(saved_run, file(checkpoint_files::run));
    saved_precision_ = saved_run.contains("precision") && saved_run["precision"].is_string()
                           ? saved_run["precision"].get<std::string>()
                           : "fp32";
    const TrainState state =
        TrainState::from_json(detail::parse_json_file(file(checkpoint_files::state), "checkpoint state"), file(checkpoint_files::state));
    DRT_CHECK(state.seed == run_.seed, file(checkpoint_files::state), ": seed ", state.seed, " differs from run.json's ", run_.seed);
    model_->load(file(checkpoint_files::weights));
    load_optimizer_state(optimizer_, names_, file(checkpoint_files::optimizer));
    DRT_CHECK(optimizer_.steps() == state.optimizer_steps, dir, ": the optimiser's step count ", optimizer_.steps(),
              " differs from state.json's optimizer_steps ", state.optimizer_steps);
    state_ = state;
    resumed_ = true;
    truncate_losses(state_.step);
  }

  // Trains until options.stop_at (or run.steps) steps are done, printing progress to `log`,
  // then writes a checkpoint. Returns the records of the steps it ran.
  std::vector<StepRecord> train(std::ostream& log, const TrainOptions& options = {}) {
    const std::int64_t stop = options.stop_at > 0 ? options.stop_at : run_.steps;
    const bool fresh = state_.step == 0 && !resumed_;
    const MatmulPrecisionScope precision(run_.precision);  // restored when training returns
    if (fresh) {
      // Never overwrite a checkpoint by starting afresh: it may be days of training.
      const auto existing = find_checkpoint(run_.out_dir);
      DRT_CHECK(!existing, run_.source, ": ", existing ? existing->string() : "", " already holds a checkpoint; resume it "
                "(drt train --resume) or choose another out_dir");
      std::filesystem::create_directories(run_.out_dir);
      write_text_atomically(losses_path(), "step,loss,lr,grad_norm,eval_loss\n");
    }
    if (fresh) {
      log << "model " << model_->describe() << ", " << model_->parameter_count() << " parameters, on "
          << device_name(device_) << " (" << precision_name(run_.precision) << " GEMMs); data " << train_source_->describe() << "\n"
          << "batch " << run_.batch_size << " x " << run_.grad_accum << " x " << run_.seq_len << " tokens = "
          << run_.tokens_per_step() << " tokens per step, " << run_.steps << " steps\n";
    } else {
      log << "resuming at step " << state_.step << " from " << checkpoint_path(run_.out_dir).string() << "\n";
      if (saved_precision_ != precision_name(run_.precision))
        log << "note: the checkpoint was trained with " << saved_precision_ << " GEMMs and this run uses "
            << precision_name(run_.precision) << "\n";
      if (state_.threads > 0 && state_.threads != thread_slots())
        log << "note: the checkpoint was written with " << state_.threads << " threads and this run has "
            << thread_slots() << ": the steps from here equal the uninterrupted run's only up to float rounding "
            << "(some gradient GEMMs split their sums by thread count)\n";
    }
    if (state_.step >= stop) log << "nothing to do: " << state_.step << " steps are done, the run stops at " << stop << "\n";
    std::vector<StepRecord> records;
    session_start_ = Clock::now();
    session_train_seconds_ = 0;
    session_steps_ = 0;
    interval_train_seconds_ = 0;
    const double elapsed_before = state_.elapsed_seconds;
    while (state_.step < stop) {
      const auto t0 = Clock::now();
      const StepRecord r = step();
      const double dt = seconds_between(t0, Clock::now());
      session_train_seconds_ += dt;
      interval_train_seconds_ += dt;
      ++session_steps_;
      records.push_back(r);
      state_.elapsed_seconds = elapsed_before + seconds_between(session_start_, Clock::now());

      const bool eval_now = run_.eval_every > 0 && (r.step % run_.eval_every == 0 || r.step == run_.steps);
      const bool log_now = r.step % run_.log_every == 0 || r.step == run_.steps || eval_now;
      double eval_loss = std::nan("");
      std::string extra;
      if (eval_now) eval_loss = evaluate();
      if (eval_now && options.extra_eval) extra = options.extra_eval(state_.step);
      if (log_now) write_progress(log, stop, eval_loss, extra, options.peak_flops);
      state_.elapsed_seconds = elapsed_before + seconds_between(session_start_, Clock::now());
      const bool interrupted = options.interrupt && *options.interrupt;
      if (state_.step == stop || interrupted || (run_.checkpoint_every > 0 && r.step % run_.checkpoint_every == 0)) {
        save_checkpoint(options.after_checkpoint_file);
        if (state_.step == stop || interrupted)
          log << "checkpoint at step " << state_.step << " in " << checkpoint_path(run_.out_dir).string() << "\n";
      }
      if (interrupted) {
        log << "interrupted: resume with --resume\n";
        break;
      }
    }
    log << std::flush;
    return records;
  }

  // One optimiser step (see the top of this file).
  StepRecord step() {
    const std::int64_t s = state_.step;
    const std::uint64_t noise_seed = noise_stream_seed(run_.seed);
    const bool noise = run_.model_type == "drt";
    double loss_sum = 0;
    // bf16 GEMMs on the GPU: each weight matrix is rounded once per step, not twice per
    // micro-batch; the weights change only in the optimiser's step, after this scope.
    std::vector<const void*> weights;
    std::optional<RoundedOperandReuse> rounded_weights;
    if (device_ != Device::cpu && matmul_precision() == Precision::bf16) {
      weights = weight_storages(names_);
      rounded_weights.emplace(weights);
    }
    for (std::int64_t a = 0; a < run_.grad_accum; ++a) {
      const std::int64_t i = s * run_.grad_accum + a;
      const data::Batch batch = train_source_->batch(i, static_cast<Index>(run_.batch_size), static_cast<Index>(run_.seq_len));
      const Var<float> loss = model_->loss(batch, noise, random_bits(noise_seed, static_cast<std::uint64_t>(i)));
      loss_sum += static_cast<double>(loss.item());
      // Each micro-batch's loss is a mean over its own targets; 1/A makes the sum a mean again.
      // Only the parameters' gradients are needed: the others are freed as backward goes.
      if (run_.grad_accum > 1)
        backward(loss * (1.0f / static_cast<float>(run_.grad_accum)), KeepGradients::leaves_only);
      else backward(loss, KeepGradients::leaves_only);
      tape().reset();
    }
    rounded_weights.reset();
    StepRecord r;
    r.step = s + 1;
    r.loss = loss_sum / static_cast<double>(run_.grad_accum);
    r.lr = run_.schedule.lr(s);
    r.grad_norm = run_.clip_norm > 0 ? clip_grad_norm(params_, run_.clip_norm) : grad_norm(params_);
    // A non-finite norm means a non-finite gradient somewhere: skip the update rather than
    // write NaN into every weight (the step still counts, so the schedule moves on).
    r.skipped = !std::isfinite(r.grad_norm) || !std::isfinite(r.loss);
    if (!r.skipped) optimizer_.step(r.lr);
    optimizer_.zero_grad();

    state_.step = r.step;
    state_.optimizer_steps = optimizer_.steps();
    state_.skipped_steps += r.skipped ? 1 : 0;
    state_.lr = r.lr;
    state_.last_loss = r.loss;
    if (!r.skipped) {
      state_.interval_loss += r.loss;
      state_.interval_grad_norm += r.grad_norm;
      ++state_.interval_steps;
    }
    return r;
  }

  // Mean loss over eval_batches held-out batches (a seed stream of their own, no Gumbel noise).
  double evaluate() {
    NoGradGuard no_grad;
    double sum = 0;
    for (std::int64_t i = 0; i < run_.eval_batches; ++i) {
      const data::Batch batch = eval_source_->batch(i, static_cast<Index>(run_.batch_size), static_cast<Index>(run_.seq_len));
      sum += static_cast<double>(model_->loss(batch, false, 0).item());
      tape().reset();
    }
    return sum / static_cast<double>(run_.eval_batches);
  }

  // Writes <out_dir>/checkpoint (all or nothing: drt/train/checkpoint.hpp).
  void save_checkpoint(const std::function<void(const std::string&)>& after_file = {}) {
    state_.threads = thread_slots();
    commit_checkpoint(run_.out_dir, [&](const std::string& dir) {
      auto done = [&](const char* name) {
        if (after_file) after_file(name);
      };
      const std::filesystem::path d(dir);
      model_->save((d / checkpoint_files::weights).string());
      done(checkpoint_files::weights);
      save_optimizer_state(optimizer_, names_, (d / checkpoint_files::optimizer).string());
      done(checkpoint_files::optimizer);
      write_json_atomically((d / checkpoint_files::run).string(), run_.to_json());
      done(checkpoint_files::run);
      write_json_atomically((d / checkpoint_files::state).string(), state_.to_json());
      done(checkpoint_files::state);
    });
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

  // One progress line, one row of losses.csv; then a new interval begins.
  void write_progress(std::ostream& log, std::int64_t stop, double eval_loss, const std::string& extra, double peak_flops) {
    const double n = static_cast<double>(state_.interval_steps);
    const double loss = n > 0 ? state_.interval_loss / n : std::nan(""), norm = n > 0 ? state_.interval_grad_norm / n : std::nan("");
    const double tokens_per_second =
        interval_train_seconds_ > 0 ? static_cast<double>(run_.tokens_per_step()) * n / interval_train_seconds_ : 0;
    const double eta = session_steps_ > 0 ? session_train_seconds_ / static_cast<double>(session_steps_) *
                                                static_cast<double>(stop - state_.step)
                                          : 0;
    char line[256];
    std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  lr %.1e  grad-norm %.2f  tok/s %.0f  elapsed %s  eta %s",
                  static_cast<long long>(state_.step), static_cast<long long>(stop), loss, state_.lr, norm,
                  tokens_per_second, format_duration(state_.elapsed_seconds).c_str(), format_duration(eta).c_str());
    log << line;
    if (peak_flops > 0) {
      std::snprintf(line, sizeof line, "  mfu %.1f%%", 100 * tokens_per_second * model_->flops_per_token() / peak_flops);
      log << line;
    }
    if (std::isfinite(eval_loss)) {
      std::snprintf(line, sizeof line, "  eval %.4f", eval_loss);
      log << line;
    }
    if (!extra.empty()) log << "  " << extra;
    if (state_.skipped_steps > 0) log << "  skipped " << state_.skipped_steps;
    log << "\n" << std::flush;

    char row[256];
    std::snprintf(row, sizeof row, "%lld,%.9g,%.9g,%.9g,", static_cast<long long>(state_.step), loss, state_.lr, norm);
    std::string text = row;
    if (std::isfinite(eval_loss)) {
      std::snprintf(row, sizeof row, "%.9g", eval_loss);
      text += row;
    }
    text += "\n";
    std::FILE* f = std::fopen(losses_path().c_str(), "ab");
    DRT_CHECK(f, losses_path(), ": cannot open for appending");
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    DRT_CHECK(std::fclose(f) == 0 && ok, losses_path(), ": write failed");

    state_.interval_loss = state_.interval_grad_norm = 0;
    state_.interval_steps = 0;
    interval_train_seconds_ = 0;
  }

  // The checkpoint's run must compute the same numbers as this one.
  void check_same_trajectory(const nlohmann::json& saved, const std::string& saved_path) const {
    const nlohmann::json now = run_.to_json();
    for (const std::string& key : RunConfig::trajectory_keys()) {
      DRT_CHECK(saved.contains(key), saved_path, ": key '", key, "' is missing");
      std::string where = key;
      nlohmann::json saved_value = saved[key], now_value = now[key];
      if (key == "data" && saved_value.is_object())  // the data may move; it may not change
        for (const std::string& k : DataConfig::location_keys()) saved_value.erase(k), now_value.erase(k);
      const nlohmann::json *a = &saved_value, *b = &now_value;
      if (*a == *b) continue;
      // Descend to the first differing leaf, for a message that names it.
      while (a->is_object() && b->is_object()) {
        bool found = false;
        for (auto it = b->begin(); it != b->end(); ++it)
          if (!a->contains(it.key()) || (*a)[it.key()] != it.value()) {
            where += "." + it.key();
            if (!a->contains(it.key())) return fail_trajectory(where, "(absent)", it.value().dump(), saved_path);
            a = &(*a)[it.key()];
            b = &it.value();
            found = true;
            break;
          }
        if (!found) break;
      }
      fail_trajectory(where, a->dump(), b->dump(), saved_path);
    }
  }
  [[noreturn]] void fail_trajectory(const std::string& key, const std::string& saved, const std::string& now,
                                    const std::string& saved_path) const {
    throw Error(drt::detail::concat(run_.source, ": key '", key, "' is ", now, " but the checkpoint was trained with ", saved,
                                    " (", saved_path, "); --resume continues the same run only: restore the key or "
                                    "start a new out_dir"));
  }

  static void write_text_atomically(const std::string& path, const std::string& text) {
    io::write_file_atomically(path, [&](std::FILE* f) { io::write_bytes(f, text.data(), text.size()); });
  }

  // Keeps the header and the rows of steps <= `step` (a run that died after its last checkpoint
  // had logged steps that the resumed run logs again).
  void truncate_losses(std::int64_t step) const {
    std::ifstream in(losses_path());
    if (!in.good()) return;
    std::string line, kept;
    bool header = true;
    while (std::getline(in, line)) {
      if (header || (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0])) && std::stoll(line) <= step))
        kept += line + "\n";
      header = false;
    }
    in.close();
    write_text_atomically(losses_path(), kept);
  }

  RunConfig run_;
  Device device_;
  std::unique_ptr<TrainableModel> model_;
  ParameterList<float> names_;
  std::vector<Parameter<float>*> params_;
  AdamW<float> optimizer_;
  std::unique_ptr<data::BatchSource> train_source_, eval_source_;
  TrainState state_;
  bool resumed_ = false;
  std::string saved_precision_ = "fp32";  // the resumed checkpoint's run.json "precision"
  Clock::time_point session_start_;
  double session_train_seconds_ = 0, interval_train_seconds_ = 0;
  std::int64_t session_steps_ = 0;
};

}  // namespace drt::train
