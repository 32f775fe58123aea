// bench_decoding — speed of incremental decoding (drt/inference/) against the batch forward of
// the same model, measured in the same run.
//
// Model: the main job's DRT (tools/command_lengthgen.hpp): D = 64, H = 4, H_kv = 2, F = 192,
// V = 258, L_c = 63, k = 2, W = 64, 1 encoder layer, decoder_layers [1, 1]; random weights
// (speed does not depend on training). Input: 4,032 tokens (64 chunks).
//
// Benchmarks:
//   batch/forward               DrtModel::logits over the 4,032 tokens (no tape): the baseline
//   prefill/segment_4096        DrtDecoder::feed of the same tokens in one segment (no logits)
//   prefill/segment_256         the same in segments of 256 positions
//   decode/step                 one DrtDecoder::step after the 4,032-token prefill
//
// The summary gives prefill speed as a fraction of the batch forward's tokens/s (what the window
// caches, the per-segment encoder and the retrieval bookkeeping cost), and the decoding step
// against the batch forward's time per token (what one-at-a-time costs without batching).
#include <benchmark/benchmark.h>

#include "support/capturing_reporter.hpp"
#include "support/eigen_gemm.hpp"

#include <cstdio>
#include <drt/model.hpp>

using namespace drt;

namespace {

constexpr Index kTokens = 4032;

ModelConfig bench_config() {
  ModelConfig c;
  c.hidden_size = 64, c.num_attention_heads = 4, c.num_key_value_heads = 2, c.intermediate_size = 192;
  c.vocab_size = 258, c.pad_id = 256, c.chunk_id = 257, c.enc_chunk_size = 63, c.chunk_topk = 2, c.slide_window = 64;
  c.encoder_layers = 1, c.decoder_layers = {1, 1}, c.tie_word_embeddings = true;
  return c;
}

const DrtModel<float>& bench_model() {
  static const DrtModel<float> model(bench_config(), 1);
  return model;
}

std::vector<std::int32_t> bench_tokens() {
  std::vector<std::int32_t> t(kTokens);
  for (Index i = 0; i < kTokens; ++i) t[i] = static_cast<std::int32_t>(random_bits(2, i) % 256);
  return t;
}

void batch_forward(benchmark::State& state) {
  const auto tokens = bench_tokens();
  const IndexTensor input = IndexTensor::from({1, kTokens}, tokens);
  NoGradGuard no_grad;
  for (auto _ : state) {
    benchmark::DoNotOptimize(bench_model().logits(input).value().data());
    tape().reset();
  }
  state.counters["tokens/s"] = rate(double(kTokens));
}

void prefill(benchmark::State& state, Index segment) {
  const auto tokens = bench_tokens();
  for (auto _ : state) {
    DrtDecoder<float> decoder(bench_model());
    decoder.feed(tokens, {}, segment);
  }
  state.counters["tokens/s"] = rate(double(kTokens));
}

void decode_step(benchmark::State& state) {
  DrtDecoder<float> decoder(bench_model());
  decoder.feed(bench_tokens(), {});
  std::uint64_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(decoder.step(static_cast<std::int32_t>(random_bits(3, i++) % 256)).data());
  state.counters["tokens/s"] = rate(1.0);
}

void register_benchmarks() {
  auto add = [](const char* name, auto fn) { return benchmark::RegisterBenchmark(name, fn)->UseRealTime(); };
  add("batch/forward", batch_forward);
  add("prefill/segment_4096", [](benchmark::State& s) { prefill(s, 4096); });
  add("prefill/segment_256", [](benchmark::State& s) { prefill(s, 256); });
  add("decode/step", decode_step);
}

void print_summary(const CapturingReporter& r) {
  const double batch = r.median("batch/forward", "tokens/s");
  std::printf("\nSummary of THIS run (medians over the repetitions)\n");
  std::printf("  %-24s %12s %12s\n", "", "tokens/s", "vs batch");
  for (const char* name : {"batch/forward", "prefill/segment_4096", "prefill/segment_256", "decode/step"}) {
    const double t = r.median(name, "tokens/s");
    std::printf("  %-24s %12.0f %12.2f\n", name, t, t / batch);
  }
  std::printf("  decode/step: %.3f ms per token, %.1f× the batch forward's time per token\n\n",
              1e3 / r.median("decode/step", "tokens/s"), batch / r.median("decode/step", "tokens/s"));
}

}  // namespace

int main(int argc, char** argv) {
  return run_benchmarks(argc, argv, /*repetitions=*/5, register_benchmarks, print_summary);
}
