// drt/attention/window_attention.hpp — causal sliding-window self-attention with ALiBi (spec §3).
//
// Shapes:  B batch, T positions, H query heads, Hkv key/value heads (H a multiple of Hkv; query
//          head h reads kv head h / (H / Hkv)), d head width, W window.
//   q         (B, T, H, d)      the layout a (B, T, H·d) projection already has: no transpose
//   k, v      (B, T, Hkv, d)
//   slopes    (H)               ALiBi slopes m_h (alibi_slopes() gives the standard ones)
//   out       (B, T, H, d)
//
//   score(i, j) = scale · ⟨q_i, k_j⟩ − m_h · (i − j)   for i − W ≤ j ≤ i   (W + 1 keys, the
//   query's own position included), −∞ elsewhere; out_i = Σ_j softmax_j(score) v_j.
//
// Queries are processed in blocks of 64; a block only ever looks at the W + 64 keys that can be
// in its window, so memory is O(T·W), never O(T²). The backward recomputes the probabilities
// from the saved log-sum-exp (like flash attention) instead of storing them.
#pragma once

#include <cmath>
#include <limits>
#include <memory>

#include "drt/attention/gradient_slots.hpp"
#include "drt/autodiff/var.hpp"
#include "drt/core/matmul.hpp"
#include "drt/core/parallel.hpp"
#include "drt/core/vector_math.hpp"

namespace drt {

// What the GPU forward in bf16 mode (version 4 of the kernels) keeps for the backward: bf16
// copies of q, k and v, element for element (rounded to nearest even, as the kernels stage
// them). The backward's dQ kernel reads k's and v's, its dK/dV kernel q's, instead of rounding
// those inputs a second time. Tape values do not change between forward and backward, so the
// copies stay valid. A null copy means "not made" (the forward took another version or ran
// under another precision): the backward rounds its input itself, as before. Declared here,
// with shared_ptr<void> for device memory, because the op below is also compiled by a host
// compiler and holds one of these in its backward record. The backward returns the copies of the
// gradients dq, dk, dv it wrote in the same struct (window_attention_backward's gradient_copies).
struct WindowAttentionBf16Copies {
  std::shared_ptr<void> q, k, v;
};

}  // namespace drt

#if defined(__CUDACC__)
#include "drt/cuda/attention/window_attention.cuh"
#endif

namespace drt {
namespace detail {

inline constexpr Index kWindowQueryBlock = 64;

struct WindowDims {
  Index B, T, H, Hkv, d, W, heads_per_kv;
};

template <class T>
WindowDims window_check(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                        Index window) {
  DRT_CHECK(q.rank() == 4, "window_attention: q must be (B, T, H, d), got ", q.shape().str());
  DRT_CHECK(k.rank() == 4 && k.shape() == v.shape(), "window_attention: k ", k.shape().str(), " and v ",
            v.shape().str(), " must both be (B, T, Hkv, d)");
  DRT_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
            "window_attention: q ", q.shape().str(), " and k ", k.shape().str(), " disagree on B, T or d");
  DRT_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, "window_attention: query heads ", q.size(2),
            " are not a multiple of kv heads ", k.size(2));
  DRT_CHECK(slopes.rank() == 1 && slopes.size(0) == q.size(2), "window_attention: slopes ", slopes.shape().str(),
            " should have one entry per query head (", q.size(2), ")");
  DRT_CHECK(window >= 0, "window_attention: negative window ", window);
  DRT_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "window_attention: inputs must be contiguous");
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), window, q.size(2) / k.size(2)};
}

// The rows [t0, t1) of sequence b, head h of a (B, T, heads, d) tensor: a (t1 − t0, d) view.
template <class T>
Tensor<T> rows_of(const Tensor<T>& x, Index b, Index h, Index t0, Index t1) {
  return x.select(0, b).select(1, h).slice(0, t0, t1);
}

// Fills s (rows × keys) with masked ALiBi scores for queries [t0, t0+rows) and keys [j0, j0+keys),
// given s already holding scale·q kᵀ.
template <class T>
void window_bias_and_mask(T* s, Index rows, Index keys, Index t0, Index j0, Index window, T slope) {
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < keys; ++c) {
      const Index i = t0 + r, j = j0 + c;
      s[r * keys + c] = (j > i || j < i - window) ? -std::numeric_limits<T>::infinity()
                                                  : s[r * keys + c] - slope * T(i - j);
    }
}

}  // namespace detail

