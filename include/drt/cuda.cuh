// drt/cuda.cuh — the CUDA backend: include it (in a file compiled by nvcc) to use tensors on the
// GPU with the same API as on the CPU. See drt/cuda/README.md for the design.
//
//     #include <drt/core.hpp>
//     #include <drt/cuda.cuh>
//     auto a = drt::cuda::to_device(host_a);         // explicit host → device copy
//     auto y = drt::eval(silu(a) * b + 1.0f);         // one fused kernel, y on the device
//     auto s = drt::sum(y, -1);                       // device reduction
//     auto c = drt::matmul(a, w);                     // cuBLAS
//     std::vector<float> v = y.to_vector();           // device → host
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "drt/core/tensor.hpp"
#include "drt/cuda/allocator.cuh"
#include "drt/cuda/backend.cuh"
#include "drt/cuda/deferred_check.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/gemm.cuh"

namespace drt::cuda {

// Copies to the GPU / back to the host (no copy when the tensor is there already).
template <class T>
Tensor<T> to_device(const Tensor<T>& t) {
  return t.to(Device::cuda);
}
template <class T>
Tensor<T> to_host(const Tensor<T>& t, Arena* arena = nullptr) {
  return t.to(Device::cpu, arena);
}

// Waits for all device work (for timing, and before reading device memory by other means), then
// throws a failed device-side index check, if any (deferred_check.cuh).
inline void synchronize() {
  DRT_CUDA_CHECK(cudaDeviceSynchronize());
  raise_deferred_failure();
}

// How many GPUs the process sees (0 when none or no driver).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

inline std::string device_description() {
  cudaDeviceProp p{};
  DRT_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB)";
}

// The dense bf16 tensor-core peak of GPU 0 in FLOP/s, the usual denominator of model FLOPs
// utilisation (0 for a GPU this table does not know).
inline double peak_bf16_flops() {
  cudaDeviceProp p{};
  DRT_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  const std::string name = p.name;
  if (p.major == 9 && name.find("PCIe") != std::string::npos) return 756e12;  // H100 PCIe
  if (p.major == 9) return 989.4e12;                                          // H100 SXM, H200
  if (p.major == 8 && p.minor == 0) return 312e12;                            // A100
  return 0;
}

}  // namespace drt::cuda
