// drt/core/precision.hpp — one switch for how float matrix products compute: fp32, tf32 or bf16.
//
// drt keeps every float it *stores* in fp32: parameters (the master weights), gradients, the
// optimiser's moments, activations, the loss and the softmax statistics of attention. What the
// switch changes is the arithmetic of float GEMMs, which hold almost all of a model's FLOPs:
//
//   fp32  exact fp32 products (the default, and what the tests compare everything against)
//   tf32  operands rounded to TF32 (10-bit mantissa), products summed in fp32
//   bf16  operands rounded to bf16 (7-bit mantissa), products summed in fp32
//
// On a GPU, tf32 and bf16 run on tensor cores: bf16 operands are rounded into bf16 copies
// (weights and activations alike) and cuBLAS multiplies them with fp32 accumulation and an
// fp32 result. On the CPU the same rounding is emulated on copies of the operands, so a CPU run
// with the switch on computes what the GPU computes (up to the order of the fp32 sums) — slower,
// not faster, but it lets a test or a user see the effect of bf16 on their model anywhere.
//
// double GEMMs are always exact: finite-difference gradient checks never see the switch.
//
// The attention ops' matrix products follow the switch on the GPU too: in bf16 the window
// attention and GCA kernels at DRT's shapes are version 3 (drt/cuda/attention/), which round
// q, k, v, P and dS to bf16 on tensor cores and keep the softmax in fp32. The CPU's attention
// ops do not emulate that rounding (their tests compare against the CPU op on bf16-rounded
// inputs instead), so a bf16 run on the CPU matches a GPU run in its GEMMs, not in attention.
//
// Why only GEMMs? Elementwise ops, norms, softmax and the loss are memory-bound: bf16 inputs
// would save bandwidth but not arithmetic, and fp32 there is what keeps mixed-precision training
// stable (the reference trains the same way under torch.autocast, which also keeps softmax,
// norms and the loss in fp32).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "drt/core/error.hpp"

namespace drt {

enum class Precision : std::uint8_t { fp32, tf32, bf16 };

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::bf16: return "bf16";
  }
  return "?";
}

// "fp32" | "tf32" | "bf16"; anything else is an error naming `where` (a file, a flag).
inline Precision parse_precision(const std::string& text, const std::string& where) {
  if (text == "fp32") return Precision::fp32;
  if (text == "tf32") return Precision::tf32;
  if (text == "bf16") return Precision::bf16;
  throw Error(detail::concat(where, ": unknown precision '", text, "' (expected fp32, tf32 or bf16)"));
}

namespace detail {
inline Precision& matmul_precision_slot() {
  static Precision precision = Precision::fp32;
  return precision;
}
}  // namespace detail

// The process-wide switch (like torch.backends.cuda.matmul.allow_tf32; set it before training,
// not from several threads at once).
inline void set_matmul_precision(Precision p) { detail::matmul_precision_slot() = p; }
inline Precision matmul_precision() { return detail::matmul_precision_slot(); }

// Sets the switch for one scope and restores the previous setting when it ends.
class MatmulPrecisionScope {
 public:
  explicit MatmulPrecisionScope(Precision p) : previous_(matmul_precision()) { set_matmul_precision(p); }
  ~MatmulPrecisionScope() { set_matmul_precision(previous_); }
  MatmulPrecisionScope(const MatmulPrecisionScope&) = delete;
  MatmulPrecisionScope& operator=(const MatmulPrecisionScope&) = delete;

 private:
  Precision previous_;
};

