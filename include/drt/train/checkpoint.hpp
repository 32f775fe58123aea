// drt/train/checkpoint.hpp — a training checkpoint on disk, and how it is replaced safely.
//
// <out_dir>/checkpoint/
//   weights.safetensors    the model, under the reference's state_dict names (drt/model/checkpoint.hpp)
//   optimizer.safetensors  AdamW's moments: "<parameter name>.exp_avg" (m) and ".exp_avg_sq" (v),
//                          F32, with the optimiser's step count in the metadata ("step")
//   run.json               the run file as resolved (every default filled in, the model inline)
//   state.json             where the run stands: steps done, seed, the schedule's position, ...
//
// Replacing a checkpoint is all-or-nothing. The new one is written into checkpoint.tmp/ (every
// file flushed to disk); then checkpoint/ is renamed to checkpoint.old/, checkpoint.tmp/ to
// checkpoint/, and checkpoint.old/ is deleted. Each rename is atomic, so whenever the process
// dies there is a complete checkpoint on disk: checkpoint/ or, between the two renames,
// checkpoint.old/ (find_checkpoint() looks there too, and the next commit puts it back). An
// error while writing leaves checkpoint/ as it was.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include <fcntl.h>
#include <unistd.h>

#include "drt/io/file.hpp"
#include "drt/io/safetensors.hpp"
#include "drt/model/parameters.hpp"
#include "drt/optim/adamw.hpp"
#include "drt/train/run_config.hpp"

namespace drt::train {

namespace checkpoint_files {
inline constexpr const char* weights = "weights.safetensors";
inline constexpr const char* optimizer = "optimizer.safetensors";
inline constexpr const char* run = "run.json";
inline constexpr const char* state = "state.json";
}  // namespace checkpoint_files

// Where a run stands after `step` optimiser steps. Everything random in a run is a pure function
// of (seed, counter) — batches, Gumbel noise — so this, the weights and AdamW's moments are the
// whole state: there is no generator state to save beyond the seed and the step.
struct TrainState {
  std::int64_t step = 0;             // optimiser steps done; the next step is `step`
  std::uint64_t seed = 0;            // the run's seed
  std::int64_t optimizer_steps = 0;  // AdamW's bias-correction count (lags `step` by skipped steps)
  std::int64_t skipped_steps = 0;    // steps skipped for a non-finite gradient norm
  double lr = 0;                     // the learning rate of the last step
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  // The log interval in progress: the first progress line after a resume averages the same steps
  // as the uninterrupted run's.
  double interval_loss = 0, interval_grad_norm = 0;
  std::int64_t interval_steps = 0;
  double elapsed_seconds = 0;        // training time so far, over every session
  int threads = 0;                   // OpenMP threads of the run that wrote the checkpoint; results
                                     // are bit-identical only for the same thread count

  nlohmann::json to_json() const {
    auto finite_or_null = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
    return {{"format", 1},
            {"step", step},
            {"seed", seed},
            {"optimizer_steps", optimizer_steps},
            {"skipped_steps", skipped_steps},
            {"lr", lr},
            {"last_loss", finite_or_null(last_loss)},
            {"interval", {{"loss_sum", interval_loss}, {"grad_norm_sum", interval_grad_norm}, {"steps", interval_steps}}},
            {"elapsed_seconds", elapsed_seconds},
            {"threads", threads}};
  }

  static TrainState from_json(const nlohmann::json& j, const std::string& file) {
    detail::JsonSection s(j, file, "");
    TrainState t;
    s.require("format");
    s.check(s.integer("format", 0) == 1, "format", "must be 1 (a checkpoint from another drt version?)");
    s.require("step");
    t.step = s.integer_in("step", 0, 0, INT64_MAX);
    t.seed = s.unsigned_integer("seed", 0);
    t.optimizer_steps = s.integer_in("optimizer_steps", 0, 0, INT64_MAX);
    t.skipped_steps = s.integer_in("skipped_steps", 0, 0, INT64_MAX);
    t.lr = s.number("lr", 0);
    const nlohmann::json* last = s.find("last_loss");
    if (last && !last->is_null()) {
      s.check(last->is_number(), "last_loss", "must be a number or null, got ", last->dump());
      t.last_loss = last->get<double>();
    }
    if (s.has("interval")) {
      detail::JsonSection i(s.object("interval"), file, "interval.");
      t.interval_loss = i.number("loss_sum", 0);
      t.interval_grad_norm = i.number("grad_norm_sum", 0);
      t.interval_steps = i.integer_in("steps", 0, 0, INT64_MAX);
      i.finish({"loss_sum", "grad_norm_sum", "steps"});
    }
    t.elapsed_seconds = s.number("elapsed_seconds", 0);
    t.threads = static_cast<int>(s.integer_in("threads", 0, 0, 1 << 20));
    s.finish({"format", "step", "seed", "optimizer_steps", "skipped_steps", "lr", "last_loss", "interval", "elapsed_seconds",
              "threads"});
    return t;
  }
};

inline void write_json_atomically(const std::string& path, const nlohmann::json& j) {
  const std::string text = j.dump(2) + "\n";
  io::write_file_atomically(path, [&](std::FILE* f) { io::write_bytes(f, text.data(), text.size()); });
}

// ---- optimiser state ---------------------------------------------------------------------------

template <class T>
void save_optimizer_state(const AdamW<T>& optimizer, const ParameterList<T>& names, const std::string& path) {
  DRT_CHECK(names.size() == optimizer.size(), "save_optimizer_state: ", names.size(), " names for ", optimizer.size(),
            " parameters");
  io::SafetensorsWriter out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    DRT_CHECK(names[i].parameter == optimizer.parameters()[i], "save_optimizer_state: parameter ", i, " ('", names[i].name,
              "') is not the optimiser's parameter ", i);
    out.add(names[i].name + ".exp_avg", optimizer.first_moment(i), "F32");
    out.add(names[i].name + ".exp_avg_sq", optimizer.second_moment(i), "F32");
  }
  out.set_metadata("step", std::to_string(optimizer.steps()));
  out.set_metadata("optimizer", "AdamW");
  out.write(path);
}

