// test_cuda_model — whole models on the GPU against the same models on the CPU: logits, loss and
// every parameter's gradient; the padded vocabulary (and the models' loss, which scores the padded
// logits in place); training steps and the allocator's steady state; `Trainer` on a device (the
// loss curve of `drt train --device cuda`).
//
// Tolerances. fp64: every op differs from its CPU twin only in the order of additions, so whole
// models agree to ~1e-12 relative; we allow 1e-9 of each tensor's largest magnitude. fp32: the
// orders of addition differ in every GEMM (cuBLAS vs Eigen), reduction and attention kernel, and
// the model chains ~20 of them, so rounding of ~1e-7 per op grows to ~1e-5 relative in the
// logits and ~1e-4 in gradients; we allow 2e-4 (values) and 1e-3 (gradients) of each tensor's
// largest magnitude. A wrong index, mask or scale is off by O(1) of that magnitude.
#include "gpu_test.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include <drt/model.hpp>
#include <drt/train.hpp>

namespace {

using namespace drt;
using namespace drt::gpu_test;
namespace fs = std::filesystem;

ModelConfig tiny_config() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 24;
  c.vocab_size = 77;  // not a multiple of 64: the GPU model pads its head to 128 rows
  c.enc_chunk_size = 63;
  c.chunk_topk = 2;
  c.slide_window = 40;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1, 1};  // two retrieval groups
  c.pad_id = 0;
  c.chunk_id = 76;
  c.tie_word_embeddings = true;
  c.initializer_range = 0.5;  // retrieval scores well apart: CPU and GPU pick the same chunks
  return c;
}

IndexTensor random_tokens(Index B, Index T, int vocab, std::uint64_t seed) {
  IndexTensor t = IndexTensor::empty({B, T});
  for (Index i = 0; i < t.numel(); ++i) t.data()[i] = 1 + static_cast<int>(random_bits(seed, i) % (vocab - 2));
  return t;
}

// |gpu − cpu| ≤ tol · max|cpu| elementwise.
template <class T>
void expect_near_scaled(const Tensor<T>& cpu, const Tensor<T>& gpu, double tol, const std::string& what) {
  double scale = 0;
  for (T v : cpu.to_vector()) scale = std::max(scale, std::abs(double(v)));
  expect_close(cpu, gpu, tol * std::max(scale, 1e-30), 0.0, what.c_str());
}

template <class T>
struct Tolerance {
  static constexpr double value = std::is_same_v<T, double> ? 1e-9 : 2e-4;
  static constexpr double grad = std::is_same_v<T, double> ? 1e-9 : 1e-3;
};

// One forward + backward of `model` on `tokens`; returns (logits, loss) and leaves the gradients
// in the parameters.
template <class T, class Model>
std::pair<Tensor<T>, T> forward_backward(const Model& model, const IndexTensor& tokens) {
  for (const auto& p : model.named_parameters()) p.parameter->zero_grad();
  const Var<T> logits = model.logits(tokens);
  const IndexTensor targets = shift_targets(tokens, model.config().enc_chunk_size);
  const Var<T> loss = cross_entropy(logits, targets);
  backward(loss);
  // A copy: on the CPU the logits live in the tape's arena, which reset() recycles.
  const Tensor<T> values = Tensor<T>::from(logits.shape(), logits.value().to_vector());
  const T l = loss.item();
  tape().reset();
  return {values, l};
}

