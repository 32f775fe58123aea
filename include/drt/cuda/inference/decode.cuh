// drt/cuda/inference/decode.cuh — the kernels of GPU decoding that the training ops do not have:
// attention of a few new positions over a window key/value cache, GCA of a few query rows over
// the retrieved chunks (the "inference variant" of GCA), and the small bookkeeping kernels that
// let one token's step be recorded once into a CUDA graph and replayed (graph.cuh).
//
// Shapes: L new positions (rows), H query heads, Hkv key/value heads, d head width, W window,
// k retrieved chunks, N keys per chunk, U chunks held on the device, D = H·d.
//
//   cached_window_attention  q (L, H, d), k_new/v_new (L, Hkv, d), cache (W, Hkv, d) → out (L, H, d)
//   push_to_window_cache     k_new/v_new (L, Hkv, d) → cache slots (p0 + r) mod W
//   gca_decode               q (L, H, d), keys/values (U, N, H, d), slot (k), weight (k) → out (L, H, d)
//   embed_rows               ids (L) → rows of the table (L, D)
//   write_row_at_position    row (D) → buffer (S, D) row p0 mod S
//   advance_position         p0 += 1
//
// Why the position can live on the device: a CUDA graph replays the launches it recorded with the
// arguments it recorded. Every kernel here that depends on the position reads it from
// `position_on_device` when that is given (a replay then sees the current position), and from the
// host argument `p0` otherwise (the eager path).
//
// Layout of the attention kernels (flash-decoding): a step has only H·L (row, head) pairs, far
// too few blocks for the GPU if each walks its keys alone (one block per pair spent ~100 µs on
// a window of 513 keys, one dependent load after another). So the keys are cut into tiles of
// kTileKeys, and every (tile, head, row) is a block of its own: its threads score the tile's
// keys together (kThreadsPerKey threads per key), take the tile's max and sum, and form the
// tile's Σ exp(score − max)·v, each phase one round of independent loads. A second, small kernel
// merges the tiles: for window attention all of a row's tiles by their maxima (one softmax), for
// GCA each chunk's tiles into its own softmax, then the chunks weighted by the retrieval weights.
// The tile count is fixed by W (or k and N), not by the position, so a recorded graph replays
// with the same grid at every position; tiles with no key drop out of the merge.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "drt/core/tensor.hpp"
#include "drt/cuda/attention/warp_math.cuh"
#include "drt/cuda/error.cuh"
#include "drt/cuda/stream.cuh"

namespace drt::cuda::decode {

inline constexpr int kTileKeys = 64;
inline constexpr int kTileThreads = 256;
inline constexpr int kThreadsPerKey = kTileThreads / kTileKeys;  // they split the head width

__device__ inline Index position_of(Index p0, const std::int32_t* position_on_device) {
  return position_on_device != nullptr ? static_cast<Index>(*position_on_device) : p0;
}

// The keys of one tile: key j's key and value rows and the bias added to its score, for
// j = first .. first + count − 1 (count ≤ kTileKeys; 0 for a tile past the end).
struct TileSpan {
  Index first;
  int count;
};

// Window attention's keys for row r (position i = p + r): positions max(0, i − W) .. i, those
// before p in the ring (slot j mod W), the rest in this call's k_new/v_new.
template <class T>
struct WindowKeys {
  const T *k_new, *v_new, *cache_k, *cache_v, *slopes;
  int H, Hkv, d;
  Index W, p0;
  const std::int32_t* position_on_device;

  __device__ Index first_new() const { return position_of(p0, position_on_device); }
  __device__ TileSpan span(int r, int tile) const {
    const Index i = first_new() + r, first = (i - W > 0 ? i - W : 0) + Index(tile) * kTileKeys;
    const Index count = i - first + 1;
    return {first, count <= 0 ? 0 : count > kTileKeys ? kTileKeys : static_cast<int>(count)};
  }
  __device__ Index offset(int h, Index j) const {
    const Index p = first_new(), row = j < p ? j % W : j - p;
    return (row * Hkv + h / (H / Hkv)) * d;
  }
  __device__ const T* key(int, int h, Index j) const { return (j < first_new() ? cache_k : k_new) + offset(h, j); }
  __device__ const T* value(int, int h, Index j) const { return (j < first_new() ? cache_v : v_new) + offset(h, j); }
  __device__ T bias(int r, int h, Index j) const { return -slopes[h] * static_cast<T>(first_new() + r - j); }
};

// GCA's keys: tile t is part t mod P of retrieved chunk t / P (P = ⌈N / kTileKeys⌉ tiles per
// chunk); an empty slot (−1) or a weight of 0 gives empty tiles.
template <class T>
struct ChunkKeys {
  const T *keys, *values;  // (U, N, H, d)
  const std::int32_t* slot;
  const T* weight;
  int N, H, d, tiles_per_chunk;

