// `taiyi "prompt"` and `taiyi --prompts FILE`: options in, a job planned and run by the job library, its
// messages printed. See include/taiyi/cli/generate.h.
#include "taiyi/cli/generate.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "taiyi/cli/options.h"
#include "taiyi/jobs/infotext.h"
#include "taiyi/pipelines/latent_preview.h"
#include "taiyi/utils/image.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"

namespace taiyi::cli {

namespace {

// Ctrl-C: the first stops the run after the current batch (its images are written); the second
// abandons the current batch at the next denoising step. Files are only ever renamed into place
// whole, so nothing partial is left either way.
std::atomic<int> interrupts{0};
extern "C" void on_sigint(int) { interrupts.fetch_add(1); }

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label) : enabled_(enabled), label_(std::move(label)) {}
  void operator()(int64_t step, int64_t total) {
    if (interrupts.load() >= 2) throw JobCancelled();
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (step == 1) first_ = now;
    double elapsed = std::chrono::duration<double>(now - first_).count();
    double rate = step > 1 ? (step - 1) / elapsed : 0.0;
    double eta = rate > 0 ? (total - step) / rate : 0.0;
    const int width = 30;
    int filled = static_cast<int>(width * step / total);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.2f it/s  ETA %.0fs ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), static_cast<long long>(step), static_cast<long long>(total),
                 rate, eta);
    if (step == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string label_;
  std::chrono::steady_clock::time_point first_;
};

// The job as the options describe it: the prompt from the argument or -p.
JobSpec job_spec(const GenerateCommand& c) {
  JobSpec spec = c.spec;
  const bool from_file = !spec.prompts_file.empty();
  if (!from_file && !c.prompt.empty() && !c.prompt_option.empty())
    throw Error("give the prompt either as an argument or with -p, not both");
  spec.prompt = c.prompt_option.empty() ? c.prompt : c.prompt_option;
  if (!c.hires_size.empty()) {  // WxH; one side 0 keeps the aspect (hr_resize_x/y)
    long long w = -1, h = -1;
    char x = 0, rest = 0;
    if (std::sscanf(c.hires_size.c_str(), "%lld%c%lld%c", &w, &x, &h, &rest) != 3 || (x != 'x' && x != 'X') || w < 0 || h < 0 ||
        (w == 0 && h == 0))
      throw Error("--hires-size " + c.hires_size + ": expected WIDTHxHEIGHT, e.g. 1024x1024 (one side 0: the aspect kept)");
    spec.defaults.hires_width = w;
    spec.defaults.hires_height = h;
  }
  if (c.pipeline.eta < 0) throw Error("--eta " + format_number(c.pipeline.eta) + ": must not be negative");
  return spec;  // plan_job checks it and parses its --lora options
}

// What runs where, and the working memory the first image needs (the estimate validation holds each
// batch to; scripts/memory_estimate.sh compares it with the peak).
void print_plan(const Pipeline& pipe, const Job& job) {
  const Numerics& numerics = pipe.numerics();
  std::cerr << "taiyi: " << (pipe.device().is_cuda() ? "CUDA" : "CPU") << " " << precision_name(pipe.dtype())
            << (numerics.cuda ? " (" + numerics.describe() + ")" : "") << ", " << pipe.sampler_name() << ", "
            << pipe.tokenizer().kind() << "; " << job.items.size() << " prompt(s) to run";
  if (job.skipped) std::cerr << ", " << job.skipped << " already done (--resume)";
  std::cerr << "\n";
  if (const std::optional<GenerationRequest> first = first_valid_request(pipe, job)) {
    const std::optional<uint64_t> available = available_memory(pipe.device());
    std::fprintf(stderr, "taiyi: %lldx%lld needs about %.2f GB of working memory an image", static_cast<long long>(first->width),
                 static_cast<long long>(first->height), static_cast<double>(pipe.working_memory(*first)) / 1e9);
    if (available) std::fprintf(stderr, " (%.1f GB available)", static_cast<double>(*available) / 1e9);
    std::fprintf(stderr, "\n");
  }
}

