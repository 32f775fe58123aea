// drt/core/device.hpp — where a tensor's data lives, and the table through which the core
// reaches a device backend without including any of its headers.
//
// A Tensor<T> carries a `Device` tag (cpu by default). Host code never dereferences the data of
// a device tensor: the core sends allocation, copies, fills, reductions and GEMMs of device
// tensors through `DeviceBackend`, a table of plain function pointers (element types erased to
// a size or a DType). The CUDA backend (drt/cuda/backend.cuh, compiled by nvcc) fills the table
// at start-up; a CPU-only build has an empty table and never sees a CUDA header, and using a
// device tensor there throws a drt::Error that says so.
//
// Elementwise expressions are the one exception: their kernels depend on the expression's type,
// so they are instantiated at compile time (drt/core/expr.hpp includes drt/cuda/evaluate.cuh
// only when the including file is compiled by nvcc; see drt/cuda/README.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "drt/core/error.hpp"
#include "drt/core/precision.hpp"
#include "drt/core/shape.hpp"

// Marks the elementwise function objects of expr.hpp callable from device code too. Empty for
// a host compiler, so CPU-only builds are unchanged.
#if defined(__CUDACC__)
#define DRT_HOST_DEVICE __host__ __device__
#else
#define DRT_HOST_DEVICE
#endif

namespace drt {

namespace detail {
[[noreturn]] inline void device_needs_nvcc(const char* op) {
  throw Error(concat(op, ": a tensor lives on the GPU, but this file was compiled by a host compiler. Compile every "
                         "file that runs drt on device tensors with nvcc (a .cu file, or LANGUAGE CUDA) and include "
                         "<drt/cuda.cuh>"));
}
}  // namespace detail

// How an op reaches its CUDA implementation. An op header includes its kernels
// (drt/cuda/<area>/<op>.cuh) only under nvcc, and calls them as a statement:
//
//     if (!x.on_host()) DRT_ON_DEVICE("rms_norm", cuda::rms_norm_forward(x, gamma, eps, y, inv_rms));
//     else { ...the CPU loop... }
//
// Compiled by nvcc this is the call; compiled by a host compiler it throws an error naming the op,
// so the CPU-only build never sees a CUDA header and never silently skips work.
#if defined(__CUDACC__)
#define DRT_ON_DEVICE(op, call) call
#else
#define DRT_ON_DEVICE(op, call) ::drt::detail::device_needs_nvcc(op)
#endif

enum class Device : std::uint8_t { cpu, cuda };

inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// The element types the backend's type-erased entry points know.
enum class DType : std::uint8_t { f32, f64, i32, i64, other };

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::i32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::i64;
  else return DType::other;
}

// A strided view without its element type: what the backend needs to copy or fill it.
struct StridedRef {
  void* data;
  Device device;
  Shape shape;
  Strides strides;
};

// A (batched) matrix product C = alpha·op(A)·op(B) + beta·C with row-major C, as the core's
// gemm/matmul describe it. Each operand is row-major (stride 1 along columns, `ld` = row
// stride) or column-major (a transposed view: stride 1 along rows, `ld` = column stride).
// Batch entry i starts at data + i·batch_stride (0 for a shared operand).
struct GemmArgs {
  Index M, N, K, batch;
  const void* a;
  bool a_row_major;
  Index lda, batch_stride_a;
  const void* b;
  bool b_row_major;
  Index ldb, batch_stride_b;
  void* c;
  Index ldc, batch_stride_c;
  double alpha, beta;
  Precision precision;  // of float operands (drt/core/precision.hpp); doubles are always exact
};

// Reduction of `lanes` independent runs of n elements: run l starts at the offset given by
// l's row-major position in `outer` walked with `outer_strides`; its elements are `step` apart.
struct LaneLayout {
  Shape outer;
  Strides outer_strides;
  Index n, step;
};
enum class ReduceKind : std::uint8_t { sum, max };

struct DeviceBackend {
  // Device memory of `bytes` bytes, released when the last owner goes; zero-filled if `zero`.
  std::shared_ptr<void> (*allocate)(std::size_t bytes, bool zero);
  // dst ← src elementwise (same shape; either side may be on the host or the device).
  void (*copy)(std::size_t element_size, const StridedRef& dst, const StridedRef& src);
  // Every element of dst ← *value (element_size bytes).
  void (*fill)(std::size_t element_size, const StridedRef& dst, const void* value);
  // out[l] = reduction of lane l; argmax (may be null) gets the first position of the maximum.
  void (*reduce)(DType type, ReduceKind kind, const void* in, const LaneLayout& lanes, void* out,
                 std::int32_t* argmax);
  void (*gemm)(DType type, const GemmArgs& args);
  // The most device memory in use at once since the last reset_peak_memory(), in bytes.
  std::size_t (*peak_memory)();
  void (*reset_peak_memory)();
};

namespace detail {
inline const DeviceBackend*& device_backend_slot() {
  static const DeviceBackend* backend = nullptr;
  return backend;
}
}  // namespace detail

// Installs the backend for device tensors (done by drt/cuda/backend.cuh; idempotent).
inline void register_device_backend(const DeviceBackend* backend) { detail::device_backend_slot() = backend; }

// The backend that serves `device`; throws when the program has none.
inline const DeviceBackend& device_backend(Device device) {
  const DeviceBackend* b = detail::device_backend_slot();
  DRT_CHECK(b != nullptr, "a tensor lives on device '", device_name(device),
            "' but this program has no device backend: include <drt/cuda.cuh> in a file compiled by "
            "nvcc and link drt::cuda");
  return *b;
}

}  // namespace drt
