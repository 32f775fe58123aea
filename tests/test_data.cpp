// Tests of the training data: token shards, ShardSource, the corpora, the passkey and MQAR tasks,
// and `drt tokenize`.
//
// Expectations are computed independently of the code under test: shard headers are decoded
// byte by byte here, window starts are recomputed from random_bits, and task layouts are checked
// by searching the token stream rather than by trusting the positions the generator reports.
// DRT_DATA_DIR is the project's data/ folder (scripts/fetch-data.sh fills it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "../tools/command_tokenize.hpp"
#include "drt/data/corpus.hpp"
#include "drt/data/mqar.hpp"
#include "drt/data/niah.hpp"
#include "drt/data/passkey.hpp"
#include "drt/data/shard.hpp"
#include "drt/data/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using drt::Error;
using drt::Index;
using drt::IndexTensor;
using drt::kIgnoreIndex;
using namespace drt::data;
using Ids = std::vector<std::int32_t>;

const std::string kDataDir = DRT_DATA_DIR;

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("drt_test_data_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::uint64_t le(const std::string& bytes, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
  return v;
}

// A shard file built by hand (not through write_shard): header fields as given, ids as given.
std::string handmade_shard(const char* magic, std::uint32_t version, std::uint32_t width, std::uint64_t count,
                           std::uint32_t vocab, const Ids& ids) {
  std::string bytes(64, '\0');
  std::memcpy(bytes.data(), magic, 8);
  auto put = [&](std::size_t at, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  };
  put(8, version, 4);
  put(12, width, 4);
  put(16, count, 8);
  put(24, vocab, 4);
  for (const auto id : ids)
    for (std::uint32_t i = 0; i < width; ++i) bytes.push_back(static_cast<char>((std::uint32_t(id) >> (8 * i)) & 0xFF));
  return bytes;
}

// Expects `f` to throw drt::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "message: " << message;
  }
}

Ids row(const IndexTensor& t, Index b) {
  const Index T = t.size(t.rank() - 1);
  return Ids(t.data() + b * T, t.data() + (b + 1) * T);
}

// Every position where `needle` occurs in `stream`.
std::vector<Index> find_all(const Ids& stream, const Ids& needle) {
  std::vector<Index> at;
  for (std::size_t i = 0; i + needle.size() <= stream.size(); ++i)
    if (std::equal(needle.begin(), needle.end(), stream.begin() + static_cast<std::ptrdiff_t>(i))) at.push_back(Index(i));
  return at;
}

// ---- token shards -----------------------------------------------------------------------------

