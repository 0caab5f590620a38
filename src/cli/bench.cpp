// `taiyi bench`: for each precision x batch size x resolution, `warmup` untimed then `repeat` timed
// generations through Pipeline::generate; stage times are the deltas of Pipeline::times() (the
// pipeline synchronises the device at each stage boundary), peak GPU memory comes from the CUDA
// caching allocator and peak RSS from getrusage. See include/taiyi/cli/bench.h.
#include "taiyi/cli/bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <new>
#include <sstream>

#include <CLI/CLI.hpp>
#include <ATen/SDPBackend.h>
#include <torch/torch.h>

#include "taiyi/cli/options.h"
#include "taiyi/loaders/model_folder.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"

namespace taiyi {

using Json = nlohmann::json;

namespace {

// User + system CPU time of the process: on a shared machine it varies less than wall time.
double cpu_seconds() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux: kilobytes
}

// Seconds since this process started (/proc/self/stat's starttime against /proc/uptime, 10 ms ticks): the
// "cold first image" is the process age when the first image is done, model load and first-call costs
// (kernel loading, allocator growth, cuDNN autotuning) included. -1 where /proc cannot say.
double process_age_s() {
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  const size_t comm_end = line.rfind(')');
  if (comm_end == std::string::npos || comm_end + 2 > line.size()) return -1;
  std::istringstream fields(line.substr(comm_end + 2));  // from field 3 (state) on
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  double uptime = 0;
  std::ifstream("/proc/uptime") >> uptime;
  char* end = nullptr;
  const double start_ticks = std::strtod(field.c_str(), &end);
  if (end == field.c_str() || uptime <= 0) return -1;
  return uptime - start_ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The SDPA kernel libtorch picks for the UNet's largest attention, the first down block's
// self-attention ([images x 2 with guidance, heads, h*w, head_dim] in the model's dtype): what users
// compare across GPUs (flash, memory-efficient, cuDNN or the math fallback). "unknown" when the configs
// do not say.
std::string attention_backend(const Pipeline& pipe, const GenerationRequest& r) {
  try {
    const Config unet = pipe.folder().config("unet");
    const std::vector<int64_t> channels = unet.get_int_list("block_out_channels");
    const int64_t heads = unet.get_int_or_list("attention_head_dim", channels.size(), 8).front();
    const int64_t vae_blocks = static_cast<int64_t>(pipe.folder().config("vae").get_int_list("block_out_channels").size());
    const int64_t factor = int64_t{1} << (vae_blocks - 1);
    const int64_t tokens = (r.width / factor) * (r.height / factor);
    const int64_t rows = (r.cfg_scale > 1.0 ? 2 : 1) * r.count;
    const torch::Tensor q = torch::empty({rows, heads, tokens, channels.front() / heads},
                                         torch::TensorOptions().dtype(pipe.dtype()).device(pipe.device()));
    switch (static_cast<at::SDPBackend>(at::_fused_sdp_choice(q, q, q))) {
      case at::SDPBackend::math: return "math";
      case at::SDPBackend::flash_attention: return "flash";
      case at::SDPBackend::efficient_attention: return "memory-efficient";
      case at::SDPBackend::cudnn_attention: return "cudnn";
      case at::SDPBackend::overrideable: return "overrideable";
      case at::SDPBackend::error: break;
    }
  } catch (const std::exception&) {
  }
  return "unknown";
}

// An allocation that failed (CUDA's caching allocator, the host's) or a size the memory check refused:
// such a configuration is a row saying so, and the grid goes on.
bool out_of_memory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) || dynamic_cast<const std::bad_alloc*>(&e)) return true;
  return dynamic_cast<const Error*>(&e) && std::string(e.what()).find("of working memory") != std::string::npos;
}

void check_options(const BenchOptions& o) {
  if (o.batch_sizes.empty() || o.resolutions.empty())
    throw Error("bench: --batch-size and --resolution each need at least one value");
  for (const std::string& p : o.precisions)
    if (p != "auto" && p != "fp16" && p != "fp32" && p != "bf16")
      throw Error("bench: --precision " + p + ": expected fp16, fp32, bf16 or auto");
  for (int64_t b : o.batch_sizes)
    if (b < 1) throw Error("bench: --batch-size " + std::to_string(b) + ": must be at least 1");
  for (int64_t r : o.resolutions)
    if (r < 0) throw Error("bench: --resolution " + std::to_string(r) + ": must be positive (0: the model's default)");
  if (o.steps < 1) throw Error("bench: --steps " + std::to_string(o.steps) + ": must be at least 1");
  if (o.warmup < 0) throw Error("bench: --warmup " + std::to_string(o.warmup) + ": must not be negative");
  if (o.repeat < 1) throw Error("bench: --repeat " + std::to_string(o.repeat) + ": must be at least 1");
  if (o.prompts.empty()) throw Error("bench: --prompt needs at least one prompt");
}

