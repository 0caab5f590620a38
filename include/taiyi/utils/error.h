// taiyi's one error type. Every message names the file, the key or line, the value found and what
// was expected, so that the CLI can print it as one line and exit non-zero.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace taiyi {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Outside content quoted in a message: printable ASCII and valid UTF-8 kept, control characters and
// invalid bytes escaped (\n, \t, \xNN), at most `max_chars` characters ("..." when cut), so that a
// hostile file can neither flood nor control the terminal.
std::string quoted_excerpt(std::string_view bytes, size_t max_chars = 40);
// A name or value in a message: between single quotes as it is when short printable ASCII without
// quotes (every real tensor name, key or number), else quoted_excerpt.
std::string quoted_name(std::string_view text, size_t max_chars = 200);
// A name listed in a message: as it is when printable ASCII of at most `max_chars`, else quoted_excerpt.
std::string listed_name(std::string_view text, size_t max_chars = 200);

}  // namespace taiyi
