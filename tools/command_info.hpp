// tools/command_info.hpp — `drt info --config C.json`: what a model config describes, and how many
// parameters it gives, part by part (drt/model/parameter_count.hpp).
//
// Output for scripts: the line `parameters 145,980,672` and the line `total 145980672` (no separators).
// Config warnings (unknown keys) go to stderr.
#pragma once

#include <iomanip>
#include <iostream>
#include <ostream>
#include <sstream>
#include <string>

#include "args.hpp"
#include "drt/model/config.hpp"
#include "drt/model/parameter_count.hpp"
#include "format.hpp"

namespace drt::cli {

inline const CommandSpec& info_spec() {
  static const CommandSpec spec{
      "info",
      "Print a model config's shapes and its parameter count per part.",
      {{"config", "FILE", "model config JSON (reference key names, e.g. config_63.json)", true}}};
  return spec;
}

inline std::string decoder_layers_text(const ModelConfig& c) {
  std::string text = "[";
  for (std::size_t i = 0; i < c.decoder_layers.size(); ++i) text += (i ? ", " : "") + std::to_string(c.decoder_layers[i]);
  return text + "]";
}

inline int run_info(const Args& args, std::ostream& out) {
  const std::string path = args.text("config");
  const ModelConfig c = ModelConfig::load(path, &std::cerr);
  const ParameterCount n = count_parameters(c);
  const std::int64_t upper = upper_layer_count(c);

  auto row = [&](const char* symbol, const char* key, const std::string& value, const std::string& note = "") {
    out << "  " << std::left << std::setw(5) << symbol << std::setw(21) << key;
    if (note.empty()) out << value << "\n";
    else out << std::setw(8) << value << "  " << note << "\n";
  };
  out << "config " << path << "\n";
  row("D", "hidden_size", std::to_string(c.hidden_size));
  row("H", "num_attention_heads", std::to_string(c.num_attention_heads), "d = D / H = " + std::to_string(c.head_dim()));
  row("H_kv", "num_key_value_heads", std::to_string(c.num_key_value_heads),
      c.num_key_value_heads == c.num_attention_heads ? "decoder self-attention" : "decoder self-attention, GQA");
  row("F", "intermediate_size", std::to_string(c.intermediate_size), "SwiGLU");
  row("V", "vocab_size", std::to_string(c.vocab_size));
  row("L_c", "enc_chunk_size", std::to_string(c.enc_chunk_size),
      std::to_string(c.chunk_positions()) + " positions with the landmark");
  row("k", "chunk_topk", std::to_string(c.chunk_topk));
  row("W", "slide_window", std::to_string(c.slide_window));
  row("", "encoder_layers", std::to_string(c.encoder_layers));
  row("", "decoder_layers", decoder_layers_text(c),
      std::to_string(c.lower_layers()) + " lower, " + std::to_string(upper) + " upper");
  row("G", "groups", std::to_string(c.groups()), "retrieval groups");
  row("", "tie_word_embeddings", c.tie_word_embeddings ? "true" : "false");

  auto part = [&](const char* name, std::int64_t count, const std::string& note) {
    out << "  " << std::left << std::setw(14) << name << std::right << std::setw(15) << with_thousands(count) << "  " << note
        << "\n";
  };
  out << "\nparameters by part\n";
  part("embedding", n.embedding, c.tie_word_embeddings ? "V x D, shared with lm_head" : "V x D");
  part("lower_layers", n.lower_layers,
       std::to_string(c.lower_layers()) + " x " + with_thousands(plain_layer_parameters(c, c.num_key_value_heads)));
  part("upper_layers", n.upper_layers,
       std::to_string(upper) + " x " + with_thousands(upper_layer_parameters(c)) + ", self-attention + GCA + MLP");
  part("encoder", n.encoder,
       std::to_string(c.encoder_layers) + " x " + with_thousands(plain_layer_parameters(c, c.num_attention_heads)) +
           " + final norm");
  part("chunk_memory", n.chunk_memory, "chunk_k_proj, chunk_v_proj");
  part("norms", n.norms, "enc_prenorm, norm, lmk_norms x " + std::to_string(c.groups()));
  part("lm_head", n.lm_head, c.tie_word_embeddings ? "tied" : "V x D");
  out << "parameters " << with_thousands(n.total()) << "\n";
  out << "without_embedding " << with_thousands(n.total() - n.embedding - n.lm_head) << "\n";
  out << "baseline " << with_thousands(count_baseline_parameters(c)) << "  (sliding-window LM, "
      << std::to_string(c.lower_layers() + upper) << " layers)\n";
  out << "total " << n.total() << "\n";
  return 0;
}

}  // namespace drt::cli
