// Tests of the byte-level and the GPT-2 tokenizers.
//
// The GPT-2 expectations come from outside this project: the 64 r50k_base vectors of
// gpt-tokenizer's TestPlans.txt, a few ids produced by gpt-tokenizer 4.0.0 under node (quoted
// below), and a naive re-implementation of the reference BPE loop that this file builds from the
// raw vocabulary files. The data lives in DRT_GPT2_DIR (data/gpt2, from scripts/fetch-data.sh).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "drt/data/gpt2_tokenizer.hpp"
#include "drt/data/tokenizer.hpp"

namespace {

using drt::data::ByteTokenizer;
using drt::data::Gpt2Tokenizer;
using Ids = std::vector<int32_t>;

const std::string kGpt2Dir = DRT_GPT2_DIR;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_all(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += char(c);
  } else if (c < 0x800) {
    s += char(0xC0 | (c >> 6));
    s += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += char(0xE0 | (c >> 12));
    s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  } else {
    s += char(0xF0 | (c >> 18));
    s += char(0x80 | ((c >> 12) & 0x3F));
    s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  }
  return s;
}

// Random text from a mix of scripts, digits, punctuation, emoji, combining marks and (Unicode)
// whitespace, with English-looking words and contractions mixed in.
std::string random_unicode_text(std::mt19937& rng, int length) {
  static const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {'a', 'z'},        {'A', 'Z'},       {'0', '9'},       {'!', '/'},       {0xA1, 0xFF},    {0x100, 0x17F},
      {0x391, 0x3C9},    {0x410, 0x44F},   {0x5D0, 0x5EA},   {0x620, 0x64A},   {0x660, 0x669},  {0x300, 0x36F},
      {0x4E00, 0x4FFF},  {0x3040, 0x309F}, {0xAC00, 0xAD00}, {0x1F300, 0x1F64F}, {0x2000, 0x200A}, {0x2200, 0x22FF}};
  static const std::vector<std::string> pieces = {" ", " ", "  ", "\n", "\n\n", "\t", " the", "'s", "'t", "'re", "'ve",
                                                  "'m", "'ll", "'d", "'S", "\u00a0", "\u3000", " 2024", "...", "\r\n"};
  std::string text;
  for (int i = 0; i < length; ++i) {
    if (rng() % 4 == 0) {
      text += pieces[rng() % pieces.size()];
    } else {
      const auto& [lo, hi] = ranges[rng() % ranges.size()];
      text += utf8(lo + char32_t(rng() % (hi - lo + 1)));
    }
  }
  return text;
}

std::string random_bytes(std::mt19937& rng, int length) {
  std::string s;
  for (int i = 0; i < length; ++i) s += char(rng() % 256);
  return s;
}

// ---- byte-level tokenizer ------------------------------------------------------------------------

TEST(ByteTokenizer, EveryByteIsItsOwnIdAndRoundTrips) {
  const ByteTokenizer tokenizer;
  EXPECT_EQ(tokenizer.vocab_size(), 256);
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const Ids ids = tokenizer.encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[std::size_t(b)], b);
  EXPECT_EQ(tokenizer.decode(ids), all);
  EXPECT_TRUE(tokenizer.encode("").empty());
  EXPECT_EQ(tokenizer.decode({}), "");
}

