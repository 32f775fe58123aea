// drt/cuda/backend.cuh — fills drt's device-backend table (drt/core/device.hpp) with the CUDA
// implementations, once per program, before main() runs.
//
// Including this header in any file that nvcc compiles is what makes device tensors usable in
// the whole program, also from files a host compiler built (through the table they reach
// allocation, copies, fills, reductions and GEMMs; elementwise expressions need nvcc in the
// calling file, see README.md).
#pragma once

#include "drt/core/device.hpp"
#include "drt/cuda/allocator.cuh"
#include "drt/cuda/copy.cuh"
#include "drt/cuda/gemm.cuh"
#include "drt/cuda/reduce.cuh"

namespace drt::cuda {

inline const DeviceBackend& backend() {
  static const DeviceBackend table{&allocate_device, &copy, &fill, &reduce, &gemm,
                                   [] { return allocator_stats().peak_bytes_in_use; }, &reset_peak_memory};
  return table;
}

// Idempotent; the static initialiser below calls it, and so may a program that wants to be sure.
inline void register_backend() { register_device_backend(&backend()); }

namespace detail {
inline const bool backend_registered = (register_backend(), true);
}  // namespace detail

}  // namespace drt::cuda
