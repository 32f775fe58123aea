// drt/data/passkey.hpp — the single-passkey retrieval task (reference spec §11.2), for training
// and evaluation, over a haystack of real text and for any tokenizer.
//
// Shapes: one trial is a window of Lw tokens, tokens (1, Lw) and labels (1, Lw). C_d is the
// task's chunk token count and must equal the model's L_c; Lw is a multiple of C_d. n = passkey
// tokens (5 in evaluation; the reference trains with 10).
//
// Layout of a trial (positions 0 .. Lw − 1):
//   text ... needle ... text ... question P tail
//   needle   = "|The passkey is:" P "|", at a position drawn uniformly from
//              [0, min(Lw − 2·C_d, question start) − |needle|)
//   question = "|What is the passkey? The passkey is" P, placed so that P starts at the key
//              position key = Lw − C_d + 1; its last word then opens the final chunk
//   tail     = the last C_d − 1 − n positions, −100 in tokens and labels (models embed ids < 0
//              as their pad id)
// P = n ids drawn uniformly from [id_low, id_high): the reference draws GPT-2 ids in [0, 50256);
// for a byte-level model the digits '0'..'9' are the natural choice.
//
// Labels are −100 except on P (labels[key + i] = P[i]), so a model trained on them learns only
// the retrieval; with label_text the text, needle and question are labelled too (the reference's
// fine-tuning loss over the whole window).
//
// Scoring, from logits (Lw, V) or (1, Lw, V) whose row t predicts token t + 1:
//   first-token hit (the reference): argmax(logits[key − 1]) == P[0], the logits coming from
//     passkey_model_input(trial), which zeroes the input token at key as a leakage guard;
//   exact match (the follow-up RULER eval): argmax(logits[key − 1 + i]) == P[i] for every i, the
//     logits coming from the whole teacher-forced trial.tokens. For a causal model row key − 1
//     is the same for both inputs, so one forward pass over trial.tokens gives both scores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"
#include "drt/data/batch.hpp"
#include "drt/data/corpus.hpp"
#include "drt/data/tokenizer.hpp"
#include "drt/model/landmarks.hpp"

