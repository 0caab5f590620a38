// Port of diffusers' StableDiffusionPipeline.__call__ (text-to-image); see include/taiyi/pipelines/pipeline_stable_diffusion.h.
#include "taiyi/pipelines/pipeline_stable_diffusion.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <map>

#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "taiyi/loaders/safetensors.h"

namespace taiyi {

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

}  // namespace

// Parameters in the range of PyTorch's default initialisers (uniform, +-1/sqrt(fan_in)); norm scales
// near 1. Values that keep activations finite and normal (no denormals to slow the CPU down).
static void fill_random(torch::nn::Module& module, torch::Dtype dtype, torch::Device device, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto options = torch::TensorOptions().dtype(torch::kFloat);
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    torch::Tensor p = item.value();
    torch::Tensor values;
    if (p.dim() >= 2) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.numel() / p.size(0)));
      values = torch::rand(p.sizes(), generator, options) * (2 * bound) - bound;
    } else {
      const std::string& name = item.key();
      const bool is_scale = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
      values = torch::rand(p.sizes(), generator, options) * 0.04 - 0.02 + (is_scale ? 1.0 : 0.0);
    }
    p.set_data(values.to(device, dtype));
  }
  for (auto& item : module.named_buffers(/*recurse=*/true)) {
    torch::Tensor b = item.value();
    b.set_data(b.to(device, b.is_floating_point() ? dtype : b.scalar_type()));
  }
}

// StableDiffusionPipeline.__init__ rewrites outdated scheduler configs: steps_offset becomes 1 and a
// clip_sample that is true (the file's, or its class's default: DDIM and DDPM) false. A scheduler of
// another class made with from_config (--sampler) inherits only the keys the file had: diffusers'
// _use_default_values drops the rest, rewritten or not, so the new class's defaults apply to them.
static Config pipeline_scheduler_config(const Config& file, const std::string& kind, const nlohmann::json& overrides) {
  const std::string file_class = file.get_string("_class_name", "");
  const std::string target_class = kind.empty() ? file_class : scheduler_class_for_kind(kind);
  const bool same_class = target_class == file_class;
  nlohmann::json json = file.json();
  if (same_class || file.has("steps_offset")) json["steps_offset"] = 1;
  const bool class_clips = file_class == "DDIMScheduler" || file_class == "DDPMScheduler";
  if (file.get_bool("clip_sample", class_clips) && (same_class || file.has("clip_sample"))) json["clip_sample"] = false;
  for (const auto& [key, value] : overrides.items()) json[key] = value;
  return Config(json, file.path());
}

std::string SamplerSetting::key() const { return kind + "|" + schedule_name(schedule) + "|" + overrides.dump(); }

SamplerSetting Pipeline::sampler_setting(const GenerationRequest& r) const {
  const std::string name = !r.sampler.empty() ? r.sampler : !options_.sampler.empty() ? options_.sampler : options_.scheduler;
  SamplerSetting setting;
  std::optional<SigmaSchedule> implied;
  if (name.empty()) {
    const Config& file = scheduler_file_config_;
    setting.web_ui_name = web_ui_sampler_name(file.get_string("_class_name", ""), file.get_string("algorithm_type", "dpmsolver++"));
  } else {
    const SamplerChoice choice = resolve_sampler(name);
    setting.kind = choice.kind;
    setting.web_ui_name = choice.web_ui_name;
    implied = choice.schedule;
    if (choice.trailing) setting.overrides["timestep_spacing"] = "trailing";
  }
  const std::string schedule = !r.schedule.empty() ? r.schedule : options_.schedule;
  setting.schedule = implied.value_or(SigmaSchedule::Default);
  if (!schedule.empty()) {
    const SigmaSchedule asked = parse_schedule(schedule);
    if (implied && asked != *implied)
      throw Error("sampler '" + name + "' implies the " + schedule_name(*implied) + " schedule, but the schedule is '" +
                  schedule + "'");
    setting.schedule = asked;
  }
  const std::string cls = setting.kind.empty() ? scheduler_file_config_.get_string("_class_name", "") : scheduler_class_for_kind(setting.kind);
  const bool sigma_based = cls != "PNDMScheduler" && cls != "DDIMScheduler" && cls != "DDPMScheduler" && cls != "LCMScheduler";
  // The web UI's names: "Uniform" is its schedule of evenly spaced timesteps, diffusers' default.
  if (sigma_based) setting.schedule_type = setting.schedule == SigmaSchedule::Default ? "Uniform" : schedule_web_ui_name(setting.schedule);
  return setting;
}

Scheduler& Pipeline::scheduler_for(const SamplerSetting& setting) {
  const std::string key = setting.key();
  auto found = schedulers_.find(key);
  if (found != schedulers_.end()) return *found->second;
  SchedulerOptions scheduler_options;
  scheduler_options.eta = options_.eta;
  scheduler_options.schedule = setting.schedule;
  std::shared_ptr<Scheduler> scheduler =
      make_scheduler(pipeline_scheduler_config(scheduler_file_config_, setting.kind, setting.overrides), setting.kind,
                     scheduler_options);
  return *schedulers_.emplace(key, std::move(scheduler)).first->second;
}

Pipeline Pipeline::load(const fs::path& folder_path, const PipelineOptions& options) {
  return load(folder_path, options, /*random_weights=*/false);
}

Pipeline Pipeline::load_random(const fs::path& folder_path, const PipelineOptions& options) {
  return load(folder_path, options, /*random_weights=*/true);
}

