// drt/cuda/copy.cuh — device memory for tensors, copies between host and device, and fills.
//
// Shapes: dst and src have the same shape (the core broadcasts src first); either may be any
// strided view on either side. Contiguous pairs are one memcpy; otherwise a strided copy kernel
// does the gathering on the device, and a non-contiguous host side is staged through a
// contiguous host buffer (so that every host↔device transfer is one large memcpy). Uploads do not
// wait for the GPU (detail::upload); downloads do, since the caller reads the result at once.
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
#include "drt/cuda/deferred_check.cuh"
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

// A device copy's layout, simplified before the kernel sees it: axes of extent 1 dropped, and
// neighbouring axes merged where both sides step through them as one (rows n .. n + L of a
// matrix are one axis; a copy between contiguous-row views is rank 2). Then, where the innermost
// axis is contiguous on both sides and the alignment allows, elements are widened up to 16-byte
// words. The kernel's index arithmetic (a division per axis and element) is what limited the
// plain version to ~0.8 TB/s on an H200; after this most copies of views are rank 1–3 in 16-byte
// words, with 32-bit indices.
struct CopyLayout {
  int rank = 0;
  Index dims[kMaxRank] = {};
  Index dst[kMaxRank] = {};
  Index src[kMaxRank] = {};  // all 0 for a fill
  std::size_t word = 0;      // bytes per element moved
};

inline CopyLayout simplified_layout(const StridedRef& dst, const StridedRef* src, std::size_t size) {
  CopyLayout l;
  l.word = size;
  for (int i = 0; i < dst.shape.rank(); ++i)
    if (dst.shape[i] != 1) {
      l.dims[l.rank] = dst.shape[i];
      l.dst[l.rank] = dst.strides[i];
      l.src[l.rank] = src ? src->strides[i] : 0;
      ++l.rank;
    }
  if (l.rank == 0) {  // a single element
    l.rank = 1;
    l.dims[0] = 1;
    return l;
  }
  int r = 0;  // merge axis i into the outer axis r when r steps over exactly one run of i, both sides
  for (int i = 1; i < l.rank; ++i) {
    if (l.dst[r] == l.dst[i] * l.dims[i] && l.src[r] == l.src[i] * l.dims[i]) {
      l.dims[r] *= l.dims[i];
      l.dst[r] = l.dst[i];
      l.src[r] = l.src[i];
    } else {
      ++r;
      l.dims[r] = l.dims[i];
      l.dst[r] = l.dst[i];
      l.src[r] = l.src[i];
    }
  }
  l.rank = r + 1;
  // Widen: two elements become one twice as wide while that keeps every offset whole.
  const int inner = l.rank - 1;
  auto aligned = [&](std::size_t bytes) {
    return reinterpret_cast<std::uintptr_t>(dst.data) % bytes == 0 &&
           (!src || reinterpret_cast<std::uintptr_t>(src->data) % bytes == 0);
  };
  auto outer_strides_even = [&] {
    for (int d = 0; d < inner; ++d)
      if (l.dst[d] % 2 != 0 || l.src[d] % 2 != 0) return false;
    return true;
  };
  while (l.word < 16 && l.dst[inner] == 1 && (!src || l.src[inner] == 1) && l.dims[inner] % 2 == 0 &&
         outer_strides_even() && aligned(2 * l.word)) {
    l.word *= 2;
    l.dims[inner] /= 2;
    for (int d = 0; d < inner; ++d) {
      l.dst[d] /= 2;
      l.src[d] /= 2;
    }
  }
  return l;
}

// Threads in the largest grid launch_strided makes: a grid-stride loop's index reaches n + this.
inline constexpr Index kMostCopyThreads = Index(65536) * 256;

// Whether every element index (and the loop's last step past n) and offset fits a 32-bit int.
inline bool fits_int32(const CopyLayout& l, Index n) {
  Index dst_last = 0, src_last = 0;
  for (int d = 0; d < l.rank; ++d) {
    if (l.dst[d] < 0 || l.src[d] < 0) return false;
    dst_last += (l.dims[d] - 1) * l.dst[d];
    src_last += (l.dims[d] - 1) * l.src[d];
  }
  const Index limit = Index(1) << 31;
  return n < limit - kMostCopyThreads && dst_last < limit && src_last < limit;
}

