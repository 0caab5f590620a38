// LoRA files read and merged into libtorch modules: the targets of a module tree (every Linear and
// Conv2d weight, by its diffusers / transformers path), a file placed on them (include/taiyi/loaders/lora_conversion.h),
// and one module's update as peft's get_delta_weight computes it (peft/tuners/lora/layer.py), in fp32.
//
//   auto targets = taiyi::lora_targets("unet", unet->module());
//   taiyi::LoraFile lora = taiyi::read_lora("loras/style.safetensors", targets);   // Error if a key misses
//   torch::Tensor delta = taiyi::lora_delta(lora, lora.plan.patches[0], 0.8, torch::kCPU);
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/loaders/safetensors.h"

namespace taiyi {

// A LoRA chosen for a generation: --lora FILE[:SCALE] or a prompt's <lora:NAME:...> tag.
struct LoraSelection {
  std::string file;   // the .safetensors path
  std::string name;   // as the user named it (the tag's NAME, or the file's stem): the PNG's "Lora hashes" key
  double te_multiplier = 1.0;
  double unet_multiplier = 1.0;
  bool operator==(const LoraSelection& o) const {
    return file == o.file && name == o.name && te_multiplier == o.te_multiplier && unet_multiplier == o.unet_multiplier;
  }
  bool operator!=(const LoraSelection& o) const { return !(*this == o); }
};

// Every Linear / Conv2d weight of `module` as a target of `component` ("unet", "text_encoder").
std::vector<LoraTarget> lora_targets(const std::string& component, torch::nn::Module& module);

struct LoraFile {
  std::shared_ptr<SafetensorsFile> file;
  LoraPlan plan;
};
// Maps, validates and places a LoRA file (dtypes F32/F16/BF16). With `strict`, an Error naming the file
// and every key that does not place or shape (LoraPlan::message); `taiyi info --lora` reads it unstrict.
LoraFile read_lora(const std::filesystem::path& path, const std::vector<LoraTarget>& targets, bool strict = true);

// scale * (up @ down) in fp32 on `device`, shaped as the target weight: peft's get_delta_weight for a
// Linear (B @ A), a 1x1 Conv2d (the same on squeezed halves) and a kxk Conv2d
// (conv2d(A^T, B)^T), `scale` being multiplier * alpha / rank.
torch::Tensor lora_delta(const LoraFile& lora, const LoraPatch& patch, double scale, torch::Device device);

// The web UI's short hash of a LoRA file, as its "Lora hashes" PNG parameter gives it: the file's
// sshs_model_hash metadata when present, else sha256 over the bytes after the safetensors header
// (networks.py's addnet_hash_safetensors), the first 12 hex digits.
std::string lora_short_hash(const std::filesystem::path& path);

}  // namespace taiyi
