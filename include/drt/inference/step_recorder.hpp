// drt/inference/step_recorder.hpp — what a decoder needs from "record one step, replay it many
// times", without naming CUDA: the GPU implementation is a CUDA graph (cuda/inference/graph.cuh),
// made by make_step_recorder() only in files compiled by nvcc.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "drt/core/device.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/inference/graph.cuh"
#endif

namespace drt {

class StepRecorder {
 public:
  virtual ~StepRecorder() = default;
  // Records the device work `step` issues; it runs only on replay().
  virtual void record(const std::function<void()>& step) = 0;
  virtual void replay() = 0;
  virtual bool recorded() const = 0;
  virtual void reset() = 0;
  virtual std::size_t launches() const = 0;  // launches (graph nodes) one replay stands for
};

#if defined(__CUDACC__)
class CudaStepRecorder final : public StepRecorder {
 public:
  void record(const std::function<void()>& step) override { graph_.record(step); }
  void replay() override { graph_.replay(); }
  bool recorded() const override { return graph_.recorded(); }
  void reset() override { graph_.reset(); }
  std::size_t launches() const override { return graph_.launches(); }

 private:
  cuda::StepGraph graph_;
};
#endif

// A recorder for steps on `device`, or null where there is none (the CPU, or a host compiler).
inline std::unique_ptr<StepRecorder> make_step_recorder([[maybe_unused]] Device device) {
#if defined(__CUDACC__)
  if (device == Device::cuda) return std::make_unique<CudaStepRecorder>();
#endif
  return nullptr;
}

}  // namespace drt
