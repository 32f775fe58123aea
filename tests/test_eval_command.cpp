// `drt eval` end to end: the real binary (DRT_TOOL_PATH, set by tools/CMakeLists.txt) on a tiny
// model written here, checked against the same model run in-process: the loss line, the logits
// file (landmark rows removed) and the gradient file (every parameter, both names when tied).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <drt/io/npy.hpp>
#include <drt/model.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace drt;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_eval_" + std::to_string(::getpid()) + "_" + name)).string();
}

struct RunResult {
  int exit_code;
  std::string output;  // stdout and stderr
};

RunResult run_drt(const std::string& arguments) {
#ifndef DRT_TOOL_PATH
  return {-1, "DRT_TOOL_PATH is not defined (the drt tool is not built)"};
#else
  const std::string log = temp_path("log.txt");
  const std::string command = std::string("\"") + DRT_TOOL_PATH + "\" " + arguments + " > \"" + log + "\" 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::remove(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
#endif
}

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 12;
  c.vocab_size = 13;
  c.enc_chunk_size = 63;
  c.chunk_topk = 2;
  c.slide_window = 40;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1};
  c.pad_id = 0;
  c.chunk_id = 12;
  c.tie_word_embeddings = tied;
  c.initializer_range = 0.3;
  return c;
}

IndexTensor random_tokens(Index T, int vocab, std::uint64_t seed) {
  IndexTensor t = IndexTensor::empty({T});
  for (Index i = 0; i < T; ++i) t.data()[i] = 1 + static_cast<int>(random_bits(seed, i) % (vocab - 2));
  return t;
}

// The value after "loss " on its own line; fails the test when there is none or it is not a number.
double parse_loss(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex("(^|\n)loss ([^\n]*)\n"))) {
    ADD_FAILURE() << "no 'loss <value>' line in:\n" << output;
    return NAN;
  }
  const std::string text = m[2].str();
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  EXPECT_TRUE(!text.empty() && *end == '\0') << "loss value '" << text << "' is not a plain number";
  return v;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float v : a) m = std::max(m, std::abs(double(v)));
  return m;
}

class EvalCommand : public ::testing::TestWithParam<bool> {};

}  // namespace

TEST_P(EvalCommand, LossLogitsAndGradientsMatchTheModelInProcess) {
#ifndef DRT_TOOL_PATH
  GTEST_SKIP() << "the drt tool is not built (DRT_BUILD_EXAMPLES off)";
#endif
#ifdef _OPENMP
  omp_set_num_threads(1);  // the binary runs with --threads 1: the same summation order
#endif
  const ModelConfig c = tiny_config(GetParam());
  const Index T = 4 * c.enc_chunk_size, V = c.vocab_size;
  const std::string config = temp_path("config.json"), weights = temp_path("weights.safetensors"),
                    tokens_file = temp_path("tokens.npy"), logits_file = temp_path("logits.npy"),
                    grads_file = temp_path("grads.safetensors");
  std::ofstream(config) << c.to_json().dump(2);
  DrtModel<float> model(c, /*seed=*/7);
  save_weights(model, weights);
  const IndexTensor tokens = random_tokens(T, V, 11);
  io::write_npy(tokens_file, tokens);

  const RunResult run = run_drt("eval --config " + config + " --weights " + weights + " --tokens " + tokens_file +
                                " --dump-logits " + logits_file + " --dump-grads " + grads_file + " --threads 1");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("tokens " + std::to_string(T)), std::string::npos) << run.output;

  // The same model in-process: loss and gradients, then logits without recording.
  tape().reset();
  for (const auto& p : model.named_parameters()) p.parameter->zero_grad();
  const IndexTensor batch = tokens.reshape({1, T});
  const Var<float> loss = model.loss(batch);
  backward(loss);
  const double expected_loss = loss.item();
  EXPECT_NEAR(parse_loss(run.output), expected_loss, 1e-6 * std::abs(expected_loss)) << run.output;

  Tensor<float> expected_logits;
  {
    NoGradGuard no_grad;
    expected_logits = drop_landmark_rows(model.logits(batch).value(), c.enc_chunk_size);
  }
  const io::NpyArray logits = io::read_npy(logits_file);
  EXPECT_EQ(logits.descr, "<f4");
  ASSERT_EQ(logits.shape, Shape({T, V}));
  EXPECT_LE(max_abs_difference(logits.as<float>().to_vector(), expected_logits.to_vector()), 1e-5);

  const io::SafetensorsFile grads = io::SafetensorsFile::read(grads_file);
  const ParameterList<float> parameters = model.named_parameters();
  EXPECT_EQ(grads.entries().size(), parameters.size() + (c.tie_word_embeddings ? 1 : 0)) << "no buffers, nothing else";
  for (const auto& p : parameters) {
    ASSERT_TRUE(grads.contains(p.name)) << p.name;
    EXPECT_EQ(grads.entry(p.name).dtype, "F32");
    ASSERT_EQ(grads.entry(p.name).shape, p.parameter->value().shape()) << p.name;
    const std::vector<float> expected = p.parameter->grad().to_vector();
    EXPECT_GT(max_abs(expected), 0.0) << p.name << ": a zero gradient would make this check vacuous";
    EXPECT_LE(max_abs_difference(grads.tensor<float>(p.name).to_vector(), expected), 1e-5 * std::max(1.0, max_abs(expected)))
        << p.name;
  }
  ASSERT_TRUE(grads.contains("lm_head.weight"));  // tied: the embedding's one gradient, under both names
  if (c.tie_word_embeddings) {
    EXPECT_EQ(grads.tensor<float>("lm_head.weight").to_vector(), grads.tensor<float>("model.embed_tokens.weight").to_vector());
  }
  tape().reset();
  for (const auto& f : {config, weights, tokens_file, logits_file, grads_file}) std::filesystem::remove(f);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, EvalCommand, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tied" : "Untied"; });

TEST(EvalCommandErrors, BadTokenFilesNameTheFileAndExitWithOne) {
#ifndef DRT_TOOL_PATH
  GTEST_SKIP() << "the drt tool is not built (DRT_BUILD_EXAMPLES off)";
#endif
  const ModelConfig c = tiny_config(true);
  const std::string config = temp_path("config.json"), weights = temp_path("weights.safetensors"),
                    tokens_file = temp_path("bad_tokens.npy");
  std::ofstream(config) << c.to_json().dump(2);
  save_weights(DrtModel<float>(c, 1), weights);
  const std::string common = "eval --config " + config + " --weights " + weights + " --tokens " + tokens_file;

  io::write_npy(tokens_file, random_tokens(100, c.vocab_size, 3));  // not a multiple of 63
  RunResult run = run_drt(common);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find(tokens_file + ": length 100 is not a positive multiple of enc_chunk_size L_c = 63"),
            std::string::npos)
      << run.output;

  IndexTensor tokens = random_tokens(63, c.vocab_size, 3);
  tokens(5) = c.vocab_size;
  io::write_npy(tokens_file, tokens);
  run = run_drt(common);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find(tokens_file + ": token id 13 at position 5 is not below vocab_size 13"), std::string::npos)
      << run.output;

  for (const auto& f : {config, weights, tokens_file}) std::filesystem::remove(f);
}
