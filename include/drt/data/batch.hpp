// drt/data/batch.hpp — what a training or evaluation batch is, and where batches come from.
//
// Shapes: B sequences, T tokens each.
//   tokens  (B, T)  token ids fed to the model
//   labels  (B, T)  the ids the model should predict, −100 where nothing is scored; models shift
//                   them themselves (position t is trained to predict labels[t + 1])
//
// A BatchSource is a pure function of (its seed, the step): batch(step) always returns the same
// batch. That is what makes training reproducible and `drt train --resume` exact without storing
// any data-loader state: resuming at step s simply asks for batch(s).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "drt/core/tensor.hpp"

namespace drt::data {

struct Batch {
  IndexTensor tokens;
  IndexTensor labels;
};

// Puts one sequence, tokens and labels (1, T) or (T), into row b of a batch (B, T).
inline void set_batch_row(Batch& batch, Index b, const IndexTensor& tokens, const IndexTensor& labels) {
  const Index T = batch.tokens.size(1);
  DRT_CHECK(tokens.numel() == T && labels.numel() == T, "set_batch_row: a sequence of ", tokens.numel(), " tokens and ",
            labels.numel(), " labels does not fit a batch row of ", T);
  std::copy(tokens.data(), tokens.data() + T, batch.tokens.data() + b * T);
  std::copy(labels.data(), labels.data() + T, batch.labels.data() + b * T);
}

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The batch of training step `step` (or evaluation batch `step`), B × T.
  virtual Batch batch(std::int64_t step, Index batch_size, Index seq_len) const = 0;
  // Every token id produced is below this.
  virtual int vocab_size() const = 0;
  // One line for logs: what the data is.
  virtual std::string describe() const = 0;
};

}  // namespace drt::data
