// tools/command_tokenize.hpp — `drt tokenize --input FILE.txt --output FILE.shard`: a text file
// as a token shard (drt/data/shard.hpp), byte-level or GPT-2 BPE.
//
// The whole file is one document; --append-eot yes ends it with the end-of-text id (GPT-2's
// <|endoftext|> = 50256; for bytes a special id 256, which makes the vocabulary 257).
// Output for scripts: `tokens N`, `input_bytes N`, `shard_bytes N`, `vocab_size V`,
// `tokens_per_second X` (tokenizing only, not reading or writing).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "args.hpp"
#include "drt/data/shard.hpp"
#include "drt/data/tokenizer.hpp"
#include "drt/io/file.hpp"

// The GPT-2 tokenizer needs PCRE2, which is optional (see the top-level CMakeLists.txt).
#if __has_include(<pcre2.h>)
#include "drt/data/gpt2_tokenizer.hpp"
#define DRT_TOKENIZE_WITH_GPT2 1
#else
#define DRT_TOKENIZE_WITH_GPT2 0
#endif

namespace drt::cli {

inline const CommandSpec& tokenize_spec() {
  static const CommandSpec spec{
      "tokenize",
      "Tokenize a text file into a token shard (byte-level or GPT-2 BPE).",
      {{"input", "FILE", "UTF-8 text file", true},
       {"output", "FILE", "token shard to write (.shard; replaced atomically)", true},
       {"tokenizer", "byte|gpt2", "byte: one id per byte (V = 256); gpt2: GPT-2 BPE (V = 50257)", false, "byte"},
       {"gpt2-dir", "DIR", "folder with encoder.json and vocab.bpe (scripts/fetch-data.sh)", false, "data/gpt2"},
       {"append-eot", "yes|no", "end the document with the end-of-text id", false, "no"}}};
  return spec;
}

struct TokenizeReport {
  std::int64_t tokens = 0;
  std::int64_t input_bytes = 0;
  std::int64_t shard_bytes = 0;
  int vocab_size = 0;
  double seconds = 0;  // tokenizing only
};

// What `drt tokenize` does, callable from tests.
inline TokenizeReport tokenize_file(const std::string& input, const std::string& output, const std::string& tokenizer,
                                    const std::string& gpt2_dir = "data/gpt2", bool append_eot = false) {
  if (tokenizer != "byte" && tokenizer != "gpt2") throw UsageError("--tokenizer must be byte or gpt2, got '" + tokenizer + "'");
  const std::vector<char> bytes = io::read_file(input);
  const std::string_view text(bytes.data(), bytes.size());
  std::vector<std::int32_t> ids;
  TokenizeReport report;
  report.input_bytes = static_cast<std::int64_t>(bytes.size());
#if DRT_TOKENIZE_WITH_GPT2
  std::optional<data::Gpt2Tokenizer> gpt2;  // loaded before the clock starts
  if (tokenizer == "gpt2") gpt2 = data::Gpt2Tokenizer::load(gpt2_dir);
#endif
  const auto start = std::chrono::steady_clock::now();
  if (tokenizer == "byte") {
    // The text's own bytes only: a "<|endoftext|>" written in the file stays text.
    const data::ByteTokenizer bytes_only;
    ids = bytes_only.encode(text);
    report.vocab_size = bytes_only.vocab_size();
    if (append_eot) {
      const data::ByteTokenizer with_eot({"<|endoftext|>"});
      ids.push_back(with_eot.special_id("<|endoftext|>"));
      report.vocab_size = with_eot.vocab_size();
    }
  } else {
#if DRT_TOKENIZE_WITH_GPT2
    ids = gpt2->encode(text);
    if (append_eot) ids.push_back(data::Gpt2Tokenizer::kEndOfText);
    report.vocab_size = gpt2->vocab_size();
#else
    DRT_CHECK(false, "tokenize: this drt was built without PCRE2, so the gpt2 tokenizer is not available");
#endif
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  data::write_shard(output, ids, report.vocab_size);
  report.tokens = static_cast<std::int64_t>(ids.size());
  report.shard_bytes = static_cast<std::int64_t>(std::filesystem::file_size(output));
  return report;
}

inline bool yes_no_flag(const Args& args, const std::string& name) {
  const std::string& v = args.text(name);
  if (v == "yes" || v == "true" || v == "1") return true;
  if (v == "no" || v == "false" || v == "0") return false;
  throw UsageError("flag --" + name + " needs yes or no, got '" + v + "'");
}

inline int run_tokenize(const Args& args, std::ostream& out) {
  const bool append_eot = yes_no_flag(args, "append-eot");
  const TokenizeReport r =
      tokenize_file(args.text("input"), args.text("output"), args.text("tokenizer"), args.text("gpt2-dir"), append_eot);
  out << "wrote " << args.text("output") << " (" << args.text("tokenizer") << " tokens, "
      << data::shard_token_bytes(r.vocab_size) << " bytes each)\n";
  out << "tokens " << r.tokens << "\n";
  out << "input_bytes " << r.input_bytes << "\n";
  out << "shard_bytes " << r.shard_bytes << "\n";
  out << "vocab_size " << r.vocab_size << "\n";
  out << "tokens_per_second " << static_cast<std::int64_t>(r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0) << "\n";
  return 0;
}

}  // namespace drt::cli
