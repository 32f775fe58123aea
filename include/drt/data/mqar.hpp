// drt/data/mqar.hpp — multi-query associative recall (MQAR; "Zoology", Arora et al., ICLR 2024).
//
// Shapes: one sequence is tokens (1, T) and labels (1, T); batches are (B, T).
//
// Layout of a sequence of T tokens with P pairs and Q queries:
//   k_0 v_0 k_1 v_1 ... k_{P−1} v_{P−1}   the pairs, at positions 0 .. 2P − 1
//   filler with Q queries "k_j v_j"       positions 2P .. T − 1
// Keys are distinct ids from the key range; values are drawn (with repeats) from the value
// range; each query repeats a different key of the pairs, followed by its value. Query slots are
// spread uniformly over the filler (two tokens each, never overlapping), or packed at the very
// end with queries_at_end (the longest recall distances). The filler is noise ids from the noise
// range, or real text from a haystack, which stays contiguous around the queries.
// Labels are −100 except at the value after each query, so that the model is scored on
// predicting v_j from the row of the query key k_j (models shift: row t predicts labels[t + 1]).
//
// The key, value and noise ranges must not overlap: a noise token that looks like a key would
// be an unlabelled query. Haystack text cannot be checked that way; with byte-level text, place
// keys and values above the byte ids (vocab > 256).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"
#include "drt/data/batch.hpp"
#include "drt/data/corpus.hpp"
#include "drt/model/landmarks.hpp"