std::string format(const char* pattern, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, pattern, value);
  return buf;
}

using Log = std::function<void(const std::string&)>;

// Passes a progress line to `log`, if there is one.
void say(const Log& log, const std::string& line) {
  if (log) log(line);
}

// The precisions to time: those asked for, else the device's default grid.
std::vector<std::string> grid_precisions(const BenchOptions& o, const torch::Device& device) {
  // Default grid: the CPU's exact fp32 beside bf16; on CUDA fp16, fp32 and bf16 (where the GPU has it).
  std::vector<std::string> precisions = o.precisions;
  if (precisions.empty()) {
    precisions = device.is_cuda() ? std::vector<std::string>{"fp16", "fp32"} : std::vector<std::string>{"fp32"};
    if (supports_bf16(device)) precisions.push_back("bf16");
  }
  return precisions;
}

// The report before any result: the device, the model and the settings every configuration shares.
Json bench_header(const BenchOptions& o, const torch::Device& device, const Numerics& numerics) {
  Json header = {{"device", describe_device(device)},
                {"model", o.model},
                {"random_weights", o.random_weights},
                {"steps", o.steps},
                {"cfg_scale", o.cfg_scale},
                {"warmup", o.warmup},
                {"repeat", o.repeat},
                {"numerics", numerics.to_json()},
                {"channels_last", o.channels_last},
                {"results", Json::array()}};
  return header;
}

// Loads the model at `precision`, after releasing the GPU cache and resetting its peak (so that the
// peak read after it is the load's).
Pipeline load_pipeline(const BenchOptions& o, const std::string& precision, const torch::Device& device,
                       const Log& log) {
  PipelineOptions options;
  options.device = o.device;
  options.precision = precision;
  options.scheduler = o.scheduler;
  options.sampler = o.sampler;
  options.schedule = o.schedule;
  options.tf32 = o.tf32;
  options.cudnn_benchmark = o.cudnn_benchmark;
  options.channels_last = o.channels_last;
  options.source = o.source;
  options.vae_tiling = o.vae_tiling;
  options.vae_tile_size = o.vae_tile_size;
  options.notice = [log](const std::string& notice) { say(log, "bench: " + notice); };
  release_gpu_cache(device);
  reset_gpu_peak(device);
  say(log, "bench: loading " + o.model + (o.random_weights ? " (random weights)" : "") + ", " + precision);
  return o.random_weights ? Pipeline::load_random(o.model, options) : Pipeline::load(o.model, options);
}

// The pipeline loaded at one precision and what its load cost: shared by that precision's configurations.
struct Loaded {
  Pipeline& pipe;
  std::string precision_name;
  double load_s;
  double load_peak_gpu_mb;
};

// One configuration (batch size x resolution at a precision): a request per prompt, each with its label.
struct Configuration {
  int64_t batch;
  std::vector<GenerationRequest> requests;
  std::vector<std::string> labels;
};

// Builds the configuration's requests (completed and validated by the pipeline) and their labels.
Configuration make_configuration(const BenchOptions& o, const Loaded& loaded, int64_t batch, int64_t resolution) {
  Configuration c;
  c.batch = batch;
  // One request per prompt; the timed runs alternate between them, so a slow spell of the machine
  // falls on every prompt alike.
  for (const std::string& prompt : o.prompts) {
    GenerationRequest request;
    request.prompt = prompt;
    request.steps = o.steps;
    request.cfg_scale = o.cfg_scale;
    request.seed = 0;
    request.width = resolution;
    request.height = resolution;
    request.count = batch;
    request = loaded.pipe.complete(request);  // fills the default size, Error for a bad one
    loaded.pipe.validate(request);
    c.requests.push_back(request);
    std::string label = loaded.precision_name + " batch " + std::to_string(batch) + " " +
                        std::to_string(request.width) + "x" + std::to_string(request.height);
    if (o.prompts.size() > 1) label += " prompt " + std::to_string(c.requests.size());
    c.labels.push_back(label);
  }
  return c;
}

