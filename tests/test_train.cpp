// drt train: run-file validation, the training loop (the loss falls for DRT and the baseline),
// gradient accumulation, checkpoints written all-or-nothing, exact resume, and determinism
// under OpenMP.
#include <drt/train.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../tools/command_train.hpp"

using namespace drt;
using namespace drt::train;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("drt_test_train_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// A tiny DRT: D = 16, L_c = 63, 4 chunks of 63 tokens, one retrieved chunk (so the Gumbel noise
// changes which one), 2 sequences per micro-batch.
json tiny_run(const std::string& model_type = "drt") {
  return json{{"model_type", model_type},
              {"model",
               {{"hidden_size", 16}, {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"intermediate_size", 32},
                {"vocab_size", 32}, {"enc_chunk_size", 63}, {"chunk_topk", 1}, {"slide_window", 8},
                {"encoder_layers", 1}, {"decoder_layers", {1, 1}}, {"pad_id", 30}, {"chunk_id", 31},
                {"tie_word_embeddings", true}}},
              {"seed", 7},
              {"optimizer", {{"lr", 1e-2}, {"weight_decay", 0.01}}},
              {"schedule", {{"warmup_steps", 2}, {"total_steps", 40}, {"min_lr", 1e-4}}},
              {"clip_norm", 1.0},
              {"batch_size", 2},
              {"seq_len", 252},
              {"steps", 6},
              {"log_every", 1},
              {"out_dir", "out"},
              {"data", {{"kind", "toy"}, {"task", "count"}, {"symbols", 16}}}};
}

std::string write_run(const TempDir& dir, const json& j, const std::string& name = "run.json") {
  const std::string path = dir / name;
  std::ofstream(path) << j.dump(2);
  return path;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The message of the drt::Error that loading `j` as a run file throws ("" if none).
std::string load_error(const json& j) {
  TempDir dir("load_error");
  const std::string path = write_run(dir, j);
  try {
    RunConfig::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string load_error_text(const std::string& text) {
  TempDir dir("load_error_text");
  const std::string path = dir / "run.json";
  std::ofstream(path) << text;
  try {
    RunConfig::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Every file of a checkpoint folder, byte for byte.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) files[entry.path().filename().string()] = read_text(entry.path().string());
  return files;
}

std::vector<std::vector<float>> weights_of(Trainer& t) {
  std::vector<std::vector<float>> w;
  for (const auto& p : t.model().named_parameters()) w.push_back(p.parameter->value().to_vector());
  return w;
}

struct ThreadCount {
  explicit ThreadCount(int n) {
#ifdef _OPENMP
    previous = omp_get_max_threads();
    omp_set_num_threads(n);
#endif
  }
  ~ThreadCount() {
#ifdef _OPENMP
    omp_set_num_threads(previous);
#endif
  }
  int previous = 1;
};

}  // namespace

// ---- the run file -------------------------------------------------------------------------------

TEST(RunConfig, ReadsEveryKeyAndFillsDefaults) {
  TempDir dir("reads");
  json j = tiny_run();
  j["grad_accum"] = 3;
  j["eval_every"] = 5;
  j["eval_batches"] = 2;
  j["checkpoint_every"] = 4;
  j["threads"] = 2;
  j["clip_norm"] = 0.5;
  const RunConfig r = RunConfig::load(write_run(dir, j));
  EXPECT_EQ(r.model_type, "drt");
  EXPECT_EQ(r.model.hidden_size, 16);
  EXPECT_EQ(r.seed, 7u);
  EXPECT_DOUBLE_EQ(r.optimizer.lr, 1e-2);
  EXPECT_DOUBLE_EQ(r.optimizer.beta2, 0.95);  // default
  EXPECT_DOUBLE_EQ(r.schedule.peak_lr, 1e-2);
  EXPECT_EQ(r.schedule.total_steps, 40);
  EXPECT_EQ(r.grad_accum, 3);
  EXPECT_EQ(r.tokens_per_step(), 2 * 3 * 252);
  EXPECT_EQ(r.out_dir, (fs::path(dir.str()) / "out").lexically_normal().string());  // beside the run file
  EXPECT_EQ(r.data.task, "count");
  EXPECT_EQ(r.data.period, 0);

  // schedule.total_steps defaults to steps; the resolved run reads back to itself.
  j.erase("schedule");
  const RunConfig d = RunConfig::load(write_run(dir, j));
  EXPECT_EQ(d.schedule.total_steps, 6);
  EXPECT_EQ(d.schedule.warmup_steps, 0);
  const RunConfig again = RunConfig::from_json(d.to_json(), "resolved", "");
  EXPECT_EQ(again.to_json(), d.to_json());
}

TEST(RunConfig, ModelFromAReferenceConfigFileRelativeToTheRunFile) {
  TempDir dir("model_config");
  fs::create_directories(dir / "configs");
  std::ofstream(dir / "configs/m.json") << tiny_run()["model"].dump();
  json j = tiny_run();
  j.erase("model");
  j["model_config"] = "configs/m.json";
  EXPECT_EQ(RunConfig::load(write_run(dir, j)).model.intermediate_size, 32);
  j["model_config"] = "configs/none.json";
  try {
    RunConfig::load(write_run(dir, j));
    FAIL() << "a missing model config must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("none.json"), std::string::npos) << e.what();
  }
}

TEST(RunConfig, ErrorsNameTheFileAndTheKey) {
  auto expect = [](const json& j, const std::vector<std::string>& parts) {
    const std::string message = load_error(j);
    ASSERT_FALSE(message.empty()) << "no error for " << j.dump();
    EXPECT_NE(message.find("run.json"), std::string::npos) << message;
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message << "\nlacks: " << part;
  };
  json j;
  // Unknown keys, at every level.
  j = tiny_run(), j["learning_rate"] = 1e-3;
  expect(j, {"unknown key 'learning_rate'", "known keys"});
  j = tiny_run(), j["optimizer"]["betas"] = json::array({0.9, 0.95});
  expect(j, {"unknown key 'optimizer.betas'"});
  j = tiny_run(), j["schedule"]["warmup"] = 3;
  expect(j, {"unknown key 'schedule.warmup'"});
  j = tiny_run(), j["data"]["length"] = 3;
  expect(j, {"unknown key 'data.length'"});
  j = tiny_run(), j["model"]["hiden_size"] = 16;
  expect(j, {"unknown key 'model.hiden_size'"});
  // Wrong types.
  j = tiny_run(), j["batch_size"] = "8";
  expect(j, {"'batch_size'", "must be an integer", "\"8\""});
  j = tiny_run(), j["batch_size"] = 2.5;
  expect(j, {"'batch_size'", "must be an integer"});
  j = tiny_run(), j["optimizer"]["lr"] = "fast";
  expect(j, {"'optimizer.lr'", "must be a number"});
  j = tiny_run(), j["optimizer"] = 0.1;
  expect(j, {"'optimizer'", "must be a JSON object"});
  j = tiny_run(), j["out_dir"] = 3;
  expect(j, {"'out_dir'", "must be a string"});
  j = tiny_run(), j["seed"] = -1;
  expect(j, {"'seed'", "integer >= 0"});
  j = tiny_run(), j["model"]["hidden_size"] = "16";
  expect(j, {"'model'", "'hidden_size'", "must be an integer"});
  // Bad values.
  j = tiny_run(), j["grad_accum"] = 0;
  expect(j, {"'grad_accum'", "must be in [1,", "got 0"});
  j = tiny_run(), j["seq_len"] = 100;
  expect(j, {"'seq_len'", "multiple", "63"});
  j = tiny_run(), j["optimizer"]["beta1"] = 1.0;
  expect(j, {"'optimizer.beta1'", "[0, 1)"});
  j = tiny_run(), j["schedule"]["min_lr"] = 1.0;
  expect(j, {"'schedule.min_lr'"});
  j = tiny_run(), j["schedule"]["warmup_steps"] = 50;
  expect(j, {"'schedule.total_steps'", "warmup_steps"});
  j = tiny_run(), j["data"] = {{"kind", "shard"}};
  expect(j, {"required key 'data.path'"});
  j = tiny_run(), j["data"] = {{"kind", "shard"}, {"path", "a.shard"}, {"eval_fraction", 1.5}};
  expect(j, {"'data.eval_fraction'", "[0, 1)"});
  j = tiny_run(), j["data"] = {{"kind", "mqar"}, {"vocab_size", 32}, {"num_pairs", 4}, {"num_queries", 5}};
  expect(j, {"'data.num_queries'", "[1, 4]"});
  j = tiny_run(), j["data"] = {{"kind", "passkey"}, {"label_text", 1}};
  expect(j, {"'data.label_text'", "true or false"});
  j = tiny_run(), j["data"]["kind"] = "tape";
  expect(j, {"'data.kind'", "\"toy\", \"shard\", \"passkey\", \"mqar\"", "\"tape\""});
  j = tiny_run(), j["model_type"] = "gpt";
  expect(j, {"'model_type'", "\"drt\", \"baseline\""});
  j = tiny_run(), j["model"]["enc_chunk_size"] = 50;
  expect(j, {"'enc_chunk_size'"});
  // Missing or contradicting keys.
  j = tiny_run(), j.erase("steps");
  expect(j, {"required key 'steps'"});
  j = tiny_run(), j.erase("data");
  expect(j, {"required key 'data'"});
  j = tiny_run(), j.erase("model");
  expect(j, {"'model'", "'model_config'", "missing"});
  j = tiny_run(), j["model_config"] = "m.json";
  expect(j, {"'model'", "'model_config'", "both"});
  // Not an object, not JSON.
  expect(json::array({1, 2}), {"must be a JSON object"});
  const std::string message = load_error_text("{\"steps\": 3,");
  EXPECT_NE(message.find("run.json: not valid JSON"), std::string::npos) << message;
}

TEST(RunConfig, DataMustFitTheModelVocabulary) {
  json j = tiny_run();
  j["data"]["symbols"] = 33;
  TempDir dir("vocab");
  try {
    Trainer t(RunConfig::load(write_run(dir, j)));
    FAIL() << "33 symbols do not fit a vocabulary of 32";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
  }
}

// Every data kind of the run file builds its sources and trains: a token shard (its tail held
// out for evaluation), passkey trials over byte-level text, MQAR. Data too short for seq_len
// stops the run at once, naming the run file.
TEST(RunConfig, EveryDataKindTrains) {
  TempDir dir("kinds");
  std::vector<std::int32_t> ids(4000);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(random_bits(3, i) % 32);
  data::write_shard(dir / "train.shard", ids, 32);
  std::string text;
  for (int i = 0; text.size() < 20000; ++i) text += "In the beginning line " + std::to_string(i) + " of some text.\n";
  std::ofstream(dir / "text.txt") << text;

  std::vector<json> kinds = {
      {{"kind", "shard"}, {"path", "train.shard"}, {"eval_fraction", 0.25}},
      {{"kind", "passkey"}, {"corpus", "text.txt"}, {"passkey_tokens", 3}},
      {{"kind", "mqar"}, {"vocab_size", 30}, {"num_pairs", 4}, {"num_queries", 2}},
      {{"kind", "mqar"}, {"vocab_size", 300}, {"num_pairs", 4}, {"num_queries", 2}, {"key_low", 256}, {"key_high", 278},
       {"value_low", 278}, {"value_high", 300}, {"corpus", "text.txt"}}};
  for (const json& data : kinds) {
    json j = tiny_run();
    j["model"]["vocab_size"] = 302;  // bytes, the MQAR ids, then pad and landmark
    j["model"]["pad_id"] = 300;
    j["model"]["chunk_id"] = 301;
    j["seq_len"] = 252;
    j["steps"] = 2;
    j["eval_every"] = 2;
    j["eval_batches"] = 1;
    j["data"] = data;
    j["out_dir"] = "out_" + data["kind"].get<std::string>() + std::to_string(data.size());
    Trainer t(RunConfig::load(write_run(dir, j)));
    std::ostringstream log;
    const std::vector<StepRecord> r = t.train(log);
    ASSERT_EQ(r.size(), 2u) << data.dump();
    EXPECT_TRUE(std::isfinite(r[0].loss) && std::isfinite(r[1].loss)) << data.dump();
    EXPECT_NE(log.str().find("  eval "), std::string::npos) << log.str();
    // The resolved data section reads back to itself (what a resume compares).
    const json resolved = t.run().to_json()["data"];
    EXPECT_EQ(DataConfig::from_json(resolved, "resolved", "").to_json(), resolved);
  }
  // The shard's held-out quarter and the training windows do not overlap.
  {
    json j = tiny_run();
    j["data"] = kinds[0];
    Trainer t(RunConfig::load(write_run(dir, j)));
    const auto& source = dynamic_cast<const data::ShardSource&>(t.train_source());
    for (std::int64_t step = 0; step < 50; ++step)
      EXPECT_LE(source.window_start(step, 2, 1, 252) + 252, 3000);
  }
  // Too little data for the held-out windows.
  json j = tiny_run();
  j["data"] = {{"kind", "shard"}, {"path", "train.shard"}, {"eval_fraction", 0.05}};  // 200 tokens < 252
  try {
    Trainer t(RunConfig::load(write_run(dir, j)));
    FAIL() << "200 held-out tokens cannot give windows of 252";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("run.json: key 'data' (evaluation batches)"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// ---- the toy source ----------------------------------------------------------------------------

TEST(ToySource, BatchesAreAStreamOfRowsAndCopyRepeats) {
  const ToySource copy(ToySource::Task::copy, 10, 5, 3);
  const data::Batch whole = copy.batch(1, 4, 12);           // rows 4..7
  const data::Batch half = copy.batch(3, 2, 12);            // rows 6..7
  for (Index t = 0; t < 12; ++t) {
    EXPECT_EQ(whole.tokens(2, t), half.tokens(0, t));
    EXPECT_EQ(whole.tokens(3, t), half.tokens(1, t));
    EXPECT_EQ(whole.tokens(0, t), whole.tokens(0, t % 5));  // period 5
    EXPECT_EQ(whole.labels(0, t), t < 5 ? kIgnoreIndex : whole.tokens(0, t));
    EXPECT_TRUE(whole.tokens(0, t) >= 0 && whole.tokens(0, t) < 10);
  }
  const ToySource count(ToySource::Task::count, 10, 0, 3);
  const data::Batch c = count.batch(0, 1, 20);
  for (Index t = 1; t < 20; ++t) EXPECT_EQ(c.tokens(0, t), (c.tokens(0, t - 1) + 1) % 10);
  // Another seed, other rows.
  EXPECT_NE(ToySource(ToySource::Task::copy, 10, 5, 4).batch(1, 4, 12).tokens.to_vector(), whole.tokens.to_vector());
}

// ---- training ----------------------------------------------------------------------------------

void expect_loss_falls(const std::string& model_type) {
  TempDir dir("falls_" + model_type);
  json j = tiny_run(model_type);
  j["steps"] = 30;
  j["schedule"]["total_steps"] = 30;
  j["log_every"] = 10;
  j["eval_every"] = 30;
  Trainer t(RunConfig::load(write_run(dir, j)));
  std::ostringstream log;
  const std::vector<StepRecord> r = t.train(log);
  ASSERT_EQ(r.size(), 30u);
  const double first = (r[0].loss + r[1].loss + r[2].loss) / 3, last = (r[27].loss + r[28].loss + r[29].loss) / 3;
  // Chance is ln 32 ≈ 3.47 at first; the count task is learnt within these steps.
  EXPECT_GT(first, 3.0) << log.str();
  EXPECT_LT(last, first - 1.0) << log.str();
  // The progress line and the CSV.
  EXPECT_NE(log.str().find("step 10/30  loss "), std::string::npos) << log.str();
  for (const char* part : {"  lr ", "  grad-norm ", "  tok/s ", "  elapsed ", "  eta ", "  eval "})
    EXPECT_NE(log.str().find(part), std::string::npos) << part << "\n" << log.str();
  const std::string csv = read_text(t.losses_path());
  EXPECT_EQ(csv.rfind("step,loss,lr,grad_norm,eval_loss\n10,", 0), 0u) << csv;
  EXPECT_NE(csv.find("\n30,"), std::string::npos) << csv;
  // The evaluation loss is on held-out batches of the same task: it fell too.
  const double eval = std::stod(csv.substr(csv.rfind(',') + 1));
  EXPECT_LT(eval, first - 1.0) << csv;
}

TEST(Trainer, DrtLossFalls) { expect_loss_falls("drt"); }
TEST(Trainer, BaselineLossFalls) { expect_loss_falls("baseline"); }

// 2 micro-batches of B/2 give the update of 1 batch of B, up to float rounding: the gradient is
// summed in another order (two partial sums, each scaled by 1/2, instead of one sum), and the
// mean of the two half-batch means equals the whole batch's mean only because both halves score
// the same number of targets (true of the toy tasks). It is not exact for DRT with Gumbel noise
// either: the noise of a micro-batch is drawn per micro-batch, so the test retrieves every
// visible chunk (top-k = C − 1), where the noise cannot change the selection.
TEST(Trainer, GradientAccumulationMatchesTheWholeBatch) {
  for (const std::string model_type : {"drt", "baseline"}) {
    TempDir dir("accum_" + model_type);
    json j = tiny_run(model_type);
    j["model"]["chunk_topk"] = 3;
    j["steps"] = 3;
    j["batch_size"] = 4;
    j["out_dir"] = "whole";
    Trainer whole(RunConfig::load(write_run(dir, j)));
    j["batch_size"] = 2;
    j["grad_accum"] = 2;
    j["out_dir"] = "accumulated";
    Trainer accumulated(RunConfig::load(write_run(dir, j)));
    std::ostringstream log;
    const std::vector<StepRecord> a = whole.train(log), b = accumulated.train(log);
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_NEAR(a[i].loss, b[i].loss, 1e-5 * a[i].loss) << model_type << " step " << i;
      EXPECT_NEAR(a[i].grad_norm, b[i].grad_norm, 1e-4 * a[i].grad_norm) << model_type << " step " << i;
    }
    const auto wa = weights_of(whole), wb = weights_of(accumulated);
    double max_diff = 0;
    for (std::size_t p = 0; p < wa.size(); ++p)
      for (std::size_t k = 0; k < wa[p].size(); ++k) max_diff = std::max(max_diff, double(std::fabs(wa[p][k] - wb[p][k])));
    EXPECT_LT(max_diff, 1e-5) << model_type;  // the weights moved by ~3 lr = 3e-2
  }
}

// Train 6 steps straight; train 3, stop, resume in a new Trainer, go on to 6: every loss, the
// losses.csv and the final weights and optimiser state are identical, bit for bit. Uses gradient
// accumulation, Gumbel noise (top-1 of 3 visible chunks) and a log interval that spans the stop.
TEST(Trainer, ResumeReproducesTheUninterruptedRunExactly) {
  TempDir dir("resume");
  json j = tiny_run();
  j["grad_accum"] = 2;
  j["log_every"] = 4;
  j["eval_every"] = 5;
  j["out_dir"] = "straight";
  const std::string straight_run = write_run(dir, j, "straight.json");
  j["out_dir"] = "resumed";
  const std::string resumed_run = write_run(dir, j, "resumed.json");

  std::ostringstream log;
  Trainer straight(RunConfig::load(straight_run));
  const std::vector<StepRecord> all = straight.train(log);
  ASSERT_EQ(all.size(), 6u);

  std::vector<StepRecord> parts;
  {
    Trainer first(RunConfig::load(resumed_run));
    TrainOptions stop_at_3;
    stop_at_3.stop_at = 3;
    parts = first.train(log, stop_at_3);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(first.state().interval_steps, 3);  // the interval 1..4 is open at the stop
  }
  Trainer second(RunConfig::load(resumed_run));
  second.resume();
  EXPECT_EQ(second.state().step, 3);
  EXPECT_EQ(second.optimizer().steps(), 3);
  for (const StepRecord& r : second.train(log)) parts.push_back(r);
  ASSERT_EQ(parts.size(), 6u);
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(all[i].step, parts[i].step);
    EXPECT_EQ(all[i].loss, parts[i].loss) << "step " << i + 1;  // exact
    EXPECT_EQ(all[i].grad_norm, parts[i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(all[i].lr, parts[i].lr) << "step " << i + 1;
  }
  EXPECT_EQ(weights_of(straight), weights_of(second));
  EXPECT_EQ(read_text(straight.losses_path()), read_text(second.losses_path()));
  const auto a = snapshot(checkpoint_path(straight.run().out_dir)), b = snapshot(checkpoint_path(second.run().out_dir));
  for (const char* file : {checkpoint_files::weights, checkpoint_files::optimizer}) EXPECT_EQ(a.at(file), b.at(file)) << file;
  // The noise matters here: without it (eval mode) the run would differ, so equality above is
  // not the trivial equality of a noise-free model. (Step 1 trains with noise; compare a
  // noise-free loss on the same batch.)
  Trainer fresh(RunConfig::load(straight_run));
  const data::Batch batch = fresh.train_source().batch(0, 2, 252);
  float noisy = 0, clean = 0;
  {
    NoGradGuard no_grad;
    noisy = fresh.model().loss(batch, true, random_bits(noise_stream_seed(7), 0)).item();
    clean = fresh.model().loss(batch, false, 0).item();
    tape().reset();
  }
  EXPECT_NE(noisy, clean);
}

// "precision": "bf16" rounds every float GEMM's operands to bf16 (fp32 sums, fp32 storage). The
// run trains like the fp32 run, within bf16 noise, and is not silently the fp32 run; the switch
// is restored when train() returns; resuming with another precision is allowed and says so.
TEST(Trainer, Bf16GemmsTrainLikeFp32AndMayResumeInAnotherPrecision) {
  TempDir dir("bf16");
  json j = tiny_run();
  j["steps"] = 12;
  j["out_dir"] = "fp32";
  Trainer fp32(RunConfig::load(write_run(dir, j, "fp32.json")));
  j["precision"] = "bf16";
  j["out_dir"] = "bf16";
  const std::string bf16_run = write_run(dir, j, "bf16.json");
  Trainer bf16(RunConfig::load(bf16_run));
  EXPECT_EQ(bf16.run().to_json()["precision"], "bf16");
  std::ostringstream log_fp32, log_bf16;
  const std::vector<StepRecord> a = fp32.train(log_fp32);
  TrainOptions stop_at_8;
  stop_at_8.stop_at = 8;
  const std::vector<StepRecord> b = bf16.train(log_bf16, stop_at_8);
  EXPECT_EQ(matmul_precision(), Precision::fp32);
  EXPECT_NE(log_bf16.str().find("(bf16 GEMMs)"), std::string::npos) << log_bf16.str();
  EXPECT_NE(log_fp32.str().find("(fp32 GEMMs)"), std::string::npos) << log_fp32.str();
  ASSERT_EQ(b.size(), 8u);
  bool any_different = false;
  for (std::size_t i = 0; i < b.size(); ++i) {
    any_different |= a[i].loss != b[i].loss;
    // bf16 operands carry 8 significant bits (relative error 2^-9): the loss of the same weights
    // moves by well under 1%; after a few updates the two runs drift apart a little more.
    EXPECT_NEAR(a[i].loss, b[i].loss, 0.02 * a[i].loss) << "step " << i + 1;
  }
  EXPECT_TRUE(any_different) << "bf16 GEMMs gave exactly the fp32 losses";
  EXPECT_LT(b.back().loss, b.front().loss - 0.3);
  // Resume the bf16 run with fp32 GEMMs: allowed (precision is not a trajectory key), with a note.
  j["precision"] = "fp32";
  Trainer resumed(RunConfig::load(write_run(dir, j, "bf16.json")));
  resumed.resume();
  std::ostringstream log;
  EXPECT_EQ(resumed.train(log).size(), 4u);
  EXPECT_NE(log.str().find("note: the checkpoint was trained with bf16 GEMMs and this run uses fp32"), std::string::npos)
      << log.str();
  // A bad value names the key and the choices.
  j["precision"] = "fp16";
  const std::string message = load_error(j);
  EXPECT_NE(message.find("'precision'"), std::string::npos) << message;
  EXPECT_NE(message.find("\"bf16\""), std::string::npos) << message;
}

// The weights file of a checkpoint is an ordinary model file: the reference's names, loadable
// with load_weights; the optimiser state reads back into another AdamW exactly.
TEST(Checkpoint, FilesHoldTheModelAndTheOptimiserUnderReferenceNames) {
  TempDir dir("files");
  json j = tiny_run();
  j["steps"] = 2;
  Trainer t(RunConfig::load(write_run(dir, j)));
  std::ostringstream log;
  t.train(log);
  const fs::path ckpt = checkpoint_path(t.run().out_dir);
  DrtModel<float> model(t.run().model, 999);
  load_weights(model, (ckpt / checkpoint_files::weights).string());
  const auto trained = t.model().named_parameters(), loaded = model.named_parameters();
  ASSERT_EQ(trained.size(), loaded.size());
  for (std::size_t i = 0; i < trained.size(); ++i) {
    EXPECT_EQ(trained[i].name, loaded[i].name);
    EXPECT_EQ(trained[i].parameter->value().to_vector(), loaded[i].parameter->value().to_vector()) << trained[i].name;
  }
  const io::SafetensorsFile opt = io::SafetensorsFile::read((ckpt / checkpoint_files::optimizer).string());
  EXPECT_TRUE(opt.contains("model.embed_tokens.weight.exp_avg"));
  EXPECT_TRUE(opt.contains("model.embed_tokens.weight.exp_avg_sq"));
  EXPECT_EQ(opt.metadata().at("step"), "2");
  AdamW<float> other(parameter_pointers(loaded));
  load_optimizer_state(other, loaded, (ckpt / checkpoint_files::optimizer).string());
  EXPECT_EQ(other.steps(), 2);
  for (std::size_t i = 0; i < other.size(); ++i) {
    EXPECT_EQ(other.first_moment(i).to_vector(), t.optimizer().first_moment(i).to_vector());
    EXPECT_EQ(other.second_moment(i).to_vector(), t.optimizer().second_moment(i).to_vector());
  }
  const json state = json::parse(read_text((ckpt / checkpoint_files::state).string()));
  EXPECT_EQ(state["step"], 2);
  EXPECT_EQ(state["seed"], 7);
  EXPECT_EQ(json::parse(read_text((ckpt / checkpoint_files::run).string())), t.run().to_json());
  // A model of another shape cannot take the optimiser state: the message names file and tensor.
  ModelConfig c = t.run().model;
  c.intermediate_size = 24;
  DrtModel<float> wrong(c);
  AdamW<float> wrong_opt(parameter_pointers(wrong.named_parameters()));
  try {
    load_optimizer_state(wrong_opt, wrong.named_parameters(), (ckpt / checkpoint_files::optimizer).string());
    FAIL() << "shapes differ";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.safetensors: tensor 'model.lower_layers.0.mlp."), std::string::npos)
        << e.what();
  }
}

// A failure in the middle of writing a checkpoint leaves the previous one as it was, and the run
// resumes from it to the same numbers as an uninterrupted run; so does a run that died between
// the two renames of the commit.
TEST(Checkpoint, AFailedWriteLeavesThePreviousCheckpoint) {
  TempDir dir("failed_write");
  json j = tiny_run();
  j["out_dir"] = "straight";
  std::ostringstream log;
  Trainer straight(RunConfig::load(write_run(dir, j, "straight.json")));
  const std::vector<StepRecord> all = straight.train(log);

  j["out_dir"] = "broken";
  j["checkpoint_every"] = 2;
  const std::string run = write_run(dir, j, "broken.json");
  Trainer broken(RunConfig::load(run));
  const fs::path ckpt = checkpoint_path(broken.run().out_dir);
  int checkpoints = 0;
  std::map<std::string, std::string> good;
  TrainOptions fail_second;
  fail_second.after_checkpoint_file = [&](const std::string& file) {
    if (file == checkpoint_files::weights && ++checkpoints == 2) {
      good = snapshot(ckpt);
    }
    if (checkpoints == 2 && file == checkpoint_files::optimizer) throw Error("disk full (injected)");
  };
  EXPECT_THROW(broken.train(log, fail_second), Error);
  EXPECT_EQ(broken.state().step, 4);
  EXPECT_EQ(snapshot(ckpt), good);  // untouched, byte for byte
  EXPECT_EQ(json::parse(good.at(checkpoint_files::state))["step"], 2);
  EXPECT_FALSE(fs::exists(ckpt.string() + ".tmp"));
  // losses.csv got rows 3 and 4 before the failure; the resumed run drops and rewrites them.
  EXPECT_NE(read_text(broken.losses_path()).find("\n4,"), std::string::npos);

  // A crash between the renames: only checkpoint.old/ and a half-written checkpoint.tmp/ exist.
  fs::rename(ckpt, ckpt.string() + ".old");
  fs::create_directory(ckpt.string() + ".tmp");
  std::ofstream(ckpt.string() + ".tmp/weights.safetensors") << "half";
  ASSERT_TRUE(find_checkpoint(broken.run().out_dir).has_value());

  Trainer resumed(RunConfig::load(run));
  resumed.resume();
  EXPECT_EQ(resumed.state().step, 2);
  std::vector<StepRecord> rest = resumed.train(log);
  ASSERT_EQ(rest.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(rest[i].loss, all[i + 2].loss) << "step " << i + 3;
  EXPECT_EQ(weights_of(resumed), weights_of(straight));
  EXPECT_EQ(read_text(resumed.losses_path()), read_text(straight.losses_path()));
  EXPECT_TRUE(fs::is_directory(ckpt));
  EXPECT_FALSE(fs::exists(ckpt.string() + ".old"));
  EXPECT_FALSE(fs::exists(ckpt.string() + ".tmp"));
}

// Bad input stops before anything is written: a fresh run never overwrites a checkpoint, a
// resume with changed numbers is refused, and a broken run file leaves the checkpoint alone.
TEST(Checkpoint, BadInputLeavesTheCheckpointUntouched) {
  TempDir dir("untouched");
  json j = tiny_run();
  j["steps"] = 2;
  const std::string run = write_run(dir, j);
  std::ostringstream log;
  {
    Trainer t(RunConfig::load(run));
    t.train(log);
  }
  const fs::path ckpt = checkpoint_path((fs::path(dir.str()) / "out").string());
  const auto before = snapshot(ckpt);
  const std::string csv = read_text(dir / "out/losses.csv");
  auto cli = [&](std::vector<std::string> words) {
    const drt::cli::Args args = drt::cli::Args::parse(drt::cli::train_spec(), words);
    std::ostringstream out;
    return drt::cli::run_train(args, out);
  };
  // Starting afresh on a checkpoint.
  try {
    cli({"--run", run});
    FAIL() << "a fresh run over a checkpoint must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds a checkpoint"), std::string::npos) << e.what();
  }
  // Resuming with another learning rate.
  j["optimizer"]["lr"] = 2e-2;
  write_run(dir, j);
  try {
    cli({"--resume", run, "--steps", "4"});
    FAIL() << "a resume with another lr must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key 'optimizer.lr' is 0.02 but the checkpoint was trained with 0.01"),
              std::string::npos)
        << e.what();
  }
  // A run file with an unknown key.
  j = tiny_run();
  j["steps"] = 4;
  j["clip"] = 1.0;
  write_run(dir, j);
  EXPECT_THROW(cli({"--resume", run}), Error);
  // Exactly one of --run / --resume.
  EXPECT_THROW(cli({"--run", run, "--resume", run}), drt::cli::UsageError);
  EXPECT_THROW(cli({}), drt::cli::UsageError);
  EXPECT_THROW(cli({"--resume", run, "--steps", "0"}), drt::cli::UsageError);
  EXPECT_EQ(snapshot(ckpt), before);
  EXPECT_EQ(read_text(dir / "out/losses.csv"), csv);

  // Changing only what does not decide the numbers is fine: steps (with total_steps given),
  // logging, checkpoint cadence, threads.
  j.erase("clip");
  j["log_every"] = 3;
  j["threads"] = 1;
  write_run(dir, j);
  EXPECT_EQ(cli({"--resume", run}), 0);
  EXPECT_EQ(json::parse(read_text((ckpt / checkpoint_files::state).string()))["step"], 4);
}

// With 2 OpenMP threads, two runs give the same losses and weights bit for bit: no op's result
// depends on thread timing. The model is large enough for the parallel paths to run: GEMMs and
// attention above the threshold, and an embedding of 1100 × 32 = 35,200 elements (the gradient
// norm's OpenMP reduction).
TEST(Trainer, DeterministicWithTwoThreads) {
  ThreadCount threads(2);
  TempDir dir("threads");
  json j = tiny_run();
  j["steps"] = 4;
  j["model"]["vocab_size"] = 1100;  // embedding 1100 × 32 = 35,200 ≥ the parallel threshold
  j["model"]["hidden_size"] = 32;
  j["model"]["pad_id"] = 1098;
  j["model"]["chunk_id"] = 1099;
  j["batch_size"] = 4;
  std::vector<std::vector<StepRecord>> runs;
  std::vector<std::vector<std::vector<float>>> weights;
  for (int i = 0; i < 2; ++i) {
    j["out_dir"] = "out" + std::to_string(i);
    Trainer t(RunConfig::load(write_run(dir, j)));
    std::ostringstream log;
    runs.push_back(t.train(log));
    weights.push_back(weights_of(t));
  }
  for (std::size_t s = 0; s < runs[0].size(); ++s) {
    EXPECT_EQ(runs[0][s].loss, runs[1][s].loss) << "step " << s + 1;
    EXPECT_EQ(runs[0][s].grad_norm, runs[1][s].grad_norm) << "step " << s + 1;
  }
  EXPECT_EQ(weights[0], weights[1]);
}

TEST(Trainer, FormatDuration) {
  EXPECT_EQ(format_duration(9.2), "9s");
  EXPECT_EQ(format_duration(62.4), "1m02s");
  EXPECT_EQ(format_duration(3725), "1h02m05s");
}
