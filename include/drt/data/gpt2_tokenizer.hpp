// drt/data/gpt2_tokenizer.hpp — GPT-2's byte-level BPE tokenizer (the r50k_base encoding).
//
// V = 50257 GPT-2 ids (50256 = <|endoftext|>), and DRT reserves 8 more above them
// (ids 50257..50264, model vocabulary 50265; see the reference spec §1).
//
// Encoding runs in three steps:
//   1. with allow_special, the text is cut at special-token markers, which become their ids;
//   2. GPT-2's regex splits each remaining piece into words (letters, digits, other symbols and
//      whitespace runs, each with at most one leading space);
//   3. each word's bytes are merged pairwise by the rank order of vocab.bpe until no ranked pair
//      is left; the resulting symbols are the ids.
// The files (encoder.json, vocab.bpe) spell every byte as a printable character so that a
// token is a readable string; they are converted back to raw bytes when loaded, and all of the
// work above happens on bytes and ids.
//
// Bytes that are not valid UTF-8 are kept: the regex cannot match them, so each run of them
// becomes a word of its own. Any byte string therefore encodes and decodes back to itself.
// decode() returns bytes; a sequence of ids that cuts a character in two decodes to invalid
// UTF-8, as it does in every byte-level BPE.
//
// encode() and decode() are const and thread-safe; copies share the tables and the word cache.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "drt/core/error.hpp"
#include "drt/data/tokenizer.hpp"
#include "drt/io/file.hpp"

namespace drt::data {

namespace detail {

// GPT-2 spells each byte as one character: printable Latin-1 bytes as themselves, and the other
// 68 bytes (controls, space, 0x7F-0xA0, 0xAD) as U+0100, U+0101, ... in byte order.
inline std::array<char32_t, 256> gpt2_byte_chars() {
  auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  std::array<char32_t, 256> chars{};
  char32_t next_spare = 0x100;
  for (int b = 0; b < 256; ++b) chars[static_cast<std::size_t>(b)] = printable(b) ? char32_t(b) : next_spare++;
  return chars;
}

// Converts a token as spelled in encoder.json / vocab.bpe back to its raw bytes. Returns false
// when the text is not UTF-8 or uses a character outside GPT-2's byte alphabet.
inline bool gpt2_spelling_to_bytes(std::string_view spelling, std::string& bytes) {
  static const std::array<int, 324> byte_of_char = [] {
    std::array<int, 324> table;
    table.fill(-1);
    const auto chars = gpt2_byte_chars();
    for (int b = 0; b < 256; ++b) table[chars[static_cast<std::size_t>(b)]] = b;
    return table;
  }();
  bytes.clear();
  std::size_t i = 0;
  while (i < spelling.size()) {
    const auto lead = static_cast<unsigned char>(spelling[i]);
    char32_t c;
    if (lead < 0x80) {
      c = lead;
      i += 1;
    } else if ((lead & 0xE0) == 0xC0 && i + 1 < spelling.size() &&
               (static_cast<unsigned char>(spelling[i + 1]) & 0xC0) == 0x80) {
      c = (char32_t(lead & 0x1F) << 6) | (static_cast<unsigned char>(spelling[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // the byte alphabet lies below U+0800: two UTF-8 bytes at most
    }
    if (c >= byte_of_char.size() || byte_of_char[c] < 0) return false;
    bytes.push_back(static_cast<char>(byte_of_char[c]));
  }
  return true;
}

inline std::string pcre2_error_text(int code) {
  PCRE2_UCHAR8 buffer[256];
  pcre2_get_error_message_8(code, buffer, sizeof(buffer));
  return std::string(reinterpret_cast<const char*>(buffer));
}

}  // namespace detail

class Gpt2Tokenizer {
 public:
  static constexpr int32_t kGpt2VocabSize = 50257;
  static constexpr int32_t kEndOfText = 50256;
  // DRT's extra ids above the GPT-2 vocabulary. 50258..50262 are reserved and unnamed in the reference.
  static constexpr int32_t kPad = 50257;
  static constexpr int32_t kMask = 50263;
  static constexpr int32_t kChunk = 50264;  // the landmark token appended to every chunk
  static constexpr int32_t kModelVocabSize = 50265;
  // GPT-2's pre-tokenizer. \s, \p{L} and \p{N} are Unicode classes (PCRE2_UCP).
  static constexpr const char* kPattern =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  // The word cache is emptied when it reaches this many entries; longer words are not cached.
  static constexpr std::size_t kCacheCapacity = std::size_t(1) << 16;
  static constexpr std::size_t kMaxCachedWordBytes = 64;

  // Reads <dir>/encoder.json and <dir>/vocab.bpe (scripts/fetch-data.sh puts them in data/gpt2).
  static Gpt2Tokenizer load(const std::string& dir) {
    Gpt2Tokenizer tokenizer;
    auto tables = std::make_shared<Tables>();
    read_encoder(dir + "/encoder.json", *tables);
    read_merges(dir + "/vocab.bpe", *tables);
    tables->regex = compile_pattern();
    tokenizer.tables_ = std::move(tables);
    tokenizer.cache_ = std::make_shared<WordCache>();
    return tokenizer;
  }

  int vocab_size() const { return kGpt2VocabSize; }
  static constexpr int model_vocab_size() { return kModelVocabSize; }

  // The marker text of a special id (50256..50264), e.g. "<|endoftext|>", "<|pad|>", "<|chunk|>".
  static const std::string& special_name(int32_t id) {
    DRT_CHECK(id >= kEndOfText && id < kModelVocabSize, "Gpt2Tokenizer::special_name: id ", id,
              " is not a special id [", kEndOfText, ", ", kModelVocabSize, ")");
    return special_names()[static_cast<std::size_t>(id - kEndOfText)];
  }

  // With allow_special, the markers of special_name() in the text become their ids; without it
  // they are ordinary text ("<|endoftext|>" -> '<', '|', 'end', ...).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    if (!allow_special) {
      encode_plain(text, ids);
      return ids;
    }
    for (const auto& piece : detail::split_on_special_names(text, special_names(), kEndOfText)) {
      if (piece.special_id >= 0) ids.push_back(piece.special_id);
      else encode_plain(piece.text, ids);
    }
    return ids;
  }

  // Concatenates the bytes of each id; the special ids decode to their markers.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string text;
    text.reserve(ids.size() * 4);
    for (std::size_t i = 0; i < ids.size(); ++i) text += token_bytes(ids[i], i);
    return text;
  }

