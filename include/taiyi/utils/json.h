// JSON read from outside (configs, model_index.json, tokenizer files, prompt-file lines, LoRA metadata):
// parsed within size and nesting limits, with errors that quote the offending bytes escaped and briefly.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace taiyi {

// Limits on JSON read from outside (configs, model_index.json, tokenizer files, prompt-file lines): the
// largest real one is a fast tokenizer.json of a few MB; real nesting is under 10 levels.
constexpr size_t kMaxJsonFile = 64u << 20;
constexpr int kMaxJsonDepth = 64;

// Parses JSON text; Error "<file>: malformed JSON at byte N, near \"...\"" (quoted escaped and briefly)
// or "<file>: JSON nested more than 64 levels deep".
nlohmann::json parse_json_text(std::string_view text, const std::string& file);
// A JSON value in a message: its JSON text (control characters escaped, invalid UTF-8 replaced), cut to
// 80 bytes.
std::string json_excerpt(const nlohmann::json& value);
// Reads and parses a JSON file (at most kMaxJsonFile bytes); Error "<file>: cannot open", or as above.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace taiyi
