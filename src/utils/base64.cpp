// Base64 (include/taiyi/utils/base64.h): encoding as base64.b64encode, decoding as CPython 3.11's
// Modules/binascii.c binascii_a2b_base64_impl in its default, non-strict mode, which b64decode calls
// after base64._bytes_from_decode_data has refused non-ASCII text. Checked against Python in
// tests/utils/test_base64.cpp.
#include "taiyi/utils/base64.h"

#include <cstdint>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr int kNotData = -1;

int sextet(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return kNotData;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                       static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(v >> shift) & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  for (char c : text)
    if (static_cast<unsigned char>(c) >= 0x80) throw Error("base64: string argument should contain only ASCII characters");
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  int quad_pos = 0, pads = 0;
  unsigned leftchar = 0;
  for (char ch : text) {
    if (ch == '=') {
      // A pad after two or three data characters of a quad counts; once the quad is complete with
      // its pads, the data ends and the rest of the text is ignored. Other pads are skipped.
      if (quad_pos >= 2 && quad_pos + ++pads >= 4) return out;
      continue;
    }
    const int v = sextet(static_cast<unsigned char>(ch));
    if (v == kNotData) continue;
    pads = 0;  // a data character breaks a pad sequence, as binascii's loop resets it
    const unsigned u = static_cast<unsigned>(v);
    switch (quad_pos) {
      case 0: leftchar = u; break;
      case 1: out += static_cast<char>((leftchar << 2 | u >> 4) & 0xFF); leftchar = u & 0x0F; break;
      case 2: out += static_cast<char>((leftchar << 4 | u >> 2) & 0xFF); leftchar = u & 0x03; break;
      default: out += static_cast<char>((leftchar << 6 | u) & 0xFF); leftchar = 0; break;
    }
    quad_pos = (quad_pos + 1) % 4;
  }
  if (quad_pos == 1)
    throw Error("base64: Invalid base64-encoded string: number of data characters (" +
                std::to_string(out.size() / 3 * 4 + 1) + ") cannot be 1 more than a multiple of 4");
  if (quad_pos != 0) throw Error("base64: Incorrect padding");
  return out;
}

}  // namespace taiyi
