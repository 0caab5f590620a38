// Quoting outside content in error messages (include/taiyi/utils/error.h).
#include "taiyi/utils/error.h"

#include <algorithm>
#include <cstdio>

namespace taiyi {

namespace {

// The length of the valid UTF-8 sequence at s[i] (2-4), or 0 (no overlongs, surrogates or > U+10FFFF).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xC0) != 0x80) return 0;
  if (c == 0xE0 && b(i + 1) < 0xA0) return 0;
  if (c == 0xED && b(i + 1) > 0x9F) return 0;
  if (c == 0xF0 && b(i + 1) < 0x90) return 0;
  if (c == 0xF4 && b(i + 1) > 0x8F) return 0;
  return n;
}

}  // namespace

std::string quoted_excerpt(std::string_view bytes, size_t max_chars) {
  std::string out = "\"";
  size_t chars = 0, i = 0;
  while (i < bytes.size() && chars < max_chars) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n", ++i;
    } else if (c == '\t') {
      out += "\\t", ++i;
    } else if (size_t n = c >= 0x80 ? utf8_sequence(bytes, i) : 0; n > 0 && !(n == 2 && c == 0xC2 && static_cast<unsigned char>(bytes[i + 1]) < 0xA0)) {
      out.append(bytes.substr(i, n));  // C1 controls (U+0080-U+009F) are escaped below
      i += n;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
      ++i;
    }
    ++chars;
  }
  out += '"';
  if (i < bytes.size()) out += "...";
  return out;
}

std::string quoted_name(std::string_view text, size_t max_chars) {
  const bool plain = text.size() <= max_chars && std::all_of(text.begin(), text.end(), [](char c) {
                       return c >= 0x20 && c < 0x7F && c != '\'' && c != '"' && c != '\\';
                     });
  return plain ? "'" + std::string(text) + "'" : quoted_excerpt(text, std::min<size_t>(max_chars, 120));
}

std::string listed_name(std::string_view text, size_t max_chars) {
  const bool plain = text.size() <= max_chars && std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
  return plain ? std::string(text) : quoted_excerpt(text, std::min<size_t>(max_chars, 120));
}

}  // namespace taiyi
