// drt/attention/gca_composed.hpp — GCA written with the library's generic differentiable ops.
//
// Shapes (as gca, drt/attention/gca.hpp):
//   q       (Z, H, M, d)
//   k, v    (B, E, N, Hkv, d)   row z reads sequence z / (Z / B); query head h reads kv head h / (H / Hkv)
//   index   (Z, Kc) int32       −1 = empty slot
//   weight  (Z, Kc)
//   out     (Z, H, M, d)
//
// The same function as gca, spelled out the obvious way: gather the retrieved chunks into a copy
// of shape (Z, Kc, H, N, d), one batched q·kᵀ, a softmax over the N keys of each chunk, P·v, and
// the sum over the Kc slots weighted by `weight`. Every gradient comes from the tape, not from
// gca's hand-written backward, which is what makes this a test oracle for gca; it is also the
// baseline gca's speed is measured against (bench/bench_attention.cpp).
//
// It is a reference, not the fast path: it materialises every retrieved chunk (Kc·N·d per row and
// head, twice), and it computes empty slots instead of skipping them. An index −1 slot reads chunk
// 0 with its weight multiplied by 0, so its output and every gradient through it (its weight's
// included) are exactly 0, as in gca. A slot with a valid index and weight 0 also adds nothing to
// the output, but unlike in gca, which treats it as masked, its weight does receive the gradient
// Σ_{h,m} ⟨dO, o_i⟩.
#pragma once

#include <algorithm>
#include <cstdint>

#include "drt/attention/gca.hpp"  // gca_check: the same contract, the same error messages
#include "drt/autodiff/elementwise.hpp"
#include "drt/autodiff/indexing.hpp"
#include "drt/autodiff/matmul.hpp"
#include "drt/autodiff/reduce.hpp"
#include "drt/autodiff/view.hpp"
#include "drt/nn/softmax.hpp"

namespace drt {

template <class T>
Var<T> gca_composed(const Var<T>& q, const Var<T>& k, const Var<T>& v, const IndexTensor& index,
                    const Var<T>& weight, T scale) {
  Arena* arena = step_arena();
  const IndexTensor ic = index.contiguous(arena);
  const detail::GcaDims g = detail::gca_check(q.value().contiguous(arena), k.value().contiguous(arena),
                                              v.value().contiguous(arena), ic, weight.value().contiguous(arena));
  const Index Z = g.Z, H = g.H, M = g.M, d = g.d, E = g.E, N = g.N, Kc = g.Kc;

  // Row z, slot i reads chunk b·E + e of the (B·E) chunks; an empty slot reads chunk b·E and is
  // switched off through its weight.
  const IndexTensor chunk_of_slot = IndexTensor::empty(Shape{Z * Kc}, arena);
  const Tensor<T> live = Tensor<T>::empty(Shape{Z, Kc}, arena);
  for (Index z = 0; z < Z; ++z)
    for (Index i = 0; i < Kc; ++i) {
      const std::int32_t e = ic(z, i);
      chunk_of_slot.data()[z * Kc + i] = static_cast<std::int32_t>((z / g.rows_per_sequence) * E + std::max(e, 0));
      live(z, i) = e >= 0 ? T(1) : T(0);
    }
  const IndexTensor kv_of_head = IndexTensor::empty(Shape{H}, arena);
  for (Index h = 0; h < H; ++h) kv_of_head.data()[h] = static_cast<std::int32_t>(h / g.heads_per_kv);

  // (B, E, N, Hkv, d) → the retrieved chunks, one per query head: (Z, Kc, H, N, d).
  auto retrieved = [&](const Var<T>& memory) {
    Var<T> chunks = index_select(reshape(memory, Shape{g.B * E, N, g.Hkv, d}), 0, chunk_of_slot);
    if (g.heads_per_kv > 1) chunks = index_select(chunks, 2, kv_of_head);  // (Z·Kc, N, H, d)
    return permute(reshape(chunks, Shape{Z, Kc, N, H, d}), {0, 1, 3, 2, 4});
  };
  const Var<T> keys = retrieved(k), values = retrieved(v);

  const Var<T> queries = broadcast_to(unsqueeze(q, 1), Shape{Z, Kc, H, M, d});  // the same q for every slot
  const Var<T> probs = softmax(matmul(queries, transpose(keys, 3, 4)) * scale, -1);  // (Z, Kc, H, M, N)
  const Var<T> chunk_out = matmul(probs, values);                                    // (Z, Kc, H, M, d)
  const Var<T> w = reshape(weight * constant(live), Shape{Z, Kc, 1, 1, 1});
  return sum(chunk_out * w, 1);
}

}  // namespace drt
