// `taiyi bench`: warm-up, then repetitions over a grid of precision x batch size x resolution;
// per configuration: load time, text encoding, per-step UNet time and it/s, VAE decode, seconds per
// image, images per second, peak GPU memory (allocator statistics) and peak RSS. Runs on a model
// folder, or on random weights built from the folder's configs (no weights needed).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/loaders/single_file.h"
#include "taiyi/utils/device.h"

namespace CLI {
class App;
}

namespace taiyi {

struct BenchOptions {
  std::string model;                       // model folder (configs, tokenizer; weights unless random)
  bool random_weights = false;             // build from configs, random weights: no weight files needed
  std::string device = "auto";
  // fp16, fp32, bf16, auto; empty: fp32 and bf16 on the CPU, fp16, fp32 and bf16 (Ampere+) on CUDA
  std::vector<std::string> precisions;
  std::vector<int64_t> batch_sizes = {1};
  std::vector<int64_t> resolutions = {0};  // square sizes in pixels; 0: the model's default
  int64_t steps = 20;
  // The prompts, each timed in turn (runs alternate between them): the default is a CLIP prompt of a
  // dozen tokens; a long one measures what more chunks cost.
  std::vector<std::string> prompts = {"小桥流水人家，Van Gogh style"};
  std::string sampler;                     // a --sampler name; "" : `scheduler`, else the folder's
  std::string schedule;                    // --schedule
  std::string scheduler;                   // "" (folder's), pndm, ddim (the older option)
  double cfg_scale = 7.5;
  int64_t warmup = 1;                      // untimed generations per configuration
  int64_t repeat = 3;                      // timed generations per configuration
  Tf32Mode tf32 = Tf32Mode::kDefault;     // PyTorch's defaults: TF32 convolutions, IEEE matmuls
  bool cudnn_benchmark = false;
  bool channels_last = false;
  ModelSourceOptions source;               // --variant, --config-dir, --extract-ema, --prediction-type, --vae
  std::string vae_tiling = "auto";         // --vae-tiling, --vae-tile-size: as PipelineOptions'
  int64_t vae_tile_size = 0;
  // --decode-only: each configuration times Pipeline::decode of unit-normal latents instead of a
  // generation (the VAE's time and the process's peak RSS alone; one configuration a process for a
  // peak of its own). Results: precision, batch_size, width, height, vae_tiling, decode_s, run_s, peak_rss_mb.
  bool decode_only = false;
  // --unet-only: each configuration times single UNet calls (the CFG-doubled batch, the tokenizer's context
  // length, SDXL's added conditions) with and without the cross-attention cache. Results: precision, batch_size,
  // width, height, unet_batch, context_tokens, unet_call_s / unet_call_cpu_s (cached, as in the denoising loop),
  // unet_call_uncached_s / unet_call_uncached_cpu_s (medians), run_s, peak_rss_mb.
  bool unet_only = false;
};

// Runs the grid (precision x batch size x resolution x prompt); returns {"device": ..., "results": [
// {precision, batch_size, width, height, steps, prompt, prompt_chunks, context_tokens,
// load_s, encode_s, unet_step_s (per UNet call: Heun and DPM2 make two per step), it_per_s (UNet calls per second), decode_s, s_per_image, images_per_s, peak_gpu_mb, peak_rss_mb}, ...]}.
// Also per result: denoise_s, run_s (mean wall time of a timed run), run_median_s, run_min_s, run_max_s,
// run_cpu_s (the process's user + system CPU time per run), unet_calls_per_run, and on CUDA
// peak_gpu_reserved_mb and load_peak_gpu_mb. peak_gpu_mb is absent on the CPU. first_run_s: the
// configuration's first generation (its first-call costs included), apart from the warm per-run times;
// nonfinite_images: images of the timed runs whose pixels held NaN/Inf; attention_backend: the SDPA kernel
// libtorch picks for the UNet's largest attention ("flash", "memory-efficient", "cudnn", "math"). The
// document's first_image_s is the cold first image: seconds from process start to the first image done
// (model load included). A configuration that runs out of memory (or that the memory check refuses) is a
// row {precision, batch_size, width, height, steps, error} and the grid goes on.
// `log` receives progress lines; `on_configuration`, if given, receives the whole document so far after each
// configuration (batch size x resolution at a precision) is measured, so that a caller can save it then: a
// run cut short (a time limit, an out-of-memory at a later size) keeps every configuration already measured.
nlohmann::json run_bench(const BenchOptions& options, const std::function<void(const std::string&)>& log = {},
                         const std::function<void(const nlohmann::json&)>& on_configuration = {});
std::string format_bench_table(const nlohmann::json& results);

namespace cli {
struct BenchCommand {
  BenchOptions options;
  std::string json_file;  // --json FILE: the results also written there, rewritten after each configuration
};
CLI::App* add_bench_command(CLI::App& app, BenchCommand& command);
int run_bench_command(const BenchCommand& command);
}  // namespace cli

}  // namespace taiyi