TEST(ByteTokenizer, InvalidUtf8AndRandomBytesRoundTrip) {
  const ByteTokenizer tokenizer;
  for (const std::string& text : {std::string("\xff\xfe"), std::string("ab\x80" "cd"), std::string("\xe2\x82"),
                                 std::string("\xc3\x28"), std::string("\0\0x", 3)}) {
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
    EXPECT_EQ(tokenizer.encode(text).size(), text.size());
  }
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const std::string text = random_bytes(rng, int(rng() % 300));
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

TEST(ByteTokenizer, SpecialTokens) {
  const ByteTokenizer tokenizer({"<|endoftext|>", "<|chunk|>", "<|chunk|>x"});
  EXPECT_EQ(tokenizer.vocab_size(), 259);
  EXPECT_EQ(tokenizer.num_special(), 3);
  EXPECT_EQ(tokenizer.special_id("<|chunk|>"), 257);
  EXPECT_THROW(tokenizer.special_id("<|nope|>"), drt::Error);
  EXPECT_EQ(tokenizer.encode("a<|chunk|>b", true), (Ids{'a', 257, 'b'}));
  EXPECT_EQ(tokenizer.encode("<|chunk|>x<|endoftext|>", true), (Ids{258, 256}));  // the longer name wins
  EXPECT_EQ(tokenizer.encode("a<|chunk|>b").size(), 11u);  // without allow_special: plain bytes
  EXPECT_EQ(tokenizer.decode({'h', 'i', 256, 257}), "hi<|endoftext|><|chunk|>");
  EXPECT_THROW(tokenizer.decode({259}), drt::Error);
  EXPECT_THROW(tokenizer.decode({-1}), drt::Error);
  EXPECT_THROW(ByteTokenizer({"a", "a"}), drt::Error);
  EXPECT_THROW(ByteTokenizer({""}), drt::Error);
}

// ---- GPT-2 -----------------------------------------------------------------------------------------

bool gpt2_data_present() {
  for (const char* file : {"encoder.json", "vocab.bpe", "TestPlans.txt"})
    if (!std::filesystem::exists(kGpt2Dir + "/" + file)) return false;
  return true;
}

class Gpt2 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpt2_data_present())
      FAIL() << "GPT-2 data missing in " << kGpt2Dir << ": run scripts/fetch-data.sh (it downloads encoder.json, "
             << "vocab.bpe and TestPlans.txt)";
    static const Gpt2Tokenizer loaded = Gpt2Tokenizer::load(kGpt2Dir);
    tokenizer = &loaded;
  }
  const Gpt2Tokenizer* tokenizer = nullptr;
};

TEST_F(Gpt2, DataFilesArePresent) {
  // SetUp fails with instructions when they are not; this names the check in the test list.
  EXPECT_TRUE(gpt2_data_present());
}

struct GoldenCase {
  std::string text;
  Ids ids;
};

// TestPlans.txt: blocks of "EncodingName: <name>", "Sample: <text>", "Encoded: [<ids>]" lines.
std::vector<GoldenCase> read_golden_cases(const std::string& path, const std::string& encoding) {
  std::ifstream in(path, std::ios::binary);
  std::vector<GoldenCase> cases;
  std::string line, name, sample;
  bool have_sample = false;
  while (std::getline(in, line)) {
    if (line.rfind("EncodingName: ", 0) == 0) {
      name = line.substr(14);
      have_sample = false;
    } else if (line.rfind("Sample: ", 0) == 0) {
      sample = line.substr(8);
      have_sample = true;
    } else if (line.rfind("Encoded: ", 0) == 0) {
      EXPECT_TRUE(have_sample) << "Encoded line without a Sample line: " << line;
      if (name != encoding) continue;
      std::string list = line.substr(9);
      EXPECT_TRUE(list.size() >= 2 && list.front() == '[' && list.back() == ']') << line;
      std::replace(list.begin(), list.end(), ',', ' ');
      std::istringstream numbers(list.substr(1, list.size() - 2));
      Ids ids;
      for (int32_t id; numbers >> id;) ids.push_back(id);
      cases.push_back({sample, ids});
    }
  }
  return cases;
}

TEST_F(Gpt2, AllR50kGoldenVectorsOfTestPlans) {
  const auto cases = read_golden_cases(kGpt2Dir + "/TestPlans.txt", "r50k_base");
  ASSERT_EQ(cases.size(), 64u);
  for (const auto& c : cases) {
    EXPECT_EQ(tokenizer->encode(c.text), c.ids) << "text: " << c.text;
    EXPECT_EQ(tokenizer->decode(c.ids), c.text);
  }
}

