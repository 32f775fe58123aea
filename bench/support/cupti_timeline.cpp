// bench/support/cupti_timeline.cpp — a minimal timeline recorder for machines where nsys does
// not run (the Firecracker GPU machine): a CUDA injection library that records, through CUPTI's
// activity API, every kernel, memcpy and memset on the GPU and every CUDA runtime and driver call
// on the host, with their start and end times on one clock, and writes them as CSV at exit.
//
//   CUDA_INJECTION64_PATH=build/bench/libcupti_timeline.so DRT_TIMELINE=trace.csv \
//       build/bench/bench_cuda_decode --contexts 65520 --segment 16380 --profile prefill
//   python3 bench/support/timeline_gaps.py trace.csv
//
// The CUDA driver loads the library named by CUDA_INJECTION64_PATH when the program first
// touches CUDA and calls its InitializeInjection; the program is not changed. timeline_gaps.py
// reads the window between cudaProfilerStart and cudaProfilerStop (bench_cuda_decode --profile,
// bench_cuda_train --kernels) and says where the GPU sat idle and what the host was doing then.
//
// CSV rows: kind,start_ns,end_ns,correlation,name
//   kind: kernel | memcpy | memset (GPU side), runtime | driver (host side)
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Row {
  const char* kind;
  std::uint64_t start, end;
  std::uint32_t correlation;
  std::string name;
};

std::mutex rows_mutex;
std::vector<Row> rows;

void check(CUptiResult result, const char* what) {
  if (result == CUPTI_SUCCESS) return;
  const char* message = nullptr;
  cuptiGetResultString(result, &message);
  std::fprintf(stderr, "cupti_timeline: %s failed: %s\n", what, message ? message : "?");
}

const char* copy_kind(std::uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy DtoD";
    default: return "memcpy other";
  }
}

std::string api_name(CUpti_CallbackDomain domain, CUpti_CallbackId id) {
  const char* name = nullptr;
  if (cuptiGetCallbackName(domain, id, &name) != CUPTI_SUCCESS || !name) return "cbid " + std::to_string(id);
  return name;
}

void record(const CUpti_Activity* activity) {
  Row row{};
  switch (activity->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL: {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(activity);
      row = {"kernel", k->start, k->end, k->correlationId, k->name ? k->name : "?"};
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(activity);
      row = {"memcpy", m->start, m->end, m->correlationId,
             std::string(copy_kind(m->copyKind)) + " " + std::to_string(m->bytes) + " B"};
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(activity);
      row = {"memset", m->start, m->end, m->correlationId, std::to_string(m->bytes) + " B"};
      break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME:
    case CUPTI_ACTIVITY_KIND_DRIVER: {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(activity);
      const bool runtime = activity->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
      row = {runtime ? "runtime" : "driver", a->start, a->end, a->correlationId,
             api_name(runtime ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid)};
      break;
    }
    default: return;
  }
  std::lock_guard<std::mutex> lock(rows_mutex);
  rows.push_back(std::move(row));
}

void CUPTIAPI buffer_requested(std::uint8_t** buffer, std::size_t* size, std::size_t* max_records) {
  constexpr std::size_t bytes = 8u << 20;
  *buffer = static_cast<std::uint8_t*>(std::aligned_alloc(8, bytes));
  *size = bytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, std::uint32_t, std::uint8_t* buffer, std::size_t, std::size_t valid) {
  CUpti_Activity* activity = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &activity) == CUPTI_SUCCESS) record(activity);
  std::free(buffer);
}

void write_rows() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("DRT_TIMELINE");
  std::FILE* out = std::fopen(path ? path : "timeline.csv", "w");
  if (!out) {
    std::fprintf(stderr, "cupti_timeline: cannot write %s\n", path ? path : "timeline.csv");
    return;
  }
  std::fprintf(out, "kind,start_ns,end_ns,correlation,name\n");
  std::lock_guard<std::mutex> lock(rows_mutex);
  for (const Row& r : rows) {
    std::string name = r.name;  // names hold commas (template arguments): quote them
    for (std::size_t i = 0; (i = name.find('"', i)) != std::string::npos; i += 2) name.insert(i, "\"");
    std::fprintf(out, "%s,%llu,%llu,%u,\"%s\"\n", r.kind, static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.correlation, name.c_str());
  }
  std::fclose(out);
  std::fprintf(stderr, "cupti_timeline: %zu rows to %s\n", rows.size(), path ? path : "timeline.csv");
}

}  // namespace

extern "C" int InitializeInjection() {
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  for (CUpti_ActivityKind kind : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                  CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_DRIVER})
    check(cuptiActivityEnable(kind), "cuptiActivityEnable");
  std::atexit(write_rows);
  return 1;
}
