// drt/cuda/evaluate.cuh — an expression template evaluated as ONE fused CUDA kernel.
//
//     d.assign(silu(a) * b + c * exp(-a));   // a, b, c, d on the device: one kernel, one pass
//
// Included by drt/core/expr.hpp when nvcc compiles it (never by a host compiler). The host-side
// expression (Leaf/Scalar/Unary/Binary/Select nodes) is bound to the destination's shape as on
// the CPU, then "lowered" into a small device-side copy of the same tree: a Leaf becomes a data
// pointer and its walking strides, every other node keeps its function object (host-device, so
// the kernel computes the CPU's formula). The lowered tree is passed to the kernel by value, and
// the compiler inlines it into a single loop body, as on the CPU.
//
// Two kernels, as the CPU has two loops:
//   * flat: destination contiguous and every leaf contiguous with its shape: out[i] = e(i);
//   * strided: any views and broadcasting: each thread turns its flat index into a multi-index
//     of the destination (32-bit arithmetic when the tensor is small enough: 64-bit division is
//     slow on the GPU) and each leaf adds up its own strides.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace detail {

// ---- the device-side tree --------------------------------------------------------------------

template <class T>
struct DeviceLeaf {
  const T* data;
  Index walk[kMaxRank];
  __device__ T flat(Index i) const { return data[i]; }
  __device__ T at(const Index* idx) const {
    Index off = 0;
#pragma unroll
    for (int d = 0; d < kMaxRank; ++d) off += idx[d] * walk[d];  // unused axes have idx 0
    return data[off];
  }
  // Walks are made for the destination's own rank; the strided kernel pads it to kMaxRank.
  void pad_front(int lead) {
    for (int d = kMaxRank - 1; d >= 0; --d) walk[d] = d >= lead ? walk[d - lead] : 0;
  }
};

template <class T>
struct DeviceScalar {
  T value;
  __device__ T flat(Index) const { return value; }
  __device__ T at(const Index*) const { return value; }
  void pad_front(int) {}
};

template <class Op, class A>
struct DeviceUnary {
  Op op;
  A a;
  __device__ auto flat(Index i) const { return op(a.flat(i)); }
  __device__ auto at(const Index* idx) const { return op(a.at(idx)); }
  void pad_front(int lead) { a.pad_front(lead); }
};

template <class Op, class A, class B>
struct DeviceBinary {
  Op op;
  A a;
  B b;
  __device__ auto flat(Index i) const { return op(a.flat(i), b.flat(i)); }
  __device__ auto at(const Index* idx) const { return op(a.at(idx), b.at(idx)); }
  void pad_front(int lead) { a.pad_front(lead), b.pad_front(lead); }
};

template <class C, class A, class B>
struct DeviceSelect {
  C cond;
  A a;
  B b;
  __device__ auto flat(Index i) const { return cond.flat(i) != 0 ? a.flat(i) : b.flat(i); }
  __device__ auto at(const Index* idx) const { return cond.at(idx) != 0 ? a.at(idx) : b.at(idx); }
  void pad_front(int lead) { cond.pad_front(lead), a.pad_front(lead), b.pad_front(lead); }
};

// ---- lowering a bound host expression into its device-side tree -------------------------------
// A class template rather than overloads: the recursion goes through node types declared in
// drt::expr, where overloads declared later here would not be found.

template <class N>
struct Lower;

template <class N>
auto lower(const N& node) {
  return Lower<N>::apply(node);
}

template <class T>
struct Lower<expr::Leaf<T>> {
  static DeviceLeaf<T> apply(const expr::Leaf<T>& leaf) {
    DeviceLeaf<T> d{leaf.data, {}};
    for (int i = 0; i < kMaxRank; ++i) d.walk[i] = leaf.walk[i];
    return d;
  }
};
template <class T>
struct Lower<expr::Scalar<T>> {
  static DeviceScalar<T> apply(const expr::Scalar<T>& s) { return DeviceScalar<T>{s.value}; }
};
template <class Op, class A>
struct Lower<expr::Unary<Op, A>> {
  static auto apply(const expr::Unary<Op, A>& u) {
    auto a = lower(u.a);
    return DeviceUnary<Op, decltype(a)>{u.op, a};
  }
};
template <class Op, class A, class B>
struct Lower<expr::Binary<Op, A, B>> {
  static auto apply(const expr::Binary<Op, A, B>& n) {
    auto a = lower(n.a);
    auto b = lower(n.b);
    return DeviceBinary<Op, decltype(a), decltype(b)>{n.op, a, b};
  }
};
template <class C, class A, class B>
struct Lower<expr::Select<C, A, B>> {
  static auto apply(const expr::Select<C, A, B>& s) {
    auto c = lower(s.cond);
    auto a = lower(s.a);
    auto b = lower(s.b);
    return DeviceSelect<decltype(c), decltype(a), decltype(b)>{c, a, b};
  }
};

// ---- kernels -----------------------------------------------------------------------------------

inline constexpr int kThreads = 256;
inline constexpr int kItemsPerThread = 4;  // independent loads in flight per thread

template <bool Accumulate, class T>
__device__ void write(T* out, T v) {
  if constexpr (Accumulate) *out += v;
  else *out = v;
}

