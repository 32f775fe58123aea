// drt/autodiff/tape.hpp — the tape of reverse-mode autodiff.
//
// Every differentiable op, when it runs, appends ONE record to the tape: a closure that knows
// how to push the gradient of its output back to its inputs (one record per op, never per
// element). backward() runs the records newest first. The closures and every intermediate
// tensor of the step live in the tape's arena; reset() drops them all at once and keeps the
// memory, so the next step reuses it without touching the heap.
//
//     auto loss = model.forward(batch);   // records
//     drt::backward(loss);                // replays records in reverse, fills parameter grads
//     optimiser.step();
//     drt::tape().reset();                // frees the step's intermediates (O(1), no heap)
//
// There is one tape per thread (like Stan Math's autodiff stack). `NoGradGuard` turns
// recording off in a scope, e.g. for evaluation.
#pragma once

#include <typeinfo>
#include <utility>
#include <vector>

#include "drt/core/memory.hpp"

namespace drt {

// Watches backward() record by record (bench_cuda_train --profile times each op's backward with
// it). `op` is the record's closure type: its name is the lambda's, which names the op that
// recorded it.
class BackwardObserver {
 public:
  virtual ~BackwardObserver() = default;
  virtual void before(const std::type_info& op) = 0;
  virtual void after(const std::type_info& op) = 0;
};

class Tape {
 public:
  Tape() { records_.reserve(1024); }
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  ~Tape() { records_.clear(); }

  Arena& arena() { return arena_; }
  bool grad_enabled() const { return grad_enabled_; }
  void set_grad_enabled(bool on) { grad_enabled_ = on; }

  // Appends a backward closure. It is stored in the arena, so recording never allocates once
  // the arena and the record list have reached their steady-state size.
  template <class F>
  void record(F&& backward) {
    using Closure = std::decay_t<F>;
    Closure* c = arena_.make<Closure>(std::forward<F>(backward));
    records_.push_back(Record{c, [](void* p) { (*static_cast<Closure*>(p))(); }, &typeid(Closure)});
  }

  // Null (the default) for no observer.
  void set_backward_observer(BackwardObserver* observer) { observer_ = observer; }

  // Runs every record newest first, then forgets them (a second call does nothing). The values
  // and gradients stay readable until reset(), unless `release_intermediate_gradients`: then
  // the records free each intermediate's gradient once the last record that reads it has run
  // (record_backward, drt/autodiff/var.hpp), so that a step holds the gradients of the ops in
  // flight rather than of every op.
  void run_backward(bool release_intermediate_gradients = false) {
    releasing_gradients_ = release_intermediate_gradients;
    for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
      if (observer_ != nullptr) observer_->before(*it->op);
      it->run(it->closure);
      if (observer_ != nullptr) observer_->after(*it->op);
    }
    releasing_gradients_ = false;
    records_.clear();
  }
  bool releasing_gradients() const { return releasing_gradients_; }

  // Forgets the records and frees every intermediate tensor of the step.
  void reset() {
    records_.clear();
    arena_.reset();
  }

  std::size_t size() const { return records_.size(); }

 private:
  struct Record {
    void* closure;
    void (*run)(void*);
    const std::type_info* op;
  };
  std::vector<Record> records_;
  Arena arena_;
  bool grad_enabled_ = true;
  bool releasing_gradients_ = false;
  BackwardObserver* observer_ = nullptr;
};

// The calling thread's tape.
inline Tape& tape() {
  static thread_local Tape instance;
  return instance;
}

// Disables recording in a scope; ops then compute values only.
class NoGradGuard {
 public:
  NoGradGuard() : previous_(tape().grad_enabled()) { tape().set_grad_enabled(false); }
  ~NoGradGuard() { tape().set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace drt
