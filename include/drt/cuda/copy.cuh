// drt/cuda/copy.cuh — device memory for tensors, copies between host and device, and fills.
//
// Shapes: dst and src have the same shape (the core broadcasts src first); either may be any
// strided view on either side. Contiguous pairs are one cudaMemcpy; otherwise a strided copy
// kernel does the gathering on the device, and a non-contiguous host side is staged through a
// contiguous host buffer (so that every host↔device transfer is one large cudaMemcpy).
//
// Element types are erased to their size: a copy moves words of 1, 2, 4 or 8 bytes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "drt/core/device.hpp"
#include "drt/cuda/allocator.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {
namespace detail {

inline bool contiguous(const StridedRef& r) {
  Index expected = 1;
  for (int i = r.shape.rank() - 1; i >= 0; --i) {
    if (r.shape[i] != 1 && r.strides[i] != expected) return false;
    expected *= r.shape[i];
  }
  return true;
}

inline StridedRef contiguous_like(const StridedRef& r, void* data, Device device) {
  return StridedRef{data, device, r.shape, contiguous_strides(r.shape)};
}

// Extents and strides padded at the front to kMaxRank (extent 1, stride 0).
struct CopyLayout {
  Index dims[kMaxRank];
  Index dst[kMaxRank];
  Index src[kMaxRank];
};

inline CopyLayout copy_layout(const StridedRef& dst, const StridedRef* src) {
  CopyLayout l{};
  const int rank = dst.shape.rank(), lead = kMaxRank - rank;
  for (int i = 0; i < kMaxRank; ++i) {
    l.dims[i] = i < lead ? 1 : dst.shape[i - lead];
    l.dst[i] = i < lead ? 0 : dst.strides[i - lead];
    l.src[i] = (i < lead || !src) ? 0 : src->strides[i - lead];
  }
  return l;
}

// dst[offset(i)] = src ? src[offset(i)] : *value, for every element i.
template <class W>
__global__ void strided_copy_kernel(W* dst, const W* src, W value, CopyLayout l, Index n) {
  const Index step = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    Index rest = i, od = 0, os = 0;
#pragma unroll
    for (int d = kMaxRank - 1; d >= 0; --d) {
      const Index k = rest % l.dims[d];
      rest /= l.dims[d];
      od += k * l.dst[d];
      os += k * l.src[d];
    }
    dst[od] = src ? src[os] : value;
  }
}

template <class W>
void launch_strided(const StridedRef& dst, const StridedRef* src, const void* value) {
  const Index n = dst.shape.numel();
  W v{};
  if (value) std::memcpy(&v, value, sizeof(W));
  const unsigned blocks = static_cast<unsigned>(std::min<Index>((n + 255) / 256, Index(1) << 16));
  strided_copy_kernel<W><<<blocks, 256, 0, ::drt::cuda::stream()>>>(static_cast<W*>(dst.data), src ? static_cast<const W*>(src->data) : nullptr,
                                          v, copy_layout(dst, src), n);
  DRT_CUDA_CHECK_LAUNCH();
}

// The strided kernel for an element size, on device memory only.
inline void strided_on_device(std::size_t size, const StridedRef& dst, const StridedRef* src, const void* value) {
  switch (size) {
    case 1: return launch_strided<std::uint8_t>(dst, src, value);
    case 2: return launch_strided<std::uint16_t>(dst, src, value);
    case 4: return launch_strided<std::uint32_t>(dst, src, value);
    case 8: return launch_strided<std::uint64_t>(dst, src, value);
    default: DRT_CHECK(false, "device copy: element size ", size, " is not supported");
  }
}

// Host-side strided copy between host views (the same odometer walk as Tensor::copy_from).
inline void strided_on_host(std::size_t size, const StridedRef& dst, const StridedRef& src) {
  const int r = dst.shape.rank();
  Index idx[kMaxRank] = {};
  Index od = 0, os = 0;
  auto* d = static_cast<unsigned char*>(dst.data);
  const auto* s = static_cast<const unsigned char*>(src.data);
  for (Index n = dst.shape.numel(); n > 0; --n) {
    std::memcpy(d + od * Index(size), s + os * Index(size), size);
    for (int k = r - 1; k >= 0; --k) {
      if (++idx[k] < dst.shape[k]) {
        od += dst.strides[k], os += src.strides[k];
        break;
      }
      od -= (dst.shape[k] - 1) * dst.strides[k];
      os -= (dst.shape[k] - 1) * src.strides[k];
      idx[k] = 0;
    }
  }
}

