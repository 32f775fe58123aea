// drt/data/shard.hpp — token shards: a tokenized corpus as one flat file, memory mapped.
//
// File layout (all little-endian), 64-byte header then the tokens:
//   offset  0  "DRTSHARD"           8 bytes, the magic
//   offset  8  uint32 version       1
//   offset 12  uint32 token bytes   2 or 4 (2 whenever the vocabulary fits: V ≤ 65536)
//   offset 16  uint64 token count   N
//   offset 24  uint32 vocab size    V; every id is below it
//   offset 28  zeros up to 64       reserved
//   offset 64  N ids of `token bytes` each
// The file size is exactly 64 + N · token bytes, so a truncated copy is caught on open.
//
// ShardSource shapes: B sequences of T tokens, each a window of the stream starting at
//   random_bits(seed, step·B + b) % (N − T); labels are the same tokens (the model shifts them).
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drt/core/error.hpp"
#include "drt/core/random.hpp"
#include "drt/core/tensor.hpp"
#include "drt/data/batch.hpp"
#include "drt/io/file.hpp"

namespace drt::data {

inline constexpr char kShardMagic[8] = {'D', 'R', 'T', 'S', 'H', 'A', 'R', 'D'};
inline constexpr std::uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderBytes = 64;

namespace detail {

inline void store_le(unsigned char* at, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) at[i] = static_cast<unsigned char>(value >> (8 * i));
}
inline std::uint64_t load_le(const unsigned char* at, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= std::uint64_t(at[i]) << (8 * i);
  return value;
}

}  // namespace detail

// The narrowest id width that holds every id below `vocab_size`.
inline std::uint32_t shard_token_bytes(std::int64_t vocab_size) { return vocab_size <= 65536 ? 2u : 4u; }

// Writes `tokens` as a shard (atomically: a crash leaves any previous file intact). Every id must
// lie in [0, vocab_size).
inline void write_shard(const std::string& path, std::span<const std::int32_t> tokens, std::int64_t vocab_size) {
  DRT_CHECK(vocab_size > 0 && vocab_size <= std::int64_t(UINT32_MAX), path, ": cannot write a shard with vocab size ",
            vocab_size);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    DRT_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, path, ": cannot write token id ", tokens[i], " at position ", i,
              ": outside the vocabulary [0, ", vocab_size, ")");
  const std::uint32_t width = shard_token_bytes(vocab_size);
  std::array<unsigned char, kShardHeaderBytes> header{};
  std::memcpy(header.data(), kShardMagic, 8);
  detail::store_le(header.data() + 8, kShardVersion, 4);
  detail::store_le(header.data() + 12, width, 4);
  detail::store_le(header.data() + 16, tokens.size(), 8);
  detail::store_le(header.data() + 24, static_cast<std::uint64_t>(vocab_size), 4);
  io::write_file_atomically(path, [&](std::FILE* f) {
    io::write_bytes(f, header.data(), header.size());
    // In blocks, so that a large corpus needs no second full-size buffer.
    std::vector<unsigned char> block;
    const std::size_t kBlockTokens = std::size_t(1) << 16;
    for (std::size_t begin = 0; begin < tokens.size(); begin += kBlockTokens) {
      const std::size_t n = std::min(kBlockTokens, tokens.size() - begin);
      block.resize(n * width);
      for (std::size_t i = 0; i < n; ++i)
        detail::store_le(block.data() + i * width, static_cast<std::uint32_t>(tokens[begin + i]), static_cast<int>(width));
      io::write_bytes(f, block.data(), block.size());
    }
  });
}

inline void write_shard(const std::string& path, const std::vector<std::int32_t>& tokens, std::int64_t vocab_size) {
  write_shard(path, std::span<const std::int32_t>(tokens), vocab_size);
}