TEST(Shard, RoundTripTwoByteIds) {
  TempDir dir;
  const std::string path = dir.file("small.shard");
  Ids ids;
  for (int i = 0; i < 1000; ++i) ids.push_back((i * 7919 + 13) % 300);
  ids.push_back(299);
  write_shard(path, ids, 300);

  const std::string bytes = read_all(path);
  ASSERT_EQ(bytes.size(), 64 + 2 * ids.size());
  EXPECT_EQ(bytes.substr(0, 8), "DRTSHARD");
  EXPECT_EQ(le(bytes, 8, 4), 1u);
  EXPECT_EQ(le(bytes, 12, 4), 2u);
  EXPECT_EQ(le(bytes, 16, 8), ids.size());
  EXPECT_EQ(le(bytes, 24, 4), 300u);
  for (std::size_t i = 28; i < 64; ++i) EXPECT_EQ(bytes[i], '\0') << "reserved byte " << i;
  for (std::size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(le(bytes, 64 + 2 * i, 2), std::uint64_t(ids[i])) << i;

  const TokenShard shard(path);
  EXPECT_EQ(shard.size(), Index(ids.size()));
  EXPECT_EQ(shard.vocab_size(), 300);
  EXPECT_EQ(shard.token_bytes(), 2);
  for (std::size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(shard[Index(i)], ids[i]) << i;
  EXPECT_NO_THROW(shard.check_ids());
}

TEST(Shard, RoundTripFourByteIds) {
  TempDir dir;
  const std::string path = dir.file("wide.shard");
  const Ids ids = {0, 65535, 65536, 69999, 123, 50256, 1 << 16, 69998};
  write_shard(path, ids, 70000);
  const std::string bytes = read_all(path);
  ASSERT_EQ(bytes.size(), 64 + 4 * ids.size());
  EXPECT_EQ(le(bytes, 12, 4), 4u);
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(le(bytes, 64 + 4 * i, 4), std::uint64_t(ids[i]));
  const TokenShard shard(path);
  EXPECT_EQ(shard.token_bytes(), 4);
  EXPECT_EQ(shard.vocab_size(), 70000);
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(shard[Index(i)], ids[i]);
}

TEST(Shard, WidthBoundaryAndEmptyShard) {
  TempDir dir;
  write_shard(dir.file("a.shard"), Ids{65535, 0}, 65536);  // largest vocabulary with 2-byte ids
  EXPECT_EQ(TokenShard(dir.file("a.shard")).token_bytes(), 2);
  EXPECT_EQ(TokenShard(dir.file("a.shard"))[0], 65535);
  write_shard(dir.file("b.shard"), Ids{65536}, 65537);
  EXPECT_EQ(TokenShard(dir.file("b.shard")).token_bytes(), 4);
  write_shard(dir.file("empty.shard"), Ids{}, 256);
  const TokenShard empty(dir.file("empty.shard"));
  EXPECT_EQ(empty.size(), 0);
  EXPECT_EQ(fs::file_size(dir.file("empty.shard")), 64u);
}

TEST(Shard, MoveKeepsTheMapping) {
  TempDir dir;
  write_shard(dir.file("m.shard"), Ids{5, 6, 7}, 10);
  TokenShard a(dir.file("m.shard"));
  TokenShard b(std::move(a));
  EXPECT_EQ(b.size(), 3);
  EXPECT_EQ(b[2], 7);
  TokenShard c(dir.file("m.shard"));
  c = std::move(b);
  EXPECT_EQ(c[1], 6);
}

TEST(Shard, WriteRejectsIdsOutsideTheVocabulary) {
  TempDir dir;
  const std::string path = dir.file("bad.shard");
  expect_error([&] { write_shard(path, Ids{1, 2, 10}, 10); }, {path, "10", "position 2"});
  expect_error([&] { write_shard(path, Ids{1, -3}, 10); }, {path, "-3", "position 1"});
  EXPECT_FALSE(fs::exists(path));
}

TEST(Shard, BadMagicNamesTheFile) {
  TempDir dir;
  const std::string path = dir.file("magic.shard");
  write_all(path, handmade_shard("NOTSHARD", 1, 2, 2, 10, {1, 2}));
  expect_error([&] { TokenShard s(path); }, {path, "magic"});
}

TEST(Shard, TruncatedFileNamesTheFile) {
  TempDir dir;
  const std::string path = dir.file("cut.shard");
  write_shard(path, Ids{1, 2, 3, 4}, 10);
  fs::resize_file(path, 64 + 2 * 4 - 1);
  expect_error([&] { TokenShard s(path); }, {path, "truncated", "4 tokens"});
  fs::resize_file(path, 30);  // shorter than the header
  expect_error([&] { TokenShard s(path); }, {path, "header"});
  write_all(path, handmade_shard("DRTSHARD", 1, 2, 2, 10, {1, 2, 3}));  // longer than promised
  expect_error([&] { TokenShard s(path); }, {path, "2 tokens"});
}

TEST(Shard, BadHeaderFieldsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("h.shard");
  write_all(path, handmade_shard("DRTSHARD", 2, 2, 1, 10, {1}));
  expect_error([&] { TokenShard s(path); }, {path, "version 2"});
  write_all(path, handmade_shard("DRTSHARD", 1, 3, 1, 10, {1}));
  expect_error([&] { TokenShard s(path); }, {path, "3 bytes per token"});
  write_all(path, handmade_shard("DRTSHARD", 1, 2, 1, 70000, {1}));
  expect_error([&] { TokenShard s(path); }, {path, "70000"});
  expect_error([&] { TokenShard s(dir.file("missing.shard")); }, {dir.file("missing.shard"), "cannot open"});
}

TEST(Shard, IdsBeyondTheVocabularyNameFilePositionAndId) {
  TempDir dir;
  const std::string path = dir.file("ids.shard");
  write_all(path, handmade_shard("DRTSHARD", 1, 2, 5, 10, {1, 9, 0, 12, 3}));
  const TokenShard shard(path);  // opening reads only the header
  EXPECT_EQ(shard[3], 12);
  expect_error([&] { shard.check_ids(); }, {path, "position 3", "token id 12", "10"});
  expect_error([&] { ShardSource source(path, 1); }, {path, "position 3", "token id 12"});
}

// ---- ShardSource ------------------------------------------------------------------------------

// Token i is i, so a window reveals where it starts.
std::string counting_shard(const TempDir& dir, Index n) {
  Ids ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  const std::string path = dir.file("counting.shard");
  write_shard(path, ids, static_cast<std::int64_t>(n));
  return path;
}

TEST(ShardSource, WindowsAreRandomBitsModuloTheSpanAndLieInsideTheStream) {
  TempDir dir;
  const Index N = 5000, B = 4, T = 64;
  const std::uint64_t seed = 77;
  const ShardSource source(counting_shard(dir, N), seed);
  EXPECT_EQ(source.vocab_size(), N);
  for (std::int64_t step : {0, 1, 2, 1000}) {
    const Batch batch = source.batch(step, B, T);
    ASSERT_EQ(batch.tokens.shape().str(), IndexTensor::empty({B, T}).shape().str());
    for (Index b = 0; b < B; ++b) {
      const Index start = Index(drt::random_bits(seed, std::uint64_t(step * B + b)) % std::uint64_t(N - T));
      for (Index t = 0; t < T; ++t) {
        ASSERT_EQ(batch.tokens(b, t), start + t) << "step " << step << " row " << b;
        ASSERT_EQ(batch.labels(b, t), batch.tokens(b, t));
      }
      EXPECT_LE(start + T, N);
    }
  }
}

TEST(ShardSource, SameStepSameBatchDifferentStepsDiffer) {
  TempDir dir;
  const std::string path = counting_shard(dir, 3000);
  const ShardSource a(path, 5), b(path, 5), other_seed(path, 6);
  const Batch a7 = a.batch(7, 3, 32), b7 = b.batch(7, 3, 32), a7_again = a.batch(7, 3, 32);
  const Batch a8 = a.batch(8, 3, 32), c7 = other_seed.batch(7, 3, 32);
  for (Index r = 0; r < 3; ++r) {
    EXPECT_EQ(row(a7.tokens, r), row(b7.tokens, r));
    EXPECT_EQ(row(a7.tokens, r), row(a7_again.tokens, r));
  }
  bool step_differs = false, seed_differs = false;
  for (Index r = 0; r < 3; ++r) {
    step_differs |= row(a7.tokens, r) != row(a8.tokens, r);
    seed_differs |= row(a7.tokens, r) != row(c7.tokens, r);
  }
  EXPECT_TRUE(step_differs);
  EXPECT_TRUE(seed_differs);
}

TEST(ShardSource, RangeKeepsWindowsInsideAndShortStreamsAreRejected) {
  TempDir dir;
  auto shard = std::make_shared<const TokenShard>(counting_shard(dir, 4000));
  const ShardSource held_out(shard, 3, 3000, 4000);
  for (std::int64_t step = 0; step < 50; ++step) {
    const Batch batch = held_out.batch(step, 2, 100);
    for (Index b = 0; b < 2; ++b) {
      EXPECT_GE(batch.tokens(b, 0), 3000);
      EXPECT_LE(batch.tokens(b, 99), 3999);
    }
  }
  expect_error([&] { held_out.batch(0, 1, 1000); }, {"counting.shard", "1000"});
  expect_error([&] { ShardSource bad(shard, 3, 100, 5000); }, {"counting.shard", "5000"});
}

// ---- corpora ----------------------------------------------------------------------------------

TEST(Corpus, MissingCorpusNamesThePathAndTheFetchScript) {
  TempDir dir;
  EXPECT_EQ(corpus_path("kjv", "some/dir"), "some/dir/kjv.txt");
  EXPECT_EQ(corpus_path("my/own.txt"), "my/own.txt");
  EXPECT_EQ(corpus_path("own.txt"), "own.txt");
  expect_error([&] { load_corpus("no_such_corpus", dir.file("corpus")); },
               {dir.file("corpus") + "/no_such_corpus.txt", "run scripts/fetch-data.sh"});
  write_all(dir.file("empty.txt"), "");
  expect_error([&] { load_corpus(dir.file("empty.txt")); }, {dir.file("empty.txt"), "empty"});
  write_all(dir.file("tiny.txt"), "in the beginning");
  EXPECT_EQ(load_corpus(dir.file("tiny.txt")), "in the beginning");
}

// The corpora are part of the set-up: a missing file is a failure, not a skipped test.
std::string required_corpus(const std::string& name) {
  const std::string path = kDataDir + "/corpus/" + name + ".txt";
  if (!fs::exists(path)) {
    ADD_FAILURE() << path << " is missing: run scripts/fetch-data.sh (it extracts the corpora into data/corpus/)";
    return "";
  }
  return load_corpus(name, kDataDir + "/corpus");
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(Corpus, KingJamesBibleIsExtractedWithoutVerseNumbers) {
  const std::string kjv = required_corpus("kjv");
  if (kjv.empty()) return;
  EXPECT_GT(kjv.size(), 4'000'000u);
  const auto lines = lines_of(kjv);
  ASSERT_GT(lines.size(), 4u);
  EXPECT_EQ(lines[0], "Genesis 1");
  EXPECT_EQ(lines[2], "In the beginning God created the heaven and the earth.");
  EXPECT_EQ(lines.back(), "The grace of our Lord Jesus Christ be with you all. Amen.");
  // 1,189 chapter headings ("Book N"); every other non-empty line is a verse without its number.
  Index headings = 0, verses = 0;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    const bool heading = (i == 0 || lines[i - 1].empty()) && i + 1 < lines.size() && lines[i + 1].empty();
    if (heading) {
      ++headings;
      continue;
    }
    ++verses;
    EXPECT_FALSE(std::isdigit(static_cast<unsigned char>(lines[i][0])) || lines[i][0] == ' ') << "line " << i << ": "
                                                                                               << lines[i];
  }
  EXPECT_EQ(headings, 1189);
  EXPECT_EQ(verses, 31102);

  // A passkey trial over real text: the needle text occurs nowhere in the Bible, so it is found
  // exactly once.
  const ByteTokenizer bytes;
  const HaystackText haystack = HaystackText::tokenize(kjv, bytes, "kjv");
  const PasskeyFormat format = byte_passkey_format();
  const PasskeyOptions options{64, 5, false};
  const PasskeyTrial trial = make_passkey_trial(haystack, format, options, 2048, 1, 0);
  EXPECT_EQ(find_all(row(trial.tokens, 0), format.needle_prefix).size(), 1u);
}

TEST(Corpus, BrownCorpusIsDetaggedAndDetokenised) {
  const std::string brown = required_corpus("brown");
  if (brown.empty()) return;
  EXPECT_GT(brown.size(), 5'000'000u);
  EXPECT_EQ(brown.rfind("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
                        "produced \"no evidence\" that any irregularities took place.\n",
                        0),
            0u);
  // ('' still occurs as the inch mark of 4' 10''; `` never does.)
  for (const char* leftover : {"/at ", "/nn ", " ,", " .", " ;", " ?", "``"})
    EXPECT_EQ(brown.find(leftover), std::string::npos) << "found \"" << leftover << "\"";
  // 500 samples, separated by one blank line each.
  Index blank = 0;
  for (const auto& line : lines_of(brown)) blank += line.empty();
  EXPECT_EQ(blank, 499);
}

TEST(Corpus, HaystackTextWindowsAndParts) {
  const ByteTokenizer bytes;
  const HaystackText text = HaystackText::tokenize("abcdefghij", bytes, "letters");
  EXPECT_EQ(text.size(), 10);
  EXPECT_EQ(text.vocab_size(), 256);
  const auto w = text.window(2, 3);
  EXPECT_EQ(Ids(w.begin(), w.end()), (Ids{'c', 'd', 'e'}));
  const HaystackText tail = text.part(6, 10);
  EXPECT_EQ(tail.size(), 4);
  EXPECT_EQ(tail.window(0, 1)[0], 'g');
  for (std::uint64_t c = 0; c < 200; ++c) {
    const Index s = text.random_start(9, c, 7);
    EXPECT_GE(s, 0);
    EXPECT_LE(s, 3);
  }
  expect_error([&] { text.random_start(1, 0, 11); }, {"letters", "11"});
  expect_error([&] { text.window(8, 3); }, {"letters", "[8, 11)"});
  expect_error([&] { HaystackText bad(Ids{1, 300}, 256, "wide"); }, {"wide", "300", "position 1"});
}

// ---- passkey ----------------------------------------------------------------------------------

// Real-looking text without '|' or digits, long enough for a few thousand tokens.
HaystackText inline_haystack() {
  std::string text;
  const char* sentences[] = {"The grass is green. ", "The sky is blue. ", "The sun is yellow. ",
                             "Here we go. There and back again. ", "A river runs through the quiet valley. "};
  for (int i = 0; text.size() < 6000; ++i) text += sentences[(i * 3 + i / 5) % 5];
  return HaystackText::tokenize(text, ByteTokenizer(), "inline");
}

TEST(Passkey, ByteFormatSpellsTheReferenceText) {
  const PasskeyFormat f = byte_passkey_format();
  const ByteTokenizer bytes;
  EXPECT_EQ(bytes.decode(f.needle_prefix), "|The passkey is:");
  EXPECT_EQ(bytes.decode(f.needle_suffix), "|");
  EXPECT_EQ(bytes.decode(f.question_prefix), "|What is the passkey? The passkey is");
  EXPECT_EQ(f.id_low, '0');
  EXPECT_EQ(f.id_high, '9' + 1);
}

void check_passkey_layout(const PasskeyTrial& trial, const HaystackText& haystack, const PasskeyFormat& f,
                          const PasskeyOptions& o, Index Lw) {
  const Index C = o.chunk_tokens, n = o.passkey_tokens;
  const Ids tokens = row(trial.tokens, 0), labels = row(trial.labels, 0);
  ASSERT_EQ(Index(tokens.size()), Lw);
  const Index key = Lw - C + 1;
  EXPECT_EQ(trial.key_position, key);
  ASSERT_EQ(Index(trial.passkey.size()), n);
  for (const auto id : trial.passkey) {
    EXPECT_GE(id, f.id_low);
    EXPECT_LT(id, f.id_high);
  }
  EXPECT_EQ(trial.answer, trial.passkey[0]);

  // The needle, found by search: exactly once, inside the text before the question, out of the
  // last two chunks.
  Ids needle = f.needle_prefix;
  needle.insert(needle.end(), trial.passkey.begin(), trial.passkey.end());
  needle.insert(needle.end(), f.needle_suffix.begin(), f.needle_suffix.end());
  const auto needle_at = find_all(tokens, needle);
  ASSERT_EQ(needle_at.size(), 1u);
  EXPECT_EQ(find_all(tokens, f.needle_prefix).size(), 1u);
  const Index p = needle_at[0];
  EXPECT_EQ(p, trial.needle_position);
  const Index q = key - Index(f.question_prefix.size());
  EXPECT_LE(p + Index(needle.size()), std::min(q, Lw - 2 * C) - 1);

  // The question sits right before the key position, and the passkey there equals the needle's.
  const auto question_at = find_all(tokens, f.question_prefix);
  ASSERT_EQ(question_at.size(), 1u);
  EXPECT_EQ(question_at[0], q);
  EXPECT_EQ(Ids(tokens.begin() + key, tokens.begin() + key + n),
            Ids(tokens.begin() + p + Index(f.needle_prefix.size()), tokens.begin() + p + Index(f.needle_prefix.size()) + n));
  EXPECT_EQ(tokens[static_cast<std::size_t>(key)], trial.answer);

  // The text around the needle is one contiguous window of the haystack.
  Ids text(tokens.begin(), tokens.begin() + p);
  text.insert(text.end(), tokens.begin() + p + Index(needle.size()), tokens.begin() + q);
  const auto window = haystack.window(trial.haystack_start, Index(text.size()));
  EXPECT_EQ(text, Ids(window.begin(), window.end()));

  // The tail: C − 1 − n positions of −100 in tokens and labels.
  for (Index t = key + n; t < Lw; ++t) {
    EXPECT_EQ(tokens[static_cast<std::size_t>(t)], kIgnoreIndex) << t;
    EXPECT_EQ(labels[static_cast<std::size_t>(t)], kIgnoreIndex) << t;
  }
  EXPECT_EQ(Lw - (key + n), C - 1 - n);

  // Labels: P at the key positions; elsewhere −100, or the tokens themselves with label_text.
  for (Index t = 0; t < key + n; ++t) {
    const auto i = static_cast<std::size_t>(t);
    if (t >= key) EXPECT_EQ(labels[i], trial.passkey[static_cast<std::size_t>(t - key)]) << t;
    else if (o.label_text) EXPECT_EQ(labels[i], tokens[i]) << t;
    else EXPECT_EQ(labels[i], kIgnoreIndex) << t;
  }
}

TEST(Passkey, LayoutFollowsTheReference) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  for (const auto& [C, n, Lw] : std::vector<std::tuple<Index, int, Index>>{{16, 5, 256}, {64, 5, 512}, {64, 10, 1024}, {32, 3, 96}}) {
    const PasskeyOptions o{C, n, false};
    for (std::uint64_t trial = 0; trial < 20; ++trial) {
      SCOPED_TRACE("C=" + std::to_string(C) + " n=" + std::to_string(n) + " Lw=" + std::to_string(Lw) + " trial " +
                   std::to_string(trial));
      check_passkey_layout(make_passkey_trial(haystack, f, o, Lw, 42, trial), haystack, f, o, Lw);
    }
  }
}

TEST(Passkey, LabelTextLabelsEverythingBeforeTheTail) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  const PasskeyOptions o{32, 5, true};
  check_passkey_layout(make_passkey_trial(haystack, f, o, 512, 3, 9), haystack, f, o, 512);
}

