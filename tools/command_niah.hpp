// tools/command_niah.hpp — `drt niah`: long-context retrieval tests of a trained model over a list
// of context lengths, decoded in segments so that memory stays bounded at any length.
//
//   drt niah --checkpoint runs/lengthgen/drt/checkpoint --task single --lengths 65520,262080,1048572
//
// Tasks (byte-level haystacks from the corpus's held-out tail, repeated end to end when a length
// needs more text than it has; drt/data/passkey.hpp, niah.hpp):
//   single    "|The passkey is:" P "|"; the reference scores P's first digit
//   multi     6 key/value needles; the reference scores the asked value's last digit
//   multihop  two chains of two hops; the reference scores the answer's last digit
//   mqar      multi-query associative recall over noise (drt/data/mqar.hpp); every query scored
// Two scores per length: the reference's (one token per trial, earlier answer tokens given) and
// the exact match of the whole answer (every answer token the argmax). Also per length: seconds
// per trial, tokens/s, the peak resident memory while testing that length (the kernel's VmHWM,
// reset before each length) and the chunk memory's size at the end of a trial.
// Writes results.md, results.csv, accuracy.png and memory.png (gnuplot) under --out.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "args.hpp"
#include "decoding.hpp"
#include "drt/data/mqar.hpp"
#include "drt/data/niah.hpp"
#include "drt/data/passkey.hpp"
#include "drt/io/file.hpp"
#include "format.hpp"
#include "plot.hpp"

