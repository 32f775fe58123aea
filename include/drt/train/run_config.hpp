// drt/train/run_config.hpp — the run file of `drt train`: one JSON object that says everything
// about a training run (model, optimiser, schedule, data, budget), and the data sources it names.
//
// Every key is checked: an unknown key, a value of the wrong type or an impossible value stops
// with a drt::Error naming the run file and the key ("runs/a.json: key 'optimizer.lr' must be a
// number, got \"fast\""). Nothing is written anywhere until the whole file has been accepted.
// Relative paths inside a run file are relative to the run file's own folder, so a run file and
// its data can move together. docs/training.md lists every key with its default.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/precision.hpp"
#include "drt/data/batch.hpp"
#include "drt/data/corpus.hpp"
#include "drt/data/mqar.hpp"
#include "drt/data/passkey.hpp"
#include "drt/data/shard.hpp"
#include "drt/data/tokenizer.hpp"
#include "drt/model/config.hpp"
#include "drt/optim/adamw.hpp"
#include "drt/optim/schedule.hpp"
#include "drt/train/toy_source.hpp"

namespace drt::train {

namespace detail {

// Reads the keys of one JSON object, remembering which were read, so that finish() can name
// every key the run file has but drt does not know. `prefix` is the object's path ("optimizer.").
class JsonSection {
 public:
  JsonSection(const nlohmann::json& j, std::string file, std::string prefix)
      : j_(j), file_(std::move(file)), prefix_(std::move(prefix)) {
    DRT_CHECK(j.is_object(), file_, ": ", prefix_.empty() ? std::string("the run file") : "key '" + section_name() + "'",
              " must be a JSON object, got ", j.dump());
  }

  std::string name(const std::string& key) const { return prefix_ + key; }
  bool has(const std::string& key) const { return j_.contains(key); }

  // Throws "<file>: key '<prefix.key>' <why...>".
  template <class... Why>
  [[noreturn]] void fail(const std::string& key, const Why&... why) const {
    throw Error(drt::detail::concat(file_, ": key '", name(key), "' ", why...));
  }
  template <class... Why>
  void check(bool ok, const std::string& key, const Why&... why) const {
    if (!ok) fail(key, why...);
  }

  void require(const std::string& key) const {
    if (!has(key)) throw Error(drt::detail::concat(file_, ": required key '", name(key), "' is missing"));
  }

  const nlohmann::json* find(const std::string& key) {
    if (!has(key)) return nullptr;
    used_.insert(key);
    return &j_[key];
  }

  double number(const std::string& key, double fallback) {
    const nlohmann::json* v = find(key);
    if (!v) return fallback;
    check(v->is_number(), key, "must be a number, got ", v->dump());
    const double x = v->get<double>();
    check(std::isfinite(x), key, "must be finite, got ", v->dump());
    return x;
  }

  std::int64_t integer(const std::string& key, std::int64_t fallback) {
    const nlohmann::json* v = find(key);
    if (!v) return fallback;
    check(v->is_number_integer(), key, "must be an integer, got ", v->dump());
    check(!v->is_number_unsigned() || v->get<std::uint64_t>() <= std::uint64_t{INT64_MAX}, key, "is out of range, got ",
          v->dump());
    return v->get<std::int64_t>();
  }

  // An integer in [low, high].
  std::int64_t integer_in(const std::string& key, std::int64_t fallback, std::int64_t low, std::int64_t high) {
    const std::int64_t x = integer(key, fallback);
    check(x >= low && x <= high, key, "must be in [", low, ", ", high, "], got ", x);
    return x;
  }

  std::uint64_t unsigned_integer(const std::string& key, std::uint64_t fallback) {
    const nlohmann::json* v = find(key);
    if (!v) return fallback;
    check(v->is_number_unsigned(), key, "must be an integer >= 0, got ", v->dump());
    return v->get<std::uint64_t>();
  }