namespace drt::data {

// The task's fixed text, tokenized, and where passkey ids come from.
struct PasskeyFormat {
  std::vector<std::int32_t> needle_prefix;    // "|The passkey is:"
  std::vector<std::int32_t> needle_suffix;    // "|"
  std::vector<std::int32_t> question_prefix;  // "|What is the passkey? The passkey is"
  std::int32_t id_low = 0, id_high = 0;       // passkey ids are drawn from [id_low, id_high)
};

inline constexpr const char* kPasskeyNeedlePrefix = "|The passkey is:";
inline constexpr const char* kPasskeyNeedleSuffix = "|";
inline constexpr const char* kPasskeyQuestion = "|What is the passkey? The passkey is";

// The reference's text through any tokenizer with encode(text).
template <class Tokenizer>
PasskeyFormat passkey_format(const Tokenizer& tokenizer, std::int32_t id_low, std::int32_t id_high) {
  DRT_CHECK(0 <= id_low && id_low < id_high, "passkey_format: passkey id range [", id_low, ", ", id_high, ") is empty");
  return {tokenizer.encode(kPasskeyNeedlePrefix), tokenizer.encode(kPasskeyNeedleSuffix),
          tokenizer.encode(kPasskeyQuestion), id_low, id_high};
}

// Byte-level text with decimal digits as the passkey.
inline PasskeyFormat byte_passkey_format() { return passkey_format(ByteTokenizer(), '0', '9' + 1); }

struct PasskeyOptions {
  Index chunk_tokens = 64;  // C_d; must equal the model's L_c
  int passkey_tokens = 5;   // n
  bool label_text = false;  // also label every token before the tail, not only P
  // Training only (PasskeySource): this fraction of the rows are recall trials instead (see
  // make_recall_trial), which teach the same retrieve-then-copy skill with 12× more labels.
  double recall_fraction = 0;
};

struct PasskeyTrial {
  IndexTensor tokens;  // (1, Lw)
  IndexTensor labels;  // (1, Lw)
  Index key_position = 0;      // Lw − C_d + 1: where P starts in the question
  std::int32_t answer = 0;     // the token at key_position, P[0]
  std::vector<std::int32_t> passkey;  // P
  Index needle_position = 0;   // where the needle's "|" starts
  Index haystack_start = 0;    // where the text was cut from the haystack
};

// Trial number `trial` of the task seeded `seed`, a window of `length` = Lw tokens: a pure
// function of its arguments.
inline PasskeyTrial make_passkey_trial(const HaystackText& haystack, const PasskeyFormat& format,
                                       const PasskeyOptions& options, Index length, std::uint64_t seed,
                                       std::uint64_t trial) {
  const Index C = options.chunk_tokens;
  const Index n = options.passkey_tokens;
  DRT_CHECK(C > 0 && length > 0 && length % C == 0, "passkey: length ", length,
            " is not a positive multiple of the chunk's ", C, " tokens");
  DRT_CHECK(n >= 1 && n <= C - 1, "passkey: ", n, " passkey tokens do not fit the final chunk of ", C,
            " tokens (at most ", C - 1, ")");
  DRT_CHECK(format.id_low >= 0 && format.id_low < format.id_high && format.id_high <= haystack.vocab_size(),
            "passkey: passkey ids [", format.id_low, ", ", format.id_high, ") do not lie in the vocabulary [0, ",
            haystack.vocab_size(), ") of ", haystack.name());
  const Index key = length - C + 1;
  const Index question_start = key - static_cast<Index>(format.question_prefix.size());
  const Index needle_len = static_cast<Index>(format.needle_prefix.size() + format.needle_suffix.size()) + n;
  // The reference keeps the needle out of the last two chunks; a long question in a short chunk
  // (byte-level text) also bounds it.
  const Index needle_end_limit = std::min(length - 2 * C, question_start);
  DRT_CHECK(needle_end_limit - needle_len > 0, "passkey: length ", length, " is too short for a needle of ", needle_len,
            " tokens before the question (", format.question_prefix.size(), " tokens) with chunks of ", C,
            " tokens; use a longer context");

  const std::uint64_t trial_seed = random_bits(seed, trial);
  PasskeyTrial out;
  out.passkey.resize(static_cast<std::size_t>(n));
  const auto id_span = static_cast<std::uint64_t>(format.id_high - format.id_low);
  for (Index i = 0; i < n; ++i)
    out.passkey[i] = format.id_low + static_cast<std::int32_t>(random_bits(trial_seed, i) % id_span);
  out.needle_position = static_cast<Index>(random_bits(trial_seed, n) % static_cast<std::uint64_t>(needle_end_limit - needle_len));
  const Index text_len = question_start - needle_len;
  out.haystack_start = haystack.random_start(trial_seed, n + 1, text_len);
  const auto text = haystack.window(out.haystack_start, text_len);

  out.tokens = IndexTensor::full({1, length}, kIgnoreIndex);
  std::int32_t* t = out.tokens.data();
  Index at = 0;
  auto put = [&](const std::int32_t* ids, Index count) {
    std::copy(ids, ids + count, t + at);
    at += count;
  };
  put(text.data(), out.needle_position);
  put(format.needle_prefix.data(), static_cast<Index>(format.needle_prefix.size()));
  put(out.passkey.data(), n);
  put(format.needle_suffix.data(), static_cast<Index>(format.needle_suffix.size()));
  put(text.data() + out.needle_position, text_len - out.needle_position);
  put(format.question_prefix.data(), static_cast<Index>(format.question_prefix.size()));
  put(out.passkey.data(), n);  // the rest stays −100: the tail

  out.labels = IndexTensor::full({1, length}, kIgnoreIndex);
  const Index labelled_from = options.label_text ? 0 : key;
  std::copy(t + labelled_from, t + key + n, out.labels.data() + labelled_from);
  out.key_position = key;
  out.answer = out.passkey[0];
  return out;
}

// A recall trial: the passkey task's shape with a denser signal. A window of `length` tokens of
// text whose last 1.5 chunks repeat a span of the same length from earlier in the window:
//
//   text ... span ... text ... span
//                              ^ starts C/2 tokens before the final chunk
//
// The span's first half lies in the second-to-last chunk, so that chunk's landmark has seen it
// and can retrieve the chunk holding the source (as the question's landmark retrieves the
// needle); the rest of the span, in the final chunk, is labelled (tokens from the final chunk's
// second position on, like P), and predicting it means copying from the retrieved chunk. The
// source ends at least two chunks before the end, out of any window the task is meant for.
// A pure function of (seed, trial); tokens and labels (1, length).
inline Batch make_recall_trial(const HaystackText& haystack, const PasskeyOptions& options, Index length, std::uint64_t seed,
                               std::uint64_t trial) {
  const Index C = options.chunk_tokens, span = C + C / 2, copy_start = length - span;
  const Index source_limit = length - 2 * C - span;  // the source starts in [0, source_limit]
  DRT_CHECK(C > 1 && length % C == 0 && source_limit >= 0, "recall trial: length ", length, " must be a multiple of the chunk's ",
            C, " tokens and at least ", 2 * C + span, " tokens (a span of ", span, " and its copy two chunks apart)");
  const std::uint64_t trial_seed = random_bits(seed, trial);
  const auto text = haystack.window(haystack.random_start(trial_seed, 0, copy_start), copy_start);
  const Index source = static_cast<Index>(random_bits(trial_seed, 1) % static_cast<std::uint64_t>(source_limit + 1));
  Batch out{IndexTensor::empty({1, length}), IndexTensor::full({1, length}, kIgnoreIndex)};
  std::int32_t* t = out.tokens.data();
  std::copy(text.begin(), text.end(), t);
  std::copy(t + source, t + source + span, t + copy_start);
  const Index labelled_from = options.label_text ? 0 : length - C + 1;
  std::copy(t + labelled_from, t + length, out.labels.data() + labelled_from);
  return out;
}

// `count` evaluation trials (numbers 0 .. count − 1) of the task seeded `seed`.
inline std::vector<PasskeyTrial> make_passkey_trials(const HaystackText& haystack, const PasskeyFormat& format,
                                                     const PasskeyOptions& options, Index length, Index count,
                                                     std::uint64_t seed) {
  std::vector<PasskeyTrial> trials;
  trials.reserve(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i)
    trials.push_back(make_passkey_trial(haystack, format, options, length, seed, static_cast<std::uint64_t>(i)));
  return trials;
}

// The reference's input: trial.tokens with the token at the key position set to 0.
inline IndexTensor passkey_model_input(const PasskeyTrial& trial) {
  IndexTensor input = trial.tokens.clone();
  input(0, trial.key_position) = 0;
  return input;
}

namespace detail {

// argmax over the vocabulary of row t of logits (T, V) or (1, T, V); ties go to the lower id.
template <class T>
std::int32_t logits_row_argmax(const Tensor<T>& logits, Index t) {
  DRT_CHECK(logits.rank() == 2 || (logits.rank() == 3 && logits.size(0) == 1),
            "passkey scoring: logits must be (T, V) or (1, T, V), got ", logits.shape().str());
  const Tensor<T> rows = logits.rank() == 3 ? logits.select(0, 0) : logits;
  DRT_CHECK(t >= 0 && t < rows.size(0), "passkey scoring: row ", t, " lies outside logits of shape ",
            logits.shape().str());
  const Index V = rows.size(1);
  const T* row = rows.data() + t * rows.stride(0);
  const Index step = rows.stride(1);
  Index best = 0;
  for (Index v = 1; v < V; ++v)
    if (row[v * step] > row[best * step]) best = v;
  return static_cast<std::int32_t>(best);
}

inline void check_trial_logits(const PasskeyTrial& trial, Index rows, const char* op) {
  DRT_CHECK(rows == trial.tokens.size(1), op, ": logits have ", rows, " rows but the trial has ", trial.tokens.size(1),
            " tokens (rows must align with the input tokens)");
}

}  // namespace detail

// The reference's score: is P[0] the argmax at the row before the key position?
template <class T>
bool passkey_first_token_hit(const Tensor<T>& logits, const PasskeyTrial& trial) {
  detail::check_trial_logits(trial, logits.size(logits.rank() - 2), "passkey_first_token_hit");
  return detail::logits_row_argmax(logits, trial.key_position - 1) == trial.answer;
}

// The number of passkey tokens the model predicts right, teacher-forced.
template <class T>
Index passkey_tokens_correct(const Tensor<T>& logits, const PasskeyTrial& trial) {
  detail::check_trial_logits(trial, logits.size(logits.rank() - 2), "passkey_tokens_correct");
  Index correct = 0;
  for (std::size_t i = 0; i < trial.passkey.size(); ++i)
    correct += detail::logits_row_argmax(logits, trial.key_position - 1 + static_cast<Index>(i)) == trial.passkey[i];
  return correct;
}

template <class T>
bool passkey_exact_match(const Tensor<T>& logits, const PasskeyTrial& trial) {
  return passkey_tokens_correct(logits, trial) == static_cast<Index>(trial.passkey.size());
}

// Accumulates scores over trials.
struct PasskeyScore {
  Index trials = 0, first_token_hits = 0, exact_matches = 0, tokens_correct = 0, tokens = 0;