template <class T>
void expect_drt_matches_cpu(const ModelConfig& c, const char* name) {
  SCOPED_TRACE(name);
  DrtModel<T> cpu(c, 11), gpu(c, 11);
  gpu.move_to(Device::cuda);
  EXPECT_EQ(gpu.device(), Device::cuda);
  EXPECT_EQ(cpu.parameter_count(), gpu.parameter_count());
  const IndexTensor tokens = random_tokens(2, 4 * c.enc_chunk_size, c.vocab_size, 5);
  const auto [cpu_logits, cpu_loss] = forward_backward<T>(cpu, tokens);
  const auto [gpu_logits, gpu_loss] = forward_backward<T>(gpu, tokens);
  expect_near_scaled(cpu_logits, gpu_logits.to(Device::cuda), Tolerance<T>::value, "logits");
  EXPECT_NEAR(double(cpu_loss), double(gpu_loss), Tolerance<T>::value * std::abs(double(cpu_loss)));
  const auto cpu_params = cpu.named_parameters(), gpu_params = gpu.named_parameters();
  ASSERT_EQ(cpu_params.size(), gpu_params.size());
  for (std::size_t i = 0; i < cpu_params.size(); ++i) {
    ASSERT_EQ(cpu_params[i].parameter->value().shape(), gpu_params[i].parameter->value().shape()) << cpu_params[i].name;
    expect_near_scaled(cpu_params[i].parameter->grad(), gpu_params[i].parameter->grad(), Tolerance<T>::grad,
                       "grad of " + cpu_params[i].name);
  }
}

TEST_F(Gpu, DrtModelMatchesCpuInDouble) {
  expect_drt_matches_cpu<double>(tiny_config(), "S = 64, tied, two groups");
  ModelConfig c = tiny_config();
  c.enc_chunk_size = 64;  // S % 64 == 1: the landmark row is dropped from the chunk memory
  c.tie_word_embeddings = false;
  expect_drt_matches_cpu<double>(c, "S = 65, untied head");
  c = tiny_config();
  c.gca_standard_residual = true;
  c.encoder_alibi = true;
  expect_drt_matches_cpu<double>(c, "opt-in residual and encoder ALiBi");
}

TEST_F(Gpu, DrtModelMatchesCpuInFloat) {
  expect_drt_matches_cpu<float>(tiny_config(), "S = 64, tied, two groups");
  ModelConfig c = tiny_config();
  c.enc_chunk_size = 64;
  c.tie_word_embeddings = false;
  expect_drt_matches_cpu<float>(c, "S = 65, untied head");
}

TEST_F(Gpu, BaselineMatchesCpu) {
  const ModelConfig c = tiny_config();
  SlidingWindowLM<double> cpu(c, 3), gpu(c, 3);
  gpu.move_to(Device::cuda);
  const IndexTensor tokens = random_tokens(2, 100, c.vocab_size, 9);
  auto run = [&](const SlidingWindowLM<double>& m) {
    for (const auto& p : m.named_parameters()) p.parameter->zero_grad();
    const Var<double> loss = m.loss(tokens);
    backward(loss);
    const double l = loss.item();
    tape().reset();
    return l;
  };
  const double a = run(cpu), b = run(gpu);
  EXPECT_NEAR(a, b, 1e-10 * std::abs(a));
  const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  for (std::size_t i = 0; i < pc.size(); ++i)
    expect_near_scaled(pc[i].parameter->grad(), pg[i].parameter->grad(), 1e-9, "grad of " + pc[i].name);
}

// The models' own loss, which on the GPU scores the padded logits in place (the head's V' = 128
// columns, C = V = 77 classes; no slice on the tape, the kernel writes the logits' gradient whole):
// the loss and every parameter's gradient against the CPU model, and the padding rows of the
// head's gradient storage still zero after the backward (their logits' columns got 0).
template <class T, class Model>
void expect_loss_matches_cpu(const ModelConfig& c, const IndexTensor& tokens, const char* name) {
  SCOPED_TRACE(name);
  Model cpu(c, 7), gpu(c, 7);
  gpu.move_to(Device::cuda);
  auto run = [&](const Model& m) {
    for (const auto& p : m.named_parameters()) p.parameter->zero_grad();
    const Var<T> loss = m.loss(tokens);
    backward(loss);
    const T l = loss.item();
    tape().reset();
    return l;
  };
  const T a = run(cpu), b = run(gpu);
  EXPECT_NEAR(double(a), double(b), Tolerance<T>::value * std::abs(double(a)));
  const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  ASSERT_EQ(pc.size(), pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i)
    expect_near_scaled(pc[i].parameter->grad(), pg[i].parameter->grad(), Tolerance<T>::grad, "grad of " + pc[i].name);
  const Index V = c.vocab_size, D = c.hidden_size, padded = (V + 63) / 64 * 64;
  ASSERT_GT(padded, V) << "the test needs a padded head";
  const Tensor<T> padding = Tensor<T>::wrap(gpu.lm_head().grad().data() + V * D, {padded - V, D}, Device::cuda);
  for (T v : padding.to_vector()) ASSERT_EQ(v, T(0)) << "a padding row of the head got a gradient";
}

