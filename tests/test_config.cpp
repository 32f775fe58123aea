// Model configs: the reference's JSON files load with the documented values; the parameter count
// matches the reference's numbers (docs/reference-notes.md §1.5-1.6) and an independent sum over
// the state-dict key pattern (§1.4); bad files stop with a message naming the file and the key.
#include <drt/model/config.hpp>
#include <drt/model/parameter_count.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace drt;

namespace {

const std::filesystem::path kDataDir = std::filesystem::path(__FILE__).parent_path() / "data";
const std::string kConfig63 = (kDataDir / "config_63.json").string();
const std::string kConfigUnittest = (kDataDir / "config_unittest.json").string();

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_config_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Writes `text` to a temporary file, loads it, and returns the drt::Error message ("" if none).
std::string load_error(const std::string& name, const std::string& text, std::ostream* warnings = nullptr) {
  const std::string path = temp_path(name);
  std::ofstream(path) << text;
  std::string message;
  try {
    ModelConfig::load(path, warnings);
  } catch (const Error& e) {
    message = e.what();
  }
  std::filesystem::remove(path);
  return message;
}

// config_63 with one key changed (or removed when `value` is null-discarded).
std::string config63_with(const std::string& key, const nlohmann::json& value) {
  auto j = read_json(kConfig63);
  if (value.is_discarded()) j.erase(key);
  else j[key] = value;
  return j.dump(2);
}

// The state dict as the reference writes it (reference-notes §1.4): name -> shape, with the ALiBi
// buffers and, when tied, lm_head.weight as a second name for the embedding.
using Shape2 = std::vector<std::int64_t>;
std::map<std::string, Shape2> reference_state_dict(const ModelConfig& c) {
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, H = c.num_attention_heads;
  const std::int64_t kv = std::int64_t{c.num_key_value_heads} * (D / H);
  std::map<std::string, Shape2> sd;
  auto self_attention = [&](const std::string& p, std::int64_t kv_width, bool alibi) {
    if (alibi) sd[p + "self_attn.m"] = {H};
    sd[p + "self_attn.q_proj.weight"] = {D, D};
    sd[p + "self_attn.k_proj.weight"] = {kv_width, D};
    sd[p + "self_attn.v_proj.weight"] = {kv_width, D};
    sd[p + "self_attn.o_proj.weight"] = {D, D};
    sd[p + "mlp.gate_proj.weight"] = {F, D};
    sd[p + "mlp.up_proj.weight"] = {F, D};
    sd[p + "mlp.down_proj.weight"] = {D, F};
    sd[p + "input_layernorm.weight"] = {D};
    sd[p + "post_attention_layernorm.weight"] = {D};
  };
  sd["model.embed_tokens.weight"] = {V, D};
  for (int i = 0; i < c.decoder_layers[0]; ++i) self_attention("model.lower_layers." + std::to_string(i) + ".", kv, true);
  for (int g = 0; g + 1 < static_cast<int>(c.decoder_layers.size()); ++g) {
    for (int j = 0; j < c.decoder_layers[g + 1]; ++j) {
      const std::string p = "model.upper_layers." + std::to_string(g) + "." + std::to_string(j) + ".";
      self_attention(p, kv, true);
      sd[p + "gca.pre_norm.weight"] = {D};
      sd[p + "gca.q_proj.weight"] = {D, D};
      sd[p + "gca.o_proj.weight"] = {D, D};
    }
    sd["model.lmk_norms." + std::to_string(g) + ".weight"] = {D};
  }
  for (int e = 0; e < c.encoder_layers; ++e) self_attention("model.encoder.layers." + std::to_string(e) + ".", D, false);
  sd["model.encoder.norm.weight"] = {D};
  sd["model.chunk_k_proj.weight"] = {D, D};
  sd["model.chunk_v_proj.weight"] = {D, D};
  sd["model.enc_prenorm.weight"] = {D};
  sd["model.norm.weight"] = {D};
  sd["lm_head.weight"] = {V, D};
  return sd;
}

// Trainable values in that state dict: no buffers, and a tied lm_head counted once.
std::int64_t sum_state_dict(const std::map<std::string, Shape2>& sd, bool tied) {
  std::int64_t total = 0;
  for (const auto& [name, shape] : sd) {
    if (name.ends_with(".self_attn.m") || (tied && name == "lm_head.weight")) continue;
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    total += n;
  }
  return total;
}

}  // namespace