// A shard opened read-only through mmap: the pages load on demand and are shared between
// processes, so a corpus larger than memory costs nothing up front. Move-only; unmaps on
// destruction.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    DRT_CHECK(fd >= 0, path, ": cannot open token shard (", std::strerror(errno), ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      DRT_CHECK(false, path, ": cannot stat token shard (", why, ")");
    }
    file_bytes_ = static_cast<std::size_t>(st.st_size);
    if (file_bytes_ < kShardHeaderBytes) {
      ::close(fd);
      DRT_CHECK(false, path, ": not a token shard: ", file_bytes_, " bytes is shorter than the ", kShardHeaderBytes,
                "-byte header");
    }
    void* map = ::mmap(nullptr, file_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    const int map_errno = errno;
    ::close(fd);  // the mapping keeps the file alive
    DRT_CHECK(map != MAP_FAILED, path, ": cannot mmap token shard (", std::strerror(map_errno), ")");
    map_ = static_cast<const unsigned char*>(map);
    try {
      read_header();
    } catch (...) {
      unmap();
      throw;
    }
  }

  TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }
  TokenShard& operator=(TokenShard&& other) noexcept {
    if (this != &other) {
      unmap();
      path_ = std::move(other.path_);
      map_ = std::exchange(other.map_, nullptr);
      file_bytes_ = std::exchange(other.file_bytes_, 0);
      count_ = std::exchange(other.count_, 0);
      width_ = other.width_;
      vocab_ = other.vocab_;
    }
    return *this;
  }
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard() { unmap(); }

  const std::string& path() const { return path_; }
  Index size() const { return static_cast<Index>(count_); }
  int vocab_size() const { return static_cast<int>(vocab_); }
  int token_bytes() const { return static_cast<int>(width_); }

  // No bounds check: the hot path of batch assembly. check_ids() validates the values.
  std::int32_t operator[](Index i) const {
    const unsigned char* at = map_ + kShardHeaderBytes + static_cast<std::size_t>(i) * width_;
    return static_cast<std::int32_t>(detail::load_le(at, static_cast<int>(width_)));
  }

  // Reads every id once and throws on the first one ≥ vocab_size (a corrupt or mislabelled file).
  void check_ids() const {
    for (std::uint64_t i = 0; i < count_; ++i) {
      const std::uint64_t id = static_cast<std::uint32_t>((*this)[static_cast<Index>(i)]);
      DRT_CHECK(id < vocab_, path_, ": token id ", id, " at position ", i, " is not below the shard's vocab size ",
                vocab_);
    }
  }

  // Copies tokens [begin, begin + n) into `out` (n = out.size()).
  void copy(Index begin, std::span<std::int32_t> out) const {
    DRT_CHECK(begin >= 0 && begin + static_cast<Index>(out.size()) <= size(), path_, ": tokens [", begin, ", ",
              begin + static_cast<Index>(out.size()), ") lie outside the shard's ", size(), " tokens");
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = (*this)[begin + static_cast<Index>(i)];
  }

 private:
  void read_header() {
    const unsigned char* h = map_;
    DRT_CHECK(std::memcmp(h, kShardMagic, 8) == 0, path_, ": not a token shard (bad magic; expected \"DRTSHARD\")");
    const auto version = detail::load_le(h + 8, 4);
    DRT_CHECK(version == kShardVersion, path_, ": token shard version ", version, " is not supported (expected ",
              kShardVersion, ")");
    width_ = static_cast<std::uint32_t>(detail::load_le(h + 12, 4));
    DRT_CHECK(width_ == 2 || width_ == 4, path_, ": bad token shard header: ", width_,
              " bytes per token (expected 2 or 4)");
    count_ = detail::load_le(h + 16, 8);
    vocab_ = detail::load_le(h + 24, 4);
    DRT_CHECK(vocab_ > 0, path_, ": bad token shard header: vocab size 0");
    DRT_CHECK(width_ == 4 || vocab_ <= 65536, path_, ": bad token shard header: vocab size ", vocab_,
              " does not fit in 2-byte ids");
    DRT_CHECK(count_ <= (file_bytes_ - kShardHeaderBytes) / width_ &&
                  file_bytes_ == kShardHeaderBytes + count_ * width_,
              path_, ": token shard is ", file_bytes_, " bytes but its header promises ", count_, " tokens of ", width_,
              " bytes (", kShardHeaderBytes, " + ", count_, " x ", width_, " bytes): truncated or corrupt");
  }

  void unmap() {
    if (map_) ::munmap(const_cast<unsigned char*>(map_), file_bytes_);
    map_ = nullptr;
  }

  std::string path_;
  const unsigned char* map_ = nullptr;
  std::size_t file_bytes_ = 0;
  std::uint64_t count_ = 0;
  std::uint32_t width_ = 2;
  std::uint64_t vocab_ = 0;
};

