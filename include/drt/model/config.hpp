// drt/model/config.hpp — the model configuration, read from the reference's JSON files.
//
// Key names are the reference's (config/DRT/config_63.json), so its files load unchanged.
// Keys that only select a reference implementation detail (flash attention, the Triton kernel,
// Hugging Face bookkeeping) are accepted and ignored: drt's semantics are always sliding-window
// attention with ALiBi. A key with a wrong type or an impossible value stops with an error that
// names the file and the key. Unknown keys are reported as warnings (HF configs carry many).
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "drt/core/error.hpp"

namespace drt {

struct ModelConfig {
  // Shapes
  int hidden_size = 768;           // D
  int num_attention_heads = 12;    // H (head width d = D / H)
  int num_key_value_heads = 12;    // H_kv of the decoder self-attention (GQA when < H)
  int intermediate_size = 2048;    // F, SwiGLU width
  int vocab_size = 50265;          // V
  // DRT structure
  int enc_chunk_size = 63;         // L_c real tokens per chunk; S = L_c + 1 with the landmark
  int chunk_topk = 8;              // k retrieved chunks
  int slide_window = 512;          // W: each query sees W earlier positions and itself
  int encoder_layers = 2;
  std::vector<int> decoder_layers = {6, 6};  // lower layers, then one entry per retrieval group
  int pad_id = 50257;              // ids < 0 are embedded as pad_id; its row gets no lookup gradient
  int chunk_id = 50264;            // the landmark token
  // Numerics
  double rms_norm_eps = 1e-6;      // decoder norms, GCA pre-norm, enc_prenorm, final norm
  double initializer_range = 0.02;
  bool tie_word_embeddings = false;  // the reference's (Hugging Face) default when the key is absent
  // Opt-in deviations from the reference, for training small models from scratch
  // (docs/training.md §7). Both default to the reference's behaviour, and to_json() writes them
  // only when they differ from it, so configs and checkpoints of the reference stay unchanged.
  bool gca_standard_residual = false;  // "gca_residual": "standard": out = c + mlp(norm₂ c), c = a + gca(a),
                                       // instead of the reference's a + mlp(norm₂ c) (spec §7)
  bool encoder_alibi = false;          // symmetric ALiBi in the chunk encoder, −m_h·|i − j|, on top of RoPE (spec §4)

  // Fixed by the reference code rather than the JSON (see docs/reference-notes.md §2.1):
  static constexpr double kLandmarkNormEps = 1e-5;  // lmk_norms use flash-attn's default
  static constexpr double kEncoderNormEps = 1e-6;   // the encoder's LlamaConfig default
  static constexpr double kEncoderRopeTheta = 10000.0;

  int head_dim() const { return hidden_size / num_attention_heads; }
  int chunk_positions() const { return enc_chunk_size + 1; }  // S
  int lower_layers() const { return decoder_layers.front(); }
  int groups() const { return static_cast<int>(decoder_layers.size()) - 1; }  // G retrieval groups
  // With S % 64 == 0 the landmark row of the chunk memory is zeroed (softmax-off-by-one);
  // with S % 64 == 1 it is dropped. Any other chunk size is rejected (as in the reference).
  bool drops_landmark_row() const { return chunk_positions() % 64 == 1; }

