// Models as users download them, opened for the pipeline: a diffusers folder (safetensors or .bin
// weights, fp16 variants, the 2022 VAE attention names) or a single-file checkpoint in the original LDM
// layout (.safetensors or .ckpt), converted by name as diffusers' loaders/single_file.py does, with the
// configs a single file lacks built in. Also a separate VAE (--vae) as the web UI loads one.
//
//   taiyi::ModelSource source = taiyi::ModelSource::open("v1-5-pruned-emaonly.safetensors", {});
//   taiyi::load_weights(unet, source.state_dict("unet"), {torch::kFloat});
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/loaders/single_file_utils.h"
#include "taiyi/loaders/state_dict.h"

namespace taiyi {

struct ModelSourceOptions {
  std::string variant;                 // --variant: diffusers' variant="fp16" files of a folder
  std::filesystem::path config_dir;    // --config-dir: configs and tokenizer of a single file from this folder
  bool extract_ema = false;            // --extract-ema: a single file's EMA UNet weights (diffusers' rule)
  std::string prediction_type;         // --prediction-type: "" (the config's / the .yaml's) | epsilon | v_prediction
  std::filesystem::path vae;           // --vae: a VAE file (LDM or diffusers names) or a diffusers vae/ folder
};

class ModelSource {
 public:
  // A diffusers folder or a single file (.safetensors, .ckpt, .pt, .pth, .bin). Error naming the file for a
  // model family taiyi does not run (SD 2.x, the SDXL refiner, ControlNet, instruct-pix2pix, ...) or a file
  // that is no model. An SDXL single file (xl_base, xl_inpaint) opens with folder().is_sdxl() true and a
  // "text_encoder_2" component; without --config-dir its text encoders must be SDXL base's (49408 tokens, 77
  // positions), else Error asking for --config-dir (Taiyi-XL: the tokenizers' added tokens are not built in).
  static ModelSource open(const std::filesystem::path& model, const ModelSourceOptions& options);

  const ModelFolder& folder() const { return folder_; }
  // A component's config: the folder's (or the built-in one), with what the file says on top (a single
  // file's UNet in_channels; an SDXL file's vocab_size and max_position_embeddings of "text_encoder" and
  // "text_encoder_2", from its token and position tables; --prediction-type or the .yaml for the
  // scheduler); --vae DIR's for "vae".
  Config config(const std::string& component) const;
  bool single_file() const { return folder_.is_single_file(); }
  // "diffusers folder", "single file (LDM layout, .ckpt)", ..., and for a single file its model type and EMA.
  const std::string& description() const { return description_; }
  bool has_ema() const { return has_ema_; }
  // A component's weights under diffusers / transformers names, lazy views of the files: "unet", "vae",
  // "text_encoder", and for SDXL "text_encoder_2" (CLIPTextModelWithProjection names).
  StateDict state_dict(const std::string& component) const;
  // A single file's keys that no component uses (model_ema.* unless extracted, loss.*, training state...).
  std::vector<std::string> unused_keys() const;
  // The separate VAE (--vae), or empty.
  const std::filesystem::path& vae_path() const { return vae_; }

 private:
  struct Checkpoint;  // a single file's tensors (lazy), shared by its components
  ModelFolder folder_;
  std::shared_ptr<Checkpoint> checkpoint_;
  std::string description_;
  bool has_ema_ = false;
  bool extract_ema_ = false;
  std::filesystem::path vae_;
  std::filesystem::path vae_folder_;  // --vae DIR: a diffusers vae folder
  nlohmann::json config_overrides_ = nlohmann::json::object();  // component -> keys
  void open_checkpoint(const std::filesystem::path& model, const ModelSourceOptions& options);
  StateDict vae_state_dict() const;
  ConvertedKeys converted_keys(const std::string& component) const;
};

// A single file's prediction type as the web UI declares it: a same-name .yaml beside the file with
// `parameterization: "v"` -> "v_prediction"; "" when there is none (or it says eps).
std::string yaml_prediction_type(const std::filesystem::path& checkpoint);

}  // namespace taiyi