  __device__ TileSpan span(int, int tile) const {
    const int j = tile / tiles_per_chunk, first = (tile % tiles_per_chunk) * kTileKeys;
    if (slot[j] < 0 || weight[j] == T(0)) return {0, 0};
    const int count = N - first;
    return {Index(slot[j]) * N + first, count > kTileKeys ? kTileKeys : count};
  }
  __device__ const T* key(int, int h, Index j) const { return keys + (j * H + h) * d; }
  __device__ const T* value(int, int h, Index j) const { return values + (j * H + h) * d; }
  __device__ T bias(int, int, Index) const { return T(0); }
};

// Block (tile, h, r): the tile's max score m, s = Σ exp(score − m) and acc = Σ exp(score − m)·v,
// into tile_stats (L, H, tiles, 2) and tile_acc (L, H, tiles, d). An empty tile writes m = −∞, s = 0.
template <class T, class Keys>
__global__ void __launch_bounds__(kTileThreads)
    attend_tile_kernel(const T* __restrict__ q, Keys keys, T scale, T* __restrict__ tile_stats, T* __restrict__ tile_acc) {
  const int tile = blockIdx.x, h = blockIdx.y, r = blockIdx.z, H = gridDim.y, tiles = gridDim.x, d = keys.d;
  const Index pair = (static_cast<Index>(r) * H + h) * tiles + tile;
  const TileSpan span = keys.span(r, tile);  // the same for the whole block
  if (span.count == 0) {
    if (threadIdx.x == 0) {
      tile_stats[2 * pair] = attention::minus_infinity<T>();
      tile_stats[2 * pair + 1] = T(0);
    }
    for (int e = threadIdx.x; e < d; e += blockDim.x) tile_acc[pair * d + e] = T(0);
    return;
  }
  __shared__ T q_row[attention::kMaxHeadDim];
  __shared__ T p[kTileKeys];
  __shared__ T warp_part[2];
  __shared__ T acc_part[kTileThreads];
  for (int e = threadIdx.x; e < d; e += blockDim.x) q_row[e] = q[(static_cast<Index>(r) * H + h) * d + e];
  __syncthreads();

  // Scores: kThreadsPerKey neighbouring threads share one key's dot product.
  const int key = threadIdx.x / kThreadsPerKey, part = threadIdx.x % kThreadsPerKey;
  const bool has_key = key < span.count;
  T dot = T(0);
  if (has_key) {
    const T* k_row = keys.key(r, h, span.first + key);
#pragma unroll 8
    for (int e = part; e < d; e += kThreadsPerKey) dot += q_row[e] * k_row[e];
  }
#pragma unroll
  for (int offset = kThreadsPerKey / 2; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (part == 0) p[key] = has_key ? scale * dot + keys.bias(r, h, span.first + key) : attention::minus_infinity<T>();
  __syncthreads();

  // The tile's max and sum: the first two warps hold one score per lane.
  const int warp = threadIdx.x / attention::kWarp, lane = threadIdx.x % attention::kWarp;
  static_assert(kTileKeys == 2 * attention::kWarp, "two warps hold a tile's scores");
  T score = threadIdx.x < kTileKeys ? p[threadIdx.x] : T(0), top = score;
  if (warp < 2) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) top = fmax(top, __shfl_xor_sync(0xffffffffu, top, offset));
    if (lane == 0) warp_part[warp] = top;
  }
  __syncthreads();
  top = fmax(warp_part[0], warp_part[1]);  // finite: the tile has a key
  __syncthreads();                          // warp_part is reused for the sum
  if (warp < 2) {
    const T e = threadIdx.x < span.count ? attention::device_exp(score - top) : T(0);
    p[threadIdx.x] = e;
    const T total = attention::warp_sum(e);
    if (lane == 0) warp_part[warp] = total;
  }
  __syncthreads();

