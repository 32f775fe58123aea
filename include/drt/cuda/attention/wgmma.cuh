// drt/cuda/attention/wgmma.cuh — Hopper's warpgroup MMA (wgmma.mma_async, sm_90a) for the
// attention kernels from version 5 on: a 64×64 bf16 tile in shared memory in the layout wgmma
// reads, its loaders, the matrix descriptor, the fences, and the two instruction forms the kernels
// use (A from registers or from shared memory, B from shared memory). docs/wgmma-notes.md has the
// sources.
//
// Why: with mma.sync (mma.cuh) each warp loads its own copy of every B fragment from shared memory
// (ldmatrix), so a 64-row tile multiplied by 4 warps reads each K or V tile 4 times; Nsight Compute
// showed version 4's kernels busy in shared memory and short of issue slots. One wgmma is issued
// by a warpgroup (4 consecutive warps, 128 threads) for all 64 rows, reads B from shared memory
// once, and runs asynchronously: the warps issue it and wait for it later.
//
// Register layouts are those of mma.cuh: warp w of the warpgroup holds rows 16w..16w+15 of the
// 64×N accumulator as N/8 m16n8 C fragments (Accumulator16x64 for N = 64), and the A operand from
// registers is the m16n8k16 A fragment of each warp's 16 rows. So S = Q·Kᵀ from wgmma goes
// through the same softmax code, and P packs into the next product's A as before
// (a_from_accumulators).
//
// Shared-memory layout: the 128-byte swizzle. A tile row is 64 bf16 = 128 bytes; row r sits at
// byte 128·r, and its 16-byte chunk c (elements 8c..8c+7) at chunk position c ^ (r % 8). Rows of
// 8 form a 1,024-byte "atom", so tiles are aligned to 1,024 bytes. One layout serves both
// operands: K as B of S = Q·Kᵀ ("K-major": each key's d values contiguous) and V as B of P·V
// ("MN-major": each key's d values contiguous, read transposed).
//
// Compiled only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL): the kernels that use this guard their
// bodies with DRT_WGMMA_DEVICE, and the host takes them only where DRT_CUDA_WGMMA says the build
// has sm_90a code and the device is compute capability 9.0 (wgmma_available()).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/cuda/attention/mma.cuh"
#include "drt/cuda/error.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DRT_WGMMA_DEVICE 1
#endif

