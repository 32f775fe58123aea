// drt/core/reduce.hpp — reductions along one axis, and summing a broadcast back to a shape.
//
// Shapes: x (..., A, ...) reduced along the axis of extent A → (..., ...), or (..., 1, ...)
// with keepdim. Inputs may be any strided view. Every function here also takes device tensors:
// sum and max through the device backend (drt/core/device.hpp), sum_all and add_sum_to through
// their kernels in drt/cuda/core/reduce.cuh (in files nvcc compiles).
#pragma once

#include <limits>

#include "drt/core/expr.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/core/reduce.cuh"
#endif

namespace drt {
namespace detail {

inline Shape reduced_shape(const Shape& s, int axis, bool keepdim) {
  Shape out;
  for (int i = 0; i < s.rank(); ++i) {
    if (i != axis) out.push_back(s[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// Calls f(out_index, input_offset_of_first, axis_stride) for each output element, where the
// elements to reduce are input[first + k * axis_stride] for k < extent.
template <class T, class F>
void for_each_lane(const Tensor<T>& x, int axis, F&& f) {
  Shape outer;
  Strides outer_strides{};
  for (int i = 0, j = 0; i < x.rank(); ++i)
    if (i != axis) {
      outer.push_back(x.shape()[i]);
      outer_strides[j++] = x.strides()[i];
    }
  x.require_host("reduction");
  parallel_for(outer.numel(), x.numel(), [&](Index lane) {
    Index rest = lane, off = 0;
    for (int d = outer.rank() - 1; d >= 0; --d) {
      off += (rest % outer[d]) * outer_strides[d];
      rest /= outer[d];
    }
    f(lane, off, x.strides()[axis]);
  });
}

// The lanes of `x` along `axis`, as the device backend takes them.
template <class T>
LaneLayout lane_layout(const Tensor<T>& x, int axis) {
  LaneLayout l{};
  for (int i = 0, j = 0; i < x.rank(); ++i)
    if (i != axis) {
      l.outer.push_back(x.shape()[i]);
      l.outer_strides[j++] = x.strides()[i];
    }
  l.n = x.shape()[axis];
  l.step = x.strides()[axis];
  return l;
}

// out ← reduction of x along `axis` on x's device; argmax may be null.
template <class T>
void reduce_on_device(ReduceKind kind, const Tensor<T>& x, int axis, const Tensor<T>& out, std::int32_t* argmax) {
  DRT_CHECK(dtype_of<T>() != DType::other, "reduction: device reductions need float, double, int32 or int64");
  if (out.numel() == 0) return;
  device_backend(x.device()).reduce(dtype_of<T>(), kind, x.data(), lane_layout(x, axis), out.data(), argmax);
}

}  // namespace detail

// Sum along `axis` (negative counts from the end).
template <class T>
Tensor<T> sum(const Tensor<T>& x, int axis, bool keepdim = false, Arena* arena = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  Tensor<T> out = Tensor<T>::empty(detail::reduced_shape(x.shape(), a, keepdim), arena, x.device());
  if (!x.on_host()) {
    detail::reduce_on_device(ReduceKind::sum, x, a, out, nullptr);
    return out;
  }
  const Index n = x.shape()[a];
  const T* in = x.data();
  T* o = out.data();
  detail::for_each_lane(x, a, [&](Index lane, Index first, Index step) {
    T acc = T(0);
    for (Index k = 0; k < n; ++k) acc += in[first + k * step];
    o[lane] = acc;
  });
  return out;
}

template <class T>
Tensor<T> mean(const Tensor<T>& x, int axis, bool keepdim = false, Arena* arena = nullptr) {
  Tensor<T> s = sum(x, axis, keepdim, arena);
  const Index n = x.shape().dim(axis);
  s.assign(s * (n ? T(1) / T(n) : std::numeric_limits<T>::quiet_NaN()));
  return s;
}

// Maximum along `axis`; if `argmax` is given it receives the (first) position of the maximum.
template <class T>
Tensor<T> max(const Tensor<T>& x, int axis, bool keepdim = false, Arena* arena = nullptr,
              IndexTensor* argmax = nullptr) {
  const int a = x.shape().normalize_axis(axis);
  DRT_CHECK(x.shape()[a] > 0, "max: axis ", a, " of shape ", x.shape().str(), " is empty");
  const Shape rs = detail::reduced_shape(x.shape(), a, keepdim);
  Tensor<T> out = Tensor<T>::empty(rs, arena, x.device());
  if (argmax) *argmax = IndexTensor::empty(rs, arena, x.device());
  if (!x.on_host()) {
    detail::reduce_on_device(ReduceKind::max, x, a, out, argmax ? argmax->data() : nullptr);
    return out;
  }
  const Index n = x.shape()[a];
  const T* in = x.data();
  T* o = out.data();
  std::int32_t* am = argmax ? argmax->data() : nullptr;
  detail::for_each_lane(x, a, [&](Index lane, Index first, Index step) {
    T best = in[first];
    Index where = 0;
    for (Index k = 1; k < n; ++k)
      if (in[first + k * step] > best) best = in[first + k * step], where = k;
    o[lane] = best;
    if (am) am[lane] = static_cast<std::int32_t>(where);
  });
  return out;
}

// Sum of all elements as a one-element tensor of shape () on x's device (on a device, nothing
// is copied to the host: the sum stays there for the next kernel).
template <class T>
Tensor<T> sum_all_tensor(const Tensor<T>& x, Arena* arena = nullptr);

// Sum of all elements (on a device: the sum, then one value copied back).
template <class T>
T sum_all(const Tensor<T>& x) {
  if (!x.on_host()) return sum_all_tensor(x).item();
  T acc = T(0);
  x.for_each_offset([&](Index off) { acc += x.data()[off]; });
  return acc;
}

template <class T>
Tensor<T> sum_all_tensor(const Tensor<T>& x, Arena* arena) {
  if (!x.on_host()) {
    Tensor<T> out = Tensor<T>::empty(Shape{}, arena, x.device());
    DRT_ON_DEVICE("sum_all", cuda::sum_all(x, out));
    return out;
  }
  return Tensor<T>::full(Shape{}, sum_all(x), arena);
}

// dst += x summed over the axes along which dst was broadcast to x's shape. This is the
// backward of broadcasting: e.g. x (B, T, D) into dst (D) or dst (B, 1, D).
template <class T>
void add_sum_to(const Tensor<T>& dst, const Tensor<T>& x) {
  DRT_CHECK(broadcastable_to(dst.shape(), x.shape()), "sum_to: shape ", x.shape().str(),
            " cannot be summed to ", dst.shape().str());
  if (dst.shape() == x.shape()) {
    dst += x;
    return;
  }
  if (!dst.on_host() || !x.on_host()) {
    DRT_CHECK(dst.device() == x.device(), "add_sum_to: the destination lives on ", device_name(dst.device()),
              " but the summed tensor on ", device_name(x.device()));
    DRT_ON_DEVICE("add_sum_to", cuda::add_sum_to(dst, x));
    return;
  }
  // Walk x; the broadcast view of dst (stride 0 on summed axes) names where each element goes.
  const Tensor<T> target = dst.broadcast_to(x.shape());
  Index idx[kMaxRank] = {};
  Index ox = 0, od = 0;
  const int r = x.rank();
  for (Index n = x.numel(); n > 0; --n) {
    target.data()[od] += x.data()[ox];
    for (int k = r - 1; k >= 0; --k) {
      if (++idx[k] < x.shape()[k]) {
        ox += x.strides()[k];
        od += target.strides()[k];
        break;
      }
      ox -= (x.shape()[k] - 1) * x.strides()[k];
      od -= (x.shape()[k] - 1) * target.strides()[k];
      idx[k] = 0;
    }
  }
}

}  // namespace drt
