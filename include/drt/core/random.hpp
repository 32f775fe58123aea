// drt/core/random.hpp — counter-based random numbers.
//
// A random value is a pure function of (seed, counter): element i of a tensor filled with seed s
// is hash(s, i), whatever the thread, the order of evaluation or the device. That is what makes
// dropout masks and Gumbel noise reproducible, and identical on the CPU and (later) the GPU.
// `Generator` hands out fresh counter ranges so that successive draws differ, and its state is
// two integers that a checkpoint can store.
//
// The fills take device tensors too: the values are generated on the host (by the same code, so
// a GPU initialisation is bit-identical to the CPU one) and copied over in one transfer. That
// is meant for initialisation, not for per-step noise.
#pragma once

#include <cmath>
#include <cstdint>

#include "drt/core/tensor.hpp"

namespace drt {

// SplitMix64 finaliser applied to (seed, counter): a strong 64-bit mix, cheap enough per element.
// Host and device (the GPU's dropout and Gumbel kernels draw exactly these bits).
DRT_HOST_DEVICE inline std::uint64_t random_bits(std::uint64_t seed, std::uint64_t counter) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + counter + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  // A second round decorrelates neighbouring counters of neighbouring seeds.
  z = (z ^ (z >> 33)) * 0xFF51AFD7ED558CCDull;
  return z ^ (z >> 33);
}

// Uniform in the open interval (0, 1): never exactly 0 or 1, so log(u) is always finite.
inline double uniform01(std::uint64_t seed, std::uint64_t counter) {
  return (static_cast<double>(random_bits(seed, counter) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box–Muller from two uniforms of the same counter.
inline double standard_normal(std::uint64_t seed, std::uint64_t counter) {
  const double u1 = uniform01(seed, 2 * counter), u2 = uniform01(seed, 2 * counter + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// Gumbel(0, 1): −log(E) with E ~ Exp(1) = −log(U).
inline double standard_gumbel(std::uint64_t seed, std::uint64_t counter) {
  return -std::log(-std::log(uniform01(seed, counter)));
}

// A stream of seeds for successive random draws. Each draw() returns a new (seed, offset)-derived
// key; the state (seed, draws) fully determines everything that follows.
class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : seed_(seed) {}
  std::uint64_t draw() { return random_bits(seed_, 0xD1B54A32D192ED03ull + draws_++); }
  std::uint64_t seed() const { return seed_; }
  std::uint64_t draws() const { return draws_; }
  void restore(std::uint64_t seed, std::uint64_t draws) { seed_ = seed, draws_ = draws; }

 private:
  std::uint64_t seed_;
  std::uint64_t draws_ = 0;
};

// Fills `t` (in row-major logical order) with values of f(seed, i).
template <class T, class F>
void fill_with(const Tensor<T>& t, std::uint64_t seed, F f) {
  if (!t.on_host()) {  // generate on the host, then one copy (through the backend: any file may call this)
    const Tensor<T> host = Tensor<T>::empty(t.shape());
    fill_with(host, seed, f);
    t.copy_from(host);
    return;
  }
  Index i = 0;
  t.for_each_offset([&](Index off) { t.data()[off] = static_cast<T>(f(seed, static_cast<std::uint64_t>(i++))); });
}
template <class T>
void fill_uniform(const Tensor<T>& t, std::uint64_t seed, T low = T(0), T high = T(1)) {
  fill_with(t, seed, [&](std::uint64_t s, std::uint64_t i) { return low + (high - low) * uniform01(s, i); });
}
template <class T>
void fill_normal(const Tensor<T>& t, std::uint64_t seed, T mean = T(0), T stddev = T(1)) {
  fill_with(t, seed, [&](std::uint64_t s, std::uint64_t i) { return mean + stddev * standard_normal(s, i); });
}

// Convenience constructors for heap tensors (on `device`: the same values, copied there).
template <class T>
Tensor<T> random_uniform(const Shape& shape, std::uint64_t seed, T low = T(0), T high = T(1),
                         Device device = Device::cpu) {
  Tensor<T> t = Tensor<T>::empty(shape);
  fill_uniform(t, seed, low, high);
  return t.to(device);
}
template <class T>
Tensor<T> random_normal(const Shape& shape, std::uint64_t seed, T mean = T(0), T stddev = T(1),
                        Device device = Device::cpu) {
  Tensor<T> t = Tensor<T>::empty(shape);
  fill_normal(t, seed, mean, stddev);
  return t.to(device);
}

}  // namespace drt
