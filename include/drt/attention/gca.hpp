// drt/attention/gca.hpp — Grouped Cross-Attention (GCA), DRT's first-class op (spec §6).
//
// Shapes:  Z query rows (one per query chunk), H query heads, M queries per row, d head width,
//          B sequences, E chunks stored per sequence, N keys per chunk, Hkv key/value heads
//          (H a multiple of Hkv; query head h reads kv head h / (H / Hkv)), Kc retrieved slots.
//   q       (Z, H, M, d)
//   k, v    (B, E, N, Hkv, d)   the chunk memory; row z belongs to sequence z / (Z / B)
//   index   (Z, Kc) int32       the chunk each slot retrieved, −1 = empty slot
//   weight  (Z, Kc)             fusion weights (softmax of the retrieval scores)
//   out     (Z, H, M, d)
//
// For every row z, head h, query m and slot i (spec §6.2):
//   s_n   = scale · ⟨q[z,h,m], k[b, index[z,i], n, g]⟩
//   o_i   = Σ_n softmax_n(s) · v[b, index[z,i], n, g]          one softmax per retrieved chunk
//   out   = Σ_i weight[z,i] · o_i                               fused by the retrieval weights
// so the gradient reaches the weights (dW_i = Σ_{h,m} ⟨dout, o_i⟩) and through them the
// retriever. Chunks are read in place through `index`: nothing of shape (Z, Kc, N, d) is
// ever gathered. A slot with index −1 or weight 0 is skipped entirely: it costs nothing and
// cannot produce NaN, forward or backward. (A slot of weight exactly 0 is treated as masked, so
// it also receives no weight gradient; in DRT such weights come from exp(−∞) and their
// score gradient w·(…) is 0 anyway.)
#pragma once

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "drt/attention/gradient_slots.hpp"
#include "drt/autodiff/var.hpp"
#include "drt/core/matmul.hpp"
#include "drt/core/precision.hpp"
#include "drt/core/vector_math.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/attention/gca.cuh"
#endif

namespace drt {
namespace detail {

struct GcaDims {
  Index Z, H, M, d, B, E, N, Hkv, Kc, rows_per_sequence, heads_per_kv;
};

// The shapes, and the retrieved indices' values: on the host, or, for a device index, after a copy
// back, unless values_checked_on_device says the caller checks them there (cuda::keep_in_range).
template <class T>
GcaDims gca_check(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                  const Tensor<T>& weight, bool values_checked_on_device = false) {
  DRT_CHECK(q.rank() == 4, "gca: q must be (Z, H, M, d), got ", q.shape().str());
  DRT_CHECK(k.rank() == 5, "gca: k must be (B, E, N, Hkv, d), got ", k.shape().str());
  DRT_CHECK(k.shape() == v.shape(), "gca: k ", k.shape().str(), " and v ", v.shape().str(), " differ");
  DRT_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && index.is_contiguous() &&
                weight.is_contiguous(),
            "gca: inputs must be contiguous");
  GcaDims g{q.size(0), q.size(1), q.size(2), q.size(3), k.size(0), k.size(1), k.size(2), k.size(3), 0, 0, 0};
  DRT_CHECK(k.size(4) == g.d, "gca: head width of q ", q.shape().str(), " and k ", k.shape().str(), " differ");
  DRT_CHECK(g.Hkv > 0 && g.H % g.Hkv == 0, "gca: query heads ", g.H, " are not a multiple of kv heads ", g.Hkv);
  DRT_CHECK(index.rank() == 2 && index.size(0) == g.Z, "gca: index must be (Z, Kc) with Z = ", g.Z, ", got ",
            index.shape().str());
  DRT_CHECK(weight.shape() == index.shape(), "gca: weight ", weight.shape().str(), " and index ",
            index.shape().str(), " differ");
  DRT_CHECK(g.B > 0 && g.Z % g.B == 0, "gca: ", g.Z, " query rows do not split evenly over ", g.B, " sequences");
  g.Kc = index.size(1);
  g.rows_per_sequence = g.Z / g.B;
  g.heads_per_kv = g.H / g.Hkv;
  if (values_checked_on_device && !index.on_host()) return g;
  // The retrieved indices are checked on the host (a device index is copied back: Z·Kc numbers).
  const IndexTensor host_index = index.on_host() ? index : index.to(Device::cpu);
  const std::int32_t* idx = host_index.data();
  for (Index i = 0; i < index.numel(); ++i)
    DRT_CHECK(idx[i] >= -1 && idx[i] < g.E, "gca: retrieved chunk ", idx[i], " is outside the memory of ", g.E,
              " chunks");
  return g;
}

// The (N, d) keys or values of chunk e of sequence b, head g: a strided 2-D view.
template <class T>
Tensor<T> chunk_view(const Tensor<T>& mem, Index b, Index e, Index g) {
  return mem.select(0, b).select(0, e).select(1, g);
}

}  // namespace detail

