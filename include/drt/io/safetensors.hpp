// drt/io/safetensors.hpp — reading and writing .safetensors files (the Hugging Face format).
//
// Layout: an 8-byte little-endian header length n, then n bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the raw little-endian tensor data; offsets are relative to the start of that data.
// drt reads F32, F64, BF16 and F16 and writes F32 or BF16. Every problem found while reading
// names the file and the tensor.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "drt/core/tensor.hpp"
#include "drt/io/bfloat16.hpp"
#include "drt/io/file.hpp"

namespace drt::io {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "BF16", ...
  Shape shape;
  std::size_t begin = 0, end = 0;  // byte range inside the data section
};

inline std::size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

inline float half_to_float(std::uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  float v;
  if (exponent == 0) v = std::ldexp(float(mantissa), -24);
  else if (exponent == 31) v = mantissa ? NAN : INFINITY;
  else v = std::ldexp(float(mantissa | 0x400), exponent - 25);
  return sign ? -v : v;
}

class SafetensorsFile {
 public:
  static SafetensorsFile read(const std::string& path) {
    SafetensorsFile f;
    f.path_ = path;
    f.bytes_ = read_file(path);
    const std::vector<char>& b = f.bytes_;
    DRT_CHECK(b.size() >= 8, path, ": not a safetensors file (", b.size(), " bytes, shorter than the 8-byte header length)");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(b[i]);
    DRT_CHECK(n <= b.size() - 8, path, ": header length ", n, " exceeds the file size ", b.size());
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    } catch (const nlohmann::json::exception& e) {
      DRT_CHECK(false, path, ": the header is not valid JSON (", e.what(), ")");
    }
    DRT_CHECK(header.is_object(), path, ": the header is not a JSON object");
    f.data_begin_ = 8 + n;
    const std::size_t data_size = b.size() - f.data_begin_;
    for (auto& [name, desc] : header.items()) {
      if (name == "__metadata__") {
        if (desc.is_object())
          for (auto& [k, v] : desc.items()) f.metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
        continue;
      }
      DRT_CHECK(desc.is_object() && desc.contains("dtype") && desc.contains("shape") && desc.contains("data_offsets"),
                path, ": tensor '", name, "' lacks dtype, shape or data_offsets");
      SafetensorsEntry e;
      e.dtype = desc["dtype"].get<std::string>();
      DRT_CHECK(dtype_size(e.dtype) > 0, path, ": tensor '", name, "' has unsupported dtype ", e.dtype);
      for (const auto& d : desc["shape"]) e.shape.push_back(d.get<Index>());
      e.begin = desc["data_offsets"][0].get<std::size_t>();
      e.end = desc["data_offsets"][1].get<std::size_t>();
      DRT_CHECK(e.begin <= e.end && e.end <= data_size, path, ": tensor '", name, "' has data offsets [", e.begin, ", ",
                e.end, ") outside the data section of ", data_size, " bytes");
      DRT_CHECK(static_cast<std::size_t>(e.shape.numel()) * dtype_size(e.dtype) == e.end - e.begin, path, ": tensor '",
                name, "' of shape ", e.shape.str(), " and dtype ", e.dtype, " needs ",
                e.shape.numel() * Index(dtype_size(e.dtype)), " bytes but has ", e.end - e.begin);
      f.entries_[name] = e;
    }
    return f;
  }

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    DRT_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "'");
    return it->second;
  }

  // The tensor converted to T (a fresh heap tensor).
  template <class T>
  Tensor<T> tensor(const std::string& name) const {
    const SafetensorsEntry& e = entry(name);
    Tensor<T> out = Tensor<T>::empty(e.shape);
    const char* src = bytes_.data() + data_begin_ + e.begin;
    const Index n = e.shape.numel();
    for (Index i = 0; i < n; ++i) out.data()[i] = static_cast<T>(element(e.dtype, src, i));
    return out;
  }

 private:
  static double element(const std::string& dtype, const char* src, Index i) {
    if (dtype == "F32") { float v; std::memcpy(&v, src + 4 * i, 4); return v; }
    if (dtype == "F64") { double v; std::memcpy(&v, src + 8 * i, 8); return v; }
    if (dtype == "I32") { std::int32_t v; std::memcpy(&v, src + 4 * i, 4); return v; }
    if (dtype == "I64") { std::int64_t v; std::memcpy(&v, src + 8 * i, 8); return static_cast<double>(v); }
    std::uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return dtype == "BF16" ? bfloat16_to_float(h) : half_to_float(h);
  }

  std::string path_;
  std::vector<char> bytes_;
  std::size_t data_begin_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Collects named tensors, then writes them in one atomic step. Names are written in sorted
// order (as the Python library does), so equal contents give byte-identical files.
class SafetensorsWriter {
 public:
  // dtype "F32" or "BF16"; the tensor is copied now (later changes don't leak into the file).
  template <class T>
  void add(const std::string& name, const Tensor<T>& t, const std::string& dtype = "F32") {
    DRT_CHECK(dtype == "F32" || dtype == "BF16", "safetensors: cannot write dtype ", dtype, " (F32 or BF16 only)");
    DRT_CHECK(!tensors_.count(name), "safetensors: tensor '", name, "' added twice");
    Pending p{dtype, t.shape(), {}};
    const std::vector<T> values = t.to_vector();
    p.bytes.resize(values.size() * dtype_size(dtype));
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (dtype == "F32") {
        const float v = static_cast<float>(values[i]);
        std::memcpy(p.bytes.data() + 4 * i, &v, 4);
      } else {
        const std::uint16_t h = float_to_bfloat16(static_cast<float>(values[i]));
        std::memcpy(p.bytes.data() + 2 * i, &h, 2);
      }
    }
    tensors_[name] = std::move(p);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void write(const std::string& path) const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& [name, p] : tensors_) {
      std::vector<Index> shape(p.shape.begin(), p.shape.end());
      header[name] = {{"dtype", p.dtype}, {"shape", shape}, {"data_offsets", {offset, offset + p.bytes.size()}}};
      offset += p.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned, as the reference writer does
    write_file_atomically(path, [&](std::FILE* f) {
      unsigned char len[8];
      for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((text.size() >> (8 * i)) & 0xFF);
      write_bytes(f, len, 8);
      write_bytes(f, text.data(), text.size());
      for (const auto& [name, p] : tensors_) write_bytes(f, p.bytes.data(), p.bytes.size());
    });
  }

 private:
  struct Pending {
    std::string dtype;
    Shape shape;
    std::vector<char> bytes;
  };
  std::map<std::string, Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace drt::io
