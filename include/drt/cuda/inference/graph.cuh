// drt/cuda/inference/graph.cuh — one decoding step recorded once as a CUDA graph and replayed.
//
// A token's step is a few hundred small launches (norms, GEMVs, attention, the MLP, per layer).
// Issued one by one from the host, the launches, not the GPU, set the pace (the reference spends
// 15.1 ms per token of which 5.8 ms is GPU work). Recorded into a graph (stream capture of
// cuda::stream()), the whole step becomes one cudaGraphLaunch.
//
// A replay repeats the recorded launches with the recorded arguments and buffers, so:
//   - whatever changes from token to token must be read by the kernels from device memory that
//     the host updates before a replay (the token id, the position: decode.cuh);
//   - every buffer the graph touches must stay allocated, and unused by anyone else, while the
//     graph lives. The step's intermediate tensors are freed on the host when the step's tape is
//     reset, so recording keeps a reference to every block the allocator hands out meanwhile
//     (copy.cuh, blocks_kept_for_graph) and releases them with the graph;
//   - a step that would synchronise with the host (a device→host copy, a host-side index check)
//     cannot be recorded: the capture fails and record() throws, naming the failure.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <utility>
#include <vector>

#include "drt/cuda/copy.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda {

class StepGraph {
 public:
  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() { reset(); }

  bool recorded() const { return exec_ != nullptr; }
  std::size_t launches() const { return nodes_; }  // nodes of the recorded graph (kernels, copies, fills)

  // Records what `step()` issues on cuda::stream(); nothing runs until replay().
  template <class Step>
  void record(Step&& step) {
    reset();
    // Relaxed: a block the allocator has not cached yet may still be cudaMalloc'ed while recording.
    DRT_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed));
    std::vector<std::shared_ptr<void>> kept;
    cudaGraph_t graph = nullptr;
    {
      const KeepBlocks keeping(kept);
      try {
        step();
      } catch (...) {
        (void)cudaStreamEndCapture(stream(), &graph);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        throw;
      }
    }
    const cudaError_t ended = cudaStreamEndCapture(stream(), &graph);
    DRT_CHECK(ended == cudaSuccess && graph != nullptr, "StepGraph: recording the decoding step failed (",
              cudaGetErrorString(ended), "); something in the step synchronised with the host");
    std::unique_ptr<CUgraph_st, cudaError_t (*)(cudaGraph_t)> owned(graph, cudaGraphDestroy);
    std::size_t nodes = 0;
    DRT_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
    DRT_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph, 0));
    nodes_ = nodes;
    kept_ = std::move(kept);
  }

  void replay() const {
    DRT_CHECK(recorded(), "StepGraph: replay() before record()");
    DRT_CUDA_CHECK(cudaGraphLaunch(exec_, stream()));
  }

  void reset() {
    if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    nodes_ = 0;
    kept_.clear();  // after the exec is gone: a replay in flight is ordered before later users
  }

 private:
  // While alive, every block the allocator hands out on this thread is also kept in `kept`.
  class KeepBlocks {
   public:
    explicit KeepBlocks(std::vector<std::shared_ptr<void>>& kept) : previous_(detail::blocks_kept_for_graph()) {
      detail::blocks_kept_for_graph() = &kept;
    }
    ~KeepBlocks() { detail::blocks_kept_for_graph() = previous_; }
    KeepBlocks(const KeepBlocks&) = delete;
    KeepBlocks& operator=(const KeepBlocks&) = delete;

   private:
    std::vector<std::shared_ptr<void>>* previous_;
  };

  cudaGraphExec_t exec_ = nullptr;
  std::size_t nodes_ = 0;
  std::vector<std::shared_ptr<void>> kept_;
};

}  // namespace drt::cuda