  // Σ p·v: kTileThreads / d groups of d threads, group g taking keys g, g + groups, ...
  const int groups = kTileThreads / d, g = threadIdx.x / d, e = threadIdx.x % d;
  T acc = T(0);
  if (g < groups) {
#pragma unroll 4
    for (int j = g; j < span.count; j += groups) acc += p[j] * keys.value(r, h, span.first + j)[e];
    acc_part[g * d + e] = acc;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    T total = T(0);
    for (int u = 0; u < groups; ++u) total += acc_part[u * d + c];
    tile_acc[pair * d + c] = total;
  }
  if (threadIdx.x == 0) {
    tile_stats[2 * pair] = top;
    tile_stats[2 * pair + 1] = warp_part[0] + warp_part[1];
  }
}

// Block (r, h), one thread per element: out = Σ_groups w_g · (Σ_t acc_t·e^{m_t − M_g}) / (Σ_t s_t·e^{m_t − M_g})
// over the tiles t of each group (M_g their max; a group with no key gives 0). weight == nullptr: w = 1.
template <class T>
__global__ void merge_tiles_kernel(const T* __restrict__ tile_stats, const T* __restrict__ tile_acc,
                                   const T* __restrict__ weight, int groups, int tiles_per_group, int d, T* __restrict__ out) {
  const int r = blockIdx.x, h = blockIdx.y, H = gridDim.y, tiles = groups * tiles_per_group;
  const Index first_pair = (static_cast<Index>(r) * H + h) * tiles;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    T result = T(0);
    for (int grp = 0; grp < groups; ++grp) {
      const Index t0 = first_pair + Index(grp) * tiles_per_group;
      T top = attention::minus_infinity<T>();
      for (int t = 0; t < tiles_per_group; ++t) top = fmax(top, tile_stats[2 * (t0 + t)]);
      if (top == attention::minus_infinity<T>()) continue;
      T total = T(0), value = T(0);
      for (int t = 0; t < tiles_per_group; ++t) {
        const T m = tile_stats[2 * (t0 + t)];
        if (m == attention::minus_infinity<T>()) continue;
        const T rescale = attention::device_exp(m - top);
        total += tile_stats[2 * (t0 + t) + 1] * rescale;
        value += tile_acc[(t0 + t) * d + e] * rescale;
      }
      result += (weight != nullptr ? weight[grp] : T(1)) * value / total;
    }
    out[(static_cast<Index>(r) * H + h) * d + e] = result;
  }
}

// ---- window cache ---------------------------------------------------------------------------------

// Rows (L, Hkv, d) into the ring at slots (p0 + r) mod W; only the last W rows can stay.
template <class T>
__global__ void push_to_window_cache_kernel(const T* __restrict__ k_new, const T* __restrict__ v_new, T* cache_k,
                                            T* cache_v, Index L, Index row_width, Index W, Index p0,
                                            const std::int32_t* position_on_device) {
  const Index first_new = position_of(p0, position_on_device), skip = L > W ? L - W : 0;
  const Index n = (L - skip) * row_width;
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index r = skip + t / row_width, e = t % row_width, slot = (first_new + r) % W;
    cache_k[slot * row_width + e] = k_new[r * row_width + e];
    cache_v[slot * row_width + e] = v_new[r * row_width + e];
  }
}

// ---- bookkeeping kernels ------------------------------------------------------------------------

template <class T>
__global__ void embed_rows_kernel(const T* __restrict__ table, const std::int32_t* __restrict__ ids, Index L, Index D,
                                  T* __restrict__ out) {
  for (Index t = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; t < L * D;
       t += static_cast<Index>(gridDim.x) * blockDim.x)
    out[t] = table[static_cast<Index>(ids[t / D]) * D + t % D];
}

template <class T>
__global__ void write_row_at_position_kernel(const T* __restrict__ row, T* buffer, Index S, Index D, Index p0,
                                             const std::int32_t* position_on_device) {
  const Index slot = position_of(p0, position_on_device) % S;
  for (Index e = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; e < D; e += static_cast<Index>(gridDim.x) * blockDim.x)
    buffer[slot * D + e] = row[e];
}

__global__ inline void advance_position_kernel(std::int32_t* position, std::int32_t by) { *position += by; }

// ---- host entry points ------------------------------------------------------------------------