TEST_F(Gpu, ModelLossOverThePaddedHeadMatchesCpu) {
  const ModelConfig c = tiny_config();
  const IndexTensor drt_tokens = random_tokens(2, 4 * c.enc_chunk_size, c.vocab_size, 5);
  expect_loss_matches_cpu<double, DrtModel<double>>(c, drt_tokens, "DRT, fp64, tied");
  expect_loss_matches_cpu<float, DrtModel<float>>(c, drt_tokens, "DRT, fp32, tied");
  ModelConfig untied = c;
  untied.enc_chunk_size = 64;
  untied.tie_word_embeddings = false;
  expect_loss_matches_cpu<double, DrtModel<double>>(untied, random_tokens(2, 4 * 64, c.vocab_size, 6),
                                                    "DRT, fp64, untied, S = 65");
  const IndexTensor tokens = random_tokens(2, 100, c.vocab_size, 9);
  expect_loss_matches_cpu<double, SlidingWindowLM<double>>(c, tokens, "baseline, fp64, tied");
  expect_loss_matches_cpu<float, SlidingWindowLM<float>>(untied, tokens, "baseline, fp32, untied");
}

// The padding rows exist only on the GPU, stay zero, and never show: same shapes, same count,
// byte-identical checkpoints, logits of width V.
TEST_F(Gpu, PaddedVocabularyIsInvisible) {
  const ModelConfig c = tiny_config();
  DrtModel<float> cpu(c, 2), gpu(c, 2);
  gpu.move_to(Device::cuda);
  const Parameter<float>& head = gpu.lm_head();
  EXPECT_EQ(head.value().shape(), (Shape{77, 16}));
  EXPECT_EQ(gpu.parameter_count(), cpu.parameter_count());
  const IndexTensor tokens = random_tokens(1, 2 * 63, c.vocab_size, 1);
  EXPECT_EQ(gpu.logits(tokens).shape(), (Shape{1, 2 * 64, 77}));
  tape().reset();

  // A few AdamW steps on the GPU: the padding rows (just past the view's last row) stay zero.
  AdamW<float> opt(parameter_pointers(gpu.named_parameters()), AdamWConfig{.lr = 1e-2, .weight_decay = 0.1});
  for (int s = 0; s < 3; ++s) {
    backward(gpu.loss(tokens));
    tape().reset();
    opt.step(1e-2);
    opt.zero_grad();
  }
  const Tensor<float> padding = Tensor<float>::wrap(head.value().data() + 77 * 16, {128 - 77, 16}, Device::cuda);
  for (float v : padding.to_vector()) ASSERT_EQ(v, 0.0f);

  // Checkpoints: the GPU model's file has the CPU model's names and shapes; loading it into a CPU
  // model gives the GPU model's numbers.
  const std::string path = (fs::temp_directory_path() / ("drt_cuda_pad_" + std::to_string(getpid()) + ".safetensors")).string();
  save_weights(gpu, path);
  DrtModel<float> reloaded(c, 99);
  load_weights(reloaded, path);
  fs::remove(path);
  const auto pg = gpu.named_parameters(), pr = reloaded.named_parameters();
  for (std::size_t i = 0; i < pg.size(); ++i)
    EXPECT_EQ(pg[i].parameter->value().to_vector(), pr[i].parameter->value().to_vector()) << pg[i].name;

  // And back to the CPU: the model leaves its padding behind and computes what it did on the GPU.
  const std::vector<float> on_gpu = gpu.logits(tokens).value().to_vector();
  tape().reset();
  gpu.move_to(Device::cpu);
  EXPECT_EQ(gpu.lm_head().value().device(), Device::cpu);
  const std::vector<float> on_cpu = gpu.logits(tokens).value().to_vector();
  tape().reset();
  ASSERT_EQ(on_gpu.size(), on_cpu.size());
  for (std::size_t i = 0; i < on_cpu.size(); ++i) ASSERT_NEAR(on_gpu[i], on_cpu[i], 2e-4 * (1 + std::abs(on_cpu[i])));
}

