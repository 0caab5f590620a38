// What is recorded with each image: the AUTOMATIC1111 web UI's infotext (the PNG's "parameters" text,
// which web UIs read back into their settings: modules/processing.py, create_infotext) and taiyi's JSON
// record (--json, --sidecar). Every front end records through these, so the same image carries the same
// text whichever made it.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "taiyi/pipelines/pipeline_stable_diffusion.h"

namespace taiyi {

// A LoRA file's short hash as the web UI writes it (lora_short_hash), looked up through a cache.
using LoraHashFn = std::function<std::string(const std::string& file)>;

// A number as the infotext writes it (printf's %g: 7.5, 0.75, 1e-05).
std::string format_number(double value);

// The model as the web UI names it in the parameters: "Model hash" (the first 10 hex digits of the
// checkpoint file's SHA-256: single files only; a folder has no such file), "Model" (the folder's name or
// the file's stem), and for a separate VAE file "VAE hash" and "VAE" (its file name), as
// modules/processing.py create_infotext and modules/sd_vae.py write them.
struct ModelInfotext {
  std::string name, hash, vae_name, vae_hash;
};

// The "parameters" text: `written` is the request as given (prompts with their <lora:...> tags),
// `completed` the one that ran (Pipeline::complete).
std::string a1111_parameters(const GenerationRequest& written, const GenerationRequest& completed, const Image& image,
                             const SamplerSetting& sampler, const ModelInfotext& model, const LoraHashFn& lora_hash);

// What changes the numbers, appended to the parameters in the web UI's "Key: value" form: the precision
// when not fp32, on CUDA TF32 and cuDNN autotuning, and an fp32 VAE under a half-precision model.
std::string numerics_parameters(const Pipeline& pipe);

// The JSON record of an image: its file ("" : null), prompts, seed, settings, LoRAs with their hashes,
// model, prompt-file line, device and numerics.
nlohmann::json image_record(const Pipeline& pipe, const GenerationRequest& completed, const Image& image,
                            const SamplerSetting& sampler, int64_t line, const std::string& file,
                            const LoraHashFn& lora_hash);

}  // namespace taiyi