TEST(Passkey, NeedlePositionsSpreadOverTheAllowedRange) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  const PasskeyOptions o{64, 5, false};
  const Index Lw = 1024;
  const Index limit = Lw - 2 * 64 - Index(f.needle_prefix.size() + f.needle_suffix.size() + 5);
  Index lowest = Lw, highest = 0;
  std::set<std::int32_t> digits;
  for (std::uint64_t trial = 0; trial < 300; ++trial) {
    const PasskeyTrial t = make_passkey_trial(haystack, f, o, Lw, 11, trial);
    lowest = std::min(lowest, t.needle_position);
    highest = std::max(highest, t.needle_position);
    digits.insert(t.passkey.begin(), t.passkey.end());
  }
  EXPECT_LT(lowest, limit / 10);
  EXPECT_GT(highest, limit * 9 / 10);
  EXPECT_LT(highest, limit);
  EXPECT_EQ(digits.size(), 10u);  // every digit shows up
}

TEST(Passkey, DeterministicPerSeedAndTrial) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  const PasskeyOptions o{32, 5, false};
  const auto a = make_passkey_trial(haystack, f, o, 512, 7, 3), b = make_passkey_trial(haystack, f, o, 512, 7, 3);
  EXPECT_EQ(row(a.tokens, 0), row(b.tokens, 0));
  EXPECT_EQ(row(a.labels, 0), row(b.labels, 0));
  const auto other_trial = make_passkey_trial(haystack, f, o, 512, 7, 4);
  const auto other_seed = make_passkey_trial(haystack, f, o, 512, 8, 3);
  EXPECT_NE(row(a.tokens, 0), row(other_trial.tokens, 0));
  EXPECT_NE(row(a.tokens, 0), row(other_seed.tokens, 0));
}