  std::string text(const std::string& key, const std::string& fallback) {
    const nlohmann::json* v = find(key);
    if (!v) return fallback;
    check(v->is_string(), key, "must be a string, got ", v->dump());
    return v->get<std::string>();
  }

  // One of `choices`.
  std::string choice(const std::string& key, const std::string& fallback, const std::vector<std::string>& choices) {
    const std::string s = text(key, fallback);
    std::string list;
    bool ok = false;
    for (const auto& c : choices) {
      ok |= c == s;
      list += (list.empty() ? "\"" : ", \"") + c + "\"";
    }
    check(ok, key, "must be one of ", list, ", got \"", s, "\"");
    return s;
  }

  const nlohmann::json& object(const std::string& key) {
    require(key);
    const nlohmann::json* v = find(key);
    check(v->is_object(), key, "must be a JSON object, got ", v->dump());
    return *v;
  }

  // Every key not read so far is unknown: name it (a misspelt key would otherwise be ignored
  // silently, and the run would train with the default).
  void finish(const std::vector<std::string>& known) const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (used_.count(it.key())) continue;
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw Error(drt::detail::concat(file_, ": unknown key '", name(it.key()), "' (known keys",
                                      prefix_.empty() ? "" : " of '" + section_name() + "'", ": ", list, ")"));
    }
  }

  const std::string& file() const { return file_; }

 private:
  // "optimizer" for the prefix "optimizer.".
  std::string section_name() const { return prefix_.empty() ? prefix_ : prefix_.substr(0, prefix_.size() - 1); }

  const nlohmann::json& j_;
  std::string file_, prefix_;
  std::set<std::string> used_;
};

inline nlohmann::json parse_json_file(const std::string& path, const char* what) {
  std::ifstream in(path);
  DRT_CHECK(in.good(), path, ": cannot open the ", what);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    DRT_CHECK(false, path, ": not valid JSON (", e.what(), ")");
  }
  return {};
}

}  // namespace detail

// ---- the data section ---------------------------------------------------------------------------
//
// "data": {"kind": K, ...}; each kind takes its own keys (docs/training.md):
//   toy      synthetic copy / count sequences (drt/train/toy_source.hpp); no files
//   shard    random windows of a token shard (drt/data/shard.hpp, made by `drt tokenize`)
//   passkey  the passkey retrieval task over byte-level text of a corpus (drt/data/passkey.hpp)
//   mqar     multi-query associative recall (drt/data/mqar.hpp), noise or text filler
// Evaluation batches never overlap training ones: the shard's tail (or another shard), the
// corpus's tail, or (synthetic kinds) a seed stream of their own.

// Which stream of batches a source is built for: training, or the held-out batches of evaluation.
enum class DataStream { train, eval };

struct DataConfig {
  std::string kind = "toy";
  // toy
  std::string task = "copy";
  int symbols = 16;
  std::int64_t period = 0;  // 0: seq_len / 2
  // shard
  std::string path;             // the training shard
  std::string eval_path;        // a shard for evaluation; "" = hold out the tail of `path`
  double eval_fraction = 0.05;  // shard, passkey: the tail of the tokens kept for evaluation
  // passkey, and mqar with text filler: a corpus read byte-level (data/corpus/<name>.txt)
  std::string corpus;           // resolved path; passkey's default is kjv
  int passkey_tokens = 5;
  bool label_text = false;
  double recall_fraction = 0;   // passkey: the share of training rows that are recall trials
  // mqar
  int vocab_size = 0;           // ids of the task are below this (required)
  int num_pairs = 8, num_queries = 8;
  std::int32_t key_low = -1, key_high = -1, value_low = -1, value_high = -1, noise_low = -1, noise_high = -1;  // -1: default split
  bool queries_at_end = false;

  static std::vector<std::string> kinds() { return {"toy", "shard", "passkey", "mqar"}; }
  // Keys that say where the data lives, not what it is: they may change between a run and its resume.
  static std::vector<std::string> location_keys() { return {"path", "eval_path", "corpus"}; }

