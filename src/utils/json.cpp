// JSON from outside, parsed within limits; see include/taiyi/utils/json.h.
#include "taiyi/utils/json.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

Json parse_json_text(std::string_view text, const std::string& file) {
  // Nesting is bounded before anything deeper is built: a hostile file cannot make the DOM (or its
  // destruction) grow with it.
  auto limit_depth = [&](int depth, Json::parse_event_t event, Json&) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) && depth >= kMaxJsonDepth)
      throw Error(file + ": JSON nested more than " + std::to_string(kMaxJsonDepth) + " levels deep");
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), limit_depth);
  } catch (const Json::parse_error& e) {
    // Not e.what(): nlohmann quotes the bytes it last read, raw. A short escaped excerpt instead.
    const size_t at = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    const size_t from = at > 16 ? at - 16 : 0;
    throw Error(file + ": malformed JSON at byte " + std::to_string(e.byte) + ", near " +
                quoted_excerpt(text.substr(from, 32), 32));
  } catch (const Json::exception& e) {
    // out_of_range: a number beyond double's range (1e999). Its message quotes the number: escaped.
    throw Error(file + ": malformed JSON: " + quoted_excerpt(e.what(), 80));
  }
}

Json read_json_file(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": file not found");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kMaxJsonFile)
    throw Error(path.string() + ": " + std::to_string(size) + " bytes is over the " + std::to_string(kMaxJsonFile >> 20) +
                " MiB a config or vocabulary file may have");
  std::stringstream text;
  text << in.rdbuf();
  return parse_json_text(text.str(), path.string());
}

// A value in a message: JSON text (control characters escaped, invalid UTF-8 replaced: dump() would
// throw on it), cut to 80 bytes on a character boundary.
std::string json_excerpt(const Json& value) {
  std::string s = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() <= 80) return s;
  size_t cut = 77;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "...";
}

}  // namespace taiyi
