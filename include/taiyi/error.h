// taiyi's one error type. Every message names the file, the key or line, the value found and what
// was expected, so that the CLI can print it as one line and exit non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace taiyi {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace taiyi
