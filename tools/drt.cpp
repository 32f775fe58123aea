// tools/drt.cpp — the `drt` command-line tool: `drt <command> [--flag value ...]`.
//
// Each command lives in its own header (tools/command_<name>.hpp) as a CommandSpec (its flags)
// and a run function; adding one is one include and one line in kCommands.
// Exit codes: 0 success, 1 a drt::Error (bad config, unreadable file, ...), 2 a bad command line.
#include <exception>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "args.hpp"
#include "command_eval.hpp"
#include "command_generate.hpp"
#include "command_info.hpp"
#include "command_lengthgen.hpp"
#include "command_niah.hpp"
#include "command_tokenize.hpp"
#include "command_train.hpp"
#include "device_flag.hpp"

namespace drt::cli {
namespace {

struct Command {
  const CommandSpec& (*spec)();
  int (*run)(const Args& args, std::ostream& out);
};

const Command kCommands[] = {
    {info_spec, run_info},
    {eval_spec, run_eval},
    {generate_spec, run_generate},
    {tokenize_spec, run_tokenize},
    {train_spec, run_train},
    {lengthgen_spec, run_lengthgen},
    {niah_spec, run_niah},
};

const Command* find_command(const std::string& name) {
  for (const auto& command : kCommands)
    if (command.spec().name == name) return &command;
  return nullptr;
}

void print_overview(std::ostream& out) {
  out << "usage: drt <command> [--flag value ...]\n"
         "       drt <command> --help\n\ncommands:\n";
  for (const auto& command : kCommands) {
    std::string name = "  " + command.spec().name;
    name.resize(std::max<std::size_t>(name.size() + 2, 12), ' ');
    out << name << command.spec().summary << "\n";
  }
}

int dispatch(std::span<const std::string> words) {
  if (words.empty()) {
    print_overview(std::cerr);
    return 2;
  }
  const std::string& name = words.front();
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview(std::cout);
    return 0;
  }
  const Command* command = find_command(name);
  if (!command) {
    std::cerr << "drt: unknown command '" << name << "'\n\n";
    print_overview(std::cerr);
    return 2;
  }
  const CommandSpec& spec = command->spec();
  try {
    const Args args = Args::parse(spec, words.subspan(1));
    if (args.help()) {
      print_usage(spec, std::cout);
      return 0;
    }
    return command->run(args, std::cout);
  } catch (const UsageError& e) {
    std::cerr << "drt " << spec.name << ": " << e.what() << "\n(run 'drt " << spec.name << " --help' for usage)\n";
    return 2;
  } catch (const drt::Error& e) {
    std::cerr << "drt " << spec.name << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "drt " << spec.name << ": unexpected error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace drt::cli

int main(int argc, char** argv) {
  const std::vector<std::string> words(argv + 1, argv + argc);
  drt::cli::forward_to_gpu_build(argv, words);
  return drt::cli::dispatch(words);
}