// out[i] = e(i) for contiguous everything. Each thread handles kItemsPerThread elements a
// block apart (coalesced), computing them all before storing any.
template <bool Accumulate, class T, class E>
__global__ void __launch_bounds__(kThreads) fused_flat_kernel(T* out, E e, Index n) {
  const Index base = Index(blockIdx.x) * (kThreads * kItemsPerThread) + threadIdx.x;
  T v[kItemsPerThread];
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const Index i = base + Index(k) * kThreads;
    if (i < n) v[k] = e.flat(i);
  }
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const Index i = base + Index(k) * kThreads;
    if (i < n) write<Accumulate>(out + i, v[k]);
  }
}

// The destination's extents and strides, padded to kMaxRank with extent 1 / stride 0 at the
// front so that every thread runs the same fixed-length loop.
struct DestinationLayout {
  Index dims[kMaxRank];
  Index strides[kMaxRank];
};

// out[offset(i)] = e(idx(i)) for any views. I is the type of the index arithmetic.
template <bool Accumulate, class I, class T, class E>
__global__ void __launch_bounds__(kThreads) fused_strided_kernel(T* out, DestinationLayout layout, E e, Index n) {
  const Index stride = Index(gridDim.x) * kThreads;
  for (Index i = Index(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    Index idx[kMaxRank];
    I rest = static_cast<I>(i);
    Index off = 0;
#pragma unroll
    for (int d = kMaxRank - 1; d >= 0; --d) {
      const I extent = static_cast<I>(layout.dims[d]);
      idx[d] = static_cast<Index>(rest % extent);
      rest /= extent;
      off += idx[d] * layout.strides[d];
    }
    write<Accumulate>(out + off, e.at(idx));
  }
}

template <class E>
inline constexpr bool kIsLeaf = false;
template <class T>
inline constexpr bool kIsLeaf<expr::Leaf<T>> = true;

template <bool Accumulate, class T, class E>
void launch(const Tensor<T>& dst, E e, bool flat) {
  const Shape& shape = dst.shape();
  const Index n = shape.numel();
  auto d = lower(e);
  if (flat) {
    const Index per_block = Index(kThreads) * kItemsPerThread;
    const unsigned blocks = static_cast<unsigned>((n + per_block - 1) / per_block);
    fused_flat_kernel<Accumulate><<<blocks, kThreads, 0, ::drt::cuda::stream()>>>(dst.data(), d, n);
  } else {
    d.pad_front(kMaxRank - shape.rank());
    DestinationLayout layout{};
    const int lead = kMaxRank - shape.rank();
    for (int i = 0; i < kMaxRank; ++i) {
      layout.dims[i] = i < lead ? 1 : shape[i - lead];
      layout.strides[i] = i < lead ? 0 : dst.strides()[i - lead];
    }
    // A grid-stride loop; enough blocks to fill the GPU several times over.
    const Index wanted = (n + kThreads - 1) / kThreads;
    const unsigned blocks = static_cast<unsigned>(std::min<Index>(wanted, Index(1) << 16));
    if (n <= std::numeric_limits<std::uint32_t>::max())
      fused_strided_kernel<Accumulate, std::uint32_t><<<blocks, kThreads, 0, ::drt::cuda::stream()>>>(dst.data(), layout, d, n);
    else
      fused_strided_kernel<Accumulate, std::uint64_t><<<blocks, kThreads, 0, ::drt::cuda::stream()>>>(dst.data(), layout, d, n);
  }
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace detail

// dst ← e, or dst += e when `accumulate`: one kernel on the default stream (asynchronous).
// Shapes: e broadcasts to dst's shape; every tensor of e must be on dst's device.
template <class T, class E>
void evaluate(const Tensor<T>& dst, const E& expression, bool accumulate) {
  const Shape& shape = dst.shape();
  DRT_CHECK(broadcastable_to(expression.shape(), shape), "assign: expression of shape ", expression.shape().str(),
            " does not fit destination of shape ", shape.str());
  DRT_CHECK(dst.device() == Device::cuda, "evaluate: destination on ", device_name(dst.device()));
  expr::check_devices(expression, dst.device());
  if (shape.numel() == 0) return;
  E e = expression;
  e.bind(shape);
  const bool flat = dst.is_contiguous() && e.flat(shape);
  // dst ← a tensor of dst's own shape between views that are not both flat is a copy: copy.cuh's
  // path merges axes and moves 16-byte words, where this file's strided kernel works out every
  // element's offset (it moved ~0.9 TB/s on the gradients of a GCA layer's permutes and concat).
  if constexpr (detail::kIsLeaf<E>) {
    if (!accumulate && !flat && expression.shape() == shape) {
      const StridedRef to{dst.data(), Device::cuda, shape, dst.strides()};
      const StridedRef from{const_cast<T*>(expression.data), Device::cuda, shape, expression.strides};
      return detail::strided_on_device(sizeof(T), to, &from, nullptr);
    }
  }
  if (accumulate) detail::launch<true>(dst, e, flat);
  else detail::launch<false>(dst, e, flat);
}

}  // namespace drt::cuda