TEST_F(Gpt2, HandCheckedAndExternallyComputedCases) {
  EXPECT_EQ(tokenizer->vocab_size(), 50257);
  EXPECT_EQ(Gpt2Tokenizer::model_vocab_size(), 50265);
  EXPECT_EQ(tokenizer->encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(tokenizer->encode(" the"), (Ids{262}));
  EXPECT_TRUE(tokenizer->encode("").empty());
  EXPECT_EQ(tokenizer->decode({15496, 995}), "Hello world");
  EXPECT_EQ(tokenizer->token_bytes(220), " ");
  EXPECT_EQ(tokenizer->token_bytes(198), "\n");
  // Produced with gpt-tokenizer 4.0.0 (r50k_base) under node 20, not by this implementation.
  const std::vector<GoldenCase> cases = {
      {"I'm  here\n\n", {40, 1101, 220, 994, 628}},
      {"a\n\n\nb", {64, 628, 198, 65}},
      {"   leading", {220, 220, 3756}},
      {"trailing   ", {9535, 4386, 220, 220, 220}},
      {"It'S THEY'LL we'd you're", {1026, 6, 50, 33302, 6, 3069, 356, 1549, 345, 821}},
      {"x  \t\n y", {87, 220, 220, 197, 198, 331}},
      {"don't", {9099, 470}},
      {"\u00a0nbsp\u3000ideo", {1849, 77, 24145, 5099, 222, 1651}},
      {"a\u00a0\u00a0b", {64, 1849, 1849, 65}},  // \s is Unicode: no-break spaces are whitespace
      {"end.\u3000\u3000\u3000Next", {437, 13, 5099, 222, 5099, 222, 5099, 222, 10019}},
      {"x\u2003\u2003 y", {87, 447, 225, 447, 225, 331}},
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},
      {std::string(44, 'a'), Ids(11, 24794)},
  };
  for (const auto& c : cases) EXPECT_EQ(tokenizer->encode(c.text), c.ids) << "text: " << c.text;
}

TEST_F(Gpt2, PreTokenizerSplitsLikeGpt2) {
  using Words = std::vector<std::string_view>;
  EXPECT_EQ(tokenizer->pre_tokenize("I'm  here\n\n"), (Words{"I", "'m", " ", " here", "\n\n"}));
  EXPECT_EQ(tokenizer->pre_tokenize("It'S 42x!?"), (Words{"It", "'", "S", " 42", "x", "!?"}));
  EXPECT_EQ(tokenizer->pre_tokenize("caf\u00e9 \u0663\u0664"), (Words{"caf\u00e9", " \u0663\u0664"}));
  EXPECT_EQ(tokenizer->pre_tokenize("a \xff" "b"), (Words{"a", " ", "\xff", "b"}));
  EXPECT_TRUE(tokenizer->pre_tokenize("").empty());
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string text = trial % 2 ? random_unicode_text(rng, 60) : random_bytes(rng, 60);
    std::string joined;
    for (const auto word : tokenizer->pre_tokenize(text)) {
      EXPECT_FALSE(word.empty());
      joined += word;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST_F(Gpt2, SpecialTokens) {
  EXPECT_EQ(Gpt2Tokenizer::kEndOfText, 50256);
  EXPECT_EQ(Gpt2Tokenizer::kPad, 50257);
  EXPECT_EQ(Gpt2Tokenizer::kMask, 50263);
  EXPECT_EQ(Gpt2Tokenizer::kChunk, 50264);
  EXPECT_EQ(tokenizer->encode("a<|endoftext|>b", true), (Ids{64, 50256, 65}));
  EXPECT_EQ(tokenizer->encode("a<|endoftext|>b"), (Ids{64, 27, 91, 437, 1659, 5239, 91, 29, 65}));
  EXPECT_EQ(tokenizer->encode("<|endoftext|><|endoftext|>", true), (Ids{50256, 50256}));
  EXPECT_EQ(tokenizer->encode(" Hello<|chunk|><|pad|> world<|mask|>", true),
            (Ids{18435, Gpt2Tokenizer::kChunk, Gpt2Tokenizer::kPad, 995, Gpt2Tokenizer::kMask}));
  EXPECT_EQ(tokenizer->decode({50256}), "<|endoftext|>");
  EXPECT_EQ(tokenizer->decode({Gpt2Tokenizer::kPad, Gpt2Tokenizer::kChunk, Gpt2Tokenizer::kMask}),
            "<|pad|><|chunk|><|mask|>");
  EXPECT_EQ(tokenizer->decode({50260}), "<|reserved_50260|>");
  EXPECT_EQ(Gpt2Tokenizer::special_name(Gpt2Tokenizer::kChunk), "<|chunk|>");
  EXPECT_THROW(Gpt2Tokenizer::special_name(100), drt::Error);
  EXPECT_THROW(tokenizer->decode({50265}), drt::Error);
  EXPECT_THROW(tokenizer->decode({15496, -1}), drt::Error);
  for (int32_t id = Gpt2Tokenizer::kEndOfText; id < Gpt2Tokenizer::kModelVocabSize; ++id)
    EXPECT_EQ(tokenizer->encode(tokenizer->decode({id}), true), (Ids{id}));
}

TEST_F(Gpt2, RandomUnicodeAndRandomBytesRoundTrip) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = trial % 3 == 2 ? random_bytes(rng, int(rng() % 200)) : random_unicode_text(rng, int(rng() % 200));
    const Ids ids = tokenizer->encode(text);
    for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < Gpt2Tokenizer::kEndOfText) << id;
    EXPECT_EQ(tokenizer->decode(ids), text);
  }
  for (const std::string& text : {std::string("\xff"), std::string("abc\x80" "def"), std::string("\xe2\x82"),
                                 std::string("x \xf0\x9f\x98"), std::string("\0a\0", 3)})
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
}

