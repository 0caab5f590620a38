// The model folder (model_index.json) and typed config access; see include/taiyi/loaders/model_folder.h.
#include "taiyi/loaders/model_folder.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

Config::Config(Json json, fs::path path) : json_(std::move(json)), path_(std::move(path)) {
  if (!json_.is_object()) throw Error(path_.string() + ": expected a JSON object at the top level");
}

Config Config::load(const fs::path& path) { return Config(read_json_file(path), path); }

bool Config::has(const std::string& key) const { return json_.contains(key) && !json_.at(key).is_null(); }

const Json& Config::at(const std::string& key) const {
  if (!has(key)) throw Error(path_.string() + ": missing key '" + key + "'");
  return json_.at(key);
}

// A JSON number as an int64 when it is one exactly (2 and 2.0; not 2.5, nor beyond int64's range, which
// a plain cast would make undefined: found by tests/fuzz).
static std::optional<int64_t> exact_int(const Json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!(d >= -9.2233720368547758e18 && d < 9.2233720368547758e18) || d != std::trunc(d)) return std::nullopt;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

int64_t Config::get_int(const std::string& key) const {
  const Json& v = at(key);
  if (const auto value = exact_int(v)) return *value;
  throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected an integer");
}

int64_t Config::get_int(const std::string& key, int64_t fallback) const { return has(key) ? get_int(key) : fallback; }

double Config::get_double(const std::string& key) const {
  const Json& v = at(key);
  if (!v.is_number()) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a number");
  return v.get<double>();
}

double Config::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

bool Config::get_bool(const std::string& key) const {
  const Json& v = at(key);
  if (!v.is_boolean()) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected true or false");
  return v.get<bool>();
}

bool Config::get_bool(const std::string& key, bool fallback) const { return has(key) ? get_bool(key) : fallback; }

std::string Config::get_string(const std::string& key) const {
  const Json& v = at(key);
  if (!v.is_string()) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a string");
  return v.get<std::string>();
}

std::string Config::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

std::vector<int64_t> Config::get_int_list(const std::string& key) const {
  const Json& v = at(key);
  if (!v.is_array()) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a list of integers");
  std::vector<int64_t> out;
  for (const Json& item : v) {
    const auto value = item.is_number_integer() ? exact_int(item) : std::nullopt;
    if (!value) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a list of integers");
    out.push_back(*value);
  }
  return out;
}

