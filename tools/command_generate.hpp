// tools/command_generate.hpp — `drt generate`: a prompt in, a continuation streamed out.
//
//   drt generate --checkpoint runs/lengthgen/drt/checkpoint --prompt "In the beginning" --tokens 200
//
// The prompt (--prompt TEXT, or --prompt-file FILE, optionally cut to its first --prompt-limit
// tokens) goes through the decoder in segments of --segment positions (bounded memory at any
// length); then one token at a time, greedy or sampled (--temperature, --top-k, --top-p,
// --seed). Byte-level models (vocab_size < 50257) read and write bytes; larger ones use GPT-2
// BPE (data/gpt2). The continuation is printed as it is made; the report after it goes to
// stderr: prefill and decoding tokens/s, peak resident memory and the chunk memory's size.
#pragma once

#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "args.hpp"
#include "command_tokenize.hpp"  // DRT_TOKENIZE_WITH_GPT2
#include "decoding.hpp"
#include "format.hpp"
#include "drt/io/file.hpp"

namespace drt::cli {

inline const CommandSpec& generate_spec() {
  static const CommandSpec spec{
      "generate",
      "Continue a prompt with a trained model (DRT or baseline), token by token, at any context length.",
      {{"checkpoint", "DIR", "a drt train checkpoint (<out_dir>/checkpoint)"},
       {"config", "FILE", "model config JSON, with --weights: a DRT model"},
       {"weights", "FILE", "weights .safetensors (reference names)"},
       {"prompt", "TEXT", "the prompt"},
       {"prompt-file", "FILE", "read the prompt from a file (any length)"},
       {"prompt-limit", "N", "use only the first N tokens of the prompt"},
       {"tokens", "N", "tokens to generate", false, "200"},
       {"temperature", "T", "0 = greedy; otherwise sample from softmax(logits / T)", false, "0"},
       {"top-k", "K", "sample among the K most likely tokens (0 = all)", false, "0"},
       {"top-p", "P", "sample within the smallest set of mass P (1 = all)", false, "1"},
       {"seed", "S", "seed of the sampling", false, "1"},
       {"segment", "N", "prefill segment in positions (memory is bounded by it)", false, "4096"},
       {"offload", "DIR", "keep the chunk memory in a memory-mapped file in DIR instead of RAM"},
       mirrored_landmarks_flag_spec(),
       {"gpt2-dir", "DIR", "GPT-2 tokenizer files, for models with vocab_size >= 50257", false, "data/gpt2"},
       {"threads", "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
       device_flag_spec()}};
  return spec;
}

namespace detail {

// Byte-level or GPT-2 text ↔ ids, chosen by the model's vocabulary size.
class TextCodec {
 public:
  TextCodec(int vocab_size, const std::string& gpt2_dir) {
    if (vocab_size < 50257) return;
#if DRT_TOKENIZE_WITH_GPT2
    gpt2_ = data::Gpt2Tokenizer::load(gpt2_dir);
#else
    DRT_CHECK(false, "this drt was built without PCRE2: no GPT-2 tokenizer for a model of vocab_size ", vocab_size,
              " (", gpt2_dir, ")");
#endif
  }
  std::vector<std::int32_t> encode(const std::string& text) const {
#if DRT_TOKENIZE_WITH_GPT2
    if (gpt2_) return gpt2_->encode(text);
#endif
    return data::ByteTokenizer().encode(text);
  }
  // Ids the tokenizer cannot spell (a byte model's pad and landmark ids) print as nothing.
  std::string decode(std::int32_t id) const {
#if DRT_TOKENIZE_WITH_GPT2
    if (gpt2_) return id < data::Gpt2Tokenizer::model_vocab_size() ? gpt2_->decode({id}) : std::string();
#endif
    return id >= 0 && id < 256 ? std::string(1, static_cast<char>(id)) : std::string();
  }

 private:
#if DRT_TOKENIZE_WITH_GPT2
  std::optional<data::Gpt2Tokenizer> gpt2_;
#endif
};

}  // namespace detail

inline int run_generate(const Args& args, std::ostream& out) {
  apply_threads_flag(args);
  if (args.has("prompt") == args.has("prompt-file")) throw UsageError("give exactly one of --prompt TEXT and --prompt-file FILE");
  const long long new_tokens = args.integer("tokens"), segment = args.integer("segment");
  if (new_tokens < 1) throw UsageError("flag --tokens needs a positive integer");
  if (segment < 1) throw UsageError("flag --segment needs a positive integer");
  const SamplingOptions sampling{args.number("temperature"), static_cast<int>(args.integer("top-k")), args.number("top-p"),
                                 static_cast<std::uint64_t>(args.integer("seed"))};
  try {
    sampling.validate();
  } catch (const Error& e) {
    throw UsageError(e.what());
  }

  const detail::EvalModel m = detail::load_eval_model(args);
  const detail::TextCodec codec(m.config.vocab_size, args.text("gpt2-dir"));
  std::string prompt_text = args.has("prompt") ? args.text("prompt") : std::string();
  if (args.has("prompt-file")) {
    const std::vector<char> bytes = io::read_file(args.text("prompt-file"));
    prompt_text.assign(bytes.begin(), bytes.end());
  }
  std::vector<std::int32_t> prompt = codec.encode(prompt_text);
  if (args.has("prompt-limit")) {
    const long long limit = args.integer("prompt-limit");
    if (limit < 1) throw UsageError("flag --prompt-limit needs a positive integer");
    if (static_cast<long long>(prompt.size()) > limit) prompt.resize(static_cast<std::size_t>(limit));
  }
  DRT_CHECK(!prompt.empty(), "drt generate: the prompt is empty");

  const auto decoder = make_decoder(m, args.has("offload") ? args.text("offload") : std::string(), "generate",
                                    mirrored_landmarks_flag(args));
  const auto start = std::chrono::steady_clock::now();
  Tensor<float> next = decoder->feed(prompt, {static_cast<Index>(prompt.size()) - 1}, segment).reshape({m.config.vocab_size});
  const double prefill_seconds = seconds_since(start);
  if (args.has("prompt")) out << args.text("prompt");
  const auto decode_start = std::chrono::steady_clock::now();
  for (long long i = 0; i < new_tokens; ++i) {
    // A DRT never emits its landmark id (the model inserts landmarks itself) nor its padding id.
    if (m.is_drt) next(m.config.chunk_id) = next(m.config.pad_id) = -std::numeric_limits<float>::infinity();
    const std::int32_t token = sample_token(next, sampling, static_cast<std::uint64_t>(i));
    out << codec.decode(token) << std::flush;
    if (i + 1 < new_tokens) next = decoder->step(token);
  }
  const double decode_seconds = seconds_since(decode_start);
  out << "\n";

  const auto [chunks_in_ram, chunks_on_disk] = chunk_memory_bytes(*decoder);
  char line[512];
  std::snprintf(line, sizeof line,
                "prompt %zu tokens in %.2f s (%.0f tokens/s); generated %lld tokens in %.2f s (%.1f tokens/s)\n"
                "peak resident memory %s; decoder state %s; chunk memory %s in RAM, %s on disk\n",
                prompt.size(), prefill_seconds, static_cast<double>(prompt.size()) / prefill_seconds, new_tokens,
                decode_seconds, static_cast<double>(new_tokens) / decode_seconds, mib(peak_resident_bytes()).c_str(),
                mib(decoder->state_bytes()).c_str(), mib(chunks_in_ram).c_str(), mib(chunks_on_disk).c_str());
  std::cerr << line;
  return 0;
}

}  // namespace drt::cli