namespace drt::cuda::attention::wgmma {

using mma::Accumulator16x64;

inline constexpr int kWarpgroupThreads = 128;
inline constexpr int kRowBytes = 128;             // 64 bf16
inline constexpr int kAtomBytes = 8 * kRowBytes;  // 8 rows: the swizzle's repeat

// Whether this build carries sm_90a code (CMake defines DRT_CUDA_WGMMA when
// CMAKE_CUDA_ARCHITECTURES names 90a) and the current device runs it (compute capability 9.0).
// Asked once per device (every GCA and window-attention call asks).
inline bool wgmma_available() {
#if defined(DRT_CUDA_WGMMA)
  constexpr int kDevicesRemembered = 64;
  static signed char known[kDevicesRemembered] = {};  // 0 not asked yet, 1 yes, −1 no
  int device = 0;
  DRT_CUDA_CHECK(cudaGetDevice(&device));
  if (device < kDevicesRemembered && known[device] != 0) return known[device] > 0;
  int major = 0, minor = 0;
  DRT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  DRT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  const bool available = major == 9 && minor == 0;
  if (device < kDevicesRemembered) known[device] = available ? 1 : -1;
  return available;
#else
  return false;
#endif
}

// A 64×64 bf16 tile in the 128-byte swizzle (see the top of this file).
struct alignas(kAtomBytes) SwizzledTile {
  __nv_bfloat16 at[64 * 64];
};

// Starts copying 64 bf16 rows of 64 into `tile` (cp.async): row r from first_row + r·row_stride
// elements (16-byte aligned), or zeros for rows r ≥ valid_rows (plain shared stores). Each thread
// moves the same 16-byte column of rows r, r + kThreads/8, ...: r % 8, and so the swizzled
// position, is the same for all of them. All kThreads threads of the block call it; the copies
// are waited for as mma.cuh's (wait_async_copies*), then fence_shared_for_wgmma and a barrier.
template <int kThreads>
__device__ inline void stage_rows_swizzled_async(SwizzledTile& tile, const __nv_bfloat16* first_row,
                                                 long long row_stride, int valid_rows = 64) {
  constexpr int kChunksPerRow = 8;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kRowsPerPass % 8 == 0 && 64 % kRowsPerPass == 0,
                "whole atoms per pass");
  const int r = threadIdx.x / kChunksPerRow, c = threadIdx.x % kChunksPerRow;
  const __nv_bfloat16* src = first_row + r * row_stride + c * 8;
  unsigned char* dst = reinterpret_cast<unsigned char*>(tile.at) + r * kRowBytes + ((c ^ (r & 7)) << 4);
#pragma unroll
  for (int pass = 0; pass < 64 / kRowsPerPass; ++pass) {
    unsigned char* to = dst + pass * kRowsPerPass * kRowBytes;
    if (r + pass * kRowsPerPass < valid_rows) mma::copy_async_16(to, src + pass * kRowsPerPass * row_stride);
    else *reinterpret_cast<uint4*>(to) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// Stores four fp32 values, rounded to bf16, as columns c..c+3 of row r of a swizzled tile (half
// of a 16-byte chunk), and at `copy` + r·64 + c when copy is not null.
__device__ inline void store_rounded_quad(SwizzledTile& tile, __nv_bfloat16* copy, int r, int c, float4 x) {
  const uint2 packed{mma::pack_bf16x2(x.x, x.y), mma::pack_bf16x2(x.z, x.w)};
  unsigned char* bytes = reinterpret_cast<unsigned char*>(tile.at);
  *reinterpret_cast<uint2*>(bytes + r * kRowBytes + (((c / 8) ^ (r & 7)) << 4) + (c % 8) * 2) = packed;
  if (copy != nullptr) *reinterpret_cast<uint2*>(copy + r * 64 + c) = packed;
}

// Rounds two 64×64 fp32 matrices (contiguous rows, 16-byte aligned) into two tiles with plain
// stores, and writes the same bf16 values to `copy_a`, `copy_b` (64 contiguous bf16 rows; nullptr:
// no copy): the GCA backward's query pass stages Q and dO once per block this way and hands the
// rounded rows to the key pass. Every load is issued before the first store, so the block waits
// for memory once (a store between them would order the loads behind it: the compiler cannot tell
// the copies from the sources). All kThreads threads of the block call it; then
// fence_shared_for_wgmma and a barrier.
template <int kThreads>
__device__ inline void stage_two_bf16_swizzled(SwizzledTile& tile_a, const float* src_a, __nv_bfloat16* copy_a,
                                               SwizzledTile& tile_b, const float* src_b, __nv_bfloat16* copy_b) {
  constexpr int kVectorsPerRow = 64 / 4;  // float4s
  constexpr int kPasses = 64 * kVectorsPerRow / kThreads;
  static_assert(64 * kVectorsPerRow % kThreads == 0, "whole passes");
  float4 a[kPasses], b[kPasses];
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int idx = pass * kThreads + threadIdx.x;
    a[pass] = *reinterpret_cast<const float4*>(src_a + idx * 4);
    b[pass] = *reinterpret_cast<const float4*>(src_b + idx * 4);
  }
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int idx = pass * kThreads + threadIdx.x, r = idx / kVectorsPerRow, c = idx % kVectorsPerRow * 4;
    store_rounded_quad(tile_a, copy_a, r, c, a[pass]);
    store_rounded_quad(tile_b, copy_b, r, c, b[pass]);
  }
}

// One 64×64 fp32 matrix (contiguous rows, 16-byte aligned) on its way into a SwizzledTile as
// bf16, in two halves: load() issues every thread's loads, store_rounded() rounds and stores them
// later, so that a kernel does other work while they fly (the GCA forward: its first chunk's
// request and its slot table). All kThreads threads of the block call both; then
// fence_shared_for_wgmma and a barrier.
template <int kThreads>
struct Fp32TileInFlight {
  static constexpr int kVectorsPerRow = 64 / 4;  // float4s
  static constexpr int kPasses = 64 * kVectorsPerRow / kThreads;
  static_assert(64 * kVectorsPerRow % kThreads == 0, "whole passes");
  float4 part[kPasses];

