// drt/model/retrieval.hpp — causal landmark retrieval (spec §5).
//
// Shapes: B batch, C chunks, D width, k retrieved chunks (k_eff = min(C, chunk_topk)).
//   query  (B, C, D)   the landmark states after lmk_norm[g]
//   keys   (B, C, D)   κ, the encoder's landmark outputs
//   index  (B, C, k)   chunk retrieved by landmark c in slot j; −1 where nothing was visible
//   weight (B, C, k)   softmax over the k selected noise-free scores; 0 on empty slots
//
// score(c, e) = ⟨query_c, κ_e⟩ / √D, visible only for e < c (strictly earlier chunks).
// In training, Gumbel noise perturbs the *selection* only (top-k of score + noise); the weights
// always use the noise-free scores, so the retriever's gradient is the plain softmax gradient.
// Landmark 0 sees nothing: all its weights are 0, with no NaN forward or backward.
//
// With query and keys on the device every step runs there (cuBLAS scores, the causal mask copied
// over, Gumbel noise drawn on the device, device top-k with the CPU's tie order, gather, softmax)
// and the index comes back ON THE DEVICE; the selected indices equal the CPU's whenever the
// scores agree to rounding (no near-ties).
#pragma once

#include <cmath>
#include <limits>

#include "drt/autodiff/indexing.hpp"
#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/nn/gumbel.hpp"
#include "drt/nn/masked_fill.hpp"
#include "drt/nn/softmax.hpp"
#include "drt/nn/topk.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/topk.cuh"
#endif

namespace drt {

template <class T>
struct Retrieval {
  IndexTensor index;
  Var<T> weight;
};

// The strict causal mask over (landmark c, chunk e): 1 where e ≥ c (hidden).
template <class T>
Tensor<T> causal_chunk_mask(Index chunks, Arena* arena) {
  Tensor<T> mask = Tensor<T>::empty({chunks, chunks}, arena);
  for (Index c = 0; c < chunks; ++c)
    for (Index e = 0; e < chunks; ++e) mask(c, e) = e >= c ? T(1) : T(0);
  return mask;
}

template <class T>
Retrieval<T> retrieve(const Var<T>& query, const Var<T>& keys, int topk, bool add_noise, std::uint64_t noise_seed) {
  DRT_CHECK(query.rank() == 3 && query.shape() == keys.shape(), "retrieve: query ", query.shape().str(), " and keys ",
            keys.shape().str(), " must both be (B, C, D)");
  DRT_CHECK(query.device() == keys.device(), "retrieve: query lives on ", device_name(query.device()), " but keys on ",
            device_name(keys.device()));
  const Index C = query.size(1), D = query.size(2);
  const T minus_inf = -std::numeric_limits<T>::infinity();
  const Var<T> raw = matmul(query, transpose(keys, 1, 2)) * (T(1) / std::sqrt(T(D)));
  const Var<T> scores = masked_fill(raw, causal_chunk_mask<T>(C, step_arena()), minus_inf);
  const int k = static_cast<int>(std::min<Index>(C, topk));

  Tensor<T> selection = scores.value();
  if (add_noise)
    selection = eval(selection + gumbel_noise<T>(selection.shape(), noise_seed, step_arena(), selection.device()),
                     step_arena());
  IndexTensor index = topk_indices(selection, k, -1, step_arena());

  const Var<T> selected = gather(scores, -1, index);  // its backward reads `index` later: keep it intact
  // Empty slots (score −inf) get index −1, so GCA skips them instead of reading arbitrary chunks.
  IndexTensor slots = index.clone(step_arena());
  if (!slots.on_host()) {
    DRT_ON_DEVICE("retrieve", cuda::mark_empty_slots(selected.value(), slots));
  } else {
    const T* s = selected.value().data();
    for (Index i = 0; i < slots.numel(); ++i)
      if (s[i] == minus_inf) slots.data()[i] = -1;
  }
  return Retrieval<T>{slots, softmax(selected, -1)};
}

}  // namespace drt
