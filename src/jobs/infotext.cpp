// The web UI's infotext and taiyi's JSON record of an image; see include/taiyi/jobs/infotext.h.
#include "taiyi/jobs/infotext.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <utility>
#include <vector>

#include "taiyi/utils/device.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

namespace {

// A value as the web UI's infotext writes it: quoted (JSON escapes) when it holds , : or ".
std::string quote_parameter(const std::string& value) {
  if (value.find_first_of(",:\"") == std::string::npos) return value;
  return Json(value).dump();
}

// extra_networks_lora.py: {mentioned name without ':' ',' : shorthash}, a dict (a repeated name keeps
// its first place), joined with ", ".
std::string lora_hashes_parameter(const std::vector<LoraSelection>& loras, const LoraHashFn& lora_hash) {
  std::vector<std::pair<std::string, std::string>> hashes;
  for (const LoraSelection& lora : loras) {
    std::string name;
    for (char c : lora.name)
      if (c != ':' && c != ',') name += c;
    const std::string hash = lora_hash(lora.file);
    auto it = std::find_if(hashes.begin(), hashes.end(), [&](const auto& h) { return h.first == name; });
    if (it != hashes.end()) it->second = hash;
    else hashes.emplace_back(name, hash);
  }
  std::string joined;
  for (const auto& [name, hash] : hashes) joined += (joined.empty() ? "" : ", ") + name + ": " + hash;
  return joined;
}

Json lora_records(const GenerationRequest& r, const LoraHashFn& lora_hash) {
  Json list = Json::array();
  for (const auto& lora : r.loras)
    list.push_back({{"name", lora.name}, {"file", lora.file}, {"te", lora.te_multiplier}, {"unet", lora.unet_multiplier},
                    {"hash", lora_hash(lora.file)}});
  return list;
}

}  // namespace

std::string a1111_parameters(const GenerationRequest& written, const GenerationRequest& r, const Image& image,
                             const SamplerSetting& sampler, const ModelInfotext& model, const LoraHashFn& lora_hash) {
  std::string text = written.prompt + "\n";
  if (!written.negative_prompt.empty()) text += "Negative prompt: " + written.negative_prompt + "\n";
  text += "Steps: " + std::to_string(r.steps) + ", Sampler: " + sampler.web_ui_name +
          (sampler.schedule_type.empty() ? "" : ", Schedule type: " + sampler.schedule_type) +
          ", CFG scale: " + format_number(r.cfg_scale) +
          ", Seed: " + std::to_string(image.seed) + ", Size: " +
          // The hires fix's Size is its first pass's, as the web UI writes p.width x p.height.
          std::to_string(r.hires() ? r.width : image.width) + "x" + std::to_string(r.hires() ? r.height : image.height);
  if (!model.hash.empty()) text += ", Model hash: " + model.hash;
  text += ", Model: " + model.name;
  if (!model.vae_hash.empty()) text += ", VAE hash: " + model.vae_hash;
  if (!model.vae_name.empty()) text += ", VAE: " + quote_parameter(model.vae_name);
  if (!r.init_image.empty()) text += ", Denoising strength: " + format_number(r.strength);
  if (r.hires()) text += ", Denoising strength: " + format_number(r.hires_strength);
  if (!r.mask.empty()) text += ", Mask: " + quote_parameter(fs::path(r.mask).filename().string());
  if (r.clip_skip > 1) text += ", Clip skip: " + std::to_string(r.clip_skip);
  if (r.hires()) {  // StableDiffusionProcessingTxt2Img's extra_generation_params, in the order it adds them
    if (r.hires_width == 0 && r.hires_height == 0) text += ", Hires upscale: " + format_number(r.hires_scale);
    else text += ", Hires resize: " + std::to_string(r.hires_width) + "x" + std::to_string(r.hires_height);
    if (r.hires_steps > 0) text += ", Hires steps: " + std::to_string(r.hires_steps);
    text += ", Hires upscaler: " + quote_parameter(r.hires_upscaler);
    if (!r.hires_sampler.empty()) text += ", Hires sampler: " + quote_parameter(r.hires_sampler);
  }
  const std::string hashes = lora_hashes_parameter(r.loras, lora_hash);
  if (!hashes.empty()) text += ", Lora hashes: " + quote_parameter(hashes);
  return text;
}

std::string numerics_parameters(const Pipeline& pipe) {
  const Numerics& n = pipe.numerics();
  std::string text;
  if (pipe.dtype() != torch::kFloat) text += ", Precision: " + precision_name(pipe.dtype());
  if (n.cuda) {
    const std::string tf32 = n.tf32_matmul && n.tf32_conv ? "matmul+conv" : n.tf32_conv ? "conv" : n.tf32_matmul ? "matmul" : "off";
    text += ", TF32: " + tf32;
    if (n.cudnn_benchmark) text += ", cuDNN benchmark: on";
  }
  if (pipe.vae_dtype() != pipe.dtype()) text += ", VAE precision: " + precision_name(pipe.vae_dtype());
  return text;
}

Json image_record(const Pipeline& pipe, const GenerationRequest& r, const Image& image, const SamplerSetting& sampler,
                  int64_t line, const std::string& file, const LoraHashFn& lora_hash) {
  const Numerics& numerics = pipe.numerics();
  const bool tf32_used = numerics.tf32_matmul && pipe.dtype() == torch::kFloat;
  Json record = {{"file", file.empty() ? Json() : Json(file)},
                 {"prompt", r.prompt},
                 {"negative_prompt", r.negative_prompt},
                 {"seed", image.seed},
                 {"steps", r.steps},
                 {"cfg_scale", r.cfg_scale},
                 {"width", image.width},
                 {"height", image.height},
                 {"sampler", sampler.web_ui_name},
                 {"schedule", schedule_name(sampler.schedule)},
                 {"init_image", r.init_image.empty() ? Json() : Json(r.init_image)},
                 {"strength", r.init_image.empty() ? Json() : Json(r.strength)},
                 {"mask", r.mask.empty() ? Json() : Json(r.mask)},
                 {"clip_skip", r.clip_skip},
                 {"loras", lora_records(r, lora_hash)},
                 {"model", pipe.model_name()},
                 {"line", line},
                 {"device", pipe.device().str()},
                 {"precision", precision_name(pipe.dtype())},
                 {"tf32", tf32_used},
                 {"vae_precision", precision_name(pipe.vae_dtype())}};
  if (numerics.cuda) record["numerics"] = numerics.to_json();
  if (r.hires())
    record["hires"] = {{"first_pass_width", r.width}, {"first_pass_height", r.height}, {"scale", r.hires_scale},
                       {"resize_width", r.hires_width}, {"resize_height", r.hires_height}, {"upscaler", r.hires_upscaler},
                       {"steps", r.hires_steps}, {"strength", r.hires_strength},
                       {"sampler", r.hires_sampler.empty() ? Json() : Json(r.hires_sampler)}};
  return record;
}

}  // namespace taiyi