  // The bytes of one token (the marker for special ids).
  std::string_view token_bytes(int32_t id) const { return token_bytes(id, 0); }

  // Step 2 alone: the words of `text`, in order, covering it exactly.
  std::vector<std::string_view> pre_tokenize(std::string_view text) const {
    std::vector<std::string_view> words;
    if (text.empty()) return words;
    std::unique_ptr<pcre2_match_data_8, decltype(&pcre2_match_data_free_8)> match(
        pcre2_match_data_create_from_pattern_8(tables_->regex.get(), nullptr), &pcre2_match_data_free_8);
    DRT_CHECK(match, "Gpt2Tokenizer: out of memory for regex match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR8>(text.data());
    std::size_t offset = 0;
    while (offset < text.size()) {
      const int rc = pcre2_match_8(tables_->regex.get(), subject, text.size(), offset, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {  // only bytes that are not UTF-8 are left
        words.push_back(text.substr(offset));
        break;
      }
      DRT_CHECK(rc > 0, "Gpt2Tokenizer: regex match failed at byte ", offset, ": ", detail::pcre2_error_text(rc));
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer_8(match.get());
      DRT_CHECK(span[1] > span[0], "Gpt2Tokenizer: regex matched an empty word at byte ", span[0]);
      if (span[0] > offset) words.push_back(text.substr(offset, span[0] - offset));
      words.push_back(text.substr(span[0], span[1] - span[0]));
      offset = span[1];
    }
    return words;
  }

  std::size_t cache_size() const {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    return cache_->words.size();
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  struct RegexDeleter {
    void operator()(pcre2_code_8* code) const { pcre2_code_free_8(code); }
  };

  // Everything load() reads; immutable afterwards.
  struct Tables {
    std::vector<std::string> token_bytes;  // by id, kModelVocabSize entries
    std::array<int32_t, 256> byte_id{};
    std::unordered_map<uint64_t, Merge> merges;  // key: pair_key(left id, right id)
    std::unique_ptr<pcre2_code_8, RegexDeleter> regex;
  };

  struct WordCache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };

  Gpt2Tokenizer() = default;

  static const std::vector<std::string>& special_names() {
    static const std::vector<std::string> names = [] {
      std::vector<std::string> all{"<|endoftext|>", "<|pad|>"};
      for (int32_t id = kPad + 1; id < kMask; ++id) all.push_back("<|reserved_" + std::to_string(id) + "|>");
      all.push_back("<|mask|>");
      all.push_back("<|chunk|>");
      return all;
    }();
    return names;
  }

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  }

  std::string_view token_bytes(int32_t id, std::size_t position) const {
    DRT_CHECK(id >= 0 && id < kModelVocabSize, "Gpt2Tokenizer::decode: id ", id, " at position ", position,
              " is outside the vocabulary [0, ", kModelVocabSize, ")");
    return tables_->token_bytes[static_cast<std::size_t>(id)];
  }

  static std::string read_text(const std::string& path) {
    DRT_CHECK(std::filesystem::exists(path), "Gpt2Tokenizer: ", path,
              " is missing (run scripts/fetch-data.sh to download the GPT-2 files)");
    const std::vector<char> bytes = io::read_file(path);
    return std::string(bytes.begin(), bytes.end());
  }

  static void read_encoder(const std::string& path, Tables& tables) {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(read_text(path));
    } catch (const nlohmann::json::exception& e) {
      DRT_CHECK(false, path, ": not valid JSON (", e.what(), ")");
    }
    DRT_CHECK(json.is_object(), path, ": expected a JSON object mapping token to id");
    DRT_CHECK(json.size() == std::size_t(kGpt2VocabSize), path, ": has ", json.size(), " tokens, expected ",
              kGpt2VocabSize);
    tables.token_bytes.assign(kModelVocabSize, std::string());
    std::vector<bool> seen(kGpt2VocabSize, false);
    tables.byte_id.fill(-1);
    std::string bytes;
    for (const auto& [spelling, value] : json.items()) {
      DRT_CHECK(value.is_number_integer(), path, ": the id of token \"", spelling, "\" is not an integer");
      const int64_t id = value.get<int64_t>();
      DRT_CHECK(id >= 0 && id < kGpt2VocabSize, path, ": token \"", spelling, "\" has id ", id, " outside [0, ",
                kGpt2VocabSize, ")");
      DRT_CHECK(!seen[std::size_t(id)], path, ": id ", id, " is used twice");
      seen[std::size_t(id)] = true;
      if (id == kEndOfText) {
        DRT_CHECK(spelling == special_names()[0], path, ": id ", kEndOfText, " is \"", spelling, "\", expected \"",
                  special_names()[0], "\"");
        continue;
      }
      DRT_CHECK(detail::gpt2_spelling_to_bytes(spelling, bytes), path, ": token \"", spelling, "\" (id ", id,
                ") has a character outside GPT-2's byte alphabet");
      DRT_CHECK(!bytes.empty(), path, ": token id ", id, " is empty");
      if (bytes.size() == 1) tables.byte_id[static_cast<unsigned char>(bytes[0])] = static_cast<int32_t>(id);
      tables.token_bytes[std::size_t(id)] = bytes;
    }
    for (int b = 0; b < 256; ++b)
      DRT_CHECK(tables.byte_id[std::size_t(b)] >= 0, path, ": no token for the single byte ", b);
    for (int32_t id = kEndOfText; id < kModelVocabSize; ++id)
      tables.token_bytes[std::size_t(id)] = special_names()[std::size_t(id - kEndOfText)];
  }

