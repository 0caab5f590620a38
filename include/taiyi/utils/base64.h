// Base64 as Python's base64 module does it, for the images of the HTTP API (the web UI sends and
// receives PNGs as base64 strings in JSON). Plain C++.
//
//   std::string png = base64_decode(request["init_images"][0]);   // throws taiyi::Error
//   response["images"].push_back(base64_encode(png_bytes));
#pragma once

#include <string>
#include <string_view>

namespace taiyi {

// base64.b64encode: the standard alphabet, '=' padding, no line breaks.
std::string base64_encode(std::string_view bytes);

// base64.b64decode(text) with validate=False (CPython 3.11 binascii.a2b_base64, non-strict): characters
// outside the alphabet are skipped, a complete pad sequence ends the data; a non-ASCII character, a
// leftover of 1 data character, or any other incomplete quad is a taiyi::Error with Python's message
// after "base64: ". The result is at most 3/4 of the text's size.
std::string base64_decode(std::string_view text);

}  // namespace taiyi
