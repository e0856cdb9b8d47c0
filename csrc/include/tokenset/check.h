// Errors and the one check macro. Host code only: kernels never throw, everything is checked before they run.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace tokenset {

// Raised for bad arguments; the bindings turn these into Python ValueError / TypeError.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace tokenset

// TOKENSET_CHECK(cond, ValueError, "k must be >= 1, got ", k): throws tokenset::ValueError (or TypeError) with the
// message parts streamed together when `cond` is false. Messages say what was wrong and how to fix it.
#define TOKENSET_CHECK(cond, Error, ...)                                   \
  do {                                                                     \
    if (!(cond)) throw ::tokenset::Error(::tokenset::detail::concat(__VA_ARGS__)); \
  } while (0)