  // `base_dir`: the folder that relative paths are relative to (the run file's).
  static DataConfig from_json(const nlohmann::json& j, const std::string& file, const std::string& base_dir) {
    detail::JsonSection s(j, file, "data.");
    DataConfig d;
    s.require("kind");
    d.kind = s.choice("kind", d.kind, kinds());
    auto fraction = [&](const char* key) {
      d.eval_fraction = s.number(key, d.eval_fraction);
      s.check(d.eval_fraction >= 0 && d.eval_fraction < 1, key, "must be in [0, 1), got ", d.eval_fraction);
    };
    // A bare name ("kjv") is data/corpus/<name>.txt under the current folder, where
    // scripts/fetch-data.sh puts the corpora; a path is relative to the run file.
    auto corpus = [&](const std::string& fallback) {
      const std::string c = s.text("corpus", fallback);
      s.check(!c.empty(), "corpus", "must not be empty");
      const std::string path = data::corpus_path(c);
      d.corpus = path == c ? absolute_path(base_dir, c) : absolute_path("", path);
    };
    if (d.kind == "toy") {
      d.task = s.choice("task", d.task, {"copy", "count"});
      d.symbols = static_cast<int>(s.integer_in("symbols", d.symbols, 2, INT_MAX));
      d.period = s.integer_in("period", d.period, 0, INT64_MAX);
      s.finish({"kind", "task", "symbols", "period"});
    } else if (d.kind == "shard") {
      s.require("path");
      d.path = absolute_path(base_dir, s.text("path", ""));
      if (s.has("eval_path")) d.eval_path = absolute_path(base_dir, s.text("eval_path", ""));
      fraction("eval_fraction");
      s.check(d.eval_path.empty() || !s.has("eval_fraction"), "eval_fraction", "and 'data.eval_path' are both given; give one");
      if (!d.eval_path.empty()) d.eval_fraction = 0;
      s.finish({"kind", "path", "eval_path", "eval_fraction"});
    } else if (d.kind == "passkey") {
      corpus("kjv");
      d.passkey_tokens = static_cast<int>(s.integer_in("passkey_tokens", d.passkey_tokens, 1, INT_MAX));
      const nlohmann::json* label = s.find("label_text");
      if (label) {
        s.check(label->is_boolean(), "label_text", "must be true or false, got ", label->dump());
        d.label_text = label->get<bool>();
      }
      d.recall_fraction = s.number("recall_fraction", d.recall_fraction);
      s.check(d.recall_fraction >= 0 && d.recall_fraction <= 1, "recall_fraction", "must be in [0, 1], got ", d.recall_fraction);
      d.eval_fraction = 0.1;
      fraction("eval_fraction");
      s.check(d.eval_fraction > 0, "eval_fraction", "must be > 0: evaluation needs text of its own");
      s.finish({"kind", "corpus", "passkey_tokens", "label_text", "recall_fraction", "eval_fraction"});
    } else if (d.kind == "mqar") {
      s.require("vocab_size");
      d.vocab_size = static_cast<int>(s.integer_in("vocab_size", 0, 3, INT_MAX));
      d.num_pairs = static_cast<int>(s.integer_in("num_pairs", d.num_pairs, 1, INT_MAX));
      d.num_queries = static_cast<int>(s.integer_in("num_queries", d.num_queries, 1, d.num_pairs));
      for (auto [key, into] : {std::pair{"key_low", &d.key_low}, {"key_high", &d.key_high}, {"value_low", &d.value_low},
                               {"value_high", &d.value_high}, {"noise_low", &d.noise_low}, {"noise_high", &d.noise_high}})
        *into = static_cast<std::int32_t>(s.integer_in(key, -1, -1, d.vocab_size));
      const nlohmann::json* at_end = s.find("queries_at_end");
      if (at_end) {
        s.check(at_end->is_boolean(), "queries_at_end", "must be true or false, got ", at_end->dump());
        d.queries_at_end = at_end->get<bool>();
      }
      if (s.has("corpus")) corpus("");
      fraction("eval_fraction");  // of the filler text
      s.finish({"kind", "vocab_size", "num_pairs", "num_queries", "key_low", "key_high", "value_low", "value_high",
                "noise_low", "noise_high", "queries_at_end", "corpus", "eval_fraction"});
    }
    return d;
  }