// Forward: writes out (B, T, H, d) and lse (B, H, T).
template <class T>
void window_attention_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                              Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse, Arena* arena) {
  const detail::WindowDims g = detail::window_check(q, k, v, slopes, window);
  const Index QB = detail::kWindowQueryBlock, KB = g.W + QB;
  const Index blocks = (g.T + QB - 1) / QB;
  const int threads = thread_slots();
  T* scratch = arena->allocate_array<T>(static_cast<std::size_t>(threads * QB * KB));
  parallel_for_dynamic(g.B * g.H * blocks, g.B * g.H * g.T * KB * g.d, [&](Index i) {
        const Index b = i / (g.H * blocks), h = (i / blocks) % g.H, blk = i % blocks;
        const Index t0 = blk * QB, t1 = std::min(g.T, t0 + QB), rows = t1 - t0;
        const Index j0 = std::max<Index>(0, t0 - g.W), keys = t1 - j0;  // every key some query here may see
        const Index kv = h / g.heads_per_kv;
        const Tensor<T> s = Tensor<T>::wrap(scratch + current_thread() * QB * KB, Shape{rows, keys});
        gemm(detail::rows_of(q, b, h, t0, t1), detail::rows_of(k, b, kv, j0, t1).transpose(0, 1), s, scale, T(0), 1);
        detail::window_bias_and_mask(s.data(), rows, keys, t0, j0, g.W, slopes.data()[h]);
        T* l = lse.data() + (b * g.H + h) * g.T + t0;
        for (Index r = 0; r < rows; ++r) {  // row softmax; the diagonal is always visible, so no row is empty
          T* row = s.data() + r * keys;
          const T mx = *std::max_element(row, row + keys);
          const T total = exp_shifted_sum(row, keys, mx);
          for (Index c = 0; c < keys; ++c) row[c] /= total;
          l[r] = mx + std::log(total);
        }
        gemm(s, detail::rows_of(v, b, kv, j0, t1), detail::rows_of(out, b, h, t0, t1), T(1), T(0), 1);
  });
}

// Backward: adds into dq, dk, dv (any may be null). Parallel over (batch, kv head) so that the
// key/value gradients of one thread never overlap another's.
template <class T>
void window_attention_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& slopes,
                               Index window, T scale, const Tensor<T>& out, const Tensor<T>& lse,
                               const Tensor<T>& dout, const Tensor<T>* dq, const Tensor<T>* dk, const Tensor<T>* dv,
                               Arena* arena) {
  const detail::WindowDims g = detail::window_check(q, k, v, slopes, window);
  const Index QB = detail::kWindowQueryBlock, KB = g.W + QB;
  const Index blocks = (g.T + QB - 1) / QB;
  const int threads = thread_slots();
  T* scratch = arena->allocate_array<T>(static_cast<std::size_t>(threads * (2 * QB * KB + QB)));
  parallel_for_dynamic(g.B * g.Hkv, g.B * g.H * g.T * KB * g.d, [&](Index bkv) {
      const Index b = bkv / g.Hkv, kv = bkv % g.Hkv;
      T* mine = scratch + current_thread() * (2 * QB * KB + QB);
      for (Index h = kv * g.heads_per_kv; h < (kv + 1) * g.heads_per_kv; ++h)
        for (Index blk = 0; blk < blocks; ++blk) {
          const Index t0 = blk * QB, t1 = std::min(g.T, t0 + QB), rows = t1 - t0;
          const Index j0 = std::max<Index>(0, t0 - g.W), keys = t1 - j0;
          const Tensor<T> p = Tensor<T>::wrap(mine, Shape{rows, keys});
          const Tensor<T> ds = Tensor<T>::wrap(mine + QB * KB, Shape{rows, keys});
          T* delta = mine + 2 * QB * KB;
          const Tensor<T> qb = detail::rows_of(q, b, h, t0, t1), dob = detail::rows_of(dout, b, h, t0, t1);
          const Tensor<T> ob = detail::rows_of(out, b, h, t0, t1);
          const Tensor<T> kb = detail::rows_of(k, b, kv, j0, t1), vb = detail::rows_of(v, b, kv, j0, t1);
          // P from the saved log-sum-exp.
          gemm(qb, kb.transpose(0, 1), p, scale, T(0), 1);
          detail::window_bias_and_mask(p.data(), rows, keys, t0, j0, g.W, slopes.data()[h]);
          exp_shifted_rows(p.data(), rows, keys, keys, lse.data() + (b * g.H + h) * g.T + t0);
          // δ_r = ⟨dO_r, O_r⟩;  dS = P ∘ (dO vᵀ − δ)
          for (Index r = 0; r < rows; ++r) {
            T acc = 0;
            for (Index c = 0; c < g.d; ++c) acc += dob(r, c) * ob(r, c);
            delta[r] = acc;
          }
          gemm(dob, vb.transpose(0, 1), ds, T(1), T(0), 1);
          for (Index r = 0; r < rows; ++r)
            for (Index c = 0; c < keys; ++c) ds.data()[r * keys + c] = p.data()[r * keys + c] * (ds.data()[r * keys + c] - delta[r]);
          if (dv) gemm(p.transpose(0, 1), dob, detail::rows_of(*dv, b, kv, j0, t1), T(1), T(1), 1);      // dV += Pᵀ dO
          if (dk) gemm(ds.transpose(0, 1), qb, detail::rows_of(*dk, b, kv, j0, t1), scale, T(1), 1);     // dK += scale dSᵀ q
          if (dq) gemm(ds, kb, detail::rows_of(*dq, b, h, t0, t1), scale, T(1), 1);                      // dQ += scale dS k
        }
  });
}

