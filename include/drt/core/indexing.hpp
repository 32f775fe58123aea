// drt/core/indexing.hpp — joining tensors, and picking elements by integer index (no autodiff).
//
// Shapes: concat        parts (..., Aᵢ, ...) along an axis      → (..., ΣAᵢ, ...)
//         index_select  x (..., A, ...), index (N)               → (..., N, ...)
//         gather        x (..., A, ...), index (..., N, ...)     → index's shape (same rank as x)
//         scatter_add   dst (..., A, ...) += src (..., N, ...) at index (..., N, ...), gather's inverse
//
// Indices are int32 (IndexTensor) and may be any strided view. Outputs come from `arena` when
// one is given, else from the heap. Every index is checked before anything is written, so a bad
// index throws drt::Error and leaves the destination untouched (and no check runs inside a
// parallel loop, where an exception could not escape).
//
// On a device (values on the GPU): the indices may be a host IndexTensor (checked on the host,
// then copied over) or already on the device (checked by a kernel that reports the first bad
// index, with the same message). The kernels are in drt/cuda/core/indexing.cuh (nvcc only).
// A host tensor with device indices has its indices copied back first.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "drt/core/expr.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/core/indexing.cuh"
#endif

namespace drt {
namespace detail {

// The memory offset of the element at row-major position `flat` of a strided tensor.
inline Index offset_of(const Shape& shape, const Strides& strides, Index flat) {
  Index off = 0;
  for (int d = shape.rank() - 1; d >= 0; --d) {
    off += (flat % shape[d]) * strides[d];
    flat /= shape[d];
  }
  return off;
}

// The first value of a device index (row-major order) outside [0, extent), if any; waits for
// the device.
inline std::optional<std::int32_t> first_out_of_range_on_device(const IndexTensor& index, Index extent, const char* op) {
  std::optional<std::int32_t> bad;
  DRT_ON_DEVICE(op, bad = cuda::first_out_of_range(index, extent));
  return bad;
}

// Throws unless every value of `index` lies in [0, extent).
inline void check_indices(const IndexTensor& index, Index extent, const char* op, const Shape& x_shape, int axis) {
  if (!index.on_host()) {
    const std::optional<std::int32_t> bad = first_out_of_range_on_device(index, extent, op);
    DRT_CHECK(!bad, op, ": index ", *bad, " is out of range for axis ", axis, " of extent ", extent, " (shape ",
              x_shape.str(), ")");
    return;
  }
  index.for_each_offset([&](Index off) {
    const std::int32_t i = index.data()[off];
    DRT_CHECK(i >= 0 && i < extent, op, ": index ", i, " is out of range for axis ", axis, " of extent ", extent,
              " (shape ", x_shape.str(), ")");
  });
}

// The shape of `count` parts joined along `axis` (already normalised); shape_of(i) is part i's.
template <class ShapeOf>
Shape concat_shape(int count, int axis, ShapeOf shape_of) {
  const Shape first = shape_of(0);
  Shape out = first;
  for (int i = 1; i < count; ++i) {
    const Shape s = shape_of(i);
    bool same = s.rank() == first.rank();
    for (int d = 0; same && d < s.rank(); ++d) same = d == axis || s[d] == first[d];
    DRT_CHECK(same, "concat: shapes ", first.str(), " and ", s.str(), " differ outside axis ", axis);
    out[axis] += s[axis];
  }
  return out;
}

// gather/scatter_add: `index` has x's rank and is no longer than x on any axis other than
// `free_axis` (-1: on no axis at all).
inline void check_index_fits(const char* op, const char* x_name, const Shape& x, int free_axis, const Shape& index) {
  bool fits = index.rank() == x.rank();
  for (int d = 0; fits && d < x.rank(); ++d) fits = d == free_axis || index[d] <= x[d];
  DRT_CHECK(fits, op, ": index of shape ", index.str(), " does not fit ", x_name, " of shape ", x.str(),
            " (it needs the same rank and no larger extent",
            free_axis >= 0 ? " outside axis " + std::to_string(free_axis) : std::string(), ")");
}

// For the element at row-major position `flat` of `index`: its offset in `index`, and the offset
// in a tensor with strides `x_strides` of the same position with the axis coordinate left out
// (the caller adds index_value * x_strides[axis]).
inline void gather_offsets(const IndexTensor& index, const Strides& x_strides, int axis, Index flat,
                           Index& index_off, Index& x_off) {
  index_off = 0, x_off = 0;
  for (int d = index.rank() - 1; d >= 0; --d) {
    const Index c = flat % index.shape()[d];
    flat /= index.shape()[d];
    index_off += c * index.strides()[d];
    if (d != axis) x_off += c * x_strides[d];
  }
}

// `index` on `device`, every value checked to lie in [0, extent) first (on the host for a host
// index, which is then copied; by a kernel for an index already there).
inline IndexTensor checked_indices_on(Device device, const IndexTensor& index, Index extent, const char* op,
                                      const Shape& x_shape, int axis) {
  check_indices(index, extent, op, x_shape, axis);
  return index.to(device);
}

// A 1-D index (N) seen with `shape`, whose `axis` extent is N: index[i] at every position whose
// `axis` coordinate is i (stride 0 along the other axes). This turns index_select into a gather.
inline IndexTensor along_axis(const IndexTensor& index, const Shape& shape, int axis) {
  IndexTensor t = index;
  for (int d = 0; d < axis; ++d) t = t.unsqueeze(0);
  while (t.rank() < shape.rank()) t = t.unsqueeze(-1);
  return t.broadcast_to(shape);
}

// The device kernels, without checks: the indices are in range and on the tensors' device
// (drt/cuda/core/indexing.cuh says what they compute). `skip`: an index value that adds nothing.
template <class T>
void gather_on_device(const Tensor<T>& x, int axis, const IndexTensor& index, const Tensor<T>& out) {
  DRT_ON_DEVICE("gather", cuda::gather(x, axis, index, out));
}
template <class T>
void scatter_add_on_device(const Tensor<T>& dst, int axis, const IndexTensor& index, const Tensor<T>& src,
                           std::int32_t skip = -1) {
  DRT_ON_DEVICE("scatter_add", cuda::scatter_add(dst, axis, index, src, skip));
}

inline void check_same_device(const char* op, const char* a_name, Device a, const char* b_name, Device b) {
  DRT_CHECK(a == b, op, ": ", a_name, " lives on ", device_name(a), " but ", b_name, " on ", device_name(b),
            "; copy one with to() first");
}

}  // namespace detail

// Joins tensors along `axis`; every other extent must match.
template <class T>
Tensor<T> concat(const Tensor<T>* parts, int count, int axis, Arena* arena = nullptr) {
  DRT_CHECK(count > 0, "concat: no tensors to concatenate");
  const int a = parts[0].shape().normalize_axis(axis);
  const Device device = parts[0].device();
  Tensor<T> out =
      Tensor<T>::empty(detail::concat_shape(count, a, [&](int i) { return parts[i].shape(); }), arena, device);
  Index begin = 0;
  for (int i = 0; i < count; ++i) {
    const Index n = parts[i].shape()[a];
    if (device != Device::cpu) {  // a device copy (through the backend: any file may call this)
      detail::check_same_device("concat", "part 0", device, "another part", parts[i].device());
      out.slice(a, begin, begin + n).copy_from(parts[i]);
    } else {
      out.slice(a, begin, begin + n).assign(parts[i]);
    }
    begin += n;
  }
  return out;
}
template <class T>
Tensor<T> concat(std::initializer_list<Tensor<T>> parts, int axis, Arena* arena = nullptr) {
  return concat(parts.begin(), static_cast<int>(parts.size()), axis, arena);
}

// out.select(axis, i) = x.select(axis, index[i]).
template <class T>
Tensor<T> index_select(const Tensor<T>& x, int axis, const IndexTensor& index, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  DRT_CHECK(index.rank() == 1, "index_select: index must be 1-D, got shape ", index.shape().str(), " for input ",
            x.shape().str());
  Shape s = x.shape();
  s[a] = index.shape()[0];
  if (!x.on_host()) {
    const IndexTensor idx = detail::checked_indices_on(x.device(), index, x.shape()[a], "index_select", x.shape(), a);
    Tensor<T> out = Tensor<T>::empty(s, arena, x.device());
    detail::gather_on_device(x, a, detail::along_axis(idx, s, a), out);
    return out;
  }
  if (!index.on_host()) return index_select(x, a, index.to(Device::cpu), arena);
  detail::check_indices(index, x.shape()[a], "index_select", x.shape(), a);
  Tensor<T> out = Tensor<T>::empty(s, arena);
  const Index rows = s[a], step = index.strides()[0];
  const std::int32_t* ids = index.data();
  parallel_for(rows, out.numel(), [&](Index i) { out.select(a, i).copy_from(x.select(a, ids[i * step])); });
  return out;
}

// torch.gather: out[p] = x[p with its `axis` coordinate replaced by index[p]], for every
// position p of index.
template <class T>
Tensor<T> gather(const Tensor<T>& x, int axis, const IndexTensor& index, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  detail::check_index_fits("gather", "input", x.shape(), a, index.shape());
  if (!x.on_host()) {
    const IndexTensor idx = detail::checked_indices_on(x.device(), index, x.shape()[a], "gather", x.shape(), a);
    Tensor<T> out = Tensor<T>::empty(index.shape(), arena, x.device());
    detail::gather_on_device(x, a, idx, out);
    return out;
  }
  if (!index.on_host()) return gather(x, a, index.to(Device::cpu), arena);
  detail::check_indices(index, x.shape()[a], "gather", x.shape(), a);
  Tensor<T> out = Tensor<T>::empty(index.shape(), arena);
  const Index n = out.numel();
  const T* in = x.data();
  T* o = out.data();
  parallel_for(n, n, [&](Index p) {
    Index index_off, x_off;
    detail::gather_offsets(index, x.strides(), a, p, index_off, x_off);
    o[p] = in[x_off + index.data()[index_off] * x.strides()[a]];
  });
  return out;
}

// dst[p with its `axis` coordinate replaced by index[p]] += src[p], for every position p of
// index (src may be larger than index; the rest of src is ignored). Repeated targets accumulate,
// which is why this runs on one thread (on a device: one thread per position, adding atomically).
template <class T>
void scatter_add(const Tensor<T>& dst, int axis, const IndexTensor& index, const Tensor<T>& src) {
  const int a = dst.shape().normalize_axis(axis);
  detail::check_index_fits("scatter_add", "destination", dst.shape(), a, index.shape());
  detail::check_index_fits("scatter_add", "source", src.shape(), -1, index.shape());
  if (!dst.on_host() || !src.on_host()) {
    detail::check_same_device("scatter_add", "the destination", dst.device(), "the source", src.device());
    const IndexTensor idx = detail::checked_indices_on(dst.device(), index, dst.shape()[a], "scatter_add", dst.shape(), a);
    detail::scatter_add_on_device(dst, a, idx, src);
    return;
  }
  if (!index.on_host()) return scatter_add(dst, a, index.to(Device::cpu), src);
  detail::check_indices(index, dst.shape()[a], "scatter_add", dst.shape(), a);
  const Index n = index.numel();
  for (Index p = 0; p < n; ++p) {
    Index index_off, dst_off;
    detail::gather_offsets(index, dst.strides(), a, p, index_off, dst_off);
    const Index src_off = detail::offset_of(index.shape(), src.strides(), p);
    dst.data()[dst_off + index.data()[index_off] * dst.strides()[a]] += src.data()[src_off];
  }
}

}  // namespace drt