namespace drt::data {

struct MqarOptions {
  int num_pairs = 8;
  int num_queries = 8;                         // ≤ num_pairs
  std::int32_t key_low = 1, key_high = 33;     // keys in [key_low, key_high)
  std::int32_t value_low = 33, value_high = 65;
  std::int32_t noise_low = 0, noise_high = 1;  // filler ids in [noise_low, noise_high)
  bool queries_at_end = false;
};

// Zoology's split of a vocabulary of V ids: 0 is the filler, then keys take the lower half of
// the rest and values the upper half.
inline MqarOptions mqar_split_vocab(int vocab_size, int num_pairs, int num_queries) {
  DRT_CHECK(vocab_size >= 3, "mqar_split_vocab: vocabulary of ", vocab_size, " ids is too small (needs 3)");
  MqarOptions o;
  o.num_pairs = num_pairs;
  o.num_queries = num_queries;
  o.noise_low = 0, o.noise_high = 1;
  o.key_low = 1, o.key_high = 1 + (vocab_size - 1) / 2;
  o.value_low = o.key_high, o.value_high = vocab_size;
  return o;
}

struct MqarSequence {
  IndexTensor tokens;  // (1, T)
  IndexTensor labels;  // (1, T)
  std::vector<Index> query_positions;  // where each query key k_j sits; its value is at +1
};

namespace detail {

inline bool ranges_overlap(std::int32_t a_low, std::int32_t a_high, std::int32_t b_low, std::int32_t b_high) {
  return a_low < b_high && b_low < a_high;
}

inline void check_mqar_options(const MqarOptions& o, Index length, int vocab_size, bool noise_filler) {
  DRT_CHECK(o.num_pairs >= 1 && o.num_queries >= 1 && o.num_queries <= o.num_pairs, "MQAR: ", o.num_queries,
            " queries of ", o.num_pairs, " pairs (needs 1 ≤ queries ≤ pairs)");
  DRT_CHECK(o.key_low >= 0 && o.key_high - o.key_low >= o.num_pairs && o.key_high <= vocab_size, "MQAR: key range [",
            o.key_low, ", ", o.key_high, ") must hold ", o.num_pairs, " distinct keys inside the vocabulary of ",
            vocab_size);
  DRT_CHECK(o.value_low >= 0 && o.value_low < o.value_high && o.value_high <= vocab_size, "MQAR: value range [",
            o.value_low, ", ", o.value_high, ") must be non-empty and inside the vocabulary of ", vocab_size);
  DRT_CHECK(!ranges_overlap(o.key_low, o.key_high, o.value_low, o.value_high), "MQAR: key range [", o.key_low, ", ",
            o.key_high, ") overlaps value range [", o.value_low, ", ", o.value_high, ")");
  if (noise_filler) {
    DRT_CHECK(o.noise_low >= 0 && o.noise_low < o.noise_high && o.noise_high <= vocab_size, "MQAR: noise range [",
              o.noise_low, ", ", o.noise_high, ") must be non-empty and inside the vocabulary of ", vocab_size);
    DRT_CHECK(!ranges_overlap(o.noise_low, o.noise_high, o.key_low, o.key_high) &&
                  !ranges_overlap(o.noise_low, o.noise_high, o.value_low, o.value_high),
              "MQAR: noise range [", o.noise_low, ", ", o.noise_high, ") overlaps the key or value range");
  }
  DRT_CHECK(2 * Index(o.num_pairs) + 2 * Index(o.num_queries) <= length, "MQAR: length ", length, " cannot hold ",
            o.num_pairs, " pairs and ", o.num_queries, " queries (", 2 * o.num_pairs + 2 * o.num_queries, " tokens)");
}

// `count` distinct numbers from [0, range) in random order (Floyd's sampling, then a shuffle),
// drawing from random_bits(seed, counter), random_bits(seed, counter + 1), ...
inline std::vector<Index> distinct_sample(Index count, Index range, std::uint64_t seed, std::uint64_t& counter) {
  std::vector<Index> picked;
  picked.reserve(static_cast<std::size_t>(count));
  std::unordered_set<Index> seen;
  for (Index j = range - count; j < range; ++j) {
    const Index t = static_cast<Index>(random_bits(seed, counter++) % static_cast<std::uint64_t>(j + 1));
    const Index pick = seen.count(t) ? j : t;
    seen.insert(pick);
    picked.push_back(pick);
  }
  for (Index i = count - 1; i > 0; --i)
    std::swap(picked[static_cast<std::size_t>(i)],
              picked[random_bits(seed, counter++) % static_cast<std::uint64_t>(i + 1)]);
  return picked;
}

}  // namespace detail

// Sequence number `index` of the task seeded `seed`: a pure function of its arguments. With a
// haystack the filler is text from it; otherwise noise ids.
inline MqarSequence make_mqar_sequence(const MqarOptions& o, Index length, int vocab_size, std::uint64_t seed,
                                       std::uint64_t index, const HaystackText* haystack = nullptr) {
  detail::check_mqar_options(o, length, vocab_size, haystack == nullptr);
  if (haystack)
    DRT_CHECK(haystack->vocab_size() <= vocab_size, "MQAR: haystack ", haystack->name(), " has vocabulary ",
              haystack->vocab_size(), ", larger than the task's ", vocab_size);
  const std::uint64_t s = random_bits(seed, index);
  std::uint64_t counter = 0;
  const Index P = o.num_pairs, Q = o.num_queries;

  std::vector<Index> keys = detail::distinct_sample(P, o.key_high - o.key_low, s, counter);
  std::vector<std::int32_t> values(static_cast<std::size_t>(P));
  for (auto& v : values)
    v = o.value_low + static_cast<std::int32_t>(random_bits(s, counter++) % static_cast<std::uint64_t>(o.value_high - o.value_low));

  MqarSequence out;
  out.tokens = IndexTensor::empty({1, length});
  out.labels = IndexTensor::full({1, length}, kIgnoreIndex);
  std::int32_t* t = out.tokens.data();
  std::int32_t* l = out.labels.data();
  for (Index i = 0; i < P; ++i) {
    t[2 * i] = o.key_low + static_cast<std::int32_t>(keys[static_cast<std::size_t>(i)]);
    t[2 * i + 1] = values[static_cast<std::size_t>(i)];
  }

  // The filler proper: what lies between the queries (text stays contiguous around them).
  const Index filler_begin = 2 * P, filler_len = length - 2 * P, plain_len = filler_len - 2 * Q;
  std::vector<std::int32_t> plain(static_cast<std::size_t>(plain_len));
  if (haystack) {
    const auto text = haystack->window(haystack->random_start(s, counter++, plain_len), plain_len);
    std::copy(text.begin(), text.end(), plain.begin());
  } else {
    const auto noise_span = static_cast<std::uint64_t>(o.noise_high - o.noise_low);
    for (auto& id : plain) id = o.noise_low + static_cast<std::int32_t>(random_bits(s, counter++) % noise_span);
  }

  // Q query slots of two tokens among the filler: choose Q distinct offsets x_0 < ... < x_{Q−1}
  // from [0, filler_len − Q); slot i starts at x_i + i (stars and bars: every layout equally likely).
  std::vector<Index> slots;
  if (o.queries_at_end) {
    for (Index i = 0; i < Q; ++i) slots.push_back(length - 2 * Q + 2 * i);
  } else {
    slots = detail::distinct_sample(Q, filler_len - Q, s, counter);
    std::sort(slots.begin(), slots.end());
    for (Index i = 0; i < Q; ++i) slots[static_cast<std::size_t>(i)] += filler_begin + i;
  }
  const std::vector<Index> asked = detail::distinct_sample(Q, P, s, counter);  // which pair each query repeats
  std::size_t next_slot = 0, next_plain = 0;
  for (Index at = filler_begin; at < length;) {
    if (next_slot < slots.size() && slots[next_slot] == at) {
      const Index pair = asked[next_slot++];
      t[at] = t[2 * pair];
      t[at + 1] = t[2 * pair + 1];
      l[at + 1] = t[at + 1];
      at += 2;
    } else {
      t[at++] = plain[next_plain++];
    }
  }
  out.query_positions = std::move(slots);
  return out;
}

// Accuracy on the labelled positions: position t (labels[b, t] ≠ −100) is right when the argmax
// of logits[b, t − 1] is labels[b, t]. logits (B, T, V) with rows aligned to the input tokens,
// labels (B, T). A sequence is exact when all its labelled positions are right.
struct LabelAccuracy {
  Index scored = 0, correct = 0, sequences = 0, exact_sequences = 0;
  double accuracy() const { return scored ? double(correct) / double(scored) : 0.0; }
  double exact_accuracy() const { return sequences ? double(exact_sequences) / double(sequences) : 0.0; }
};

template <class T>
LabelAccuracy mqar_accuracy(const Tensor<T>& logits, const IndexTensor& labels) {
  DRT_CHECK(logits.rank() == 3 && labels.rank() == 2 && logits.size(0) == labels.size(0) &&
                logits.size(1) == labels.size(1),
            "mqar_accuracy: logits ", logits.shape().str(), " and labels ", labels.shape().str(),
            " must be (B, T, V) and (B, T)");
  LabelAccuracy acc;
  const Index B = labels.size(0), L = labels.size(1), V = logits.size(2);
  for (Index b = 0; b < B; ++b) {
    bool all_right = true;
    for (Index t = 1; t < L; ++t) {
      const std::int32_t want = labels(b, t);
      if (want == kIgnoreIndex) continue;
      const T* row = logits.data() + b * logits.stride(0) + (t - 1) * logits.stride(1);
      const Index step = logits.stride(2);
      Index best = 0;
      for (Index v = 1; v < V; ++v)
        if (row[v * step] > row[best * step]) best = v;
      acc.scored += 1;
      acc.correct += best == want;
      all_right = all_right && best == want;
    }
    acc.sequences += 1;
    acc.exact_sequences += all_right;
  }
  return acc;
}

// MQAR sequences as batches: row b of step s is sequence s·B + b.
class MqarSource : public BatchSource {
 public:
  MqarSource(MqarOptions options, int vocab_size, std::uint64_t seed, std::optional<HaystackText> haystack = std::nullopt)
      : options_(options), vocab_size_(vocab_size), seed_(seed), haystack_(std::move(haystack)) {
    detail::check_mqar_options(options_, 2 * Index(options_.num_pairs) + 2 * Index(options_.num_queries), vocab_size_,
                               !haystack_);
  }

