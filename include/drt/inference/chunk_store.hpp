// drt/inference/chunk_store.hpp — the chunk memory of a decoding DRT: every completed chunk's
// encoder keys/values and its landmark key (spec §9.1), in RAM or in a memory-mapped file.
//
// Shapes: E stored chunks, N keys per chunk (S, or S − 1 when the landmark row is dropped),
// H heads, d head width, D = H·d.
//   keys, values of chunk e   (N, H, d) each   the bulk: 2·N·D numbers per chunk
//   landmarks                 (E, D)           κ, the retrieval keys: D numbers per chunk
//
// The landmarks always stay in RAM: retrieval scores every one of them at each chunk boundary.
// The keys and values are read only for the k chunks a landmark retrieves, so they can live on
// disk. At D = 64 and S = 64 in fp32 a chunk holds 32 KiB of keys/values and 256 B of
// landmark: 16M tokens (266k chunks) are 8.1 GiB on disk and 65 MiB in RAM.
//
// Retrieval is exact: one pass of dot products over all E landmarks (a GEMV, E·D multiply-adds
// per chunk boundary and group; at 16M tokens and D = 64 that is 17M, a few milliseconds, every
// 63 tokens). An approximate index (IVF, HNSW) would pay off once that pass costs more than the
// 63 decoding steps it is spread over, around 10⁸–10⁹ stored chunks at this width, or much
// earlier at the paper's D = 768 on a GPU, where the decoding step itself is fast.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "drt/core/error.hpp"
#include "drt/core/tensor.hpp"

namespace drt {

template <class T>
class ChunkStore {
 public:
  // keys_per_chunk = N, width = D (= H·d).
  ChunkStore(Index keys_per_chunk, Index width) : N_(keys_per_chunk), D_(width) {
    DRT_CHECK(N_ >= 1 && D_ >= 1, "ChunkStore: ", N_, " keys per chunk and width ", D_, " must be positive");
  }
  virtual ~ChunkStore() = default;
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  Index size() const { return static_cast<Index>(landmarks_.size()) / D_; }
  Index keys_per_chunk() const { return N_; }
  Index width() const { return D_; }
  std::size_t chunk_bytes() const { return static_cast<std::size_t>(2 * N_ * D_) * sizeof(T); }

  // Appends one chunk: keys and values (N, D) each, landmark (D).
  void append(const T* keys, const T* values, const T* landmark) {
    write_chunk(size(), keys, values);
    landmarks_.insert(landmarks_.end(), landmark, landmark + D_);
  }
  // Copies chunk e's keys and values, (N, D) each, into `keys` and `values`.
  void read(Index e, T* keys, T* values) const {
    DRT_CHECK(e >= 0 && e < size(), "ChunkStore: chunk ", e, " is not stored (", size(), " chunks)");
    read_chunk(e, keys, values);
  }
  // κ of every stored chunk, (E, D) row-major.
  const T* landmarks() const { return landmarks_.data(); }

  // Bytes of keys/values held in this process's RAM (0 for the file-backed store).
  virtual std::size_t resident_bytes() const = 0;
  virtual std::string describe() const = 0;

 protected:
  virtual void write_chunk(Index e, const T* keys, const T* values) = 0;
  virtual void read_chunk(Index e, T* keys, T* values) const = 0;
  Index N_, D_;

 private:
  std::vector<T> landmarks_;
};

// Keys and values in RAM, in blocks of 64 chunks: growing never copies what is stored, so the
// peak memory is the store's size, not the 2–3× of a doubling vector.
template <class T>
class MemoryChunkStore final : public ChunkStore<T> {
 public:
  using ChunkStore<T>::ChunkStore;
  std::size_t resident_bytes() const override { return static_cast<std::size_t>(this->size()) * this->chunk_bytes(); }
  std::string describe() const override { return "in memory"; }

