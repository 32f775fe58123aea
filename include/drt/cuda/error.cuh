// drt/cuda/error.cuh — CUDA and cuBLAS status codes turned into drt::Error.
//
// Every runtime call in the backend is wrapped: a failure throws with the call, the error's name
// and where it happened, instead of leaving a sticky error for some later call to report.
#pragma once

#include <cuda_runtime.h>

#include "drt/core/error.hpp"

#define DRT_CUDA_CHECK(call)                                                                      \
  do {                                                                                            \
    const cudaError_t drt_status_ = (call);                                                       \
    if (drt_status_ != cudaSuccess)                                                               \
      throw ::drt::Error(::drt::detail::concat(#call, " failed: ", cudaGetErrorName(drt_status_), \
                                               " (", cudaGetErrorString(drt_status_), ") at ",   \
                                               __FILE__, ":", __LINE__));                        \
  } while (0)

// After a kernel launch: reports a bad launch configuration at once (not at the next sync).
#define DRT_CUDA_CHECK_LAUNCH() DRT_CUDA_CHECK(cudaGetLastError())
