// `taiyi info`: what taiyi sees in a model folder, without running anything: classes, a summary of
// each config, per component the tensor count, parameter count, dtypes and file sizes, the tokenizer
// kind and length, and every problem found (missing, unexpected or mis-shaped tensors, unsupported
// options, unreadable files).
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "taiyi/loaders/single_file.h"

namespace CLI {
class App;
}

namespace taiyi {

// Never throws for a problem in the folder: problems go into report["problems"] (a list of one-line
// messages) and report["usable"] is false when taiyi could not generate with the folder.
nlohmann::json inspect_model(const std::filesystem::path& model, const ModelSourceOptions& options = {});
// The report as human-readable text.
std::string format_model_report(const nlohmann::json& report);

// `taiyi info --lora FILE`: what a LoRA file would patch in the model folder's UNet and text encoder
// (modules built from the configs, no weights read): layout, per module its rank, alpha and kind, the
// short hash, and every key it cannot place or shape; report["usable"] false when any.
nlohmann::json inspect_lora(const std::filesystem::path& folder, const std::filesystem::path& lora);
std::string format_lora_report(const nlohmann::json& report);

namespace cli {
struct InfoCommand {
  std::string model;
  ModelSourceOptions source;  // --variant, --config-dir, --extract-ema, --prediction-type, --vae
  std::string lora;  // --lora FILE: the LoRA report instead of the model's
  bool json = false;
};
CLI::App* add_info_command(CLI::App& app, InfoCommand& command);
// Prints the report; exit status 0 when usable, 1 otherwise.
int run_info(const InfoCommand& command);
}  // namespace cli

}  // namespace taiyi