JobEvents printing_events(const GenerateCommand& c) {
  JobEvents events;
  const bool progress_enabled = !c.quiet && isatty(STDERR_FILENO);
  const bool json = c.json, quiet = c.quiet;
  events.image = [json, quiet](const JobImage& done) {
    if (json) std::cout << done.record.dump() << std::endl;
    else if (!quiet) std::cerr << "taiyi: wrote " << done.file << " (seed " << done.image.seed << ")\n";
  };
  events.error = [](const std::string& message) { std::cerr << "taiyi: error: " << message << "\n"; };
  events.warning = [](const std::string& message) { std::cerr << "taiyi: warning: " << message << "\n"; };
  events.batch_progress = [progress_enabled](const std::string& where) -> ProgressCallback {
    return ProgressBar(progress_enabled, where);
  };
  events.stop_requested = [] { return interrupts.load() > 0; };
  return events;
}

void print_times(const Pipeline& pipe, int64_t written) {
  const StageTimes& t = pipe.times();
  std::fprintf(stderr, "taiyi: %lld image(s) written; load %.2fs, text %.2fs, denoise %.2fs (%lld UNet calls, %.3fs each), decode %.2fs\n",
               static_cast<long long>(written), t.load, t.encode, t.denoise, static_cast<long long>(t.unet_calls),
               t.unet_calls ? t.denoise / t.unet_calls : 0.0, t.decode);
  if (t.lora_merges)
    std::fprintf(stderr, "taiyi: LoRA sets merged %lld time(s), %.2fs in all (un-merging included), %.1f MB kept for un-merging\n",
                 static_cast<long long>(t.lora_merges), t.lora, static_cast<double>(pipe.lora_kept_bytes()) / 1e6);
}

// The sampler and the numerics: how the model runs (PipelineOptions).
void add_sampler_options(CLI::App& app, PipelineOptions& pipeline) {
  app.add_option("--sampler", pipeline.sampler,
                 "sampler, the web UI's or stable-diffusion.cpp's name, any case: \"Euler a\", Euler, \"DPM++ 2M\", "
                 "\"DPM++ 2M SDE\", Heun, DPM2, \"DPM2 a\", LMS, UniPC, LCM, DDIM, PLMS, DDPM, \"DPM++ 2M Karras\", "
                 "euler_a, dpm++2m, dpm++2m_sde, ddim_trailing, ... (default: the model folder's scheduler, PLMS for Taiyi)");
  app.add_option("--schedule", pipeline.schedule,
                 "sigma schedule of the sampler: default, karras, exponential or beta (default: the sampler's)");
  app.add_option("--scheduler", pipeline.scheduler, "pndm or ddim: the older form of --sampler PLMS / DDIM")
      ->check(CLI::IsMember({"pndm", "ddim", "PNDM", "DDIM"}));
  app.add_option("--eta", pipeline.eta, "DDIM eta (0: deterministic)")->capture_default_str();
  app.add_option("--precision", pipeline.precision, "auto (fp16 on CUDA, fp32 on CPU), fp16, fp32 or bf16")
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--vae-precision", pipeline.vae_precision,
                 "auto (the model's; an fp16 decode with NaN/Inf is redone in fp32) or fp32")
      ->check(CLI::IsMember({"auto", "fp32"}))
      ->capture_default_str();
  app.add_option("--vae-tiling", pipeline.vae_tiling,
                 "VAE decode/encode in overlapping tiles (diffusers' enable_tiling): auto (only when the untiled one "
                 "would not fit the free memory), on or off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  app.add_option("--vae-tile-size", pipeline.vae_tile_size,
                 "VAE tile side in pixels, a multiple of 32 (0: the VAE config's sample_size, 512 for SD 1.x)")
      ->capture_default_str();
  app.add_option("--device", pipeline.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  add_numerics_options(&app, pipeline.tf32, pipeline.cudnn_benchmark);
  app.add_flag("--channels-last", pipeline.channels_last, "channels_last memory format on CUDA");
  app.add_flag("--offload", pipeline.offload,
                  "CUDA: keep the text encoders in host memory except while encoding (SDXL in fp16 on 8 GB cards)");
}