TEST(Passkey, SourceRowsAreTheTrialsOfTheStep) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  const PasskeyOptions o{32, 10, false};
  const PasskeySource source(haystack, f, o, 21);
  EXPECT_EQ(source.vocab_size(), 256);
  const Index B = 3, T = 256;
  const Batch batch = source.batch(5, B, T), again = source.batch(5, B, T);
  for (Index b = 0; b < B; ++b) {
    const auto trial = make_passkey_trial(haystack, f, o, T, 21, std::uint64_t(5 * B + b));
    EXPECT_EQ(row(batch.tokens, b), row(trial.tokens, 0));
    EXPECT_EQ(row(batch.labels, b), row(trial.labels, 0));
    EXPECT_EQ(row(batch.tokens, b), row(again.tokens, b));
  }
  EXPECT_NE(row(batch.tokens, 0), row(source.batch(6, B, T).tokens, 0));
}

TEST(Passkey, BadLengthsAreRejected) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  expect_error([&] { make_passkey_trial(haystack, f, {64, 5, false}, 1000, 1, 0); }, {"1000", "64"});
  expect_error([&] { make_passkey_trial(haystack, f, {16, 16, false}, 256, 1, 0); }, {"16 passkey tokens"});
  expect_error([&] { make_passkey_trial(haystack, f, {16, 5, false}, 64, 1, 0); }, {"too short"});
  const HaystackText tiny = HaystackText::tokenize("too little text", ByteTokenizer(), "tiny");
  expect_error([&] { make_passkey_trial(tiny, f, {16, 5, false}, 256, 1, 0); }, {"tiny", "only 15"});
}