inline constexpr Index kGcaKeyBlock = 64;  // keys per streamed block: one DRT chunk (N = 64) is one block

// Forward. Writes out (Z, H, M, d) and, for the backward, lse (Z, H, Kc, M): log Σ_n exp(s)
// of every query and slot (−inf for skipped slots). Each retrieved chunk gets its own online
// softmax over blocks of keys (running max, running sum, rescaled accumulator), as in flash
// attention, so memory per thread is O(M·block), whatever N.
template <class T>
void gca_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                 const Tensor<T>& weight, T scale, const Tensor<T>& out, const Tensor<T>& lse, Arena* arena) {
  const detail::GcaDims g = detail::gca_check(q, k, v, index, weight);
  const Index M = g.M, N = g.N, d = g.d, BN = std::min(N, kGcaKeyBlock);
  const Index per_thread = M * BN + M * d + 2 * M;  // scores, chunk accumulator, running max and sum
  const int threads = thread_slots();
  T* scratch = arena->allocate_array<T>(static_cast<std::size_t>(threads * per_thread));
  const T minus_inf = -std::numeric_limits<T>::infinity();
  out.fill(T(0));
  parallel_for_dynamic(g.Z * g.H, g.Z * g.H * g.Kc * M * N * d, [&](Index zh) {
      const Index z = zh / g.H, h = zh % g.H;
      T* mine = scratch + current_thread() * per_thread;
      T* acc = mine + M * BN;
      T* row_max = acc + M * d;
      T* row_sum = row_max + M;
      const Tensor<T> chunk_out = Tensor<T>::wrap(acc, Shape{M, d});
      const Tensor<T> qzh = q.select(0, z).select(0, h);     // (M, d)
      const Tensor<T> ozh = out.select(0, z).select(0, h);   // (M, d)
      const Index b = z / g.rows_per_sequence, kv = h / g.heads_per_kv;
      for (Index i = 0; i < g.Kc; ++i) {
        const std::int32_t e = index(z, i);
        const T w = weight(z, i);
        T* lse_row = lse.data() + ((z * g.H + h) * g.Kc + i) * M;
        if (e < 0 || w == T(0)) {  // empty slot: no work, and a marker for the backward
          std::fill(lse_row, lse_row + M, minus_inf);
          continue;
        }
        const Tensor<T> kc = detail::chunk_view(k, b, e, kv), vc = detail::chunk_view(v, b, e, kv);
        std::fill(acc, acc + M * d, T(0));
        std::fill(row_max, row_max + M, minus_inf);
        std::fill(row_sum, row_sum + M, T(0));
        for (Index n0 = 0; n0 < N; n0 += BN) {
          const Index nb = std::min(BN, N - n0);
          const Tensor<T> scores = Tensor<T>::wrap(mine, Shape{M, nb});
          gemm(qzh, kc.slice(0, n0, n0 + nb).transpose(0, 1), scores, scale, T(0), 1);  // s = scale · q kᵀ
          for (Index m = 0; m < M; ++m) {  // merge this block into the running softmax of row m
            T* s = scores.data() + m * nb;
            const T block_max = *std::max_element(s, s + nb);
            const T new_max = std::max(row_max[m], block_max);
            const T rescale = std::exp(row_max[m] - new_max);  // 0 on the first block (max was −inf)
            const T total = exp_shifted_sum(s, nb, new_max);
            row_sum[m] = row_sum[m] * rescale + total;
            row_max[m] = new_max;
            for (Index c = 0; c < d; ++c) acc[m * d + c] *= rescale;
          }
          gemm(scores, vc.slice(0, n0, n0 + nb), chunk_out, T(1), T(1), 1);  // acc += P v
        }
        for (Index m = 0; m < M; ++m) {
          lse_row[m] = row_max[m] + std::log(row_sum[m]);
          const T norm = w / row_sum[m];
          for (Index c = 0; c < d; ++c) ozh.data()[m * d + c] += norm * acc[m * d + c];  // out += w · o_i
        }
      }
  });
}