  __device__ void load(const float* src) {
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass)
      part[pass] = *reinterpret_cast<const float4*>(src + (pass * kThreads + threadIdx.x) * 4);
  }
  __device__ void store_rounded(SwizzledTile& tile) const {
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      const int idx = pass * kThreads + threadIdx.x;
      store_rounded_quad(tile, nullptr, idx / kVectorsPerRow, idx % kVectorsPerRow * 4, part[pass]);
    }
  }
};

// The first 1,024-byte boundary at or after p in shared memory. Kernels whose SwizzledTiles live
// in dynamic shared memory place them there (and ask for kAtomBytes more than they use): the
// alignment of the dynamic window's start is not something to rely on.
__device__ inline unsigned char* align_to_atom(unsigned char* p) {
  const std::uint32_t address = mma::shared_address(p);
  return p + ((kAtomBytes - address % kAtomBytes) % kAtomBytes);
}

// ---- descriptors -------------------------------------------------------------------------------
// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor"): bits 0–13 the start address,
// 16–29 the leading-dimension byte offset, 32–45 the stride byte offset (each in 16-byte units),
// 62–63 the swizzle (1 = 128 bytes). The base-offset bits stay 0: tiles start on an atom.
__device__ inline std::uint64_t descriptor(const void* tile, std::uint32_t leading_bytes, std::uint32_t stride_bytes) {
  const std::uint32_t address = mma::shared_address(tile);
  return static_cast<std::uint64_t>((address & 0x3FFFF) >> 4) |
         static_cast<std::uint64_t>((leading_bytes & 0x3FFFF) >> 4) << 16 |
         static_cast<std::uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32 | 1ull << 62;
}

// B = Tᵀ for the stored tile T (B[k][n] = T[n][k]; K in S = Q·Kᵀ): "K-major". The same
// descriptor gives an A operand A = T (A[m][k] = T[m][k]; Q in S = Q·Kᵀ, K in Sᵀ = K·Qᵀ). The stride offset
// steps over 8 rows (an atom); the leading offset is unused with swizzling. Step kk (k = 16kk..)
// starts 32 bytes further into every row: the hardware applies the swizzle to the address it forms.
__device__ inline std::uint64_t rows_as_columns(const SwizzledTile& tile, int kk) {
  return descriptor(tile.at, 16, kAtomBytes) + static_cast<std::uint64_t>(2 * kk);  // +32 bytes
}

// B = T itself (B[k][n] = T[k][n]; V in P·V): "MN-major", read with the transpose bit. The stride
// offset steps over 8 rows (8 values of k); the leading offset would step to the next 64 columns
// of n (there are none). Step kk (k = 16kk..) starts 16 rows = 2,048 bytes further.
__device__ inline std::uint64_t rows_as_rows(const SwizzledTile& tile, int kk) {
  return descriptor(tile.at, 64 * kRowBytes, kAtomBytes) + static_cast<std::uint64_t>(kk * 2 * kAtomBytes / 16);
}

// ---- ordering ----------------------------------------------------------------------------------
// wgmma reads shared memory through the "async proxy": writes made by ordinary stores or cp.async
// must be fenced before a barrier makes them visible to it (PTX ISA, "Async Proxy").
__device__ inline void fence_shared_for_wgmma() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Before the first wgmma, and between ordinary register writes (softmax, zeroing) and a wgmma
// that reads those registers as accumulators or A.
__device__ inline void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `pending` committed groups are still running.
template <int pending>
__device__ inline void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(pending) : "memory");
}

// The compiler sees a wgmma as reading and writing its registers at the instruction, but the
// hardware does so until the wait: these empty asm statements, placed after the wait, keep every
// use of the accumulators (and every reuse of the A registers) after it (as CUTLASS's
// warpgroup_fence_operand).
__device__ inline void hold(Accumulator16x64& x) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) asm volatile("" : "+f"(x.c[j][u])::"memory");
}
__device__ inline void hold(std::uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int u = 0; u < 4; ++u) asm volatile("" : "+r"(a[kk][u])::"memory");
}

