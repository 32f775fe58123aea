// drt/cuda/allocator.cuh — a caching allocator for device memory.
//
// cudaMalloc and cudaFree are slow (they may synchronise the device) and a training step makes
// hundreds of intermediates, so freed blocks are kept in free lists bucketed by size and handed
// out again; after the first step, a step of the same shapes calls cudaMalloc no more
// (`stats().malloc_calls` stays put; a test checks it).
//
// Sizes are rounded up: to 512 B below 1 MiB, to 2 MiB above, so that nearby sizes share a
// bucket. A request takes a free block of its own bucket or, for large requests, the smallest
// larger cached block that wastes at most a quarter of it. When cudaMalloc fails, every cached
// block is returned to the driver and the call is tried once more.
//
// Stream order: drt issues all device work on its one stream (stream.cuh), which is ordered with
// the legacy stream of synchronous copies, so a block freed on the host while a kernel still
// reads it can be reused at once: the next user's kernels run after that kernel. (Using several
// streams will need per-stream free lists or events.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {

struct AllocatorStats {
  std::size_t bytes_in_use = 0;     // handed out and not yet freed (rounded sizes)
  std::size_t bytes_cached = 0;     // freed, kept in the free lists
  std::size_t peak_bytes_in_use = 0;
  std::int64_t malloc_calls = 0;    // cudaMalloc calls since start
  std::int64_t allocations = 0;     // allocate() calls since start
};

class CachingAllocator {
 public:
  static constexpr std::size_t kSmallGranule = 512;
  static constexpr std::size_t kLargeThreshold = std::size_t(1) << 20;
  static constexpr std::size_t kLargeGranule = std::size_t(2) << 20;

  static std::size_t round_size(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    const std::size_t g = bytes < kLargeThreshold ? kSmallGranule : kLargeGranule;
    return (bytes + g - 1) / g * g;
  }

  void* allocate(std::size_t bytes) {
    const std::size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.allocations;
    auto [p, block] = take_cached(size);
    if (!p) p = device_malloc(block);
    live_[p] = block;
    stats_.bytes_in_use += block;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: nothing sensible to do in a deleter
    const std::size_t block = it->second;
    live_.erase(it);
    stats_.bytes_in_use -= block;
    stats_.bytes_cached += block;
    free_[block].push_back(p);
  }

  // Returns every cached (free) block to the driver.
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

  // Starts a new peak from what is in use now (to measure one phase of a program).
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  AllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  // A cached block for `size` bytes and its size, or {null, size} when none fits.
  std::pair<void*, std::size_t> take_cached(std::size_t size) {
    auto it = free_.lower_bound(size);
    if (it == free_.end()) return {nullptr, size};
    const bool exact = it->first == size;
    // Small requests stay in their own bucket; a large one may take a block up to 4/3 its size.
    if (!exact && (size < kLargeThreshold || it->first > size + size / 3)) return {nullptr, size};
    void* p = it->second.back();
    const std::size_t block = it->first;
    it->second.pop_back();
    stats_.bytes_cached -= block;
    if (it->second.empty()) free_.erase(it);
    return {p, block};
  }

  void* device_malloc(std::size_t size) {
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, size);
    ++stats_.malloc_calls;
    if (status == cudaErrorMemoryAllocation && !capturing()) {
      (void)cudaGetLastError();  // clear it, free the cache, and try once more
      release_cached();
      status = cudaMalloc(&p, size);
      ++stats_.malloc_calls;
    }
    DRT_CHECK(status == cudaSuccess, "device allocation of ", size, " bytes failed: ", cudaGetErrorString(status),
              " (", stats_.bytes_in_use, " bytes in use)");
    return p;
  }

  // Whether this thread's stream is being recorded into a graph: cudaFree is not allowed then.
  static bool capturing() {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing(stream(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone;
  }

  void release_cached() {
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) cudaFree(p);
    free_.clear();
    stats_.bytes_cached = 0;
  }

  mutable std::mutex mutex_;
  std::map<std::size_t, std::vector<void*>> free_;  // rounded size → free blocks
  std::unordered_map<void*, std::size_t> live_;     // handed-out block → its size
  AllocatorStats stats_;
};

// The process's allocator. Never destroyed: tensors in static storage may release memory
// during exit, and the driver reclaims everything when the process ends anyway.
inline CachingAllocator& allocator() {
  static CachingAllocator* instance = new CachingAllocator();
  return *instance;
}

inline AllocatorStats allocator_stats() { return allocator().stats(); }
inline void empty_cache() { allocator().empty_cache(); }
inline void reset_peak_memory() { allocator().reset_peak(); }

}  // namespace drt::cuda
