// drt/data/corpus.hpp — the plain-text corpora that scripts/fetch-data.sh extracts at set-up time
// (data/corpus/kjv.txt, data/corpus/brown.txt), and tokenized text to draw haystacks from.
//
// Nothing is downloaded while drt runs: a missing corpus is an error that says which file is
// missing and how to make it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/shape.hpp"
#include "drt/io/file.hpp"

namespace drt::data {

inline constexpr const char* kDefaultCorpusDir = "data/corpus";

// A bare name ("kjv") means <corpus_dir>/<name>.txt; anything with a '/' or a ".txt" ending is a
// path as it stands.
inline std::string corpus_path(const std::string& name_or_path, const std::string& corpus_dir = kDefaultCorpusDir) {
  const bool is_path = name_or_path.find('/') != std::string::npos ||
                       (name_or_path.size() > 4 && name_or_path.compare(name_or_path.size() - 4, 4, ".txt") == 0);
  return is_path ? name_or_path : corpus_dir + "/" + name_or_path + ".txt";
}

// The whole text of a corpus. Throws when the file is missing or empty.
inline std::string load_corpus(const std::string& name_or_path, const std::string& corpus_dir = kDefaultCorpusDir) {
  const std::string path = corpus_path(name_or_path, corpus_dir);
  std::error_code ec;
  DRT_CHECK(std::filesystem::is_regular_file(path, ec), path,
            ": corpus not found (run scripts/fetch-data.sh to extract the corpora into data/corpus/)");
  const std::vector<char> bytes = io::read_file(path);
  DRT_CHECK(!bytes.empty(), path, ": corpus is empty (run scripts/fetch-data.sh to extract it again)");
  return std::string(bytes.begin(), bytes.end());
}

// Tokenized text, shared between copies, from which haystacks are cut. part() gives a sub-range
// without copying, so that training and evaluation can draw from different documents.
class HaystackText {
 public:
  HaystackText(std::vector<std::int32_t> tokens, int vocab_size, std::string name)
      : tokens_(std::make_shared<const std::vector<std::int32_t>>(std::move(tokens))),
        begin_(0),
        end_(static_cast<Index>(tokens_->size())),
        vocab_size_(vocab_size),
        name_(std::move(name)) {
    DRT_CHECK(vocab_size_ > 0, "HaystackText ", name_, ": vocab size ", vocab_size_, " must be positive");
    for (std::size_t i = 0; i < tokens_->size(); ++i)
      DRT_CHECK((*tokens_)[i] >= 0 && (*tokens_)[i] < vocab_size_, "HaystackText ", name_, ": token id ", (*tokens_)[i],
                " at position ", i, " is outside the vocabulary [0, ", vocab_size_, ")");
  }

  // Any tokenizer with encode(text) and vocab_size() (ByteTokenizer, Gpt2Tokenizer).
  template <class Tokenizer>
  static HaystackText tokenize(std::string_view text, const Tokenizer& tokenizer, std::string name) {
    return HaystackText(tokenizer.encode(text), tokenizer.vocab_size(), std::move(name));
  }

  Index size() const { return end_ - begin_; }
  int vocab_size() const { return vocab_size_; }
  const std::string& name() const { return name_; }

  // Tokens [start, start + length).
  std::span<const std::int32_t> window(Index start, Index length) const {
    DRT_CHECK(start >= 0 && length >= 0 && start + length <= size(), "HaystackText ", name_, ": window [", start, ", ",
              start + length, ") lies outside its ", size(), " tokens");
    return {tokens_->data() + begin_ + start, static_cast<std::size_t>(length)};
  }

  // A start for a window of `length` tokens, uniform over [0, size − length]: a pure function
  // of (seed, counter).
  Index random_start(std::uint64_t seed, std::uint64_t counter, Index length) const {
    DRT_CHECK(length >= 0 && length <= size(), "HaystackText ", name_, ": needs ", length, " tokens of text but has only ",
              size(), " (use a longer corpus or a shorter context)");
    return static_cast<Index>(random_bits(seed, counter) % static_cast<std::uint64_t>(size() - length + 1));
  }

  // Tokens [begin, end) of this text, sharing its storage.
  HaystackText part(Index begin, Index end) const {
    DRT_CHECK(0 <= begin && begin <= end && end <= size(), "HaystackText ", name_, ": part [", begin, ", ", end,
              ") lies outside its ", size(), " tokens");
    HaystackText p = *this;
    p.begin_ = begin_ + begin;
    p.end_ = begin_ + end;
    p.name_ = name_ + "[" + std::to_string(begin) + ":" + std::to_string(end) + "]";
    return p;
  }

 private:
  std::shared_ptr<const std::vector<std::int32_t>> tokens_;
  Index begin_, end_;
  int vocab_size_;
  std::string name_;
};

}  // namespace drt::data
