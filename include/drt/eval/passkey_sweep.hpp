// drt/eval/passkey_sweep.hpp — passkey accuracy of a model over a list of context lengths: the
// length-generalisation measurement of the paper (train at one length, test at many).
//
// Shapes: one trial is tokens (1, Lw); the model gives logits (1, Lw, V), row t predicting token
// t + 1 (DRT's landmark rows removed). Trials at each length are numbered 0 .. trials − 1 of the
// task seeded `seed` (drt/data/passkey.hpp), so two models evaluated with the same arguments see
// the same haystacks, needles and passkeys.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "drt/autodiff/tape.hpp"
#include "drt/data/passkey.hpp"

namespace drt {

// The logits (1, T, V) of a model for tokens (1, T), rows aligned with the tokens.
using LogitsFunction = std::function<Tensor<float>(const IndexTensor& tokens)>;

struct PasskeyLengthScore {
  Index length = 0;         // Lw tokens
  data::PasskeyScore score;
  double seconds = 0;       // wall time of the length's forward passes
};

struct PasskeySweepOptions {
  std::vector<Index> lengths;  // each a multiple of the task's chunk_tokens
  Index trials = 20;           // per length
  std::uint64_t seed = 0;
};

// Called after each length, e.g. to print a row while the next length runs.
using PasskeyProgress = std::function<void(const PasskeyLengthScore&)>;

inline std::vector<PasskeyLengthScore> passkey_sweep(const LogitsFunction& logits_of, const data::HaystackText& haystack,
                                                     const data::PasskeyFormat& format, const data::PasskeyOptions& task,
                                                     const PasskeySweepOptions& options,
                                                     const PasskeyProgress& progress = {}) {
  DRT_CHECK(options.trials > 0, "passkey_sweep: trials ", options.trials, " must be positive");
  DRT_CHECK(!options.lengths.empty(), "passkey_sweep: no context lengths to evaluate");
  std::vector<PasskeyLengthScore> results;
  for (const Index length : options.lengths) {
    PasskeyLengthScore row;
    row.length = length;
    const auto start = std::chrono::steady_clock::now();
    for (Index i = 0; i < options.trials; ++i) {
      const data::PasskeyTrial trial =
          data::make_passkey_trial(haystack, format, task, length, options.seed, static_cast<std::uint64_t>(i));
      NoGradGuard no_grad;  // inference: nothing is recorded for a backward pass
      row.score.add(logits_of(trial.tokens), trial);
      tape().reset();
    }
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) progress(row);
    results.push_back(row);
  }
  return results;
}

}  // namespace drt