  Batch batch(std::int64_t step, Index batch_size, Index seq_len) const override {
    DRT_CHECK(batch_size > 0, "MqarSource: batch size ", batch_size, " must be positive");
    Batch out{IndexTensor::empty({batch_size, seq_len}), IndexTensor::empty({batch_size, seq_len})};
    for (Index b = 0; b < batch_size; ++b) {
      const auto index = static_cast<std::uint64_t>(step) * static_cast<std::uint64_t>(batch_size) +
                         static_cast<std::uint64_t>(b);
      const MqarSequence s =
          make_mqar_sequence(options_, seq_len, vocab_size_, seed_, index, haystack_ ? &*haystack_ : nullptr);
      set_batch_row(out, b, s.tokens, s.labels);
    }
    return out;
  }

  int vocab_size() const override { return vocab_size_; }
  std::string describe() const override {
    return "MQAR (" + std::to_string(options_.num_pairs) + " pairs, " + std::to_string(options_.num_queries) +
           " queries" + (options_.queries_at_end ? " at the end" : "") + ", keys [" + std::to_string(options_.key_low) +
           ", " + std::to_string(options_.key_high) + "), values [" + std::to_string(options_.value_low) + ", " +
           std::to_string(options_.value_high) + "), filler " +
           (haystack_ ? haystack_->name() : "noise") + ", seed " + std::to_string(seed_) + ")";
  }

 private:
  MqarOptions options_;
  int vocab_size_;
  std::uint64_t seed_;
  std::optional<HaystackText> haystack_;
};

}  // namespace drt::data