// dst[offset(i)] = src ? src[offset(i)] : value, for every element i, with index type I.
template <class W, class I>
__global__ void strided_copy_kernel(W* dst, const W* src, W value, CopyLayout l, I n) {
  const I step = I(gridDim.x) * I(blockDim.x);
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n; i += step) {
    I rest = i, od = 0, os = 0;
    for (int d = l.rank - 1; d > 0; --d) {
      const I extent = I(l.dims[d]), k = rest % extent;
      rest /= extent;
      od += k * I(l.dst[d]);
      os += k * I(l.src[d]);
    }
    od += rest * I(l.dst[0]);
    os += rest * I(l.src[0]);
    dst[od] = src ? src[os] : value;
  }
}

template <class W>
void launch_strided(const StridedRef& dst, const StridedRef* src, const void* value, const CopyLayout& l,
                    std::size_t value_size) {
  Index n = 1;
  for (int d = 0; d < l.rank; ++d) n *= l.dims[d];
  W v{};
  if (value)  // a fill's value, repeated across the widened word
    for (std::size_t at = 0; at < sizeof(W); at += value_size)
      std::memcpy(reinterpret_cast<unsigned char*>(&v) + at, value, value_size);
  const unsigned blocks = static_cast<unsigned>(std::min<Index>((n + 255) / 256, kMostCopyThreads / 256));
  auto* to = static_cast<W*>(dst.data);
  const auto* from = src ? static_cast<const W*>(src->data) : nullptr;
  if (fits_int32(l, n))
    strided_copy_kernel<W, int><<<blocks, 256, 0, ::drt::cuda::stream()>>>(to, from, v, l, static_cast<int>(n));
  else
    strided_copy_kernel<W, Index><<<blocks, 256, 0, ::drt::cuda::stream()>>>(to, from, v, l, n);
  DRT_CUDA_CHECK_LAUNCH();
}

// The strided kernel for an element size, on device memory only.
inline void strided_on_device(std::size_t size, const StridedRef& dst, const StridedRef* src, const void* value) {
  DRT_CHECK(size == 1 || size == 2 || size == 4 || size == 8, "device copy: element size ", size, " is not supported");
  const CopyLayout l = simplified_layout(dst, src, size);
  switch (l.word) {
    case 1: return launch_strided<std::uint8_t>(dst, src, value, l, size);
    case 2: return launch_strided<std::uint16_t>(dst, src, value, l, size);
    case 4: return launch_strided<std::uint32_t>(dst, src, value, l, size);
    case 8: return launch_strided<std::uint64_t>(dst, src, value, l, size);
    default: return launch_strided<uint4>(dst, src, value, l, size);
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

// Host → device on drt's stream. From pageable memory (everything drt allocates) the driver
// copies the source into its own staging memory before cudaMemcpyAsync returns, so the caller may
// reuse it at once, and, unlike cudaMemcpy, the call does not first wait for every kernel already
// queued: a prefill segment makes a dozen small uploads (token ids, retrieval indices and
// weights), each of which used to drain the GPU. A pinned source would be read later by the DMA
// itself, after the caller may have changed it, so it keeps the synchronous call.
inline void upload(void* dst, const void* src, std::size_t bytes) {
  cudaPointerAttributes attributes{};
  const bool pinned = cudaPointerGetAttributes(&attributes, src) == cudaSuccess && attributes.type == cudaMemoryTypeHost;
  if (pinned) DRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  else DRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
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
      detail::upload(dst.data, from, bytes);
      return;
    }
    std::shared_ptr<void> tmp = detail::device_scratch(bytes);
    detail::upload(tmp.get(), from, bytes);
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
    raise_deferred_failure();  // the copy waited for the GPU: a failed device check is known now
    return;
  }
  std::vector<unsigned char> staged(bytes);
  DRT_CUDA_CHECK(cudaMemcpy(staged.data(), from, bytes, cudaMemcpyDeviceToHost));
  raise_deferred_failure();
  detail::strided_on_host(size, dst, detail::contiguous_like(dst, staged.data(), Device::cpu));
}

inline void fill(std::size_t size, const StridedRef& dst, const void* value) {
  if (dst.shape.numel() == 0) return;
  detail::strided_on_device(size, dst, nullptr, value);
}

}  // namespace drt::cuda
