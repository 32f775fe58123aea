// drt/cuda/nn/topk.cuh — the k largest values along an axis on the device (the kernels behind
// drt/nn/topk.hpp), and the empty-slot marking of drt/model/retrieval.hpp.
//
// Shapes: x (..., A, ...) any strides → idx (..., k, ...) int32, any strides; values and their
// gradient likewise.
//
// The order is the CPU's: larger value first, equal values by the lower index first. That is a
// total order (for non-NaN values, −inf included), so "the k best" has exactly one answer and
// the device returns the CPU's indices whatever algorithm it uses. The one used: a group of
// threads per lane (a warp for A ≤ 1024, else a block) finds the best element, then the best
// element ranked after it, k times: each round is one pass over the lane and one group
// reduction. O(k·A/G) per thread, no scratch memory; meant for the small k of retrieval.
#pragma once

#include "drt/cuda/nn/common.cuh"

namespace drt::cuda {
namespace nn_detail {

inline constexpr std::int32_t kNone = -1;

// (va, ia) ranks before (vb, ib): larger value, or the same value at a lower index; a missing
// candidate (index kNone) ranks last.
template <class T>
__device__ bool ranks_before(T va, std::int32_t ia, T vb, std::int32_t ib) {
  if (ia == kNone) return false;
  if (ib == kNone) return true;
  return va > vb || (va == vb && ia < ib);
}

// The best (value, index) pair of the group; every thread gets it.
template <int G, class T>
__device__ void group_best(T& v, std::int32_t& i) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, m);
    const std::int32_t oi = __shfl_xor_sync(0xffffffffu, i, m);
    if (ranks_before(ov, oi, v, i)) v = ov, i = oi;
  }
  if constexpr (G > 32) {
    static_assert(G == kBlock, "a group is one warp or one block");
    __shared__ T best_v[G / 32];
    __shared__ std::int32_t best_i[G / 32];
    __syncthreads();  // the previous round's readers are done
    if (threadIdx.x % 32 == 0) best_v[threadIdx.x / 32] = v, best_i[threadIdx.x / 32] = i;
    __syncthreads();
    v = best_v[0], i = best_i[0];
    for (int w = 1; w < G / 32; ++w)
      if (ranks_before(best_v[w], best_i[w], v, i)) v = best_v[w], i = best_i[w];
  }
}

template <int G, class T>
__global__ void __launch_bounds__(kBlock)
    topk_select_kernel(const T* x, Lanes xl, Index n, std::int32_t* idx, Lanes il, int k, Index lanes) {
  const Index lane = group_lane<G>();
  const int t = group_rank<G>();
  if (lane >= lanes) return;
  const T* in = x + start_of(xl, lane);
  std::int32_t* slot = idx + start_of(il, lane);
  T prev_v{};
  std::int32_t prev_i = kNone;
  for (int p = 0; p < k; ++p) {
    T v{};
    std::int32_t i = kNone;
    for (Index c = t; c < n; c += G) {
      const T vc = in[c * xl.step];
      const auto ic = static_cast<std::int32_t>(c);
      // Only elements ranked after the previous pick are left (the order is total).
      if (prev_i != kNone && !ranks_before(prev_v, prev_i, vc, ic)) continue;
      if (ranks_before(vc, ic, v, i)) v = vc, i = ic;
    }
    group_best<G>(v, i);
    if (t == 0) slot[p * il.step] = i;
    prev_v = v, prev_i = i;
  }
}

// values[lane, p] = x[lane, idx[lane, p]];  one thread per (lane, p).
template <class T>
__global__ void __launch_bounds__(kBlock) topk_values_kernel(const T* x, Lanes xl, const std::int32_t* idx, Lanes il,
                                                             T* values, Lanes vl, int k, Index total) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index lane = e / k, p = e % k;
    const std::int32_t c = idx[start_of(il, lane) + p * il.step];
    values[start_of(vl, lane) + p * vl.step] = x[start_of(xl, lane) + c * xl.step];
  }
}

// dx[lane, idx[lane, p]] += g[lane, p]. A lane's k positions are distinct and lanes are
// disjoint: no two threads touch the same element (no atomics, deterministic).
template <class T>
__global__ void __launch_bounds__(kBlock)
    topk_backward_kernel(const T* g, Lanes gl, const std::int32_t* idx, Lanes il, T* dx, Lanes dl, int k, Index total) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock) {
    const Index lane = e / k, p = e % k;
    const std::int32_t c = idx[start_of(il, lane) + p * il.step];
    dx[start_of(dl, lane) + c * dl.step] += g[start_of(gl, lane) + p * gl.step];
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock) mark_empty_slots_kernel(const T* selected, std::int32_t* slots, Index total) {
  for (Index e = Index(blockIdx.x) * kBlock + threadIdx.x; e < total; e += Index(gridDim.x) * kBlock)
    if (selected[e] == kMinusInf<T>) slots[e] = -1;
}

}  // namespace nn_detail

// idx ← the positions of the k largest along `axis` (normalised), best first.
template <class T>
void topk_select(const Tensor<T>& x, int k, int axis, const IndexTensor& idx) {
  using namespace nn_detail;
  const Index n = x.shape()[axis], lanes = idx.numel() / (k ? k : 1);
  if (k == 0 || lanes == 0) return;
  const Lanes xl = lanes_along(x, axis), il = lanes_along(idx, axis);
  if (n <= kWarpLaneMax)
    topk_select_kernel<32><<<lane_blocks(lanes, 32), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, n, idx.data(), il, k, lanes);
  else
    topk_select_kernel<kBlock><<<lane_blocks(lanes, kBlock), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), xl, n, idx.data(), il, k, lanes);
  DRT_CUDA_CHECK_LAUNCH();
}

// values ← x gathered at idx along `axis`.
template <class T>
void topk_values(const Tensor<T>& x, const IndexTensor& idx, int axis, const Tensor<T>& values) {
  using namespace nn_detail;
  const Index total = idx.numel();
  const int k = static_cast<int>(idx.shape()[axis]);
  if (total == 0) return;
  topk_values_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(x.data(), lanes_along(x, axis), idx.data(),
                                                        lanes_along(idx, axis), values.data(),
                                                        lanes_along(values, axis), k, total);
  DRT_CUDA_CHECK_LAUNCH();
}

// dx += g scattered to the picked positions along `axis`.
template <class T>
void topk_backward(const Tensor<T>& g, const IndexTensor& idx, int axis, const Tensor<T>& dx) {
  using namespace nn_detail;
  const Index total = idx.numel();
  const int k = static_cast<int>(idx.shape()[axis]);
  if (total == 0) return;
  topk_backward_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(
      g.data(), lanes_along(g, axis), idx.data(), lanes_along(idx, axis), dx.data(), lanes_along(dx, axis), k, total);
  DRT_CUDA_CHECK_LAUNCH();
}

// slots[i] = −1 wherever selected[i] is −inf (both row-major, the same shape).
template <class T>
void mark_empty_slots(const Tensor<T>& selected, const IndexTensor& slots) {
  using namespace nn_detail;
  DRT_CHECK(selected.is_contiguous() && slots.is_contiguous() && selected.shape() == slots.shape(),
            "mark_empty_slots: needs two row-major tensors of the same shape");
  const Index total = slots.numel();
  if (total == 0) return;
  mark_empty_slots_kernel<<<element_blocks(total), kBlock, 0, ::drt::cuda::stream()>>>(selected.data(), slots.data(), total);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
