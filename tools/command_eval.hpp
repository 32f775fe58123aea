// tools/command_eval.hpp — `drt eval`: measure a trained model. The model comes from a `drt train`
// checkpoint (--checkpoint DIR: DRT or baseline, its run.json says which) or from a reference
// config and weights (--config C.json --weights W.safetensors: DRT). One measurement per call:
//
//   --tokens X.npy        the loss of one token sequence (labels = tokens), optionally with its
//                         logits and parameter gradients, for comparing drt with the reference
//                         number for number. Prints `loss <float>` (%.9g), `tokens <T>`, `seconds`.
//                         --dump-logits writes (T, V) float32 rows aligned with the input tokens
//                         (landmark rows removed); --dump-grads writes d loss / d parameter under
//                         the reference's names (a tied embedding's gradient under both names).
//   --perplexity FILE     perplexity over non-overlapping windows of a token file (.npy or a
//                         `drt tokenize` shard), spec §11.1: prints `mean_window_loss`, `perplexity`.
//   --passkey LENGTHS     passkey accuracy (byte-level digits, drt/data/passkey.hpp) at each
//                         context length of a comma list, over the corpus's held-out tail.
//
// Eval mode throughout (no Gumbel noise, no dropout), fp32.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <ostream>
#include <filesystem>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "args.hpp"
#include "device_flag.hpp"
#include "drt/io/npy.hpp"
#include "drt/io/safetensors.hpp"
#include "drt/eval/passkey_sweep.hpp"
#include "drt/eval/perplexity.hpp"
#include "drt/train.hpp"

