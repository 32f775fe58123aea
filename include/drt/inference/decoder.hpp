// drt/inference/decoder.hpp — what every incremental decoder does: take tokens after the ones it
// has already seen, in segments of bounded size, and hand back the logits that were asked for.
//
// Shapes: n tokens fed, L positions in one segment (a DRT adds a landmark after every L_c-th
// token), D width, V vocabulary.
//   feed(tokens, rows)   tokens (n) → logits (|rows|, V) of the tokens at those indices
//   step(token)          one token → logits (V), the distribution of the token after it
//
// A long input goes through in segments of at most `segment_positions` positions: memory is
// bounded by the segment and the model's state (window caches, and for DRT the chunk memory),
// never by the input's length. Only the rows asked for go through the LM head.
//
// A decoder runs without recording (NoGradGuard) and frees the calling thread's step arena
// after every segment, like a training step does: Vars made earlier on the same thread are
// gone afterwards. The model must outlive the decoder and must not change while it decodes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/tape.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/nn/rms_norm.hpp"

namespace drt {

inline constexpr Index kDefaultSegmentPositions = 4096;

template <class T>
class IncrementalDecoder {
 public:
  virtual ~IncrementalDecoder() = default;

  Tensor<T> feed(const std::vector<std::int32_t>& tokens, const std::vector<Index>& logit_rows,
                 Index segment_positions = kDefaultSegmentPositions) {
    DRT_CHECK(segment_positions >= 1, "feed: segment of ", segment_positions, " positions");
    // (token index, output row), sorted by token index.
    std::vector<std::pair<Index, Index>> wanted;
    for (std::size_t r = 0; r < logit_rows.size(); ++r) {
      DRT_CHECK(logit_rows[r] >= 0 && logit_rows[r] < static_cast<Index>(tokens.size()), "feed: logit row ",
                logit_rows[r], " is outside the ", tokens.size(), " tokens fed");
      wanted.push_back({logit_rows[r], static_cast<Index>(r)});
    }
    std::sort(wanted.begin(), wanted.end());

    NoGradGuard no_grad;
    Tensor<T> out = Tensor<T>::zeros({static_cast<Index>(logit_rows.size()), vocab_size()});
    std::vector<std::int32_t> ids;
    std::vector<std::pair<Index, Index>> rows_here;  // (position in this segment, output row)
    auto flush = [&] {
      if (ids.empty()) return;
      const Var<T> h = advance(ids);
      write_logits(h, rows_here, out);
      tape().reset();
      ids.clear();
      rows_here.clear();
    };
    std::size_t next_wanted = 0;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const Index position = static_cast<Index>(ids.size());
      append_positions(tokens[t], ids);
      for (; next_wanted < wanted.size() && wanted[next_wanted].first == static_cast<Index>(t); ++next_wanted)
        rows_here.push_back({position, wanted[next_wanted].second});
      if (static_cast<Index>(ids.size()) >= segment_positions) flush();
    }
    flush();
    tokens_seen_ += static_cast<Index>(tokens.size());
    return out;
  }

  // One more token; returns the logits (V) that predict the token after it.
  virtual Tensor<T> step(std::int32_t token) { return feed({token}, {0}).reshape({vocab_size()}); }

  Index tokens_seen() const { return tokens_seen_; }
  // Bytes of decoding state outside the model's weights and outside a chunk store.
  virtual std::size_t state_bytes() const = 0;
  virtual Index vocab_size() const = 0;

 protected:
  // For a decoder whose step() does not go through feed().
  void count_tokens(Index n) { tokens_seen_ += n; }
  // Appends the positions one raw token occupies (a DRT adds a landmark after a chunk's last token).
  virtual void append_positions(std::int32_t token, std::vector<std::int32_t>& ids) = 0;
  // Runs positions `ids` after all earlier ones; returns the last layer's output (1, L, D), before the final norm.
  virtual Var<T> advance(const std::vector<std::int32_t>& ids) = 0;
  // The final norm and the LM head on rows (1, n, D).
  virtual Var<T> head(const Var<T>& rows) const = 0;

 private:
  void write_logits(const Var<T>& h, const std::vector<std::pair<Index, Index>>& rows, Tensor<T>& out) const {
    if (rows.empty()) return;
    const Index n = static_cast<Index>(rows.size()), D = h.size(2);
    Tensor<T> picked = Tensor<T>::empty({1, n, D}, step_arena(), h.device());
    for (Index i = 0; i < n; ++i) picked.select(1, i).copy_from(h.value().select(1, rows[i].first));
    const Tensor<T> logits = head(constant(picked)).value();  // (1, n, V)
    for (Index i = 0; i < n; ++i) out.select(0, rows[i].second).copy_from(logits.select(1, i).squeeze(0));
  }

  Index tokens_seen_ = 0;
};

}  // namespace drt
