// drt/autodiff/profile.hpp — where backward() spends its time, op by op.
//
//     BackwardProfile profile([] { cuda::synchronize(); });   // on the GPU: wait for each op
//     tape().set_backward_observer(&profile);
//     backward(loss);
//     tape().set_backward_observer(nullptr);
//     std::fputs(profile.table(20).c_str(), stdout);
//
// Each record of the tape is timed on its own and charged to the op that recorded it: the name
// of the record's closure type, which for a lambda names the function that holds it
// ("drt::rms_norm<float>"). GPU work is asynchronous, so the `wait` given must block until the
// device is idle, before and after each record; the synchronisations slow the step down, so a
// profile shows shares, not the speed of an unobserved step.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#if defined(__GNUG__)
#include <cxxabi.h>
#endif

#include "drt/autodiff/tape.hpp"

namespace drt {

// The op a record belongs to, from its closure type's demangled name: the function that holds
// the first lambda in it. Ops record through a wrapper, so the names look like
//   "drt::record_backward<float, drt::rms_norm<float>(drt::Var<float> const&, ...)::{lambda()#1}>"
// and this returns "drt::rms_norm<float>" (the whole name for a type that is not a lambda).
inline std::string op_name(const std::type_info& type) {
  std::string name = type.name();
#if defined(__GNUG__)
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                                   std::free);
  if (status == 0 && demangled) name = demangled.get();
#endif
  const std::size_t lambda = name.find("::{lambda");
  if (lambda == std::string::npos) return name;
  std::size_t close = name.rfind(')', lambda);  // end of the holding function's argument list
  if (close == std::string::npos) return name;
  // Back over the argument list to its '(' ...
  std::size_t open = close;
  for (int depth = 0; open-- > 0;) {
    if (name[open] == ')') ++depth;
    else if (name[open] == '(' && depth-- == 0) break;
  }
  if (open == std::string::npos) return name;
  // ... then over the function's qualified name and template arguments to where it starts.
  std::size_t start = open;
  for (int depth = 0; start > 0; --start) {
    const char c = name[start - 1];
    if (c == '>') ++depth;
    else if (c == '<' && depth-- == 0) break;
    else if ((c == ' ' || c == ',') && depth == 0) break;
  }
  return name.substr(start, open - start);
}

class BackwardProfile : public BackwardObserver {
 public:
  struct Entry {
    std::string op;
    double seconds = 0;
    long calls = 0;
  };

  explicit BackwardProfile(std::function<void()> wait = {}) : wait_(std::move(wait)) {}

  void before(const std::type_info&) override {
    if (wait_) wait_();
    start_ = Clock::now();
  }
  void after(const std::type_info& op) override {
    if (wait_) wait_();
    Entry& e = by_type_[&op];
    e.seconds += std::chrono::duration<double>(Clock::now() - start_).count();
    ++e.calls;
  }

  // One entry per op name (several closure types may share one), largest time first.
  std::vector<Entry> entries() const {
    std::map<std::string, Entry> by_name;
    for (const auto& [type, e] : by_type_) {
      Entry& merged = by_name[op_name(*type)];
      merged.op = op_name(*type);
      merged.seconds += e.seconds;
      merged.calls += e.calls;
    }
    std::vector<Entry> out;
    for (auto& [name, e] : by_name) out.push_back(e);
    std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.seconds > b.seconds; });
    return out;
  }

  double total_seconds() const {
    double total = 0;
    for (const auto& [type, e] : by_type_) total += e.seconds;
    return total;
  }

  // The `rows` largest entries: time, share of the total, calls, op.
  std::string table(std::size_t rows) const {
    const std::vector<Entry> all = entries();
    const double total = total_seconds();
    std::string out;
    char line[512];
    std::snprintf(line, sizeof line, "%10s %7s %7s  %s\n", "ms", "share", "calls", "op (backward)");
    out += line;
    for (std::size_t i = 0; i < std::min(rows, all.size()); ++i) {
      std::snprintf(line, sizeof line, "%10.2f %6.1f%% %7ld  %s\n", 1e3 * all[i].seconds,
                    total > 0 ? 100 * all[i].seconds / total : 0.0, all[i].calls, all[i].op.c_str());
      out += line;
    }
    std::snprintf(line, sizeof line, "%10.2f %6.1f%% %7s  total of %zu ops\n", 1e3 * total, 100.0, "", all.size());
    out += line;
    return out;
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::function<void()> wait_;
  Clock::time_point start_;
  std::map<const std::type_info*, Entry> by_type_;
};

}  // namespace drt