namespace detail {
template <class T>
const T* device_data(const Tensor<T>& t, const char* op, const char* name) {
  DRT_CHECK(!t.on_host() && t.is_contiguous(), op, ": ", name, " of shape ", t.shape().str(),
            " must be a contiguous device tensor");
  return t.data();
}
// Blocks of 256 threads for n elements (grid-stride loops cover what 4096 blocks do not).
inline unsigned element_grid(Index n) {
  const Index blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 4096 ? 4096 : blocks);
}
}  // namespace detail

// Both attentions: the tile kernel over `tiles` tiles per (row, head), then the merge, through
// scratch from the caching allocator (kept alive by the stream's order, and by a recording
// graph's guard while one is captured).
template <class T, class Keys>
void attend_in_tiles(const T* q, Index L, Index H, const Keys& keys, int groups, int tiles_per_group, const T* weight,
                     T scale, T* out, Device device) {
  const Index tiles = Index(groups) * tiles_per_group, d = keys.d;
  DRT_CHECK(L <= 65535 && H <= 65535, "decode attention: ", L, " rows and ", H, " heads exceed the grid's 65,535");
  const Tensor<T> stats = Tensor<T>::empty({L, H, tiles, 2}, nullptr, device);
  const Tensor<T> acc = Tensor<T>::empty({L, H, tiles, d}, nullptr, device);
  attend_tile_kernel<T, Keys><<<dim3(unsigned(tiles), unsigned(H), unsigned(L)), kTileThreads, 0, ::drt::cuda::stream()>>>(
      q, keys, scale, const_cast<T*>(stats.data()), const_cast<T*>(acc.data()));
  DRT_CUDA_CHECK_LAUNCH();
  const unsigned threads = static_cast<unsigned>((d + 31) / 32 * 32);
  merge_tiles_kernel<T><<<dim3(unsigned(L), unsigned(H)), threads, 0, ::drt::cuda::stream()>>>(
      stats.data(), acc.data(), weight, groups, tiles_per_group, int(d), out);
  DRT_CUDA_CHECK_LAUNCH();
}

// q (L, H, d), k_new/v_new (L, Hkv, d), cache_k/cache_v (W, Hkv, d), slopes (H) → out (L, H, d).
// The first new row is at position p0 (or *position_on_device); positions before it are in the cache.
template <class T>
void cached_window_attention(const Tensor<T>& q, const Tensor<T>& k_new, const Tensor<T>& v_new, const Tensor<T>& cache_k,
                             const Tensor<T>& cache_v, const Tensor<T>& slopes, T scale, Index p0,
                             const std::int32_t* position_on_device, const Tensor<T>& out) {
  const char* op = "cached_window_attention";
  const Index L = q.size(0), H = q.size(1), d = q.size(2), Hkv = k_new.size(1), W = cache_k.size(0);
  DRT_CHECK(d <= attention::kMaxHeadDim && H % Hkv == 0 && out.shape() == q.shape() && cache_k.size(1) == Hkv &&
                cache_k.size(2) == d && k_new.size(0) == L && v_new.shape() == k_new.shape() &&
                cache_v.shape() == cache_k.shape() && slopes.numel() == H,
            op, ": q ", q.shape().str(), ", k ", k_new.shape().str(), ", cache ", cache_k.shape().str(), " and out ",
            out.shape().str(), " do not fit together (d ≤ ", attention::kMaxHeadDim, ")");
  if (L == 0) return;
  const WindowKeys<T> keys{detail::device_data(k_new, op, "k"),          detail::device_data(v_new, op, "v"),
                           detail::device_data(cache_k, op, "cache keys"), detail::device_data(cache_v, op, "cache values"),
                           detail::device_data(slopes, op, "slopes"),      int(H),
                           int(Hkv),                                       int(d),
                           W,                                              p0,
                           position_on_device};
  const int tiles = static_cast<int>((W + 1 + kTileKeys - 1) / kTileKeys);  // a row sees ≤ W + 1 keys
  attend_in_tiles(detail::device_data(q, op, "q"), L, H, keys, 1, tiles, static_cast<const T*>(nullptr), scale,
                  const_cast<T*>(detail::device_data(out, op, "out")), q.device());
}