// Random windows of a shard: batch(step) is a pure function of (seed, step). A range
// [begin, end) of the shard keeps training and validation windows apart.
class ShardSource : public BatchSource {
 public:
  // Opens the shard and checks every id once (a bad id would otherwise surface as a crash or a
  // silent out-of-range embedding lookup deep inside training).
  ShardSource(const std::string& path, std::uint64_t seed)
      : ShardSource(std::make_shared<const TokenShard>(path), seed) {}

  ShardSource(std::shared_ptr<const TokenShard> shard, std::uint64_t seed, Index begin = 0, Index end = -1,
              bool check_ids = true)
      : shard_(std::move(shard)), seed_(seed), begin_(begin), end_(end < 0 ? shard_->size() : end) {
    DRT_CHECK(begin_ >= 0 && begin_ <= end_ && end_ <= shard_->size(), shard_->path(), ": range [", begin, ", ", end,
              ") does not lie inside the shard's ", shard_->size(), " tokens");
    if (check_ids) shard_->check_ids();
  }

  Batch batch(std::int64_t step, Index batch_size, Index seq_len) const override {
    const Index n = end_ - begin_;
    DRT_CHECK(batch_size > 0 && seq_len > 0, "ShardSource: batch size ", batch_size, " and length ", seq_len,
              " must be positive");
    DRT_CHECK(n > seq_len, shard_->path(), ": ", n, " tokens cannot give windows of ", seq_len,
              " tokens (the stream must be longer than the window)");
    Batch out{IndexTensor::empty({batch_size, seq_len}), IndexTensor::empty({batch_size, seq_len})};
    for (Index b = 0; b < batch_size; ++b) {
      const Index start = window_start(step, batch_size, b, seq_len);
      shard_->copy(start, std::span<std::int32_t>(out.tokens.data() + b * seq_len, static_cast<std::size_t>(seq_len)));
    }
    std::memcpy(out.labels.data(), out.tokens.data(), sizeof(std::int32_t) * static_cast<std::size_t>(out.tokens.numel()));
    return out;
  }

  // Where window b of step `step` starts in the shard.
  Index window_start(std::int64_t step, Index batch_size, Index b, Index seq_len) const {
    const auto span = static_cast<std::uint64_t>(end_ - begin_ - seq_len);
    const std::uint64_t counter = static_cast<std::uint64_t>(step) * static_cast<std::uint64_t>(batch_size) +
                                  static_cast<std::uint64_t>(b);
    return begin_ + static_cast<Index>(random_bits(seed_, counter) % span);
  }

  int vocab_size() const override { return shard_->vocab_size(); }
  std::string describe() const override {
    return "shard " + shard_->path() + " (tokens [" + std::to_string(begin_) + ", " + std::to_string(end_) + ") of " +
           std::to_string(shard_->size()) + ", vocab " + std::to_string(shard_->vocab_size()) + ", seed " +
           std::to_string(seed_) + ")";
  }

  const TokenShard& shard() const { return *shard_; }

 private:
  std::shared_ptr<const TokenShard> shard_;
  std::uint64_t seed_;
  Index begin_, end_;
};

}  // namespace drt::data
