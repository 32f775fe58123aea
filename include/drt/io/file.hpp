// drt/io/file.hpp — whole-file reads and crash-safe writes.
//
// write_file_atomically() writes to "<path>.tmp.<pid>" in the same folder, flushes it to disk and
// renames it over <path>. A run that dies half-way leaves the previous file untouched: rename is
// atomic on POSIX file systems, so readers see either the old file or the new one, never a mix.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "drt/core/error.hpp"

namespace drt::io {

inline std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  DRT_CHECK(in.good(), path, ": cannot open for reading (", std::strerror(errno), ")");
  const std::streamsize size = in.tellg();
  std::vector<char> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  DRT_CHECK(in.read(bytes.data(), size).good() || size == 0, path, ": read failed");
  return bytes;
}

// Calls write(file) to produce the content, then atomically replaces `path` with it.
inline void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  DRT_CHECK(f, path, ": cannot create temporary file ", tmp, " (", std::strerror(errno), ")");
  try {
    write(f);
    DRT_CHECK(std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0, path, ": writing ", tmp, " failed (",
              std::strerror(errno), ")");
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  DRT_CHECK(std::fclose(f) == 0, path, ": closing ", tmp, " failed");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    DRT_CHECK(false, path, ": cannot rename ", tmp, " into place (", why, ")");
  }
}

inline void write_bytes(std::FILE* f, const void* data, std::size_t n) {
  DRT_CHECK(std::fwrite(data, 1, n, f) == n, "write failed (", std::strerror(errno), ")");
}

}  // namespace drt::io