  // Throws drt::Error naming `source` and the offending key.
  void validate(const std::string& source) const {
    auto need = [&](bool ok, const char* key, const auto&... why) { DRT_CHECK(ok, source, ": key '", key, "' ", why...); };
    need(hidden_size > 0, "hidden_size", "must be positive, got ", hidden_size);
    need(num_attention_heads > 0 && hidden_size % num_attention_heads == 0, "num_attention_heads", "must divide hidden_size ",
         hidden_size, ", got ", num_attention_heads);
    need(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0, "num_key_value_heads",
         "must divide num_attention_heads ", num_attention_heads, ", got ", num_key_value_heads);
    need(head_dim() % 2 == 0, "num_attention_heads", "gives an odd head width ", head_dim(), " (RoPE needs it even)");
    need(intermediate_size > 0, "intermediate_size", "must be positive, got ", intermediate_size);
    need(vocab_size > 0, "vocab_size", "must be positive, got ", vocab_size);
    need(enc_chunk_size > 0 && (chunk_positions() % 64 == 0 || chunk_positions() % 64 == 1), "enc_chunk_size",
         "must make enc_chunk_size + 1 a multiple of 64 or one more than one (63, 64, 127, 128, ...), got ", enc_chunk_size);
    need(chunk_topk > 0, "chunk_topk", "must be positive, got ", chunk_topk);
    need(slide_window >= 0, "slide_window", "must not be negative, got ", slide_window);
    need(encoder_layers > 0, "encoder_layers", "must be positive, got ", encoder_layers);
    need(!decoder_layers.empty(), "decoder_layers", "must list at least the lower layers");
    for (int n : decoder_layers) need(n > 0, "decoder_layers", "entries must be positive, got ", n);
    need(pad_id >= 0 && pad_id < vocab_size, "pad_id", "must be a token id below vocab_size ", vocab_size, ", got ", pad_id);
    need(chunk_id >= 0 && chunk_id < vocab_size, "chunk_id", "must be a token id below vocab_size ", vocab_size, ", got ",
         chunk_id);
    need(rms_norm_eps > 0, "rms_norm_eps", "must be positive, got ", rms_norm_eps);
    need(initializer_range > 0, "initializer_range", "must be positive, got ", initializer_range);
  }

  static ModelConfig from_json(const nlohmann::json& j, const std::string& source, std::ostream* warnings = &std::cerr) {
    DRT_CHECK(j.is_object(), source, ": a model config must be a JSON object");
    ModelConfig c;
    std::set<std::string> seen;
    auto integer = [&](const char* key, int& into) {
      if (!j.contains(key)) return;
      seen.insert(key);
      const auto& v = j[key];
      DRT_CHECK(v.is_number_integer(), source, ": key '", key, "' must be an integer, got ", v.dump());
      // get<int>() would wrap a value outside int silently.
      const bool fits = v.is_number_unsigned() ? v.get<std::uint64_t>() <= std::uint64_t{INT_MAX}
                                               : v.get<std::int64_t>() >= INT_MIN && v.get<std::int64_t>() <= INT_MAX;
      DRT_CHECK(fits, source, ": key '", key, "' is out of range, got ", v.dump());
      into = v.get<int>();
    };
    auto number = [&](const char* key, double& into) {
      if (!j.contains(key)) return;
      seen.insert(key);
      DRT_CHECK(j[key].is_number(), source, ": key '", key, "' must be a number, got ", j[key].dump());
      into = j[key].get<double>();
    };
    auto boolean = [&](const char* key, bool& into) {
      if (!j.contains(key)) return;
      seen.insert(key);
      DRT_CHECK(j[key].is_boolean(), source, ": key '", key, "' must be true or false, got ", j[key].dump());
      into = j[key].get<bool>();
    };
    auto required = [&](const char* key) {
      DRT_CHECK(j.contains(key), source, ": required key '", key, "' is missing");
    };
    for (const char* key : {"hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "enc_chunk_size",
                            "chunk_topk", "slide_window", "encoder_layers", "decoder_layers", "pad_id", "chunk_id"})
      required(key);
    integer("hidden_size", c.hidden_size);
    integer("num_attention_heads", c.num_attention_heads);
    c.num_key_value_heads = c.num_attention_heads;
    integer("num_key_value_heads", c.num_key_value_heads);
    integer("intermediate_size", c.intermediate_size);
    integer("vocab_size", c.vocab_size);
    integer("enc_chunk_size", c.enc_chunk_size);
    integer("chunk_topk", c.chunk_topk);
    integer("slide_window", c.slide_window);
    integer("encoder_layers", c.encoder_layers);
    integer("pad_id", c.pad_id);
    integer("chunk_id", c.chunk_id);
    number("rms_norm_eps", c.rms_norm_eps);
    number("initializer_range", c.initializer_range);
    boolean("tie_word_embeddings", c.tie_word_embeddings);
    boolean("encoder_alibi", c.encoder_alibi);
    if (j.contains("gca_residual")) {
      seen.insert("gca_residual");
      const auto& v = j["gca_residual"];
      DRT_CHECK(v == "reference" || v == "standard", source,
                ": key 'gca_residual' must be \"reference\" (spec §7: the GCA output reaches the stream only through the MLP "
                "input) or \"standard\" (it is added to the stream), got ", v.dump());
      c.gca_standard_residual = v == "standard";
    }
    seen.insert("decoder_layers");
    const auto& layers = j["decoder_layers"];
    DRT_CHECK(layers.is_array() && !layers.empty(), source, ": key 'decoder_layers' must be a non-empty list of integers, got ",
              layers.dump());
    c.decoder_layers.clear();
    for (const auto& n : layers) {
      DRT_CHECK(n.is_number_integer() && n.get<std::int64_t>() >= INT_MIN && n.get<std::int64_t>() <= INT_MAX, source,
                ": key 'decoder_layers' must hold integers, got ", n.dump());
      c.decoder_layers.push_back(n.get<int>());
    }
    // Keys whose reference meaning drt fixes or does not need.
    if (j.contains("enable_alibi")) {
      seen.insert("enable_alibi");
      DRT_CHECK(j["enable_alibi"] == true, source, ": key 'enable_alibi' must be true: drt's decoder always uses ALiBi");
    }
    if (j.contains("attention_bias")) {
      seen.insert("attention_bias");
      DRT_CHECK(j["attention_bias"] == false, source, ": key 'attention_bias' must be false: drt's projections have no bias");
    }
    if (j.contains("hidden_act")) {
      seen.insert("hidden_act");
      DRT_CHECK(j["hidden_act"] == "silu" || j["hidden_act"] == "swish", source,
                ": key 'hidden_act' must be \"silu\" (SwiGLU), got ", j["hidden_act"].dump());
    }
    // Accepted only with the value drt implements: the reference asserts tp == 1 for the MLP, and
    // gpt2_mlp (checked by presence) swaps in a different MLP with other weights.
    if (j.contains("pretraining_tp")) {
      seen.insert("pretraining_tp");
      DRT_CHECK(j["pretraining_tp"] == 1, source, ": key 'pretraining_tp' must be 1, got ", j["pretraining_tp"].dump());
    }
    DRT_CHECK(!j.contains("gpt2_mlp"), source, ": key 'gpt2_mlp' is not supported: drt's MLP is always SwiGLU");
    for (const char* key : ignored_keys()) seen.insert(key);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!seen.count(it.key()) && warnings) *warnings << source << ": warning: unknown key '" << it.key() << "' ignored\n";
    c.validate(source);
    return c;
  }

