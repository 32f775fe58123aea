// The evaluation helpers (drt/eval/): window perplexity and the passkey sweep, driven by stand-in
// models whose right answers are known, and by a real (untrained) model for shape agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "drt/eval/passkey_sweep.hpp"
#include "drt/eval/perplexity.hpp"
#include "drt/model.hpp"

namespace drt {
namespace {

TEST(WindowPerplexity, CutsNonOverlappingWindowsAndAveragesTheirLosses) {
  // Stream 0, 1, 2, ... of 23 tokens in windows of 5: 4 windows, 3 tokens unscored. The stand-in
  // loss of a window is its first token / 10, so the mean is (0 + 5 + 10 + 15) / 4 / 10.
  std::vector<std::int32_t> stream(23);
  std::iota(stream.begin(), stream.end(), 0);
  std::vector<Index> firsts;
  auto loss_of = [&](const IndexTensor& w) {
    EXPECT_EQ(w.shape(), Shape({1, 5}));
    for (Index t = 1; t < 5; ++t) EXPECT_EQ(w(0, t), w(0, 0) + t);  // contiguous, in order
    firsts.push_back(w(0, 0));
    return w(0, 0) / 10.0;
  };
  auto read = [&](Index begin, std::span<std::int32_t> into) {
    std::copy(stream.begin() + begin, stream.begin() + begin + static_cast<Index>(into.size()), into.begin());
  };
  const WindowPerplexity r = window_perplexity(loss_of, 23, 5, read);
  EXPECT_EQ(r.windows, 4);
  EXPECT_EQ(r.scored_tokens, 20);
  EXPECT_EQ(r.unscored_tail, 3);
  EXPECT_EQ(firsts, (std::vector<Index>{0, 5, 10, 15}));
  EXPECT_DOUBLE_EQ(r.mean_window_loss, 0.75);
  EXPECT_DOUBLE_EQ(r.perplexity, std::exp(0.75));

  const WindowPerplexity capped = window_perplexity(loss_of, 23, 5, read, 2);
  EXPECT_EQ(capped.windows, 2);
  EXPECT_DOUBLE_EQ(capped.mean_window_loss, 0.25);
}

TEST(WindowPerplexity, RejectsAStreamShorterThanAWindow) {
  auto never = [](const IndexTensor&) { return 0.0; };
  auto read = [](Index, std::span<std::int32_t>) {};
  EXPECT_THROW(window_perplexity(never, 4, 5, read), Error);
  EXPECT_THROW(window_perplexity(never, 10, 1, read), Error);
}

// A haystack of byte-level text without digits, so that the only digits in a trial are the passkey's.
data::HaystackText letters_haystack() {
  std::string text;
  for (int i = 0; i < 40000; ++i) text += static_cast<char>('a' + (i * 7) % 26);
  return data::HaystackText::tokenize(text, data::ByteTokenizer(), "letters");
}

// An "oracle" that reads the needle from the tokens: logits (1, T, V) with a 1 at each row's
// next token when that token is a digit of the needle, so it predicts the passkey perfectly.
Tensor<float> oracle_logits(const IndexTensor& tokens) {
  const Index T = tokens.size(1), V = 256;
  Tensor<float> logits = Tensor<float>::zeros({1, T, V});
  // The needle's digits are the first run of digits; the question repeats them.
  std::vector<std::int32_t> digits;
  for (Index t = 0; t < T; ++t) {
    const std::int32_t v = tokens(0, t);
    if (v >= '0' && v <= '9') digits.push_back(v);
    else if (!digits.empty()) break;
  }
  // Rows before the question's copy of P: find the last occurrence of the first digit run.
  for (Index t = T - 1; t >= 0; --t)
    if (tokens(0, t) == digits.front() && t + static_cast<Index>(digits.size()) <= T) {
      bool match = true;
      for (std::size_t i = 0; i < digits.size(); ++i) match &= tokens(0, t + static_cast<Index>(i)) == digits[i];
      if (match) {
        for (std::size_t i = 0; i < digits.size(); ++i) logits(0, t - 1 + static_cast<Index>(i), digits[i]) = 1.0f;
        break;
      }
    }
  return logits;
}

TEST(PasskeySweep, AnOracleScoresOneAndAConstantModelScoresItsDigitsShare) {
  const data::HaystackText haystack = letters_haystack();
  const data::PasskeyFormat format = data::byte_passkey_format();
  const data::PasskeyOptions task{.chunk_tokens = 63, .passkey_tokens = 5};
  const PasskeySweepOptions options{.lengths = {252, 504}, .trials = 40, .seed = 3};

  std::vector<Index> seen_lengths;
  const auto oracle = passkey_sweep(oracle_logits, haystack, format, task, options,
                                    [&](const PasskeyLengthScore& r) { seen_lengths.push_back(r.length); });
  ASSERT_EQ(oracle.size(), 2u);
  EXPECT_EQ(seen_lengths, (std::vector<Index>{252, 504}));
  for (const auto& r : oracle) {
    EXPECT_EQ(r.score.trials, 40);
    EXPECT_DOUBLE_EQ(r.score.first_token_accuracy(), 1.0);
    EXPECT_DOUBLE_EQ(r.score.exact_match_accuracy(), 1.0);
  }

  // Always '7': right exactly on the trials whose first passkey digit is 7.
  auto always_seven = [](const IndexTensor& tokens) {
    Tensor<float> logits = Tensor<float>::zeros({1, tokens.size(1), 256});
    for (Index t = 0; t < tokens.size(1); ++t) logits(0, t, '7') = 1.0f;
    return logits;
  };
  const auto constant = passkey_sweep(always_seven, haystack, format, task, options);
  for (std::size_t i = 0; i < constant.size(); ++i) {
    Index sevens = 0;
    for (Index trial = 0; trial < 40; ++trial)
      sevens += data::make_passkey_trial(haystack, format, task, options.lengths[i], 3, static_cast<std::uint64_t>(trial))
                    .passkey[0] == '7';
    EXPECT_EQ(constant[i].score.first_token_hits, sevens);
  }
}

TEST(PasskeySweep, RunsARealModelInEvalMode) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 64;
  c.vocab_size = 258;
  c.pad_id = 256;
  c.chunk_id = 257;
  c.enc_chunk_size = 63;
  c.chunk_topk = 2;
  c.slide_window = 64;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1};
  const DrtModel<float> model(c, 5);
  const std::size_t tape_before = tape().size();
  const auto rows = passkey_sweep(
      [&](const IndexTensor& t) { return drop_landmark_rows(model.logits(t).value(), c.enc_chunk_size); },
      letters_haystack(), data::byte_passkey_format(), {.chunk_tokens = 63, .passkey_tokens = 5},
      {.lengths = {252}, .trials = 3, .seed = 1});
  EXPECT_EQ(rows[0].score.trials, 3);
  EXPECT_EQ(tape().size(), tape_before);  // nothing recorded: inference only
}

}  // namespace
}  // namespace drt