TEST(Recall, TheLastSpanRepeatsAnEarlierOneAndOnlyTheFinalChunkIsLabelled) {
  const HaystackText haystack = inline_haystack();
  const PasskeyOptions o{.chunk_tokens = 32, .passkey_tokens = 5};
  const Index C = 32, span = 48, T = 256;
  for (std::uint64_t trial = 0; trial < 20; ++trial) {
    const Batch r = make_recall_trial(haystack, o, T, 9, trial);
    const Ids tokens = row(r.tokens, 0), labels = row(r.labels, 0);
    ASSERT_EQ(Index(tokens.size()), T);
    // Some source in [0, T − 2C − span] holds the same span as the copy at the end.
    const Ids copy(tokens.end() - span, tokens.end());
    bool found = false;
    for (Index s = 0; s <= T - 2 * C - span && !found; ++s) found = Ids(tokens.begin() + s, tokens.begin() + s + span) == copy;
    EXPECT_TRUE(found) << "trial " << trial;
    for (Index t = 0; t < T; ++t) EXPECT_EQ(labels[t], t >= T - C + 1 ? tokens[t] : kIgnoreIndex) << "position " << t;
    EXPECT_EQ(row(make_recall_trial(haystack, o, T, 9, trial).tokens, 0), tokens);  // a pure function
  }
  expect_error([&] { make_recall_trial(haystack, o, 96, 9, 0); }, {"at least 112"});
}

TEST(Recall, SourceMixesRecallRowsAtTheRequestedRate) {
  const HaystackText haystack = inline_haystack();
  PasskeyOptions o{.chunk_tokens = 32, .passkey_tokens = 5};
  const PasskeyFormat f = byte_passkey_format();
  auto passkey_rows = [&](double fraction) {
    o.recall_fraction = fraction;
    const PasskeySource source(haystack, f, o, 4);
    const Batch batch = source.batch(0, 400, 256);
    Index count = 0;  // a passkey row has exactly 5 labels; a recall row 31
    for (Index b = 0; b < 400; ++b) {
      const Ids labels = row(batch.labels, b);
      count += std::count_if(labels.begin(), labels.end(), [](std::int32_t v) { return v != kIgnoreIndex; }) == 5;
    }
    return count;
  };
  EXPECT_EQ(passkey_rows(0.0), 400);
  EXPECT_EQ(passkey_rows(1.0), 0);
  const Index half = passkey_rows(0.5);
  EXPECT_GT(half, 150);
  EXPECT_LT(half, 250);
}