  nlohmann::json to_json() const {
    nlohmann::json j = {{"kind", kind}};
    if (kind == "toy") j.update({{"task", task}, {"symbols", symbols}, {"period", period}});
    if (kind == "shard") {
      j.update({{"path", path}});
      if (!eval_path.empty()) j["eval_path"] = eval_path;
      else j["eval_fraction"] = eval_fraction;
    }
    if (kind == "passkey")
      j.update({{"corpus", corpus}, {"passkey_tokens", passkey_tokens}, {"label_text", label_text},
                {"recall_fraction", recall_fraction}, {"eval_fraction", eval_fraction}});
    if (kind == "mqar") {
      j.update({{"vocab_size", vocab_size}, {"num_pairs", num_pairs}, {"num_queries", num_queries},
                {"queries_at_end", queries_at_end}});
      const data::MqarOptions o = mqar_options();
      j.update({{"key_low", o.key_low}, {"key_high", o.key_high}, {"value_low", o.value_low}, {"value_high", o.value_high},
                {"noise_low", o.noise_low}, {"noise_high", o.noise_high}});
      if (!corpus.empty()) j.update({{"corpus", corpus}, {"eval_fraction", eval_fraction}});
    }
    return j;
  }

  // Zoology's split of vocab_size (0 filler, keys, values), with the ranges the run file gives.
  data::MqarOptions mqar_options() const {
    data::MqarOptions o = data::mqar_split_vocab(vocab_size, num_pairs, num_queries);
    o.queries_at_end = queries_at_end;
    for (auto [from, into] : {std::pair{key_low, &o.key_low}, {key_high, &o.key_high}, {value_low, &o.value_low},
                              {value_high, &o.value_high}, {noise_low, &o.noise_low}, {noise_high, &o.noise_high}})
      if (from >= 0) *into = from;
    return o;
  }

  static std::string absolute_path(const std::string& base_dir, const std::string& path) {
    std::filesystem::path p(path);
    if (p.is_relative() && !base_dir.empty()) p = std::filesystem::path(base_dir) / p;
    return std::filesystem::absolute(p).lexically_normal().string();
  }
};

// ---- the run file -------------------------------------------------------------------------------

struct RunConfig {
  std::string source = "<run>";  // the run file, for messages
  std::string model_type = "drt";  // "drt" or "baseline" (the sliding-window LM)
  ModelConfig model;
  std::uint64_t seed = 0;  // initial weights, data order, Gumbel noise
  AdamWConfig optimizer{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0};
  CosineSchedule schedule;  // peak_lr = optimizer.lr; total_steps defaults to steps
  double clip_norm = 1.0;   // 0: no clipping (the norm is still logged)
  std::int64_t batch_size = 8;   // sequences per micro-batch
  std::int64_t seq_len = 0;      // tokens per sequence (DRT: a multiple of enc_chunk_size)
  std::int64_t grad_accum = 1;   // micro-batches per optimiser step
  std::int64_t steps = 0;        // optimiser steps of the whole run
  std::int64_t log_every = 10;
  std::int64_t eval_every = 0;   // 0: no periodic evaluation
  std::int64_t eval_batches = 4;
  std::int64_t checkpoint_every = 0;  // 0: a checkpoint only when the run stops
  std::string out_dir;           // resolved against the run file's folder
  DataConfig data;
  int threads = 0;               // 0: OpenMP's default (OMP_NUM_THREADS or every core)
  // How float GEMMs compute (drt/core/precision.hpp): "fp32", "tf32" or "bf16" (bf16 operands,
  // fp32 sums; weights, optimiser state and activations stay fp32).
  Precision precision = Precision::fp32;

