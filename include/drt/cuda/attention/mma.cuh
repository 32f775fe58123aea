// drt/cuda/attention/mma.cuh — the building blocks of the tensor-core attention kernels (version
// 3): bf16 tiles in shared memory, their fragments for mma.sync.m16n8k16 (bf16 × bf16 → fp32),
// and the one instruction itself, through inline PTX (sm_80 and later; drt builds for sm_90).
//
// One warp multiplies a 16×16 A by a 16×8 B into a 16×8 fp32 C. Each lane holds a fixed piece of
// each operand ("Matrix Fragments for mma.m16n8k16 with floating point type", PTX ISA). With
//   g = lane / 4 (the group, 0..7) and t = lane % 4 (the thread in the group, 0..3):
//   A (16×16, row-major, 4 registers of 2 bf16; the lower half of a register is the lower column)
//     a[0] = A[g    ][2t, 2t+1]      a[1] = A[g + 8][2t, 2t+1]
//     a[2] = A[g    ][2t+8, 2t+9]    a[3] = A[g + 8][2t+8, 2t+9]
//   B (16×8, "col": indexed B[k][n], 2 registers of 2 bf16)
//     b[0] = B[2t, 2t+1][g]          b[1] = B[2t+8, 2t+9][g]
//   C (16×8 fp32, 4 registers)
//     c[0], c[1] = C[g][2t, 2t+1]    c[2], c[3] = C[g + 8][2t, 2t+1]
// So the C fragments of two neighbouring 16×8 tiles (columns 16j..16j+7 and 16j+8..16j+15) are
// exactly the A fragment of a 16×16 tile once packed to bf16: a softmax P computed in registers
// feeds the next product without a trip through shared memory (a_from_accumulators).
//
// Fragments are loaded with ldmatrix (each lane gives the address of one 16-byte row of an 8×8
// bf16 matrix; lane l gets elements [l/4][2(l%4), 2(l%4)+1] of each matrix, or with .trans the
// elements [2(l%4), 2(l%4)+1][l/4] — the B layout of a matrix stored k-major). One ldmatrix.x4
// replaces eight 32-bit shared loads per lane, and .trans gives the transposed operands (V in
// P·V, dO in Pᵀ·dO, K in dS·K) without a transposed copy in shared memory.
//
// Tiles are kTileRows × kTileCols bf16 with rows padded to kPitch = kTileCols + 8 elements
// (144 bytes): the 8 rows one ldmatrix phase reads start 4 banks apart, so they cover all 32
// banks once (no conflicts), and every row stays 16-byte aligned as ldmatrix requires. Padding
// rather than an XOR swizzle: the index arithmetic stays obvious, for 12.5% more shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace drt::cuda::attention::mma {

inline constexpr int kTileRows = 64;  // rows of a staged tile (queries or keys)
inline constexpr int kTileCols = 64;  // columns (the head width d, or keys for a P tile)
inline constexpr int kPitch = kTileCols + 8;

// Softmaxes run in base 2 (2^x is one MUFU instruction, exp2_flush below): scores are scaled by
// log2(e), and a base-2 log-sum-exp is turned back into a natural one with ln(2).
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 2^x as one MUFU.EX2 instruction (ex2.approx.ftz.f32). exp2f compiles to ex2.approx.f32, whose
// results below 2^-126 (denormals) the compiler guards with a compare and two multiplies around
// the instruction: four instructions for each of the 32 probabilities a lane computes per tile,
// in kernels that Nsight Compute shows short of issue slots. A probability below 2^-126 of its
// row's largest adds nothing any fp32 sum here can hold, so flushing it to 0 costs no accuracy;
// −∞ (a masked score) still gives 0.
__device__ inline float exp2_flush(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct alignas(16) BfTile {
  __nv_bfloat16 at[kTileRows][kPitch];
};

// Two floats as one bf16x2 register, rounded to nearest even; `lo` lands in the lower half (the
// lower column of a fragment).
__device__ inline std::uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

// Writes four consecutive floats into row r, columns c..c+3 of a tile, as bf16 (one 8-byte store).
__device__ inline void store_bf16x4(BfTile& tile, int r, int c, float4 x) {
  uint2 packed{pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w)};
  *reinterpret_cast<uint2*>(&tile.at[r][c]) = packed;
}