// --preview FILE: every --preview-every steps (and at the last) the first image of the batch, as TAESD
// decodes it (--taesd) or as the web UI's cheap approximation shows it, written whole
// (write_file_atomically), for long runs watched from elsewhere.
LatentsObserver preview_writer(const GenerateCommand& c, const Pipeline& pipe) {
  if (c.preview.empty()) {
    if (!c.taesd.empty()) throw Error("--taesd " + c.taesd + ": is for --preview FILE");
    return {};
  }
  if (c.preview_every < 1) throw Error("--preview-every " + std::to_string(c.preview_every) + ": must be at least 1");
  auto previewer = std::make_shared<LatentPreviewer>(c.taesd, pipe.device(), pipe.dtype());
  const std::string file = c.preview;
  const int64_t every = c.preview_every;
  return [previewer, file, every](const torch::Tensor& latents, int64_t step, int64_t total) {
    if (step % every != 0 && step != total) return;
    const PixelImage image = previewer->render(latents);
    write_file_atomically(file, encode_png(image.pixels.data(), static_cast<int>(image.width), static_cast<int>(image.height), {}));
  };
}

}  // namespace

int run_generate(const GenerateCommand& c) {
  const JobSpec spec = job_spec(c);
  Job job = plan_job(spec, [](const std::string& message) { std::cerr << "taiyi: error: " << message << "\n"; });
  if (job.removed_temporaries && !c.quiet)
    std::cerr << "taiyi: removed " << job.removed_temporaries << " unfinished temporary file(s) of an interrupted run\n";
  if (!c.quiet) std::cerr << "taiyi: loading " << c.model << "\n";
  PipelineOptions options = c.pipeline;
  if (!c.quiet) options.notice = [](const std::string& text) { std::cerr << "\ntaiyi: warning: " << text << "\n"; };
  Pipeline pipe = Pipeline::load(c.model, options);
  if (!c.quiet) print_plan(pipe, job);

  std::signal(SIGINT, on_sigint);
  const ScopedLatentsObserver previews(preview_writer(c, pipe));
  const JobSummary summary = JobRunner(pipe).run(job, printing_events(c));
  if (!c.quiet) print_times(pipe, summary.written);
  if (summary.interrupted) {
    std::cerr << "taiyi: interrupted; " << summary.written
              << " image(s) written, nothing partial left. Re-run with --resume to go on.\n";
    return 130;
  }
  if (!summary.failures.empty()) {
    std::cerr << "taiyi: " << summary.failures.size() << " failed:\n";
    for (const auto& f : summary.failures) std::cerr << "  " << f << "\n";
    return 1;
  }
  return 0;
}