// ---- the instructions --------------------------------------------------------------------------
// The 32 accumulator registers of a 64×64 fp32 result, as asm operands %0..%31 (both forms).
#define DRT_WGMMA_ACCUMULATORS(c)                                                                         \
  "+f"(c[0][0]), "+f"(c[0][1]), "+f"(c[0][2]), "+f"(c[0][3]), "+f"(c[1][0]), "+f"(c[1][1]), "+f"(c[1][2]), \
      "+f"(c[1][3]), "+f"(c[2][0]), "+f"(c[2][1]), "+f"(c[2][2]), "+f"(c[2][3]), "+f"(c[3][0]), "+f"(c[3][1]), \
      "+f"(c[3][2]), "+f"(c[3][3]), "+f"(c[4][0]), "+f"(c[4][1]), "+f"(c[4][2]), "+f"(c[4][3]), "+f"(c[5][0]), \
      "+f"(c[5][1]), "+f"(c[5][2]), "+f"(c[5][3]), "+f"(c[6][0]), "+f"(c[6][1]), "+f"(c[6][2]), "+f"(c[6][3]), \
      "+f"(c[7][0]), "+f"(c[7][1]), "+f"(c[7][2]), "+f"(c[7][3])
// d (64×64, fp32) = A·B + (accumulate ? d : 0) for A (64×16) in registers (each warp's m16n8k16 A
// fragment) and B (16×64) described by b; kTransposeB = 1 for an MN-major B.
template <int kTransposeB>
__device__ inline void multiply_async(Accumulator16x64& d, const std::uint32_t (&a)[4], std::uint64_t b, bool accumulate) {
#if defined(DRT_WGMMA_DEVICE)
  float(&c)[8][4] = d.c;
  asm volatile(
      "{\n"
      ".reg .pred keep;\n"
      "setp.ne.b32 keep, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, keep, 1, 1, %38;\n"
      "}\n"
      : DRT_WGMMA_ACCUMULATORS(c)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(kTransposeB));
#endif
}

// d (64×64, fp32) = A·B + (accumulate ? d : 0) with both operands in shared memory: A (64×16)
// described by a (K-major: rows_as_columns of the stored tile A), B (16×64) by b as above. Used
// where A is a resident tile (the GCA backward's Q, dO, K, V): no registers hold it.
template <int kTransposeB>
__device__ inline void multiply_shared_async(Accumulator16x64& d, std::uint64_t a, std::uint64_t b, bool accumulate) {
#if defined(DRT_WGMMA_DEVICE)
  float(&c)[8][4] = d.c;
  asm volatile(
      "{\n"
      ".reg .pred keep;\n"
      "setp.ne.b32 keep, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, keep, 1, 1, 0, %35;\n"
      "}\n"
      : DRT_WGMMA_ACCUMULATORS(c)
      : "l"(a), "l"(b), "r"(int(accumulate)), "n"(kTransposeB));
#endif
}

#undef DRT_WGMMA_ACCUMULATORS

// acc (64×64) = A (64×64: four A fragments per warp, k = 0..63) · Tᵀ for a stored tile T, or
// acc += that with `accumulate`: four k-steps, committed as one group (not waited for).
__device__ inline void multiply_by_transposed_async(Accumulator16x64& acc, const std::uint32_t (&a)[4][4],
                                                    const SwizzledTile& t, bool accumulate) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) multiply_async<0>(acc, a[kk], rows_as_columns(t, kk), accumulate || kk > 0);
  commit();
}

// acc (64×64) += A (64×64) · T for a stored tile T: four k-steps, committed as one group.
__device__ inline void multiply_accumulate_async(Accumulator16x64& acc, const std::uint32_t (&a)[4][4],
                                                 const SwizzledTile& t) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) multiply_async<1>(acc, a[kk], rows_as_rows(t, kk), true);
  commit();
}

// acc (64×64) = A · Tᵀ for stored tiles A and T (acc[m][n] = Σ_k A[m][k] T[n][k]), both read from
// shared memory: four k-steps, committed as one group.
__device__ inline void multiply_tile_by_transposed_async(Accumulator16x64& acc, const SwizzledTile& a,
                                                         const SwizzledTile& t) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) multiply_shared_async<0>(acc, rows_as_columns(a, kk), rows_as_columns(t, kk), kk > 0);
  commit();
}

}  // namespace drt::cuda::attention::wgmma