TEST(ModelConfig, Config63LoadsWithTheDocumentedValuesAndNoWarnings) {
  std::ostringstream warnings;
  const auto c = ModelConfig::load(kConfig63, &warnings);
  EXPECT_EQ(warnings.str(), "");  // every key of the reference file is read or knowingly ignored
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.num_key_value_heads, 12);
  EXPECT_EQ(c.intermediate_size, 2048);
  EXPECT_EQ(c.vocab_size, 50265);
  EXPECT_EQ(c.enc_chunk_size, 63);
  EXPECT_EQ(c.chunk_positions(), 64);
  EXPECT_FALSE(c.drops_landmark_row());
  EXPECT_EQ(c.chunk_topk, 8);
  EXPECT_EQ(c.slide_window, 512);
  EXPECT_EQ(c.encoder_layers, 2);
  EXPECT_EQ(c.decoder_layers, (std::vector<int>{6, 6}));
  EXPECT_EQ(c.lower_layers(), 6);
  EXPECT_EQ(c.groups(), 1);
  EXPECT_EQ(c.pad_id, 50257);
  EXPECT_EQ(c.chunk_id, 50264);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.02);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(ModelConfig, UnittestConfigHasGqaAndTwoGroups) {
  std::ostringstream warnings;
  const auto c = ModelConfig::load(kConfigUnittest, &warnings);
  EXPECT_EQ(warnings.str(), "");
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.encoder_layers, 1);
  EXPECT_EQ(c.decoder_layers, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(c.groups(), 2);
  EXPECT_EQ(c.pad_id, 0);
  EXPECT_EQ(c.chunk_id, 0);
}