  // vocab.bpe: a "#version" line, then one merge per line, "left right", highest priority first.
  static void read_merges(const std::string& path, Tables& tables) {
    const std::string text = read_text(path);
    std::unordered_map<std::string, int32_t> id_of_bytes;
    id_of_bytes.reserve(kGpt2VocabSize);
    for (int32_t id = 0; id < kEndOfText; ++id) id_of_bytes.emplace(tables.token_bytes[std::size_t(id)], id);
    auto id_of = [&](std::string_view spelling, std::size_t line_number, const char* what) {
      std::string bytes;
      DRT_CHECK(detail::gpt2_spelling_to_bytes(spelling, bytes), path, " line ", line_number, ": the ", what,
                " symbol \"", spelling, "\" has a character outside GPT-2's byte alphabet");
      const auto found = id_of_bytes.find(bytes);
      DRT_CHECK(found != id_of_bytes.end(), path, " line ", line_number, ": the ", what, " symbol \"", spelling,
                "\" is not in encoder.json");
      return found->second;
    };

    // created_by[id]: the rank of the first merge that produces id (-1 for single bytes).
    std::vector<int32_t> created_by(kGpt2VocabSize, INT32_MAX);
    for (int b = 0; b < 256; ++b) created_by[std::size_t(tables.byte_id[std::size_t(b)])] = -1;
    struct Line {
      int32_t left, right;
      std::size_t number;
    };
    std::vector<Line> lines;
    std::size_t start = 0, line_number = 0;
    while (start < text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + start, end - start);
      start = end + 1;
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
      const std::size_t space = line.find(' ');
      DRT_CHECK(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                    line.find(' ', space + 1) == std::string_view::npos,
                path, " line ", line_number, ": expected two symbols separated by one space, got \"", line, "\"");
      const int32_t left = id_of(line.substr(0, space), line_number, "left");
      const int32_t right = id_of(line.substr(space + 1), line_number, "right");
      const std::string merged = tables.token_bytes[std::size_t(left)] + tables.token_bytes[std::size_t(right)];
      const auto found = id_of_bytes.find(merged);
      DRT_CHECK(found != id_of_bytes.end(), path, " line ", line_number, ": the merge of \"", line,
                "\" is not in encoder.json");
      const auto rank = static_cast<int32_t>(lines.size());
      const bool inserted = tables.merges.emplace(pair_key(left, right), Merge{rank, found->second}).second;
      DRT_CHECK(inserted, path, " line ", line_number, ": the merge \"", line, "\" appears twice");
      created_by[std::size_t(found->second)] = std::min(created_by[std::size_t(found->second)], rank);
      lines.push_back({left, right, line_number});
    }
    DRT_CHECK(!lines.empty(), path, ": has no merges");
    // encode() applies the merges through a priority queue, one pair at a time; that equals the
    // reference's rank-by-rank passes only if no merge uses a symbol that a later merge creates.
    for (std::size_t rank = 0; rank < lines.size(); ++rank) {
      for (const int32_t part : {lines[rank].left, lines[rank].right}) {
        const int32_t made = created_by[std::size_t(part)];
        DRT_CHECK(made == INT32_MAX || made < static_cast<int32_t>(rank), path, " line ", lines[rank].number,
                  ": uses a symbol that only a later merge (line ", lines[std::size_t(made)].number, ") creates");
      }
    }
  }

