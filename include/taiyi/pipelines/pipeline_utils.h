// Saving what ModelSource opens as a diffusers folder with safetensors weights, the fastest form to load:
// diffusers' DiffusionPipeline.save_pretrained (pipelines/pipeline_utils.py) for the components taiyi runs,
// which `taiyi convert` calls. No Python, and never the whole model in memory: each tensor is cast and
// written on its own (save_safetensors), then read back and compared bit for bit with the source.
//
//   taiyi::ModelSource source = taiyi::ModelSource::open("model.ckpt", {});
//   taiyi::SaveOptions options;
//   options.dtype = torch::kHalf;
//   taiyi::save_pretrained(source, "models/my-model", options);
//
// The folder: model_index.json (the source's, with the components taiyi does not run set to [null, null]),
// text_encoder/, unet/, vae/ each with config.json (ModelSource::config: for a single file the built-in or
// --config-dir config with what the file says on top) and model.safetensors /
// diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json, and tokenizer/ (the source's files, or
// the built-in vocabulary as the hub has it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "taiyi/loaders/single_file.h"

namespace taiyi {

struct SaveOptions {
  std::optional<torch::Dtype> dtype;  // kFloat, kHalf, kBFloat16; none: each tensor keeps its file's dtype
  // One line per step ("unet: 686 tensors, 1.72 GB, verified"), or nothing.
  std::function<void(const std::string&)> progress;
};

// "fp16" | "bf16" | "fp32" | "keep" (nullopt); Error naming the value otherwise.
std::optional<torch::Dtype> parse_save_dtype(const std::string& name);

struct SavedWeights {
  std::string component;       // "text_encoder", "unet", "vae"
  std::filesystem::path file;  // inside the saved folder
  size_t tensors = 0;
  uint64_t bytes = 0;          // file size
};

// Writes the folder into a temporary folder beside `out` (".<name>.convert-<pid>"), checks every tensor
// written, then renames it to `out`. Error (the temporary folder removed, `out` untouched) when `out` exists
// and is not an empty folder, when the disk lacks the space the weights need, on a failed write, or on a
// tensor read back different from the source cast to the dtype.
std::vector<SavedWeights> save_pretrained(const ModelSource& source, const std::filesystem::path& out,
                                          const SaveOptions& options = {});

// The tensors a component's weights file holds: the source's, less the buffers transformers no longer saves
// (position_ids, token_type_ids: non-persistent since transformers 4.31), so that the folder equals what
// from_pretrained + save_pretrained gives.
StateDict weights_to_save(const ModelSource& source, const std::string& component);

}  // namespace taiyi
