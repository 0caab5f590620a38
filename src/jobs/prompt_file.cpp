// Prompt files, shards and output names; see include/taiyi/jobs/prompt_file.h.
#include "taiyi/jobs/prompt_file.h"

#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "taiyi/utils/json.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

static std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

static void parse_jsonl_line(const std::string& where, const std::string& text, PromptJob& job) {
  if (text.size() > kMaxPromptLine)
    throw Error(where + ": line of " + std::to_string(text.size()) + " bytes is over the " +
                std::to_string(kMaxPromptLine >> 10) + " KiB a line may have");
  const Json j = parse_json_text(text, where);  // "<file>:<line>: malformed JSON at byte N, near ..."
  if (!j.is_object()) throw Error(where + ": expected a JSON object with a \"prompt\"");
  static const char* known[] = {"prompt", "negative_prompt", "seed",     "steps",      "cfg_scale", "width",
                                "height", "output",          "sampler",  "schedule",   "init_image", "strength",
                                "mask",   "clip_skip", "hires_scale", "hires_width", "hires_height", "hires_upscaler",
                                "hires_steps", "hires_strength", "hires_sampler"};
  for (const auto& item : j.items()) {
    if (std::find(std::begin(known), std::end(known), item.key()) == std::end(known))
      throw Error(where + ": unknown key " + quoted_excerpt(item.key(), 40) +
                  " (expected prompt, negative_prompt, seed, steps, cfg_scale, width, height, output, sampler, schedule, "
                  "init_image, strength, mask, clip_skip, hires_scale, hires_width, hires_height, hires_upscaler, "
                  "hires_steps, hires_strength, hires_sampler)");
  }
  auto get_string = [&](const char* key) -> std::optional<std::string> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_string()) throw Error(where + ": \"" + key + "\" must be a string, got " + json_excerpt(j[key]));
    return j[key].get<std::string>();
  };
  auto get_int = [&](const char* key) -> std::optional<int64_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number_integer()) throw Error(where + ": \"" + key + "\" must be an integer, got " + json_excerpt(j[key]));
    return j[key].get<int64_t>();
  };
  std::optional<std::string> prompt = get_string("prompt");
  if (!prompt) throw Error(where + ": missing \"prompt\"");
  job.prompt = *prompt;
  job.negative_prompt = get_string("negative_prompt");
  if (j.contains("seed") && !j["seed"].is_null()) {
    if (!j["seed"].is_number_unsigned()) throw Error(where + ": \"seed\" must be a non-negative integer, got " + json_excerpt(j["seed"]));
    job.seed = j["seed"].get<uint64_t>();
  }
  job.steps = get_int("steps");
  if (j.contains("cfg_scale") && !j["cfg_scale"].is_null()) {
    if (!j["cfg_scale"].is_number()) throw Error(where + ": \"cfg_scale\" must be a number, got " + json_excerpt(j["cfg_scale"]));
    job.cfg_scale = j["cfg_scale"].get<double>();
  }
  job.width = get_int("width");
  job.height = get_int("height");
  job.output = get_string("output");
  job.sampler = get_string("sampler");    // names are checked when the line runs (an error for that line)
  job.schedule = get_string("schedule");
  job.init_image = get_string("init_image");
  job.mask = get_string("mask");
  job.clip_skip = get_int("clip_skip");
  if (job.clip_skip && *job.clip_skip < 1)
    throw Error(where + ": \"clip_skip\" " + json_excerpt(j["clip_skip"]) + ": must be at least 1 (1: the last layer)");
  auto get_number = [&](const char* key) -> std::optional<double> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number()) throw Error(where + ": \"" + key + "\" must be a number, got " + json_excerpt(j[key]));
    return j[key].get<double>();
  };
  job.hires_scale = get_number("hires_scale");
  job.hires_strength = get_number("hires_strength");
  job.hires_width = get_int("hires_width");
  job.hires_height = get_int("hires_height");
  job.hires_steps = get_int("hires_steps");
  job.hires_upscaler = get_string("hires_upscaler");
  job.hires_sampler = get_string("hires_sampler");
  if (j.contains("strength") && !j["strength"].is_null()) {
    if (!j["strength"].is_number()) throw Error(where + ": \"strength\" must be a number, got " + json_excerpt(j["strength"]));
    job.strength = j["strength"].get<double>();
    if (!(*job.strength > 0 && *job.strength <= 1))
      throw Error(where + ": \"strength\" " + json_excerpt(j["strength"]) + ": must be greater than 0 and at most 1");
  }
}

