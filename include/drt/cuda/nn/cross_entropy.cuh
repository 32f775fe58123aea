// drt/cuda/nn/cross_entropy.cuh — softmax cross-entropy against class indices on the device (the
// kernels behind drt/nn/cross_entropy.hpp).
//
// Shapes: logits (rows..., V) any strides, of which columns [0, C) are the classes (C ≤ V; the
// model's padded LM head has C = V < V'); targets (rows) int32, contiguous, on the device, already
// checked on the host (in [0, C) or ignore_index); lse, row_loss (rows) scratch; loss () → one value.
//
// Both passes are bound by memory (the LM head's logits are GBs), so each reads the logits once:
// Forward: one group of threads per position (a warp for C ≤ 1024, else a block). Each thread
// keeps a running (max m, Σ exp(x − m)) over its columns, rescaling the sum when the max grows
// (online log-sum-exp); the group then takes the max M of the m's and adds s·exp(m − M), both in a
// fixed order (deterministic). lse = M + log Σ, −inf when the row is all −inf; the position's loss
// is +inf for a −inf target logit, 0 for an ignored target. Then ONE block adds the positions'
// losses in double, in a fixed order (like the CPU's serial double sum, though not in the same
// order), and writes loss = total / count (0 when every target is ignored). Nothing comes back to
// the host.
// Backward: d[k] (+)= scale·exp(x[k] − lse) for k < C, d[target] −= scale, with scale = g / count
// read from the device (the CPU's out.grad().item() / count, without a copy). Two modes:
//   overwrite  (the gradient buffer was just created, uninitialised): every element of every row
//              is written, zeros for columns ≥ C and for ignored rows: read x once, write d once,
//              no zero-fill beforehand;
//   accumulate (a gradient already reached the logits): columns < C of counted rows are added to.
// Rows that walk memory at unit step from 16-byte-aligned starts are read and written in 16-byte
// words (4 floats, 2 doubles); any other layout one element at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>

#include "drt/cuda/copy.cuh"
#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail::xent {

// One thread's running log-sum-exp: m the largest element seen, s = Σ exp(x − m) over them.
template <class T>
struct RunningLse {
  T m = kMinusInf<T>;
  T s = T(0);

  // Takes W more elements: one rescale (at most) per word, not per element.
  template <int W>
  __device__ void add(const T (&v)[W]) {
    T top = v[0];
#pragma unroll
    for (int i = 1; i < W; ++i) top = MaxOp{}(top, v[i]);
    if (top > m) {  // false for a NaN top: m is never NaN, so the group's M == −inf test is uniform
      s *= dev_exp(m - top);  // m = −inf: s is 0 and stays 0
      m = top;
    }
    if (m == kMinusInf<T>) return;  // only −inf so far: no mass (and −inf − −inf would be NaN)
#pragma unroll
    for (int i = 0; i < W; ++i) s += dev_exp(v[i] - m);
  }
};

// The group's log Σ exp from each thread's running pair; every thread of the group gets it.
// G = kBlock: the whole block must call this together (group_reduce's barriers).
template <int G, class T>
__device__ T group_logsumexp(const RunningLse<T>& mine) {
  const T M = group_reduce<G>(mine.m, MaxOp{});
  if (M == kMinusInf<T>) return M;  // uniform over the group: every thread got the same M
  const T rescaled = mine.m == kMinusInf<T> ? T(0) : mine.s * dev_exp(mine.m - M);
  return M + dev_log(group_reduce<G>(rescaled, SumOp{}));
}

template <int G, int W, class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_rows_kernel(const T* x, Lanes xl, Index C, const std::int32_t* targets, int ignore_index, T* lse,
                              T* row_loss, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;  // uniform over the group (G = kBlock: one row per block)
  const std::int32_t target = targets[row];
  if (target == ignore_index) {  // uniform over the group
    if (t == 0) row_loss[row] = T(0);
    return;
  }
  const T* in = x + start_of(xl, row);
  const Index xs = xl.step;  // 1 when W > 1
  RunningLse<T> acc;
  // Words [0, C / W), two per step so that each thread has two loads in flight.
  const Index words = C / W;
  Index p = t;
  for (; p + G < words; p += 2 * G) {
    const Pack<T, W> a = load_pack<W>(in, p, xs), b = load_pack<W>(in, p + G, xs);
    acc.add(a.v);
    acc.add(b.v);
  }
  if (p < words) acc.add(load_pack<W>(in, p, xs).v);
  // The last C mod W columns (none when W = 1).
  for (Index k = words * W + t; k < C; k += G) acc.add(load_pack<1>(in, k, xs).v);
  const T l = group_logsumexp<G>(acc);
  if (t == 0) {
    lse[row] = l;
    const T xt = in[target * xs];
    row_loss[row] = xt == kMinusInf<T> ? -kMinusInf<T> : l - xt;  // a −inf target logit: +inf, not NaN
  }
}