namespace drt::cli {

inline const CommandSpec& eval_spec() {
  static const CommandSpec spec{
      "eval",
      "Evaluate a model: loss of a token file, perplexity over windows, or passkey accuracy over lengths.",
      {{"checkpoint", "DIR", "a drt train checkpoint (<out_dir>/checkpoint): model type, config and weights"},
       {"config", "FILE", "model config JSON (reference key names), with --weights: a DRT model"},
       {"weights", "FILE", "weights .safetensors (reference state_dict names)"},
       {"tokens", "FILE", "loss of a 1-D int32/int64 .npy of token ids (DRT: length a multiple of enc_chunk_size)"},
       {"dump-logits", "FILE", "with --tokens: write the logits (T, V) float32 .npy, landmark rows removed"},
       {"dump-grads", "FILE", "with --tokens: write d loss / d parameter (fp32 .safetensors, reference names)"},
       {"perplexity", "FILE", "perplexity over non-overlapping windows of a token file (.npy or shard)"},
       {"window", "N", "with --perplexity: tokens per window (default: the checkpoint's seq_len)"},
       {"max-windows", "N", "with --perplexity: score at most N windows (default: all)"},
       {"passkey", "LENGTHS", "passkey accuracy at each context length, e.g. 504,2016,8064"},
       {"trials", "N", "with --passkey: trials per length", false, "32"},
       {"seed", "S", "with --passkey: seed of the trials", false, "20250101"},
       {"corpus", "NAME", "with --passkey: haystack corpus (default: the checkpoint's, else kjv); its last 10% is used"},
       {"threads", "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
       device_flag_spec()}};
  return spec;
}

// The ids of a 1-D int32/int64 .npy. Ids may be -100 (an unscored position: embedded as pad_id,
// never a target), as in the reference's NIAH data; any other id outside [0, vocab_size) is an
// error naming the file and the position.
inline std::vector<std::int32_t> read_npy_ids(const std::string& path, int vocab_size) {
  const io::NpyArray a = io::read_npy(path);
  DRT_CHECK(a.descr == "<i4" || a.descr == "<i8", path, ": token ids must be int32 or int64, got dtype '", a.descr, "'");
  DRT_CHECK(a.shape.rank() == 1, path, ": token ids must be a 1-D array, got shape ", a.shape.str());
  const Index T = a.shape[0];
  std::vector<std::int32_t> ids(static_cast<std::size_t>(T));
  for (Index t = 0; t < T; ++t) {
    std::int64_t id;
    if (a.descr == "<i4") {
      std::int32_t v;
      std::memcpy(&v, a.data.data() + 4 * t, 4);
      id = v;
    } else {
      std::memcpy(&id, a.data.data() + 8 * t, 8);
    }
    DRT_CHECK(id < vocab_size, path, ": token id ", id, " at position ", t, " is not below vocab_size ", vocab_size);
    DRT_CHECK(id >= 0 || id == kIgnoreIndex, path, ": token id ", id, " at position ", t,
              " is negative (only -100, an unscored position, is allowed)");
    ids[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(id);
  }
  return ids;
}

// One sequence (1, T) for a DRT model: T must be a positive multiple of L_c.
inline IndexTensor read_token_file(const std::string& path, const ModelConfig& c) {
  const std::vector<std::int32_t> ids = read_npy_ids(path, c.vocab_size);
  const Index T = static_cast<Index>(ids.size());
  DRT_CHECK(T > 0 && T % c.enc_chunk_size == 0, path, ": length ", T, " is not a positive multiple of enc_chunk_size L_c = ",
            c.enc_chunk_size, " (the model needs whole chunks)");
  IndexTensor tokens = IndexTensor::empty({1, T});
  std::copy(ids.begin(), ids.end(), tokens.data());
  return tokens;
}

inline void write_gradients(const DrtModel<float>& model, const std::string& path) {
  io::SafetensorsWriter out;
  for (const auto& p : model.named_parameters()) out.add(p.name, p.parameter->grad(), "F32");
  if (model.config().tie_word_embeddings) out.add(model.tied_head_name(), model.lm_head().grad(), "F32");
  out.set_metadata("format", "pt");
  out.write(path);
}

namespace detail {

// The model to evaluate, with what its checkpoint says about how it was trained.
struct EvalModel {
  std::unique_ptr<train::TrainableModel> model;
  ModelConfig config;
  bool is_drt = true;
  std::optional<train::RunConfig> run;  // from --checkpoint
};

inline EvalModel load_eval_model(const Args& args) {
  const bool from_checkpoint = args.has("checkpoint");
  if (from_checkpoint == (args.has("config") || args.has("weights")))
    throw UsageError("give either --checkpoint DIR or --config FILE with --weights FILE");
  EvalModel m;
  std::string weights;
  if (from_checkpoint) {
    const std::filesystem::path dir(args.text("checkpoint"));
    const std::string run_file = (dir / train::checkpoint_files::run).string();
    DRT_CHECK(std::filesystem::is_regular_file(run_file), args.text("checkpoint"), ": not a drt train checkpoint (no ",
              train::checkpoint_files::run, "; give <out_dir>/checkpoint)");
    m.run = train::RunConfig::load(run_file);
    m.config = m.run->model;
    m.is_drt = m.run->model_type == "drt";
    weights = (dir / train::checkpoint_files::weights).string();
  } else {
    if (!args.has("config") || !args.has("weights")) throw UsageError("--config and --weights go together");
    m.config = ModelConfig::load(args.text("config"), &std::cerr);
    weights = args.text("weights");
  }
  const Device device = device_flag(args);
  if (m.is_drt) m.model = std::make_unique<train::ModelAdapter<DrtModel<float>>>(m.config, 0, "DRT", device);
  else m.model = std::make_unique<train::ModelAdapter<SlidingWindowLM<float>>>(m.config, 0, "baseline", device);
  m.model->load(weights);
  return m;
}

// --tokens: the loss of one sequence, with the optional dumps (a DRT model).
inline int eval_token_file(const Args& args, const EvalModel& m, std::ostream& out) {
  if (!m.is_drt) throw UsageError("--tokens (with its dumps) evaluates DRT models; use --perplexity for the baseline");
  const auto& model = static_cast<const train::ModelAdapter<DrtModel<float>>&>(*m.model).model();
  const ModelConfig& config = m.config;
  const IndexTensor tokens = read_token_file(args.text("tokens"), config);
  const bool want_grads = args.has("dump-grads");

  tape().reset();
  const auto start = std::chrono::steady_clock::now();
  {
    // Without --dump-grads nothing is recorded: the tape keeps no closures or gradient memory.
    std::optional<NoGradGuard> no_grad;
    if (!want_grads) no_grad.emplace();
    const Var<float> logits = model.logits(tokens, ForwardOptions{.training = false});
    const Var<float> loss = cross_entropy(logits, shift_targets(tokens, config.enc_chunk_size));
    const float loss_value = loss.item();
    if (want_grads) backward(loss);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    char line[64];
    std::snprintf(line, sizeof line, "loss %.9g\n", static_cast<double>(loss_value));
    out << line << "tokens " << tokens.size(1) << "\n";
    std::snprintf(line, sizeof line, "seconds %.3f\n", seconds);
    out << line << std::flush;

    if (args.has("dump-logits")) {
      const Tensor<float> rows = drop_landmark_rows(logits.value().to(Device::cpu), config.enc_chunk_size);  // (1, T, V)
      io::write_npy(args.text("dump-logits"), rows.reshape({tokens.size(1), config.vocab_size}));
    }
  }
  if (want_grads) write_gradients(model, args.text("dump-grads"));
  tape().reset();
  return 0;
}

// --perplexity: non-overlapping windows of a .npy or a token shard.
inline int eval_perplexity(const Args& args, const EvalModel& m, std::ostream& out) {
  const std::string path = args.text("perplexity");
  long long window = 0;
  if (args.has("window")) window = args.integer("window");
  else if (m.run) window = m.run->seq_len;
  else throw UsageError("--perplexity needs --window N (or a --checkpoint, whose seq_len is the default)");
  if (window < 2) throw UsageError("flag --window needs an integer >= 2");
  if (m.is_drt && window % m.config.enc_chunk_size != 0)
    throw UsageError("flag --window must be a multiple of the model's enc_chunk_size " + std::to_string(m.config.enc_chunk_size) +
                     " (DRT reads whole chunks), got " + std::to_string(window));
  const long long max_windows = args.has("max-windows") ? args.integer("max-windows") : 0;
  if (max_windows < 0) throw UsageError("flag --max-windows needs an integer >= 0");

  // The stream: a .npy in memory, or a shard read through its mapping.
  std::vector<std::int32_t> npy;
  std::optional<data::TokenShard> shard;
  Index size = 0;
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".npy") == 0) {
    npy = read_npy_ids(path, m.config.vocab_size);
    size = static_cast<Index>(npy.size());
  } else {
    shard.emplace(path);
    DRT_CHECK(shard->vocab_size() <= m.config.vocab_size, path, ": the shard's vocabulary of ", shard->vocab_size(),
              " ids is larger than the model's vocab_size ", m.config.vocab_size);
    shard->check_ids();
    size = shard->size();
  }
  DRT_CHECK(size >= window, path, ": ", size, " tokens are fewer than one window of ", window);
  auto read = [&](Index begin, std::span<std::int32_t> into) {
    if (shard) shard->copy(begin, into);
    else std::copy(npy.begin() + begin, npy.begin() + begin + static_cast<Index>(into.size()), into.begin());
  };
  train::TrainableModel& model = *m.model;
  auto loss_of = [&](const IndexTensor& tokens) {
    return static_cast<double>(model.loss(data::Batch{tokens, tokens}, false, 0).item());
  };
  const WindowPerplexity r = window_perplexity(loss_of, size, static_cast<Index>(window), read, static_cast<Index>(max_windows));
  char line[160];
  std::snprintf(line, sizeof line, "windows %lld of %lld tokens (%lld tokens not scored)\n", static_cast<long long>(r.windows),
                static_cast<long long>(r.window_tokens), static_cast<long long>(r.unscored_tail));
  out << line;
  std::snprintf(line, sizeof line, "mean_window_loss %.6f\nperplexity %.4f\nseconds %.3f\n", r.mean_window_loss, r.perplexity,
                r.seconds);
  out << line << std::flush;
  return 0;
}

// The byte-level text that tests draw haystacks from: the held-out tail of --corpus, else of the
// checkpoint's passkey corpus (its own eval_fraction), else the last 10% of kjv.
inline data::HaystackText held_out_haystack(const Args& args, const EvalModel& m) {
  train::DataConfig corpus_config;
  if (m.run && m.run->data.kind == "passkey") corpus_config = m.run->data;
  else corpus_config.eval_fraction = 0.1;
  if (args.has("corpus") || corpus_config.corpus.empty())
    corpus_config.corpus = data::corpus_path(args.has("corpus") ? args.text("corpus") : std::string("kjv"));
  return train::detail::corpus_text(corpus_config, train::DataStream::eval);
}

// --passkey: accuracy at each length over the corpus's held-out tail.
inline int eval_passkey(const Args& args, const EvalModel& m, std::ostream& out) {
  std::vector<Index> lengths;
  for (long long v : parse_positive_list("passkey", args.text("passkey"))) lengths.push_back(static_cast<Index>(v));
  const long long trials = args.integer("trials");
  if (trials < 1) throw UsageError("flag --trials needs a positive integer");
  const data::HaystackText haystack = held_out_haystack(args, m);
  DRT_CHECK(haystack.vocab_size() <= m.config.vocab_size, "drt eval --passkey: byte-level text needs vocab_size >= 256, the model has ",
            m.config.vocab_size);
  const data::PasskeyOptions task{.chunk_tokens = m.config.enc_chunk_size, .passkey_tokens = 5};
  for (Index length : lengths)
    DRT_CHECK(length % task.chunk_tokens == 0, "drt eval --passkey: length ", length, " is not a multiple of the task's chunk of ",
              task.chunk_tokens, " tokens (the model's enc_chunk_size)");
  train::TrainableModel& model = *m.model;
  out << "passkey over " << haystack.name() << " (held-out tail), " << trials << " trials per length, chance 0.10\n"
      << "length,first_digit,all_digits,seconds\n";
  passkey_sweep([&](const IndexTensor& t) { return model.logits(t); }, haystack, data::byte_passkey_format(), task,
                {.lengths = lengths, .trials = static_cast<Index>(trials), .seed = static_cast<std::uint64_t>(args.integer("seed"))},
                [&](const PasskeyLengthScore& r) {
                  char line[128];
                  std::snprintf(line, sizeof line, "%lld,%.4f,%.4f,%.2f\n", static_cast<long long>(r.length),
                                r.score.first_token_accuracy(), r.score.exact_match_accuracy(), r.seconds);
                  out << line << std::flush;
                });
  return 0;
}

}  // namespace detail

inline int run_eval(const Args& args, std::ostream& out) {
  apply_threads_flag(args);
  const int modes = args.has("tokens") + args.has("perplexity") + args.has("passkey");
  if (modes != 1) throw UsageError("give exactly one of --tokens FILE, --perplexity FILE and --passkey LENGTHS");
  if ((args.has("dump-logits") || args.has("dump-grads")) && !args.has("tokens"))
    throw UsageError("--dump-logits and --dump-grads go with --tokens");
  const detail::EvalModel m = detail::load_eval_model(args);
  if (args.has("tokens")) return detail::eval_token_file(args, m, out);
  if (args.has("perplexity")) return detail::eval_perplexity(args, m, out);
  return detail::eval_passkey(args, m, out);
}

}  // namespace drt::cli