PromptFile read_prompt_file(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": prompt file not found");
  if (fs::is_directory(path)) throw Error(path.string() + ": is a folder, expected a prompt file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot read the prompt file");
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kMaxPromptFile)
    throw Error(path.string() + ": " + std::to_string(size) + " bytes is over the " + std::to_string(kMaxPromptFile >> 20) +
                " MiB a prompt file may have (split it)");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path.string() + ": read error");
  return parse_prompt_file(content, path.string(), path.extension() == ".jsonl");
}

PromptFile parse_prompt_file(std::string_view content, const std::string& name, bool jsonl) {
  std::vector<std::pair<int64_t, std::string_view>> lines;
  int64_t number = 0;
  for (size_t start = 0; start < content.size();) {
    size_t end = content.find('\n', start);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(start, end - start);
    start = end + 1;
    ++number;
    if (number == 1 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);  // UTF-8 BOM
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string_view::npos || line[b] == '#') continue;
    lines.emplace_back(number, line);
  }
  if (!jsonl && !lines.empty()) {
    jsonl = true;
    for (const auto& [n, text] : lines) jsonl = jsonl && text[text.find_first_not_of(" \t\r")] == '{';
  }
  PromptFile file;
  int64_t ordinal = 0;
  for (const auto& [n, text] : lines) {
    PromptJob job;
    job.line = n;
    job.ordinal = ordinal++;  // bad lines keep their place, so shards stay the same when one is fixed
    const std::string where = name + ":" + std::to_string(n);
    try {
      if (text.size() > kMaxPromptLine)
        throw Error(where + ": line of " + std::to_string(text.size()) + " bytes is over the " +
                    std::to_string(kMaxPromptLine >> 10) + " KiB a line may have");
      if (jsonl) parse_jsonl_line(where, trim(std::string(text)), job);
      else job.prompt = trim(std::string(text));
    } catch (const Error& e) {
      file.errors.push_back({n, job.ordinal, e.what()});
      continue;
    }
    file.jobs.push_back(std::move(job));
  }
  return file;
}

Shard parse_shard(const std::string& text) {
  size_t slash = text.find('/');
  Shard shard;
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used_i = 0, used_n = 0;
    shard.index = std::stoll(text.substr(0, slash), &used_i);
    shard.count = std::stoll(text.substr(slash + 1), &used_n);
    if (used_i != slash || used_n != text.size() - slash - 1) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    throw Error("--shard " + text + ": expected i/n, e.g. 0/4 (0-based shard index i of n shards)");
  }
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw Error("--shard " + text + ": need n >= 1 and 0 <= i < n");
  return shard;
}

std::string expand_name_template(const std::string& tmpl, const NameFields& f) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      out += tmpl[i];
      continue;
    }
    size_t close = tmpl.find('}', i);
    if (close == std::string::npos) throw Error("output name '" + tmpl + "': unclosed '{'");
    std::string spec = tmpl.substr(i + 1, close - i - 1);
    std::string name = spec, format;
    if (size_t colon = spec.find(':'); colon != std::string::npos) {
      name = spec.substr(0, colon);
      format = spec.substr(colon + 1);
    }
    std::string value;
    if (name == "seed") value = std::to_string(f.seed);
    else if (name == "image") value = std::to_string(f.image);
    else if (name == "line") value = std::to_string(f.line);
    else if (name == "index") value = std::to_string(f.index);
    else throw Error("output name '" + tmpl + "': unknown placeholder {" + spec + "} (expected {seed}, {image}, {line} or {index})");
    if (!format.empty()) {
      if (format.size() < 2 || format[0] != '0' || format.find_first_not_of("0123456789") != std::string::npos)
        throw Error("output name '" + tmpl + "': format in {" + spec + "} must be 0N, e.g. {line:05}");
      size_t width = std::stoul(format);
      if (value.size() < width) value = std::string(width - value.size(), '0') + value;
    }
    out += value;
    i = close;
  }
  return out;
}

std::string output_template(const std::string& output, bool from_file, int64_t images_per_prompt) {
  const std::string per_image = from_file ? "{line:05}-{image}" : "{seed}";
  if (output.find('{') != std::string::npos) return output;
  if (output.empty()) return (fs::path("outputs") / (per_image + ".png")).string();
  if (output.back() == '/' || fs::is_directory(output)) return (fs::path(output) / (per_image + ".png")).string();
  if (!from_file && images_per_prompt == 1) return output;
  fs::path p(output);
  std::string ext = p.has_extension() ? p.extension().string() : ".png";
  return (p.parent_path() / (p.stem().string() + "-" + per_image + ext)).string();
}

}  // namespace taiyi
