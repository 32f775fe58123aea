// The smallest whole program: build a DRT from a config, train it on a few verses, then sample.
#include <cstdio>
#include <drt/model.hpp>
#include <string>

using namespace drt;

int main() {
  ModelConfig config;  // a tiny DRT over bytes: ids 0..255, then the pad and landmark ids
  config.hidden_size = 64, config.num_attention_heads = 2, config.num_key_value_heads = 1;
  config.intermediate_size = 128, config.vocab_size = 258, config.pad_id = 256, config.chunk_id = 257;
  config.enc_chunk_size = 63, config.chunk_topk = 2, config.slide_window = 64;
  config.encoder_layers = 1, config.decoder_layers = {1, 1};
  config.validate("train_and_sample");
  DrtModel<float> model(config, /*seed=*/1);
  const auto params = parameter_pointers(model.named_parameters());
  AdamW<float> optimiser(params, {.lr = 3e-3});

  const std::string text =
      "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
      "and darkness was upon the face of the deep. And God said, Let there be light: and there was light. ";
  const Index batch = 8, length = 2 * config.enc_chunk_size;  // two chunks per sequence
  Generator rng(7);
  for (int step = 1; step <= 300; ++step) {
    IndexTensor tokens = IndexTensor::empty({batch, length});
    for (Index b = 0; b < batch; ++b) {  // a random window of the (repeated) text
      const std::size_t start = rng.draw() % text.size();
      for (Index t = 0; t < length; ++t) tokens(b, t) = static_cast<unsigned char>(text[(start + t) % text.size()]);
    }
    const Var<float> loss = model.loss(tokens, {.training = true, .noise_seed = static_cast<std::uint64_t>(step)});
    const float value = loss.item();
    backward(loss);
    clip_grad_norm(params, 1.0);
    optimiser.step();
    optimiser.zero_grad();
    tape().reset();
    if (step % 50 == 0) std::printf("step %3d  loss %.3f\n", step, value);
  }

  // Greedy sampling with the incremental decoder: the prompt once, then one token per step
  // (docs/inference.md). The model never emits its landmark or pad id, so only bytes are asked.
  DrtDecoder<float> decoder(model);
  std::string sample = "In the beginning";
  Tensor<float> next = decoder.feed(std::vector<std::int32_t>(sample.begin(), sample.end()), {Index(sample.size()) - 1});
  for (int i = 0; i < 100; ++i) {
    const auto byte = sample_token(next.reshape({config.vocab_size}).slice(0, 0, 256).contiguous(), SamplingOptions{}, i);
    sample += static_cast<char>(byte);
    next = decoder.step(byte);
  }
  std::printf("sample: %s\n", sample.c_str());
}
