// Options several subcommands share; see include/taiyi/cli/options.h.
#include "taiyi/cli/options.h"

#include <cstdlib>
#include <filesystem>

#include <CLI/CLI.hpp>

namespace taiyi::cli {

namespace fs = std::filesystem;

std::string default_model() {
  if (const char* env = std::getenv("TAIYI_MODEL"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return (fs::path(home ? home : ".") / ".cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1").string();
}

std::string cache_folder(const std::string& name) {
  const char* home = std::getenv("HOME");
  return (fs::path(home ? home : ".") / ".cache/taiyi" / name).string();
}

void add_model_option(CLI::App* app, std::string& model) {
  app->add_option("-m,--model", model,
                  "the model: a diffusers folder (a hub snapshot: safetensors or .bin weights) or a single-file checkpoint "
                  "(.safetensors, .ckpt) in the original layout (default: $TAIYI_MODEL, else " + default_model() + ")");
}

void add_model_source_options(CLI::App* app, ModelSourceOptions& source) {
  app->add_option("--variant", source.variant,
                  "a diffusers folder's weight variant, e.g. fp16 for diffusion_pytorch_model.fp16.safetensors");
  app->add_option("--config-dir", source.config_dir,
                  "a single file's configs and tokenizer from this diffusers folder (default: built in: "
                  "stable-diffusion-v1-5's configs, CLIP ViT-L/14's or bert-base-chinese's vocabulary)");
  app->add_flag("--extract-ema", source.extract_ema, "a single file's EMA UNet weights (model_ema.*) instead of the others");
  app->add_option("--prediction-type", source.prediction_type,
                  "epsilon or v_prediction (default: the scheduler config's; for a single file, a same-name .yaml "
                  "beside it with parameterization: \"v\" says v_prediction, as in the web UI)")
      ->check(CLI::IsMember({"epsilon", "v_prediction"}));
  app->add_option("--vae", source.vae,
                  "a separate VAE: a file (.safetensors, .ckpt, .pt: the web UI's VAE files, or diffusers' names) or a "
                  "diffusers vae folder");
}

void add_numerics_options(CLI::App* app, Tf32Mode& tf32, bool& cudnn_benchmark) {
  auto* on = app->add_flag_callback("--tf32", [&tf32] { tf32 = Tf32Mode::kOn; },
                                    "CUDA fp32: TF32 matmuls too (faster, not bit-exact; default: PyTorch's, TF32 convolutions only)");
  auto* off = app->add_flag_callback("--no-tf32", [&tf32] { tf32 = Tf32Mode::kOff; },
                                     "CUDA fp32: no TF32 anywhere (strict IEEE fp32)");
  on->excludes(off);
  app->add_flag("--cudnn-benchmark", cudnn_benchmark, "CUDA: cuDNN autotuning (off by default, PyTorch's default)");
}

}  // namespace taiyi::cli
