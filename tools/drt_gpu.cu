// tools/drt_gpu.cu — `drt-gpu`: the drt tool compiled by nvcc with the CUDA backend, so that
// `drt train --device cuda` and `drt eval --device cuda` run the model's ops as CUDA kernels
// (drt/cuda/README.md: every file that runs drt on device tensors must be compiled by nvcc).
// `drt ... --device cuda` hands itself over to this program (tools/device_flag.hpp).
#include <drt/cuda.cuh>

#include "drt.cpp"