  // Sequences × tokens that one optimiser step consumes.
  std::int64_t tokens_per_step() const { return batch_size * grad_accum * seq_len; }

  static std::vector<std::string> keys() {
    return {"model_type", "model", "model_config", "seed", "optimizer", "schedule", "clip_norm", "batch_size",
            "seq_len", "grad_accum", "steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "out_dir",
            "data", "threads", "precision"};
  }

  // `base_dir`: the folder that relative paths (model_config, out_dir) are relative to.
  static RunConfig from_json(const nlohmann::json& j, const std::string& file, const std::string& base_dir) {
    detail::JsonSection s(j, file, "");
    RunConfig r;
    r.source = file;
    r.model_type = s.choice("model_type", r.model_type, {"drt", "baseline"});

    // The model: inline under "model", or a reference config file under "model_config".
    DRT_CHECK(s.has("model") != s.has("model_config"), file,
              s.has("model") ? ": keys 'model' and 'model_config' are both given; give one of them"
                             : ": required key 'model' (an inline model config) or 'model_config' (a path) is missing");
    if (s.has("model")) {
      // Inline configs are strict: an unknown key is an error, not a warning.
      std::ostringstream warnings;
      r.model = ModelConfig::from_json(s.object("model"), file + ": key 'model'", &warnings);
      const std::string w = warnings.str(), marker = "unknown key '";
      const std::size_t at = w.find(marker);
      if (at != std::string::npos) {
        const std::size_t begin = at + marker.size();
        throw Error(drt::detail::concat(file, ": unknown key 'model.", w.substr(begin, w.find('\'', begin) - begin),
                                        "' (an inline model takes the keys of a model config, docs/training.md)"));
      }
      DRT_CHECK(w.empty(), w.substr(0, w.find('\n')));
    } else {
      const std::string path = resolve(base_dir, s.text("model_config", ""));
      r.model = ModelConfig::load(path);  // a reference file: unknown keys are warnings (HF configs carry many)
    }

    r.seed = s.unsigned_integer("seed", r.seed);

    if (s.has("optimizer")) {
      detail::JsonSection o(s.object("optimizer"), file, "optimizer.");
      r.optimizer.lr = o.number("lr", r.optimizer.lr);
      o.check(r.optimizer.lr > 0, "lr", "must be > 0, got ", r.optimizer.lr);
      r.optimizer.beta1 = o.number("beta1", r.optimizer.beta1);
      o.check(r.optimizer.beta1 >= 0 && r.optimizer.beta1 < 1, "beta1", "must be in [0, 1), got ", r.optimizer.beta1);
      r.optimizer.beta2 = o.number("beta2", r.optimizer.beta2);
      o.check(r.optimizer.beta2 >= 0 && r.optimizer.beta2 < 1, "beta2", "must be in [0, 1), got ", r.optimizer.beta2);
      r.optimizer.eps = o.number("eps", r.optimizer.eps);
      o.check(r.optimizer.eps > 0, "eps", "must be > 0, got ", r.optimizer.eps);
      r.optimizer.weight_decay = o.number("weight_decay", r.optimizer.weight_decay);
      o.check(r.optimizer.weight_decay >= 0, "weight_decay", "must be >= 0, got ", r.optimizer.weight_decay);
      o.finish({"lr", "beta1", "beta2", "eps", "weight_decay"});
    }

    s.require("steps");
    r.steps = s.integer_in("steps", 0, 1, INT64_MAX);

    r.schedule.peak_lr = r.optimizer.lr;
    r.schedule.total_steps = r.steps;
    if (s.has("schedule")) {
      detail::JsonSection c(s.object("schedule"), file, "schedule.");
      r.schedule.warmup_steps = c.integer_in("warmup_steps", r.schedule.warmup_steps, 0, INT64_MAX);
      r.schedule.total_steps = c.integer_in("total_steps", r.schedule.total_steps, 1, INT64_MAX);
      c.check(r.schedule.total_steps >= r.schedule.warmup_steps, "total_steps", "must be >= warmup_steps ",
              r.schedule.warmup_steps, ", got ", r.schedule.total_steps);
      r.schedule.min_lr = c.number("min_lr", r.schedule.min_lr);
      c.check(r.schedule.min_lr >= 0 && r.schedule.min_lr <= r.optimizer.lr, "min_lr", "must be in [0, optimizer.lr = ",
              r.optimizer.lr, "], got ", r.schedule.min_lr);
      c.finish({"warmup_steps", "total_steps", "min_lr"});
    }

    r.clip_norm = s.number("clip_norm", r.clip_norm);
    s.check(r.clip_norm >= 0, "clip_norm", "must be >= 0 (0 turns clipping off), got ", r.clip_norm);
    r.batch_size = s.integer_in("batch_size", r.batch_size, 1, INT32_MAX);
    s.require("seq_len");
    r.seq_len = s.integer_in("seq_len", 0, 1, INT32_MAX);
    if (r.model_type == "drt")
      s.check(r.seq_len % r.model.enc_chunk_size == 0, "seq_len", "must be a multiple of the model's enc_chunk_size ",
              r.model.enc_chunk_size, " (DRT reads whole chunks), got ", r.seq_len);
    r.grad_accum = s.integer_in("grad_accum", r.grad_accum, 1, INT32_MAX);
    r.log_every = s.integer_in("log_every", r.log_every, 1, INT64_MAX);
    r.eval_every = s.integer_in("eval_every", r.eval_every, 0, INT64_MAX);
    r.eval_batches = s.integer_in("eval_batches", r.eval_batches, 1, INT32_MAX);
    r.checkpoint_every = s.integer_in("checkpoint_every", r.checkpoint_every, 0, INT64_MAX);
    s.require("out_dir");
    const std::string out = s.text("out_dir", "");
    s.check(!out.empty(), "out_dir", "must not be empty");
    r.out_dir = resolve(base_dir, out);
    r.threads = static_cast<int>(s.integer_in("threads", r.threads, 0, 4096));
    r.precision = parse_precision(s.choice("precision", precision_name(r.precision), {"fp32", "tf32", "bf16"}),
                                  file + ": key 'precision'");

    r.data = DataConfig::from_json(s.object("data"), file, base_dir);
    if (r.data.kind == "toy") {
      if (r.data.task == "copy" && r.data.period > 0)
        s.check(r.data.period < r.seq_len, "data.period", "must be below seq_len ", r.seq_len,
                " (something must repeat), got ", r.data.period);
    }
    s.finish(keys());
    return r;
  }

