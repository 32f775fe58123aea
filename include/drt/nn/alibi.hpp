// drt/nn/alibi.hpp — ALiBi: attention scores penalised linearly with query–key distance.
//
// Shapes: slopes (H) for H heads; scores (..., H, Tq, Tk) → (..., H, Tq, Tk):
//   out[..., h, i, j] = scores[..., h, i, j] − m_h · ((i + query_offset) − j),   m_h = 2^(−8(h+1)/H).
// query_offset is the absolute position of query 0 (queries that continue a cached sequence).
// The bias is a constant: the gradient w.r.t. the scores is the identity; slopes get none.
// The slopes (usually the host tensor of alibi_slopes) are copied to the scores' device when they
// live elsewhere; device scores get the bias from drt/cuda/nn/alibi.cuh.
#pragma once

#include <cmath>

#include "drt/autodiff/var.hpp"
#include "drt/nn/lanes.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/alibi.cuh"
#endif

namespace drt {

// The geometric slopes of the ALiBi paper, m_h = 2^(−8(h+1)/H), for any number of heads.
template <class T>
Tensor<T> alibi_slopes(int heads, Arena* arena = nullptr) {
  DRT_CHECK(heads > 0, "alibi_slopes: the number of heads must be positive, got ", heads);
  Tensor<T> m = Tensor<T>::empty(Shape{heads}, arena);
  for (int h = 0; h < heads; ++h) m.data()[h] = static_cast<T>(std::exp2(-8.0 * (h + 1) / heads));
  return m;
}

template <class T>
Var<T> add_alibi(const Var<T>& scores, const Tensor<T>& slopes, Index query_offset) {
  DRT_CHECK(scores.rank() >= 3 && slopes.rank() == 1 && slopes.size(0) == scores.size(-3), "add_alibi: scores of shape ",
            scores.shape().str(), " need (..., H, Tq, Tk) with slopes (H), got slopes of shape ", slopes.shape().str());
  const Tensor<T>& s = scores.value();
  const Index H = s.size(-3), Tq = s.size(-2), Tk = s.size(-1);
  const Tensor<T> slopes_here = slopes.to(s.device(), step_arena());  // no copy when already there
  const Index ss = detail::row_step(s), ms = slopes_here.strides()[0];
  Tensor<T> y = Tensor<T>::empty(s.shape(), step_arena(), s.device());
  if (!s.on_host()) {
    DRT_ON_DEVICE("add_alibi", cuda::add_alibi_forward(s, slopes_here, query_offset, y));
  } else {
    detail::parallel_for_lanes(detail::row_count(s.shape()), s.numel(), [&](Index row) {
      const Index i = row % Tq, h = (row / Tq) % H;
      const T m = slopes_here.data()[h * ms];
      const T* in = s.data() + detail::row_offset(s, row);
      T* out = y.data() + row * Tk;
      for (Index j = 0; j < Tk; ++j) out[j] = in[j * ss] - m * static_cast<T>(i + query_offset - j);
    });
  }
  Var<T> out = make_output(y, {&scores});
  if (out.requires_grad()) record_backward(out, [scores, out] { scores.accumulate_grad_of(out); });
  return out;
}

}  // namespace drt