// Stages a 64×64 fp32 matrix into `tile` as bf16: row r comes from src(r) (16-byte aligned), or
// is zeros where src(r) is nullptr (a row past the end of a sequence: masked probabilities are
// exactly 0, and 0 times leftover shared memory could be 0·NaN). All threads of the block call
// it; each moves float4s, so a warp reads two whole 256-byte rows at a time.
template <class RowPointer>
__device__ inline void stage_bf16(BfTile& tile, RowPointer src) {
  constexpr int kVectorsPerRow = kTileCols / 4;
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kTileRows * kVectorsPerRow; idx += blockDim.x) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * 4;
    const float* row = src(r);
    store_bf16x4(tile, r, c, row ? *reinterpret_cast<const float4*>(row + c) : make_float4(0.f, 0.f, 0.f, 0.f));
  }
}

__device__ inline std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global → shared, asynchronously (cp.async.cg: cached in L2 only, as each chunk row is
// read once per block), without passing through registers.
__device__ inline void copy_async_16(void* shared_dst, const void* global_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(shared_dst)),
               "l"(static_cast<unsigned long long>(__cvta_generic_to_global(global_src)))
               : "memory");
}
__device__ inline void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits for this thread's copies; a __syncthreads() after it makes everyone's visible.
__device__ inline void wait_async_copies() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}

__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}

// The A fragment of the 16×16 block at (row0, col0) of a row-major tile X: A = X[row0.., col0..].
// Matrices 0..3 of the x4 load are (rows +0, cols +0), (+8, +0), (+0, +8), (+8, +8) = a[0..3];
// lane l addresses row (l % 16) of them, column block l / 16.
__device__ inline void load_a(std::uint32_t (&a)[4], const BfTile& x, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, &x.at[row0 + (lane & 15)][col0 + (lane >> 4) * 8]);
}

// The A fragment of the 16×16 block at (row0, col0) of Xᵀ, where X is the stored tile:
// A[r][c] = X[col0 + c][row0 + r]. With .trans, matrix j is read from stored rows
// col0 + (0 or 8) and columns row0 + (0 or 8): a[0] (A rows +0, cols +0) = X rows +0, cols +0;
// a[1] (A rows +8) = X cols +8; a[2] (A cols +8) = X rows +8; a[3] = X rows +8, cols +8.
__device__ inline void load_a_transposed(std::uint32_t (&a)[4], const BfTile& x, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(a, &x.at[col0 + (lane & 7) + (lane >> 4) * 8][row0 + ((lane >> 3) & 1) * 8]);
}

// B fragments for two neighbouring n-tiles when B = Xᵀ for a row-major stored X (B[k][n] =
// X[n][k]: the keys in S = Q·Kᵀ, V in dP = dO·Vᵀ). b[0..1] cover n = n0..n0+7, b[2..3] cover
// n0+8..n0+15, all with k = k0..k0+15. Without .trans a lane gets X[n][k], X[n][k+1] — B's
// layout, since B is "col" (k fastest within a register). Matrices: (n +0, k +0), (n +0, k +8),
// (n +8, k +0), (n +8, k +8).
__device__ inline void load_b_pair_from_rows(std::uint32_t (&b)[4], const BfTile& x, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, &x.at[n0 + (lane & 7) + (lane >> 4) * 8][k0 + ((lane >> 3) & 1) * 8]);
}

// B fragments for two neighbouring n-tiles when B = X itself (B[k][n] = X[k][n]: V in P·V, dO in
// Pᵀ·dO, K in dS·K, Q in dSᵀ·Q). A lane needs X[k][n], X[k+1][n]: two rows, one column, which
// is what .trans hands out. Matrices: (k +0, n +0), (k +8, n +0), (k +0, n +8), (k +8, n +8).
__device__ inline void load_b_pair_from_columns(std::uint32_t (&b)[4], const BfTile& x, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, &x.at[k0 + (lane & 7) + ((lane >> 3) & 1) * 8][n0 + (lane >> 4) * 8]);
}

// c += a · b on tensor cores (16×16 by 16×8, fp32 accumulators).
__device__ inline void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A warp's 16 rows × 64 columns of fp32 accumulators: eight 16×8 C fragments (tile j covers
// columns 8j..8j+7).
struct Accumulator16x64 {
  float c[8][4];

  __device__ void zero() {
#pragma unroll
    for (int j = 0; j < 8; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
  }
};

// The bf16 A fragment of columns 16kk..16kk+15 of a 16×64 accumulator (see the layout above):
// tile 2kk gives a[0] and a[1], tile 2kk+1 gives a[2] and a[3].
__device__ inline void a_from_accumulators(std::uint32_t (&a)[4], const Accumulator16x64& x, int kk) {
  a[0] = pack_bf16x2(x.c[2 * kk][0], x.c[2 * kk][1]);
  a[1] = pack_bf16x2(x.c[2 * kk][2], x.c[2 * kk][3]);
  a[2] = pack_bf16x2(x.c[2 * kk + 1][0], x.c[2 * kk + 1][1]);
  a[3] = pack_bf16x2(x.c[2 * kk + 1][2], x.c[2 * kk + 1][3]);
}

// All four A fragments (columns 0..63) of a 16×64 accumulator.
__device__ inline void a_fragments(std::uint32_t (&a)[4][4], const Accumulator16x64& x) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) a_from_accumulators(a[kk], x, kk);
}