void add_generate_options(CLI::App& app, GenerateCommand& c) {
  GenerationRequest& d = c.spec.defaults;
  c.model = default_model();
  app.add_option("prompt", c.prompt, "the prompt (or -p)");
  app.add_option("-p,--prompt", c.prompt_option, "the prompt");
  app.add_option("-n,--negative-prompt", d.negative_prompt, "negative prompt (default: empty)");
  app.add_option("--prompts", c.spec.prompts_file, "prompt file: a prompt a line (# comments), or JSONL");
  app.add_option("-i,--init-img", d.init_image, "img2img: the image to rework (PNG or JPEG)");
  app.add_option("--strength", d.strength, "img2img: how much of the schedule reworks the image, 0 < S <= 1")
      ->capture_default_str();
  app.add_option("--mask", d.mask, "inpainting: the mask image, white = repaint (needs -i)");
  app.add_option("--clip-skip", d.clip_skip,
                 "stop the CLIP text encoder N-1 layers early, as the web UI counts (1: last layer; 2: penultimate)")
      ->capture_default_str();
  c.pipeline.lora_dir = cache_folder("loras");
  c.pipeline.embeddings_dir = cache_folder("embeddings");
  app.add_option("--lora", c.spec.lora_options, "merge a LoRA file (kohya or diffusers layout), SCALE default 1; repeat to stack")
      ->type_name("FILE[:SCALE]")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--lora-dir", c.pipeline.lora_dir, "where a prompt's <lora:NAME:WEIGHT> finds NAME.safetensors")
      ->capture_default_str();
  app.add_option("--embedding", c.pipeline.embedding_files,
                 "a textual-inversion file (web UI emb_params or diffusers learned_embeds .safetensors); repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--embeddings-dir", c.pipeline.embeddings_dir,
                 "textual-inversion files used when their name (file stem) appears in a prompt")
      ->capture_default_str();
  app.add_option("--steps", d.steps, "denoising steps")->capture_default_str();
  app.add_option("-g,--cfg-scale", d.cfg_scale, "classifier-free guidance scale (<= 1: off)")->capture_default_str();
  app.add_option("-s,--seed", c.spec.seed, "seed (default: random, printed and recorded); image i uses seed+i");
  app.add_option("-W,--width", d.width, "width in pixels, a multiple of 8 (default: the model's, 512)");
  app.add_option("-H,--height", d.height, "height in pixels, a multiple of 8 (default: the model's, 512)");
  add_sampler_options(app, c.pipeline);
  app.add_option("--hires-scale", d.hires_scale,
                 "hires fix: draw at -W x -H, then upscale the latents by S and rework them (the web UI's \"Hires. fix\")");
  app.add_option("--hires-size", c.hires_size, "hires fix to WIDTHxHEIGHT instead (the aspect kept, the excess cropped)");
  app.add_option("--hires-upscaler", d.hires_upscaler,
                 "Latent, \"Latent (antialiased)\", \"Latent (bicubic)\", \"Latent (bicubic antialiased)\", "
                 "\"Latent (nearest)\", \"Latent (nearest-exact)\" or Lanczos (decode, resize, encode)")
      ->capture_default_str();
  app.add_option("--hires-steps", d.hires_steps, "steps of the second pass (0: --steps)")->capture_default_str();
  app.add_option("--hires-strength", d.hires_strength, "denoising strength of the second pass")->capture_default_str();
  app.add_option("--hires-sampler", d.hires_sampler, "sampler of the second pass (default: the first pass's)");
  app.add_option("--num-images", c.spec.num_images, "images per prompt")->capture_default_str();
  app.add_option("--batch-size", c.spec.batch_size, "images per UNet batch")->capture_default_str();
  add_model_option(&app, c.model);
  add_model_source_options(&app, c.pipeline.source);
  app.add_option("-o,--output", c.spec.output,
                 "output file, folder (ends with /) or name template with {seed} {image} {line} {index} "
                 "(default: outputs/{seed}.png; with --prompts outputs/{line:05}-{image}.png)");
  app.add_flag("--overwrite", c.spec.overwrite, "replace existing files (otherwise never)");
  app.add_flag("--resume", c.spec.resume, "skip images whose output file exists");
  app.add_option("--shard", c.spec.shard, "i/n: run only the prompts with index % n == i (0-based), for n processes");
  app.add_flag("--sidecar", c.spec.sidecar, "write a JSON file next to each PNG with its settings");
  app.add_flag("--json", c.json, "print one JSON object per image on stdout");
  app.add_option("--preview", c.preview, "write a live preview PNG of the running batch to FILE every --preview-every steps");
  app.add_option("--preview-every", c.preview_every, "steps between live previews")->capture_default_str();
  app.add_option("--taesd", c.taesd, "TAESD weights (diffusers AutoencoderTiny folder or file, or madebyollin's taesd_decoder) "
                                     "for full-size previews");
  app.add_flag("-q,--quiet", c.quiet, "no progress or messages on stderr (errors still)");
}

}  // namespace taiyi::cli