// Writes the moments and the step count of `path` into `optimizer`, in place. Every moment must
// be there with its parameter's shape, and nothing else.
template <class T>
void load_optimizer_state(AdamW<T>& optimizer, const ParameterList<T>& names, const std::string& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  DRT_CHECK(names.size() == optimizer.size(), path, ": ", names.size(), " names for ", optimizer.size(), " parameters");
  std::size_t used = 0;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const Shape& shape = optimizer.parameters()[i]->shape();
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const std::string name = names[i].name + suffix;
      DRT_CHECK(file.contains(name), path, ": missing tensor '", name, "' of shape ", shape.str());
      DRT_CHECK(file.entry(name).shape == shape, path, ": tensor '", name, "' has shape ", file.entry(name).shape.str(),
                " but the parameter has ", shape.str());
      const Tensor<T>& into = suffix == std::string(".exp_avg") ? optimizer.first_moment(i) : optimizer.second_moment(i);
      into.copy_from(file.template tensor<T>(name));
      ++used;
    }
  }
  DRT_CHECK(used == file.entries().size(), path, ": holds ", file.entries().size(), " tensors but the model's ",
            names.size(), " parameters need ", used, " (a checkpoint of another model?)");
  const auto step = file.metadata().find("step");
  DRT_CHECK(step != file.metadata().end(), path, ": the metadata lacks the optimiser's 'step'");
  std::size_t end = 0;
  long long steps = -1;
  try {
    steps = std::stoll(step->second, &end);
  } catch (const std::exception&) {
  }
  DRT_CHECK(steps >= 0 && end == step->second.size(), path, ": metadata 'step' must be an integer >= 0, got '",
            step->second, "'");
  optimizer.set_steps(steps);
}

// ---- replacing the checkpoint directory --------------------------------------------------------

inline std::filesystem::path checkpoint_path(const std::string& out_dir) { return std::filesystem::path(out_dir) / "checkpoint"; }

namespace detail {
inline std::filesystem::path with_suffix(const std::filesystem::path& p, const char* suffix) {
  return p.parent_path() / (p.filename().string() + suffix);
}

// Makes the directory's entries (renames, new files) durable.
inline void sync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems do not open directories
  (void)::fsync(fd);
  ::close(fd);
}

inline void rename_or_throw(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  DRT_CHECK(!ec, "checkpoint: cannot rename ", from.string(), " to ", to.string(), " (", ec.message(), ")");
}
}  // namespace detail

// The complete checkpoint of `out_dir`, if there is one: checkpoint/, or checkpoint.old/ when a
// run died between the two renames of commit_checkpoint().
inline std::optional<std::filesystem::path> find_checkpoint(const std::string& out_dir) {
  const std::filesystem::path dir = checkpoint_path(out_dir), old = detail::with_suffix(dir, ".old");
  if (std::filesystem::is_directory(dir)) return dir;
  if (std::filesystem::is_directory(old)) return old;
  return std::nullopt;
}

// Writes a new checkpoint: `write_files(dir)` fills a fresh directory, which then replaces
// <out_dir>/checkpoint as described at the top of this file. If write_files throws, the
// half-written directory is removed and the previous checkpoint is left as it was.
inline void commit_checkpoint(const std::string& out_dir, const std::function<void(const std::string& dir)>& write_files) {
  namespace fs = std::filesystem;
  const fs::path dir = checkpoint_path(out_dir), tmp = detail::with_suffix(dir, ".tmp"),
                 old = detail::with_suffix(dir, ".old");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  DRT_CHECK(!ec, out_dir, ": cannot create the output folder (", ec.message(), ")");
  // Tidy up after a run that died: put back a checkpoint caught between the renames, drop an old
  // one whose replacement made it, drop a half-written one.
  if (fs::is_directory(old)) {
    if (fs::is_directory(dir)) fs::remove_all(old);
    else detail::rename_or_throw(old, dir);
  }
  fs::remove_all(tmp);
  fs::create_directory(tmp, ec);
  DRT_CHECK(!ec, tmp.string(), ": cannot create (", ec.message(), ")");
  try {
    write_files(tmp.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  detail::sync_directory(tmp);
  const bool had_one = fs::is_directory(dir);
  if (had_one) detail::rename_or_throw(dir, old);
  detail::rename_or_throw(tmp, dir);
  detail::sync_directory(dir.parent_path());
  if (had_one) fs::remove_all(old);
}

}  // namespace drt::train
