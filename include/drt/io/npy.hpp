// drt/io/npy.hpp — NumPy .npy files: read int32/int64/float32/float64 arrays, write float32/int32.
//
// Format: the magic "\x93NUMPY", a version byte pair, a little-endian header length (2 bytes in
// v1, 4 in v2/v3), then a Python dict literal such as
//   {'descr': '<i8', 'fortran_order': False, 'shape': (4032,), }
// padded with spaces to a multiple of 64 bytes, then the raw C-order data.
#pragma once

#include <string>
#include <vector>

#include "drt/core/tensor.hpp"
#include "drt/io/file.hpp"

namespace drt::io {

struct NpyArray {
  std::string descr;  // "<i4", "<i8", "<f4", "<f8"
  Shape shape;
  std::vector<char> data;

  // The values converted to T, as a heap tensor of `shape`.
  template <class T>
  Tensor<T> as() const {
    Tensor<T> t = Tensor<T>::empty(shape);
    const Index n = shape.numel();
    for (Index i = 0; i < n; ++i) {
      if (descr == "<i4") { std::int32_t v; std::memcpy(&v, data.data() + 4 * i, 4); t.data()[i] = static_cast<T>(v); }
      else if (descr == "<i8") { std::int64_t v; std::memcpy(&v, data.data() + 8 * i, 8); t.data()[i] = static_cast<T>(v); }
      else if (descr == "<f4") { float v; std::memcpy(&v, data.data() + 4 * i, 4); t.data()[i] = static_cast<T>(v); }
      else { double v; std::memcpy(&v, data.data() + 8 * i, 8); t.data()[i] = static_cast<T>(v); }
    }
    return t;
  }
};

namespace detail {
// The text after `'key':` in the header dict, up to the next ',' at depth 0 or '}'.
inline std::string npy_field(const std::string& header, const std::string& key, const std::string& path) {
  const std::size_t at = header.find("'" + key + "'");
  DRT_CHECK(at != std::string::npos, path, ": .npy header has no '", key, "' field: ", header);
  std::size_t i = header.find(':', at) + 1;
  int depth = 0;
  std::string value;
  for (; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    value += c;
  }
  const std::size_t b = value.find_first_not_of(" '"), e = value.find_last_not_of(" '");
  return b == std::string::npos ? "" : value.substr(b, e - b + 1);
}
}  // namespace detail

inline NpyArray read_npy(const std::string& path) {
  const std::vector<char> bytes = read_file(path);
  DRT_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), "\x93NUMPY", 6) == 0, path, ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  DRT_CHECK(major >= 1 && major <= 3, path, ": unsupported .npy version ", major);
  std::size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    start = 10;
  } else {
    DRT_CHECK(bytes.size() >= 12, path, ": truncated .npy header");
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[8 + i]);
    start = 12;
  }
  DRT_CHECK(start + header_len <= bytes.size(), path, ": truncated .npy header");
  const std::string header(bytes.data() + start, header_len);
  NpyArray a;
  a.descr = detail::npy_field(header, "descr", path);
  DRT_CHECK(a.descr == "<i4" || a.descr == "<i8" || a.descr == "<f4" || a.descr == "<f8", path,
            ": unsupported dtype '", a.descr, "' (int32, int64, float32 or float64, little-endian)");
  DRT_CHECK(detail::npy_field(header, "fortran_order", path) == "False", path,
            ": Fortran-order arrays are not supported; save with numpy.ascontiguousarray");
  std::string shape = detail::npy_field(header, "shape", path);
  for (char& c : shape)
    if (c == '(' || c == ')' || c == ',') c = ' ';
  std::size_t pos = 0;
  while (pos < shape.size()) {
    const std::size_t next = shape.find_first_not_of(' ', pos);
    if (next == std::string::npos) break;
    std::size_t used = 0;
    a.shape.push_back(std::stoll(shape.substr(next), &used));
    pos = next + used;
  }
  const std::size_t element = (a.descr == "<i4" || a.descr == "<f4") ? 4 : 8;
  const std::size_t need = static_cast<std::size_t>(a.shape.numel()) * element;
  const std::size_t have = bytes.size() - start - header_len;
  DRT_CHECK(have == need, path, ": shape ", a.shape.str(), " of ", a.descr, " needs ", need, " data bytes, file has ", have);
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(start + header_len), bytes.end());
  return a;
}

// Writes a float32 (T = float) or int32 (T = int32_t) array, atomically.
template <class T>
void write_npy(const std::string& path, const Tensor<T>& t) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, std::int32_t>, "write_npy: float or int32 only");
  std::string shape = "(";
  for (int i = 0; i < t.rank(); ++i) shape += std::to_string(t.shape()[i]) + (t.rank() == 1 || i + 1 < t.rank() ? "," : "");
  shape += ")";
  std::string header = std::string("{'descr': '") + (std::is_same_v<T, float> ? "<f4" : "<i4") +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  const std::vector<T> values = t.to_vector();
  write_file_atomically(path, [&](std::FILE* f) {
    const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size() & 0xFF),
                                      static_cast<unsigned char>(header.size() >> 8)};
    write_bytes(f, prefix, 10);
    write_bytes(f, header.data(), header.size());
    write_bytes(f, values.data(), values.size() * sizeof(T));
  });
}

}  // namespace drt::io
