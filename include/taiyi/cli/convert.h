// `taiyi convert IN OUT`: anything taiyi loads (a diffusers folder with .bin or safetensors weights, a
// single-file .safetensors / .ckpt) written as a diffusers folder with safetensors weights, optionally in
// another dtype (include/taiyi/pipelines/pipeline_utils.h, save_pretrained).
#pragma once

#include <string>

#include "taiyi/loaders/single_file.h"

namespace CLI {
class App;
}

namespace taiyi::cli {

struct ConvertCommand {
  std::string input;
  std::string output;
  std::string dtype = "keep";  // fp16 | bf16 | fp32 | keep
  ModelSourceOptions source;   // --variant, --config-dir, --extract-ema, --prediction-type, --vae
};

CLI::App* add_convert_command(CLI::App& app, ConvertCommand& command);
// Prints a line per component and a summary; Error (exit status 2 in main) on any failure.
int run_convert(const ConvertCommand& command);

}  // namespace taiyi::cli