Pipeline Pipeline::load(const fs::path& folder_path, const PipelineOptions& options, bool random_weights) {
  auto start = std::chrono::steady_clock::now();
  Pipeline p;
  p.options_ = options;
  p.folder_ = ModelFolder::open(folder_path);
  p.random_weights_ = random_weights;
  p.device_ = resolve_device(options.device);  // initialises CUDA before any CUDA-only call
  p.dtype_ = resolve_precision(options.precision, p.device_);
  if (options.vae_precision != "auto" && options.vae_precision != "fp32")
    throw Error("--vae-precision " + options.vae_precision + ": expected auto or fp32");
  p.numerics_ = apply_numerics(p.device_, options.tf32, options.cudnn_benchmark);
  for (const char* component : {"unet", "vae"}) {
    std::string cls = p.folder_.class_name(component);
    std::string expected = std::string(component) == "unet" ? "UNet2DConditionModel" : "AutoencoderKL";
    if (cls != expected)
      throw Error((p.folder_.root() / "model_index.json").string() + ": " + component + " class '" + cls +
                  "' is not supported (expected " + expected + ")");
  }
  // Everything that reads configs comes first, so that a bad folder fails before any weight loads.
  p.tokenizer_ = load_tokenizer(p.folder_);
  p.scheduler_file_config_ = p.folder_.config("scheduler");
  p.scheduler_for(p.sampler_setting(GenerationRequest{}));  // a bad sampler or config fails before any weight loads
  p.text_encoder_ = make_text_encoder(p.folder_);
  p.unet_ = std::make_shared<UNet2DConditionModel>(p.folder_.config("unet"));
  p.vae_ = std::make_shared<AutoencoderKL>(p.folder_.config("vae"));
  p.unet_first_channels_ = p.folder_.config("unet").get_int_list("block_out_channels").at(0);
  const bool vae_forced_fp32 = options.vae_precision == "fp32" && p.dtype_ != torch::kFloat;

  p.load_component(*p.text_encoder_, "text_encoder", p.dtype_, p.text_encoder_->ignored_checkpoint_keys());
  p.load_component(p.unet_->module(), "unet", p.dtype_);
  p.load_component(p.vae_->module(), "vae", vae_forced_fp32 ? torch::kFloat : p.dtype_);
  if (vae_forced_fp32) p.vae_fp32_ = p.vae_;
  if (options.channels_last && p.device_.is_cuda()) {
    for (auto& param : p.unet_->module().parameters())
      if (param.dim() == 4) param.set_data(param.contiguous(torch::MemoryFormat::ChannelsLast));
    for (auto& param : p.vae_->module().parameters())
      if (param.dim() == 4) param.set_data(param.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  p.lora_targets_ = taiyi::lora_targets("text_encoder", *p.text_encoder_);
  for (LoraTarget& t : taiyi::lora_targets("unet", p.unet_->module())) p.lora_targets_.push_back(std::move(t));
  for (const std::string& file : options.embedding_files) p.add_embedding(read_embedding(file));
  for (const fs::path& file : embedding_files(options.embeddings_dir))
    p.embedding_folder_.emplace(file.stem().string(), file);
  synchronize(p.device_);
  p.times_.load = seconds_since(start);
  return p;
}

int64_t Pipeline::default_width() const { return unet_->sample_size() * vae_->scale_factor(); }
int64_t Pipeline::default_height() const { return unet_->sample_size() * vae_->scale_factor(); }

std::string Pipeline::model_name() const {
  fs::path root = fs::absolute(folder_.root()).lexically_normal();
  std::string name = root.filename().string();
  if (name.empty()) name = root.parent_path().filename().string();
  return name;
}

std::string Pipeline::sampler_name() const { return sampler_setting(GenerationRequest{}).web_ui_name; }

void Pipeline::validate(const GenerationRequest& r) const {
  const int64_t multiple = vae_->scale_factor();
  for (auto [name, value] : {std::pair<const char*, int64_t>{"width", r.width}, {"height", r.height}}) {
    if (value <= 0) throw Error(std::string(name) + " " + std::to_string(value) + ": must be positive");
    if (value % multiple != 0)
      throw Error(std::string(name) + " " + std::to_string(value) + ": must be a multiple of " + std::to_string(multiple) +
                  " (the VAE's scale factor), e.g. " + std::to_string(value / multiple * multiple) + " or " +
                  std::to_string((value / multiple + 1) * multiple));
  }
  for (auto [name, value] : {std::pair<const char*, int64_t>{"width", r.width}, {"height", r.height}})
    if (value > kMaxImageSize)
      throw Error(std::string(name) + " " + std::to_string(value) + ": at most " + std::to_string(kMaxImageSize) + " pixels");
  if (r.count > kMaxImagesPerRequest)
    throw Error("number of images " + std::to_string(r.count) + ": at most " + std::to_string(kMaxImagesPerRequest) + " at once");
  if (r.steps < 1 || r.steps > 1000) throw Error("steps " + std::to_string(r.steps) + ": must be between 1 and 1000");
  if (!(r.cfg_scale >= 0)) throw Error("cfg scale " + std::to_string(r.cfg_scale) + ": must not be negative");
  if (r.count < 1) throw Error("number of images " + std::to_string(r.count) + ": must be at least 1");
  sampler_setting(r);  // an unknown sampler or schedule name is an Error naming it
  if (!r.init_image.empty() && !(r.strength > 0 && r.strength <= 1))
    throw Error("strength " + std::to_string(r.strength) + ": must be greater than 0 and at most 1");
  if (!r.mask.empty() && r.init_image.empty()) throw Error(r.mask + ": a mask needs an init image (-i) to inpaint");
  if (inpainting_unet() && r.mask.empty())
    throw Error((folder_.root() / "unet" / "config.json").string() +
                ": an inpainting UNet (in_channels 9) needs an init image and a mask (-i IMAGE --mask MASK)");
  if (unet_->in_channels() != vae_->latent_channels() && !inpainting_unet())
    throw Error((folder_.root() / "unet" / "config.json").string() + ": in_channels " +
                std::to_string(unet_->in_channels()) + ": expected " + std::to_string(vae_->latent_channels()) +
                " or, for inpainting, " + std::to_string(2 * vae_->latent_channels() + 1));
  if (r.clip_skip < 1 || r.clip_skip > text_encoder_->num_layers() + 1)
    throw Error("clip skip " + std::to_string(r.clip_skip) + ": must be between 1 (the last layer) and " +
                std::to_string(text_encoder_->num_layers() + 1) + " (this text encoder has " +
                std::to_string(text_encoder_->num_layers()) + " layers)");
  if (r.clip_skip > 1 && !text_encoder_->supports_clip_skip())
    throw Error("clip skip " + std::to_string(r.clip_skip) + ": needs a CLIP text encoder; " + folder_.root().string() +
                " has " + folder_.class_name("text_encoder"));
  context_chunks(r);  // a prompt's syntax error or excess length is an Error naming it
  check_memory(r);
}

// Live copies of the widest activations, measured with the real SD 1.x configs on the CPU (peak RSS
// over sizes, scripts/memory_estimate.sh), rounded up.
constexpr double kDecoderLiveCopies = 6;
constexpr double kUnetLiveCopies = 16;

uint64_t Pipeline::working_memory(const GenerationRequest& r) const {
  const double pixels = static_cast<double>(r.width) * static_cast<double>(r.height);
  const double latent_pixels = pixels / static_cast<double>(vae_->scale_factor() * vae_->scale_factor());
  const double vae_bytes = static_cast<double>(c10::elementSize(vae_dtype())) * pixels * vae_->decoder_values_per_pixel() * kDecoderLiveCopies;
  // Classifier-free guidance doubles the UNet's batch.
  const double unet_bytes = static_cast<double>(c10::elementSize(dtype_)) * 2 * latent_pixels *
                            static_cast<double>(unet_first_channels_) * kUnetLiveCopies;
  const double total = static_cast<double>(r.count) * (vae_bytes + unet_bytes);
  return total >= 1.8e19 ? UINT64_MAX : static_cast<uint64_t>(total);
}

void Pipeline::check_memory(const GenerationRequest& r) const {
  const uint64_t needed = working_memory(r);
  const std::optional<uint64_t> available = available_memory(device_);
  if (!available || needed <= *available) return;
  char message[256];
  std::snprintf(message, sizeof message, "%lldx%lld, %lld image(s) at once: needs about %.1f GB of working memory on %s, %.1f GB available",
                static_cast<long long>(r.width), static_cast<long long>(r.height), static_cast<long long>(r.count),
                static_cast<double>(needed) / 1e9, device_.str().c_str(), static_cast<double>(*available) / 1e9);
  throw Error(std::string(message) + " (a smaller size, fewer images at once, or --precision fp16 on a GPU)");
}

int64_t Pipeline::prompt_chunks(const std::string& prompt) const {
  return static_cast<int64_t>(tokenize_prompt(*tokenizer_, prompt).chunks.size());
}

int64_t Pipeline::context_chunks(const GenerationRequest& r) const {
  const int64_t chunks = prompt_chunks(r.prompt);
  return r.cfg_scale > 1.0 ? std::max(chunks, prompt_chunks(r.negative_prompt)) : chunks;
}

void Pipeline::say(const std::string& notice) const {
  if (options_.notice) options_.notice(notice);
}

// A component's weights in `dtype` on the device: from the folder's weight files, or for random weights
// the values of that component's fixed seed (so an fp32 copy made later holds the same values).
void Pipeline::load_component(torch::nn::Module& module, const std::string& component, torch::Dtype dtype,
                              const std::vector<std::string>& ignored_keys) const {
  if (random_weights_) {
    const std::map<std::string, uint64_t> seeds = {{"text_encoder", 1}, {"unet", 2}, {"vae", 3}};
    fill_random(module, dtype, device_, seeds.at(component));
  } else {
    load_weights(module, folder_.weight_files(component), LoadOptions(dtype, device_, ignored_keys));
  }
}

torch::Tensor Pipeline::encode_ids(const std::vector<int64_t>& chunk_ids, int64_t skip) {
  auto ids = torch::tensor(chunk_ids, torch::kLong).unsqueeze(0).to(device_);
  if (text_encoder_fp32_) return text_encoder_fp32_->forward(ids, skip).to(dtype_);
  torch::Tensor hidden = text_encoder_->forward(ids, skip);
  // fp16 safety: an overflow inside the encoder shows as Inf/NaN in its output (one sync per chunk,
  // outside the denoising loop). The encoder then runs in fp32 from here on.
  if (dtype_ != torch::kFloat && !torch::isfinite(hidden).all().item<bool>()) {
    say("the " + precision_name(dtype_) + " text encoder overflowed (NaN/Inf); encoding in fp32 from now on");
    auto copy = make_text_encoder(folder_);
    load_component(*copy, "text_encoder", torch::kFloat, copy->ignored_checkpoint_keys());
    {
      // The copy gets what the model's encoder has: textual-inversion rows and merged LoRAs.
      c10::InferenceMode normal_tensors(false);
      torch::NoGradGuard no_grad;
      for (const TextualInversion& ti : embeddings_) copy->token_embedding().append_rows(ti.vectors);
      for (const auto& [key, updates] : lora_updates_)
        if (key.rfind("text_encoder|", 0) == 0) merge_lora_weight(*copy, key.substr(13), updates, key + "|fp32");
    }
    text_encoder_fp32_ = copy;
    hidden = text_encoder_fp32_->forward(ids, skip).to(dtype_);
  }
  return hidden;
}

// The web UI's FrozenCLIPEmbedderWithCustomWords (sd_hijack_clip.py): each chunk encoded on its own;
// a chunk with weights is multiplied token by token and rescaled to its unweighted mean (in fp32, as
// the web UI's float32 multipliers promote it); the chunks concatenated along the sequence.
torch::Tensor Pipeline::encode_prompt(const std::string& prompt, int64_t clip_skip) {
  const TokenizedPrompt tokenized = tokenize_prompt(*tokenizer_, prompt);
  std::vector<torch::Tensor> chunks;
  for (const PromptChunk& chunk : tokenized.chunks) {
    torch::Tensor z = encode_ids(chunk.ids, clip_skip - 1);
    if (std::any_of(chunk.weights.begin(), chunk.weights.end(), [](double w) { return w != 1.0; })) {
      std::vector<float> weights(chunk.weights.begin(), chunk.weights.end());
      torch::Tensor multipliers = torch::tensor(weights).to(device_).reshape({1, -1, 1});
      torch::Tensor z32 = z.to(torch::kFloat);
      torch::Tensor original_mean = z32.mean();
      z32 = z32 * multipliers;
      torch::Tensor new_mean = z32.mean();
      z = (z32 * (original_mean / new_mean)).to(dtype_);
    }
    chunks.push_back(z);
  }
  return chunks.size() == 1 ? chunks.front() : torch::cat(chunks, 1);
}

torch::Tensor Pipeline::initial_latents(const GenerationRequest& r, std::vector<torch::Generator>* generators) const {
  const int64_t factor = vae_->scale_factor();
  const int64_t channels = vae_->latent_channels();  // num_channels_latents (an inpainting UNet takes 9)
  // diffusers' randn_tensor with a list of CPU generators: one draw of shape (1, C, h, w) per image,
  // in the model dtype, on the CPU, then moved to the device.
  std::vector<torch::Tensor> per_image;
  for (int64_t i = 0; i < r.count; ++i) {
    torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(r.seed + static_cast<uint64_t>(i));
    per_image.push_back(torch::randn({1, channels, r.height / factor, r.width / factor}, generator,
                                     torch::TensorOptions().dtype(dtype_)));
    if (generators) generators->push_back(generator);
  }
  return torch::cat(per_image).to(device_);
}

torch::Tensor Pipeline::denoise(Scheduler& scheduler, torch::Tensor latents, const torch::Tensor& embeddings,
                                const GenerationRequest& r, std::vector<torch::Generator>& generators,
                                const ProgressCallback& progress, int64_t first_index, const StepHook& after_step,
                                const std::vector<torch::Tensor>& extra_inputs) {
  const bool guidance = r.cfg_scale > 1.0;
  const std::vector<double>& timesteps = scheduler.timesteps();
  const auto total = static_cast<int64_t>(timesteps.size());
  if (first_index < 0 || first_index >= total)
    throw Error("denoise: first step " + std::to_string(first_index) + " outside the " + std::to_string(total) + " timesteps");
  // Timesteps go to the device before the loop so that the loop itself has no host-to-device copies;
  // the UNet reads them as float32, as diffusers' timestep embedding does (.float()).
  std::vector<torch::Tensor> timestep_tensors;
  for (int64_t i = first_index; i < total; ++i)
    timestep_tensors.push_back(torch::tensor(static_cast<float>(timesteps[static_cast<size_t>(i)]), torch::kFloat).to(device_));
  for (int64_t i = first_index; i < total; ++i) {
    torch::Tensor model_input = guidance ? torch::cat({latents, latents}) : latents;
    model_input = scheduler.scale_model_input(model_input, i);
    if (!extra_inputs.empty()) {
      std::vector<torch::Tensor> parts = {model_input};
      parts.insert(parts.end(), extra_inputs.begin(), extra_inputs.end());
      model_input = torch::cat(parts, 1);
    }
    if (options_.channels_last && device_.is_cuda()) model_input = model_input.contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor noise = unet_->forward(model_input, timestep_tensors[static_cast<size_t>(i - first_index)], embeddings);
    if (guidance) {
      auto halves = noise.chunk(2);
      noise = halves[0] + r.cfg_scale * (halves[1] - halves[0]);
    }
    // The samplers' noise is drawn per image from that image's generator, as diffusers does with a
    // list of generators.
    latents = scheduler.step(noise, i, latents, generators);
    if (after_step) {
      torch::Tensor replaced = after_step(latents, i);
      if (replaced.defined()) latents = replaced;
    }
    ++times_.unet_calls;
    if (progress) progress(i - first_index + 1, total - first_index);
  }
  return latents;
}

torch::Tensor Pipeline::decode(const torch::Tensor& latents) {
  if (vae_fp32_) {
    torch::Tensor images = vae_fp32_->decode(latents.to(torch::kFloat) / vae_fp32_->scaling_factor());
    return (images * 0.5 + 0.5).clamp(0, 1);
  }
  torch::Tensor images = vae_->decode(latents / vae_->scaling_factor());
  // fp16 safety (the web UI's "revert VAE to 32-bit"): a decode with NaN or Inf is done again in
  // fp32, and the VAE stays fp32 from then on. One sync per decode, after the loop.
  if (dtype_ != torch::kFloat && !torch::isfinite(images).all().item<bool>()) {
    say("the " + precision_name(dtype_) + " VAE decode gave NaN/Inf; decoding in fp32 from now on (--vae-precision fp32 forces it)");
    vae_fp32_ = std::make_shared<AutoencoderKL>(folder_.config("vae"));
    load_component(vae_fp32_->module(), "vae", torch::kFloat);
    return decode(latents);
  }
  return (images * 0.5 + 0.5).clamp(0, 1);
}

torch::Tensor Pipeline::preprocess_image(const std::string& path, int64_t width, int64_t height) const {
  // VaeImageProcessor.preprocess of a PIL image opened with .convert("RGB"): resize (Lanczos), then
  // np.array / 255 in float32, to NCHW, 2x - 1. numpy_to_pt's NCHW is a transposed view of the
  // NHWC array, i.e. channels_last, and stays so: the VAE encoder's convolutions, and after them the
  // latents and the UNet, then run in that memory format, whose rounding differs from contiguous
  // NCHW. Keeping diffusers' layout keeps its numbers.
  PixelImage image = read_image(path, 3);
  image = resize_lanczos(image, width, height);
  torch::Tensor pixels = torch::from_blob(image.pixels.data(), {1, image.height, image.width, 3}, torch::kUInt8);
  torch::Tensor x = pixels.to(torch::kFloat).div(255.0).permute({0, 3, 1, 2});
  return at::sub(at::mul(x, 2.0), 1.0).to(device_, dtype_);
}

int64_t Pipeline::first_index_for_strength(const Scheduler& scheduler, int64_t steps, double strength) {
  // get_timesteps: init_timestep = min(int(steps * strength), steps); t_start = max(steps - init_timestep, 0)
  const int64_t init_timestep = std::min(static_cast<int64_t>(static_cast<double>(steps) * strength), steps);
  const int64_t t_start = std::max<int64_t>(steps - init_timestep, 0);
  const int64_t first = t_start * scheduler.order();
  if (first >= static_cast<int64_t>(scheduler.timesteps().size()))
    throw Error("strength " + std::to_string(strength) + " with " + std::to_string(steps) +
                " steps leaves no denoising step (strength x steps must be at least 1)");
  return first;
}

bool Pipeline::inpainting_unet() const { return unet_->in_channels() == 2 * vae_->latent_channels() + 1; }

torch::Tensor Pipeline::encode_image_latents(const torch::Tensor& images, std::vector<torch::Generator>& generators) {
  AutoencoderKL& vae = vae_fp32_ ? *vae_fp32_ : *vae_;
  std::vector<torch::Tensor> samples;
  for (int64_t i = 0; i < images.size(0); ++i) {
    torch::Tensor image = images.narrow(0, i, 1);
    if (vae_fp32_) image = image.to(torch::kFloat);
    auto [mean, std] = vae.encode_distribution(image);
    const torch::Tensor draw =
        torch::randn(mean.sizes(), generators.at(static_cast<size_t>(i)), torch::TensorOptions().dtype(mean.scalar_type()));
    samples.push_back(at::add(mean, at::mul(std, draw.to(device_))).to(dtype_));
  }
  return at::mul(torch::cat(samples), vae.scaling_factor());
}

torch::Tensor Pipeline::preprocess_mask(const std::string& path, int64_t width, int64_t height) {
  PixelImage mask = resize_lanczos(read_image(path, 1), width, height);
  torch::Tensor pixels = torch::from_blob(mask.pixels.data(), {1, mask.height, mask.width, 1}, torch::kUInt8);
  torch::Tensor x = pixels.to(torch::kFloat).div(255.0).permute({0, 3, 1, 2});
  // binarize, in place as diffusers: image[image < 0.5] = 0; image[image >= 0.5] = 1
  x.masked_fill_(x < 0.5, 0);
  x.masked_fill_(x >= 0.5, 1);
  return x;
}

// StableDiffusionInpaintPipeline: prepare_latents (noise, the image's latents when the UNet has 4
// channels or strength < 1) and prepare_mask_latents (the mask at latent size, the masked image's
// latents). diffusers encodes the one init image once, with the first image's generator, and repeats
// the latents for the other images; the noise comes from each image's own generator.
Pipeline::Inpainting Pipeline::prepare_inpainting(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                                  std::vector<torch::Generator>& generators, int64_t* first_index) {
  const GenerationRequest& first = batch.front();
  *first_index = first_index_for_strength(scheduler, first.steps, first.strength);
  const bool strength_max = first.strength == 1.0;
  const bool four_channels = !inpainting_unet();
  const int64_t factor = vae_->scale_factor();
  std::vector<torch::Tensor> image_latents, noise, masks, masked_latents;
  for (const GenerationRequest& r : batch) {
    std::vector<torch::Generator> own;
    for (int64_t i = 0; i < r.count; ++i) own.push_back(at::make_generator<at::CPUGeneratorImpl>(r.seed + static_cast<uint64_t>(i)));
    const torch::Tensor init_image = preprocess_image(r.init_image, r.width, r.height).to(torch::kFloat);
    torch::Tensor latents_of_image;
    if (four_channels || !strength_max) latents_of_image = encode_image_latents(init_image.to(dtype_), own).repeat({r.count, 1, 1, 1});
    const torch::Tensor own_noise = unit_noise({r.count, vae_->latent_channels(), r.height / factor, r.width / factor}, own);
    const torch::Tensor mask_condition = preprocess_mask(r.mask, r.width, r.height);
    const torch::Tensor masked_image = at::mul(init_image, at::lt(mask_condition, 0.5).to(init_image.device()));
    torch::Tensor mask = torch::nn::functional::interpolate(
        mask_condition, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{r.height / factor, r.width / factor}));
    mask = mask.to(device_, dtype_);
    const torch::Tensor masked = encode_image_latents(masked_image.to(device_, dtype_), own);
    if (latents_of_image.defined()) image_latents.push_back(latents_of_image);
    noise.push_back(own_noise);
    masks.push_back(mask.repeat({r.count, 1, 1, 1}));
    masked_latents.push_back(masked.repeat({r.count, 1, 1, 1}));
    generators.insert(generators.end(), own.begin(), own.end());
  }
  Inpainting out;
  out.noise = torch::cat(noise);
  out.mask = torch::cat(masks);
  out.masked_image_latents = torch::cat(masked_latents);
  if (!image_latents.empty()) out.image_latents = torch::cat(image_latents);
  out.latents = strength_max ? out.noise * scheduler.init_noise_sigma()
                             : scheduler.add_noise(out.image_latents, out.noise, *first_index);
  return out;
}

torch::Tensor Pipeline::unit_noise(at::IntArrayRef shape, const std::vector<torch::Generator>& generators) const {
  std::vector<int64_t> one_image = shape.vec();
  one_image[0] = 1;
  std::vector<torch::Tensor> noise;
  for (const torch::Generator& generator : generators)
    noise.push_back(torch::randn(one_image, generator, torch::TensorOptions().dtype(dtype_)));
  return torch::cat(noise).to(device_);
}

std::vector<Image> Pipeline::to_images(const torch::Tensor& images01, uint64_t first_seed) {
  // diffusers' numpy_to_pil: (x * 255).round().astype(uint8), in float32 on the CPU.
  torch::Tensor bytes =
      (images01.to(torch::kCPU, torch::kFloat).permute({0, 2, 3, 1}) * 255).round().to(torch::kUInt8).contiguous();
  std::vector<Image> out;
  for (int64_t i = 0; i < bytes.size(0); ++i) {
    Image image;
    image.height = bytes.size(1);
    image.width = bytes.size(2);
    image.seed = first_seed + static_cast<uint64_t>(i);
    const uint8_t* data = bytes[i].data_ptr<uint8_t>();
    image.rgb.assign(data, data + image.height * image.width * 3);
    out.push_back(std::move(image));
  }
  return out;
}

GenerationRequest Pipeline::complete(const GenerationRequest& request) const {
  GenerationRequest r = request;
  // The web UI's extra networks: <lora:...> tags leave the text before anything parses it.
  for (std::string* text : {&r.prompt, &r.negative_prompt}) {
    ExtraNetworks networks = parse_extra_networks(*text);
    *text = networks.text;
    for (const LoraTag& tag : networks.loras)
      r.loras.push_back(LoraSelection{find_lora(tag.name).string(), tag.name, tag.te_multiplier, tag.unet_multiplier});
    activate_embeddings(*text);
  }
  if (!r.init_image.empty() && (r.width == 0 || r.height == 0)) {
    // VaeImageProcessor.get_default_height_width: the image's size rounded down to the VAE's multiple.
    const auto [w, h] = image_size(r.init_image);
    const int64_t multiple = vae_->scale_factor();
    if (r.width == 0) r.width = w - w % multiple;
    if (r.height == 0) r.height = h - h % multiple;
    if (r.width == 0 || r.height == 0)
      throw Error(r.init_image + ": image of " + std::to_string(w) + "x" + std::to_string(h) + " is smaller than " +
                  std::to_string(multiple) + " pixels a side");
  }
  if (r.width == 0) r.width = default_width();
  if (r.height == 0) r.height = default_height();
  validate(r);
  return r;
}

std::vector<Image> Pipeline::generate(const GenerationRequest& request, const ProgressCallback& progress) {
  return generate_batch({request}, progress);
}

std::vector<Image> Pipeline::generate_batch(const std::vector<GenerationRequest>& requests,
                                            const ProgressCallback& progress) {
  if (requests.empty()) return {};
  std::vector<GenerationRequest> batch;
  for (const GenerationRequest& request : requests) batch.push_back(complete(request));
  const GenerationRequest& first = batch.front();
  for (const GenerationRequest& r : batch) {
    if (r.steps != first.steps || r.cfg_scale != first.cfg_scale || r.width != first.width || r.height != first.height ||
        sampler_setting(r).key() != sampler_setting(first).key() || r.init_image.empty() != first.init_image.empty() ||
        (!r.init_image.empty() && r.strength != first.strength) || r.mask.empty() != first.mask.empty() ||
        r.loras != first.loras)
      throw Error("generate_batch: requests in one batch must share steps, cfg scale, size, sampler, strength and LoRAs");
  }
  apply_loras(first.loras);
  c10::InferenceMode inference;
  const bool guidance = first.cfg_scale > 1.0;

  auto start = std::chrono::steady_clock::now();
  std::map<std::pair<std::string, int64_t>, torch::Tensor> encoded;  // the same (negative) prompt is encoded once
  auto encode = [&](const std::string& text, int64_t clip_skip) {
    auto key = std::make_pair(text, clip_skip);
    auto it = encoded.find(key);
    if (it == encoded.end()) it = encoded.emplace(key, encode_prompt(text, clip_skip)).first;
    return it->second;
  };
  // The shorter of prompt and negative prompt is padded with empty chunks (the encoding of "") to
  // the longer's length, as the web UI pads them (pad_cond).
  auto padded = [&](const torch::Tensor& embedding, int64_t length, int64_t clip_skip) {
    if (embedding.size(1) == length) return embedding;
    torch::Tensor empty = encode("", clip_skip);
    const int64_t repeats = (length - embedding.size(1)) / empty.size(1);
    return torch::cat({embedding, empty.repeat({1, repeats, 1})}, 1);
  };
  std::vector<torch::Tensor> conditional, unconditional;
  for (const GenerationRequest& r : batch) {
    torch::Tensor c = encode(r.prompt, r.clip_skip);
    torch::Tensor u = guidance ? encode(r.negative_prompt, r.clip_skip) : c;
    const int64_t length = std::max(c.size(1), u.size(1));
    if (!conditional.empty() && conditional.front().size(1) != length)
      throw Error("generate_batch: requests in one batch must have prompts of the same chunk count");
    c = padded(c, length, r.clip_skip);
    conditional.push_back(c.expand({r.count, c.size(1), c.size(2)}));
    if (guidance) {
      u = padded(u, length, r.clip_skip);
      unconditional.push_back(u.expand({r.count, u.size(1), u.size(2)}));
    }
  }
  // Unconditional half first, as diffusers concatenates them.
  torch::Tensor embeddings = guidance ? torch::cat({torch::cat(unconditional), torch::cat(conditional)})
                                      : torch::cat(conditional);
  synchronize(device_);
  times_.encode += seconds_since(start);

  start = std::chrono::steady_clock::now();
  // As StableDiffusionPipeline: set_timesteps first (init_noise_sigma depends on the schedule), then
  // the latents, scaled by it.
  Scheduler& scheduler = scheduler_for(sampler_setting(first));
  scheduler.set_timesteps(first.steps);
  std::vector<torch::Generator> generators;
  torch::Tensor latents;
  int64_t first_index = 0;
  Inpainting inpaint;
  if (first.init_image.empty()) {
    std::vector<torch::Tensor> initial;
    for (const GenerationRequest& r : batch) initial.push_back(initial_latents(r, &generators));
    latents = torch::cat(initial) * scheduler.init_noise_sigma();
  } else if (first.mask.empty()) {
    // StableDiffusionImg2ImgPipeline.prepare_latents: each image's latent_dist.sample from its own
    // generator, times scaling_factor, then the scheduler's add_noise at the first kept timestep with
    // noise drawn per image from the same generators.
    first_index = first_index_for_strength(scheduler, first.steps, first.strength);
    std::vector<torch::Tensor> samples;
    for (const GenerationRequest& r : batch) {
      const torch::Tensor image = preprocess_image(r.init_image, r.width, r.height);
      std::vector<torch::Generator> own;
      for (int64_t i = 0; i < r.count; ++i)
        own.push_back(at::make_generator<at::CPUGeneratorImpl>(r.seed + static_cast<uint64_t>(i)));
      // torch.cat([image] * batch_size) as diffusers (a copy in the image's memory format, which the
      // encoder's convolutions follow), then image[i:i+1] from generator i.
      samples.push_back(encode_image_latents(torch::cat(std::vector<torch::Tensor>(static_cast<size_t>(r.count), image)), own));
      generators.insert(generators.end(), own.begin(), own.end());
    }
    const torch::Tensor init_latents = torch::cat(samples);
    latents = scheduler.add_noise(init_latents, unit_noise(init_latents.sizes(), generators), first_index);
  } else {
    inpaint = prepare_inpainting(scheduler, batch, generators, &first_index);
    latents = inpaint.latents;
  }
  StepHook blend;
  std::vector<torch::Tensor> extra_inputs;
  if (inpaint.mask.defined()) {
    if (inpainting_unet()) {
      extra_inputs = guidance ? std::vector<torch::Tensor>{torch::cat({inpaint.mask, inpaint.mask}),
                                                          torch::cat({inpaint.masked_image_latents, inpaint.masked_image_latents})}
                              : std::vector<torch::Tensor>{inpaint.mask, inpaint.masked_image_latents};
    } else {
      // After each step the kept region goes back to the image's latents, noised to the next timestep.
      const auto total = static_cast<int64_t>(scheduler.timesteps().size());
      blend = [&scheduler, &inpaint, total](const torch::Tensor& x, int64_t index) {
        torch::Tensor proper = inpaint.image_latents;
        if (index < total - 1) proper = scheduler.add_noise(inpaint.image_latents, inpaint.noise, index + 1);
        return at::add(at::mul(at::rsub(inpaint.mask, 1), proper), at::mul(inpaint.mask, x));
      };
    }
  }
  latents = denoise(scheduler, latents, embeddings, first, generators, progress, first_index, blend, extra_inputs);
  synchronize(device_);
  times_.denoise += seconds_since(start);

  start = std::chrono::steady_clock::now();
  torch::Tensor decoded = decode(latents);
  std::vector<Image> images;
  int64_t offset = 0;
  for (const GenerationRequest& r : batch) {
    for (Image& image : to_images(decoded.narrow(0, offset, r.count), r.seed)) images.push_back(std::move(image));
    offset += r.count;
  }
  times_.decode += seconds_since(start);
  return images;
}

}  // namespace taiyi

