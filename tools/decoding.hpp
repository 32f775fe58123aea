// tools/decoding.hpp — what `drt generate` and `drt niah` share: a decoder for the loaded model
// (DRT or baseline, the chunk memory in RAM or in a file under --offload DIR), and the process's
// resident memory as the kernel counts it.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "args.hpp"
#include "command_eval.hpp"
#include "drt/inference.hpp"

namespace drt::cli {

// --mirrored-landmarks: on the GPU, how many landmarks κ retrieval keeps on the device; the later
// ones stream in from RAM, so GPU memory stops growing with the context
// (DrtDecoder::bound_retrieval_memory).
inline Flag mirrored_landmarks_flag_spec() {
  return {"mirrored-landmarks", "N",
          "with --device cuda: landmarks kept on the GPU for retrieval, later ones streamed from RAM (default 131072)"};
}
inline Index mirrored_landmarks_flag(const Args& args) {
  if (!args.has("mirrored-landmarks")) return DrtDecoder<float>::kMirroredLandmarks;
  const long long n = args.integer("mirrored-landmarks");
  if (n < 0) throw UsageError("flag --mirrored-landmarks needs a non-negative integer");
  return static_cast<Index>(n);
}

// A decoder over `m`'s model. With `offload_dir` non-empty, a DRT's chunk keys/values go to a
// memory-mapped file there (removed afterwards); `name` tells files of one process apart;
// `mirrored_landmarks` as the flag above.
inline std::unique_ptr<IncrementalDecoder<float>> make_decoder(const detail::EvalModel& m, const std::string& offload_dir,
                                                               const std::string& name = "chunks",
                                                               Index mirrored_landmarks = DrtDecoder<float>::kMirroredLandmarks) {
  if (!m.is_drt) {
    const auto& model = static_cast<const train::ModelAdapter<SlidingWindowLM<float>>&>(*m.model).model();
    return std::make_unique<BaselineDecoder<float>>(model);
  }
  const auto& model = static_cast<const train::ModelAdapter<DrtModel<float>>&>(*m.model).model();
  const ModelConfig& c = model.config();
  const Index keys_per_chunk = c.drops_landmark_row() ? c.chunk_positions() - 1 : c.chunk_positions();
  std::unique_ptr<ChunkStore<float>> store;
  if (!offload_dir.empty()) {
    DRT_CHECK(std::filesystem::is_directory(offload_dir), "--offload ", offload_dir, ": not a directory");
    const std::string path =
        (std::filesystem::path(offload_dir) / ("drt-" + name + "-" + std::to_string(::getpid()) + ".bin")).string();
    store = std::make_unique<MappedChunkStore<float>>(keys_per_chunk, c.hidden_size, path);
  }
  auto decoder = std::make_unique<DrtDecoder<float>>(model, std::move(store));
  decoder->bound_retrieval_memory(mirrored_landmarks, DrtDecoder<float>::kScoreBlock);
  return decoder;
}

// The chunk memory's bytes: in RAM and on disk (0, 0 for the baseline).
inline std::pair<std::size_t, std::size_t> chunk_memory_bytes(const IncrementalDecoder<float>& decoder) {
  const auto* drt = dynamic_cast<const DrtDecoder<float>*>(&decoder);
  if (!drt) return {0, 0};
  const ChunkStore<float>& s = drt->chunk_store();
  const std::size_t all = static_cast<std::size_t>(s.size()) * (s.chunk_bytes() + s.width() * sizeof(float));
  const std::size_t in_ram = s.resident_bytes() + static_cast<std::size_t>(s.size() * s.width()) * sizeof(float);
  return {in_ram, all - in_ram};
}

// Peak and current resident set (VmHWM, VmRSS of /proc/self/status), in bytes; 0 where unknown.
inline std::size_t status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string word;
  while (in >> word)
    if (word == key) {
      std::size_t kib = 0;
      in >> kib;
      return kib * 1024;
    }
  return 0;
}
inline std::size_t peak_resident_bytes() { return status_bytes("VmHWM:"); }
inline std::size_t resident_bytes() { return status_bytes("VmRSS:"); }
// Starts a new peak from the current resident set (Linux: "5" into /proc/self/clear_refs).
inline void reset_peak_resident() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

// "12.3 MiB", or "45.6 KiB" below a mebibyte.
inline std::string mib(std::size_t bytes) {
  char text[32];
  const double b = static_cast<double>(bytes);
  if (bytes > 0 && bytes < 1024 * 1024) std::snprintf(text, sizeof text, "%.1f KiB", b / 1024.0);
  else std::snprintf(text, sizeof text, "%.1f MiB", b / (1024.0 * 1024.0));
  return text;
}

}  // namespace drt::cli
