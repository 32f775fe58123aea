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
//
// On a device (values on the GPU): a host index is checked on the host and copied over once, in
// forward; the device copy is what backward uses. Forward is a gather kernel, backward a
// scatter_add kernel (atomic additions) — drt/cuda/core/indexing.cuh. A host value with a device
// index has its index copied back first.
#pragma once

#include <cstdint>
#include <optional>

#include "drt/autodiff/var.hpp"
#include "drt/core/indexing.hpp"

namespace drt {

// out.select(axis, i) = x.select(axis, index[i]);  dx.select(axis, index[i]) += g.select(axis, i)
template <class T>
Var<T> index_select(const Var<T>& x, int axis, const IndexTensor& index) {
  const int a = x.shape().normalize_axis(axis);
  if (!x.value().on_host()) {
    DRT_CHECK(index.rank() == 1, "index_select: index must be 1-D, got shape ", index.shape().str(), " for input ",
              x.shape().str());
    const IndexTensor idx = detail::checked_indices_on(x.device(), index, x.size(a), "index_select", x.shape(), a);
    Shape s = x.shape();
    s[a] = index.shape()[0];
    Tensor<T> value = Tensor<T>::empty(s, step_arena(), x.device());
    detail::gather_on_device(x.value(), a, detail::along_axis(idx, s, a), value);
    Var<T> out = make_output(value, {&x});
    if (out.requires_grad())
      record_backward(out, [x, a, idx, out] {
        const Tensor<T>& g = out.grad();
        detail::scatter_add_on_device(x.node()->grad_buffer(), a, detail::along_axis(idx, g.shape(), a), g);
      });
    return out;
  }
  if (!index.on_host()) return index_select(x, a, index.to(Device::cpu));
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
  if (!x.value().on_host()) {
    detail::check_index_fits("gather", "input", x.shape(), a, index.shape());
    const IndexTensor idx = detail::checked_indices_on(x.device(), index, x.size(a), "gather", x.shape(), a);
    Tensor<T> value = Tensor<T>::empty(index.shape(), step_arena(), x.device());
    detail::gather_on_device(x.value(), a, idx, value);
    Var<T> out = make_output(value, {&x});
    if (out.requires_grad())
      record_backward(out, [x, a, idx, out] { detail::scatter_add_on_device(x.node()->grad_buffer(), a, idx, out.grad()); });
    return out;
  }
  if (!index.on_host()) return gather(x, a, index.to(Device::cpu));
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
  if (!base.value().on_host() || !src.value().on_host()) {
    detail::check_same_device("scatter_add", "the base", base.device(), "the source", src.device());
    detail::check_index_fits("scatter_add", "destination", base.shape(), a, index.shape());
    detail::check_index_fits("scatter_add", "source", src.shape(), -1, index.shape());
    const IndexTensor idx = detail::checked_indices_on(base.device(), index, base.size(a), "scatter_add", base.shape(), a);
    Tensor<T> value = base.value().clone(step_arena());
    detail::scatter_add_on_device(value, a, idx, src.value());
    Var<T> out = make_output(value, {&base, &src});
    if (out.requires_grad())
      record_backward(out, [base, a, idx, src, out] {
        base.accumulate_grad(out.grad());
        if (src.requires_grad()) {
          Tensor<T> covered = src.node()->grad_buffer();
          for (int d = 0; d < idx.rank(); ++d) covered = covered.slice(d, 0, idx.shape()[d]);
          const Tensor<T> picked = Tensor<T>::empty(idx.shape(), step_arena(), idx.device());
          detail::gather_on_device(out.grad(), a, idx, picked);
          covered += picked;
        }
      });
    return out;
  }
  if (!index.on_host()) return scatter_add(base, a, index.to(Device::cpu), src);
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
  if (!ids.on_host()) {
    const std::optional<std::int32_t> bad = detail::first_out_of_range_on_device(ids, V, "embedding");
    DRT_CHECK(!bad, "embedding: id ", *bad, " is outside the vocabulary [0, ", V, ") of weight ", weight.shape().str());
    if (weight.value().on_host()) return embedding(weight, ids.to(Device::cpu), padding_idx);
  } else {
    ids.for_each_offset([&](Index off) {
      const std::int32_t id = ids.data()[off];
      DRT_CHECK(id >= 0 && id < V, "embedding: id ", id, " is outside the vocabulary [0, ", V, ") of weight ",
                weight.shape().str());
    });
  }
  if (!weight.value().on_host()) {
    // The ids row-major on the device; out (R, D) with row r = weight row ids[r] (a gather along
    // axis 0 with the ids broadcast along D), and backward the matching scatter_add, skipping
    // the padding row.
    const IndexTensor flat = ids.to(weight.device()).contiguous(step_arena()).reshape(Shape{ids.numel()});
    const Index R = ids.numel();
    Shape shape = ids.shape();
    shape.push_back(D);
    Tensor<T> value = Tensor<T>::empty(shape, step_arena(), weight.device());
    const IndexTensor rows = detail::along_axis(flat, Shape{R, D}, 0);
    detail::gather_on_device(weight.value(), 0, rows, value.reshape(Shape{R, D}));
    Var<T> out = make_output(value, {&weight});
    if (out.requires_grad())
      record_backward(out, [weight, rows, R, D, padding_idx, out] {
        detail::scatter_add_on_device(weight.node()->grad_buffer(), 0, rows, out.grad().reshape(Shape{R, D}),
                                      padding_idx < 0 ? -1 : padding_idx);
      });
    return out;
  }
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