namespace taiyi {

// --- LoRA -------------------------------------------------------------------------------------

fs::path Pipeline::find_lora(const std::string& name) const {
  if (options_.lora_dir.empty()) throw Error("<lora:" + name + ">: no LoRA folder (--lora-dir)");
  const fs::path dir = options_.lora_dir;
  const fs::path direct = dir / (name + ".safetensors");
  std::error_code ec;
  if (fs::is_regular_file(direct, ec)) return direct;
  // The web UI finds a LoRA by file stem anywhere below its folder; the first in path order wins.
  std::vector<fs::path> found;
  if (fs::is_directory(dir, ec)) {
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".safetensors" && it->path().stem() == name && it->is_regular_file(ec))
        found.push_back(it->path());
    }
  }
  if (found.empty())
    throw Error("<lora:" + name + ">: no " + name + ".safetensors in " + dir.string() + " (--lora-dir)");
  std::sort(found.begin(), found.end());
  return found.front();
}

std::vector<std::pair<torch::nn::Module*, std::string>> Pipeline::lora_copies(const std::string& component) {
  if (component == "unet") return {{&unet_->module(), ""}};
  std::vector<std::pair<torch::nn::Module*, std::string>> copies = {{text_encoder_.get(), ""}};
  if (text_encoder_fp32_ && text_encoder_fp32_ != text_encoder_) copies.push_back({text_encoder_fp32_.get(), "|fp32"});
  return copies;
}