TEST(Passkey, ScoringTheFirstTokenAndTheExactMatch) {
  const HaystackText haystack = inline_haystack();
  const PasskeyFormat f = byte_passkey_format();
  const PasskeyOptions o{32, 5, false};
  const Index Lw = 256, V = 256;
  const PasskeyTrial trial = make_passkey_trial(haystack, f, o, Lw, 5, 0);
  const Index key = trial.key_position;

  const IndexTensor input = passkey_model_input(trial);
  for (Index t = 0; t < Lw; ++t) EXPECT_EQ(input(0, t), t == key ? 0 : trial.tokens(0, t));

  // Logits that predict every passkey token right (rows key − 1 .. key + n − 2).
  auto logits = drt::Tensor<float>::zeros({Lw, V});
  for (Index i = 0; i < 5; ++i) logits(key - 1 + i, trial.passkey[static_cast<std::size_t>(i)]) = 2.0f;
  EXPECT_TRUE(passkey_first_token_hit(logits, trial));
  EXPECT_TRUE(passkey_exact_match(logits, trial));
  EXPECT_EQ(passkey_tokens_correct(logits, trial), 5);

  // One later token wrong: the reference's score still hits, the exact match fails.
  const std::int32_t p3 = trial.passkey[3], wrong = p3 == '0' ? '1' : '0';
  logits(key + 2, wrong) = 3.0f;
  EXPECT_TRUE(passkey_first_token_hit(logits, trial));
  EXPECT_FALSE(passkey_exact_match(logits, trial));
  EXPECT_EQ(passkey_tokens_correct(logits, trial), 4);

  // The first token wrong: only the row before the key matters for the reference's score.
  const std::int32_t p0 = trial.passkey[0];
  logits(key - 1, p0 == '9' ? '8' : '9') = 5.0f;
  EXPECT_FALSE(passkey_first_token_hit(logits, trial));
  logits(key, p0) = 9.0f;  // row key predicts P[1], not P[0]: no effect on the first-token score
  EXPECT_FALSE(passkey_first_token_hit(logits, trial));

  // (1, T, V) logits score the same; rows must match the trial length.
  const auto batched = logits.reshape({1, Lw, V});
  EXPECT_FALSE(passkey_first_token_hit(batched, trial));
  PasskeyScore score;
  score.add(batched, trial);
  EXPECT_EQ(score.trials, 1);
  EXPECT_EQ(score.first_token_hits, 0);
  EXPECT_EQ(score.tokens, 5);
  expect_error([&] { passkey_first_token_hit(drt::Tensor<float>::zeros({Lw - 1, V}), trial); }, {"255", "256"});
}

// ---- MQAR -------------------------------------------------------------------------------------

void check_mqar(const MqarSequence& s, const MqarOptions& o, Index T, bool noise_filler) {
  const Ids tokens = row(s.tokens, 0), labels = row(s.labels, 0);
  ASSERT_EQ(Index(tokens.size()), T);
  auto is_key = [&](std::int32_t id) { return id >= o.key_low && id < o.key_high; };
  auto is_value = [&](std::int32_t id) { return id >= o.value_low && id < o.value_high; };
  // The pairs: distinct keys, values in range.
  std::map<std::int32_t, std::int32_t> value_of;
  for (Index i = 0; i < o.num_pairs; ++i) {
    const auto k = tokens[static_cast<std::size_t>(2 * i)], v = tokens[static_cast<std::size_t>(2 * i + 1)];
    EXPECT_TRUE(is_key(k)) << k;
    EXPECT_TRUE(is_value(v)) << v;
    EXPECT_TRUE(value_of.emplace(k, v).second) << "key " << k << " appears twice among the pairs";
    EXPECT_EQ(labels[static_cast<std::size_t>(2 * i + 1)], kIgnoreIndex);
  }
  // After the pairs: every key found is a query followed by its value, which is the only
  // labelled position; queries ask distinct keys.
  std::set<std::int32_t> asked;
  Index labelled = 0;
  std::vector<Index> found;
  for (Index t = 2 * o.num_pairs; t < T; ++t) {
    const auto i = static_cast<std::size_t>(t);
    if (!is_key(tokens[i])) {
      if (noise_filler) {
        EXPECT_TRUE((tokens[i] >= o.noise_low && tokens[i] < o.noise_high) || is_value(tokens[i])) << t;
      }
      continue;
    }
    found.push_back(t);
    ASSERT_LT(t + 1, T);
    ASSERT_TRUE(value_of.count(tokens[i])) << "query key " << tokens[i] << " is not among the pairs";
    EXPECT_EQ(tokens[i + 1], value_of[tokens[i]]);
    EXPECT_EQ(labels[i + 1], tokens[i + 1]);
    EXPECT_EQ(labels[i], kIgnoreIndex);
    EXPECT_TRUE(asked.insert(tokens[i]).second);
    ++t;  // skip the value
  }
  EXPECT_EQ(Index(found.size()), o.num_queries);
  for (const auto label : labels) labelled += label != kIgnoreIndex;
  EXPECT_EQ(labelled, o.num_queries);
  EXPECT_EQ(found, s.query_positions);
}

TEST(Mqar, LayoutAndLabels) {
  const MqarOptions o = mqar_split_vocab(64, 8, 6);
  EXPECT_EQ(o.key_low, 1);
  EXPECT_EQ(o.key_high, 32);
  EXPECT_EQ(o.value_low, 32);
  EXPECT_EQ(o.value_high, 64);
  for (std::uint64_t i = 0; i < 50; ++i) check_mqar(make_mqar_sequence(o, 128, 64, 3, i), o, 128, true);
  // Tight: pairs and queries fill the whole sequence.
  for (std::uint64_t i = 0; i < 20; ++i) check_mqar(make_mqar_sequence(o, 28, 64, 4, i), o, 28, true);
}

TEST(Mqar, QueriesAtTheEndAndSpreadOtherwise) {
  MqarOptions o = mqar_split_vocab(100, 4, 4);
  o.queries_at_end = true;
  const auto s = make_mqar_sequence(o, 200, 100, 1, 0);
  check_mqar(s, o, 200, true);
  EXPECT_EQ(s.query_positions, (std::vector<Index>{192, 194, 196, 198}));
  o.queries_at_end = false;
  Index earliest = 200, latest = 0;
  for (std::uint64_t i = 0; i < 100; ++i) {
    const auto q = make_mqar_sequence(o, 200, 100, 1, i).query_positions;
    earliest = std::min(earliest, q.front());
    latest = std::max(latest, q.back());
  }
  EXPECT_LT(earliest, 30);
  EXPECT_GT(latest, 180);
}