template <class T>
void push_to_window_cache(const Tensor<T>& k_new, const Tensor<T>& v_new, const Tensor<T>& cache_k,
                          const Tensor<T>& cache_v, Index p0, const std::int32_t* position_on_device) {
  const char* op = "push_to_window_cache";
  const Index L = k_new.size(0), row = cache_k.numel() / cache_k.size(0), W = cache_k.size(0);
  DRT_CHECK(k_new.shape() == v_new.shape() && k_new.numel() == L * row && cache_v.shape() == cache_k.shape(), op,
            ": new rows ", k_new.shape().str(),
            " do not fit a cache of ", cache_k.shape().str());
  if (L == 0) return;
  push_to_window_cache_kernel<T><<<detail::element_grid(L * row), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(k_new, op, "k"), detail::device_data(v_new, op, "v"),
      const_cast<T*>(detail::device_data(cache_k, op, "cache keys")),
      const_cast<T*>(detail::device_data(cache_v, op, "cache values")), L, row, W, p0, position_on_device);
  DRT_CUDA_CHECK_LAUNCH();
}

// q (L, H, d), keys/values (U, N, H, d), slot (k) int32 and weight (k) on the device → out (L, H, d).
template <class T>
void gca_decode(const Tensor<T>& q, const Tensor<T>& keys, const Tensor<T>& values, const IndexTensor& slot,
                const Tensor<T>& weight, T scale, const Tensor<T>& out) {
  const char* op = "gca_decode";
  const Index L = q.size(0), H = q.size(1), d = q.size(2), N = keys.size(1), k = slot.numel();
  DRT_CHECK(keys.shape() == values.shape() && keys.size(2) == H && keys.size(3) == d && weight.numel() == k &&
                out.shape() == q.shape() && d <= attention::kMaxHeadDim && k > 0,
            op, ": q ", q.shape().str(), ", keys ", keys.shape().str(), ", values ", values.shape().str(), ", slot ",
            slot.shape().str(), ", weight ", weight.shape().str(), " and out ", out.shape().str(), " do not fit together");
  if (L == 0) return;
  const int tiles_per_chunk = static_cast<int>((N + kTileKeys - 1) / kTileKeys);
  const ChunkKeys<T> chunk_keys{detail::device_data(keys, op, "keys"), detail::device_data(values, op, "values"),
                                detail::device_data(slot, op, "slot"), detail::device_data(weight, op, "weight"),
                                int(N), int(H), int(d), tiles_per_chunk};
  attend_in_tiles(detail::device_data(q, op, "q"), L, H, chunk_keys, int(k), tiles_per_chunk, chunk_keys.weight, scale,
                  const_cast<T*>(detail::device_data(out, op, "out")), q.device());
}

// ids (L) int32 on the device (already valid rows of the table) → out (L, D).
template <class T>
void embed_rows(const Tensor<T>& table, const IndexTensor& ids, const Tensor<T>& out) {
  const char* op = "embed_rows";
  const Index L = ids.numel(), D = table.size(1);
  DRT_CHECK(out.numel() == L * D, op, ": out ", out.shape().str(), " does not hold ", L, " rows of ", D);
  embed_rows_kernel<T><<<detail::element_grid(L * D), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(table, op, "table"), detail::device_data(ids, op, "ids"), L, D,
      const_cast<T*>(detail::device_data(out, op, "out")));
  DRT_CUDA_CHECK_LAUNCH();
}

// row (D) → buffer (S, D) at row p mod S, p = p0 or *position_on_device.
template <class T>
void write_row_at_position(const Tensor<T>& row, const Tensor<T>& buffer, Index p0, const std::int32_t* position_on_device) {
  const char* op = "write_row_at_position";
  const Index S = buffer.size(0), D = buffer.size(1);
  DRT_CHECK(row.numel() == D, op, ": a row of ", row.numel(), " values for a buffer ", buffer.shape().str());
  write_row_at_position_kernel<T><<<detail::element_grid(D), 256, 0, ::drt::cuda::stream()>>>(
      detail::device_data(row, op, "row"), const_cast<T*>(detail::device_data(buffer, op, "buffer")), S, D, p0,
      position_on_device);
  DRT_CUDA_CHECK_LAUNCH();
}

inline void advance_position(std::int32_t* position_on_device, std::int32_t by) {
  advance_position_kernel<<<1, 1, 0, ::drt::cuda::stream()>>>(position_on_device, by);
  DRT_CUDA_CHECK_LAUNCH();
}

}  // namespace drt::cuda::decode
