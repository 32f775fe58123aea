// drt/data/tokenizer.hpp — the byte-level tokenizer: one token per byte, plus optional named
// special tokens.
//
// Ids 0..255 are the byte values, so any byte string (valid UTF-8 or not) round-trips exactly.
// Special tokens get ids 256, 257, ... in the order given; decode writes their names.
// vocab_size() = 256 + number of special tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"

namespace drt::data {

namespace detail {

// One piece of text between special-token markers: either plain text, or the id of the marker.
struct TextPiece {
  std::string_view text;
  int32_t special_id = -1;  // -1: plain text
};

// Splits `text` at every occurrence of one of `names` (names[i] has id first_id + i). Where two
// names start at the same place the longer one wins. An empty name never matches.
inline std::vector<TextPiece> split_on_special_names(std::string_view text, const std::vector<std::string>& names,
                                                     int32_t first_id) {
  std::vector<TextPiece> pieces;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t best_at = std::string_view::npos;
    std::size_t best_len = 0;
    int32_t best_id = -1;
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (names[i].empty()) continue;
      const std::size_t at = text.find(names[i], start);
      if (at == std::string_view::npos) continue;
      if (at < best_at || (at == best_at && names[i].size() > best_len)) {
        best_at = at;
        best_len = names[i].size();
        best_id = first_id + static_cast<int32_t>(i);
      }
    }
    if (best_at == std::string_view::npos) break;
    if (best_at > start) pieces.push_back({text.substr(start, best_at - start), -1});
    pieces.push_back({std::string_view{}, best_id});
    start = best_at + best_len;
  }
  if (start < text.size()) pieces.push_back({text.substr(start), -1});
  return pieces;
}

}  // namespace detail

class ByteTokenizer {
 public:
  static constexpr int32_t kNumBytes = 256;

  ByteTokenizer() = default;
  explicit ByteTokenizer(std::vector<std::string> special_names) : special_names_(std::move(special_names)) {
    for (std::size_t i = 0; i < special_names_.size(); ++i) {
      DRT_CHECK(!special_names_[i].empty(), "ByteTokenizer: special token ", i, " has an empty name");
      for (std::size_t j = 0; j < i; ++j)
        DRT_CHECK(special_names_[j] != special_names_[i], "ByteTokenizer: special token name \"",
                  special_names_[i], "\" appears twice");
    }
  }

  int vocab_size() const { return kNumBytes + static_cast<int>(special_names_.size()); }
  int num_special() const { return static_cast<int>(special_names_.size()); }

  // The id of the special token called `name`; throws when there is none.
  int32_t special_id(std::string_view name) const {
    for (std::size_t i = 0; i < special_names_.size(); ++i)
      if (special_names_[i] == name) return kNumBytes + static_cast<int32_t>(i);
    DRT_CHECK(false, "ByteTokenizer: no special token named \"", name, "\"");
    return -1;
  }

  // Every byte becomes its own id. With allow_special, the names of special tokens in the text
  // become their ids; without it they are ordinary bytes.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    if (!allow_special || special_names_.empty()) {
      append_bytes(text, ids);
      return ids;
    }
    for (const auto& piece : detail::split_on_special_names(text, special_names_, kNumBytes)) {
      if (piece.special_id >= 0) ids.push_back(piece.special_id);
      else append_bytes(piece.text, ids);
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const {
    std::string text;
    text.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const int32_t id = ids[i];
      DRT_CHECK(id >= 0 && id < vocab_size(), "ByteTokenizer::decode: id ", id, " at position ", i,
                " is outside the vocabulary [0, ", vocab_size(), ")");
      if (id < kNumBytes) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
      else text += special_names_[static_cast<std::size_t>(id - kNumBytes)];
    }
    return text;
  }

 private:
  static void append_bytes(std::string_view text, std::vector<int32_t>& ids) {
    for (const char c : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
  }

  std::vector<std::string> special_names_;
};

}  // namespace drt::data
