// Incremental decoding (spec §9): the decoders reproduce the batch forward at every position, one
// token at a time and in segments of any size, with the chunk memory in RAM or on disk; their
// state stays bounded; sampling and the chunk stores behave.
#include <drt/model.hpp>

#include <filesystem>

#include <gtest/gtest.h>
#include <unistd.h>

#include "support/decoding.hpp"

using namespace drt;
using drt::test_support::all_rows;
using drt::test_support::perturb;
using drt::test_support::random_ids;

namespace {

ModelConfig decoding_config(int chunk_tokens = 63) {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 24;
  c.vocab_size = 29;
  c.enc_chunk_size = chunk_tokens;
  c.chunk_topk = 2;
  c.slide_window = 40;  // smaller than a chunk: the ring buffers wrap many times
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1, 1};  // two retrieval groups
  c.pad_id = 0;
  c.chunk_id = 28;
  c.tie_word_embeddings = true;
  c.initializer_range = 0.3;
  return c;
}

// Batch logits (T, V) of a DRT, landmark rows dropped: row t predicts token t + 1.
Tensor<float> drt_batch_logits(const DrtModel<float>& model, const std::vector<std::int32_t>& tokens) {
  NoGradGuard no_grad;
  const IndexTensor t = IndexTensor::from({1, static_cast<Index>(tokens.size())}, tokens);
  Tensor<float> logits = drop_landmark_rows(model.logits(t).value(), model.config().enc_chunk_size);
  tape().reset();
  return logits.reshape({static_cast<Index>(tokens.size()), model.config().vocab_size});
}

float max_abs_difference(const Tensor<float>& a, const Tensor<float>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  float worst = 0;
  for (Index i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
  return worst;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_decoding_" + std::to_string(::getpid()) + "_" + name)).string();
}

}  // namespace

// Spec §9.5, strengthened: every position's logits, not only the argmax, over 6 chunks (several
// boundaries and retrievals in both groups, most of them with more candidates than k).
TEST(DrtDecoder, TokenByTokenMatchesTheBatchForwardEverywhere) {
  const DrtModel<float> model(decoding_config(), 3);
  perturb(model, 4);
  const auto tokens = random_ids(6 * 63, 1, 28, 5);
  const Tensor<float> batch = drt_batch_logits(model, tokens);

  DrtDecoder<float> decoder(model);
  Tensor<float> stepped = Tensor<float>::empty(batch.shape());
  for (std::size_t t = 0; t < tokens.size(); ++t) stepped.select(0, static_cast<Index>(t)).copy_from(decoder.step(tokens[t]));
  EXPECT_LT(max_abs_difference(stepped, batch), 1e-4f);
  EXPECT_EQ(decoder.tokens_seen(), 6 * 63);
  EXPECT_EQ(decoder.positions(), 6 * 64);
  EXPECT_EQ(decoder.chunk_store().size(), 6);
  // The last landmark (chunk 5) retrieved 2 of its 5 visible chunks, with weights summing to 1.
  for (int g = 0; g < 2; ++g) {
    const ChunkRetrieval<float>& r = decoder.current_retrieval(g);
    ASSERT_EQ(r.index.size(), 2u);
    EXPECT_NE(r.index[0], r.index[1]);
    for (int j = 0; j < 2; ++j) EXPECT_TRUE(r.index[j] >= 0 && r.index[j] < 5);
    EXPECT_NEAR(r.weight[0] + r.weight[1], 1.0f, 1e-5f);
  }
}

TEST(DrtDecoder, SegmentsOfAnySizeMatchTheBatchForward) {
  const DrtModel<float> model(decoding_config(), 6);
  perturb(model, 7);
  const auto tokens = random_ids(5 * 63 + 20, 1, 28, 8);  // ends inside a chunk
  const Tensor<float> batch = drt_batch_logits(model, std::vector<std::int32_t>(tokens.begin(), tokens.begin() + 5 * 63));
  for (Index segment : {1, 2, 37, 64, 65, 130, 10000}) {
    DrtDecoder<float> decoder(model);
    const Tensor<float> fed = decoder.feed(tokens, all_rows(5 * 63), segment);
    EXPECT_LT(max_abs_difference(fed, batch), 1e-4f) << "segments of " << segment << " positions";
  }
  // Feeding in two calls equals one: the state carries over.
  DrtDecoder<float> split(model);
  split.feed(std::vector<std::int32_t>(tokens.begin(), tokens.begin() + 100), {}, 64);
  const Tensor<float> rest = split.feed(std::vector<std::int32_t>(tokens.begin() + 100, tokens.begin() + 5 * 63),
                                        all_rows(5 * 63 - 100), 200);
  EXPECT_LT(max_abs_difference(rest, batch.slice(0, 100, 5 * 63).contiguous()), 1e-4f);
}

