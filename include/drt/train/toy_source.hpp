// drt/train/toy_source.hpp — small synthetic training data, for tests, smoke runs and the
// walk-through of docs/training.md. No files needed.
//
// Shapes: B sequences, T tokens each; ids in [0, symbols).
//
// Tasks:
//   "copy"   a random block of `period` symbols repeated to fill T: x₀ … x_{P−1} x₀ … x_{P−1} x₀ …
//            The first block cannot be predicted, so its labels are −100 (not scored); every later
//            token repeats the one P positions back. Loss falls from ln(symbols) towards 0 once
//            the model has learnt to look back P positions (with P > W, only DRT's retrieval can).
//   "count"  x_t = (x₀ + t) mod symbols with a random x₀ per row; learnt within a few steps.
//
// The batches are one endless stream of rows: batch(step, B, T) holds rows step·B … step·B + B − 1.
// So with gradient accumulation, micro-batches (2s, B/2) and (2s + 1, B/2) hold exactly the rows of
// batch (s, B), which lets a test compare 2 × B/2 with 1 × B on the same data. Row r is a pure
// function of (seed, r); nothing is stored.
#pragma once

#include <cstdint>
#include <string>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/data/batch.hpp"
#include "drt/model/landmarks.hpp"  // kIgnoreIndex

namespace drt::train {

class ToySource : public data::BatchSource {
 public:
  enum class Task { copy, count };

  // period 0 means T / 2 (rounded down, at least 1).
  ToySource(Task task, int symbols, Index period, std::uint64_t seed)
      : task_(task), symbols_(symbols), period_(period), seed_(seed) {
    DRT_CHECK(symbols >= 2, "ToySource: symbols must be at least 2, got ", symbols);
    DRT_CHECK(period >= 0, "ToySource: period must be >= 0, got ", period);
  }

  data::Batch batch(std::int64_t step, Index batch_size, Index seq_len) const override {
    DRT_CHECK(step >= 0 && batch_size > 0 && seq_len > 0, "ToySource::batch: step ", step, ", batch_size ", batch_size,
              " and seq_len ", seq_len, " must be >= 0, > 0, > 0");
    data::Batch b{IndexTensor::empty({batch_size, seq_len}), IndexTensor::empty({batch_size, seq_len})};
    const Index period = period_ > 0 ? period_ : std::max<Index>(1, seq_len / 2);
    for (Index i = 0; i < batch_size; ++i) {
      const std::uint64_t row_seed = random_bits(seed_, static_cast<std::uint64_t>(step * batch_size + i));
      const auto symbol = [&](std::uint64_t counter) { return static_cast<int>(random_bits(row_seed, counter) % symbols_); };
      const int start = symbol(0);
      for (Index t = 0; t < seq_len; ++t) {
        const int id = task_ == Task::copy ? symbol(static_cast<std::uint64_t>(1 + t % period))
                                           : static_cast<int>((start + t) % symbols_);
        b.tokens(i, t) = id;
        b.labels(i, t) = task_ == Task::copy && t < period ? kIgnoreIndex : id;
      }
    }
    return b;
  }

  int vocab_size() const override { return symbols_; }

  std::string describe() const override {
    return std::string("toy ") + (task_ == Task::copy ? "copy" : "count") + " task, " + std::to_string(symbols_) +
           " symbols" + (task_ == Task::copy ? ", period " + (period_ > 0 ? std::to_string(period_) : "T/2") : "");
  }

 private:
  Task task_;
  int symbols_;
  Index period_;
  std::uint64_t seed_;
};

}  // namespace drt::train
