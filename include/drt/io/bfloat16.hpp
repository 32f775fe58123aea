// drt/io/bfloat16.hpp — bfloat16 ⇄ float conversion (the top 16 bits of an IEEE float).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace drt {

// Round to nearest, ties to even, as PyTorch's .to(torch.bfloat16) does; NaN stays NaN.
inline std::uint16_t float_to_bfloat16(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040);
  const std::uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

inline float bfloat16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

}  // namespace drt
