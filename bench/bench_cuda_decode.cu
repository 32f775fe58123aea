// bench_cuda_decode — DRT inference on the GPU: prefill tokens/s and decode ms/token after a long
// prompt, with the step replayed from a CUDA graph and, for comparison, issued op by op, beside
// the reference's figures on an H200 (performance-anchors §3: prefill of 65,520 tokens in
// 0.171 s, ~382k tokens/s; decode 15.1 ms/token, 781 launches per token).
//
//   bench_cuda_decode [--config FILE] [--contexts N,N,...] [--steps N] [--segment N]
//                     [--precision fp32|bf16] [--disk DIR] [--profile prefill|decode]
//   default: tests/data/config_63.json (the paper's 146M DRT, random weights), contexts 65,520
//   and 1,048,576 tokens, 128 decode steps, segments of 4,096 positions, bf16
//
// Prefill: the prompt goes through DrtDecoder::feed in segments (only the last row reaches the
// LM head), timed to the end of the GPU's work: first by a throw-away decoder with the device
// allocator's cache emptied ("cold": it pays for the cudaMallocs), then with the cache warm by
// two more throw-away decoders (when the cold prefill took under 2 s) and by the decoder that goes
// on decoding (the median of those is "prefill s"). Decode: greedy steps after it; "decode" is the
// mean over all steps, which covers the S − 1 ordinary steps of a chunk (the first of which
// records the chunk's graph) and the landmark step that closes it (encoder, retrieval,
// streaming the new retrieval to the device); the ordinary and the landmark steps are also
// shown apart. The chunk memory is in
// host memory (--disk: a file in DIR), or on the device ("device" rows: keep_chunks_on_device).
//
// --profile prefill|decode runs only one row of the first context (prefill: chunks on the device;
// decode: chunks in host memory) and brackets its prefill or its decode steps with cudaProfilerStart/Stop, for a per-kernel profile of just that part:
//   ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv
//       bench_cuda_decode --contexts 16320 --steps 8 --profile decode
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include <drt/cuda.cuh>
#include <drt/model.hpp>

namespace {

using namespace drt;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Options {
  std::string config = DRT_SOURCE_DIR "/tests/data/config_63.json";
  std::vector<Index> contexts = {65520, 1048576};
  int steps = 128;
  Index segment = 4096;
  Precision precision = Precision::bf16;
  std::string disk;
  std::string profile;  // "", "prefill" or "decode"
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    DRT_CHECK(i + 1 < argc, "bench_cuda_decode: ", flag, " needs a value");
    const std::string value = argv[++i];
    if (flag == "--config") o.config = value;
    else if (flag == "--steps") o.steps = std::stoi(value);
    else if (flag == "--segment") o.segment = std::stol(value);
    else if (flag == "--precision") o.precision = parse_precision(value, "--precision");
    else if (flag == "--disk") o.disk = value;
    else if (flag == "--profile") {
      DRT_CHECK(value == "prefill" || value == "decode", "bench_cuda_decode: --profile takes prefill or decode, got ", value);
      o.profile = value;
    }
    else if (flag == "--contexts") {
      o.contexts.clear();
      std::stringstream list(value);
      for (std::string item; std::getline(list, item, ',');) o.contexts.push_back(std::stol(item));
    } else {
      throw Error("bench_cuda_decode: unknown flag " + flag);
    }
  }
  return o;
}

std::vector<std::int32_t> random_tokens(Index n, int vocab, std::uint64_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>(random_bits(seed, i) % std::uint64_t(vocab - 16));
  return t;
}

std::int32_t greedy(const Tensor<float>& logits) {
  const std::vector<float> v = logits.to_vector();
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end() - 16) - v.begin());
}

struct Figures {
  double cold_prefill_s = 0, prefill_s = 0, decode_ms = 0, ordinary_ms = 0, landmark_ms = 0;
  double peak_gib = 0;
  std::size_t launches = 0;
  Index recordings = 0;
};

// Prefills by throw-away decoders before the row's own: the first cold, the others warm (only
// after a cold one shorter than kRepeatBelowSeconds: a long prefill varies less, and repeating
// it costs minutes). The row reports the cold one and the median of the warm ones and the
// decoder's own.
inline constexpr int kThrowAwayPrefills = 3;
inline constexpr double kRepeatBelowSeconds = 2.0;

