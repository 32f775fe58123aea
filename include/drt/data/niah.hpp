// drt/data/niah.hpp — needle-in-a-haystack trials with several needles: the reference's
// multi-key and two-hop tasks (spec §11.2), for byte-level models (variables are digit strings).
//
// Shapes: one trial is tokens (1, Lw); C_d = the model's L_c; Lw a multiple of C_d.
//
// Layout, as the single passkey's (passkey.hpp): haystack text with the needles inserted at
// sorted random places before the question, which is placed so that the answer starts at
// a = Lw − C_d + 1 (the question's last token opens the final chunk, whose retrieval the
// question's landmark makes); the tail after the answer is −100.
//
//   multi    6 needles "|One of the special magic numbers for X_i is Y_i|", shuffled;
//            question "|The value of X_0 is" + Y_0; scored: the last token of Y_0
//   two-hop  chains A→B→C and D→E→F as 4 needles "|DEF U->V|", shuffled;
//            question "|The path from A is" + B "," C; scored: the last token of C
//
// Variables are n-digit strings (5, as the reference's evaluation), all distinct in a trial.
// Scoring (spec §11.2, §14 A17): the reference looks at one token, the scored position, with
// every earlier answer token given; exact match asks for every answer token (RULER style).
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"
#include "drt/data/corpus.hpp"
#include "drt/data/tokenizer.hpp"
#include "drt/model/landmarks.hpp"

namespace drt::data {

struct NeedleTrial {
  IndexTensor tokens;                // (1, Lw)
  Index answer_start = 0;            // Lw − C_d + 1
  std::vector<std::int32_t> answer;  // the tokens from answer_start on
  Index scored_position = 0;         // the one token the reference scores
};

namespace detail {

inline std::vector<std::int32_t> bytes_of(const std::string& text) { return ByteTokenizer().encode(text); }

// `count` distinct n-digit strings.
inline std::vector<std::string> distinct_digit_strings(int count, int digits, std::uint64_t seed) {
  std::set<std::string> seen;
  std::vector<std::string> out;
  for (std::uint64_t draw = 0; static_cast<int>(out.size()) < count; ++draw) {
    std::string s;
    for (int i = 0; i < digits; ++i) s += static_cast<char>('0' + random_bits(seed, draw * 64 + i) % 10);
    if (seen.insert(s).second) out.push_back(s);
  }
  return out;
}

// Haystack text of a Lw-token window with `needles` at sorted random places before the question
// and the answer starting at Lw − C_d + 1.
inline NeedleTrial place_needles(const HaystackText& haystack, std::vector<std::vector<std::int32_t>> needles,
                                 const std::vector<std::int32_t>& question, const std::vector<std::int32_t>& answer,
                                 Index chunk_tokens, Index length, std::uint64_t seed) {
  const Index C = chunk_tokens, a = length - C + 1, question_start = a - static_cast<Index>(question.size());
  Index needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += static_cast<Index>(n.size());
  // As for the single passkey: needles stay out of the last two chunks and before the question.
  const Index needle_end_limit = std::min(length - 2 * C, question_start);
  DRT_CHECK(C > 0 && length % C == 0, "niah: length ", length, " is not a multiple of the chunk's ", C, " tokens");
  DRT_CHECK(static_cast<Index>(answer.size()) <= C - 1, "niah: an answer of ", answer.size(), " tokens does not fit the final chunk of ", C);
  DRT_CHECK(needle_end_limit - needle_tokens > 0, "niah: length ", length, " is too short for ", needle_tokens,
            " needle tokens and a question of ", question.size(), " tokens");
  const Index text_len = question_start - needle_tokens, room = needle_end_limit - needle_tokens;
  std::vector<Index> at(needles.size());
  for (std::size_t i = 0; i < needles.size(); ++i) at[i] = static_cast<Index>(random_bits(seed, 1000 + i) % static_cast<std::uint64_t>(room));
  std::sort(at.begin(), at.end());
  const auto text = haystack.window(haystack.random_start(seed, 2000, text_len), text_len);

  NeedleTrial trial;
  trial.tokens = IndexTensor::full({1, length}, kIgnoreIndex);
  std::int32_t* t = trial.tokens.data();
  Index out = 0, from = 0;
  for (std::size_t i = 0; i < needles.size(); ++i) {
    out = std::copy(text.data() + from, text.data() + at[i], t + out) - t;
    from = at[i];
    out = std::copy(needles[i].begin(), needles[i].end(), t + out) - t;
  }
  out = std::copy(text.data() + from, text.data() + text_len, t + out) - t;
  out = std::copy(question.begin(), question.end(), t + out) - t;
  std::copy(answer.begin(), answer.end(), t + out);
  trial.answer_start = a;
  trial.answer = answer;
  return trial;
}

template <class V>
void shuffle(std::vector<V>& items, std::uint64_t seed) {
  for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[random_bits(seed, 3000 + i) % i]);
}

}  // namespace detail

