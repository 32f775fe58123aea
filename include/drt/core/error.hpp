// drt/core/error.hpp — the one exception type drt throws, and helpers that build its messages.
//
// Every failed check in drt throws drt::Error with a message that says which op failed and why,
// naming the shapes involved. Nothing in the library aborts or returns garbage on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace drt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// DRT_CHECK(cond, parts...) throws drt::Error(parts...) when cond is false. The parts are only
// formatted on failure, so checks on hot paths cost one branch.
#define DRT_CHECK(cond, ...)                                      \
  do {                                                            \
    if (!(cond)) throw ::drt::Error(::drt::detail::concat(__VA_ARGS__)); \
  } while (0)

}  // namespace drt