torch::Tensor Pipeline::in_model_layout(torch::Tensor weight) const {
  if (options_.channels_last && device_.is_cuda() && weight.dim() == 4)
    return weight.contiguous(torch::MemoryFormat::ChannelsLast);
  return weight;
}

// New values for a weight, in place where it can be: on the CPU the weights are private mappings of
// the files, and writing them replaces the touched pages by private ones of the same size, so the
// resident memory does not grow (a fresh tensor would add the weight's size while the mapping stays).
// Inference tensors (an fp32 text-encoder copy made under InferenceMode) take new storage instead.
void Pipeline::replace_weight(torch::Tensor& weight, const torch::Tensor& values) const {
  if (!weight.is_inference()) weight.copy_(values);
  else weight.set_data(in_model_layout(values.to(weight.scalar_type())));
}

void Pipeline::merge_lora_weight(torch::nn::Module& module, const std::string& param,
                                 const std::vector<LoraUpdate>& updates, const std::string& original_key) {
  auto parameters = module.named_parameters();  // the dict's tensors share the module's
  torch::Tensor* weight = parameters.find(param);
  if (!weight) throw Error("LoRA: the model has no parameter " + param);
  if (random_weights_ && !lora_originals_.count(original_key)) lora_originals_[original_key] = weight->clone();
  // peft's merge: W += delta per adapter in order, here always in fp32, then cast once.
  torch::Tensor merged = weight->to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true);
  for (const LoraUpdate& u : updates) merged += lora_delta(*u.file, u.patch, u.scale, device_);
  replace_weight(*weight, merged.to(weight->scalar_type()));
}