Figures run(const DrtModel<float>& model, const Options& o, Index context, bool graph, bool chunks_on_device,
            Precision decode_precision) {
  std::unique_ptr<ChunkStore<float>> store;
  const ModelConfig& c = model.config();
  const Index N = c.drops_landmark_row() ? c.chunk_positions() - 1 : c.chunk_positions();
  if (!o.disk.empty()) store = std::make_unique<MappedChunkStore<float>>(N, c.hidden_size, o.disk + "/bench_cuda_decode.chunks");
  const std::vector<std::int32_t> prompt = random_tokens(context, c.vocab_size, 7);
  Figures f;
  cuda::synchronize();
  cuda::empty_cache();
  // Throw-away prefills of the same prompt by other decoders: the first with the allocator's
  // cache empty (cold), then warm ones.
  std::vector<double> warm;
  for (int run = 0; run < kThrowAwayPrefills; ++run) {
    DrtDecoder<float> other(model);
    other.keep_chunks_on_device(chunks_on_device);
    const auto t0 = Clock::now();
    other.feed(prompt, {context - 1}, o.segment);
    cuda::synchronize();
    if (run == 0) f.cold_prefill_s = seconds_since(t0);
    else warm.push_back(seconds_since(t0));
    tape().reset();
    if (f.cold_prefill_s >= kRepeatBelowSeconds) break;
  }
  DrtDecoder<float> decoder(model, std::move(store));
  decoder.use_step_graph(graph);
  decoder.keep_chunks_on_device(chunks_on_device);
  cuda::reset_peak_memory();
  if (o.profile == "prefill") cudaProfilerStart();
  auto t0 = Clock::now();
  Tensor<float> logits = decoder.feed(prompt, {context - 1}, o.segment).reshape({c.vocab_size});
  cuda::synchronize();
  warm.push_back(seconds_since(t0));
  if (o.profile == "prefill") cudaProfilerStop();
  std::sort(warm.begin(), warm.end());
  f.prefill_s = warm[warm.size() / 2];  // the median of the warm prefills
  std::int32_t next = greedy(logits);
  set_matmul_precision(decode_precision);
  // Each step ends with its logits copied to the host, so host time per step is GPU time too.
  double ordinary = 0, landmark = 0;
  int landmarks = 0;
  const Index S = c.chunk_positions();
  if (o.profile == "decode") {  // record the graph outside the profiled steps
    next = greedy(decoder.step(next));
    cudaProfilerStart();
  }
  for (int s = 0; s < o.steps; ++s) {
    const bool closes_chunk = (decoder.positions() + 2) % S == 0;  // this token brings its landmark
    const auto t = Clock::now();
    next = greedy(decoder.step(next));
    (closes_chunk ? landmark : ordinary) += seconds_since(t);
    landmarks += closes_chunk ? 1 : 0;
  }
  if (o.profile == "decode") cudaProfilerStop();
  f.decode_ms = 1e3 * (ordinary + landmark) / o.steps;
  f.ordinary_ms = 1e3 * ordinary / std::max(1, o.steps - landmarks);
  f.landmark_ms = landmarks > 0 ? 1e3 * landmark / landmarks : 0.0;
  set_matmul_precision(o.precision);
  f.peak_gib = double(cuda::allocator_stats().peak_bytes_in_use) / double(1 << 30);
  f.launches = decoder.step_graph_launches();
  f.recordings = decoder.step_graph_recordings();
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const ModelConfig config = ModelConfig::load(o.config);
    set_matmul_precision(o.precision);
    DrtModel<float> model(config, 1);
    model.move_to(Device::cuda);
    std::printf("bench_cuda_decode on %s: %s (%lld parameters, random weights), %s GEMMs and attention, segments of %lld\n",
                cuda::device_description().c_str(), o.config.c_str(), static_cast<long long>(model.parameter_count()),
                precision_name(o.precision), static_cast<long long>(o.segment));
    std::printf("the chunk memory in %s; %d decode steps after each prefill\n\n",
                o.disk.empty() ? "host memory" : "a file", o.steps);
    std::printf("%-9s %-8s %-6s %-6s %8s %9s %13s %10s %10s %10s %9s %9s\n", "context", "step", "chunks", "decode",
                "cold s", "prefill s", "prefill tok/s", "decode ms", "ordinary", "landmark", "launches", "peak GiB");
    struct Row {
      bool graph, on_device;
      Precision decode;
      bool first_context_only;  // the comparisons: op by op, and the other GEMM precision while decoding
    };
    const Precision other = o.precision == Precision::fp32 ? Precision::bf16 : Precision::fp32;
    for (const Index context : o.contexts)
      for (const Row row : {Row{true, false, o.precision, false}, Row{false, false, o.precision, true},
                            Row{true, true, o.precision, false}, Row{true, true, other, true}}) {
        if (row.first_context_only && context != o.contexts.front()) continue;
        // A profile takes one row: the prefill with the chunks on the device (the fast one), the
        // decode steps with the chunks in host memory (the default).
        if (!o.profile.empty() && (context != o.contexts.front() || !row.graph || row.decode != o.precision ||
                                   row.on_device != (o.profile == "prefill")))
          continue;
        const Figures f = run(model, o, context, row.graph, row.on_device, row.decode);
        std::printf("%-9lld %-8s %-6s %-6s %8.3f %9.3f %13.0f %10.3f %10.3f %10.3f %9s %9.2f\n",
                    static_cast<long long>(context), row.graph ? "graph" : "op-by-op", row.on_device ? "device" : "host",
                    precision_name(row.decode), f.cold_prefill_s, f.prefill_s, double(context) / f.prefill_s,
                    f.decode_ms, f.ordinary_ms, f.landmark_ms, row.graph ? std::to_string(f.launches).c_str() : "-", f.peak_gib);
        tape().reset();
      }
    std::printf("\ncold s: the first prefill of the row, by another decoder, with the device allocator's cache\n"
                "emptied (its first cudaMallocs); prefill s and tok/s: the median of the next three (warm; only the\n"
                "next one after a cold prefill of 2 s or more), the last of which is the decoder's own, which the\n"
                "decode steps follow\n");
    std::printf("decode: mean ms per token over all steps; ordinary: steps inside a chunk (a graph replay);\n"
                "landmark: the step that closes a chunk (encoder, retrieval, streaming the retrieved chunks in);\n"
                "the first ordinary step of a chunk records its graph\n");
    std::printf("\nreference (authors' code, bf16, H200): prefill of 65,520 tokens 0.171 s (~382,000 tokens/s, 16.5 GiB);\n"
                "decode 15.1 ms/token after it (781 launches per token, host-bound)\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_decode: %s\n", e.what());
    return 1;
  }
}