// ---- the training loop ---------------------------------------------------------------------------

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("drt_test_cuda_" + std::to_string(getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// A small DRT on the toy counting task: learns within a few dozen steps.
nlohmann::json small_run(const std::string& out_dir, int steps) {
  return nlohmann::json{
      {"model_type", "drt"},
      {"model",
       {{"hidden_size", 32}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 64},
        {"vocab_size", 40}, {"enc_chunk_size", 63}, {"chunk_topk", 2}, {"slide_window", 32}, {"encoder_layers", 1},
        {"decoder_layers", {1, 1}}, {"pad_id", 38}, {"chunk_id", 39}, {"tie_word_embeddings", true},
        {"initializer_range", 0.07}}},
      {"seed", 3},
      {"optimizer", {{"lr", 3e-3}, {"weight_decay", 0.01}}},
      {"schedule", {{"warmup_steps", 5}, {"total_steps", steps}, {"min_lr", 3e-4}}},
      {"clip_norm", 1.0},
      {"batch_size", 4},
      {"seq_len", 252},
      {"steps", steps},
      {"log_every", 10},
      {"out_dir", out_dir},
      {"data", {{"kind", "toy"}, {"task", "count"}, {"symbols", 16}}}};
}

std::vector<double> train_losses(const TempDir& dir, Device device, int steps, std::string* log_text = nullptr,
                                 const std::string& precision = "fp32") {
  const std::string name = std::string(device_name(device)) + "_" + precision;
  const std::string run_path = dir / ("run_" + name + ".json");
  nlohmann::json run = small_run(dir / name, steps);
  run["precision"] = precision;
  std::ofstream(run_path) << run.dump(2);
  train::Trainer trainer(train::RunConfig::load(run_path), device);
  std::ostringstream log;
  train::TrainOptions options;
  options.peak_flops = device == Device::cuda ? cuda::peak_bf16_flops() : 0;
  std::vector<double> losses;
  for (const auto& r : trainer.train(log, options)) losses.push_back(r.loss);
  if (log_text) *log_text = log.str();
  return losses;
}

// The loss curve of a run on the GPU follows the CPU's: the first steps agree to fp32 rounding,
// and the curve ends where the CPU's ends (differences in rounding grow slowly over steps).
TEST_F(Gpu, TrainingOnTheGpuFollowsTheCpuLossCurve) {
  TempDir dir("curve");
  constexpr int kSteps = 60;
  std::string gpu_log;
  const std::vector<double> cpu = train_losses(dir, Device::cpu, kSteps);
  const std::vector<double> gpu = train_losses(dir, Device::cuda, kSteps, &gpu_log);
  ASSERT_EQ(cpu.size(), std::size_t(kSteps));
  ASSERT_EQ(gpu.size(), std::size_t(kSteps));
  for (int s = 0; s < 5; ++s) EXPECT_NEAR(gpu[s], cpu[s], 1e-4 * cpu[s]) << "step " << s + 1;
  for (int s = 0; s < kSteps; ++s) EXPECT_NEAR(gpu[s], cpu[s], 2e-2 * cpu[s]) << "step " << s + 1;
  EXPECT_LT(gpu.back(), 0.8 * gpu.front()) << "the GPU run did not learn";
  EXPECT_NE(gpu_log.find("on cuda"), std::string::npos) << gpu_log;
  EXPECT_NE(gpu_log.find("mfu "), std::string::npos) << gpu_log;
  std::printf("loss at steps 1, 10, 30, 60: cpu %.4f %.4f %.4f %.4f, gpu %.4f %.4f %.4f %.4f\n", cpu[0], cpu[9], cpu[29],
              cpu[59], gpu[0], gpu[9], gpu[29], gpu[59]);
}

// With bf16 GEMMs the GPU run follows the CPU's bf16 emulation (the same rounded operands; only
// the order of fp32 sums differs, and occasionally an activation rounds to the neighbouring bf16
// value), and both stay within bf16 noise of the fp32 curve.
TEST_F(Gpu, Bf16TrainingOnTheGpuFollowsTheCpuEmulationAndTheFp32Curve) {
  TempDir dir("curve_bf16");
  constexpr int kSteps = 60;
  std::string gpu_log;
  const std::vector<double> cpu = train_losses(dir, Device::cpu, kSteps, nullptr, "bf16");
  const std::vector<double> gpu = train_losses(dir, Device::cuda, kSteps, &gpu_log, "bf16");
  const std::vector<double> gpu_fp32 = train_losses(dir, Device::cuda, kSteps, nullptr, "fp32");
  ASSERT_EQ(gpu.size(), std::size_t(kSteps));
  for (int s = 0; s < 5; ++s) EXPECT_NEAR(gpu[s], cpu[s], 2e-3 * cpu[s]) << "step " << s + 1;
  bool any_different = false;
  for (int s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(gpu[s], cpu[s], 3e-2 * cpu[s]) << "step " << s + 1;
    EXPECT_NEAR(gpu[s], gpu_fp32[s], 5e-2 * gpu_fp32[s]) << "step " << s + 1;
    any_different |= gpu[s] != gpu_fp32[s];
  }
  EXPECT_TRUE(any_different) << "bf16 GEMMs gave exactly the fp32 curve";
  EXPECT_LT(gpu.back(), 0.8 * gpu.front()) << "the bf16 GPU run did not learn";
  EXPECT_NE(gpu_log.find("(bf16 GEMMs)"), std::string::npos) << gpu_log;
  std::printf("bf16 loss at steps 1, 10, 30, 60: cpu %.4f %.4f %.4f %.4f, gpu %.4f %.4f %.4f %.4f (gpu fp32 %.4f)\n",
              cpu[0], cpu[9], cpu[29], cpu[59], gpu[0], gpu[9], gpu[29], gpu[59], gpu_fp32[59]);
}

// After a warm-up step, training steps of the same shapes take all their device memory from the
// allocator's cache: no cudaMalloc.
TEST_F(Gpu, TrainingStepsReuseDeviceMemory) {
  const ModelConfig c = tiny_config();
  DrtModel<float> model(c, 4);
  model.move_to(Device::cuda);
  AdamW<float> opt(parameter_pointers(model.named_parameters()), AdamWConfig{.lr = 1e-3});
  auto step = [&](std::uint64_t seed) {
    const IndexTensor tokens = random_tokens(2, 4 * 63, c.vocab_size, seed);
    backward(model.loss(tokens, ForwardOptions{.training = true, .noise_seed = seed}));
    tape().reset();
    clip_grad_norm(parameter_pointers(model.named_parameters()), 1.0);
    opt.step(1e-3);
    opt.zero_grad();
  };
  step(1);
  step(2);
  const std::int64_t before = cuda::allocator_stats().malloc_calls;
  for (std::uint64_t s = 3; s < 8; ++s) step(s);
  EXPECT_EQ(cuda::allocator_stats().malloc_calls, before);
}

}  // namespace
