// The model folder in the diffusers layout and typed access to its JSON configs.
//
//   auto folder = taiyi::ModelFolder::open("models/taiyi");   // reads model_index.json
//   taiyi::Config unet_cfg = folder.config("unet");            // unet/config.json
//   int64_t ch = unet_cfg.get_int("in_channels");              // Error names file and key when absent
//
// No size is hard-coded anywhere in taiyi: every module reads its sizes through Config.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/utils/json.h"

namespace taiyi {

// A parsed config.json with typed getters whose errors name the file, the key, the value and the
// expected type. Getters with a default return it when the key is absent or null.
class Config {
 public:
  Config() = default;
  Config(nlohmann::json json, std::filesystem::path path);
  static Config load(const std::filesystem::path& path);

  bool has(const std::string& key) const;  // present and not null
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> get_int_list(const std::string& key) const;
  std::vector<std::string> get_string_list(const std::string& key) const;
  // An int or a list of ints (diffusers' "int or tuple" keys such as attention_head_dim): a single
  // int is repeated `count` times; a list must have exactly `count` entries.
  std::vector<int64_t> get_int_or_list(const std::string& key, size_t count) const;
  std::vector<int64_t> get_int_or_list(const std::string& key, size_t count, int64_t fallback) const;

  // Error "<file>: key '<key>' = <value>: <what>" for an option taiyi does not support.
  [[noreturn]] void unsupported(const std::string& key, const std::string& what) const;

  const nlohmann::json& json() const { return json_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  const nlohmann::json& at(const std::string& key) const;
  nlohmann::json json_ = nlohmann::json::object();
  std::filesystem::path path_;
};

enum class TextEncoderKind { Clip, Bert };

// A diffusers pipeline folder: model_index.json names the component classes; each component has
// its own sub-folder with config.json (scheduler: scheduler_config.json) and weights. Or a single-file
// checkpoint (the LDM layout), whose configs and tokenizer are built in (single_file_configs.h) or come
// from a diffusers folder (--config-dir), as diffusers' from_single_file(file, config=folder).
class ModelFolder {
 public:
  // `variant`: diffusers' variant="fp16" (diffusion_pytorch_model.fp16.safetensors, model.fp16.safetensors).
  static ModelFolder open(const std::filesystem::path& root, const std::string& variant = "");
  // `config_dir` empty: the built-in configs of `kind`'s model, or with `sdxl` those of SDXL base
  // (single_file_configs.h: builtin_sdxl_*; is_sdxl() is then true). A `config_dir` must be of the same
  // family (an SDXL folder for an SDXL file), else Error.
  static ModelFolder for_single_file(const std::filesystem::path& file, TextEncoderKind kind,
                                     const std::filesystem::path& config_dir, bool sdxl = false);
  bool is_single_file() const { return single_file_; }
  // A single file without --config-dir: configs and tokenizer are the built-in ones.
  bool builtin_configs() const { return single_file_ && config_dir_.empty(); }
  const std::string& variant() const { return variant_; }
  // A folder from its parsed model_index.json (open reads it; the fuzz target gives it directly).
  static ModelFolder from_index(const std::filesystem::path& root, nlohmann::json index);

  const std::filesystem::path& root() const { return root_; }
  // model_index.json, or what stands for it in messages ("<file> (built-in model_index.json)").
  std::filesystem::path index_path() const;
  // The class named in model_index.json for a component, e.g. "UNet2DConditionModel".
  std::string class_name(const std::string& component) const;
  std::filesystem::path component_dir(const std::string& component) const;
  // <component>/config.json, or scheduler/scheduler_config.json for "scheduler".
  Config config(const std::string& component) const;
  // CLIPTextModel + CLIPTokenizer, or BertModel + BertTokenizer (Taiyi Chinese-v0.1).
  TextEncoderKind text_encoder_kind() const;
  // An SDXL-family pipeline: model_index.json names a text_encoder_2 (CLIPTextModelWithProjection) and a
  // tokenizer_2 besides text_encoder / tokenizer (StableDiffusionXLPipeline and its img2img / inpaint siblings).
  bool is_sdxl() const;
  // model_index.json's force_zeros_for_empty_prompt (SDXL: no negative prompt means zero embeddings).
  bool force_zeros_for_empty_prompt() const;
  // The weight files of a component, as diffusers / transformers pick them in a local folder:
  // model.safetensors, diffusion_pytorch_model.safetensors, their .bin forms, or the shards of an
  // index (*.safetensors.index.json, *.bin.index.json), with the variant's names when one is set. Error
  // when there are none, naming what the folder has. A single file: the file itself.
  std::vector<std::filesystem::path> weight_files(const std::string& component) const;

 private:
  std::filesystem::path root_;    // the folder, or the single file
  nlohmann::json index_;
  std::string variant_;
  bool single_file_ = false;
  TextEncoderKind kind_ = TextEncoderKind::Clip;  // single files
  std::filesystem::path config_dir_;              // single files: --config-dir, or empty (built in)
};

// The weight files of a component folder `dir` (ModelFolder::weight_files' rule), e.g. a --vae folder.
std::vector<std::filesystem::path> component_weight_files(const std::filesystem::path& dir, const std::string& variant);

}  // namespace taiyi
