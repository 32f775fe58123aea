// bench/support/capturing_reporter.hpp — the console reporter every drt benchmark program uses.
//
// It prints like Google Benchmark's console reporter (only the median and cv lines when there are
// repetitions, in the order the benchmarks were registered even when repetitions are interleaved)
// and keeps every repetition's counters, plus its time per iteration in ms under "ms", so that a
// program can print ratios measured in the same run at the end.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

class CapturingReporter : public benchmark::ConsoleReporter {
 public:
  CapturingReporter() : ConsoleReporter(OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Iteration && !failed(r)) {
        auto& mine = samples_[r.run_name.function_name];
        for (const auto& [counter, value] : r.counters) mine[counter].push_back(value);
        if (r.iterations > 0) mine["ms"].push_back(1e3 * r.real_accumulated_time / double(r.iterations));
      }
      if (runs.size() == 1 || r.aggregate_name == "median" || r.aggregate_name == "cv") shown_.push_back(r);
    }
  }
  // Google Benchmark 1.8 replaced `error_occurred` with `skipped` (the GPU machine has a newer one).
  // A template, so that the branch for the other version is never compiled.
  template <class R>
  static bool failed(const R& r) {
    if constexpr (requires { r.error_occurred; }) return r.error_occurred;
    else return bool(r.skipped);
  }
  void Finalize() override {
    std::stable_sort(shown_.begin(), shown_.end(),
                     [](const Run& a, const Run& b) { return a.family_index < b.family_index; });
    for (std::size_t i = 0; i < shown_.size();) {
      std::size_t j = i;
      while (j < shown_.size() && shown_[j].family_index == shown_[i].family_index) ++j;
      ConsoleReporter::ReportRuns(std::vector<Run>(shown_.begin() + std::ptrdiff_t(i), shown_.begin() + std::ptrdiff_t(j)));
      i = j;
    }
  }

  // Every repetition's value of a counter ("ms" for the time per iteration).
  std::vector<double> values(const std::string& name, const std::string& counter) const {
    auto b = samples_.find(name);
    if (b == samples_.end()) return {};
    auto c = b->second.find(counter);
    return c == b->second.end() ? std::vector<double>{} : c->second;
  }
  std::size_t repetitions(const std::string& name, const std::string& counter) const {
    return values(name, counter).size();
  }
  // Median over the repetitions; NaN when the benchmark did not run.
  double median(const std::string& name, const std::string& counter) const {
    std::vector<double> v = values(name, counter);
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  // The largest value over the repetitions (the best rate).
  double best(const std::string& name, const std::string& counter) const {
    std::vector<double> v = values(name, counter);
    return v.empty() ? NAN : *std::max_element(v.begin(), v.end());
  }

 private:
  std::map<std::string, std::map<std::string, std::vector<double>>> samples_;
  std::vector<Run> shown_;
};

// The main() of every drt benchmark program: our defaults go first so that the same flags given on
// the command line win; after the run, `summary` prints the ratios measured in it.
template <class Register, class Summary>
int run_benchmarks(int argc, char** argv, int repetitions, Register register_benchmarks, Summary summary) {
  std::string repetitions_flag = "--benchmark_repetitions=" + std::to_string(repetitions);
  std::string min_time = "--benchmark_min_time=0.2", interleave = "--benchmark_enable_random_interleaving=true";
  std::vector<char*> args{argv[0], min_time.data(), repetitions_flag.data(), interleave.data()};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  register_benchmarks();
  CapturingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  summary(reporter);
  benchmark::Shutdown();
  return 0;
}
