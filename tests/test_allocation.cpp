// A training step in steady state allocates nothing: after a few warm-up steps (which size the
// tape's arena, its record list and the per-thread GEMM workspaces), forward, backward, gradient
// clipping, the AdamW step and the tape reset must neither call operator new/delete nor take a
// drt heap buffer. This file replaces the global operator new and delete with counting versions
// (they count every thread, OpenMP workers included).
#include <drt/core.hpp>
#include <drt/optim.hpp>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <new>
#include <tuple>
#include <utility>
#include <vector>

#include "tiny_attention.hpp"

// ---- counting operator new / delete ------------------------------------------------------------
namespace {
std::atomic<long> g_allocations{0}, g_frees{0};

void* counted_malloc(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* counted_aligned(std::size_t n, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(align);
  return std::aligned_alloc(a, (n + a - 1) / a * a + (n ? 0 : a));
}
void counted_free(void* p) {
  if (!p) return;
  g_frees.fetch_add(1, std::memory_order_relaxed);
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return counted_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return counted_aligned(n, a); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }

// ---- counting malloc itself (glibc only; sanitizers bring their own malloc) --------------------
// Libraries below drt (libgomp, libstdc++) call malloc directly. Replacing malloc in the program
// is supported by glibc; these forward to glibc's own implementation.
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define DRT_COUNT_MALLOC 1
namespace {
std::atomic<long> g_malloc_calls{0};
}
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
void* malloc(std::size_t n) {
  g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) {
  g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) {
  g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* memalign(std::size_t align, std::size_t n) {
  g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(align, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) { return memalign(align, n); }
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  *out = memalign(align, n);
  return *out ? 0 : ENOMEM;
}
void free(void* p) {
  if (p) g_malloc_calls.fetch_add(1, std::memory_order_relaxed);
  __libc_free(p);
}
}
#else
#define DRT_COUNT_MALLOC 0
namespace {
std::atomic<long> g_malloc_calls{0};  // stays 0: not counted on this platform
}
#endif

// ---- the test ----------------------------------------------------------------------------------
using namespace drt;
using drt::examples::CopyTask;
using drt::examples::TinyAttention;
using drt::examples::TinyAttentionConfig;

namespace {

struct Sizes {
  const char* name;
  CopyTask task;
  Index batch, dim, heads, mlp_hidden;
};

struct Counts {
  long new_calls = 0, delete_calls = 0, malloc_calls = 0;
  std::int64_t drt_buffers = 0;
};

// Trains a few warm-up steps, then counts over several more; also checks that they did work.
Counts count_steady_state_allocations(const Sizes& s) {
  SCOPED_TRACE(s.name);
  const CopyTask task = s.task;
  TinyAttention model(TinyAttentionConfig{.vocab = task.vocab(), .dim = s.dim, .heads = s.heads, .layers = 2,
                                          .mlp_hidden = s.mlp_hidden, .seq_len = task.seq_len(), .seed = 3});
  const std::vector<Parameter<float>*> params = model.parameters();
  AdamW<float> optimiser(params, {.weight_decay = 0.01});
  const CosineSchedule schedule{.peak_lr = 1e-2, .warmup_steps = 2, .total_steps = 100};
  IndexTensor tokens({s.batch, task.seq_len()}), targets({s.batch, task.seq_len()});

  constexpr int kWarmup = 3, kMeasured = 6;
  std::array<float, kMeasured> losses{};
  std::array<double, kMeasured> norms{};
  const double max_norm = 1e-3;  // small enough that clipping rescales on every step
  auto train_step = [&](int step) {
    task.fill(7, static_cast<std::uint64_t>(step), tokens, targets);
    optimiser.zero_grad();
    const Var<float> loss = model.loss(tokens, targets);
    backward(loss);
    const double norm = clip_grad_norm(params, max_norm);
    optimiser.step(schedule.lr(step));
    const float value = loss.item();
    tape().reset();
    return std::pair<float, double>{value, norm};
  };

  for (int step = 0; step < kWarmup; ++step) train_step(step);
  const Tensor<float> before = params[1]->value().clone();  // W_q of layer 0 (clone allocates: outside)

  const long news = g_allocations.load(), deletes = g_frees.load(), mallocs = g_malloc_calls.load();
  const std::int64_t buffers = heap_allocation_count();
  for (int i = 0; i < kMeasured; ++i) std::tie(losses[i], norms[i]) = train_step(kWarmup + i);
  Counts counts;
  counts.malloc_calls = g_malloc_calls.load() - mallocs;
  counts.new_calls = g_allocations.load() - news;
  counts.delete_calls = g_frees.load() - deletes;
  counts.drt_buffers = heap_allocation_count() - buffers;

  // The steps did real work: finite, changing losses; clipped gradients; moved parameters.
  for (int i = 0; i < kMeasured; ++i) {
    EXPECT_TRUE(std::isfinite(losses[i]));
    EXPECT_GT(norms[i], max_norm);
  }
  EXPECT_NE(losses.front(), losses.back());
  const auto a = before.to_vector(), b = params[1]->value().to_vector();
  double moved = 0;
  for (std::size_t k = 0; k < a.size(); ++k) moved = std::max(moved, double(std::abs(a[k] - b[k])));
  EXPECT_GT(moved, 1e-4);
  EXPECT_EQ(optimiser.steps(), kWarmup + kMeasured);
  return counts;
}

void expect_no_allocations(const Sizes& s) {
  const Counts c = count_steady_state_allocations(s);
  EXPECT_EQ(c.new_calls, 0) << s.name << ": operator new called during steady-state training steps";
  EXPECT_EQ(c.delete_calls, 0) << s.name << ": operator delete called during steady-state training steps";
  EXPECT_EQ(c.drt_buffers, 0) << s.name << ": drt heap buffers allocated during steady-state training steps";
}

}  // namespace

TEST(Allocation, CountersSeeAllocations) {
  // The instruments themselves work (otherwise a zero delta would prove nothing).
  const long news = g_allocations.load();
  const std::int64_t buffers = heap_allocation_count();
  auto* p = new std::vector<int>(100);
  const Tensor<float> t = Tensor<float>::zeros({8});
  delete p;
  EXPECT_GE(g_allocations.load() - news, 2);
  EXPECT_EQ(heap_allocation_count() - buffers, 1);
}

// Small shapes: every op runs on one thread.
TEST(Allocation, SteadyStateTrainingStepAllocatesNothing) {
  expect_no_allocations(
      {"small", CopyTask{.symbols = 8, .length = 4}, /*batch=*/4, /*dim=*/16, /*heads=*/2, /*mlp_hidden=*/32});
}

// Shapes large enough that elementwise ops, reductions and GEMMs take their OpenMP paths.
TEST(Allocation, SteadyStateTrainingStepAllocatesNothingWithThreads) {
  expect_no_allocations(
      {"parallel", CopyTask{.symbols = 16, .length = 8}, /*batch=*/16, /*dim=*/64, /*heads=*/4, /*mlp_hidden=*/192});
}

// Below operator new: libgomp allocates (and frees) a team descriptor every time a program enters
// an OpenMP parallel region that runs on one thread, which `#pragma omp parallel for if (small)`
// does (libgomp caches teams of 2+ threads only): once about 96 malloc/free pairs per step. That is
// why drt::parallel_for (core/parallel.hpp) skips the region entirely below its threshold.
TEST(Allocation, SteadyStateTrainingStepCallsNoMalloc) {
  if (!DRT_COUNT_MALLOC) GTEST_SKIP() << "malloc is only counted with glibc and without sanitizers";
  for (const Sizes& s : {Sizes{"small", CopyTask{.symbols = 8, .length = 4}, 4, 16, 2, 32},
                         Sizes{"parallel", CopyTask{.symbols = 16, .length = 8}, 16, 64, 4, 192}})
    EXPECT_EQ(count_steady_state_allocations(s).malloc_calls, 0) << s.name << ": malloc-level calls";
}
