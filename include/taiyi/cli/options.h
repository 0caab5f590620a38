// Options and defaults that several subcommands of the command line share (src/cli/).
#pragma once

#include <string>

#include "taiyi/loaders/single_file.h"
#include "taiyi/utils/device.h"

namespace CLI {
class App;
}

namespace taiyi::cli {

// $TAIYI_MODEL, else ~/.cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1.
std::string default_model();
// ~/.cache/taiyi/<name> (loras, embeddings).
std::string cache_folder(const std::string& name);
// -m/--model with its default in the help.
void add_model_option(CLI::App* app, std::string& model);
// How the model is read (ModelSourceOptions): --variant, --config-dir, --extract-ema, --prediction-type, --vae.
void add_model_source_options(CLI::App* app, ModelSourceOptions& source);
// --tf32 / --no-tf32 / --cudnn-benchmark; without them PyTorch's defaults (TF32 convolutions only).
void add_numerics_options(CLI::App* app, Tf32Mode& tf32, bool& cudnn_benchmark);

}  // namespace taiyi::cli