std::vector<std::string> Config::get_string_list(const std::string& key) const {
  const Json& v = at(key);
  if (!v.is_array()) throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a list of strings");
  std::vector<std::string> out;
  for (const Json& item : v) {
    if (!item.is_string())
      throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::vector<int64_t> Config::get_int_or_list(const std::string& key, size_t count) const {
  const Json& v = at(key);
  if (v.is_array()) {
    std::vector<int64_t> list = get_int_list(key);
    if (list.size() != count)
      throw Error(path_.string() + ": key '" + key + "' = " + json_excerpt(v) + ": expected " + std::to_string(count) +
                  " entries");
    return list;
  }
  return std::vector<int64_t>(count, get_int(key));
}

std::vector<int64_t> Config::get_int_or_list(const std::string& key, size_t count, int64_t fallback) const {
  return has(key) ? get_int_or_list(key, count) : std::vector<int64_t>(count, fallback);
}

void Config::unsupported(const std::string& key, const std::string& what) const {
  std::string value = json_.contains(key) ? json_excerpt(json_.at(key)) : "(absent)";
  throw Error(path_.string() + ": key '" + key + "' = " + value + " is not supported: " + what);
}

ModelFolder ModelFolder::open(const fs::path& root, const std::string& variant) {
  if (!fs::exists(root)) throw Error(root.string() + ": model folder not found");
  if (!fs::is_directory(root)) throw Error(root.string() + ": not a folder (expected a diffusers model folder)");
  fs::path index_path = root / "model_index.json";
  if (!fs::exists(index_path))
    throw Error(index_path.string() + ": file not found (not a diffusers model folder; a single-file checkpoint is "
                                      "given as the file itself: -m model.safetensors)");
  ModelFolder folder = from_index(root, read_json_file(index_path));
  folder.variant_ = variant;
  return folder;
}

ModelFolder ModelFolder::from_index(const fs::path& root, Json index) {
  if (!index.is_object()) throw Error((root / "model_index.json").string() + ": expected a JSON object");
  ModelFolder folder;
  folder.root_ = root;
  folder.index_ = std::move(index);
  return folder;
}

ModelFolder ModelFolder::for_single_file(const fs::path& file, TextEncoderKind kind, const fs::path& config_dir,
                                         bool sdxl) {
  ModelFolder folder = !config_dir.empty() ? open(config_dir)
                       : sdxl              ? from_index(file, builtin_sdxl_model_index())
                                           : from_index(file, builtin_model_index(kind));
  folder.root_ = file;
  folder.single_file_ = true;
  folder.kind_ = kind;
  folder.config_dir_ = config_dir;
  if (!config_dir.empty() && folder.text_encoder_kind() != kind)
    throw Error(file.string() + ": holds a " + (kind == TextEncoderKind::Clip ? "CLIP" : "BERT") +
                " text encoder but --config-dir " + config_dir.string() + " is for a " +
                folder.class_name("text_encoder") + " model: use the config folder of the same model");
  if (folder.is_sdxl() != sdxl)
    throw Error(file.string() + ": " + (sdxl ? "an SDXL" : "an SD 1.x") + " checkpoint, but --config-dir " +
                config_dir.string() + " is " + (sdxl ? "not an SDXL folder (no text_encoder_2 in model_index.json)" : "an SDXL folder") +
                ": use the config folder of the same model");
  return folder;
}

fs::path ModelFolder::index_path() const {
  if (builtin_configs()) return root_.string() + " (built-in model_index.json)";
  return (single_file_ ? config_dir_ : root_) / "model_index.json";
}

std::string ModelFolder::class_name(const std::string& component) const {
  const fs::path index_path = this->index_path();
  if (!index_.contains(component))
    throw Error(index_path.string() + ": no '" + component + "' entry (expected [\"library\", \"ClassName\"])");
  const Json& entry = index_.at(component);
  if (!entry.is_array() || entry.size() != 2 || !entry[1].is_string())
    throw Error(index_path.string() + ": '" + component + "' = " + json_excerpt(entry) +
                ": expected [\"library\", \"ClassName\"]");
  return entry[1].get<std::string>();
}

fs::path ModelFolder::component_dir(const std::string& component) const {
  if (builtin_configs()) throw Error(root_.string() + ": a single file has no " + component + " folder (its configs are built in)");
  fs::path dir = (single_file_ ? config_dir_ : root_) / component;
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": component folder not found");
  return dir;
}

Config ModelFolder::config(const std::string& component) const {
  if (builtin_configs() && is_sdxl())
    return Config(builtin_sdxl_config(component), root_.string() + " (" + builtin_sdxl_source(component) + ")");
  if (builtin_configs())
    return Config(builtin_config(component, kind_), root_.string() + " (" + builtin_source(kind_, component) + ")");
  fs::path dir = component_dir(component);
  return Config::load(dir / (component == "scheduler" ? "scheduler_config.json" : "config.json"));
}

TextEncoderKind ModelFolder::text_encoder_kind() const {
  std::string encoder = class_name("text_encoder");
  if (encoder == "CLIPTextModel") return TextEncoderKind::Clip;
  if (encoder == "BertModel") return TextEncoderKind::Bert;
  throw Error(index_path().string() + ": text_encoder class " + quoted_excerpt(encoder, 60) +
              " is not supported (expected CLIPTextModel or BertModel)");
}

bool ModelFolder::is_sdxl() const {
  // The SDXL pipelines (StableDiffusionXLPipeline, ...Img2Img..., ...Inpaint...) all hold text_encoder_2;
  // the refiner (no text_encoder) is refused where its text encoder is asked for.
  const auto encoder_2 = index_.find("text_encoder_2");
  return encoder_2 != index_.end() && encoder_2->is_array() && encoder_2->size() == 2 && !(*encoder_2)[1].is_null();
}

bool ModelFolder::force_zeros_for_empty_prompt() const {
  const auto value = index_.find("force_zeros_for_empty_prompt");
  if (value == index_.end()) return is_sdxl();  // the SDXL pipelines' default (register_to_config)
  if (!value->is_boolean())
    throw Error(index_path().string() + ": force_zeros_for_empty_prompt must be true or false");
  return value->get<bool>();
}

// diffusers' utils/hub_utils._add_variant: "diffusion_pytorch_model.safetensors" -> "diffusion_pytorch_model.fp16.safetensors".
static std::string with_variant(const std::string& name, const std::string& variant) {
  if (variant.empty()) return name;
  const size_t dot = name.rfind('.');
  return name.substr(0, dot) + "." + variant + name.substr(dot);
}

// The shards listed by an index file's weight_map, each a file of `dir`.
static std::vector<fs::path> shard_files(const fs::path& dir, const fs::path& index_path) {
  Json index = read_json_file(index_path);
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path.string() + ": missing 'weight_map' object");
  std::vector<fs::path> files;
  for (const auto& item : index["weight_map"].items()) {
    // A shard is a file of this folder: a path elsewhere ("../x", "/etc/x") is refused.
    const std::string shard_name = item.value().is_string() ? item.value().get<std::string>() : std::string();
    if (shard_name.empty() || shard_name.find('/') != std::string::npos || shard_name == "." || shard_name == "..")
      throw Error(index_path.string() + ": weight_map[" + quoted_excerpt(item.key(), 80) + "] = " + json_excerpt(item.value()) +
                  ": expected the file name of a shard in this folder");
    fs::path shard = dir / shard_name;
    if (std::find(files.begin(), files.end(), shard) == files.end()) files.push_back(shard);
  }
  return files;
}

