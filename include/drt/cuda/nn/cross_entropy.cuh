// drt/cuda/nn/cross_entropy.cuh — softmax cross-entropy against class indices on the device (the
// kernels behind drt/nn/cross_entropy.hpp).
//
// Shapes: logits (rows..., V) any strides; targets (rows) int32, contiguous, on the device, already
// checked on the host (in [0, V) or ignore_index); lse, row_loss (rows) scratch; loss () → one value.
//
// Forward: one group of threads per position (a warp for V ≤ 1024, else a block) computes
// log Σ exp like the CPU (max first; −inf when the row is all −inf) and the position's loss
// (+inf for a −inf target logit, 0 for an ignored target). Then ONE block adds the positions'
// losses in double, in a fixed order (deterministic, like the CPU's serial double sum, though not
// in the same order), and writes loss = total / count (0 when every target is ignored). Nothing
// comes back to the host.
// Backward: d[k] += scale·exp(x[k] − lse), d[target] −= scale, with scale = g / count read from
// the device (the CPU's out.grad().item() / count, without a copy).
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

template <int G, class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_rows_kernel(const T* x, Lanes xl, Index V, const std::int32_t* targets, int ignore_index, T* lse,
                              T* row_loss, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const std::int32_t target = targets[row];
  if (target == ignore_index) {  // uniform over the group
    if (t == 0) row_loss[row] = T(0);
    return;
  }
  const T* in = x + xl.offset(row);
  const Index xs = xl.step;
  T m = kMinusInf<T>;
  for (Index k = t; k < V; k += G) m = MaxOp{}(m, in[k * xs]);
  m = group_reduce<G>(m, MaxOp{});
  T l = m;
  if (m != kMinusInf<T>) {
    T s = T(0);
    for (Index k = t; k < V; k += G) s += dev_exp(in[k * xs] - m);
    l = m + dev_log(group_reduce<G>(s, SumOp{}));
  }
  if (t == 0) {
    lse[row] = l;
    const T xt = in[target * xs];
    row_loss[row] = xt == kMinusInf<T> ? -kMinusInf<T> : l - xt;
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

template <int G, class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_kernel(const T* x, Lanes xl, Index V, const std::int32_t* targets, int ignore_index,
                                  const T* lse, const T* g, Index count, T* dx, Lanes dl, Index rows) {
  const Index row = group_lane<G>();
  const int t = group_rank<G>();
  if (row >= rows) return;
  const std::int32_t target = targets[row];
  if (target == ignore_index) return;
  const T scale = *g / static_cast<T>(count);
  const T* in = x + xl.offset(row);
  T* d = dx + dl.offset(row);
  const Index xs = xl.step, ds = dl.step;
  const T l = lse[row];
  for (Index k = t; k < V; k += G) {
    T v = d[k * ds];
    if (l != kMinusInf<T>) v += scale * dev_exp(in[k * xs] - l);  // an all −inf row has no mass to push down
    if (k == target) v -= scale;                                  // after the softmax term, as on the CPU
    d[k * ds] = v;
  }
}

}  // namespace nn_detail

// lse (rows), row_loss (rows) scratch; loss () written on the device. `count` = targets that are
// not ignore_index (the host counted them while checking).
template <class T>
void cross_entropy_forward(const Tensor<T>& logits, const IndexTensor& targets, int ignore_index, Index count,
                           const Tensor<T>& lse, const Tensor<T>& row_loss, const Tensor<T>& loss) {
  using namespace nn_detail;
  const int axis = logits.rank() - 1;
  const Index V = logits.shape()[axis], rows = targets.numel();
  DRT_CHECK(targets.is_contiguous() && !targets.on_host(), "cross_entropy: device targets must be contiguous");
  if (rows > 0) {
    const Lanes xl = lanes_along(logits, axis);
    if (V <= kWarpLaneMax)
      cross_entropy_rows_kernel<32><<<lane_blocks(rows, 32), kBlock, 0, ::drt::cuda::stream()>>>(logits.data(), xl, V, targets.data(),
                                                                       ignore_index, lse.data(), row_loss.data(), rows);
    else
      cross_entropy_rows_kernel<kBlock><<<lane_blocks(rows, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(
          logits.data(), xl, V, targets.data(), ignore_index, lse.data(), row_loss.data(), rows);
    DRT_CUDA_CHECK_LAUNCH();
  }
  cross_entropy_total_kernel<<<1, kBlock, 0, ::drt::cuda::stream()>>>(row_loss.data(), rows, count, loss.data());
  DRT_CUDA_CHECK_LAUNCH();
}

// dx += (softmax − onehot)·g/count on every position whose target is not ignored; g is the
// loss's gradient (one element, on the device). Does nothing when count is 0.
template <class T>
void cross_entropy_backward(const Tensor<T>& logits, const IndexTensor& targets, int ignore_index, Index count,
                            const Tensor<T>& lse, const Tensor<T>& g, const Tensor<T>& dx) {
  using namespace nn_detail;
  const int axis = logits.rank() - 1;
  const Index V = logits.shape()[axis], rows = targets.numel();
  if (count == 0 || rows == 0) return;
  const Lanes xl = lanes_along(logits, axis), dl = lanes_along(dx, axis);
  if (V <= kWarpLaneMax)
    cross_entropy_backward_kernel<32><<<lane_blocks(rows, 32), kBlock, 0, ::drt::cuda::stream()>>>(
        logits.data(), xl, V, targets.data(), ignore_index, lse.data(), g.data(), count, dx.data(), dl, rows);
  else
    cross_entropy_backward_kernel<kBlock><<<lane_blocks(rows, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(
        logits.data(), xl, V, targets.data(), ignore_index, lse.data(), g.data(), count, dx.data(), dl, rows);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