// The differentiable op. The slopes are a fixed buffer (no gradient), as in the reference. On a GPU
// (q, k, v there; the slopes anywhere) the kernels of drt/cuda/attention/window_attention.cuh run;
// in bf16 mode the backward reads the forward's bf16 copies of q, k, v (WindowAttentionBf16Copies)
// and lets them go once it has run. `rounded`, when given: where version 4 runs (GPU, bf16), the
// output's bf16 copy is written there too, for the output projection (with_rounded,
// drt/autodiff/matmul.hpp); elsewhere it is left empty.
template <class T>
Var<T> window_attention(const Var<T>& q, const Var<T>& k, const Var<T>& v, const Tensor<T>& slopes, Index window,
                        T scale, std::shared_ptr<void>* rounded = nullptr) {
  Arena* arena = step_arena();
  const Device device = q.device();
  const Tensor<T> qc = q.value().contiguous(arena), kc = k.value().contiguous(arena), vc = v.value().contiguous(arena);
  const Tensor<T> sl = slopes.to(device, arena).contiguous(arena);
  const Tensor<T> out = Tensor<T>::empty(q.shape(), arena, device);
  const Tensor<T> lse = Tensor<T>::empty(Shape{q.size(0), q.size(2), q.size(1)}, arena, device);
  Var<T> result = make_output(out, {&q, &k, &v});  // out is written below
  WindowAttentionBf16Copies copies;  // stays empty on the CPU, and when no backward will run
  if (device != Device::cpu) {
    detail::window_check(qc, kc, vc, sl, window);
    DRT_ON_DEVICE("window_attention", cuda::window_attention_forward(qc, kc, vc, sl, window, scale, out, lse,
                                                                     result.requires_grad() ? &copies : nullptr,
                                                                     rounded));
  } else {
    window_attention_forward(qc, kc, vc, sl, window, scale, out, lse, arena);
  }
  if (!result.requires_grad()) return result;
  // Hold only what the backward will read: k and v for dQ, q for dK and dV.
  if (!q.requires_grad()) copies.k = copies.v = nullptr;
  if (!k.requires_grad() && !v.requires_grad()) copies.q = nullptr;
  // A mutable closure: it lets the copies go once the backward has read them.
  record_backward(result, [=, copies = std::move(copies)]() mutable {
      Arena* a = step_arena();
      const detail::QkvGradientSlots<T> g(q, k, v);  // a fresh buffer is set, not zero-filled and added into
      const Tensor<T> dout = result.grad().contiguous(a);
      const Tensor<T>*dq_ptr = g.dq_or_null(), *dk_ptr = g.dk_or_null(), *dv_ptr = g.dv_or_null();
      if (device != Device::cpu) {
        // With bf16 GEMMs (version 4), the gradients' bf16 copies too, for the q, k, v projections'
        // backward (Node::grad_rounded, handed on by the reshapes between). Not where two of q, k,
        // v are one node: the second kernel would add to a gradient whose copy is already written.
        WindowAttentionBf16Copies gradient_copies;
        DRT_ON_DEVICE("window_attention",
                      cuda::window_attention_backward(qc, kc, vc, sl, window, scale, out, lse, dout, dq_ptr, dk_ptr,
                                                      dv_ptr, &copies, g.distinct ? &gradient_copies : nullptr,
                                                      cuda::attention::FreshGradients{g.fresh_dq, g.fresh_dk,
                                                                                      g.fresh_dv}));
        if (dq_ptr) q.node()->grad_rounded = std::move(gradient_copies.q);
        if (dk_ptr) k.node()->grad_rounded = std::move(gradient_copies.k);
        if (dv_ptr) v.node()->grad_rounded = std::move(gradient_copies.v);
      } else {
        g.zero_fresh();
        window_attention_backward(qc, kc, vc, sl, window, scale, out, lse, dout, dq_ptr, dk_ptr, dv_ptr, a);
      }
      copies = {};  // device memory back to the allocator now, not at the tape's reset
  });
  return result;
}

}  // namespace drt