  static RunConfig load(const std::string& path) {
    const nlohmann::json j = detail::parse_json_file(path, "run file");
    return from_json(j, path, std::filesystem::path(path).parent_path().string());
  }

  // The run as resolved: every default filled in, the model inline, paths resolved. This is the
  // run.json of a checkpoint; from_json() of it gives this run back.
  nlohmann::json to_json() const {
    return {{"model_type", model_type},
            {"model", model.to_json()},
            {"seed", seed},
            {"optimizer",
             {{"lr", optimizer.lr}, {"beta1", optimizer.beta1}, {"beta2", optimizer.beta2}, {"eps", optimizer.eps},
              {"weight_decay", optimizer.weight_decay}}},
            {"schedule",
             {{"warmup_steps", schedule.warmup_steps}, {"total_steps", schedule.total_steps}, {"min_lr", schedule.min_lr}}},
            {"clip_norm", clip_norm},
            {"batch_size", batch_size},
            {"seq_len", seq_len},
            {"grad_accum", grad_accum},
            {"steps", steps},
            {"log_every", log_every},
            {"eval_every", eval_every},
            {"eval_batches", eval_batches},
            {"checkpoint_every", checkpoint_every},
            {"out_dir", out_dir},
            {"data", data.to_json()},
            {"threads", threads},
            {"precision", precision_name(precision)}};
  }

