// drt/autodiff/indexing.hpp — differentiable picking by integer index, and the embedding lookup.
//
// Shapes: index_select  x (..., A, ...), index (N)             → (..., N, ...)
//         gather        x (..., A, ...), index (..., N, ...)   → index's shape (same rank as x)
//         scatter_add   base (..., A, ...), src ⊇ index (..., N, ...) → base's shape
//         embedding     weight (V, D), ids (...)               → (..., D)
//
// The index tensors are constants (no gradient). Backward scatters gradients back to the rows
// that were read; a row read several times receives the sum of their gradients, which is why
// those loops run on one thread.
#pragma once

#include <cstdint>

#include "drt/autodiff/var.hpp"
#include "drt/core/indexing.hpp"

namespace drt {

// out.select(axis, i) = x.select(axis, index[i]);  dx.select(axis, index[i]) += g.select(axis, i)
template <class T>
Var<T> index_select(const Var<T>& x, int axis, const IndexTensor& index) {
  const int a = x.shape().normalize_axis(axis);
  Var<T> out = make_output(index_select(x.value(), a, index, step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, index, out] {
      const Tensor<T>& dx = x.node()->grad_buffer();
      const Tensor<T>& g = out.grad();
      const Index rows = g.shape()[a], step = index.strides()[0];
      for (Index i = 0; i < rows; ++i) dx.select(a, index.data()[i * step]) += g.select(a, i);
    });
  return out;
}

// torch.gather;  dx = scatter_add of g at the same indices
template <class T>
Var<T> gather(const Var<T>& x, int axis, const IndexTensor& index) {
  const int a = x.shape().normalize_axis(axis);
  Var<T> out = make_output(gather(x.value(), a, index, step_arena()), {&x});
  if (out.requires_grad())
    record_backward(out, [x, a, index, out] { scatter_add(x.node()->grad_buffer(), a, index, out.grad()); });
  return out;
}

// out = base with src scattered into it (adding) at index;  dbase = g,  dsrc = gather(g, index)
// on the block of src that index covers (the rest of src is not read, so gets nothing).
template <class T>
Var<T> scatter_add(const Var<T>& base, int axis, const IndexTensor& index, const Var<T>& src) {
  const int a = base.shape().normalize_axis(axis);
  Tensor<T> value = base.value().clone(step_arena());
  scatter_add(value, a, index, src.value());
  Var<T> out = make_output(value, {&base, &src});
  if (out.requires_grad())
    record_backward(out, [base, a, index, src, out] {
      base.accumulate_grad(out.grad());
      if (src.requires_grad()) {
        Tensor<T> covered = src.node()->grad_buffer();
        for (int d = 0; d < index.rank(); ++d) covered = covered.slice(d, 0, index.shape()[d]);
        covered += gather(out.grad(), a, index, step_arena());
      }
    });
  return out;
}

// out[..., :] = weight[ids[...], :];  dweight[id] += g[...] for every position holding id,
// except id == padding_idx, whose row is read like any other but never trained (PyTorch's
// padding_idx). padding_idx < 0 means no padding row.
template <class T>
Var<T> embedding(const Var<T>& weight, const IndexTensor& ids, int padding_idx = -1) {
  DRT_CHECK(weight.rank() == 2, "embedding: weight must be (V, D), got shape ", weight.shape().str());
  const Index V = weight.size(0), D = weight.size(1);
  DRT_CHECK(padding_idx < V, "embedding: padding_idx ", padding_idx, " is outside the vocabulary [0, ", V, ")");
  DRT_CHECK(ids.rank() < kMaxRank, "embedding: ids of shape ", ids.shape().str(), " leave no room for the D axis");
  ids.for_each_offset([&](Index off) {
    const std::int32_t id = ids.data()[off];
    DRT_CHECK(id >= 0 && id < V, "embedding: id ", id, " is outside the vocabulary [0, ", V, ") of weight ",
              weight.shape().str());
  });
  // The id at row-major position r of ids (which may be a strided view).
  auto id_at = [ids, contiguous = ids.is_contiguous()](Index r) -> Index {
    return ids.data()[contiguous ? r : detail::offset_of(ids.shape(), ids.strides(), r)];
  };

  Shape shape = ids.shape();
  shape.push_back(D);
  Tensor<T> value = Tensor<T>::empty(shape, step_arena());
  const Tensor<T>& w = weight.value();
  const Index rows = ids.numel(), w_row = w.strides()[0], w_col = w.strides()[1];
  T* o = value.data();
  parallel_for(rows, value.numel(), [&](Index r) {
    const T* src = w.data() + id_at(r) * w_row;
    for (Index j = 0; j < D; ++j) o[r * D + j] = src[j * w_col];
  });

  Var<T> out = make_output(value, {&weight});
  if (out.requires_grad())
    record_backward(out, [weight, id_at, rows, D, padding_idx, out] {
      const Tensor<T>& dw = weight.node()->grad_buffer();
      const T* g = out.grad().data();
      for (Index r = 0; r < rows; ++r) {
        const Index id = id_at(r);
        if (id == padding_idx) continue;
        T* dst = dw.data() + id * dw.strides()[0];
        for (Index j = 0; j < D; ++j) dst[j * dw.strides()[1]] += g[r * D + j];
      }
    });
  return out;
}

}  // namespace drt
