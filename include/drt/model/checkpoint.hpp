// drt/model/checkpoint.hpp — model weights in safetensors under the reference's state_dict names.
//
// Files written by drt contain every parameter, the ALiBi slope buffers ("...self_attn.m") and,
// for a tied model, lm_head.weight as a copy of model.embed_tokens.weight, exactly the keys of
// the reference's state_dict, so the authors' code loads them with strict=True. Reading accepts
// the reference's files as they are: a "module." prefix (from DistributedDataParallel) is
// stripped, the slope buffers and the tied lm_head.weight may be present or absent, and F32, BF16,
// F16 or F64 data are converted. Anything else is an error that names the tensor: a missing one,
// one of the wrong shape, or one the model does not have.
#pragma once

#include <map>
#include <set>
#include <string>

#include "drt/io/safetensors.hpp"
#include "drt/model/parameters.hpp"

namespace drt {

// The model type needs named_parameters(), named_buffers() and config().
template <class Model>
void save_weights(const Model& model, const std::string& path, const std::string& dtype = "F32") {
  io::SafetensorsWriter out;
  for (const auto& p : model.named_parameters()) out.add(p.name, p.parameter->value(), dtype);
  for (const auto& [name, buffer] : model.named_buffers()) out.add(name, *buffer, "F32");  // fp32, as the reference keeps them
  if (model.config().tie_word_embeddings) out.add(model.tied_head_name(), model.named_parameters().front().parameter->value(), dtype);
  out.set_metadata("format", "pt");
  out.write(path);
}

template <class Model>
void load_weights(Model& model, const std::string& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  // Names in the file, without a DistributedDataParallel "module." prefix.
  std::map<std::string, std::string> stored;  // our name → name in the file
  for (const auto& [name, entry] : file.entries()) {
    const std::string plain = name.rfind("module.", 0) == 0 ? name.substr(7) : name;
    DRT_CHECK(!stored.count(plain), path, ": tensor '", plain, "' appears twice (with and without 'module.')");
    stored[plain] = name;
  }
  // A tied model whose file kept only one of the two shared names (safetensors' save_model drops
  // duplicates) reads the embedding from lm_head.weight.
  const std::string embedding_name = model.named_parameters().front().name;
  if (model.config().tie_word_embeddings && !stored.count(embedding_name) && stored.count(model.tied_head_name())) {
    stored[embedding_name] = stored[model.tied_head_name()];
    stored.erase(model.tied_head_name());
  }
  std::set<std::string> used;
  auto take = [&](const std::string& name, const Shape& expected) -> std::string {
    auto it = stored.find(name);
    DRT_CHECK(it != stored.end(), path, ": missing tensor '", name, "' of shape ", expected.str());
    const Shape& got = file.entry(it->second).shape;
    DRT_CHECK(got == expected, path, ": tensor '", name, "' has shape ", got.str(), " but the model needs ", expected.str());
    used.insert(name);
    return it->second;
  };
  for (const auto& p : model.named_parameters()) {
    using T = typename std::remove_reference_t<decltype(p.parameter->value())>::value_type;
    p.parameter->value().copy_from(file.template tensor<T>(take(p.name, p.parameter->value().shape())));
  }
  for (const auto& [name, buffer] : model.named_buffers()) {
    using T = typename std::remove_reference_t<decltype(*buffer)>::value_type;
    if (stored.count(name)) buffer->copy_from(file.template tensor<T>(take(name, buffer->shape())));
  }
  if (model.config().tie_word_embeddings && stored.count(model.tied_head_name())) {
    const auto& embedding = model.named_parameters().front().parameter->value();
    using T = typename std::remove_reference_t<decltype(embedding)>::value_type;
    const Tensor<T> head = file.template tensor<T>(take(model.tied_head_name(), embedding.shape()));
    const std::vector<T> a = head.to_vector(), b = embedding.to_vector();
    DRT_CHECK(a == b, path, ": '", model.tied_head_name(), "' differs from '", model.named_parameters().front().name,
              "' although the config ties them (tie_word_embeddings)");
  }
  for (const auto& [name, in_file] : stored)
    DRT_CHECK(used.count(name), path, ": unexpected tensor '", in_file, "': the model has no such parameter or buffer");
}

}  // namespace drt
