// Opening what users download: diffusers folders as the hub has them and single-file LDM checkpoints,
// mirroring diffusers' loaders/single_file.py (from_single_file with config=<folder>) and
// single_file_utils.py (the conversions, in single_file_utils.cpp), and the web UI's modules/sd_vae.py
// for a separate VAE.
#include "taiyi/loaders/single_file.h"

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>

#include <torch/torch.h>

#include "taiyi/loaders/single_file_utils.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct ModelSource::Checkpoint {
  StateDict tensors;                   // the file's tensors under its own (LDM) names
  std::vector<CheckpointKey> keys;     // names and shapes, for the conversions
};

namespace {

std::vector<CheckpointKey> checkpoint_keys(const StateDict& tensors) {
  std::vector<CheckpointKey> keys;
  keys.reserve(tensors.size());
  for (const std::string& name : tensors.names()) {
    const torch::Tensor& view = *tensors.find(name);
    keys.push_back({name, std::vector<int64_t>(view.sizes().begin(), view.sizes().end())});
  }
  return keys;
}

// The converted names applied to lazy views: renamed, the LDM VAE attention's 1x1 convolutions taken as
// Linear weights ([:, :, 0, 0], diffusers' conv_attn_to_linear), OpenCLIP's fused q/k/v projection split
// by rows and its text_projection transposed (convert_open_clip_checkpoint), all without reading data.
StateDict converted(const StateDict& tensors, const ConvertedKeys& keys, const std::string& source) {
  StateDict out = StateDict::named(source);
  for (const KeyMapping& m : keys.mapped) {
    torch::Tensor view = *tensors.find(m.from);
    if (m.conv_to_linear)  // w[:, :, 0, 0] (or w[:, :, 0]): the first two dimensions, index 0 in the rest
      while (view.dim() > 2) view = view.select(view.dim() - 1, 0);
    if (m.row_begin >= 0) view = view.narrow(0, m.row_begin, m.shape.at(0));
    if (m.transpose) view = view.t();
    out.add(m.to, view, tensors.origin(m.from));
  }
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// A VAE file in diffusers' names (encoder.down_blocks..., decoder.up_blocks...) rather than the LDM's.
bool has_diffusers_vae_names(const StateDict& tensors) {
  for (const std::string& name : tensors.names())
    if (starts_with(name, "encoder.down_blocks.") || starts_with(name, "decoder.up_blocks.") ||
        starts_with(name, "decoder.mid_block.") || starts_with(name, "encoder.mid_block."))
      return true;
  return false;
}

// A diffusers-named VAE, with the 2022 attention names (query/key/value/proj_attn) renamed as diffusers'
// ModelMixin does on load; unchanged when it has none.
StateDict diffusers_vae(const StateDict& tensors) {
  const ConvertedKeys keys = convert_deprecated_vae_attention_names(checkpoint_keys(tensors));
  return converted(tensors, keys, tensors.source());
}

}  // namespace

std::string yaml_prediction_type(const fs::path& checkpoint) {
  fs::path yaml = checkpoint;
  yaml.replace_extension(".yaml");
  std::error_code ec;
  if (!fs::is_regular_file(yaml, ec)) return "";
  std::ifstream in(yaml);
  std::string line;
  // The web UI reads model.params.parameterization of the LDM config; a line of that key is enough
  // (the file is the whole LDM config, bounded here to its first 10,000 lines).
  static const std::regex key(R"(^\s*parameterization\s*:\s*["']?([A-Za-z0-9_]+)["']?\s*(#.*)?$)");
  for (int n = 0; n < 10000 && std::getline(in, line); ++n) {
    std::smatch m;
    if (!std::regex_match(line, m, key)) continue;
    if (m[1] == "v") return "v_prediction";
    if (m[1] == "eps") return "";
    throw Error(yaml.string() + ": parameterization " + quoted_excerpt(m[1].str(), 40) + ": expected \"v\" or \"eps\"");
  }
  return "";
}

namespace {

// SDXL's text encoders in the file: CLIP ViT-L/14 (text_encoder) and OpenCLIP bigG (text_encoder_2), by
// their token and position tables.
struct SdxlTextTables {
  const char* component;
  const char* token_embedding;
  const char* position_embedding;
};
constexpr SdxlTextTables kSdxlTextTables[] = {
    {"text_encoder", "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
     "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"},
    {"text_encoder_2", "conditioner.embedders.1.model.token_embedding.weight",
     "conditioner.embedders.1.model.positional_embedding"}};
constexpr const char* kOpenClipPrefix = "conditioner.embedders.1.model.";  // diffusers' open_clip_sdxl

}  // namespace

static Json single_file_overrides(const fs::path& file, const std::vector<CheckpointKey>& keys,
                                  const ModelSourceOptions& options) {
  Json overrides = Json::object();
  for (const CheckpointKey& key : keys) {
    // The UNet's in_channels from the file (9 for inpainting), which a generic config cannot know.
    if (key.name == "model.diffusion_model.input_blocks.0.0.weight" && key.shape.size() == 4)
      overrides["unet"]["in_channels"] = key.shape[1];
    // SDXL's text encoders: vocabulary and positions from the tables ([57475, 768] and [512, 768] for
    // Taiyi-XL, whose encoders are SDXL's with Chinese tokens added and 512 positions).
    for (const SdxlTextTables& tables : kSdxlTextTables) {
      if (key.shape.size() != 2) continue;
      if (key.name == tables.token_embedding) overrides[tables.component]["vocab_size"] = key.shape[0];
      if (key.name == tables.position_embedding) overrides[tables.component]["max_position_embeddings"] = key.shape[0];
    }
  }
  std::string prediction = options.prediction_type.empty() ? yaml_prediction_type(file) : options.prediction_type;
  if (!prediction.empty()) overrides["scheduler"]["prediction_type"] = prediction;
  return overrides;
}

// An SDXL file's second text encoder must be there; with the built-in configs, its encoders must be SDXL
// base's (49408 tokens, 77 positions): Taiyi-XL's added Chinese tokens live only in its tokenizer folders.
static void check_sdxl_text_encoders(const fs::path& file, const std::vector<CheckpointKey>& keys,
                                     const Json& overrides, bool builtin_configs) {
  const bool open_clip = std::any_of(keys.begin(), keys.end(), [](const CheckpointKey& key) {
    return key.name == std::string(kOpenClipPrefix) + "positional_embedding";
  });
  if (!open_clip)
    throw Error(file.string() + ": an SDXL checkpoint without its second text encoder (no " +
                quoted_name(std::string(kOpenClipPrefix) + "positional_embedding") + ")");
  if (!builtin_configs) return;
  for (const SdxlTextTables& tables : kSdxlTextTables) {
    const Json& text = overrides.value(tables.component, Json::object());
    const int64_t vocab = text.value("vocab_size", int64_t{49408}), positions = text.value("max_position_embeddings", int64_t{77});
    if (vocab != 49408 || positions != 77)
      throw Error(file.string() + ": " + tables.component + " has " + std::to_string(vocab) + " tokens and " +
                  std::to_string(positions) + " positions (SDXL base: 49408 and 77), a Taiyi-XL-like model whose "
                  "tokenizers are not built in: pass --config-dir with its diffusers folder (tokenizer, tokenizer_2)");
  }
}

void ModelSource::open_checkpoint(const fs::path& model, const ModelSourceOptions& options) {
  auto checkpoint = std::make_shared<Checkpoint>();
  checkpoint->tensors = read_weights_file(model);
  checkpoint->keys = checkpoint_keys(checkpoint->tensors);
  const ModelType type = infer_model_type(checkpoint->keys);
  check_model_type(type, model.string());
  const bool sdxl = is_sdxl_model_type(type);
  const std::optional<TextEncoderKind> found = infer_text_encoder_kind(checkpoint->keys);
  if (!found)
    throw Error(model.string() + ": no text encoder (neither CLIP's nor BERT's " +
                (sdxl ? "conditioner.embedders.0.transformer.*" : "cond_stage_model.transformer.*") + " weights)");
  const TextEncoderKind kind = *found;
  config_overrides_ = single_file_overrides(model, checkpoint->keys, options);
  if (sdxl) check_sdxl_text_encoders(model, checkpoint->keys, config_overrides_, options.config_dir.empty());
  folder_ = ModelFolder::for_single_file(model, kind, options.config_dir, sdxl);
  checkpoint_ = checkpoint;
  has_ema_ = has_ema_weights(checkpoint->keys);
  if (options.extract_ema && !has_ema_)
    throw Error("--extract-ema: " + model.string() + " holds no EMA weights (more than 100 model_ema.* keys)");
  extract_ema_ = options.extract_ema;
  const std::string encoders = sdxl ? "CLIP and OpenCLIP text encoders" : kind == TextEncoderKind::Clip ? "CLIP text encoder"
                                                                                                   : "BERT text encoder";
  description_ = "single file (LDM layout, " + model.extension().string() + "), " + model_type_name(type) + ", " + encoders +
                 ", " + (options.config_dir.empty() ? "built-in configs" : "configs from " + options.config_dir.string()) +
                 (has_ema_ ? (options.extract_ema ? ", EMA weights used" : ", EMA weights present (not used)") : "");
}

ModelSource ModelSource::open(const fs::path& model, const ModelSourceOptions& options) {
  if (!options.prediction_type.empty() && options.prediction_type != "epsilon" && options.prediction_type != "v_prediction")
    throw Error("--prediction-type " + options.prediction_type + ": expected epsilon or v_prediction");
  ModelSource source;
  std::error_code ec;
  if (fs::is_directory(model, ec)) {
    if (!options.config_dir.empty()) throw Error("--config-dir is for single-file checkpoints; " + model.string() + " is a folder");
    if (options.extract_ema) throw Error("--extract-ema is for single-file checkpoints; " + model.string() + " is a folder");
    source.folder_ = ModelFolder::open(model, options.variant);
    source.description_ = "diffusers folder" + (options.variant.empty() ? std::string() : ", variant " + options.variant);
    if (!options.prediction_type.empty()) source.config_overrides_["scheduler"]["prediction_type"] = options.prediction_type;
  } else {
    if (!fs::exists(model, ec)) throw Error(model.string() + ": model not found (expected a diffusers folder or a checkpoint file)");
    if (!options.variant.empty()) throw Error("--variant is for diffusers folders; " + model.string() + " is a single file");
    source.open_checkpoint(model, options);
  }
  if (!options.vae.empty()) {
    source.vae_ = options.vae;
    if (fs::is_directory(options.vae, ec)) source.vae_folder_ = options.vae;
    else if (!fs::exists(options.vae, ec)) throw Error("--vae " + options.vae.string() + ": file not found");
  }
  return source;
}

Config ModelSource::config(const std::string& component) const {
  Config config = component == "vae" && !vae_folder_.empty() ? Config::load(vae_folder_ / "config.json")
                                                             : folder_.config(component);
  if (!config_overrides_.contains(component)) return config;
  Json json = config.json();
  json.update(config_overrides_.at(component));  // what the file (or an option) says beats the generic config
  return Config(std::move(json), config.path());
}

StateDict ModelSource::vae_state_dict() const {
  if (!vae_folder_.empty()) return diffusers_vae(read_weights_files(component_weight_files(vae_folder_, "")));
  // The web UI's sd_vae.load_vae_dict: loss.* and model_ema.* are training state, never weights.
  StateDict file = read_weights_file(vae_);
  if (has_diffusers_vae_names(file)) {
    StateDict kept = StateDict::named(file.source());
    for (const std::string& name : file.names())
      if (!starts_with(name, "loss.") && !starts_with(name, "model_ema.")) kept.add(name, *file.find(name));
    return diffusers_vae(kept);
  }
  const Config vae = config("vae");
  return converted(file,
                   convert_ldm_vae_checkpoint(checkpoint_keys(file), vae_.string(),
                                              static_cast<int64_t>(vae.get_string_list("down_block_types").size()),
                                              static_cast<int64_t>(vae.get_string_list("up_block_types").size())),
                   file.source());
}

StateDict ModelSource::state_dict(const std::string& component) const {
  if (component == "vae" && !vae_.empty()) return vae_state_dict();
  if (!checkpoint_) {
    StateDict weights = read_weights_files(folder_.weight_files(component));
    return component == "vae" ? diffusers_vae(weights) : weights;
  }
  return converted(checkpoint_->tensors, converted_keys(component), folder_.root().string() + " (" + component + ")");
}

// diffusers' create_diffusers_clip_model_from_ldm takes an SDXL encoder from the file only when its position
// table is as wide as the model built from the config (else "does not seem to contain a valid CLIP model").
static void check_position_width(const std::vector<CheckpointKey>& keys, const std::string& file, const char* name,
                                 const Config& text) {
  const int64_t width = text.get_int("hidden_size");
  for (const CheckpointKey& key : keys)
    if (key.name == name && !key.shape.empty() && key.shape.back() == width) return;
  throw Error(file + ": no " + quoted_name(name) + " of width " + std::to_string(width) + " (the hidden_size of " +
              text.path().string() + ")");
}

// diffusers' single_file_utils conversions of a single file's keys for one component.
ConvertedKeys ModelSource::converted_keys(const std::string& component) const {
  const std::vector<CheckpointKey>& keys = checkpoint_->keys;
  const std::string file = folder_.root().string();
  if (component == "unet") return convert_ldm_unet_checkpoint(keys, file, config("unet"), extract_ema_);
  if (component == "vae") {
    const Config vae = config("vae");
    return convert_ldm_vae_checkpoint(keys, file, static_cast<int64_t>(vae.get_string_list("down_block_types").size()),
                                      static_cast<int64_t>(vae.get_string_list("up_block_types").size()));
  }
  if (component == "text_encoder") {
    if (folder_.is_sdxl()) check_position_width(keys, file, kSdxlTextTables[0].position_embedding, config(component));
    return folder_.text_encoder_kind() == TextEncoderKind::Clip ? convert_ldm_clip_checkpoint(keys)
                                                                : convert_ldm_bert_checkpoint(keys);
  }
  // diffusers tries the CLIP-L table first, by width: where text_encoder_2 were as wide as CLIP-L it would
  // read CLIP-L's weights (and lack text_projection); SDXL's widths differ (768, 1280), taiyi reads OpenCLIP's.
  if (component == "text_encoder_2" && folder_.is_sdxl()) {
    const Config text = config(component);
    check_position_width(keys, file, kSdxlTextTables[1].position_embedding, text);
    return convert_open_clip_checkpoint(keys, file, kOpenClipPrefix, text.get_int("hidden_size"));
  }
  throw Error(folder_.root().string() + ": no component '" + component + "' in a single file");
}

std::vector<std::string> ModelSource::unused_keys() const {
  if (!checkpoint_) return {};
  std::set<std::string> used;
  for (const char* component : {"text_encoder", "text_encoder_2", "unet", "vae"}) {
    if (std::string(component) == "vae" && !vae_.empty()) continue;  // the file's own VAE is replaced
    if (std::string(component) == "text_encoder_2" && !folder_.is_sdxl()) continue;
    for (const KeyMapping& m : converted_keys(component).mapped) used.insert(m.from);
  }
  std::vector<std::string> unused;
  for (const std::string& name : checkpoint_->tensors.names())
    if (!used.count(name)) unused.push_back(name);
  return unused;
}

}  // namespace taiyi