// Where this lane's accumulator entries sit in its warp's 16×64 block, for blocks of 4 warps
// that own 16 rows each: entry c[j][u] is row row0 + group + 8·(u / 2) of the tile, column
// 8j + 2·pair + u % 2 (the C layout above).
struct FragmentLane {
  int row0, group, pair;  // row0: the warp's first row in the 64-row tile
  __device__ FragmentLane() : row0(threadIdx.x / 32 * 16), group(threadIdx.x % 32 / 4), pair(threadIdx.x % 4) {}
  __device__ int row(int u) const { return row0 + group + 8 * (u / 2); }
  __device__ int col(int j, int u) const { return 8 * j + 2 * pair + u % 2; }
};

// acc (16×64) += A (16×64: four A fragments, k = 0..63) · Xᵀ for a stored 64×64 tile X
// (acc[r][n] += Σ_k A[r][k] X[n][k]).
__device__ inline void multiply_by_transposed(Accumulator16x64& acc, const std::uint32_t (&a)[4][4], const BfTile& x) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      std::uint32_t b[4];
      load_b_pair_from_rows(b, x, 16 * kk, 16 * jj);
      mma_bf16(acc.c[2 * jj], a[kk], b[0], b[1]);
      mma_bf16(acc.c[2 * jj + 1], a[kk], b[2], b[3]);
    }
}

// acc (16×64) += A (16×64) · X for a stored 64×64 tile X (acc[r][n] += Σ_k A[r][k] X[k][n]).
__device__ inline void multiply(Accumulator16x64& acc, const std::uint32_t (&a)[4][4], const BfTile& x) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      std::uint32_t b[4];
      load_b_pair_from_columns(b, x, 16 * kk, 16 * jj);
      mma_bf16(acc.c[2 * jj], a[kk], b[0], b[1]);
      mma_bf16(acc.c[2 * jj + 1], a[kk], b[2], b[3]);
    }
}

// The four A fragments of rows row0..row0+15 of a stored tile (all 64 columns).
__device__ inline void load_a_rows(std::uint32_t (&a)[4][4], const BfTile& x, int row0) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) load_a(a[kk], x, row0, 16 * kk);
}

// The four A fragments of rows row0..row0+15 of Xᵀ (columns row0.. of the stored tile).
__device__ inline void load_a_rows_transposed(std::uint32_t (&a)[4][4], const BfTile& x, int row0) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) load_a_transposed(a[kk], x, row0, 16 * kk);
}

// Sums x over the four lanes of a group (the lanes holding one accumulator row).
__device__ inline float group_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ inline float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}


// ---- added for version 4 of window attention (window_attention_v4.cuh) -------------------------

// 4 bytes global → shared, asynchronously (cp.async.ca: the .cg form only moves 16 bytes). For
// per-row statistics (lse, δ) whose rows are not 16-byte aligned.
__device__ inline void copy_async_4(void* shared_dst, const void* global_src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(shared_dst)),
               "l"(static_cast<unsigned long long>(__cvta_generic_to_global(global_src)))
               : "memory");
}

// Waits until at most `pending` of this thread's most recently committed groups of copies are
// still in flight (cp.async.wait_group): with one group per tile, wait_async_copies_but<1>()
// lets the tile just requested keep loading while the one before it is used. As with
// wait_async_copies(), a __syncthreads() after it makes every thread's copies visible.
template <int pending>
__device__ inline void wait_async_copies_but() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