void Pipeline::restore_lora_weights() {
  std::map<std::string, std::vector<std::shared_ptr<SafetensorsFile>>> files;  // by component, opened once
  for (const auto& [key, updates] : lora_updates_) {
    const size_t bar = key.find('|');
    const std::string component = key.substr(0, bar), param = key.substr(bar + 1);
    for (auto [module, suffix] : lora_copies(component)) {
      auto parameters = module->named_parameters();
      torch::Tensor* weight = parameters.find(param);
      if (!weight) continue;
      if (random_weights_) {
        auto original = lora_originals_.find(key + suffix);
        if (original == lora_originals_.end()) continue;  // a copy made after the merge holds its own
        replace_weight(*weight, original->second);
        lora_originals_.erase(original);
        continue;
      }
      if (!files.count(component))
        for (const fs::path& path : folder_.weight_files(component))
          files[component].push_back(std::make_shared<SafetensorsFile>(path));
      bool restored = false;
      for (const auto& file : files[component]) {
        if (!file->find(param)) continue;
        replace_weight(*weight, load_tensor(*file, param, weight->scalar_type(), device_));
        release_pages(file->tensor(param));  // the fresh mapping's pages, read once
        restored = true;
        break;
      }
      if (!restored) throw Error(folder_.root().string() + ": " + component + " weight " + param + " is no longer in its files");
    }
  }
  lora_updates_.clear();
  active_loras_.clear();
}

