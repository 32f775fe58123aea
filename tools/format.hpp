// tools/format.hpp — number formatting shared by the drt tool's commands.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace drt::cli {

// 145980672 -> "145,980,672"; -1234 -> "-1,234".
inline std::string with_thousands(std::int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -static_cast<std::uint64_t>(n) : static_cast<std::uint64_t>(n));
  std::string out = n < 0 ? "-" : "";
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Seconds of wall time since `start`.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace drt::cli