// Starts copying a 64×64 bf16 matrix into `tile` (cp.async): row r from first_row + r·row_stride
// elements (16-byte aligned), or zeros for rows r ≥ valid_rows (a row past the end of a sequence:
// masked probabilities are exactly 0, and 0 times leftover shared memory could be 0·NaN; the
// zeros are plain shared stores). Everything has landed after wait_async_copies*() and a barrier.
// All kThreads threads of the block call it. Each thread's copies are unrolled at compile-time
// offsets from one source and one destination pointer: an earlier loader computed a row pointer
// per 16-byte copy through a callback, in a loop the compiler could not unroll (blockDim is not
// known to it), and that integer work was among the largest items of the GCA forward's
// instructions in Nsight Compute.
template <int kThreads>
__device__ inline void stage_rows_async(BfTile& tile, const __nv_bfloat16* first_row, long long row_stride,
                                        int valid_rows = kTileRows) {
  constexpr int kVectorsPerRow = kTileCols / 8;  // 16 bytes = 8 bf16
  constexpr int kRowsPerPass = kThreads / kVectorsPerRow;
  static_assert(kThreads % kVectorsPerRow == 0 && kTileRows % kRowsPerPass == 0, "whole rows per pass");
  const int r = threadIdx.x / kVectorsPerRow, c = threadIdx.x % kVectorsPerRow * 8;
  const __nv_bfloat16* src = first_row + r * row_stride + c;
  __nv_bfloat16* dst = &tile.at[r][c];
  const long long pass_stride = kRowsPerPass * row_stride;
#pragma unroll
  for (int pass = 0; pass < kTileRows / kRowsPerPass; ++pass) {
    __nv_bfloat16* to = dst + pass * kRowsPerPass * kPitch;
    if (r + pass * kRowsPerPass < valid_rows) copy_async_16(to, src + pass * pass_stride);
    else *reinterpret_cast<uint4*>(to) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// multiply_by_transposed with A = rows row0..row0+15 of the stored tile `a`, its fragments
// loaded from shared memory one 16-column block at a time (4 registers live instead of 16):
// acc[r][n] += Σ_k a[row0 + r][k] · x[n][k].
__device__ inline void multiply_rows_by_transposed(Accumulator16x64& acc, const BfTile& a, int row0, const BfTile& x) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    std::uint32_t af[4];
    load_a(af, a, row0, 16 * kk);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      std::uint32_t b[4];
      load_b_pair_from_rows(b, x, 16 * kk, 16 * jj);
      mma_bf16(acc.c[2 * jj], af, b[0], b[1]);
      mma_bf16(acc.c[2 * jj + 1], af, b[2], b[3]);
    }
  }
}

// multiply with A = bf16(p) for a 16×64 fp32 accumulator p, packed one 16-column block at a time
// (the same values as a_fragments, 4 registers live instead of 16): acc[r][n] += Σ_k p[r][k] x[k][n].
__device__ inline void multiply_packed(Accumulator16x64& acc, const Accumulator16x64& p, const BfTile& x) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    std::uint32_t af[4];
    a_from_accumulators(af, p, kk);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      std::uint32_t b[4];
      load_b_pair_from_columns(b, x, 16 * kk, 16 * jj);
      mma_bf16(acc.c[2 * jj], af, b[0], b[1]);
      mma_bf16(acc.c[2 * jj + 1], af, b[2], b[3]);
    }
  }
}

// ---- added for version 5 (gca_v5.cuh, window_attention_v5.cuh) ---------------------------------

// The A fragments of a warp's 16 rows (all 64 columns) straight from fp32 rows in global memory,
// rounded to bf16 in registers: `top` is the lane's row g (group), `bottom` its row g + 8, each
// 64 floats (8-byte aligned), or nullptr for a row of zeros (past the end of a sequence). Loaded
// as float2: the four lanes of a group read 32 contiguous bytes of a row. Where keep_top or
// keep_bottom is not null, the rounded values are also written there (a bf16 copy of the row for
// the backward, from the same rounding).
__device__ inline void load_a_rows_global(std::uint32_t (&a)[4][4], const float* top, const float* bottom, int pair,
                                          __nv_bfloat16* keep_top = nullptr, __nv_bfloat16* keep_bottom = nullptr) {
  auto pack = [&](const float* row, int c) {
    if (row == nullptr) return 0u;
    const float2 x = *reinterpret_cast<const float2*>(row + c);
    return pack_bf16x2(x.x, x.y);
  };
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int c = 16 * kk + 2 * pair;
    a[kk][0] = pack(top, c);
    a[kk][1] = pack(bottom, c);
    a[kk][2] = pack(top, c + 8);
    a[kk][3] = pack(bottom, c + 8);
    if (keep_top != nullptr) {
      *reinterpret_cast<std::uint32_t*>(keep_top + c) = a[kk][0];
      *reinterpret_cast<std::uint32_t*>(keep_top + c + 8) = a[kk][2];
    }
    if (keep_bottom != nullptr) {
      *reinterpret_cast<std::uint32_t*>(keep_bottom + c) = a[kk][1];
      *reinterpret_cast<std::uint32_t*>(keep_bottom + c + 8) = a[kk][3];
    }
  }
}

}  // namespace drt::cuda::attention::mma
