// LoRA targets of a module tree, file reading and peft's delta weights (peft/tuners/lora/layer.py:
// Linear.get_delta_weight, Conv2d.get_delta_weight).
#include "taiyi/loaders/lora_weights.h"

#include <fstream>

#include "taiyi/utils/error.h"
#include "taiyi/models/layers.h"
#include "taiyi/utils/sha256.h"

namespace taiyi {

std::vector<LoraTarget> lora_targets(const std::string& component, torch::nn::Module& module) {
  std::vector<LoraTarget> targets;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const torch::nn::Module& m = *item.value();
    if (!dynamic_cast<const nn::LinearImpl*>(&m) && !dynamic_cast<const nn::Conv2dImpl*>(&m)) continue;
    const auto parameters = m.named_parameters(/*recurse=*/false);
    const torch::Tensor* weight = parameters.find("weight");
    if (!weight) continue;
    targets.push_back(LoraTarget{component, item.key(), weight->sizes().vec()});
  }
  return targets;
}

LoraFile read_lora(const std::filesystem::path& path, const std::vector<LoraTarget>& targets, bool strict) {
  if (!std::filesystem::is_regular_file(path)) throw Error(path.string() + ": LoRA file not found");
  LoraFile lora;
  lora.file = std::make_shared<SafetensorsFile>(path);
  std::vector<LoraTensor> tensors;
  std::map<std::string, double> alphas;
  for (const TensorInfo& info : lora.file->tensors()) {
    tensors.push_back(LoraTensor{info.name, info.shape});
    if (info.numel() == 1 && info.name.size() > 6 && info.name.compare(info.name.size() - 6, 6, ".alpha") == 0)
      alphas[info.name] = lora.file->tensor(info.name).to(torch::kDouble).item<double>();
  }
  lora.plan = plan_lora(tensors, alphas, lora.file->metadata(), targets);
  if (strict && !lora.plan.ok()) throw Error(lora.plan.message(path.string()));
  if (strict && lora.plan.patches.empty()) throw Error(path.string() + ": holds no LoRA weights");
  return lora;
}

torch::Tensor lora_delta(const LoraFile& lora, const LoraPatch& patch, double scale, torch::Device device) {
  torch::Tensor down = lora.file->tensor(patch.down_key).to(device, torch::kFloat);
  torch::Tensor up = lora.file->tensor(patch.up_key).to(device, torch::kFloat);
  const auto& w = patch.weight_shape;
  if (w.size() == 4 && (w[2] != 1 || w[3] != 1)) {
    // conv_fn(weight_A.transpose(0, 1), weight_B).transpose(0, 1) * scaling
    if (up.dim() == 2) up = up.unsqueeze(2).unsqueeze(3);
    return torch::conv2d(down.transpose(0, 1), up).transpose(0, 1) * scale;
  }
  // (weight_B @ weight_A) * scaling, 1x1 convs on squeezed halves
  torch::Tensor delta = torch::matmul(up.reshape({up.size(0), up.size(1)}), down.reshape({down.size(0), -1})) * scale;
  return delta.reshape(w);
}

std::string lora_short_hash(const std::filesystem::path& path) {
  SafetensorsFile file(path);  // validates, and gives the metadata
  auto it = file.metadata().find("sshs_model_hash");
  if (it != file.metadata().end() && !it->second.empty()) return it->second.substr(0, 12);
  std::ifstream in(path, std::ios::binary);
  unsigned char length[8] = {};
  in.read(reinterpret_cast<char*>(length), 8);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | length[i];
  return sha256_file(path, 8 + header).substr(0, 12);
}

}  // namespace taiyi