// The process age when its first image was done (process_age_s); -1 until then. A fact about the process,
// hence process-wide: the first image of the first configuration sets it.
double first_image_age_s = -1;

// Runs one generation and returns its wall time; the first of the process also sets first_image_age_s.
double timed_generate(Pipeline& pipe, const GenerationRequest& request) {
  const auto start = std::chrono::steady_clock::now();
  pipe.generate(request);
  const double wall = seconds_since(start);
  if (first_image_age_s < 0) first_image_age_s = process_age_s();
  return wall;
}

// The untimed runs: `warmup` rounds over the configuration's requests. Returns the wall time of the
// first (first-call costs included), or -1 when there is no warm-up.
double warm_up(const BenchOptions& o, Pipeline& pipe, const Configuration& c, const Log& log) {
  double first = -1;
  for (int64_t i = 0; i < o.warmup; ++i) {
    for (size_t k = 0; k < c.requests.size(); ++k) {
      say(log, "bench: " + c.labels[k] + ": warm-up " + std::to_string(i + 1) + "/" + std::to_string(o.warmup));
      const double wall = timed_generate(pipe, c.requests[k]);
      if (first < 0) first = wall;
    }
  }
  return first;
}

// What the timed runs of one request add up to.
struct Totals {
  StageTimes stages;  // deltas: stage seconds, UNet calls, images with NaN/Inf
  double cpu_s = 0;
  std::vector<double> walls;
};

// The timed runs: `repeat` rounds over the configuration's requests; returns the totals per request.
std::vector<Totals> timed_runs(const BenchOptions& o, Pipeline& pipe, const Configuration& c, const Log& log) {
  std::vector<Totals> totals(c.requests.size());
  for (int64_t i = 0; i < o.repeat; ++i) {
    for (size_t k = 0; k < c.requests.size(); ++k) {
      const StageTimes before = pipe.times();
      const double cpu_before = cpu_seconds();
      totals[k].walls.push_back(timed_generate(pipe, c.requests[k]));
      totals[k].cpu_s += cpu_seconds() - cpu_before;
      const StageTimes& after = pipe.times();
      totals[k].stages.encode += after.encode - before.encode;
      totals[k].stages.denoise += after.denoise - before.denoise;
      totals[k].stages.decode += after.decode - before.decode;
      totals[k].stages.unet_calls += after.unet_calls - before.unet_calls;
      totals[k].stages.nonfinite_images += after.nonfinite_images - before.nonfinite_images;
      say(log, "bench: " + c.labels[k] + ": run " + std::to_string(i + 1) + "/" + std::to_string(o.repeat) + " " +
                   format("%.3f", totals[k].walls.back()) + " s");
    }
  }
  return totals;
}

// The result record of one request: its timings per run (mean, median, extremes) and the memory peaks.
Json result_record(const BenchOptions& o, const torch::Device& device, const Loaded& loaded, int64_t batch,
                   const GenerationRequest& request, const Totals& t, std::pair<double, double> gpu_peak,
                   double first_run_s) {
  const auto [peak_allocated, peak_reserved] = gpu_peak;
  const double runs = static_cast<double>(o.repeat);
  const int64_t unet_calls = t.stages.unet_calls;
  const double unet_step_s = unet_calls ? t.stages.denoise / unet_calls : 0.0;
  double wall_s = 0;
  for (double w : t.walls) wall_s += w;
  wall_s /= runs;
  std::vector<double> sorted = t.walls;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  const int64_t chunks = loaded.pipe.context_chunks(request);

  Json result = {{"precision", loaded.precision_name},
                 {"batch_size", batch},
                 {"width", request.width},
                 {"height", request.height},
                 {"steps", o.steps},
                 {"prompt", request.prompt},
                 {"prompt_chunks", chunks},
                 {"context_tokens", chunks * static_cast<int64_t>(loaded.pipe.tokenizer().max_length())},
                 {"unet_calls_per_run", unet_calls / o.repeat},
                 {"load_s", loaded.load_s},
                 {"encode_s", t.stages.encode / runs},
                 {"denoise_s", t.stages.denoise / runs},
                 {"unet_step_s", unet_step_s},
                 {"it_per_s", unet_step_s > 0 ? 1.0 / unet_step_s : 0.0},
                 {"decode_s", t.stages.decode / runs},
                 {"run_s", wall_s},
                 {"run_median_s", median},
                 {"run_min_s", sorted.front()},
                 {"run_max_s", sorted.back()},
                 {"run_cpu_s", t.cpu_s / runs},
                 {"s_per_image", wall_s / batch},
                 {"images_per_s", batch / wall_s},
                 {"first_run_s", first_run_s},
                 {"nonfinite_images", t.stages.nonfinite_images},
                 {"attention_backend", attention_backend(loaded.pipe, request)},
                 {"peak_rss_mb", peak_rss_mb()}};
  if (device.is_cuda()) {  // absent on the CPU, where the RSS is the memory figure
    result["peak_gpu_mb"] = peak_allocated;
    result["peak_gpu_reserved_mb"] = peak_reserved;
    result["load_peak_gpu_mb"] = loaded.load_peak_gpu_mb;
  }
  return result;
}

