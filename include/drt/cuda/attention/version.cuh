// drt/cuda/attention/version.cuh — a cap on which version of the attention kernels runs.
//
// Each attention op on the GPU comes in numbered versions (window_attention.cuh, gca.cuh):
// 1 warp per row, 2 tiled fp32, 3 bf16 tensor cores, 4 bf16 tensor cores with cp.async-staged
// tiles (window_attention_v4.cuh, gca_v4.cuh), 5 Hopper's warpgroup MMA: window attention's
// forward, GCA's forward and backward (window_attention_v5.cuh, gca_v5.cuh; sm_90a builds on
// H100/H200 only). A call takes the highest version that fits its shape, element type and
// precision switch. The cap lowers that ceiling, so that the kernel lab (bench/kernel_lab.cu) and
// the tests can run every version on the same inputs and show how the fast one was reached;
// programs never need it. Version 1 takes every call, so any cap ≥ 1 leaves every call a version.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "drt/core/error.hpp"

namespace drt::cuda::attention {

inline constexpr int kNewestVersion = 5;

inline int& version_cap_storage() {
  static int cap = kNewestVersion;
  return cap;
}

// The highest version a call may take (kNewestVersion unless a VersionCap is alive).
inline int version_cap() { return version_cap_storage(); }

// Caps the version in a scope:  { attention::VersionCap lab(1); ... runs version 1 ... }
class VersionCap {
 public:
  explicit VersionCap(int cap) : previous_(version_cap()) {
    DRT_CHECK(cap >= 1 && cap <= kNewestVersion, "attention version cap ", cap, " is not in 1..", kNewestVersion);
    version_cap_storage() = cap;
  }
  ~VersionCap() { version_cap_storage() = previous_; }
  VersionCap(const VersionCap&) = delete;
  VersionCap& operator=(const VersionCap&) = delete;

 private:
  int previous_;
};

// Whether every pointer (nullptr: an absent tensor, skipped) is aligned to `bytes`: version 3
// reads and writes rows as 16-byte (and GCA's gradients as 8-byte) vectors.
inline bool all_aligned(std::size_t bytes, std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % bytes != 0) return false;
  return true;
}

}  // namespace drt::cuda::attention