// `text` if it holds at least `min_tokens` tokens, else `text` repeated end to end until it does
// (long-context tests outgrow the held-out text of a small corpus; the reference draws its 16M
// haystacks from a larger corpus, spec §14 A18).
inline HaystackText repeated_haystack(const HaystackText& text, Index min_tokens) {
  if (text.size() >= min_tokens) return text;
  DRT_CHECK(text.size() > 0, "niah: haystack ", text.name(), " is empty");
  const auto one = text.window(0, text.size());
  std::vector<std::int32_t> tokens;
  tokens.reserve(static_cast<std::size_t>(min_tokens));
  while (static_cast<Index>(tokens.size()) < min_tokens) tokens.insert(tokens.end(), one.begin(), one.end());
  const Index copies = static_cast<Index>(tokens.size()) / text.size();
  return HaystackText(std::move(tokens), text.vocab_size(), text.name() + " x" + std::to_string(copies));
}

// The multi-key task's trial number `trial` (6 needles, one asked about).
inline NeedleTrial make_multikey_trial(const HaystackText& haystack, Index chunk_tokens, Index length, std::uint64_t seed,
                                       std::uint64_t trial, int digits = 5, int needles = 6) {
  const std::uint64_t s = random_bits(seed, trial);
  const auto vars = detail::distinct_digit_strings(2 * needles, digits, s);
  std::vector<std::vector<std::int32_t>> placed;
  for (int i = 0; i < needles; ++i)
    placed.push_back(detail::bytes_of("|One of the special magic numbers for " + vars[2 * i] + " is " + vars[2 * i + 1] + "|"));
  detail::shuffle(placed, s);
  NeedleTrial t = detail::place_needles(haystack, placed, detail::bytes_of("|The value of " + vars[0] + " is"),
                                        detail::bytes_of(vars[1]), chunk_tokens, length, s);
  t.scored_position = t.answer_start + digits - 1;
  return t;
}

// The two-hop task's trial number `trial`: chains A→B→C and D→E→F, asked the path from A.
inline NeedleTrial make_two_hop_trial(const HaystackText& haystack, Index chunk_tokens, Index length, std::uint64_t seed,
                                      std::uint64_t trial, int digits = 5) {
  const std::uint64_t s = random_bits(seed, trial);
  const auto v = detail::distinct_digit_strings(6, digits, s);  // A B C D E F
  std::vector<std::vector<std::int32_t>> placed;
  for (const auto& [from, to] : {std::pair{0, 1}, {1, 2}, {3, 4}, {4, 5}})
    placed.push_back(detail::bytes_of("|DEF " + v[from] + "->" + v[to] + "|"));
  detail::shuffle(placed, s);
  NeedleTrial t = detail::place_needles(haystack, placed, detail::bytes_of("|The path from " + v[0] + " is"),
                                        detail::bytes_of(v[1] + "," + v[2]), chunk_tokens, length, s);
  t.scored_position = t.answer_start + static_cast<Index>(t.answer.size()) - 1;
  return t;
}

}  // namespace drt::data