TEST(Mqar, HaystackFiller) {
  const HaystackText haystack = inline_haystack();
  MqarOptions o;
  o.num_pairs = 6, o.num_queries = 3;
  o.key_low = 256, o.key_high = 300, o.value_low = 300, o.value_high = 340;
  const auto s = make_mqar_sequence(o, 300, 340, 9, 2, &haystack);
  check_mqar(s, o, 300, false);
  // Outside the query slots the filler is contiguous haystack text.
  Ids filler;
  std::set<Index> slots;
  for (const Index q : s.query_positions) slots.insert(q), slots.insert(q + 1);
  for (Index t = 12; t < 300; ++t)
    if (!slots.count(t)) filler.push_back(s.tokens(0, t));
  ASSERT_EQ(filler.size(), 300u - 12 - 6);
  const auto all = haystack.window(0, haystack.size());
  EXPECT_FALSE(find_all(Ids(all.begin(), all.end()), filler).empty());
}

TEST(Mqar, SourceIsDeterministicPerStep) {
  const MqarOptions o = mqar_split_vocab(64, 8, 8);
  const MqarSource source(o, 64, 17);
  const Batch a = source.batch(3, 4, 64), b = source.batch(3, 4, 64), c = source.batch(4, 4, 64);
  for (Index r = 0; r < 4; ++r) {
    EXPECT_EQ(row(a.tokens, r), row(b.tokens, r));
    EXPECT_EQ(row(a.tokens, r), row(make_mqar_sequence(o, 64, 64, 17, std::uint64_t(3 * 4 + r)).tokens, 0));
    EXPECT_EQ(row(a.labels, r), row(make_mqar_sequence(o, 64, 64, 17, std::uint64_t(3 * 4 + r)).labels, 0));
  }
  EXPECT_NE(row(a.tokens, 0), row(c.tokens, 0));
  EXPECT_NE(row(a.tokens, 0), row(a.tokens, 1));
}

TEST(Mqar, BadOptionsAreRejected) {
  MqarOptions o = mqar_split_vocab(64, 8, 8);
  expect_error([&] { make_mqar_sequence(o, 31, 64, 1, 0); }, {"length 31"});
  MqarOptions overlap = o;
  overlap.value_low = 20;
  expect_error([&] { make_mqar_sequence(overlap, 64, 64, 1, 0); }, {"overlaps"});
  MqarOptions noisy = o;
  noisy.noise_high = 5;
  expect_error([&] { make_mqar_sequence(noisy, 64, 64, 1, 0); }, {"noise"});
  MqarOptions many = o;
  many.num_queries = 9;
  expect_error([&] { make_mqar_sequence(many, 64, 64, 1, 0); }, {"9 queries"});
  expect_error([&] { make_mqar_sequence(o, 64, 50, 1, 0); }, {"vocabulary of 50"});
}

TEST(Mqar, AccuracyCountsTheLabelledPositions) {
  const MqarOptions o = mqar_split_vocab(64, 4, 3);
  const MqarSource source(o, 64, 2);
  const Batch batch = source.batch(0, 2, 32);
  auto logits = drt::Tensor<float>::zeros({2, 32, 64});
  // Row 0: every answer right. Row 1: the first answer wrong.
  for (Index b = 0; b < 2; ++b) {
    bool first = true;
    for (Index t = 1; t < 32; ++t) {
      const std::int32_t want = batch.labels(b, t);
      if (want == kIgnoreIndex) continue;
      const std::int32_t predicted = (b == 1 && first) ? (want == o.value_low ? want + 1 : o.value_low) : want;
      logits(b, t - 1, predicted) = 1.0f;
      first = false;
    }
  }
  const LabelAccuracy acc = mqar_accuracy(logits, batch.labels);
  EXPECT_EQ(acc.scored, 6);
  EXPECT_EQ(acc.correct, 5);
  EXPECT_EQ(acc.sequences, 2);
  EXPECT_EQ(acc.exact_sequences, 1);
  EXPECT_DOUBLE_EQ(acc.accuracy(), 5.0 / 6.0);
  expect_error([&] { mqar_accuracy(drt::Tensor<float>::zeros({2, 31, 64}), batch.labels); }, {"mqar_accuracy"});
}

// ---- drt tokenize -----------------------------------------------------------------------------

TEST(Tokenize, ByteLevelShardHoldsTheBytes) {
  TempDir dir;
  const std::string text = "Hello, world!\n\xC3\xA9t\xC3\xA9\n";
  write_all(dir.file("in.txt"), text);
  const auto r = drt::cli::tokenize_file(dir.file("in.txt"), dir.file("out.shard"), "byte");
  EXPECT_EQ(r.tokens, Index(text.size()));
  EXPECT_EQ(r.input_bytes, Index(text.size()));
  EXPECT_EQ(r.shard_bytes, Index(64 + 2 * text.size()));
  EXPECT_EQ(r.vocab_size, 256);
  const TokenShard shard(dir.file("out.shard"));
  ASSERT_EQ(shard.size(), Index(text.size()));
  for (std::size_t i = 0; i < text.size(); ++i) EXPECT_EQ(shard[Index(i)], static_cast<unsigned char>(text[i]));

  const auto e = drt::cli::tokenize_file(dir.file("in.txt"), dir.file("eot.shard"), "byte", "", true);
  EXPECT_EQ(e.tokens, Index(text.size()) + 1);
  EXPECT_EQ(e.vocab_size, 257);
  const TokenShard with_eot(dir.file("eot.shard"));
  EXPECT_EQ(with_eot[with_eot.size() - 1], 256);
  EXPECT_EQ(with_eot.vocab_size(), 257);
}