// Times one configuration (warm-up, then the timed runs) and appends a result per prompt to `results`.
void bench_configuration(const BenchOptions& o, const torch::Device& device, const Loaded& loaded, int64_t batch,
                         int64_t resolution, Json& results, const Log& log) {
  const Configuration c = make_configuration(o, loaded, batch, resolution);
  // The peak covers the weights (still allocated) and the largest generation of this configuration.
  reset_gpu_peak(device);
  const double warm_up_first = warm_up(o, loaded.pipe, c, log);
  const std::vector<Totals> totals = timed_runs(o, loaded.pipe, c, log);
  // The configuration's first generation: its warm-up's first, else its first timed run.
  const double first_run_s = warm_up_first >= 0 ? warm_up_first : totals.front().walls.front();
  const std::pair<double, double> gpu_peak = gpu_peak_mb(device);
  for (size_t k = 0; k < c.requests.size(); ++k) {
    Json result = result_record(o, device, loaded, batch, c.requests[k], totals[k], gpu_peak, first_run_s);
    say(log, "bench: " + c.labels[k] + ": " + format("%.3f", result["run_s"].get<double>()) + " s per run, " +
                 format("%.2f", result["it_per_s"].get<double>()) + " it/s");
    results.push_back(result);
  }
}

// --decode-only: `repeat` timed decodes (after `warmup` untimed ones) of [batch, latent_channels, h, w]
// unit-normal latents (seed 0) through Pipeline::decode, with the pipeline's VAE tiling.
void bench_decode(const BenchOptions& o, const Loaded& loaded, int64_t batch, int64_t resolution, Json& results,
                  const Log& log) {
  Pipeline& pipe = loaded.pipe;
  const int64_t size = resolution ? resolution : pipe.default_width();
  const Config vae = pipe.folder().config("vae");
  const int64_t factor = int64_t{1} << (vae.get_int_list("block_out_channels").size() - 1);
  if (size % factor != 0)
    throw Error("bench: --resolution " + std::to_string(size) + ": must be a multiple of " + std::to_string(factor));
  c10::InferenceMode inference;
  const torch::Tensor latents =
      torch::randn({batch, vae.get_int("latent_channels", 4), size / factor, size / factor},
                   at::make_generator<at::CPUGeneratorImpl>(0), torch::TensorOptions().dtype(torch::kFloat))
          .to(pipe.device(), pipe.dtype());
  const std::string label = loaded.precision_name + " batch " + std::to_string(batch) + " " + std::to_string(size) +
                            "x" + std::to_string(size) + " decode";
  double total = 0;
  for (int64_t i = 0; i < o.warmup + o.repeat; ++i) {
    const auto start = std::chrono::steady_clock::now();
    pipe.decode(latents);
    synchronize(pipe.device());
    const double wall = seconds_since(start);
    if (i >= o.warmup) total += wall;
    say(log, "bench: " + label + (i < o.warmup ? ": warm-up " : ": run ") + format("%.3f", wall) + " s");
  }
  const double decode_s = total / static_cast<double>(o.repeat);
  results.push_back({{"precision", loaded.precision_name}, {"batch_size", batch}, {"width", size}, {"height", size},
                     {"vae_tiling", o.vae_tiling}, {"vae_tile_size", o.vae_tile_size}, {"decode_s", decode_s},
                     {"run_s", decode_s}, {"peak_rss_mb", peak_rss_mb()}});
}

