// drt/core/memory.hpp — where tensor memory comes from.
//
// Two sources:
//  * the heap, for tensors that outlive a training step (parameters, optimiser state, data);
//    every such buffer is 64-byte aligned and counted in `heap_allocation_count()`;
//  * an Arena, a bump allocator for one step's intermediates. `reset()` frees everything at
//    once and keeps the memory, so a training loop in steady state allocates nothing.
//
// Objects with destructors (tape closures, autodiff nodes) can be placed in an arena with
// `make<T>()`; the arena remembers how to destroy them and does so on reset(), newest first.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"

namespace drt {

inline constexpr std::size_t kAlignment = 64;  // one cache line; enough for AVX-512 too

namespace detail {
inline std::atomic<std::int64_t>& heap_allocations() {
  static std::atomic<std::int64_t> count{0};
  return count;
}
inline std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
}  // namespace detail

// Number of aligned heap buffers drt has allocated since the program started. Tests use it to
// show that a steady-state training step allocates nothing.
inline std::int64_t heap_allocation_count() { return detail::heap_allocations().load(); }

inline void* aligned_allocate(std::size_t bytes) {
  detail::heap_allocations().fetch_add(1, std::memory_order_relaxed);
  void* p = std::aligned_alloc(kAlignment, detail::round_up(bytes ? bytes : 1, kAlignment));
  if (!p) throw std::bad_alloc();
  return p;
}
inline void aligned_free(void* p) { std::free(p); }

// A shared, zero-initialised heap buffer of `bytes` bytes (the owner of a heap tensor's data).
inline std::shared_ptr<void> make_heap_buffer(std::size_t bytes) {
  void* p = aligned_allocate(bytes);
  std::memset(p, 0, bytes);
  return std::shared_ptr<void>(p, aligned_free);
}

class Arena {
 public:
  explicit Arena(std::size_t first_block_bytes = std::size_t(1) << 20)
      : first_block_bytes_(first_block_bytes) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    run_destructors();
    for (Block& b : blocks_) aligned_free(b.data);
  }

  // Raw, uninitialised, 64-byte aligned memory valid until the next reset().
  void* allocate(std::size_t bytes) {
    bytes = detail::round_up(bytes ? bytes : 1, kAlignment);
    if (current_ < blocks_.size()) {
      Block& b = blocks_[current_];
      if (b.used + bytes <= b.size) {
        void* p = b.data + b.used;
        b.used += bytes;
        bump(bytes);
        return p;
      }
      // Try the next, already allocated block before asking the heap for a new one.
      if (current_ + 1 < blocks_.size() && bytes <= blocks_[current_ + 1].size) {
        ++current_;
        return allocate(bytes);
      }
    }
    const std::size_t size = std::max(bytes, blocks_.empty() ? first_block_bytes_ : 2 * blocks_.back().size);
    blocks_.push_back(Block{static_cast<std::byte*>(aligned_allocate(size)), size, 0});
    current_ = blocks_.size() - 1;
    return allocate(bytes);
  }

  template <class T>
  T* allocate_array(std::size_t n) {
    return static_cast<T*>(allocate(n * sizeof(T)));
  }

  // Constructs a T in the arena; its destructor runs at reset() (skipped when trivial).
  template <class T, class... Args>
  T* make(Args&&... args) {
    T* obj = new (allocate(sizeof(T))) T(std::forward<Args>(args)...);
    if constexpr (!std::is_trivially_destructible_v<T>) {
      auto* d = new (allocate(sizeof(Destructor))) Destructor{obj, [](void* p) { static_cast<T*>(p)->~T(); }, destructors_};
      destructors_ = d;
    }
    return obj;
  }

  // Frees everything allocated since construction (or the last reset). If the step needed more
  // than one block, the blocks are merged into one big enough for the whole step, so that from
  // the next step on the arena never grows again.
  void reset() {
    run_destructors();
    if (blocks_.size() > 1) {
      std::size_t total = 0;
      for (Block& b : blocks_) {
        total += b.size;
        aligned_free(b.data);
      }
      blocks_.clear();
      blocks_.push_back(Block{static_cast<std::byte*>(aligned_allocate(total)), total, 0});
    }
    for (Block& b : blocks_) b.used = 0;
    current_ = 0;
    in_use_ = 0;
  }

  std::size_t bytes_in_use() const { return in_use_; }
  std::size_t peak_bytes() const { return peak_; }
  std::size_t capacity() const {
    std::size_t c = 0;
    for (const Block& b : blocks_) c += b.size;
    return c;
  }

 private:
  struct Block {
    std::byte* data;
    std::size_t size;
    std::size_t used;
  };
  struct Destructor {
    void* object;
    void (*destroy)(void*);
    Destructor* next;
  };
  void bump(std::size_t bytes) {
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
  }
  void run_destructors() {
    for (Destructor* d = destructors_; d; d = d->next) d->destroy(d->object);
    destructors_ = nullptr;
  }

  std::size_t first_block_bytes_;
  std::vector<Block> blocks_;
  std::size_t current_ = 0;
  std::size_t in_use_ = 0, peak_ = 0;
  Destructor* destructors_ = nullptr;
};

}  // namespace drt