  static ModelConfig load(const std::string& path, std::ostream* warnings = &std::cerr) {
    std::ifstream in(path);
    DRT_CHECK(in.good(), path, ": cannot open the model config");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);  // strict: text after the JSON value is an error (operator>> accepts it)
    } catch (const nlohmann::json::exception& e) {
      DRT_CHECK(false, path, ": not valid JSON (", e.what(), ")");
    }
    return from_json(j, path, warnings);
  }

  // Accepted and ignored: reference-only switches and Hugging Face bookkeeping.
  static const std::vector<const char*>& ignored_keys() {
    static const std::vector<const char*> keys = {
        "_flash_attn_2_enabled", "_triton_gca", "architectures", "model_type", "torch_dtype", "transformers_version",
        "enable_softmax_one", "chunk_causal_window", "chunk_window", "hcca_per_nlayers", "enable_causal_chunk_attn",
        "hidden_dropout_prob", "mask_probability", "activation_function", "bos_id", "mask_id", "num_hidden_layers",
        "dec_chunk_size", "use_cache", "output_hidden_states", "output_attentions", "rope_theta",
        "rope_scaling", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "gradient_checkpointing"};
    return keys;
  }

  nlohmann::json to_json() const {
    nlohmann::json j = {{"hidden_size", hidden_size},       {"num_attention_heads", num_attention_heads},
            {"num_key_value_heads", num_key_value_heads}, {"intermediate_size", intermediate_size},
            {"vocab_size", vocab_size},         {"enc_chunk_size", enc_chunk_size},
            {"chunk_topk", chunk_topk},         {"slide_window", slide_window},
            {"encoder_layers", encoder_layers}, {"decoder_layers", decoder_layers},
            {"pad_id", pad_id},                 {"chunk_id", chunk_id},
            {"rms_norm_eps", rms_norm_eps},     {"initializer_range", initializer_range},
            {"tie_word_embeddings", tie_word_embeddings}, {"enable_alibi", true}, {"hidden_act", "silu"}};
    if (gca_standard_residual) j["gca_residual"] = "standard";
    if (encoder_alibi) j["encoder_alibi"] = true;
    return j;
  }
};

}  // namespace drt