// Backward (spec §6.3). Adds into dq (Z,H,M,d), dk and dv (B,E,N,Hkv,d) and dweight (Z,Kc).
// Pass 1, parallel over rows: recompute P from lse, δ_i = ⟨dO, o_i⟩, dW_i = Σ δ_i, dQ.
// Pass 2, parallel over memory chunks: dK and dV of a chunk sum over every (row, slot) that
// retrieved it; walking chunk by chunk needs no atomics.
template <class T>
void gca_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const IndexTensor& index,
                  const Tensor<T>& weight, T scale, const Tensor<T>& lse, const Tensor<T>& dout,
                  const Tensor<T>* dq, const Tensor<T>* dk, const Tensor<T>* dv, const Tensor<T>* dweight,
                  Arena* arena) {
  const detail::GcaDims g = detail::gca_check(q, k, v, index, weight);
  const Index M = g.M, N = g.N, d = g.d;
  const int threads = thread_slots();
  // δ (Z, H, Kc, M): kept between the passes; tiny next to q.
  const Tensor<T> delta = Tensor<T>::zeros(Shape{g.Z, g.H, g.Kc, M}, arena);
  T* scratch = arena->allocate_array<T>(static_cast<std::size_t>(threads * (3 * M * N + M * d)));

  // Recomputes P = exp(scale·q kᵀ − lse) for one (row, head, slot) into `p` (M, N).
  auto probabilities = [&](Index z, Index h, Index i, const Tensor<T>& kc, const Tensor<T>& p) {
    gemm(q.select(0, z).select(0, h), kc.transpose(0, 1), p, scale, T(0), 1);
    exp_shifted_rows(p.data(), M, N, N, lse.data() + ((z * g.H + h) * g.Kc + i) * M);
  };

  parallel_for_dynamic(g.Z * g.H, g.Z * g.H * g.Kc * M * N * d, [&](Index zh) {
      const Index z = zh / g.H, h = zh % g.H;
      T* mine = scratch + current_thread() * (3 * M * N + M * d);
      const Tensor<T> p = Tensor<T>::wrap(mine, Shape{M, N});
      const Tensor<T> dp = Tensor<T>::wrap(mine + M * N, Shape{M, N});
      const Tensor<T> o = Tensor<T>::wrap(mine + 2 * M * N, Shape{M, d});
      const Tensor<T> dozh = dout.select(0, z).select(0, h);
      const Index b = z / g.rows_per_sequence, kv = h / g.heads_per_kv;
      for (Index i = 0; i < g.Kc; ++i) {
        const std::int32_t e = index(z, i);
        const T w = weight(z, i);
        if (e < 0 || w == T(0)) continue;  // nothing flowed through this slot
        const Tensor<T> kc = detail::chunk_view(k, b, e, kv), vc = detail::chunk_view(v, b, e, kv);
        probabilities(z, h, i, kc, p);
        gemm(p, vc, o, T(1), T(0), 1);                    // o_i, recomputed
        T* dl = delta.data() + ((z * g.H + h) * g.Kc + i) * M;
        for (Index m = 0; m < M; ++m) {                    // δ_i[m] = ⟨dO_m, o_i[m]⟩
          T acc = 0;
          for (Index c = 0; c < d; ++c) acc += dozh.data()[m * d + c] * o.data()[m * d + c];
          dl[m] = acc;
        }
        if (dq) {
          gemm(dozh, vc.transpose(0, 1), dp, T(1), T(0), 1);  // ⟨dO_m, v_n⟩
          for (Index m = 0; m < M; ++m)                        // dS = w · P ∘ (⟨dO, v⟩ − δ)
            for (Index n = 0; n < N; ++n) dp.data()[m * N + n] = w * p.data()[m * N + n] * (dp.data()[m * N + n] - dl[m]);
          gemm(dp, kc, dq->select(0, z).select(0, h), scale, T(1), 1);  // dQ += scale · dS k
        }
      }
  });

  if (dweight) {  // dW[z,i] = Σ_{h,m} δ
    for (Index z = 0; z < g.Z; ++z)
      for (Index i = 0; i < g.Kc; ++i) {
        T acc = 0;
        for (Index h = 0; h < g.H; ++h)
          for (Index m = 0; m < M; ++m) acc += delta.data()[((z * g.H + h) * g.Kc + i) * M + m];
        (*dweight)(z, i) += acc;
      }
  }
  if (!dk && !dv) return;

  // Pass 2: for every memory chunk (b, e) and kv head, sum over the (row, slot, head) that read it.
  parallel_for_dynamic(g.B * g.E * g.Hkv, g.Z * g.H * g.Kc * M * N * d, [&](Index bek) {
        const Index b = bek / (g.E * g.Hkv), e = (bek / g.Hkv) % g.E, kv = bek % g.Hkv;
        T* mine = scratch + current_thread() * (3 * M * N + M * d);
        const Tensor<T> p = Tensor<T>::wrap(mine, Shape{M, N});
        const Tensor<T> ds = Tensor<T>::wrap(mine + M * N, Shape{M, N});
        const Tensor<T> kc = detail::chunk_view(k, b, e, kv), vc = detail::chunk_view(v, b, e, kv);
        for (Index z = b * g.rows_per_sequence; z < (b + 1) * g.rows_per_sequence; ++z)
          for (Index i = 0; i < g.Kc; ++i) {
            const T w = weight(z, i);
            if (index(z, i) != e || w == T(0)) continue;
            for (Index h = kv * g.heads_per_kv; h < (kv + 1) * g.heads_per_kv; ++h) {
              const Tensor<T> qzh = q.select(0, z).select(0, h), dozh = dout.select(0, z).select(0, h);
              probabilities(z, h, i, kc, p);
              if (dv) gemm(p.transpose(0, 1), dozh, detail::chunk_view(*dv, b, e, kv), w, T(1), 1);  // dV += w Pᵀ dO
              if (dk) {
                const T* dl = delta.data() + ((z * g.H + h) * g.Kc + i) * M;
                gemm(dozh, vc.transpose(0, 1), ds, T(1), T(0), 1);
                for (Index m = 0; m < M; ++m)
                  for (Index n = 0; n < N; ++n) ds.data()[m * N + n] = w * p.data()[m * N + n] * (ds.data()[m * N + n] - dl[m]);
                gemm(ds.transpose(0, 1), qzh, detail::chunk_view(*dk, b, e, kv), scale, T(1), 1);  // dK += scale dSᵀ q
              }
            }
          }
  });
}