TEST(ParameterCount, Config63MatchesTheReferenceTable) {
  const auto c = ModelConfig::load(kConfig63, nullptr);
  const auto n = count_parameters(c);
  EXPECT_EQ(n.embedding, 38'603'520);
  EXPECT_EQ(plain_layer_parameters(c, c.num_key_value_heads), 7'079'424);
  EXPECT_EQ(n.lower_layers, 42'476'544);
  EXPECT_EQ(upper_layer_parameters(c), 8'259'840);
  EXPECT_EQ(n.upper_layers, 49'559'040);
  EXPECT_EQ(n.encoder, 14'159'616);
  EXPECT_EQ(n.chunk_memory, 1'179'648);
  EXPECT_EQ(n.norms, 2'304);
  EXPECT_EQ(n.lm_head, 0);
  EXPECT_EQ(n.total(), 145'980'672);
  EXPECT_EQ(n.total() - n.embedding, 107'377'152);  // "107.4M without the embedding"
}

TEST(ParameterCount, UnittestConfig) {
  EXPECT_EQ(count_parameters(ModelConfig::load(kConfigUnittest, nullptr)).total(), 1'112'448);
}

TEST(ParameterCount, BaselineOfConfig63) {
  auto c = ModelConfig::load(kConfig63, nullptr);
  EXPECT_EQ(count_baseline_parameters(c), 123'557'376);
  c.tie_word_embeddings = false;
  EXPECT_EQ(count_baseline_parameters(c), 123'557'376 + 50265LL * 768);
}

// The reference's state dict has 164 entries for config_63 and 54 for the unit-test config.
TEST(ParameterCount, EqualsTheSumOverTheStateDictKeyPattern) {
  for (const auto& path : {kConfig63, kConfigUnittest}) {
    const auto c = ModelConfig::load(path, nullptr);
    const auto sd = reference_state_dict(c);
    EXPECT_EQ(sd.size(), path == kConfig63 ? 164u : 54u) << path;
    EXPECT_EQ(count_parameters(c).total(), sum_state_dict(sd, true)) << path;
  }
}

TEST(ParameterCount, EqualsTheStateDictSumOnVariedConfigs) {
  struct Case {
    int D, H, H_kv, F, V, enc;
    std::vector<int> layers;
    bool tied;
  };
  const Case cases[] = {{64, 4, 2, 96, 37, 3, {2, 1, 3}, false},
                        {96, 3, 1, 40, 500, 1, {1}, true},
                        {32, 2, 2, 8, 11, 2, {3, 2, 2, 2}, false},
                        {768, 12, 4, 2048, 50265, 2, {6, 3, 3}, true}};
  for (const auto& k : cases) {
    ModelConfig c;
    c.hidden_size = k.D;
    c.num_attention_heads = k.H;
    c.num_key_value_heads = k.H_kv;
    c.intermediate_size = k.F;
    c.vocab_size = k.V;
    c.encoder_layers = k.enc;
    c.decoder_layers = k.layers;
    c.tie_word_embeddings = k.tied;
    c.pad_id = c.chunk_id = 0;
    c.validate("case");
    const auto n = count_parameters(c);
    EXPECT_EQ(n.total(), sum_state_dict(reference_state_dict(c), k.tied)) << "D=" << k.D << " H_kv=" << k.H_kv;
    EXPECT_EQ(n.lm_head, k.tied ? 0 : std::int64_t{k.V} * k.D);
  }
}

TEST(ParameterCount, UntiedConfigCountsTheHeadSeparately) {
  const std::string path = temp_path("untied.json");
  std::ofstream(path) << config63_with("tie_word_embeddings", nlohmann::json::value_t::discarded);
  const auto n = count_parameters(ModelConfig::load(path, nullptr));  // the key's default is false
  std::filesystem::remove(path);
  EXPECT_EQ(n.lm_head, 38'603'520);
  EXPECT_EQ(n.total(), 145'980'672 + 38'603'520);
}

TEST(ModelConfig, EveryMissingRequiredKeyIsNamedWithTheFile) {
  for (const char* key : {"hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "enc_chunk_size",
                          "chunk_topk", "slide_window", "encoder_layers", "decoder_layers", "pad_id", "chunk_id"}) {
    const std::string path = temp_path("missing.json");
    std::ofstream(path) << config63_with(key, nlohmann::json::value_t::discarded);
    std::string message;
    try {
      ModelConfig::load(path, nullptr);
    } catch (const Error& e) {
      message = e.what();
    }
    std::filesystem::remove(path);
    EXPECT_NE(message.find(path), std::string::npos) << key << ": " << message;
    EXPECT_NE(message.find(std::string("'") + key + "'"), std::string::npos) << message;
    EXPECT_NE(message.find("missing"), std::string::npos) << message;
  }
}

TEST(ModelConfig, BadValuesNameTheFileAndTheKey) {
  struct Bad {
    const char* key;
    nlohmann::json value;
  };
  const Bad cases[] = {
      {"hidden_size", "768"},          // wrong type
      {"hidden_size", 768.5},          // not an integer
      {"hidden_size", 1LL << 40},      // does not fit an int
      {"enc_chunk_size", 62},          // S = 63 is neither 0 nor 1 mod 64
      {"num_attention_heads", 7},      // does not divide 768
      {"num_key_value_heads", 5},      // does not divide 12
      {"chunk_id", 50265},             // not below vocab_size
      {"pad_id", -1},                  // not a token id
      {"decoder_layers", {6, "6"}},    // a string among the layers
      {"decoder_layers", nlohmann::json::array()},
      {"decoder_layers", {6, 0}},      // an empty group
      {"rms_norm_eps", "1e-5"},
      {"tie_word_embeddings", 1},
      {"enable_alibi", false},
      {"attention_bias", true},
      {"hidden_act", "gelu"},
      {"pretraining_tp", 2},
      {"gpt2_mlp", true},
      {"gca_residual", "residual"},  // neither "reference" nor "standard"
      {"encoder_alibi", 1},
  };
  for (const auto& bad : cases) {
    const std::string path = temp_path("bad.json");
    std::ofstream(path) << config63_with(bad.key, bad.value);
    std::string message;
    try {
      ModelConfig::load(path, nullptr);
    } catch (const Error& e) {
      message = e.what();
    }
    std::filesystem::remove(path);
    EXPECT_NE(message.find(path), std::string::npos) << bad.key << " = " << bad.value.dump() << ": '" << message << "'";
    EXPECT_NE(message.find(std::string("'") + bad.key + "'"), std::string::npos)
        << bad.key << " = " << bad.value.dump() << ": '" << message << "'";
  }
}

TEST(ModelConfig, ValidChunkSizesAreAccepted) {
  for (int chunk : {63, 64, 127, 128}) {
    auto j = read_json(kConfig63);
    j["enc_chunk_size"] = chunk;
    const auto c = ModelConfig::from_json(j, "inline", nullptr);
    EXPECT_EQ(c.drops_landmark_row(), chunk % 64 == 0) << chunk;  // S % 64 == 1 drops the landmark row
  }
}

TEST(ModelConfig, InvalidJsonNamesTheFile) {
  const std::string path = temp_path("invalid.json");
  const std::string message = load_error("invalid.json", R"({"hidden_size": 768,,})");
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
  // Text after the object is an error too, not silently dropped.
  const std::string trailing = load_error("invalid.json", read_json(kConfig63).dump() + " {}");
  EXPECT_NE(trailing.find("not valid JSON"), std::string::npos) << trailing;
  // A JSON value that is not an object.
  const std::string array = load_error("invalid.json", "[1, 2]");
  EXPECT_NE(array.find(path), std::string::npos) << array;
}

TEST(ModelConfig, MissingFileNamesThePath) {
  const std::string path = temp_path("does_not_exist.json");
  std::string message;
  try {
    ModelConfig::load(path, nullptr);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("cannot open"), std::string::npos) << message;
}

TEST(ModelConfig, UnknownKeysAreWarningsThatNameTheKey) {
  const std::string path = temp_path("unknown.json");
  auto j = read_json(kConfig63);
  j["chunk_topkk"] = 4;
  j["my_note"] = "x";
  std::ofstream(path) << j.dump();
  std::ostringstream warnings;
  const auto c = ModelConfig::load(path, &warnings);
  std::filesystem::remove(path);
  EXPECT_EQ(c.chunk_topk, 8);  // the misspelt key changes nothing
  const std::string w = warnings.str();
  EXPECT_NE(w.find("'chunk_topkk'"), std::string::npos) << w;
  EXPECT_NE(w.find("'my_note'"), std::string::npos) << w;
  EXPECT_NE(w.find(path), std::string::npos) << w;
  EXPECT_EQ(std::count(w.begin(), w.end(), '\n'), 2) << w;  // one line per unknown key
}

TEST(ModelConfig, NumKeyValueHeadsDefaultsToTheHeadCount) {
  auto j = read_json(kConfigUnittest);
  j.erase("num_key_value_heads");
  const auto c = ModelConfig::from_json(j, "inline", nullptr);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(count_parameters(c).total(), 1'112'448 + 2 * 3 * 64 * 128);  // 3 decoder layers get full k/v
}

TEST(ModelConfig, OptInSwitchesDefaultToTheReferenceAndRoundTrip) {
  const auto plain = ModelConfig::load(kConfigUnittest, nullptr);
  EXPECT_FALSE(plain.gca_standard_residual);
  EXPECT_FALSE(plain.encoder_alibi);
  EXPECT_FALSE(plain.to_json().contains("gca_residual"));  // reference configs are written back unchanged
  EXPECT_FALSE(plain.to_json().contains("encoder_alibi"));
  auto j = read_json(kConfigUnittest);
  j["gca_residual"] = "reference";
  EXPECT_FALSE(ModelConfig::from_json(j, "inline", nullptr).gca_standard_residual);
  j["gca_residual"] = "standard";
  j["encoder_alibi"] = true;
  std::ostringstream warnings;
  const auto c = ModelConfig::from_json(j, "inline", &warnings);
  EXPECT_EQ(warnings.str(), "");
  EXPECT_TRUE(c.gca_standard_residual);
  EXPECT_TRUE(c.encoder_alibi);
  const auto back = ModelConfig::from_json(c.to_json(), "round trip", nullptr);
  EXPECT_TRUE(back.gca_standard_residual);
  EXPECT_TRUE(back.encoder_alibi);
  EXPECT_EQ(count_parameters(c).total(), count_parameters(plain).total());  // no new parameters
}

TEST(ModelConfig, ToJsonRoundTrips) {
  const auto c = ModelConfig::load(kConfigUnittest, nullptr);
  std::ostringstream warnings;
  const auto back = ModelConfig::from_json(c.to_json(), "round trip", &warnings);
  EXPECT_EQ(warnings.str(), "");
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(count_parameters(back).total(), count_parameters(c).total());
}
