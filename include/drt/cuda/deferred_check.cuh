// drt/cuda/deferred_check.cuh — checks of indices that live on the GPU, without making the host
// wait for the GPU.
//
// Why: to check a device index on the host, an op copies it back, and the copy waits for every
// kernel queued before it. GCA did that on every call (its retrieved chunk indices come from the
// retrieval's top-k, on the GPU): the GPU sat idle while the host read the copy, looped over it
// and launched the next kernel, about 30 µs of a 0.39 ms op at the training shape, once per GCA
// layer in a model.
//
// How: a kernel checks the index where it is, in stream order, and writes a copy of it in which
// every bad entry is replaced by −1 (a slot the op skips), so the op's kernels, which read the
// copy, never follow a bad index. The first bad entry (in row-major order) goes into a record in
// pinned host memory that the GPU writes directly (mapped memory). The host looks at the record
// where it waits for the GPU anyway: cuda::synchronize() and every copy to the host (copy.cuh).
// If a check failed, that call throws the op's message. So the error comes at the first point
// where a result of the bad call can be seen, as CUDA reports a kernel's faults; everything the
// op computed in between is as if the bad slots were empty.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "drt/core/error.hpp"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {

// What a failed check reports (one message per site).
enum class CheckedIndex : int { gca_retrieved_chunk = 0 };

// The first failure since the host last looked. Written by the GPU (mapped), read by the host
// after a wait for the GPU.
struct DeferredFailure {
  int failed;  // 0 or 1, written last
  int site;    // a CheckedIndex
  int value;   // the bad index
  int extent;  // the range it should have been in: [−1, extent)
};

namespace detail {

// The record, allocated at the first check (nullptr before: nothing to look at).
inline DeferredFailure*& deferred_failure_record() {
  static DeferredFailure* record = nullptr;
  return record;
}

inline DeferredFailure* deferred_failure_record_for_writing() {
  DeferredFailure*& record = deferred_failure_record();
  if (record == nullptr) {  // never freed, like the stream and the allocator
    void* p = nullptr;
    DRT_CUDA_CHECK(cudaHostAlloc(&p, sizeof(DeferredFailure), cudaHostAllocMapped));
    record = static_cast<DeferredFailure*>(p);
    *record = DeferredFailure{0, 0, 0, 0};
  }
  return record;
}

inline std::string deferred_failure_message(const DeferredFailure& f) {
  switch (static_cast<CheckedIndex>(f.site)) {
    case CheckedIndex::gca_retrieved_chunk:
      return ::drt::detail::concat("gca: retrieved chunk ", f.value, " is outside the memory of ", f.extent,
                    " chunks (a GPU index, checked on the GPU: reported at the first wait for the GPU after the call)");
  }
  return ::drt::detail::concat("a GPU index ", f.value, " was outside [-1, ", f.extent, ")");
}

// One block (the indices of one op call are a few thousand): each thread copies its entries, kLoads
// at a time with their loads issued together (one wait on memory per pass, not per entry), the
// block finds the first bad position, and thread 0 records it unless an earlier failure is there.
static __global__ void keep_in_range_kernel(const std::int32_t* index, std::int32_t* safe, long long n, int extent,
                                            int site, DeferredFailure* record) {
  constexpr int kLoads = 8;
  __shared__ unsigned long long first_bad;
  if (threadIdx.x == 0) first_bad = static_cast<unsigned long long>(n);
  __syncthreads();
  for (long long base = threadIdx.x; base < n; base += kLoads * static_cast<long long>(blockDim.x)) {
    std::int32_t e[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const long long i = base + u * static_cast<long long>(blockDim.x);
      e[u] = i < n ? index[i] : -1;
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const long long i = base + u * static_cast<long long>(blockDim.x);
      if (i >= n) continue;
      const bool in_range = e[u] >= -1 && e[u] < extent;
      safe[i] = in_range ? e[u] : -1;
      if (!in_range) atomicMin(&first_bad, static_cast<unsigned long long>(i));
    }
  }
  __syncthreads();
  if (threadIdx.x != 0 || first_bad == static_cast<unsigned long long>(n)) return;
  volatile DeferredFailure* r = record;
  if (r->failed != 0) return;  // the host has not looked since the last one: keep the first
  r->site = site;
  r->value = index[first_bad];
  r->extent = extent;
  __threadfence_system();
  r->failed = 1;
}

}  // namespace detail

// Throws the first failure recorded since the last call, if any. Call it only after a wait for the
// GPU (it reads what the GPU wrote); cuda::synchronize() and copies to the host do.
inline void raise_deferred_failure() {
  volatile DeferredFailure* record = detail::deferred_failure_record();
  if (record == nullptr || record->failed == 0) return;
  const DeferredFailure f{1, record->site, record->value, record->extent};
  record->failed = 0;  // reported once
  throw Error(detail::deferred_failure_message(f));
}

// safe[i] = index[i] where −1 ≤ index[i] < extent, else −1, for the n entries of a device index;
// the first bad entry is reported by the next raise_deferred_failure() with `site`'s message. Queued
// on the stream: no wait.
inline void keep_in_range(const std::int32_t* index, std::int32_t* safe, long long n, int extent, CheckedIndex site) {
  if (n == 0) return;
  detail::keep_in_range_kernel<<<1, 1024, 0, stream()>>>(index, safe, n, extent, static_cast<int>(site),
                                                         detail::deferred_failure_record_for_writing());
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda
