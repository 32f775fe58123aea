// GPU decoding (cuda/inference/, inference/*): the decode kernels against the CPU ops, and whole
// decoders on the GPU against the same decoders on the CPU, token by token and in segments, with
// the step recorded as a CUDA graph and without.
#include <drt/model.hpp>

#include "gpu_test.hpp"
#include "../support/decoding.hpp"

using namespace drt;
using drt::test_support::all_rows;
using drt::test_support::perturb;
using drt::test_support::random_ids;
using drt::gpu_test::Gpu;
using drt::gpu_test::max_abs_difference;
using drt::gpu_test::uniform;

namespace {

using DecodeKernels = Gpu;
using GpuDecoding = Gpu;

// d = 16 and W = 40 < S: the rings wrap many times; two retrieval groups; chunks of 63 tokens.
ModelConfig small_config() {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 96;
  c.vocab_size = 50;
  c.enc_chunk_size = 63;
  c.chunk_topk = 2;
  c.slide_window = 40;
  c.encoder_layers = 1;
  c.decoder_layers = {1, 1, 1};
  c.pad_id = 0;
  c.chunk_id = 49;
  c.tie_word_embeddings = true;
  c.initializer_range = 0.3;
  return c;
}

// The same ring on the host and on the device after pushing `filled` random positions.
struct CachePair {
  WindowKvCache<float> host, device;
  CachePair(Index W, Index Hkv, Index d, Index filled, std::uint64_t seed)
      : host(W, Hkv, d), device(W, Hkv, d, Device::cuda) {
    NoGradGuard no_grad;
    for (Index done = 0; done < filled;) {  // in pieces of up to 29 rows, so that pushes wrap
      const Index n = std::min<Index>(29, filled - done);
      const Tensor<float> k = uniform<float>({n, Hkv, d}, seed + 2 * done), v = uniform<float>({n, Hkv, d}, seed + 2 * done + 1);
      host.push(k, v);
      device.push(k.to(Device::cuda), v.to(Device::cuda));
      done += n;
    }
  }
};

}  // namespace

// Both ways the GPU attends over the cache (the kernel for a few rows, the training op over
// [cache ; segment] for long ones) against the CPU loop, with the ring empty, partly filled and
// wrapped, for 1, 5 and 100 new rows; with W = 40 a row's keys fit one tile of the decode kernel,
// with W = 150 they take three (64 + 64 + 23) that the merge must put together; d = 96 leaves
// threads of the value pass idle (256 is not a multiple of it).
TEST_F(DecodeKernels, CachedAttentionMatchesTheCpu) {
  const Index H = 4, Hkv = 2;
  const Tensor<float> slopes = alibi_slopes<float>(int(H));
  for (const auto& [W, d] :
       {std::pair<Index, Index>{40, 16}, std::pair<Index, Index>{150, 64}, std::pair<Index, Index>{70, 96}})
    for (const Index filled : {Index(0), Index(17), Index(133), Index(400)})
      for (const Index L : {Index(1), Index(5), Index(100)}) {
        NoGradGuard no_grad;
        CachePair caches(W, Hkv, d, filled, 100 + filled);
        const Tensor<float> q = uniform<float>({L, H, d}, 1), k = uniform<float>({L, Hkv, d}, 2), v = uniform<float>({L, Hkv, d}, 3);
        const Tensor<float> cpu = cached_attention(q, k, v, caches.host, slopes, 0.25f);
        const Tensor<float> gpu = cached_attention(q.to(Device::cuda), k.to(Device::cuda), v.to(Device::cuda), caches.device,
                                                   slopes.to(Device::cuda), 0.25f);
        EXPECT_LT(max_abs_difference(cpu, gpu.to(Device::cpu)), 2e-5) << "W " << W << ", filled " << filled << ", L " << L;
        // And the push that follows leaves the same ring.
        caches.host.push(k, v);
        caches.device.push(k.to(Device::cuda), v.to(Device::cuda));
        EXPECT_EQ(caches.device.next_position(), caches.host.next_position());
        EXPECT_EQ(max_abs_difference(caches.host.keys(), caches.device.keys().to(Device::cpu)), 0.0);
        EXPECT_EQ(max_abs_difference(caches.host.values(), caches.device.values().to(Device::cpu)), 0.0);
        tape().reset();
      }
}

// The position may come from device memory (what a replayed graph sees): the kernels must read
// it there, not the host's p0 (given wrong on purpose), and the host count is left for note_pushed().
TEST_F(DecodeKernels, PositionReadFromTheDevice) {
  NoGradGuard no_grad;
  const Index W = 40, H = 4, Hkv = 2, d = 16;
  const Tensor<float> slopes = alibi_slopes<float>(int(H)).to(Device::cuda);
  CachePair a(W, Hkv, d, 57, 7), b(W, Hkv, d, 57, 7);
  const Tensor<float> q = uniform<float>({1, H, d}, 1).to(Device::cuda), k = uniform<float>({1, Hkv, d}, 2).to(Device::cuda),
                      v = uniform<float>({1, Hkv, d}, 3).to(Device::cuda);
  const IndexTensor position = IndexTensor::from({1}, {57}).to(Device::cuda);
  const Tensor<float> from_host = cached_attention(q, k, v, a.device, slopes, 0.25f);
  Tensor<float> from_device = Tensor<float>::empty({1, H, d}, nullptr, Device::cuda);
  cuda::decode::cached_window_attention(q, k, v, b.device.keys(), b.device.values(), slopes, 0.25f, /*p0=*/0,
                                        position.data(), from_device);
  EXPECT_EQ(max_abs_difference(from_host.to(Device::cpu), from_device.to(Device::cpu)), 0.0);
  a.device.push(k, v);
  cuda::decode::push_to_window_cache(k, v, b.device.keys(), b.device.values(), /*p0=*/0, position.data());
  EXPECT_EQ(max_abs_difference(a.device.keys().to(Device::cpu), b.device.keys().to(Device::cpu)), 0.0);
  EXPECT_EQ(max_abs_difference(a.device.values().to(Device::cpu), b.device.values().to(Device::cpu)), 0.0);
  // Through the cache: with a device position the host count waits for note_pushed().
  CachePair c(W, Hkv, d, 57, 7);
  c.device.push(k, v, position.data());
  EXPECT_EQ(c.device.next_position(), 57);
  c.device.note_pushed(1);
  EXPECT_EQ(c.device.next_position(), a.device.next_position());
  tape().reset();
}

// GCA's inference variant (2 query rows, k = 4 slots, one empty, one with weight 0) against the
// training op on the CPU; chunks of 64 keys are one tile of the decode kernel, chunks of 100 two.
TEST_F(DecodeKernels, GcaDecodeMatchesTheCpuOp) {
  for (const auto& [N, d] : {std::pair<Index, Index>{64, 16}, std::pair<Index, Index>{100, 64}}) {
    SCOPED_TRACE("N " + std::to_string(N) + ", d " + std::to_string(d));
    NoGradGuard no_grad;
    const Index R = 2, H = 4, U = 3, k = 4;
    const Tensor<float> q = uniform<float>({R, H, d}, 11), keys = uniform<float>({U, N, H, d}, 12),
                        values = uniform<float>({U, N, H, d}, 13);
    const std::vector<std::int32_t> slots = {2, -1, 0, 1};
    const std::vector<float> weights = {0.5f, 0.0f, 0.3f, 0.0f};
    const float scale = 0.25f;
    // The CPU op: Z = 1, M = R, memory (1, U, N, H, d); slot −1 becomes weight 0 on slot 0.
    const Tensor<float> q_op = q.permute({1, 0, 2}).contiguous().reshape({1, H, R, d});
    IndexTensor index = IndexTensor::from({1, k}, {2, 0, 0, 1});
    const Tensor<float> weight = Tensor<float>::from({1, k}, weights);
    const Tensor<float> cpu = gca(constant(q_op), constant(keys.reshape({1, U, N, H, d})),
                                  constant(values.reshape({1, U, N, H, d})), index, constant(weight), scale)
                                  .value()
                                  .reshape({H, R, d})
                                  .permute({1, 0, 2})
                                  .contiguous();
    Tensor<float> gpu = Tensor<float>::empty({R, H, d}, nullptr, Device::cuda);
    cuda::decode::gca_decode(q.to(Device::cuda), keys.to(Device::cuda), values.to(Device::cuda),
                             IndexTensor::from({k}, slots).to(Device::cuda), Tensor<float>::from({k}, weights).to(Device::cuda),
                             scale, gpu);
    EXPECT_LT(max_abs_difference(cpu, gpu.to(Device::cpu)), 2e-6);
    EXPECT_GT(max_abs_difference(cpu, Tensor<float>::zeros(cpu.shape())), 1e-2);  // not trivially zero
    tape().reset();
  }
}

// The whole DRT decoder: GPU against CPU on a prompt fed in one long segment (the training
// kernel path), then in short segments (the decode kernel path), then token by token across
// several chunk boundaries, where the GPU replays recorded graphs. The bound allows fp32's
// different summation orders through 5 layers and 330 positions (the worst seen is about 1e-4
// on logits of size ~10); a wrong mask, position or retrieval moves logits by O(1).
TEST_F(GpuDecoding, DrtDecoderMatchesTheCpu) {
  const ModelConfig c = small_config();
  DrtModel<float> cpu_model(c, 3), gpu_model(c, 3);
  perturb(cpu_model, 5);
  perturb(gpu_model, 5);
  gpu_model.move_to(Device::cuda);
  const std::vector<std::int32_t> prompt = random_ids(150, 1, 49, 21), more = random_ids(40, 1, 49, 22),
                                   tokens = random_ids(140, 1, 49, 23);
  DrtDecoder<float> on_cpu(cpu_model), on_gpu(gpu_model);
  const double bound = 1e-3;
  EXPECT_LT(max_abs_difference(on_cpu.feed(prompt, all_rows(150)), on_gpu.feed(prompt, all_rows(150))), bound);
  EXPECT_LT(max_abs_difference(on_cpu.feed(more, all_rows(40), 7), on_gpu.feed(more, all_rows(40), 7)), bound);
  double worst = 0;
  for (const std::int32_t t : tokens) worst = std::max(worst, max_abs_difference(on_cpu.step(t), on_gpu.step(t)));
  EXPECT_LT(worst, bound);
  EXPECT_EQ(on_gpu.positions(), on_cpu.positions());
  EXPECT_EQ(on_gpu.chunk_store().size(), on_cpu.chunk_store().size());
  // 140 steps cross two chunk boundaries: a graph per chunk, each standing for many launches.
  EXPECT_GE(on_gpu.step_graph_recordings(), 2);
  EXPECT_LE(on_gpu.step_graph_recordings(), 4);
  EXPECT_GT(on_gpu.step_graph_launches(), 30u);
}

// The replayed graph and the same step issued kernel by kernel give the same logits, in fp32 and
// in bf16 mode, with steps before any feed and a feed between steps.
TEST_F(GpuDecoding, GraphReplayEqualsTheStepRunOpByOp) {
  const ModelConfig c = small_config();
  DrtModel<float> model(c, 4);
  perturb(model, 6);
  model.move_to(Device::cuda);
  for (const Precision precision : {Precision::fp32, Precision::bf16}) {
    MatmulPrecisionScope scope(precision);
    DrtDecoder<float> replayed(model), op_by_op(model);
    op_by_op.use_step_graph(false);
    const std::vector<std::int32_t> first = random_ids(20, 1, 49, 30), prompt = random_ids(100, 1, 49, 31),
                                     tokens = random_ids(90, 1, 49, 32);
    double worst = 0;
    for (const std::int32_t t : first) worst = std::max(worst, max_abs_difference(replayed.step(t), op_by_op.step(t)));
    worst = std::max(worst, max_abs_difference(replayed.feed(prompt, all_rows(100)), op_by_op.feed(prompt, all_rows(100))));
    for (const std::int32_t t : tokens) worst = std::max(worst, max_abs_difference(replayed.step(t), op_by_op.step(t)));
    EXPECT_LE(worst, 1e-6) << precision_name(precision);
    EXPECT_EQ(op_by_op.step_graph_recordings(), 0);
    EXPECT_GE(replayed.step_graph_recordings(), 3);
    EXPECT_THROW(replayed.step(c.vocab_size), Error);  // a token outside the vocabulary
  }
}

// Steps before the first feed and a feed between steps: the GPU follows the CPU.
TEST_F(GpuDecoding, StepsAndFeedsInterleavedMatchTheCpu) {
  const ModelConfig c = small_config();
  DrtModel<float> cpu_model(c, 12), gpu_model(c, 12);
  perturb(cpu_model, 13);
  perturb(gpu_model, 13);
  gpu_model.move_to(Device::cuda);
  DrtDecoder<float> on_cpu(cpu_model), on_gpu(gpu_model);
  double worst = 0;
  for (const std::int32_t t : random_ids(70, 1, 49, 61)) worst = std::max(worst, max_abs_difference(on_cpu.step(t), on_gpu.step(t)));
  const std::vector<std::int32_t> middle = random_ids(90, 1, 49, 62);
  worst = std::max(worst, max_abs_difference(on_cpu.feed(middle, all_rows(90), 33), on_gpu.feed(middle, all_rows(90), 33)));
  for (const std::int32_t t : random_ids(70, 1, 49, 63)) worst = std::max(worst, max_abs_difference(on_cpu.step(t), on_gpu.step(t)));
  EXPECT_LT(worst, 1e-3);
}

