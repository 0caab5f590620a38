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
  app->add_option("-m,--model", model, "model folder in the diffusers layout (default: $TAIYI_MODEL, else " +
                                           default_model() + ")");
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