void Pipeline::apply_loras(const std::vector<LoraSelection>& loras) {
  if (loras == active_loras_) return;
  const auto start = std::chrono::steady_clock::now();
  // Normal tensors, no autograd: the weights are written in place (replace_weight).
  c10::InferenceMode normal_tensors(false);
  torch::NoGradGuard no_grad;
  std::vector<std::shared_ptr<LoraFile>> files;
  for (const LoraSelection& selection : loras)
    files.push_back(std::make_shared<LoraFile>(read_lora(selection.file, lora_targets_)));
  restore_lora_weights();
  std::vector<std::pair<std::string, std::vector<LoraUpdate>>> updates;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < loras.size(); ++i) {
    for (const LoraPatch& patch : files[i]->plan.patches) {
      const double multiplier = patch.component == "unet" ? loras[i].unet_multiplier : loras[i].te_multiplier;
      if (multiplier == 0) continue;  // exactly the model without it (not W + 0 * delta, which can flip -0)
      const std::string key = patch.component + "|" + patch.module + ".weight";
      auto [it, fresh] = index.emplace(key, updates.size());
      if (fresh) updates.push_back({key, {}});
      // peft's set_scale: scaling = scale * lora_alpha / r.
      updates[it->second].second.push_back(
          LoraUpdate{files[i], patch, multiplier * patch.alpha / static_cast<double>(patch.rank)});
    }
  }
  try {
    for (const auto& [key, list] : updates) {
      const size_t bar = key.find('|');
      for (auto [module, suffix] : lora_copies(key.substr(0, bar)))
        merge_lora_weight(*module, key.substr(bar + 1), list, key + suffix);
      lora_updates_.push_back({key, list});
    }
  } catch (...) {
    restore_lora_weights();
    throw;
  }
  active_loras_ = loras;
  synchronize(device_);
  times_.lora += seconds_since(start);
  ++times_.lora_merges;
}

