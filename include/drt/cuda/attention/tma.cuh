// drt/cuda/attention/tma.cuh — Hopper's tensor memory accelerator (TMA) for the attention
// kernels: one thread asks the copy engine for a whole 64×64 bf16 tile, which lands in shared
// memory already in the 128-byte swizzle that wgmma reads (wgmma::SwizzledTile), and an mbarrier
// in shared memory tells the block when its bytes are all there.
//
// Why: with cp.async (mma::copy_async_16) every thread of the block computes its own addresses and
// issues its share of 16-byte copies, and then waits, fences and meets the others at a barrier.
// In GCA's forward that fetch was 111 of the 469 instructions each warp issued per chunk
// (docs/kernels.md), in a kernel short of issue slots. With the TMA the fetch of a chunk's K and
// V is a handful of instructions in one thread; the others only wait on the mbarrier.
//
// The tiles are described by a tensor map (CUtensorMap, made on the host by the driver's
// cuTensorMapEncodeTiled, reached through the runtime so that drt links no libcuda) and passed to
// the kernel as a __grid_constant__ parameter. The map here is the one the attention kernels
// need: rows of 64 bf16, `groups` heads interleaved (row r of head g at (r·groups + g)·64), and a
// box of 64 consecutive rows of one head.
//
// mbarrier protocol (PTX ISA, "Parallel Synchronization and Communication Instructions:
// mbarrier"): a barrier initialised with an arrival count of 1 completes a phase when its one
// arrival (expect_bytes, by the thread that issues the copies) has come and the copies have
// delivered the bytes it announced. Waiters name the phase they wait for by its parity: the k-th
// use of a barrier (k = 0, 1, ...) waits for parity k % 2.
//
// Device code here needs sm_90; the kernels that use it guard their bodies with DRT_WGMMA_DEVICE
// (wgmma.cuh) as the rest of version 5.
#pragma once

#include <cuda.h>  // CUtensorMap and the encoder's signature (types only: no libcuda is linked)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drt/core/error.hpp"
#include "drt/cuda/attention/wgmma.cuh"
#include "drt/cuda/error.cuh"

namespace drt::cuda::attention::tma {

// ---- host: the tensor map -----------------------------------------------------------------------

using EncodeTiled = decltype(&cuTensorMapEncodeTiled);

// The driver's cuTensorMapEncodeTiled, looked up once through the runtime.
inline EncodeTiled encode_tiled() {
  static const EncodeTiled encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    DRT_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault,
                                                    &found));
    DRT_CHECK(found == cudaDriverEntryPointSuccess && function != nullptr,
              "tma: the CUDA driver has no cuTensorMapEncodeTiled (a driver for CUDA 12 or later is needed)");
    return reinterpret_cast<EncodeTiled>(function);
  }();
  return encode;
}

// A map over `rows` rows of `groups` interleaved heads of 64 bf16 each (element c of row r, head g
// at base[(r·groups + g)·64 + c]) whose box is rows r..r+63 of one head: a SwizzledTile. base
// must be 16-byte aligned (the allocator's are). Coordinates (load_tile_async): {0, g, r}.
inline CUtensorMap encode_head_rows_map(const __nv_bfloat16* base, long long rows, int groups) {
  DRT_CHECK(reinterpret_cast<std::uintptr_t>(base) % 16 == 0, "tma: the tensor's base is not 16-byte aligned");
  DRT_CHECK(rows > 0 && rows < (1ll << 31) && groups > 0, "tma: ", rows, " rows of ", groups,
            " heads are outside what a tensor map addresses");
  CUtensorMap map{};
  const cuuint64_t extent[3] = {64, static_cast<cuuint64_t>(groups), static_cast<cuuint64_t>(rows)};
  const cuuint64_t stride_bytes[2] = {wgmma::kRowBytes, static_cast<cuuint64_t>(groups) * wgmma::kRowBytes};
  const cuuint32_t box[3] = {64, 1, 64};
  const cuuint32_t element_stride[3] = {1, 1, 1};
  const CUresult status = encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(base), extent, stride_bytes, box,
      element_stride, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DRT_CHECK(status == CUDA_SUCCESS, "tma: cuTensorMapEncodeTiled failed with CUresult ", static_cast<int>(status),
            " for ", rows, " rows of ", groups, " heads");
  return map;
}

// encode_head_rows_map, remembering the last few maps made (a map depends on nothing but these
// three arguments): the GCA forward asks for the same two, of the chunk memory's bf16 copies, call
// after call. Like the rest of the backend, for one host thread.
inline CUtensorMap head_rows_map(const __nv_bfloat16* base, long long rows, int groups) {
  struct Made {
    const __nv_bfloat16* base = nullptr;
    long long rows = 0;
    int groups = 0;
    CUtensorMap map{};
  };
  constexpr int kRemembered = 4;
  static Made made[kRemembered];
  static int next = 0;
  for (const Made& m : made)
    if (m.base == base && m.rows == rows && m.groups == groups) return m.map;
  Made& slot = made[next];
  next = (next + 1) % kRemembered;
  slot = Made{base, rows, groups, encode_head_rows_map(base, rows, groups)};
  return slot.map;
}

// ---- device: mbarriers and the copy --------------------------------------------------------------

// One thread initialises; a barrier (__syncthreads) must follow before any other thread waits.
__device__ inline void init_barrier(std::uint64_t& barrier, int arrivals) {
#if defined(DRT_WGMMA_DEVICE)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mma::shared_address(&barrier)), "r"(arrivals)
               : "memory");
#endif
}
// After init_barrier(s), before the first copy that completes on them: the initialisation is
// made visible to the copy engine (the async proxy).
__device__ inline void fence_barrier_init() {
#if defined(DRT_WGMMA_DEVICE)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// The issuing thread's arrival, announcing the bytes the phase's copies will deliver.
__device__ inline void expect_bytes(std::uint64_t& barrier, std::uint32_t bytes) {
#if defined(DRT_WGMMA_DEVICE)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(mma::shared_address(&barrier)),
               "r"(bytes)
               : "memory");
#endif
}

// Starts copying the box of `map` at {0, head, first_row} into `tile`; its bytes count towards
// `barrier`'s current phase.
__device__ inline void load_tile_async(wgmma::SwizzledTile& tile, const CUtensorMap& map, int head, int first_row,
                                       std::uint64_t& barrier) {
#if defined(DRT_WGMMA_DEVICE)
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(mma::shared_address(tile.at)),
      "l"(reinterpret_cast<std::uint64_t>(&map)), "r"(0), "r"(head), "r"(first_row),
      "r"(mma::shared_address(&barrier))
      : "memory");
#endif
}

// Waits until the phase of the given parity has completed: its copies' bytes are in shared memory
// and visible to this thread and to the wgmmas it issues next.
__device__ inline void wait(std::uint64_t& barrier, std::uint32_t parity) {
#if defined(DRT_WGMMA_DEVICE)
  const std::uint32_t address = mma::shared_address(&barrier);
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred complete;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n"
        "}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}

}  // namespace drt::cuda::attention::tma