// The reference BPE loop (OpenAI's encoder.py), written naively on strings: find the pair with
// the lowest rank, merge all its occurrences left to right, repeat.
class NaiveBpe {
 public:
  explicit NaiveBpe(const std::string& dir) {
    // GPT-2's byte -> character table: the printable Latin-1 bytes keep their code; the rest get
    // 256, 257, ... in byte order.
    std::vector<int> kept;
    for (int b = '!'; b <= '~'; ++b) kept.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) kept.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) kept.push_back(b);
    int spare = 0;
    for (int b = 0; b < 256; ++b) {
      const bool is_kept = std::find(kept.begin(), kept.end(), b) != kept.end();
      char_of_byte_[std::size_t(b)] = utf8(char32_t(is_kept ? b : 256 + spare++));
    }
    const auto encoder = nlohmann::json::parse(read_all(dir + "/encoder.json"));
    for (const auto& [token, id] : encoder.items()) id_of_spelling_[token] = id.get<int32_t>();
    std::istringstream merges(read_all(dir + "/vocab.bpe"));
    std::string line;
    std::getline(merges, line);  // #version
    int rank = 0;
    while (std::getline(merges, line))
      if (!line.empty()) rank_[{line.substr(0, line.find(' ')), line.substr(line.find(' ') + 1)}] = rank++;
  }

  Ids encode_word(std::string_view word) const {
    std::vector<std::string> symbols;
    for (const char c : word) symbols.push_back(char_of_byte_[static_cast<unsigned char>(c)]);
    while (symbols.size() > 1) {
      int best = INT32_MAX;
      std::pair<std::string, std::string> best_pair;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto found = rank_.find({symbols[i], symbols[i + 1]});
        if (found != rank_.end() && found->second < best) {
          best = found->second;
          best_pair = found->first;
        }
      }
      if (best == INT32_MAX) break;
      std::vector<std::string> merged;
      for (std::size_t i = 0; i < symbols.size();) {
        if (i + 1 < symbols.size() && symbols[i] == best_pair.first && symbols[i + 1] == best_pair.second) {
          merged.push_back(symbols[i] + symbols[i + 1]);
          i += 2;
        } else {
          merged.push_back(symbols[i]);
          i += 1;
        }
      }
      symbols = std::move(merged);
    }
    Ids ids;
    for (const auto& s : symbols) ids.push_back(id_of_spelling_.at(s));
    return ids;
  }

 private:
  std::array<std::string, 256> char_of_byte_;
  std::map<std::string, int32_t> id_of_spelling_;
  std::map<std::pair<std::string, std::string>, int> rank_;
};

