// tools/command_eval.hpp — `drt eval --config C.json --weights W.safetensors --tokens X.npy`: the
// loss of a DRT model on one token sequence, optionally with its logits and parameter gradients,
// for comparing drt against the reference implementation number for number.
//
// Shapes: T raw tokens (a multiple of L_c), V vocabulary. The batch is one sequence, tokens (1, T);
// the model inserts the landmarks itself and the labels are the tokens (the reference's
// convention). Eval mode (no Gumbel noise), fp32.
//
// Output for scripts: the line `loss <float>` (%.9g), then `tokens <T>` and `seconds <wall time
// of forward and backward>`. --dump-logits writes (T, V) float32 rows aligned with the input
// tokens (row t predicts token t+1; the landmark rows are removed). --dump-grads writes
// d loss / d parameter under the reference's names; a tied embedding's one gradient is written
// under both of its names, model.embed_tokens.weight and lm_head.weight.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <ostream>
#include <string>

#include "args.hpp"
#include "drt/io/npy.hpp"
#include "drt/io/safetensors.hpp"
#include "drt/model.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drt::cli {

inline const CommandSpec& eval_spec() {
  static const CommandSpec spec{
      "eval",
      "Evaluate a DRT model's loss on a token file (eval mode, fp32); optionally dump logits and gradients.",
      {{"config", "FILE", "model config JSON (reference key names)", true},
       {"weights", "FILE", "weights .safetensors (reference state_dict names)", true},
       {"tokens", "FILE", "1-D int32/int64 .npy of token ids, length a multiple of enc_chunk_size", true},
       {"dump-logits", "FILE", "write the logits (T, V) float32 .npy, landmark rows removed"},
       {"dump-grads", "FILE", "write d loss / d parameter (fp32 .safetensors, reference names)"},
       {"threads", "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"}}};
  return spec;
}

// The token ids of a 1-D .npy as tokens (1, T). Ids may be -100 (an unscored position: embedded
// as pad_id, never a target), as in the reference's NIAH data; any other id outside [0, V) is an
// error naming the file and the position.
inline IndexTensor read_token_file(const std::string& path, const ModelConfig& c) {
  const io::NpyArray a = io::read_npy(path);
  DRT_CHECK(a.descr == "<i4" || a.descr == "<i8", path, ": token ids must be int32 or int64, got dtype '", a.descr, "'");
  DRT_CHECK(a.shape.rank() == 1, path, ": token ids must be a 1-D array, got shape ", a.shape.str());
  const Index T = a.shape[0];
  DRT_CHECK(T > 0 && T % c.enc_chunk_size == 0, path, ": length ", T, " is not a positive multiple of enc_chunk_size L_c = ",
            c.enc_chunk_size, " (the model needs whole chunks)");
  IndexTensor tokens = IndexTensor::empty({1, T});
  for (Index t = 0; t < T; ++t) {
    std::int64_t id;
    if (a.descr == "<i4") {
      std::int32_t v;
      std::memcpy(&v, a.data.data() + 4 * t, 4);
      id = v;
    } else {
      std::memcpy(&id, a.data.data() + 8 * t, 8);
    }
    DRT_CHECK(id < c.vocab_size, path, ": token id ", id, " at position ", t, " is not below vocab_size ", c.vocab_size);
    DRT_CHECK(id >= 0 || id == kIgnoreIndex, path, ": token id ", id, " at position ", t,
              " is negative (only -100, an unscored position, is allowed)");
    tokens(0, t) = static_cast<std::int32_t>(id);
  }
  return tokens;
}

inline void write_gradients(const DrtModel<float>& model, const std::string& path) {
  io::SafetensorsWriter out;
  for (const auto& p : model.named_parameters()) out.add(p.name, p.parameter->grad(), "F32");
  if (model.config().tie_word_embeddings) out.add(model.tied_head_name(), model.lm_head().grad(), "F32");
  out.set_metadata("format", "pt");
  out.write(path);
}

inline int run_eval(const Args& args, std::ostream& out) {
  if (args.has("threads")) {
    const long long threads = args.integer("threads");
    if (threads < 1) throw UsageError("flag --threads needs a positive integer, got " + args.text("threads"));
#ifdef _OPENMP
    omp_set_num_threads(static_cast<int>(threads));
#endif
  }
  const ModelConfig config = ModelConfig::load(args.text("config"), &std::cerr);
  DrtModel<float> model(config);
  load_weights(model, args.text("weights"));
  const IndexTensor tokens = read_token_file(args.text("tokens"), config);
  const bool want_grads = args.has("dump-grads");

  tape().reset();
  const auto start = std::chrono::steady_clock::now();
  float loss_value = 0;
  {
    // Without --dump-grads nothing is recorded: the tape keeps no closures or gradient memory.
    std::optional<NoGradGuard> no_grad;
    if (!want_grads) no_grad.emplace();
    const Var<float> logits = model.logits(tokens, ForwardOptions{.training = false});
    const Var<float> loss = cross_entropy(logits, shift_targets(tokens, config.enc_chunk_size));
    loss_value = loss.item();
    if (want_grads) backward(loss);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    char line[64];
    std::snprintf(line, sizeof line, "loss %.9g\n", static_cast<double>(loss_value));
    out << line << "tokens " << tokens.size(1) << "\n";
    std::snprintf(line, sizeof line, "seconds %.3f\n", seconds);
    out << line << std::flush;

    if (args.has("dump-logits")) {
      const Tensor<float> rows = drop_landmark_rows(logits.value(), config.enc_chunk_size);  // (1, T, V)
      io::write_npy(args.text("dump-logits"), rows.reshape({tokens.size(1), config.vocab_size}));
    }
  }
  if (want_grads) write_gradients(model, args.text("dump-grads"));
  tape().reset();
  return 0;
}

}  // namespace drt::cli