// Within one of these scopes, a bf16 GEMM on the GPU rounds each operand's storage once and
// reuses that bf16 copy for the scope's later GEMMs that read the same storage (cuda/bf16.cuh,
// bf16_operand). Without it every GEMM rounds both operands again, and in a training step that
// rounding moved as many bytes as the GEMMs themselves: attention's q, k and v read one input,
// and a linear layer's backward reads its output gradient twice (for dx and for dW).
//
// The scope is a promise by the code that opens it: no storage a GEMM reads inside it is written
// (or freed and reallocated) before the scope ends. A copy is found by its source's address and
// reused for any read of at most as many elements from that address; it lives until the scope
// ends. Scopes nest; an inner one also finds its outer scopes' copies.
//
// A scope may name the storages it promises for (RoundedOperandReuse(list)): it keeps copies of
// those alone, and a long-lived one can hand its copies to the next (copies(), remember()). The
// decoder keeps the model's weights rounded across prefill segments this way, the trainer for
// all the micro-batches of a step, and the model and the decoder round the chunk memory once for
// all the GCA layers of a segment, while the activations read in between, whose addresses the
// allocator recycles from layer to layer, are not kept. The GCA op keeps the copies its forward
// read (find()) for its backward.
class RoundedOperandReuse {
 public:
  struct Entry {
    const void* source;
    std::int64_t elements;
    std::shared_ptr<void> copy;
  };
  // A scope for every storage read inside it.
  RoundedOperandReuse() : outer_(innermost()) { innermost() = this; }
  // A scope for the storages in `only` alone; it keeps a reference to the list, so a temporary
  // list is refused.
  explicit RoundedOperandReuse(const std::vector<const void*>& only) : only_(&only), outer_(innermost()) {
    innermost() = this;
  }
  explicit RoundedOperandReuse(std::vector<const void*>&&) = delete;
  ~RoundedOperandReuse() { innermost() = outer_; }
  RoundedOperandReuse(const RoundedOperandReuse&) = delete;
  RoundedOperandReuse& operator=(const RoundedOperandReuse&) = delete;

  // The innermost open scope of this thread, or null.
  static RoundedOperandReuse* active() { return innermost(); }

  // A copy of at least `elements` elements rounded from `source`, or null.
  std::shared_ptr<void> find(const void* source, std::int64_t elements) const {
    for (const RoundedOperandReuse* scope = this; scope != nullptr; scope = scope->outer_)
      for (const Entry& e : scope->copies_)
        if (e.source == source && e.elements >= elements) return e.copy;
    return nullptr;
  }
  // Keeps a new copy in the scope that promises for `source`: the outermost scope naming it (the
  // longest-lived promise: a model's scope over its chunk memory outlives each GCA op's own),
  // else the innermost scope that names nothing; none: the copy is not kept.
  void remember(const void* source, std::int64_t elements, std::shared_ptr<void> copy) {
    RoundedOperandReuse *naming = nullptr, *plain = nullptr;
    for (RoundedOperandReuse* scope = this; scope != nullptr; scope = scope->outer_) {
      if (!scope->only_) {
        if (plain == nullptr) plain = scope;
      } else if (std::find(scope->only_->begin(), scope->only_->end(), source) != scope->only_->end()) {
        naming = scope;
      }
    }
    RoundedOperandReuse* keeper = naming != nullptr ? naming : plain;
    if (keeper != nullptr) keeper->copies_.push_back(Entry{source, elements, std::move(copy)});
  }
  // This scope's own copies (for a later scope over the same, unchanged storages).
  const std::vector<Entry>& copies() const { return copies_; }

 private:
  static RoundedOperandReuse*& innermost() {
    thread_local RoundedOperandReuse* scope = nullptr;
    return scope;
  }
  std::vector<Entry> copies_;
  const std::vector<const void*>* only_ = nullptr;  // null: the scope promises for every storage
  RoundedOperandReuse* outer_;
};

// x rounded to the operand precision p (round to nearest, ties to even; NaN and ±inf kept).
// bf16 keeps the top 16 bits of a float, tf32 the top 19.
inline float round_to_precision(float x, Precision p) {
  if (p == Precision::fp32 || !std::isfinite(x)) return x;
  const int dropped_bits = p == Precision::bf16 ? 16 : 13;
  std::uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const std::uint32_t half = (1u << (dropped_bits - 1)) - 1;
  const std::uint32_t lowest_kept = (bits >> dropped_bits) & 1u;
  bits = (bits + half + lowest_kept) & ~((1u << dropped_bits) - 1u);
  float y;
  std::memcpy(&y, &bits, 4);
  return y;
}

}  // namespace drt
