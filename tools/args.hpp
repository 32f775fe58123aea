// tools/args.hpp — the drt tool's argument parser: `--flag value` pairs after the command name.
//
// A command declares its flags once (CommandSpec); the same list drives parsing, the check for
// unknown flags and the usage text. Bad command lines throw UsageError, which the dispatcher turns
// into a message and exit code 2; it is distinct from drt::Error (bad input files, exit code 1).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "drt/core/error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drt::cli {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Flag {
  std::string name;        // without the dashes: "config" for --config
  std::string value_name;  // shown in the usage text: --config FILE
  std::string help;
  bool required = false;
  std::string fallback = "";  // the value of an optional flag that is not given ("" = none)
};

struct CommandSpec {
  std::string name;     // "info"
  std::string summary;  // one line, for `drt --help`
  std::vector<Flag> flags;

  const Flag* find(const std::string& flag_name) const {
    for (const auto& f : flags)
      if (f.name == flag_name) return &f;
    return nullptr;
  }
  std::string flag_list() const {
    std::string list;
    for (const auto& f : flags) list += (list.empty() ? "--" : ", --") + f.name;
    return list.empty() ? "none" : list;
  }
};

class Args {
 public:
  // `words` are the words after the command name. `--help` / `-h` anywhere asks for the usage text
  // and skips every other check.
  static Args parse(const CommandSpec& spec, std::span<const std::string> words) {
    Args args(spec);
    for (const auto& w : words)
      if (w == "--help" || w == "-h") {
        args.help_ = true;
        return args;
      }
    for (std::size_t i = 0; i < words.size(); ++i) {
      const std::string& word = words[i];
      if (word.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + word + "' (flags are --name value)");
      const std::string name = word.substr(2);
      if (!spec.find(name)) throw UsageError("unknown flag " + word + " (known: " + spec.flag_list() + ")");
      if (i + 1 == words.size() || words[i + 1].rfind("--", 0) == 0)
        throw UsageError("flag --" + name + " needs a value");
      if (!args.values_.emplace(name, words[i + 1]).second) throw UsageError("flag --" + name + " is given twice");
      ++i;
    }
    for (const auto& flag : spec.flags)
      if (flag.required && !args.values_.count(flag.name)) throw UsageError("missing required flag --" + flag.name);
    return args;
  }

  bool help() const { return help_; }
  bool declares(const std::string& name) const { return spec_->find(name) != nullptr; }
  bool has(const std::string& name) const { return values_.count(known(name).name) > 0; }

  // The flag's value, or its fallback when it was not given.
  const std::string& text(const std::string& name) const {
    const Flag& flag = known(name);
    auto it = values_.find(name);
    return it == values_.end() ? flag.fallback : it->second;
  }

  long long integer(const std::string& name) const {
    const std::string& s = text(name);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) throw UsageError("flag --" + name + " needs an integer, got '" + s + "'");
    return v;
  }

  double number(const std::string& name) const {
    const std::string& s = text(name);
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno == ERANGE) throw UsageError("flag --" + name + " needs a number, got '" + s + "'");
    return v;
  }

 private:
  explicit Args(const CommandSpec& spec) : spec_(&spec) {}

  // Asking for a flag the command never declared is a bug in the command, not in the command line.
  const Flag& known(const std::string& name) const {
    const Flag* flag = spec_->find(name);
    DRT_CHECK(flag, "drt ", spec_->name, ": the command reads undeclared flag --", name);
    return *flag;
  }

  const CommandSpec* spec_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

// "504,2016,8064" → {504, 2016, 8064}: a flag's comma list of positive integers.
inline std::vector<long long> parse_positive_list(const std::string& flag, const std::string& list) {
  std::vector<long long> out;
  std::size_t begin = 0;
  while (begin <= list.size()) {
    const std::size_t end = std::min(list.find(',', begin), list.size());
    const std::string item = list.substr(begin, end - begin);
    char* stop = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || v < 1 || errno == ERANGE)
      throw UsageError("flag --" + flag + " needs a comma list of positive integers, got '" + list + "'");
    out.push_back(v);
    begin = end + 1;
  }
  return out;
}

// Applies the common --threads N flag, when given, to OpenMP.
inline void apply_threads_flag(const Args& args) {
  if (!args.has("threads")) return;
  const long long threads = args.integer("threads");
  if (threads < 1) throw UsageError("flag --threads needs a positive integer, got " + args.text("threads"));
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(threads));
#endif
}

inline void print_usage(const CommandSpec& spec, std::ostream& out) {
  out << "usage: drt " << spec.name;
  for (const auto& f : spec.flags) out << (f.required ? " --" : " [--") << f.name << " " << f.value_name << (f.required ? "" : "]");
  out << "\n\n" << spec.summary << "\n";
  if (spec.flags.empty()) return;
  out << "\nflags:\n";
  for (const auto& f : spec.flags) {
    std::string left = "  --" + f.name + " " + f.value_name;
    left.resize(std::max<std::size_t>(left.size() + 2, 24), ' ');
    out << left << f.help;
    if (!f.required && !f.fallback.empty()) out << " (default " << f.fallback << ")";
    out << "\n";
  }
}

}  // namespace drt::cli