// The opt-in switches (the standard residual wiring and the encoder's ALiBi) reach the decoder too.
TEST(DrtDecoder, MatchesTheBatchForwardWithTheOptInWiringAndEncoderBias) {
  ModelConfig c = decoding_config();
  c.gca_standard_residual = true;
  c.encoder_alibi = true;
  const DrtModel<float> model(c, 24);
  perturb(model, 25);
  const auto tokens = random_ids(4 * 63, 1, 28, 26);
  DrtDecoder<float> decoder(model);
  EXPECT_LT(max_abs_difference(decoder.feed(tokens, all_rows(4 * 63), 70), drt_batch_logits(model, tokens)), 1e-4f);
}

// L_c = 64 (S = 65): the landmark row is dropped from the memory instead of zeroed.
TEST(DrtDecoder, MatchesTheBatchForwardWithDroppedLandmarkRows) {
  const DrtModel<float> model(decoding_config(64), 9);
  perturb(model, 10);
  const auto tokens = random_ids(4 * 64, 1, 28, 11);
  DrtDecoder<float> decoder(model);
  EXPECT_LT(max_abs_difference(decoder.feed(tokens, all_rows(4 * 64), 50), drt_batch_logits(model, tokens)), 1e-4f);
}

TEST(DrtDecoder, ChunkMemoryOnDiskGivesTheSameLogitsAndIsRemoved) {
  const DrtModel<float> model(decoding_config(), 12);
  perturb(model, 13);
  const auto tokens = random_ids(5 * 63, 1, 28, 14);
  const std::string path = temp_path("chunks.bin");
  Tensor<float> on_disk;
  {
    DrtDecoder<float> decoder(model, std::make_unique<MappedChunkStore<float>>(64, 16, path));
    on_disk = decoder.feed(tokens, all_rows(5 * 63), 100);
    EXPECT_EQ(std::filesystem::file_size(path), 5u * decoder.chunk_store().chunk_bytes());
    EXPECT_EQ(decoder.chunk_store().resident_bytes(), 0u);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_LT(max_abs_difference(on_disk, drt_batch_logits(model, tokens)), 1e-4f);
}

// Spec §9.5 as the reference runs it: greedy decoding from a 2-chunk prompt; the batch argmax at
// every generated position reproduces the generated token.
TEST(DrtDecoder, GreedyGenerationAgreesWithTheBatchArgmax) {
  const DrtModel<float> model(decoding_config(), 15);
  perturb(model, 16);
  std::vector<std::int32_t> tokens = random_ids(126, 1, 28, 17);
  DrtDecoder<float> decoder(model);
  Tensor<float> next = decoder.feed(tokens, {125}).reshape({29});
  while (tokens.size() < 252) {
    tokens.push_back(sample_token(next, SamplingOptions{}, tokens.size()));
    next = decoder.step(tokens.back());
  }
  const Tensor<float> batch = drt_batch_logits(model, tokens);
  for (Index t = 125; t < 251; ++t) {
    const Tensor<float> row = batch.select(0, t).contiguous();
    EXPECT_EQ(sample_token(row, SamplingOptions{}, 0), tokens[t + 1]) << "position " << t;
  }
}

TEST(DrtDecoder, StateStaysBoundedAsTheContextGrows) {
  ModelConfig c = decoding_config();
  c.slide_window = 16;
  const DrtModel<float> model(c, 18);
  DrtDecoder<float> decoder(model);
  decoder.feed(random_ids(63 * 2, 1, 28, 19), {});
  const std::size_t early = decoder.state_bytes();
  decoder.feed(random_ids(63 * 40, 1, 28, 20), {}, 300);
  EXPECT_EQ(decoder.state_bytes(), early);                         // caches: W entries per layer
  EXPECT_EQ(decoder.chunk_store().size(), 42);                     // only the chunk memory grows
  EXPECT_EQ(decoder.chunk_store().resident_bytes(), 42u * decoder.chunk_store().chunk_bytes());
}

TEST(BaselineDecoder, MatchesTheBatchForwardInAnySegments) {
  ModelConfig c = decoding_config();
  c.slide_window = 24;
  const SlidingWindowLM<float> model(c, 21);
  perturb(model, 22);
  std::vector<std::int32_t> tokens = random_ids(300, 0, 29, 23);
  tokens[7] = -100;  // read as id 0, as in the batch path
  Tensor<float> batch;
  {
    NoGradGuard no_grad;
    batch = model.logits(IndexTensor::from({1, 300}, tokens)).value().reshape({300, 29}).clone();
    tape().reset();
  }
  for (Index segment : {1, 23, 300}) {
    BaselineDecoder<float> decoder(model);
    EXPECT_LT(max_abs_difference(decoder.feed(tokens, all_rows(300), segment), batch), 1e-4f) << segment;
  }
}

TEST(SelectChunks, TopKOfTheVisibleChunksWithSoftmaxWeights) {
  const std::vector<float> scores = {0.5f, 2.0f, -1.0f, 2.0f, 9.0f};
  // Chunk 4's landmark sees chunks 0..3; ties go to the earlier chunk.
  ChunkRetrieval<float> r = select_chunks(scores.data(), 4, 2);
  EXPECT_EQ(r.index, (std::vector<std::int32_t>{1, 3}));
  EXPECT_NEAR(r.weight[0], 0.5f, 1e-6f);
  // Fewer visible chunks than k: the rest stay empty.
  r = select_chunks(scores.data(), 1, 3);
  EXPECT_EQ(r.index, (std::vector<std::int32_t>{0, -1, -1}));
  EXPECT_EQ(r.weight, (std::vector<float>{1.0f, 0.0f, 0.0f}));
  EXPECT_TRUE(select_chunks(scores.data(), 0, 2).empty());
  r = select_chunks(scores.data(), 3, 2);
  EXPECT_NEAR(r.weight[0], 1.0f / (1.0f + std::exp(-1.5f)), 1e-6f);
}

TEST(ChunkStore, FileAndMemoryStoresReadBackWhatWasWritten) {
  const std::string path = temp_path("store.bin");
  MappedChunkStore<float> file(3, 4, path);
  MemoryChunkStore<float> memory(3, 4);
  for (int e = 0; e < 50; ++e) {  // enough chunks to grow the map several times
    std::vector<float> k(12), v(12), lm(4);
    for (int i = 0; i < 12; ++i) k[i] = e * 100.0f + i, v[i] = -k[i];
    for (int i = 0; i < 4; ++i) lm[i] = e + 0.25f * i;
    file.append(k.data(), v.data(), lm.data());
    memory.append(k.data(), v.data(), lm.data());
    std::vector<float> fk(12), fv(12), mk(12), mv(12);
    for (int back : {0, e / 2}) {
      file.read(e - back, fk.data(), fv.data());
      memory.read(e - back, mk.data(), mv.data());
      EXPECT_EQ(fk, mk);
      EXPECT_EQ(fv, mv);
      EXPECT_EQ(fk[5], (e - back) * 100.0f + 5);
    }
  }
  EXPECT_EQ(file.size(), 50);
  EXPECT_EQ(file.landmarks()[49 * 4 + 2], 49.5f);
  std::vector<float> k(12), v(12);
  EXPECT_THROW(file.read(50, k.data(), v.data()), Error);
  try {
    MappedChunkStore<float> bad(3, 4, "/nonexistent-dir/chunks.bin");
    FAIL() << "no error for a path that cannot be created";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/chunks.bin"), std::string::npos) << e.what();
  }
}

TEST(Sampling, GreedyTopKTopPAndSeeds) {
  const Tensor<float> logits = Tensor<float>::from({5}, {1.0f, 3.0f, 2.0f, 3.0f, -1.0f});
  EXPECT_EQ(sample_token(logits, SamplingOptions{}, 0), 1);  // ties to the lower id
  SamplingOptions top1{1.0, 1, 1.0, 7};
  for (std::uint64_t s = 0; s < 20; ++s) EXPECT_EQ(sample_token(logits, top1, s), 1);
  SamplingOptions nucleus{1.0, 0, 0.5, 7};  // p(1) = p(3) ≈ 0.41: the nucleus is {1, 3}
  std::set<std::int32_t> seen;
  for (std::uint64_t s = 0; s < 200; ++s) seen.insert(sample_token(logits, nucleus, s));
  EXPECT_EQ(seen, (std::set<std::int32_t>{1, 3}));
  SamplingOptions warm{1.0, 0, 1.0, 7};
  seen.clear();
  for (std::uint64_t s = 0; s < 2000; ++s) seen.insert(sample_token(logits, warm, s));
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(sample_token(logits, warm, 11), sample_token(logits, warm, 11));  // a pure function of (seed, step)
  EXPECT_THROW((SamplingOptions{-1.0, 0, 1.0, 0}.validate()), Error);
  EXPECT_THROW((SamplingOptions{1.0, 0, 0.0, 0}.validate()), Error);
}