  // The keys that decide the numbers a run computes. A checkpoint may only be resumed by a run
  // that agrees on all of them; the others (steps, logging, evaluation, checkpoint cadence,
  // out_dir, threads, precision) may change between the interrupted run and its continuation.
  static std::vector<std::string> trajectory_keys() {
    return {"model_type", "model", "seed", "optimizer", "schedule", "clip_norm", "batch_size", "seq_len", "grad_accum", "data"};
  }

  static std::string resolve(const std::string& base_dir, const std::string& path) {
    const std::filesystem::path p(path);
    if (p.is_absolute() || base_dir.empty()) return p.lexically_normal().string();
    return (std::filesystem::path(base_dir) / p).lexically_normal().string();
  }
};

namespace detail {
// The byte-level text of a corpus, split at 1 − eval_fraction: training reads the head, evaluation the tail.
inline data::HaystackText corpus_text(const DataConfig& d, DataStream stream) {
  const data::HaystackText all = data::HaystackText::tokenize(data::load_corpus(d.corpus), data::ByteTokenizer(), d.corpus);
  const Index cut = static_cast<Index>(static_cast<double>(all.size()) * (1.0 - d.eval_fraction));
  return stream == DataStream::train ? all.part(0, cut) : all.part(cut, all.size());
}
}  // namespace detail

// The batches of `run`'s data section for one stream, seeded with `seed`.
inline std::unique_ptr<data::BatchSource> make_batch_source(const RunConfig& run, DataStream stream, std::uint64_t seed) {
  const DataConfig& d = run.data;
  const bool train = stream == DataStream::train;
  if (d.kind == "toy")
    return std::make_unique<ToySource>(d.task == "copy" ? ToySource::Task::copy : ToySource::Task::count, d.symbols,
                                       static_cast<Index>(d.period), seed);
  if (d.kind == "shard") {
    if (!train && !d.eval_path.empty()) return std::make_unique<data::ShardSource>(d.eval_path, seed);
    auto shard = std::make_shared<const data::TokenShard>(d.path);
    const Index cut = static_cast<Index>(static_cast<double>(shard->size()) * (1.0 - d.eval_fraction));
    if (train) return std::make_unique<data::ShardSource>(shard, seed, 0, cut);
    // eval_fraction 0 and no eval_path: evaluation draws other windows of the same tokens.
    return cut < shard->size() ? std::make_unique<data::ShardSource>(shard, seed, cut, shard->size(), false)
                               : std::make_unique<data::ShardSource>(shard, seed, 0, shard->size(), false);
  }
  if (d.kind == "passkey") {
    // Evaluation batches are plain passkey trials: the held-out loss measures the task itself.
    const data::PasskeyOptions options{.chunk_tokens = run.model.enc_chunk_size, .passkey_tokens = d.passkey_tokens,
                                       .label_text = d.label_text, .recall_fraction = train ? d.recall_fraction : 0.0};
    return std::make_unique<data::PasskeySource>(detail::corpus_text(d, stream), data::byte_passkey_format(), options, seed);
  }
  if (d.kind == "mqar") {
    std::optional<data::HaystackText> filler;
    if (!d.corpus.empty()) filler = detail::corpus_text(d, stream);
    return std::make_unique<data::MqarSource>(d.mqar_options(), d.vocab_size, seed, std::move(filler));
  }
  DRT_CHECK(false, run.source, ": key 'data.kind' \"", d.kind, "\" has no batch source");
  return nullptr;
}

}  // namespace drt::train