// While a CUDA graph is being recorded (inference/graph.cuh), every block handed out is also kept
// here, so that none of the graph's buffers goes back to the free lists (and to other users)
// while the graph can still be replayed.
inline std::vector<std::shared_ptr<void>>*& blocks_kept_for_graph() {
  thread_local std::vector<std::shared_ptr<void>>* kept = nullptr;
  return kept;
}

// Device scratch of `bytes` bytes from the caching allocator, freed with its owner.
inline std::shared_ptr<void> device_scratch(std::size_t bytes) {
  std::shared_ptr<void> block(allocator().allocate(bytes), [](void* p) { allocator().free(p); });
  if (blocks_kept_for_graph() != nullptr) blocks_kept_for_graph()->push_back(block);
  return block;
}

}  // namespace detail

// ---- the backend's entry points ------------------------------------------------------------------

inline std::shared_ptr<void> allocate_device(std::size_t bytes, bool zero) {
  std::shared_ptr<void> block = detail::device_scratch(bytes);
  if (zero && bytes) DRT_CUDA_CHECK(cudaMemsetAsync(block.get(), 0, bytes, stream()));
  return block;
}

inline void copy(std::size_t size, const StridedRef& dst, const StridedRef& src) {
  const Index n = dst.shape.numel();
  if (n == 0) return;
  const std::size_t bytes = std::size_t(n) * size;
  const bool dst_dev = dst.device != Device::cpu, src_dev = src.device != Device::cpu;
  const bool dst_flat = detail::contiguous(dst), src_flat = detail::contiguous(src);
  if (dst_dev && src_dev) {
    if (dst_flat && src_flat) DRT_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDeviceToDevice, stream()));
    else detail::strided_on_device(size, dst, &src, nullptr);
    return;
  }
  if (dst_dev) {  // host → device: make the host side contiguous, one transfer, then scatter
    std::vector<unsigned char> staged;
    const void* from = src.data;
    if (!src_flat) {
      staged.resize(bytes);
      detail::strided_on_host(size, detail::contiguous_like(src, staged.data(), Device::cpu), src);
      from = staged.data();
    }
    if (dst_flat) {
      DRT_CUDA_CHECK(cudaMemcpy(dst.data, from, bytes, cudaMemcpyHostToDevice));
      return;
    }
    std::shared_ptr<void> tmp = detail::device_scratch(bytes);
    DRT_CUDA_CHECK(cudaMemcpy(tmp.get(), from, bytes, cudaMemcpyHostToDevice));
    const StridedRef tmp_ref = detail::contiguous_like(dst, tmp.get(), dst.device);
    detail::strided_on_device(size, dst, &tmp_ref, nullptr);
    return;
  }
  // device → host: gather on the device, one transfer (it waits for earlier work), then scatter.
  std::shared_ptr<void> tmp;
  const void* from = src.data;
  if (!src_flat) {
    tmp = detail::device_scratch(bytes);
    detail::strided_on_device(size, detail::contiguous_like(src, tmp.get(), src.device), &src, nullptr);
    from = tmp.get();
  }
  if (dst_flat) {
    DRT_CUDA_CHECK(cudaMemcpy(dst.data, from, bytes, cudaMemcpyDeviceToHost));
    return;
  }
  std::vector<unsigned char> staged(bytes);
  DRT_CUDA_CHECK(cudaMemcpy(staged.data(), from, bytes, cudaMemcpyDeviceToHost));
  detail::strided_on_host(size, dst, detail::contiguous_like(dst, staged.data(), Device::cpu));
}

inline void fill(std::size_t size, const StridedRef& dst, const void* value) {
  if (dst.shape.numel() == 0) return;
  detail::strided_on_device(size, dst, nullptr, value);
}

}  // namespace drt::cuda