// loss = Σ row_loss (in double) / count, or 0 when count is 0. One block.
template <class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_total_kernel(const T* row_loss, Index rows, Index count, T* loss) {
  double acc = 0;
  for (Index r = threadIdx.x; r < rows; r += kBlock) acc += static_cast<double>(row_loss[r]);
  acc = group_reduce<kBlock>(acc, SumOp{});
  if (threadIdx.x == 0) *loss = count ? static_cast<T>(acc / static_cast<double>(count)) : T(0);
}

// Accumulate = false: writes all V columns of every row (the buffer is uninitialised);
// Accumulate = true: adds to the C class columns of counted rows only.
template <int G, int W, bool Accumulate, class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_kernel(const T* x, Lanes xl, Index V, Index C, const std::int32_t* targets,
                                  int ignore_index, const T* lse, const T* g, Index count, T* dx, Lanes dl,
                                  Index rows, __nv_bfloat16* dx16) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const std::int32_t target = targets[row];
  T* d = dx + start_of(dl, row);
  // dx's bf16 copy (overwrite mode only; dx is then row-major, so row `row` starts at row·V).
  __nv_bfloat16* d16 = dx16 != nullptr ? dx16 + row * V : nullptr;
  const Index xs = xl.step, ds = dl.step;  // both 1 when W > 1
  const Index width = Accumulate ? C : V;  // the columns this mode touches
  const Index words = width / W;
  if (target == ignore_index) {  // no gradient: nothing to add, or zeros to write
    if constexpr (!Accumulate) {
      const Pack<T, W> zero{};
      for (Index p = t; p < words; p += G) {
        store_pack<W>(d, p, ds, zero);
        if (d16 != nullptr) store_bf16_pack<W>(d16, p, zero);
      }
      for (Index k = words * W + t; k < width; k += G) {
        store_pack<1>(d, k, ds, Pack<T, 1>{});
        if (d16 != nullptr) d16[k] = __float2bfloat16_rn(0.0f);
      }
    }
    return;
  }
  const T scale = *g / static_cast<T>(count);  // count ≥ 1: this row is counted
  const T l = lse[row];
  const T* in = x + start_of(xl, row);
  // Column k's gradient added to `base` (the existing value, or 0): the CPU's two steps, in its order.
  auto column = [&](Index k, T xk, T base) {
    if (k < C) {
      if (l != kMinusInf<T>) base += scale * dev_exp(xk - l);  // an all −inf row has no mass to push down
      if (k == target) base -= scale;
    }
    return base;
  };
  auto update = [&](Index p, const Pack<T, W>& xv) {  // word p of d from word p of x
    Pack<T, W> dv{};
    if constexpr (Accumulate) dv = load_pack<W>(d, p, ds);
#pragma unroll
    for (int i = 0; i < W; ++i) dv.v[i] = column(p * W + i, xv.v[i], dv.v[i]);
    store_pack<W>(d, p, ds, dv);
    if (d16 != nullptr) store_bf16_pack<W>(d16, p, dv);
  };
  // Two words per step, both loaded before either store (x and d could alias, as far as the
  // compiler knows, so it would not hoist the second load above the first store).
  Index p = t;
  for (; p + G < words; p += 2 * G) {
    const Pack<T, W> a = load_pack<W>(in, p, xs), b = load_pack<W>(in, p + G, xs);
    update(p, a);
    update(p + G, b);
  }
  if (p < words) update(p, load_pack<W>(in, p, xs));
  for (Index k = words * W + t; k < width; k += G) {  // the last width mod W columns (none when W = 1)
    const T base = Accumulate ? d[k * ds] : T(0);
    d[k * ds] = column(k, in[k * xs], base);
    if (d16 != nullptr) d16[k] = __float2bfloat16_rn(static_cast<float>(d[k * ds]));
  }
}

// ---- launching ------------------------------------------------------------------------------------

template <class T>
inline constexpr int kWordElements = 16 / static_cast<int>(sizeof(T));

// Whether the rows of a tensor (its data and lanes) can be walked in 16-byte words: unit step, an
// aligned start, and every row starting a whole number of words later.
template <class T>
bool rows_in_words(const T* data, const Lanes& l) {
  static_assert(16 % sizeof(T) == 0, "a word holds whole elements");
  if (l.step != 1 || reinterpret_cast<std::uintptr_t>(data) % 16 != 0) return false;
  for (int d = kMaxRank - l.count; d < kMaxRank; ++d)
    if (l.dims[d] > 1 && l.strides[d] % kWordElements<T> != 0) return false;
  return true;
}

// Calls f(G, W) as std::integral_constants: G = a warp for rows of up to kWarpLaneMax columns, else
// a block; W = a 16-byte word when `words`, else one element.
template <class T, class F>
void with_group_and_word(Index columns, bool words, F&& f) {
  using Warp = std::integral_constant<int, 32>;
  using Block = std::integral_constant<int, kBlock>;
  using One = std::integral_constant<int, 1>;
  using Word = std::integral_constant<int, kWordElements<T>>;
  if (columns <= kWarpLaneMax) words ? f(Warp{}, Word{}) : f(Warp{}, One{});
  else words ? f(Block{}, Word{}) : f(Block{}, One{});
}

}  // namespace nn_detail::xent