 protected:
  void write_chunk(Index e, const T* keys, const T* values) override {
    const Index n = this->N_ * this->D_;
    if (e % kChunksPerBlock == 0) blocks_.emplace_back(static_cast<std::size_t>(kChunksPerBlock * 2 * n));
    T* at = chunk(e);
    std::copy(keys, keys + n, at);
    std::copy(values, values + n, at + n);
  }
  void read_chunk(Index e, T* keys, T* values) const override {
    const Index n = this->N_ * this->D_;
    const T* at = const_cast<MemoryChunkStore*>(this)->chunk(e);
    std::copy(at, at + n, keys);
    std::copy(at + n, at + 2 * n, values);
  }

 private:
  static constexpr Index kChunksPerBlock = 64;
  T* chunk(Index e) { return blocks_[e / kChunksPerBlock].data() + (e % kChunksPerBlock) * 2 * this->N_ * this->D_; }
  std::vector<std::vector<T>> blocks_;
};

// Keys and values in a file: appended with pwrite, read through a read-only memory map of the
// file. Reading a chunk copies it out and then drops its pages from this process's mapping
// (madvise MADV_DONTNEED), so the resident memory does not creep up with every chunk ever
// retrieved; the kernel's page cache keeps the hot ones cheap to read again. The file is
// created empty, and removed when the store is destroyed.
template <class T>
class MappedChunkStore final : public ChunkStore<T> {
 public:
  MappedChunkStore(Index keys_per_chunk, Index width, std::string path)
      : ChunkStore<T>(keys_per_chunk, width), path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    DRT_CHECK(fd_ >= 0, "chunk memory file ", path_, ": cannot create it (", std::strerror(errno), ")");
  }
  ~MappedChunkStore() override {
    unmap();
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }

  std::size_t resident_bytes() const override { return 0; }
  std::string describe() const override { return "memory-mapped file " + path_; }
  const std::string& path() const { return path_; }

 protected:
  void write_chunk(Index e, const T* keys, const T* values) override {
    const std::size_t half = this->chunk_bytes() / 2;
    const off_t at = static_cast<off_t>(e) * static_cast<off_t>(this->chunk_bytes());
    write_all(keys, half, at);
    write_all(values, half, at + static_cast<off_t>(half));
  }

  void read_chunk(Index e, T* keys, T* values) const override {
    const std::size_t bytes = this->chunk_bytes(), begin = static_cast<std::size_t>(e) * bytes;
    if (begin + bytes > mapped_bytes_) remap(begin + bytes);
    const auto* at = static_cast<const char*>(map_) + begin;
    std::memcpy(keys, at, bytes / 2);
    std::memcpy(values, at + bytes / 2, bytes / 2);
    // Drop the pages from our mapping (whole pages only; the file keeps the data).
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
    if (last > first) ::madvise(static_cast<char*>(map_) + first, last - first, MADV_DONTNEED);
  }

 private:
  void write_all(const T* data, std::size_t bytes, off_t at) {
    const auto* p = reinterpret_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::pwrite(fd_, p, bytes, at);
      DRT_CHECK(n > 0, "chunk memory file ", path_, ": write failed at byte ", at, " (",
                n < 0 ? std::strerror(errno) : "no progress", "; is the disk full?)");
      p += n;
      at += n;
      bytes -= static_cast<std::size_t>(n);
    }
  }

  // Maps at least `bytes` of the file, growing the map geometrically so that remaps are rare.
  void remap(std::size_t bytes) const {
    unmap();
    const std::size_t want = std::max(bytes, 2 * mapped_bytes_);
    const off_t file_bytes = ::lseek(fd_, 0, SEEK_END);
    const std::size_t length = std::min<std::size_t>(want, static_cast<std::size_t>(file_bytes));
    DRT_CHECK(length >= bytes, "chunk memory file ", path_, ": holds ", file_bytes, " bytes, fewer than the ", bytes,
              " expected");
    void* p = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd_, 0);
    DRT_CHECK(p != MAP_FAILED, "chunk memory file ", path_, ": mmap of ", length, " bytes failed (", std::strerror(errno), ")");
    map_ = p;
    mapped_bytes_ = length;
  }
  void unmap() const {
    if (map_) ::munmap(map_, mapped_bytes_);
    map_ = nullptr;
  }

  std::string path_;
  int fd_ = -1;
  mutable void* map_ = nullptr;
  mutable std::size_t mapped_bytes_ = 0;
};

}  // namespace drt