  // `logits` from trial.tokens (a causal model); see the header comment.
  template <class T>
  void add(const Tensor<T>& logits, const PasskeyTrial& trial) {
    const Index correct = passkey_tokens_correct(logits, trial);
    trials += 1;
    first_token_hits += passkey_first_token_hit(logits, trial);
    exact_matches += correct == static_cast<Index>(trial.passkey.size());
    tokens_correct += correct;
    tokens += static_cast<Index>(trial.passkey.size());
  }
  double first_token_accuracy() const { return trials ? double(first_token_hits) / double(trials) : 0.0; }
  double exact_match_accuracy() const { return trials ? double(exact_matches) / double(trials) : 0.0; }
  double token_accuracy() const { return tokens ? double(tokens_correct) / double(tokens) : 0.0; }
};

// Passkey trials as training batches: row b of step s is trial s·B + b at length T.
class PasskeySource : public BatchSource {
 public:
  PasskeySource(HaystackText haystack, PasskeyFormat format, PasskeyOptions options, std::uint64_t seed)
      : haystack_(std::move(haystack)), format_(std::move(format)), options_(options), seed_(seed) {}

  Batch batch(std::int64_t step, Index batch_size, Index seq_len) const override {
    DRT_CHECK(batch_size > 0, "PasskeySource: batch size ", batch_size, " must be positive");
    Batch out{IndexTensor::empty({batch_size, seq_len}), IndexTensor::empty({batch_size, seq_len})};
    for (Index b = 0; b < batch_size; ++b) {
      const auto trial_number = static_cast<std::uint64_t>(step) * static_cast<std::uint64_t>(batch_size) +
                                static_cast<std::uint64_t>(b);
      // Whether the row is a recall trial: a draw of its own stream, uniform in [0, 1).
      const double u = static_cast<double>(random_bits(seed_ ^ kRecallStream, trial_number) >> 11) * 0x1.0p-53;
      Batch row;
      if (u < options_.recall_fraction) {
        row = make_recall_trial(haystack_, options_, seq_len, seed_ ^ kRecallStream, trial_number);
      } else {
        PasskeyTrial trial = make_passkey_trial(haystack_, format_, options_, seq_len, seed_, trial_number);
        row = Batch{std::move(trial.tokens), std::move(trial.labels)};
      }
      set_batch_row(out, b, row.tokens, row.labels);
    }
    return out;
  }

  int vocab_size() const override { return haystack_.vocab_size(); }
  std::string describe() const override {
    return "passkey over " + haystack_.name() + " (" + std::to_string(options_.passkey_tokens) + " passkey ids in [" +
           std::to_string(format_.id_low) + ", " + std::to_string(format_.id_high) + "), chunk " +
           std::to_string(options_.chunk_tokens) + (options_.label_text ? ", all text labelled" : ", passkey labelled") +
           (options_.recall_fraction > 0 ? ", " + std::to_string(static_cast<int>(options_.recall_fraction * 100 + 0.5)) +
                                               "% recall trials"
                                         : std::string()) +
           ", seed " + std::to_string(seed_) + ")";
  }

 private:
  static constexpr std::uint64_t kRecallStream = 0x726563616c6cull;  // "recall"
  HaystackText haystack_;
  PasskeyFormat format_;
  PasskeyOptions options_;
  std::uint64_t seed_;
};

}  // namespace drt::data