// Chunks kept on the device (read in place by GCA) give the logits of chunks streamed from the
// store, in a prefill and in recorded steps; the store then stays empty.
TEST_F(GpuDecoding, ChunksKeptOnTheDeviceGiveTheSameLogits) {
  const ModelConfig c = small_config();
  DrtModel<float> model(c, 10);
  perturb(model, 11);
  model.move_to(Device::cuda);
  DrtDecoder<float> streamed(model), in_place(model);
  in_place.keep_chunks_on_device(true);
  const std::vector<std::int32_t> prompt = random_ids(300, 1, 49, 51), tokens = random_ids(80, 1, 49, 52);
  EXPECT_LT(max_abs_difference(streamed.feed(prompt, all_rows(300), 100), in_place.feed(prompt, all_rows(300), 100)), 1e-5);
  double worst = 0;
  for (const std::int32_t t : tokens) worst = std::max(worst, max_abs_difference(streamed.step(t), in_place.step(t)));
  EXPECT_LT(worst, 1e-5);
  EXPECT_EQ(in_place.chunk_store().size(), 0);
  EXPECT_EQ(in_place.stored_chunks(), streamed.chunk_store().size());
  EXPECT_GT(in_place.stored_chunks(), 4);
  EXPECT_THROW(in_place.keep_chunks_on_device(false), Error);  // chunks are stored already
}

// Retrieval with bounded GPU memory: 3 landmarks mirrored on the device, scores in blocks of 4
// chunks (one mirrored block, then blocks streamed from the store, one of them partial), over 15
// stored chunks. The same retrievals and logits as the CPU's exact scan, in a prefill and in steps.
TEST_F(GpuDecoding, RetrievalInBoundedBlocksMatchesTheCpu) {
  const ModelConfig c = small_config();
  DrtModel<float> cpu_model(c, 14), gpu_model(c, 14);
  perturb(cpu_model, 15);
  perturb(gpu_model, 15);
  gpu_model.move_to(Device::cuda);
  DrtDecoder<float> on_cpu(cpu_model), on_gpu(gpu_model);
  EXPECT_THROW(on_gpu.bound_retrieval_memory(-1, 4), Error);
  EXPECT_THROW(on_gpu.bound_retrieval_memory(3, 0), Error);
  on_gpu.bound_retrieval_memory(3, 4);
  const std::vector<std::int32_t> prompt = random_ids(900, 1, 49, 71), tokens = random_ids(80, 1, 49, 72);
  EXPECT_LT(max_abs_difference(on_cpu.feed(prompt, all_rows(900), 200), on_gpu.feed(prompt, all_rows(900), 200)), 1e-3);
  double worst = 0;
  for (const std::int32_t t : tokens) worst = std::max(worst, max_abs_difference(on_cpu.step(t), on_gpu.step(t)));
  EXPECT_LT(worst, 1e-3);
  EXPECT_EQ(on_gpu.chunk_store().size(), on_cpu.chunk_store().size());
  EXPECT_GE(on_gpu.chunk_store().size(), 15);
  EXPECT_EQ(on_gpu.mirrored_landmarks(), 3);
  for (int g = 0; g < c.groups(); ++g) {
    EXPECT_EQ(on_gpu.current_retrieval(g).index, on_cpu.current_retrieval(g).index) << "group " << g;
    EXPECT_GT(*std::max_element(on_gpu.current_retrieval(g).index.begin(), on_gpu.current_retrieval(g).index.end()), -1);
  }
  EXPECT_THROW(on_gpu.bound_retrieval_memory(3, 4), Error);  // chunks are stored already
}

// The baseline's decoder runs on the GPU too (window caches only).
TEST_F(GpuDecoding, BaselineDecoderMatchesTheCpu) {
  ModelConfig c = small_config();
  c.decoder_layers = {2};
  SlidingWindowLM<float> cpu_model(c, 8), gpu_model(c, 8);
  perturb(cpu_model, 9);
  perturb(gpu_model, 9);
  gpu_model.move_to(Device::cuda);
  BaselineDecoder<float> on_cpu(cpu_model), on_gpu(gpu_model);
  const std::vector<std::int32_t> prompt = random_ids(120, 1, 49, 41);
  EXPECT_LT(max_abs_difference(on_cpu.feed(prompt, all_rows(120)), on_gpu.feed(prompt, all_rows(120))), 1e-4);
  double worst = 0;
  for (const std::int32_t t : random_ids(20, 1, 49, 42)) worst = std::max(worst, max_abs_difference(on_cpu.step(t), on_gpu.step(t)));
  EXPECT_LT(worst, 1e-4);
}
