// tools/device_flag.hpp — the --device flag of `drt train`, `eval`, `generate` and `niah`.
//
// `drt` itself is built by the host compiler and runs on the CPU. Where nvcc exists the build
// also makes `drt-gpu`: the same commands compiled by nvcc with the CUDA backend linked in
// (tools/drt_gpu.cu). `drt ... --device cuda` hands itself over to the drt-gpu beside it
// (forward_to_gpu_build below), so both spellings work.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "args.hpp"
#include "drt/core/device.hpp"

namespace drt::cli {

inline Flag device_flag_spec() {
  return {"device", "NAME", "cpu or cuda (cuda: the drt-gpu build, made where nvcc exists)", false, "cpu"};
}

inline bool has_cuda_backend() { return drt::detail::device_backend_slot() != nullptr; }

// The device a command runs on: --device when the command has the flag, else the CPU.
inline Device device_flag(const Args& args) {
  if (!args.declares("device")) return Device::cpu;
  const std::string name = args.text("device");
  if (name == "cpu") return Device::cpu;
  if (name != "cuda") throw UsageError("flag --device needs cpu or cuda, got '" + name + "'");
  if (!has_cuda_backend())
    throw UsageError("--device cuda: this drt was built without CUDA; build where nvcc exists and run drt-gpu");
  return Device::cuda;
}

// The GPU's dense bf16 peak FLOP/s, for the model FLOPs utilisation in progress lines (0 when
// unknown, or in the host-compiled drt, which never trains on a GPU).
inline double gpu_peak_flops() {
#if defined(__CUDACC__)
  return cuda::peak_bf16_flops();
#else
  return 0;
#endif
}

// When this program has no CUDA backend and the command line asks for `--device cuda`, replaces
// this process with the drt-gpu next to it (if there is one) and never returns; otherwise returns.
inline void forward_to_gpu_build(char** argv, const std::vector<std::string>& words) {
  if (has_cuda_backend()) return;
  bool wants_cuda = false;
  for (std::size_t i = 0; i + 1 < words.size(); ++i) wants_cuda |= words[i] == "--device" && words[i + 1] == "cuda";
  if (!wants_cuda) return;
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return;
  const std::filesystem::path gpu = self.parent_path() / "drt-gpu";
  if (!std::filesystem::exists(gpu)) return;  // device_flag() then explains
  execv(gpu.c_str(), argv);
}

}  // namespace drt::cli