TEST(Tokenize, CommandLinePrintsCountsAndRejectsBadInput) {
  TempDir dir;
  write_all(dir.file("in.txt"), "abc");
  const std::vector<std::string> words = {"--input", dir.file("in.txt"), "--output", dir.file("o.shard")};
  std::ostringstream out;
  const auto args = drt::cli::Args::parse(drt::cli::tokenize_spec(), words);
  EXPECT_EQ(drt::cli::run_tokenize(args, out), 0);
  EXPECT_NE(out.str().find("tokens 3\n"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("input_bytes 3\n"), std::string::npos);
  EXPECT_NE(out.str().find("tokens_per_second "), std::string::npos);
  EXPECT_EQ(TokenShard(dir.file("o.shard")).size(), 3);

  expect_error([&] { drt::cli::tokenize_file(dir.file("nope.txt"), dir.file("o.shard"), "byte"); }, {dir.file("nope.txt")});
  EXPECT_THROW(drt::cli::tokenize_file(dir.file("in.txt"), dir.file("o.shard"), "words"), drt::cli::UsageError);
  const std::vector<std::string> bad_flag = {"--input", "a", "--output", "b", "--append-eot", "maybe"};
  EXPECT_THROW(drt::cli::run_tokenize(drt::cli::Args::parse(drt::cli::tokenize_spec(), bad_flag), out),
               drt::cli::UsageError);
}

#if DRT_TOKENIZE_WITH_GPT2
TEST(Tokenize, Gpt2ShardDecodesBackToTheText) {
  TempDir dir;
  const std::string text = "In the beginning God created the heaven and the earth.\nAnd the earth was without form.";
  write_all(dir.file("in.txt"), text);
  const std::string gpt2_dir = kDataDir + "/gpt2";
  ASSERT_TRUE(fs::exists(gpt2_dir + "/encoder.json")) << gpt2_dir << " is missing: run scripts/fetch-data.sh";
  const auto r = drt::cli::tokenize_file(dir.file("in.txt"), dir.file("g.shard"), "gpt2", gpt2_dir, true);
  EXPECT_EQ(r.vocab_size, 50257);
  const TokenShard shard(dir.file("g.shard"));
  EXPECT_EQ(shard.token_bytes(), 2);
  Ids ids;
  for (Index i = 0; i < shard.size(); ++i) ids.push_back(shard[i]);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), 50256);
  ids.pop_back();
  EXPECT_LT(ids.size(), text.size() / 3);  // BPE, not bytes
  EXPECT_EQ(Gpt2Tokenizer::load(gpt2_dir).decode(ids), text);
}
#endif

}  // namespace

namespace {

std::string text_of(const IndexTensor& tokens, Index begin, Index end) {
  std::string s;
  for (Index i = begin; i < end; ++i) s += static_cast<char>(tokens(0, i));
  return s;
}

// Counts the occurrences of `needle` in `text`.
int occurrences(const std::string& text, const std::string& needle) {
  int n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(Niah, MultiKeyTrialAsksOneOfSixNeedlesWithTheAnswerOpeningTheFinalChunk) {
  const HaystackText haystack = inline_haystack();
  for (std::uint64_t trial = 0; trial < 10; ++trial) {
    const NeedleTrial t = make_multikey_trial(haystack, 63, 1008, 7, trial);
    ASSERT_EQ(t.answer_start, 1008 - 63 + 1);
    ASSERT_EQ(t.answer.size(), 5u);
    EXPECT_EQ(t.scored_position, t.answer_start + 4);  // the reference scores the value's last token
    const std::string before = text_of(t.tokens, 0, t.answer_start), answer = text_of(t.tokens, t.answer_start, t.answer_start + 5);
    EXPECT_EQ(answer, std::string(t.answer.begin(), t.answer.end()));
    EXPECT_EQ(occurrences(before, "|One of the special magic numbers for "), 6);
    // The question names a key whose needle holds exactly this answer; needles end before the last two chunks.
    const std::string key = before.substr(before.rfind("|The value of ") + 14, 5);
    const std::size_t needle = before.find("for " + key + " is " + answer + "|");
    ASSERT_NE(needle, std::string::npos) << before;
    EXPECT_LT(needle, static_cast<std::size_t>(1008 - 2 * 63));
    for (Index i = t.answer_start + 5; i < 1008; ++i) EXPECT_EQ(t.tokens(0, i), kIgnoreIndex);
  }
  EXPECT_EQ(make_multikey_trial(haystack, 63, 1008, 7, 3).tokens.to_vector(), make_multikey_trial(haystack, 63, 1008, 7, 3).tokens.to_vector());
  EXPECT_NE(make_multikey_trial(haystack, 63, 1008, 7, 3).tokens.to_vector(), make_multikey_trial(haystack, 63, 1008, 7, 4).tokens.to_vector());
}

TEST(Niah, TwoHopTrialFollowsTwoNeedles) {
  const HaystackText haystack = inline_haystack();
  for (std::uint64_t trial = 0; trial < 10; ++trial) {
    const NeedleTrial t = make_two_hop_trial(haystack, 64, 1024, 9, trial);
    ASSERT_EQ(t.answer.size(), 11u);  // B "," C
    EXPECT_EQ(t.scored_position, t.answer_start + 10);
    const std::string before = text_of(t.tokens, 0, t.answer_start);
    const std::string answer(t.answer.begin(), t.answer.end()), a = before.substr(before.rfind("|The path from ") + 15, 5);
    const std::string b = answer.substr(0, 5), c = answer.substr(6, 5);
    EXPECT_EQ(answer[5], ',');
    EXPECT_EQ(occurrences(before, "|DEF "), 4);
    EXPECT_EQ(occurrences(before, "|DEF " + a + "->" + b + "|"), 1);
    EXPECT_EQ(occurrences(before, "|DEF " + b + "->" + c + "|"), 1);
  }
  EXPECT_THROW(make_two_hop_trial(haystack, 64, 192, 9, 0), Error);  // 76 needle tokens, 64 places
}

TEST(Niah, RepeatedHaystackCoversLongContexts) {
  const HaystackText text = HaystackText::tokenize("abcdefghij", ByteTokenizer(), "letters");
  EXPECT_EQ(repeated_haystack(text, 5).size(), 10);
  const HaystackText longer = repeated_haystack(text.part(2, 6), 11);  // "cdef" x3
  EXPECT_EQ(longer.size(), 12);
  EXPECT_EQ(longer.window(0, 12)[4], 'c');
  EXPECT_EQ(longer.window(0, 12)[11], 'f');
  EXPECT_NE(longer.name().find("x3"), std::string::npos);
}