// The differentiable op. q, k, v and weight may all require gradients; index never does. On a
// GPU (all of q, k, v, weight there; index anywhere) the kernels of drt/cuda/attention/gca.cuh run.
template <class T>
Var<T> gca(const Var<T>& q, const Var<T>& k, const Var<T>& v, const IndexTensor& index, const Var<T>& weight, T scale) {
  Arena* arena = step_arena();
  const Device device = q.device();
  const Tensor<T> qc = q.value().contiguous(arena), kc = k.value().contiguous(arena), vc = v.value().contiguous(arena);
  const Tensor<T> wc = weight.value().contiguous(arena);
  IndexTensor ic = index.to(device, arena).contiguous(arena);
  const Tensor<T> out = Tensor<T>::empty(q.shape(), arena, device);
  const Tensor<T> lse = Tensor<T>::empty(Shape{q.size(0), q.size(1), ic.size(1), q.size(2)}, arena, device);
  // On a GPU in bf16 the kernels read bf16 copies of k and v (cuda/bf16.cuh, bf16_operand). The
  // ones the forward read (its own, or those of an enclosing scope naming the chunk memory, as the
  // model's) are kept for the backward, which would otherwise round the whole memory again.
  std::vector<RoundedOperandReuse::Entry> rounded_memory;
  if (device != Device::cpu) {
    // A host index is checked where it is. A device index (the retrieval's) is checked on the GPU
    // without a wait: the kernels read a copy whose bad entries are −1 (skipped slots), and the
    // first bad one is thrown at the next wait for the GPU (cuda/deferred_check.cuh).
    const bool host_index = index.on_host();
    const detail::GcaDims g = detail::gca_check(qc, kc, vc, host_index ? index.contiguous(arena) : ic, wc, true);
    if (!host_index) {
      const IndexTensor checked = IndexTensor::empty(ic.shape(), arena, device);
      DRT_ON_DEVICE("gca", cuda::keep_in_range(ic.data(), checked.data(), ic.numel(), static_cast<int>(g.E),
                                               cuda::CheckedIndex::gca_retrieved_chunk));
      ic = checked;
    }
    const std::vector<const void*> chunk_memory{kc.data(), vc.data()};
    RoundedOperandReuse reuse(chunk_memory);
    DRT_ON_DEVICE("gca", cuda::gca_forward(qc, kc, vc, ic, wc, scale, out, lse));
    for (const Tensor<T>* m : {&kc, &vc})
      if (std::shared_ptr<void> copy = reuse.find(m->data(), m->numel()))
        rounded_memory.push_back({m->data(), m->numel(), std::move(copy)});
  } else {
    gca_forward(qc, kc, vc, ic, wc, scale, out, lse, arena);
  }
  Var<T> result = make_output(out, {&q, &k, &v, &weight});
  if (result.requires_grad())
    record_backward(result, [=] {
      Arena* a = step_arena();
      const detail::QkvGradientSlots<T> g(q, k, v);
      const Tensor<T> dw = weight.requires_grad() ? weight.node()->grad_buffer() : Tensor<T>();
      DRT_CHECK(g.contiguous() && (!dw.defined() || dw.is_contiguous()), "gca: gradient buffers must be contiguous");
      const Tensor<T> dout = result.grad().contiguous(a);
      const Tensor<T>* dw_or_null = dw.defined() ? &dw : nullptr;
      if (device != Device::cpu) {
        const std::vector<const void*> chunk_memory{kc.data(), vc.data()};
        RoundedOperandReuse reuse(chunk_memory);
        for (const RoundedOperandReuse::Entry& e : rounded_memory) reuse.remember(e.source, e.elements, e.copy);
        DRT_ON_DEVICE("gca", cuda::gca_backward(qc, kc, vc, ic, wc, scale, lse, dout, g.dq_or_null(), g.dk_or_null(),
                                                g.dv_or_null(), dw_or_null,
                                                cuda::attention::FreshGradients{g.fresh_dq, g.fresh_dk, g.fresh_dv}));
      } else {
        g.zero_fresh();
        gca_backward(qc, kc, vc, ic, wc, scale, lse, dout, g.dq_or_null(), g.dk_or_null(), g.dv_or_null(), dw_or_null, a);
      }
    });
  return result;
}

}  // namespace drt
