// LoRA sets merged into a pipeline's weights and taken out again, as diffusers' LoraLoaderMixin
// (loaders/lora_pipeline.py: load_lora_weights, fuse_lora, unfuse_lora) with peft's delta per weight.
// Methods of Pipeline (include/taiyi/pipelines/pipeline_stable_diffusion.h); the files themselves are
// read and placed by loaders/lora_weights and loaders/lora_conversion.
#include <algorithm>
#include <chrono>
#include <map>

#include "taiyi/loaders/lora_weights.h"
#include "taiyi/loaders/state_dict.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

fs::path Pipeline::find_lora(const std::string& name) const {
  if (options_.lora_dir.empty()) throw Error("<lora:" + name + ">: no LoRA folder (--lora-dir)");
  const fs::path dir = options_.lora_dir;
  const fs::path direct = dir / (name + ".safetensors");
  std::error_code ec;
  if (fs::is_regular_file(direct, ec)) return direct;
  // The web UI finds a LoRA by file stem anywhere below its folder; the first in path order wins.
  std::vector<fs::path> found;
  if (fs::is_directory(dir, ec)) {
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".safetensors" && it->path().stem() == name && it->is_regular_file(ec))
        found.push_back(it->path());
    }
  }
  if (found.empty())
    throw Error("<lora:" + name + ">: no " + name + ".safetensors in " + dir.string() + " (--lora-dir)");
  std::sort(found.begin(), found.end());
  return found.front();
}

std::vector<std::pair<torch::nn::Module*, std::string>> Pipeline::lora_copies(const std::string& component) {
  if (component == "unet") return {{&unet_->module(), ""}};
  if (component == "text_encoder_2") {
    if (!text_encoder_2_) throw Error("a LoRA for text_encoder_2 (lora_te2_) on a model without a second text encoder");
    return {{text_encoder_2_.get(), ""}};
  }
  std::vector<std::pair<torch::nn::Module*, std::string>> copies = {{text_encoder_.get(), ""}};
  if (text_encoder_fp32_ && text_encoder_fp32_ != text_encoder_) copies.push_back({text_encoder_fp32_.get(), "|fp32"});
  return copies;
}

torch::Tensor Pipeline::in_model_layout(torch::Tensor weight) const {
  if (options_.channels_last && device_.is_cuda() && weight.dim() == 4)
    return weight.contiguous(torch::MemoryFormat::ChannelsLast);
  return weight;
}

// New values for a weight, in place where it can be: on the CPU the weights are private mappings of
// the files, and writing them replaces the touched pages by private ones of the same size, so the
// resident memory does not grow (a fresh tensor would add the weight's size while the mapping stays).
// Inference tensors (an fp32 text-encoder copy made under InferenceMode) take new storage instead.
void Pipeline::replace_weight(torch::Tensor& weight, const torch::Tensor& values) const {
  if (!weight.is_inference()) weight.copy_(values);
  else weight.set_data(in_model_layout(values.to(weight.scalar_type())));
}

void Pipeline::merge_lora_weight(torch::nn::Module& module, const std::string& param,
                                 const std::vector<LoraUpdate>& updates, const std::string& original_key) {
  auto parameters = module.named_parameters();  // the dict's tensors share the module's
  torch::Tensor* weight = parameters.find(param);
  if (!weight) throw Error("LoRA: the model has no parameter " + param);
  if (random_weights_ && !lora_originals_.count(original_key)) lora_originals_[original_key] = weight->clone();
  // peft's merge: W += delta per adapter in order, here always in fp32, then cast once.
  torch::Tensor merged = weight->to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true);
  for (const LoraUpdate& u : updates) merged += lora_delta(*u.file, u.patch, u.scale, device_);
  replace_weight(*weight, merged.to(weight->scalar_type()));
}