  static std::unique_ptr<pcre2_code_8, RegexDeleter> compile_pattern() {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    std::unique_ptr<pcre2_code_8, RegexDeleter> code(
        pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(kPattern), PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset, nullptr));
    DRT_CHECK(code, "Gpt2Tokenizer: cannot compile the pre-tokenizer regex at offset ", error_offset, ": ",
              detail::pcre2_error_text(error));
    pcre2_jit_compile_8(code.get(), PCRE2_JIT_COMPLETE);  // a speed-up only; the interpreter is the fallback
    return code;
  }

  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
    for (const std::string_view word : pre_tokenize(text)) encode_word(word, ids);
  }

  void encode_word(std::string_view word, std::vector<int32_t>& ids) const {
    if (word.size() == 1) {
      ids.push_back(tables_->byte_id[static_cast<unsigned char>(word[0])]);
      return;
    }
    const bool cacheable = word.size() <= kMaxCachedWordBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      const auto found = cache_->words.find(std::string(word));
      if (found != cache_->words.end()) {
        ids.insert(ids.end(), found->second.begin(), found->second.end());
        return;
      }
    }
    const std::size_t first = ids.size();
    merge_bytes(word, ids);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      if (cache_->words.size() >= kCacheCapacity) cache_->words.clear();
      cache_->words.emplace(std::string(word), std::vector<int32_t>(ids.begin() + std::ptrdiff_t(first), ids.end()));
    }
  }

  // Step 3 for one word. The symbols form a linked list over the byte positions; a slot keeps
  // its position when it absorbs its right neighbour, so (rank, position) orders the queue the
  // way the reference does: lowest rank first, and left to right within one rank.
  void merge_bytes(std::string_view word, std::vector<int32_t>& ids) const {
    const auto n = static_cast<int32_t>(word.size());
    std::vector<int32_t> symbol(word.size()), next(word.size()), prev(word.size());
    for (int32_t i = 0; i < n; ++i) {
      symbol[std::size_t(i)] = tables_->byte_id[static_cast<unsigned char>(word[std::size_t(i)])];
      next[std::size_t(i)] = i + 1 < n ? i + 1 : -1;
      prev[std::size_t(i)] = i - 1;
    }
    struct Candidate {
      int32_t rank, left, right, left_symbol, right_symbol, merged;
      bool operator>(const Candidate& other) const {
        return rank != other.rank ? rank > other.rank : left > other.left;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto consider = [&](int32_t left) {
      const int32_t right = next[std::size_t(left)];
      if (right < 0) return;
      const int32_t a = symbol[std::size_t(left)], b = symbol[std::size_t(right)];
      const auto found = tables_->merges.find(pair_key(a, b));
      if (found != tables_->merges.end()) queue.push({found->second.rank, left, right, a, b, found->second.merged_id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) consider(i);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      // Stale when either side has changed since the candidate was queued: merging only makes
      // a symbol longer, so an unchanged id means an unchanged symbol.
      if (symbol[std::size_t(c.left)] != c.left_symbol || next[std::size_t(c.left)] != c.right ||
          symbol[std::size_t(c.right)] != c.right_symbol)
        continue;
      symbol[std::size_t(c.left)] = c.merged;
      const int32_t after = next[std::size_t(c.right)];
      next[std::size_t(c.left)] = after;
      if (after >= 0) prev[std::size_t(after)] = c.left;
      symbol[std::size_t(c.right)] = -1;
      if (prev[std::size_t(c.left)] >= 0) consider(prev[std::size_t(c.left)]);
      consider(c.left);
    }
    for (int32_t i = 0; i >= 0; i = next[std::size_t(i)]) ids.push_back(symbol[std::size_t(i)]);
  }

  std::shared_ptr<const Tables> tables_;
  std::shared_ptr<WordCache> cache_;
};

}  // namespace drt::data
