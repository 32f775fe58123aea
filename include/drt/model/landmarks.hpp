// drt/model/landmarks.hpp — landmark insertion and label shifting (spec §2).
//
// Shapes: B batch, T raw tokens (a multiple of L_c), C = T / L_c chunks, S = L_c + 1.
//   insert_landmarks   tokens (B, T) → ids (B, C·S): chunk_id appended after every L_c tokens;
//                      ids < 0 become pad_id (NIAH data marks unscored positions with −100)
//   shift_targets      labels (B, T) → targets (B, C·S): target[t] = label[t+1] in raw-token
//                      space (the last is −100), then −100 at every landmark position, so the
//                      last token of chunk c predicts the first token of chunk c+1 and landmarks
//                      are never predicted
//   drop_landmark_rows x (B, C·S, V) → (B, C·L_c, V): rows aligned 1:1 with the input tokens
#pragma once

#include "drt/core/tensor.hpp"

namespace drt {

inline constexpr int kIgnoreIndex = -100;

namespace detail {
inline Index chunk_count(const IndexTensor& tokens, int chunk_tokens, const char* op) {
  DRT_CHECK(tokens.rank() == 2, op, ": tokens must be (B, T), got ", tokens.shape().str());
  DRT_CHECK(chunk_tokens > 0 && tokens.size(1) % chunk_tokens == 0 && tokens.size(1) > 0, op, ": length ",
            tokens.size(1), " is not a positive multiple of the chunk's ", chunk_tokens, " tokens");
  return tokens.size(1) / chunk_tokens;
}
}  // namespace detail

inline IndexTensor insert_landmarks(const IndexTensor& tokens, int chunk_tokens, int chunk_id, int pad_id) {
  const Index C = detail::chunk_count(tokens, chunk_tokens, "insert_landmarks");
  const Index B = tokens.size(0), S = chunk_tokens + 1;
  IndexTensor ids = IndexTensor::empty({B, C * S});
  for (Index b = 0; b < B; ++b)
    for (Index c = 0; c < C; ++c) {
      for (Index s = 0; s < chunk_tokens; ++s) {
        const std::int32_t t = tokens(b, c * chunk_tokens + s);
        ids(b, c * S + s) = t < 0 ? pad_id : t;
      }
      ids(b, c * S + chunk_tokens) = chunk_id;
    }
  return ids;
}

inline IndexTensor shift_targets(const IndexTensor& labels, int chunk_tokens) {
  const Index C = detail::chunk_count(labels, chunk_tokens, "shift_targets");
  const Index B = labels.size(0), T = labels.size(1), S = chunk_tokens + 1;
  IndexTensor targets = IndexTensor::full({B, C * S}, kIgnoreIndex);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t + 1 < T; ++t) targets(b, (t / chunk_tokens) * S + t % chunk_tokens) = labels(b, t + 1);
  return targets;
}

template <class T>
Tensor<T> drop_landmark_rows(const Tensor<T>& x, int chunk_tokens) {
  DRT_CHECK(x.rank() == 3 && x.size(1) % (chunk_tokens + 1) == 0, "drop_landmark_rows: shape ", x.shape().str(),
            " is not (B, C·", chunk_tokens + 1, ", V)");
  const Index B = x.size(0), S = chunk_tokens + 1, C = x.size(1) / S, V = x.size(2);
  Tensor<T> rows = x.reshape({B, C, S, V}).slice(2, 0, chunk_tokens).clone();
  return rows.reshape({B, C * chunk_tokens, V});
}

}  // namespace drt
