// drt/cuda/stream.cuh — the one CUDA stream that every drt kernel, device-to-device copy, fill
// and cuBLAS call goes to.
//
// Why not the legacy default stream (stream 0): work issued there cannot be recorded into a CUDA
// graph, and a graph is how decoding replays one token's few hundred launches as a single launch
// (drt/cuda/inference/graph.cuh). The stream is created *blocking* (cudaStreamCreate without
// cudaStreamNonBlocking), so the legacy stream, which synchronous cudaMemcpy and cudaEventRecord(e,
// 0) use, still waits for drt's work and drt's work waits for it: host↔device copies stay in order
// with the kernels, and the caching allocator's one-stream reasoning (allocator.cuh) still holds.
#pragma once

#include <cuda_runtime.h>

#include "drt/cuda/error.cuh"

namespace drt::cuda {

// Created on first use, never destroyed (like the cuBLAS handle and the allocator: destroying it
// from a static destructor can run after the CUDA runtime has shut down).
inline cudaStream_t stream() {
  static const cudaStream_t created = [] {
    cudaStream_t s = nullptr;
    DRT_CUDA_CHECK(cudaStreamCreate(&s));
    return s;
  }();
  return created;
}

}  // namespace drt::cuda