// diffusers' ModelMixin.from_pretrained / transformers' PreTrainedModel.from_pretrained, for a local folder:
// safetensors before PyTorch pickles (.bin, read by the restricted reader), single files before shards,
// the variant's names when one is asked for (an index named "<name>.index.<variant>.json", or the older
// "<name with variant>.index.json").
std::vector<fs::path> ModelFolder::weight_files(const std::string& component) const {
  if (single_file_) return {root_};
  return component_weight_files(component_dir(component), variant_);
}

std::vector<fs::path> component_weight_files(const fs::path& dir, const std::string& variant_) {
  for (const char* base : {"model", "diffusion_pytorch_model", "pytorch_model"}) {
    for (const char* ext : {".safetensors", ".bin"}) {
      const std::string name = std::string(base) + ext;
      if (std::string(base) == "pytorch_model" && std::string(ext) == ".safetensors") continue;
      if (fs::exists(dir / with_variant(name, variant_))) return {dir / with_variant(name, variant_)};
      for (const std::string& index_name :
           {with_variant(name + ".index.json", variant_), with_variant(name, variant_) + ".index.json"})
        if (fs::exists(dir / index_name)) return shard_files(dir, dir / index_name);
    }
  }
  std::string found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (ext == ".safetensors" || ext == ".bin" || ext == ".ckpt" || ext == ".pt")
      found += (found.empty() ? "" : ", ") + entry.path().filename().string();
  }
  if (!variant_.empty())
    throw Error(dir.string() + ": no weights of variant '" + variant_ + "' (expected diffusion_pytorch_model." + variant_ +
                ".safetensors or model." + variant_ + ".safetensors" + (found.empty() ? "" : "; found " + found) + ")");
  throw Error(dir.string() + ": no weights found (expected model.safetensors, diffusion_pytorch_model.safetensors or "
                             "their .bin forms" + (found.empty() ? "" : "; found " + found) + ")");
}

}  // namespace taiyi