// --unet-only: what one denoising step with guidance gives the UNet for `batch` images: [2 x batch, C, h, w]
// latents, a [2 x batch, L, D] context of the tokenizer's max_length tokens, for SDXL text_embeds and time_ids;
// unit-normal values (seed 0), timestep 500. The calls alternate between two ways: with one cross-attention
// cache, as the denoising loop keeps it (the context's keys and values projected once), and without (each call
// projects them, as diffusers does); medians of `repeat` timed calls of each after `warmup` of each.
void bench_unet(const BenchOptions& o, const Loaded& loaded, int64_t batch, int64_t resolution, Json& results,
                const Log& log) {
  Pipeline& pipe = loaded.pipe;
  const int64_t size = resolution ? resolution : pipe.default_width();
  const int64_t factor = pipe.default_width() / pipe.unet().sample_size();
  if (size % factor != 0)
    throw Error("bench: --resolution " + std::to_string(size) + ": must be a multiple of " + std::to_string(factor));
  const Config unet = pipe.source().config("unet");
  const size_t blocks = unet.get_int_list("block_out_channels").size();
  const int64_t cross_dim = unet.get_int_or_list("cross_attention_dim", blocks, 1280).back();
  const int64_t n = 2 * batch, tokens = static_cast<int64_t>(pipe.tokenizer().max_length());
  c10::InferenceMode inference;
  torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(0);
  auto randn = [&](at::IntArrayRef shape) {
    return torch::randn(shape, generator, torch::TensorOptions().dtype(torch::kFloat)).to(pipe.device(), pipe.dtype());
  };
  const torch::Tensor sample = randn({n, pipe.unet().in_channels(), size / factor, size / factor});
  const torch::Tensor context = randn({n, tokens, cross_dim});
  AddedConditions added;
  if (pipe.unet().addition_time_embed_dim() > 0) {
    added.text_embeds = randn({n, pipe.unet().projection_class_embeddings_input_dim() - 6 * pipe.unet().addition_time_embed_dim()});
    added.time_ids = pipe.add_time_ids(size, size).expand({n, 6});
  }
  const torch::Tensor timestep = torch::tensor(500.0F).to(pipe.device());
  const std::string label = loaded.precision_name + " batch " + std::to_string(batch) + " " + std::to_string(size) + "x" +
                            std::to_string(size) + " UNet call";
  nn::CrossAttentionCache cache;
  std::vector<double> cached_s, uncached_s, cached_cpu_s, uncached_cpu_s;
  for (int64_t i = 0; i < o.warmup + o.repeat; ++i) {
    for (bool cached : {true, false}) {
      const double cpu_before = cpu_seconds();
      const auto start = std::chrono::steady_clock::now();
      pipe.unet().forward(sample, timestep, context, cached ? &cache : nullptr, added);
      synchronize(pipe.device());
      const double wall = seconds_since(start), cpu = cpu_seconds() - cpu_before;
      if (i >= o.warmup) {
        (cached ? cached_s : uncached_s).push_back(wall);
        (cached ? cached_cpu_s : uncached_cpu_s).push_back(cpu);
      }
      say(log, "bench: " + label + (cached ? " (cached keys/values)" : "") + (i < o.warmup ? ": warm-up " : ": run ") +
                   format("%.3f", wall) + " s, " + format("%.3f", cpu) + " CPU s");
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  results.push_back({{"precision", loaded.precision_name}, {"batch_size", batch}, {"width", size}, {"height", size},
                     {"unet_batch", n}, {"context_tokens", tokens}, {"unet_call_s", median(cached_s)},
                     {"unet_call_cpu_s", median(cached_cpu_s)}, {"unet_call_uncached_s", median(uncached_s)},
                     {"unet_call_uncached_cpu_s", median(uncached_cpu_s)}, {"run_s", median(cached_s)},
                     {"peak_rss_mb", peak_rss_mb()}});
}

}  // namespace

Json run_bench(const BenchOptions& o, const std::function<void(const std::string&)>& log,
               const std::function<void(const Json&)>& on_configuration) {
  check_options(o);
  // resolve_device initialises CUDA: every allocator call below comes after it.
  const torch::Device device = resolve_device(o.device);
  const std::vector<std::string> precisions = grid_precisions(o, device);
  const Numerics numerics = apply_numerics(device, o.tf32, o.cudnn_benchmark);
  Json out = bench_header(o, device, numerics);

  for (const std::string& precision : precisions) {
    Pipeline pipe = load_pipeline(o, precision, device, log);
    const Loaded loaded{pipe, taiyi::precision_name(pipe.dtype()), pipe.times().load, gpu_peak_mb(device).first};
    say(log, "bench: loaded in " + format("%.2f", loaded.load_s) + " s");
    if (out.find("scheduler") == out.end()) {
      const SamplerSetting setting = pipe.sampler_setting(GenerationRequest{});
      out["scheduler"] = setting.web_ui_name + (setting.schedule_type.empty() ? "" : " (" + setting.schedule_type + ")");
    }
    for (int64_t batch : o.batch_sizes) {
      for (int64_t resolution : o.resolutions) {
        try {
          if (o.decode_only)
            bench_decode(o, loaded, batch, resolution, out["results"], log);
          else if (o.unet_only)
            bench_unet(o, loaded, batch, resolution, out["results"], log);
          else
            bench_configuration(o, device, loaded, batch, resolution, out["results"], log);
        } catch (const std::exception& e) {
          if (!out_of_memory(e)) throw;
          // A row with its size and the error instead of a crash; the next configuration starts clean.
          release_gpu_cache(device);
          const std::string message = dynamic_cast<const c10::Error*>(&e)
                                          ? static_cast<const c10::Error&>(e).what_without_backtrace()
                                          : std::string(e.what());
          out["results"].push_back({{"precision", loaded.precision_name}, {"batch_size", batch}, {"width", resolution},
                                    {"height", resolution}, {"steps", o.steps},
                                    {"error", "out of memory: " + message.substr(0, message.find('\n'))}});
          say(log, "bench: " + loaded.precision_name + " batch " + std::to_string(batch) + " " + std::to_string(resolution) +
                       "x" + std::to_string(resolution) + ": out of memory");
        }
        if (first_image_age_s >= 0 && !out.contains("first_image_s")) out["first_image_s"] = first_image_age_s;
        if (on_configuration) on_configuration(out);
      }
    }
  }
  return out;
}

std::string format_bench_table(const Json& bench) {
  struct Column {
    const char* title;
    const char* key;
    const char* pattern;  // for numbers; nullptr: the value as text
  };
  const std::vector<Column> columns = {
      {"precision", "precision", nullptr}, {"batch", "batch_size", "%.0f"},   {"size", "", nullptr},
      {"steps", "steps", "%.0f"},          {"chunks", "prompt_chunks", "%.0f"}, {"load s", "load_s", "%.2f"},
      {"text s", "encode_s", "%.3f"},
      {"step s", "unet_step_s", "%.4f"},   {"it/s", "it_per_s", "%.2f"},      {"unet call s", "unet_call_s", "%.3f"},
      {"uncached s", "unet_call_uncached_s", "%.3f"},                         {"decode s", "decode_s", "%.3f"},
      {"s/image", "s_per_image", "%.3f"},  {"images/s", "images_per_s", "%.3f"}, {"first s", "first_run_s", "%.3f"},
      {"GPU MB", "peak_gpu_mb", "%.0f"},   {"RSS MB", "peak_rss_mb", "%.0f"},  {"attention", "attention_backend", nullptr},
      {"note", "", nullptr},
  };
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header;
  for (const Column& c : columns) header.push_back(c.title);
  rows.push_back(header);
  for (const Json& r : bench.value("results", Json::array())) {
    std::vector<std::string> row;
    for (const Column& c : columns) {
      if (std::string(c.title) == "size") {
        row.push_back(std::to_string(r.value("width", 0)) + "x" + std::to_string(r.value("height", 0)));
      } else if (std::string(c.title) == "note") {  // what went wrong, if anything
        const int64_t nonfinite = r.value("nonfinite_images", int64_t{0});
        row.push_back(r.contains("error") ? "out of memory" : nonfinite ? "NaN/Inf in " + std::to_string(nonfinite) : "");
      } else if (!r.contains(c.key) || r.at(c.key).is_null()) {
        row.push_back("-");
      } else if (c.pattern) {
        row.push_back(format(c.pattern, r.at(c.key).get<double>()));
      } else {
        row.push_back(r.at(c.key).get<std::string>());
      }
    }
    rows.push_back(row);
  }
  std::vector<size_t> widths(columns.size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());

  std::ostringstream out;
  out << "device: " << bench.value("device", "?") << ", scheduler " << bench.value("scheduler", "?") << ", cfg "
      << format("%g", bench.value("cfg_scale", 0.0)) << ", warm-up " << bench.value("warmup", 0) << ", "
      << bench.value("repeat", 0) << " timed run(s) each" << (bench.value("random_weights", false) ? ", random weights" : "");
  if (bench.contains("first_image_s"))
    out << ", cold first image " << format("%.2f", bench.at("first_image_s").get<double>()) << " s after process start";
  out << "\n";
  for (size_t r = 0; r < rows.size(); ++r) {
    std::string line;
    for (size_t i = 0; i < rows[r].size(); ++i) {
      const std::string& cell = rows[r][i];
      std::string pad(widths[i] - cell.size(), ' ');
      // Text left-aligned, numbers right-aligned.
      line += (i ? "  " : "") + (i == 0 ? cell + pad : pad + cell);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
    if (r == 0) {
      size_t total = 0;
      for (size_t w : widths) total += w;
      out << std::string(total + 2 * (widths.size() - 1), '-') << "\n";
    }
  }
  return out.str();
}

namespace cli {

CLI::App* add_bench_command(CLI::App& app, BenchCommand& command) {
  BenchOptions& o = command.options;
  o.model = default_model();
  CLI::App* bench = app.add_subcommand("bench", "benchmark: load, text encoding, UNet step, VAE decode, memory");
  add_model_option(bench, o.model);
  add_model_source_options(bench, o.source);
  bench->add_flag("--random-weights", o.random_weights, "random weights from the folder's configs");
  bench->add_option("--device", o.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  bench->add_option("--precision", o.precisions,
                    "fp16, fp32, bf16 (a list; default fp32,bf16 on the CPU, fp16,fp32,bf16 on CUDA)")
      ->delimiter(',');
  bench->add_option("--batch-size", o.batch_sizes, "batch sizes (a list)")->delimiter(',');
  bench->add_option("--resolution", o.resolutions, "square sizes in pixels (a list)")->delimiter(',');
  bench->add_option("--steps", o.steps, "denoising steps")->capture_default_str();
  bench->add_option("--prompt", o.prompts,
                    "a prompt to time (repeat the option for several: the runs alternate between them)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  bench->add_option("--sampler", o.sampler, "sampler (as for generation; default: the folder's)");
  bench->add_option("--schedule", o.schedule, "default, karras, exponential or beta");
  bench->add_option("--scheduler", o.scheduler, "pndm or ddim (older form of --sampler)");
  bench->add_option("-g,--cfg-scale", o.cfg_scale, "guidance scale")->capture_default_str();
  bench->add_option("--warmup", o.warmup, "untimed runs per configuration")->capture_default_str();
  bench->add_option("--repeat", o.repeat, "timed runs per configuration")->capture_default_str();
  add_numerics_options(bench, o.tf32, o.cudnn_benchmark);
  bench->add_flag("--channels-last", o.channels_last, "channels_last memory format on CUDA");
  bench->add_option("--vae-tiling", o.vae_tiling, "auto, on or off (as for generation)")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  bench->add_option("--vae-tile-size", o.vae_tile_size, "VAE tile side in pixels (0: the VAE config's)")->capture_default_str();
  bench->add_flag("--decode-only", o.decode_only, "time the VAE decode of random latents alone (no text encoder, no UNet)");
  bench->add_flag("--unet-only", o.unet_only,
                  "time single UNet calls on random inputs, with and without the cached context keys/values")
      ->excludes("--decode-only");
  bench->add_option("--json", command.json_file, "also write the results as JSON to this file");
  return bench;
}

int run_bench_command(const BenchCommand& command) {
  // The JSON file is rewritten whole (atomically) after each configuration rather than once at the end:
  // a run killed by a time limit (scripts/gpu_check.sh's stages) keeps what it measured. After the last
  // configuration it holds the complete results.
  std::function<void(const Json&)> save;
  if (!command.json_file.empty())
    save = [&](const Json& partial) { write_file_atomically(command.json_file, partial.dump(2) + "\n"); };
  Json results = run_bench(
      command.options, [](const std::string& line) { std::cerr << line << "\n"; }, save);
  std::cout << format_bench_table(results);
  return 0;
}

}  // namespace cli

}  // namespace taiyi