int64_t Pipeline::lora_kept_bytes() const {
  int64_t bytes = 0;
  for (const auto& [key, tensor] : lora_originals_) bytes += tensor.numel() * tensor.element_size();
  return bytes;
}

// --- Textual inversion --------------------------------------------------------------------------

void Pipeline::add_embedding(const TextualInversion& embedding) const {
  for (const TextualInversion& loaded : embeddings_)
    if (loaded.name == embedding.name) return;
  c10::InferenceMode normal_tensors(false);
  torch::NoGradGuard no_grad;
  nn::EmbeddingImpl& table = text_encoder_->token_embedding();
  const int64_t rows = table.weight().size(0), dim = table.weight().size(1);
  if (embedding.vectors.size(1) != dim)
    throw Error(embedding.file + ": embedding '" + embedding.name + "' has vectors of " +
                std::to_string(embedding.vectors.size(1)) + " values; this text encoder's tokens have " +
                std::to_string(dim) + " (an embedding for another model?)");
  if (static_cast<int64_t>(tokenizer_->vocab_size()) != rows)
    throw Error(embedding.file + ": textual inversion needs the tokenizer's " + std::to_string(tokenizer_->vocab_size()) +
                " tokens to match the text encoder's " + std::to_string(rows) + " token rows (" +
                folder_.root().string() + ")");
  std::vector<int64_t> ids = tokenizer_->add_embedding_tokens(embedding.name, static_cast<size_t>(embedding.vectors.size(0)));
  table.append_rows(embedding.vectors);
  if (text_encoder_fp32_ && text_encoder_fp32_ != text_encoder_) text_encoder_fp32_->token_embedding().append_rows(embedding.vectors);
  embeddings_.push_back(embedding);
}

std::vector<std::string> Pipeline::embedding_names() const {
  std::vector<std::string> names;
  for (const TextualInversion& ti : embeddings_) names.push_back(ti.name);
  return names;
}

void Pipeline::activate_embeddings(const std::string& text) const {
  for (auto it = embedding_folder_.begin(); it != embedding_folder_.end();) {
    if (text.find(it->first) != std::string::npos) {
      add_embedding(read_embedding(it->second, it->first));  // an Error leaves it to fail again next time
      it = embedding_folder_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace taiyi
