// drt/core/parallel.hpp — the one place drt decides whether a loop runs on several threads.
//
// parallel_for(n, work, body) calls body(i) for i in [0, n). It starts an OpenMP team only when
// `work` (a rough count of elementary operations) is large enough to pay for it, and it skips
// the parallel region entirely otherwise: `#pragma omp parallel if (false)` would still make
// libgomp allocate a team descriptor on every call, and a training step must not allocate.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drt {

inline constexpr std::int64_t kParallelWork = std::int64_t(1) << 15;

// 1 inside a parallel region (no nesting), else the OpenMP thread count.
inline int available_threads() {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  return 1;
#endif
}

// How many threads OpenMP may use at most: the number of per-thread scratch slots to allocate.
inline int thread_slots() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int current_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <class F>
void parallel_for(std::int64_t n, std::int64_t work, F&& body) {
  if (n <= 1 || work < kParallelWork || available_threads() <= 1) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

// The same with dynamic scheduling, for iterations of uneven cost (attention blocks).
template <class F>
void parallel_for_dynamic(std::int64_t n, std::int64_t work, F&& body) {
  if (n <= 1 || work < kParallelWork || available_threads() <= 1) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace drt
