// `taiyi convert`: parses its options and calls save_pretrained (src/pipelines/pipeline_utils.cpp).
#include "taiyi/cli/convert.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "taiyi/cli/options.h"
#include "taiyi/pipelines/pipeline_utils.h"

namespace taiyi::cli {

CLI::App* add_convert_command(CLI::App& app, ConvertCommand& command) {
  CLI::App* convert = app.add_subcommand(
      "convert", "write a model (diffusers folder, .bin weights, single .safetensors/.ckpt) as a diffusers folder "
                 "with safetensors weights, the fastest form to load");
  convert->add_option("IN", command.input, "the model: a diffusers folder or a single-file checkpoint")->required();
  convert->add_option("OUT", command.output, "the folder to write (new, or empty)")->required();
  convert->add_option("--dtype", command.dtype,
                      "fp16, bf16, fp32, or keep (each tensor as the source holds it)")
      ->capture_default_str();
  add_model_source_options(convert, command.source);
  return convert;
}

int run_convert(const ConvertCommand& command) {
  const auto start = std::chrono::steady_clock::now();
  SaveOptions options;
  options.dtype = parse_save_dtype(command.dtype);
  options.progress = [](const std::string& line) { std::cout << line << std::endl; };
  const ModelSource source = ModelSource::open(command.input, command.source);
  std::cout << command.input << ": " << source.description() << "\n";
  uint64_t bytes = 0;
  for (const SavedWeights& saved : save_pretrained(source, command.output, options)) bytes += saved.bytes;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("wrote %s: %.2f GB of weights (%s), %.1f s, peak RSS %.2f GB\n", command.output.c_str(), bytes / 1e9,
              command.dtype.c_str(), seconds, usage.ru_maxrss / 1e6 * 1.024);
  return 0;
}

}  // namespace taiyi::cli