// lse (rows), row_loss (rows) scratch; loss () written on the device. `count` = targets that are
// not ignore_index (the host counted them while checking); `classes` = C ≤ V.
template <class T>
void cross_entropy_forward(const Tensor<T>& logits, const IndexTensor& targets, int ignore_index, Index count,
                           Index classes, const Tensor<T>& lse, const Tensor<T>& row_loss, const Tensor<T>& loss) {
  using namespace nn_detail;
  const int axis = logits.rank() - 1;
  const Index rows = targets.numel();
  DRT_CHECK(targets.is_contiguous() && !targets.on_host(), "cross_entropy: device targets must be contiguous");
  DRT_CHECK(classes >= 0 && classes <= logits.shape()[axis], "cross_entropy: ", classes, " classes in ",
            logits.shape()[axis], " columns");
  if (rows > 0) {
    const Lanes xl = lanes_along(logits, axis);
    xent::with_group_and_word<T>(classes, xent::rows_in_words(logits.data(), xl), [&](auto group, auto word) {
      constexpr int G = decltype(group)::value, W = decltype(word)::value;
      xent::cross_entropy_rows_kernel<G, W><<<lane_blocks(rows, G), kBlock, 0, ::drt::cuda::stream()>>>(
          logits.data(), xl, classes, targets.data(), ignore_index, lse.data(), row_loss.data(), rows);
    });
    DRT_CUDA_CHECK_LAUNCH();
  }
  xent::cross_entropy_total_kernel<<<1, kBlock, 0, ::drt::cuda::stream()>>>(row_loss.data(), rows, count, loss.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// g is the loss's gradient (one element, on the device); dx has the logits' shape.
// overwrite = false: dx += (softmax − onehot)·g/count over the class columns of the counted rows
//                    (nothing to do when count is 0);
// overwrite = true:  dx = that, with every other element 0 (dx was just allocated, uninitialised);
//                    with dx16 (dx.numel() bf16, dx contiguous), dx's bf16 copy as well, for the
//                    LM head's backward GEMMs (cross_entropy_backward_rounded).
template <class T>
void cross_entropy_backward(const Tensor<T>& logits, const IndexTensor& targets, int ignore_index, Index count,
                            Index classes, const Tensor<T>& lse, const Tensor<T>& g, const Tensor<T>& dx,
                            bool overwrite, __nv_bfloat16* dx16 = nullptr) {
  using namespace nn_detail;
  const int axis = logits.rank() - 1;
  const Index V = logits.shape()[axis], rows = targets.numel();
  DRT_CHECK(dx.shape() == logits.shape(), "cross_entropy: gradient of shape ", dx.shape().str(), " for logits of shape ",
            logits.shape().str());
  if (rows == 0 || V == 0 || (count == 0 && !overwrite)) return;
  const Lanes xl = lanes_along(logits, axis), dl = lanes_along(dx, axis);
  const bool words = xent::rows_in_words(logits.data(), xl) && xent::rows_in_words(dx.data(), dl);
  xent::with_group_and_word<T>(overwrite ? V : classes, words, [&](auto group, auto word) {
    constexpr int G = decltype(group)::value, W = decltype(word)::value;
    if (overwrite)
      xent::cross_entropy_backward_kernel<G, W, false><<<lane_blocks(rows, G), kBlock, 0, ::drt::cuda::stream()>>>(
          logits.data(), xl, V, classes, targets.data(), ignore_index, lse.data(), g.data(), count, dx.data(), dl,
          rows, dx16);
    else
      xent::cross_entropy_backward_kernel<G, W, true><<<lane_blocks(rows, G), kBlock, 0, ::drt::cuda::stream()>>>(
          logits.data(), xl, V, classes, targets.data(), ignore_index, lse.data(), g.data(), count, dx.data(), dl,
          rows, nullptr);
  });
  DRT_CUDA_CHECK_LAUNCH();
}

// The first gradient of the logits (overwrite mode) with its bf16 copy, returned (device
// scratch): the LM head's backward GEMMs read it instead of rounding the (rows × V) gradient in
// a pass of their own, the largest such pass of a training step. dx must be contiguous.
inline std::shared_ptr<void> cross_entropy_backward_rounded(const Tensor<float>& logits, const IndexTensor& targets,
                                                            int ignore_index, Index count, Index classes,
                                                            const Tensor<float>& lse, const Tensor<float>& g,
                                                            const Tensor<float>& dx) {
  DRT_CHECK(dx.is_contiguous(), "cross_entropy: the gradient with a bf16 copy must be contiguous");
  std::shared_ptr<void> copy = detail::device_scratch(static_cast<std::size_t>(dx.numel()) * sizeof(__nv_bfloat16));
  cross_entropy_backward(logits, targets, ignore_index, count, classes, lse, g, dx, true,
                         static_cast<__nv_bfloat16*>(copy.get()));
  return copy;
}

}  // namespace drt::cuda