namespace drt::cli {

inline const CommandSpec& niah_spec() {
  static const CommandSpec spec{
      "niah",
      "Needle-in-a-haystack tests (single, multi-key, two-hop passkey; MQAR) over context lengths, with memory and time.",
      {{"checkpoint", "DIR", "a drt train checkpoint (<out_dir>/checkpoint)"},
       {"config", "FILE", "model config JSON, with --weights: a DRT model"},
       {"weights", "FILE", "weights .safetensors (reference names)"},
       {"task", "single|multi|multihop|mqar", "what to test", false, "single"},
       {"lengths", "LIST", "context lengths in tokens (multiples of the model's enc_chunk_size)", false, "4032,16128,64512"},
       {"trials", "N", "trials per length", false, "10"},
       {"seed", "S", "seed of the trials", false, "20250101"},
       {"corpus", "NAME", "haystack corpus (default: the checkpoint's, else kjv); its last 10% is used"},
       {"segment", "N", "prefill segment in positions (memory is bounded by it)", false, "4096"},
       {"offload", "DIR", "keep the chunk memory in a memory-mapped file in DIR instead of RAM"},
       mirrored_landmarks_flag_spec(),
       {"out", "DIR", "where results.md/.csv and the plots go", false, "runs/niah"},
       {"threads", "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
       device_flag_spec()}};
  return spec;
}

namespace detail {

// One trial to score: the tokens to feed and, per answer token, the row whose argmax must equal it.
struct ScoredTrial {
  std::vector<std::int32_t> tokens;
  std::vector<Index> rows;             // row t predicts token t + 1
  std::vector<std::int32_t> expected;  // one per row
  std::vector<bool> reference_scored;  // rows the reference's score counts
};

inline ScoredTrial scored_needle_trial(const data::NeedleTrial& t) {
  ScoredTrial s;
  const Index end = t.answer_start + static_cast<Index>(t.answer.size());
  s.tokens.assign(t.tokens.data(), t.tokens.data() + end);  // nothing after the answer matters
  for (Index i = 0; i < static_cast<Index>(t.answer.size()); ++i) {
    s.rows.push_back(t.answer_start + i - 1);
    s.expected.push_back(t.answer[i]);
    s.reference_scored.push_back(t.answer_start + i == t.scored_position);
  }
  return s;
}

struct NiahTask {
  std::string name;
  std::function<ScoredTrial(Index length, std::uint64_t trial)> make;
};

inline NiahTask niah_task(const std::string& name, const data::HaystackText& haystack, const ModelConfig& c, std::uint64_t seed,
                          bool is_drt) {
  const Index C = c.enc_chunk_size;
  if (name == "single") {
    return {name, [&haystack, C, seed](Index length, std::uint64_t trial) {
              const data::PasskeyOptions o{.chunk_tokens = C, .passkey_tokens = 5};
              const data::PasskeyTrial p = data::make_passkey_trial(haystack, data::byte_passkey_format(), o, length, seed, trial);
              data::NeedleTrial t{p.tokens, p.key_position, p.passkey, p.key_position};
              return scored_needle_trial(t);
            }};
  }
  if (name == "multi")
    return {name, [&haystack, C, seed](Index length, std::uint64_t trial) {
              return scored_needle_trial(data::make_multikey_trial(haystack, C, length, seed, trial));
            }};
  if (name == "multihop")
    return {name, [&haystack, C, seed](Index length, std::uint64_t trial) {
              return scored_needle_trial(data::make_two_hop_trial(haystack, C, length, seed, trial));
            }};
  if (name == "mqar") {
    // Ids below a DRT's pad and landmark ids (256 for the byte-level models), split as Zoology does.
    const int usable = is_drt ? std::min({c.vocab_size, c.pad_id, c.chunk_id}) : c.vocab_size;
    const data::MqarOptions o = data::mqar_split_vocab(usable, 8, 8);
    return {name, [o, usable, seed](Index length, std::uint64_t trial) {
              const data::MqarSequence q = data::make_mqar_sequence(o, length, usable, seed, trial);
              ScoredTrial s;
              s.tokens.assign(q.tokens.data(), q.tokens.data() + q.tokens.numel());
              for (Index p : q.query_positions) {
                s.rows.push_back(p);
                s.expected.push_back(q.labels(0, p + 1));
                s.reference_scored.push_back(true);
              }
              return s;
            }};
  }
  throw UsageError("--task must be single, multi, multihop or mqar, got '" + name + "'");
}

struct NiahLengthResult {
  Index length = 0;
  double reference_accuracy = 0, exact_match = 0, seconds_per_trial = 0, tokens_per_second = 0;
  std::size_t peak_resident = 0, chunks_in_ram = 0, chunks_on_disk = 0;
  std::size_t peak_device = 0;  // with --device cuda: the most GPU memory in use while testing this length
};

inline NiahLengthResult run_niah_length(const EvalModel& m, const NiahTask& task, Index length, Index trials, Index segment,
                                        const std::string& offload, Index mirrored_landmarks, Device device) {
  NiahLengthResult r;
  r.length = length;
  reset_peak_resident();
  if (device != Device::cpu) device_backend(device).reset_peak_memory();
  Index scored = 0, hits = 0, exact = 0, tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (Index trial = 0; trial < trials; ++trial) {
    const ScoredTrial t = task.make(length, static_cast<std::uint64_t>(trial));
    const auto decoder = make_decoder(m, offload, "niah", mirrored_landmarks);
    const Tensor<float> logits = decoder->feed(t.tokens, t.rows, segment);
    bool all = true;
    for (std::size_t i = 0; i < t.rows.size(); ++i) {
      const Tensor<float> row = logits.select(0, static_cast<Index>(i)).contiguous();
      const bool hit = sample_token(row, SamplingOptions{}, 0) == t.expected[i];
      all = all && hit;
      if (t.reference_scored[i]) {
        ++scored;
        hits += hit;
      }
    }
    exact += all;
    tokens += static_cast<Index>(t.tokens.size());
    const auto [in_ram, on_disk] = chunk_memory_bytes(*decoder);
    r.chunks_in_ram = in_ram;
    r.chunks_on_disk = on_disk;
  }
  const double seconds = seconds_since(start);
  r.reference_accuracy = static_cast<double>(hits) / static_cast<double>(scored);
  r.exact_match = static_cast<double>(exact) / static_cast<double>(trials);
  r.seconds_per_trial = seconds / static_cast<double>(trials);
  r.tokens_per_second = static_cast<double>(tokens) / seconds;
  r.peak_resident = peak_resident_bytes();
  if (device != Device::cpu) r.peak_device = device_backend(device).peak_memory();
  return r;
}

inline std::string niah_csv(const std::vector<NiahLengthResult>& results) {
  std::ostringstream csv;
  csv << "length,reference_accuracy,exact_match,seconds_per_trial,tokens_per_second,peak_resident_mib,chunk_memory_ram_mib,"
         "chunk_memory_disk_mib\n";
  for (const auto& r : results) {
    char line[256];
    std::snprintf(line, sizeof line, "%lld,%.4f,%.4f,%.3f,%.0f,%.1f,%.1f,%.1f\n", static_cast<long long>(r.length),
                  r.reference_accuracy, r.exact_match, r.seconds_per_trial, r.tokens_per_second,
                  static_cast<double>(r.peak_resident) / 1048576.0, static_cast<double>(r.chunks_in_ram) / 1048576.0,
                  static_cast<double>(r.chunks_on_disk) / 1048576.0);
    csv << line;
  }
  return csv.str();
}

inline std::string niah_markdown(const std::string& title, const std::vector<NiahLengthResult>& results) {
  std::ostringstream md;
  md << "# " << title << "\n\n"
     << "| context | reference score | exact match | s/trial | tokens/s | peak RSS | chunk memory (RAM / disk) |\n"
     << "|---|---|---|---|---|---|---|\n";
  for (const auto& r : results) {
    char line[256];
    std::snprintf(line, sizeof line, "| %s | %.2f | %.2f | %.2f | %s | %s | %s / %s |\n", with_thousands(r.length).c_str(),
                  r.reference_accuracy, r.exact_match, r.seconds_per_trial,
                  with_thousands(static_cast<std::int64_t>(r.tokens_per_second)).c_str(), mib(r.peak_resident).c_str(),
                  mib(r.chunks_in_ram).c_str(), mib(r.chunks_on_disk).c_str());
    md << line;
  }
  return md.str();
}

inline std::string niah_plots(const std::filesystem::path& dir, const std::string& title) {
  const std::string csv = "'" + (dir / "results.csv").string() + "'";
  std::ostringstream gp;
  gp << "set datafile separator ','\nset terminal png size 900,560\nset logscale x 2\nset key outside bottom center horizontal\n"
        "set grid\nset xlabel 'context length (tokens)'\n"
     << "set output '" << (dir / "accuracy.png").string() << "'\nset title '" << title << "'\nset ylabel 'accuracy'\nset yrange [0:1.05]\n"
     << "plot " << csv << " using 1:2 skip 1 with linespoints title 'reference score', "
     << csv << " using 1:3 skip 1 with linespoints title 'exact match'\n"
     << "set output '" << (dir / "memory.png").string() << "'\nset title 'memory while testing'\nset ylabel 'MiB'\nset autoscale y\n"
     << "plot " << csv << " using 1:6 skip 1 with linespoints title 'peak resident', "
     << csv << " using 1:7 skip 1 with linespoints title 'chunk memory in RAM', "
     << csv << " using 1:8 skip 1 with linespoints title 'chunk memory on disk'\n";
  if (!gnuplot_available()) return "plots skipped: gnuplot is not installed (scripts/install-deps.sh installs it)";
  return run_gnuplot(dir, gp.str()) ? "plots: accuracy.png, memory.png" : "plots failed: see plot.log";
}

}  // namespace detail

inline int run_niah(const Args& args, std::ostream& out) {
  apply_threads_flag(args);
  std::vector<Index> lengths;
  for (long long v : parse_positive_list("lengths", args.text("lengths"))) lengths.push_back(static_cast<Index>(v));
  const long long trials = args.integer("trials"), segment = args.integer("segment");
  if (trials < 1) throw UsageError("flag --trials needs a positive integer");
  if (segment < 1) throw UsageError("flag --segment needs a positive integer");
  const std::string task_name = args.text("task");
  if (task_name != "single" && task_name != "multi" && task_name != "multihop" && task_name != "mqar")
    throw UsageError("--task must be single, multi, multihop or mqar, got '" + task_name + "'");

  const detail::EvalModel m = detail::load_eval_model(args);
  for (Index length : lengths)
    DRT_CHECK(length % m.config.enc_chunk_size == 0, "drt niah: length ", length, " is not a multiple of the model's chunk of ",
              m.config.enc_chunk_size, " tokens");
  const data::HaystackText haystack =
      data::repeated_haystack(detail::held_out_haystack(args, m), *std::max_element(lengths.begin(), lengths.end()));
  const detail::NiahTask task =
      detail::niah_task(task_name, haystack, m.config, static_cast<std::uint64_t>(args.integer("seed")), m.is_drt);
  const std::string offload = args.has("offload") ? args.text("offload") : std::string();
  const std::filesystem::path dir(args.text("out"));
  std::filesystem::create_directories(dir);

  const std::string title = "drt niah --task " + task_name + " (" + (m.is_drt ? "DRT" : "baseline") + ", " +
                            std::to_string(trials) + " trials per length)";
  out << title << "\nhaystack " << haystack.name() << "\n";
  std::vector<detail::NiahLengthResult> results;
  for (Index length : lengths) {
    results.push_back(detail::run_niah_length(m, task, length, static_cast<Index>(trials), static_cast<Index>(segment), offload,
                                              mirrored_landmarks_flag(args), device_flag(args)));
    const auto& r = results.back();
    char line[256];
    std::snprintf(line, sizeof line, "length %lld  reference %.2f  exact %.2f  %.2f s/trial  %.0f tokens/s  peak RSS %s%s%s\n",
                  static_cast<long long>(r.length), r.reference_accuracy, r.exact_match, r.seconds_per_trial, r.tokens_per_second,
                  mib(r.peak_resident).c_str(), r.peak_device > 0 ? "  peak GPU memory " : "",
                  r.peak_device > 0 ? mib(r.peak_device).c_str() : "");
    out << line << std::flush;
  }
  const std::string md = detail::niah_markdown(title, results);
  io::write_file_atomically((dir / "results.md").string(), [&](std::FILE* f) { io::write_bytes(f, md.data(), md.size()); });
  const std::string csv = detail::niah_csv(results);
  io::write_file_atomically((dir / "results.csv").string(), [&](std::FILE* f) { io::write_bytes(f, csv.data(), csv.size()); });
  out << "\n" << md << "\nwrote " << (dir / "results.md").string() << ", results.csv; " << detail::niah_plots(dir, title) << "\n";
  return 0;
}

}  // namespace drt::cli
