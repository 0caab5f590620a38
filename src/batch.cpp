// Prompt files, shards and output names; see include/taiyi/batch.h.
#include "taiyi/batch.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "taiyi/error.h"

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
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw Error(where + ": malformed JSON: " + std::string(e.what()).substr(std::string(e.what()).find(' ') + 1));
  }
  if (!j.is_object()) throw Error(where + ": expected a JSON object with a \"prompt\"");
  static const char* known[] = {"prompt", "negative_prompt", "seed",     "steps",      "cfg_scale", "width",
                                "height", "output",          "sampler",  "schedule",   "init_image", "strength",
                                "mask",   "clip_skip"};
  for (const auto& item : j.items()) {
    if (std::find(std::begin(known), std::end(known), item.key()) == std::end(known))
      throw Error(where + ": unknown key \"" + item.key() +
                  "\" (expected prompt, negative_prompt, seed, steps, cfg_scale, width, height, output, sampler, schedule, "
                  "init_image, strength, mask, clip_skip)");
  }
  auto get_string = [&](const char* key) -> std::optional<std::string> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_string()) throw Error(where + ": \"" + key + "\" must be a string, got " + j[key].dump());
    return j[key].get<std::string>();
  };
  auto get_int = [&](const char* key) -> std::optional<int64_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number_integer()) throw Error(where + ": \"" + key + "\" must be an integer, got " + j[key].dump());
    return j[key].get<int64_t>();
  };
  std::optional<std::string> prompt = get_string("prompt");
  if (!prompt) throw Error(where + ": missing \"prompt\"");
  job.prompt = *prompt;
  job.negative_prompt = get_string("negative_prompt");
  if (j.contains("seed") && !j["seed"].is_null()) {
    if (!j["seed"].is_number_unsigned()) throw Error(where + ": \"seed\" must be a non-negative integer, got " + j["seed"].dump());
    job.seed = j["seed"].get<uint64_t>();
  }
  job.steps = get_int("steps");
  if (j.contains("cfg_scale") && !j["cfg_scale"].is_null()) {
    if (!j["cfg_scale"].is_number()) throw Error(where + ": \"cfg_scale\" must be a number, got " + j["cfg_scale"].dump());
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
    throw Error(where + ": \"clip_skip\" " + j["clip_skip"].dump() + ": must be at least 1 (1: the last layer)");
  if (j.contains("strength") && !j["strength"].is_null()) {
    if (!j["strength"].is_number()) throw Error(where + ": \"strength\" must be a number, got " + j["strength"].dump());
    job.strength = j["strength"].get<double>();
    if (!(*job.strength > 0 && *job.strength <= 1))
      throw Error(where + ": \"strength\" " + j["strength"].dump() + ": must be greater than 0 and at most 1");
  }
}

PromptFile read_prompt_file(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": prompt file not found");
  if (fs::is_directory(path)) throw Error(path.string() + ": is a folder, expected a prompt file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot read the prompt file");
  std::vector<std::pair<int64_t, std::string>> lines;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line = line.substr(3);  // UTF-8 BOM
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    lines.emplace_back(number, line);
  }
  if (in.bad()) throw Error(path.string() + ": read error");
  bool jsonl = path.extension() == ".jsonl";
  if (!jsonl && !lines.empty()) {
    jsonl = true;
    for (const auto& [n, text] : lines) jsonl = jsonl && trim(text)[0] == '{';
  }
  PromptFile file;
  int64_t ordinal = 0;
  for (const auto& [n, text] : lines) {
    PromptJob job;
    job.line = n;
    job.ordinal = ordinal++;  // bad lines keep their place, so shards stay the same when one is fixed
    const std::string where = path.string() + ":" + std::to_string(n);
    if (jsonl) {
      try {
        parse_jsonl_line(where, trim(text), job);
      } catch (const Error& e) {
        file.errors.push_back({n, job.ordinal, e.what()});
        continue;
      }
    } else {
      job.prompt = trim(text);
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
