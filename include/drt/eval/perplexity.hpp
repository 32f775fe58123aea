// drt/eval/perplexity.hpp — perplexity over non-overlapping windows of a token stream (reference
// spec §11.1, the authors' `--stride -1`).
//
// Shapes: a stream of N tokens is cut into ⌊N / W⌋ windows of W tokens, each (1, W); the last
// N mod W tokens are not scored. Each window is evaluated from scratch (nothing carries over
// between windows) and scores its W − 1 next-token targets.
//
// Two means are reported, since they differ when windows hold different numbers of targets (they
// do not here, but a caller may mask tokens):
//   mean_window_loss   the mean over windows of each window's mean loss: the number the
//                      reference prints and calls "perplexity"
//   perplexity         exp(mean_window_loss), which the paper presumably reports (spec A11)
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>

#include "drt/autodiff/tape.hpp"
#include "drt/core/tensor.hpp"

namespace drt {

// The mean next-token loss of one window, tokens (1, W), labels = tokens.
using WindowLossFunction = std::function<double(const IndexTensor& window)>;

struct WindowPerplexity {
  Index windows = 0;
  Index window_tokens = 0;    // W
  Index scored_tokens = 0;    // windows · W
  Index unscored_tail = 0;    // N mod W
  double mean_window_loss = 0;
  double perplexity = 0;
  double seconds = 0;
};

// `read` copies tokens [begin, begin + W) of the stream into its span.
inline WindowPerplexity window_perplexity(const WindowLossFunction& loss_of, Index stream_tokens, Index window,
                                          const std::function<void(Index begin, std::span<std::int32_t>)>& read,
                                          Index max_windows = 0) {
  DRT_CHECK(window >= 2, "window_perplexity: a window of ", window, " tokens has no next-token target (need >= 2)");
  DRT_CHECK(stream_tokens >= window, "window_perplexity: the stream has ", stream_tokens,
            " tokens, fewer than one window of ", window);
  WindowPerplexity out;
  out.window_tokens = window;
  out.windows = stream_tokens / window;
  if (max_windows > 0) out.windows = std::min(out.windows, max_windows);
  out.scored_tokens = out.windows * window;
  out.unscored_tail = stream_tokens - out.scored_tokens;
  const auto start = std::chrono::steady_clock::now();
  double sum = 0;
  IndexTensor tokens = IndexTensor::empty({1, window});
  for (Index w = 0; w < out.windows; ++w) {
    read(w * window, std::span<std::int32_t>(tokens.data(), static_cast<std::size_t>(window)));
    NoGradGuard no_grad;
    sum += loss_of(tokens);
    tape().reset();
  }
  out.mean_window_loss = sum / static_cast<double>(out.windows);
  out.perplexity = std::exp(out.mean_window_loss);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace drt