TEST_F(Gpt2, MergesAgreeWithNaiveReferenceLoop) {
  const NaiveBpe naive(kGpt2Dir);
  std::mt19937 rng(5);
  std::vector<std::string> texts = {std::string(1000, 'a'), std::string(300, ' ') + "x", "ababababababab",
                                    "Supercalifragilisticexpialidocious antidisestablishmentarianism"};
  const std::string small_alphabet = "aabbeenst ";
  for (int trial = 0; trial < 100; ++trial) {
    std::string text;
    for (int i = 0; i < 150; ++i) text += small_alphabet[rng() % small_alphabet.size()];
    texts.push_back(text);
  }
  for (int trial = 0; trial < 100; ++trial) texts.push_back(random_unicode_text(rng, 100));
  for (int trial = 0; trial < 30; ++trial) texts.push_back(random_bytes(rng, 100));
  for (const auto& text : texts) {
    Ids expected;
    for (const auto word : tokenizer->pre_tokenize(text)) {
      const Ids ids = naive.encode_word(word);
      expected.insert(expected.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(tokenizer->encode(text), expected) << "text: " << text;
  }
}

TEST_F(Gpt2, WordCacheStaysBounded) {
  std::mt19937 rng(9);
  for (std::size_t i = 0; i < Gpt2Tokenizer::kCacheCapacity + 5000; ++i) {
    std::string word = " w";
    for (int k = 0; k < 6; ++k) word += char('a' + rng() % 26);
    tokenizer->encode(word);
    ASSERT_LE(tokenizer->cache_size(), Gpt2Tokenizer::kCacheCapacity);
  }
  // A word found in the cache encodes the same as a fresh one.
  EXPECT_EQ(tokenizer->encode("Hello world Hello world"), (Ids{15496, 995, 18435, 995}));
}

TEST_F(Gpt2, ConcurrentEncodesAgreeWithSerialOnes) {
  std::mt19937 rng(13);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back(random_unicode_text(rng, 400));
  std::vector<Ids> serial;
  for (const auto& text : texts) serial.push_back(tokenizer->encode(text));
  std::vector<std::vector<Ids>> parallel(4, std::vector<Ids>(texts.size()));
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < parallel.size(); ++t)
    threads.emplace_back([&, t] {
      for (std::size_t i = 0; i < texts.size(); ++i) parallel[t][(i + t * 7) % texts.size()] =
          tokenizer->encode(texts[(i + t * 7) % texts.size()]);
    });
  for (auto& thread : threads) thread.join();
  for (const auto& results : parallel) EXPECT_EQ(results, serial);
}

// ---- load errors name the file ---------------------------------------------------------------------

class Gpt2LoadErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpt2_data_present()) FAIL() << "GPT-2 data missing in " << kGpt2Dir << ": run scripts/fetch-data.sh";
    dir = std::filesystem::temp_directory_path() /
          ("drt_tokenizer_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir);
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  std::string message_of_load() const {
    try {
      Gpt2Tokenizer::load(dir.string());
    } catch (const drt::Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::filesystem::path dir;
};

TEST_F(Gpt2LoadErrors, MissingFileSaysWhatToRun) {
  const std::string message = message_of_load();
  EXPECT_NE(message.find("encoder.json"), std::string::npos) << message;
  EXPECT_NE(message.find("fetch-data.sh"), std::string::npos) << message;
  std::filesystem::copy_file(kGpt2Dir + "/encoder.json", dir / "encoder.json");
  const std::string second = message_of_load();
  EXPECT_NE(second.find("vocab.bpe"), std::string::npos) << second;
}

TEST_F(Gpt2LoadErrors, BadJsonNamesTheFile) {
  write_all((dir / "encoder.json").string(), "{\"a\": 1,");
  std::filesystem::copy_file(kGpt2Dir + "/vocab.bpe", dir / "vocab.bpe");
  const std::string message = message_of_load();
  EXPECT_NE(message.find((dir / "encoder.json").string()), std::string::npos) << message;
  write_all((dir / "encoder.json").string(), "[1, 2]");
  EXPECT_NE(message_of_load().find("encoder.json"), std::string::npos);
}

TEST_F(Gpt2LoadErrors, MalformedMergeLineNamesFileAndLine) {
  std::filesystem::copy_file(kGpt2Dir + "/encoder.json", dir / "encoder.json");
  write_all((dir / "vocab.bpe").string(), "#version: 0.2\n\xc4\xa0 t\nnospace\n");
  std::string message = message_of_load();
  EXPECT_NE(message.find("vocab.bpe line 3"), std::string::npos) << message;
  write_all((dir / "vocab.bpe").string(), "#version: 0.2\n\xc4\xa0 t\nqqqqqqqqqqqqqqqq zzzzzzzzzzzzz\n");
  message = message_of_load();
  EXPECT_NE(message.find("vocab.bpe line 3"), std::string::npos) << message;
  EXPECT_NE(message.find("not in encoder.json"), std::string::npos) << message;
  // "Ġt h" would use the symbol "Ġt" before the merge that creates it.
  write_all((dir / "vocab.bpe").string(), "#version: 0.2\n\xc4\xa0t h\n\xc4\xa0 t\n");
  message = message_of_load();
  EXPECT_NE(message.find("vocab.bpe line 2"), std::string::npos) << message;
}

}  // namespace