void Pipeline::restore_lora_weights() {
  std::map<std::string, StateDict> files;  // by component, opened once
  for (const auto& [key, updates] : lora_updates_) {
    const size_t bar = key.find('|');
    const std::string component = key.substr(0, bar), param = key.substr(bar + 1);
    for (auto [module, suffix] : lora_copies(component)) {
      auto parameters = module->named_parameters();
      torch::Tensor* weight = parameters.find(param);
      if (!weight) continue;
      if (random_weights_) {
        auto original = lora_originals_.find(key + suffix);
        if (original == lora_originals_.end()) continue;  // a copy made after the merge holds its own
        replace_weight(*weight, original->second);
        lora_originals_.erase(original);
        continue;
      }
      if (!files.count(component)) files.emplace(component, source_.state_dict(component));
      const torch::Tensor* original = files.at(component).find(param);
      if (!original) throw Error(folder().root().string() + ": " + component + " weight " + param + " is no longer in its files");
      replace_weight(*weight, load_tensor(*original, weight->scalar_type(), device_));
      if (original->is_contiguous()) release_pages(*original);  // the fresh mapping's pages, read once
    }
  }
  lora_updates_.clear();
  active_loras_.clear();
}

void Pipeline::apply_loras(const std::vector<LoraSelection>& loras) {
  if (loras == active_loras_) return;
  const auto start = std::chrono::steady_clock::now();
  // Normal tensors, no autograd: the weights are written in place (replace_weight).
  c10::InferenceMode normal_tensors(false);
  torch::NoGradGuard no_grad;
  std::vector<std::shared_ptr<LoraFile>> files;
  for (const LoraSelection& selection : loras)
    files.push_back(std::make_shared<LoraFile>(read_lora(selection.file, lora_targets_)));
  restore_lora_weights();
  std::vector<std::pair<std::string, std::vector<LoraUpdate>>> updates;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < loras.size(); ++i) {
    for (const LoraPatch& patch : files[i]->plan.patches) {
      const double multiplier = patch.component == "unet" ? loras[i].unet_multiplier : loras[i].te_multiplier;
      if (multiplier == 0) continue;  // exactly the model without it (not W + 0 * delta, which can flip -0)
      const std::string key = patch.component + "|" + patch.module + ".weight";
      auto [it, fresh] = index.emplace(key, updates.size());
      if (fresh) updates.push_back({key, {}});
      // peft's set_scale: scaling = scale * lora_alpha / r.
      updates[it->second].second.push_back(
          LoraUpdate{files[i], patch, multiplier * patch.alpha / static_cast<double>(patch.rank)});
    }
  }
  // diffusers' load_lora_weights freezes every UNet weight (peft's _mark_only_adapters_as_trainable) when a file
  // holds UNet keys, which changes how PyTorch computes some Linear layers (LinearImpl::set_frozen_like_peft).
  auto freeze_unet = [&](bool frozen) {
    for (const auto& module : unet_->module().modules())
      if (auto* linear = dynamic_cast<nn::LinearImpl*>(module.get())) linear->set_frozen_like_peft(frozen);
  };
  try {
    for (const auto& [key, list] : updates) {
      const size_t bar = key.find('|');
      for (auto [module, suffix] : lora_copies(key.substr(0, bar)))
        merge_lora_weight(*module, key.substr(bar + 1), list, key + suffix);
      lora_updates_.push_back({key, list});
    }
  } catch (...) {
    restore_lora_weights();
    freeze_unet(false);
    throw;
  }
  bool unet_patched = false;
  for (const auto& file : files)
    for (const LoraPatch& patch : file->plan.patches) unet_patched = unet_patched || patch.component == "unet";
  freeze_unet(unet_patched);
  active_loras_ = loras;
  synchronize(device_);
  times_.lora += seconds_since(start);
  ++times_.lora_merges;
}

int64_t Pipeline::lora_kept_bytes() const {
  int64_t bytes = 0;
  for (const auto& [key, tensor] : lora_originals_) bytes += tensor.numel() * tensor.element_size();
  return bytes;
}

}  // namespace taiyi
