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
#include "taiyi/pipelines/latent_preview.h"
#include "taiyi/loaders/state_dict.h"

namespace taiyi {

namespace fs = std::filesystem;

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

// PipelineOptions' vae_tiling and vae_tile_size, checked. Tiles meet when the pixels a decoded tile keeps
// (tile - int(tile * 0.25)) are the latents it steps (int(tile / f * 0.75)) times the scale factor f: a
// multiple of 4f.
static VaeTiling vae_tiling_of(const PipelineOptions& options, const AutoencoderKL& vae) {
  VaeTiling tiling;
  tiling.mode = parse_vae_tiling_mode(options.vae_tiling);
  const int64_t multiple = 4 * vae.scale_factor();
  if (options.vae_tile_size < 0 || options.vae_tile_size % multiple != 0)
    throw Error("--vae-tile-size " + std::to_string(options.vae_tile_size) + ": must be a multiple of " +
                std::to_string(multiple) + " pixels (4x the VAE's scale factor, so that the tiles meet), or 0 for the " +
                "VAE config's sample_size");
  tiling.tile_sample_size = options.vae_tile_size;
  return tiling;
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
  p.source_ = ModelSource::open(folder_path, options.source);
  const ModelFolder& folder = p.source_.folder();
  p.random_weights_ = random_weights;
  p.device_ = resolve_device(options.device);  // initialises CUDA before any CUDA-only call
  p.dtype_ = resolve_precision(options.precision, p.device_);
  if (options.vae_precision != "auto" && options.vae_precision != "fp32")
    throw Error("--vae-precision " + options.vae_precision + ": expected auto or fp32");
  p.numerics_ = apply_numerics(p.device_, options.tf32, options.cudnn_benchmark);
  for (const char* component : {"unet", "vae"}) {
    std::string cls = folder.class_name(component);
    std::string expected = std::string(component) == "unet" ? "UNet2DConditionModel" : "AutoencoderKL";
    if (cls != expected)
      throw Error(folder.index_path().string() + ": " + component + " class '" + cls +
                  "' is not supported (expected " + expected + ")");
  }
  // Everything that reads configs comes first, so that a bad folder fails before any weight loads.
  p.tokenizer_ = load_tokenizer(folder);
  p.scheduler_file_config_ = p.source_.config("scheduler");
  p.scheduler_for(p.sampler_setting(GenerationRequest{}));  // a bad sampler or config fails before any weight loads
  p.text_encoder_ = make_text_encoder(folder);
  if (folder.is_sdxl()) {
    p.tokenizer_2_ = load_tokenizer(folder, "tokenizer_2");
    p.text_encoder_2_ = make_text_encoder_2(folder, p.source_.config("text_encoder_2"));
    p.force_zeros_for_empty_prompt_ = folder.force_zeros_for_empty_prompt();
  }
  p.unet_ = std::make_shared<UNet2DConditionModel>(p.source_.config("unet"));
  p.vae_ = std::make_shared<AutoencoderKL>(p.source_.config("vae"));
  p.check_sdxl_components();
  p.vae_tiling_ = vae_tiling_of(options, *p.vae_);
  p.unet_first_channels_ = p.source_.config("unet").get_int_list("block_out_channels").at(0);
  // StableDiffusionXLPipeline decodes in fp32 when the VAE is fp16 and its config says force_upcast.
  const bool vae_forced_fp32 = (options.vae_precision == "fp32" && p.dtype_ != torch::kFloat) ||
                               (p.is_sdxl() && p.dtype_ == torch::kHalf && p.vae_->force_upcast());

  p.load_component(*p.text_encoder_, "text_encoder", p.dtype_, p.text_encoder_->ignored_checkpoint_keys());
  if (p.text_encoder_2_)
    p.load_component(*p.text_encoder_2_, "text_encoder_2", p.dtype_, p.text_encoder_2_->ignored_checkpoint_keys());
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
  if (p.text_encoder_2_)
    for (LoraTarget& t : taiyi::lora_targets("text_encoder_2", *p.text_encoder_2_)) p.lora_targets_.push_back(std::move(t));
  for (LoraTarget& t : taiyi::lora_targets("unet", p.unet_->module())) p.lora_targets_.push_back(std::move(t));
  p.place_text_encoders(false);
  if (options.offload && !p.device_.is_cuda()) p.say("--offload applies to CUDA devices; ignored on the CPU");
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
  fs::path root = fs::absolute(folder().root()).lexically_normal();
  if (source_.single_file()) return root.stem().string();  // the web UI's "Model: <checkpoint stem>"
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
    throw Error(source_.config("unet").path().string() +
                ": an inpainting UNet (in_channels 9) needs an init image and a mask (-i IMAGE --mask MASK)");
  if (unet_->in_channels() != vae_->latent_channels() && !inpainting_unet())
    throw Error(source_.config("unet").path().string() + ": in_channels " +
                std::to_string(unet_->in_channels()) + ": expected " + std::to_string(vae_->latent_channels()) +
                " or, for inpainting, " + std::to_string(2 * vae_->latent_channels() + 1));
  if (r.clip_skip < 1 || r.clip_skip > text_encoder_->num_layers() + 1)
    throw Error("clip skip " + std::to_string(r.clip_skip) + ": must be between 1 (the last layer) and " +
                std::to_string(text_encoder_->num_layers() + 1) + " (this text encoder has " +
                std::to_string(text_encoder_->num_layers()) + " layers)");
  if (r.clip_skip > 1 && !text_encoder_->supports_clip_skip())
    throw Error("clip skip " + std::to_string(r.clip_skip) + ": needs a CLIP text encoder; " + folder().root().string() +
                " has " + folder().class_name("text_encoder"));
  context_chunks(r);  // a prompt's syntax error or excess length is an Error naming it
  check_memory(r);
  validate_hires(r);
}

// Live copies of the widest activations, measured with the real SD 1.x configs on the CPU (peak RSS
// over sizes, scripts/memory_estimate.sh), rounded up.
constexpr double kDecoderLiveCopies = 6;
constexpr double kUnetLiveCopies = 16;

uint64_t Pipeline::working_memory(const GenerationRequest& r) const {
  const double pixels = static_cast<double>(r.width) * static_cast<double>(r.height);
  const double latent_pixels = pixels / static_cast<double>(vae_->scale_factor() * vae_->scale_factor());
  // The decode (tiled where it would be), or an img2img encode (one image at a time) where that is larger.
  const int64_t f = vae_->scale_factor();
  const bool tiled = vae_->decode_tiles(r.height / f, r.width / f, vae_tiling_for(r.width, r.height, r.count, false));
  double vae_bytes = static_cast<double>(vae_memory(r.width, r.height, r.count, false, tiled)) / static_cast<double>(r.count);
  if (!r.init_image.empty()) {
    const bool encode_tiled = vae_->encode_tiles(r.height, r.width, vae_tiling_for(r.width, r.height, 1, true));
    vae_bytes = std::max(vae_bytes, static_cast<double>(vae_memory(r.width, r.height, 1, true, encode_tiled)));
  }
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
  const char* tiling = vae_tiling_.mode == VaeTilingMode::kOff ? ", --vae-tiling auto" : "";
  throw Error(std::string(message) + " (a smaller size, fewer images at once" + tiling + ", or --precision fp16 on a GPU)");
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
                              const std::vector<std::string>& ignored_keys) {
  if (random_weights_) {
    const std::map<std::string, uint64_t> seeds = {{"text_encoder", 1}, {"unet", 2}, {"vae", 3}, {"text_encoder_2", 4}};
    fill_random(module, dtype, device_, seeds.at(component));
  } else {
    LoadOptions options(dtype, device_, ignored_keys);
    std::vector<torch::Tensor> in_place;
    options.in_place = &in_place;
    load_weights(module, source_.state_dict(component), options);
    mapped_weights_[component] = std::move(in_place);
  }
}

void Pipeline::release_mapped_weights(const std::string& component) {
  if (!lora_updates_.empty()) return;
  auto it = mapped_weights_.find(component);
  if (it == mapped_weights_.end()) return;
  for (const torch::Tensor& weight : it->second) release_pages(weight);
}

torch::Tensor Pipeline::encode_ids(const std::vector<int64_t>& chunk_ids, int64_t skip) {
  auto ids = torch::tensor(chunk_ids, torch::kLong).unsqueeze(0).to(device_);
  if (text_encoder_fp32_) return text_encoder_fp32_->forward(ids, skip).to(dtype_);
  torch::Tensor hidden = text_encoder_->forward(ids, skip);
  // fp16 safety: an overflow inside the encoder shows as Inf/NaN in its output (one sync per chunk,
  // outside the denoising loop). The encoder then runs in fp32 from here on.
  if (dtype_ != torch::kFloat && !torch::isfinite(hidden).all().item<bool>()) {
    say("the " + precision_name(dtype_) + " text encoder overflowed (NaN/Inf); encoding in fp32 from now on");
    auto copy = make_text_encoder(folder());
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
  if (is_sdxl()) return encode_prompt_xl(prompt, clip_skip).context;
  const TokenizedPrompt tokenized = tokenize_prompt(*tokenizer_, prompt);
  std::vector<torch::Tensor> chunks;
  for (const PromptChunk& chunk : tokenized.chunks) chunks.push_back(apply_emphasis(encode_ids(chunk.ids, clip_skip - 1), chunk.weights));
  return chunks.size() == 1 ? chunks.front() : torch::cat(chunks, 1);
}

torch::Tensor Pipeline::apply_emphasis(torch::Tensor z, const std::vector<double>& chunk_weights) const {
  if (std::all_of(chunk_weights.begin(), chunk_weights.end(), [](double w) { return w == 1.0; })) return z;
  const torch::Dtype dtype = z.scalar_type();
  std::vector<float> weights(chunk_weights.begin(), chunk_weights.end());
  torch::Tensor multipliers = torch::tensor(weights).to(device_).reshape({1, -1, 1});
  torch::Tensor z32 = z.to(torch::kFloat);
  torch::Tensor original_mean = z32.mean();
  z32 = z32 * multipliers;
  torch::Tensor new_mean = z32.mean();
  return (z32 * (original_mean / new_mean)).to(dtype);
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

torch::Tensor Pipeline::denoise(Scheduler& scheduler, torch::Tensor latents, const Conditioning& conditioning,
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
  // The text context is the same at every step: its attention keys and values are computed once.
  nn::CrossAttentionCache cross_attention;
  for (int64_t i = first_index; i < total; ++i) {
    torch::Tensor model_input = guidance ? torch::cat({latents, latents}) : latents;
    model_input = scheduler.scale_model_input(model_input, i);
    if (!extra_inputs.empty()) {
      std::vector<torch::Tensor> parts = {model_input};
      parts.insert(parts.end(), extra_inputs.begin(), extra_inputs.end());
      model_input = torch::cat(parts, 1);
    }
    if (options_.channels_last && device_.is_cuda()) model_input = model_input.contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor noise = unet_->forward(model_input, timestep_tensors[static_cast<size_t>(i - first_index)],
                                         conditioning.context, &cross_attention, conditioning.added);
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
    if (const LatentsObserver* observe = latents_observer()) (*observe)(latents, i - first_index + 1, total - first_index);
  }
  return latents;
}

torch::Tensor Pipeline::decode(const torch::Tensor& latents) {
  const int64_t f = vae_->scale_factor();
  const VaeTiling tiling = vae_tiling_for(latents.size(3) * f, latents.size(2) * f, latents.size(0), false);
  if (vae_fp32_) {
    torch::Tensor images = vae_fp32_->decode(latents.to(torch::kFloat) / vae_fp32_->scaling_factor(), tiling);
    return (images * 0.5 + 0.5).clamp(0, 1);
  }
  torch::Tensor images = vae_->decode(latents / vae_->scaling_factor(), tiling);
  // fp16 safety (the web UI's "revert VAE to 32-bit"): a decode with NaN or Inf is done again in
  // fp32, and the VAE stays fp32 from then on. One sync per decode, after the loop.
  if (dtype_ != torch::kFloat && !torch::isfinite(images).all().item<bool>()) {
    say("the " + precision_name(dtype_) + " VAE decode gave NaN/Inf; decoding in fp32 from now on (--vae-precision fp32 forces it)");
    vae_fp32_ = std::make_shared<AutoencoderKL>(source_.config("vae"));
    load_component(vae_fp32_->module(), "vae", torch::kFloat);
    return decode(latents);
  }
  return (images * 0.5 + 0.5).clamp(0, 1);
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

// Requests batched together, completed; they must share what one UNet batch shares.
std::vector<GenerationRequest> Pipeline::complete_batch(const std::vector<GenerationRequest>& requests) const {
  std::vector<GenerationRequest> batch;
  for (const GenerationRequest& request : requests) batch.push_back(complete(request));
  const GenerationRequest& first = batch.front();
  for (const GenerationRequest& r : batch) {
    if (r.steps != first.steps || r.cfg_scale != first.cfg_scale || r.width != first.width || r.height != first.height ||
        sampler_setting(r).key() != sampler_setting(first).key() || r.init_image.empty() != first.init_image.empty() ||
        (!r.init_image.empty() && r.strength != first.strength) || r.mask.empty() != first.mask.empty() ||
        r.loras != first.loras || r.hires() != first.hires() ||
        (r.hires() && (r.hires_scale != first.hires_scale || r.hires_width != first.hires_width ||
                       r.hires_height != first.hires_height || r.hires_upscaler != first.hires_upscaler ||
                       r.hires_steps != first.hires_steps || r.hires_strength != first.hires_strength ||
                       r.hires_sampler != first.hires_sampler)))
      throw Error("generate_batch: requests in one batch must share steps, cfg scale, size, sampler, strength, LoRAs and hires fix");
  }
  return batch;
}

// The batch's conditioning: text embeddings [images (x2 with guidance), chunks * max_length, D], the
// unconditional half first as diffusers concatenates them; for SDXL also text_embeds and time_ids
// (StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids; pipeline_stable_diffusion_xl.cpp).
Conditioning Pipeline::encode_batch_prompts(const std::vector<GenerationRequest>& batch, bool guidance) {
  const bool sdxl = is_sdxl();
  // Each (text, layer) is encoded once. The layer: SD v1's clip skip, SDXL's hidden_states index from the end.
  std::map<std::pair<std::string, int64_t>, PromptEmbeddings> encoded;
  auto encode = [&](const std::string& text, int64_t layer) {
    auto key = std::make_pair(text, layer);
    auto it = encoded.find(key);
    if (it == encoded.end())
      it = encoded.emplace(key, sdxl ? encode_text_xl(text, layer) : PromptEmbeddings{encode_prompt(text, layer), {}}).first;
    return it->second;
  };
  // The shorter of prompt and negative prompt is padded with empty chunks (the encoding of "") to
  // the longer's length, as the web UI pads them (pad_cond).
  auto padded = [&](const torch::Tensor& context, int64_t length, int64_t layer) {
    if (context.size(1) == length) return context;
    const torch::Tensor empty = encode("", layer).context;
    return torch::cat({context, empty.repeat({1, (length - context.size(1)) / empty.size(1), 1})}, 1);
  };
  std::vector<torch::Tensor> context, pooled, time_ids, negative_context, negative_pooled;
  for (const GenerationRequest& r : batch) {
    // SDXL, as diffusers: the prompt at hidden_states[-(clip_skip + 1)], a negative prompt at [-2] whatever
    // clip_skip says (encode_prompt passes clip_skip to the prompt only), and no negative prompt with
    // force_zeros_for_empty_prompt is zeros (negative_prompt=None).
    const int64_t layer = sdxl ? r.clip_skip + 1 : r.clip_skip;
    const int64_t negative_layer = sdxl ? 2 : r.clip_skip;
    const bool zero_negative = sdxl && r.negative_prompt.empty() && force_zeros_for_empty_prompt_;
    PromptEmbeddings c = encode(r.prompt, layer);
    PromptEmbeddings u = guidance && !zero_negative ? encode(r.negative_prompt, negative_layer) : PromptEmbeddings{};
    const int64_t length = std::max(c.context.size(1), u.context.defined() ? u.context.size(1) : 0);
    if (!context.empty() && context.front().size(1) != length)
      throw Error("generate_batch: requests in one batch must have prompts of the same chunk count");
    c.context = padded(c.context, length, layer);
    context.push_back(c.context.expand({r.count, length, c.context.size(2)}));
    if (sdxl) {
      pooled.push_back(c.pooled.expand({r.count, c.pooled.size(1)}));
      time_ids.push_back(add_time_ids(r.width, r.height).expand({r.count, 6}));
    }
    if (!guidance) continue;
    if (zero_negative) {
      u = {torch::zeros_like(c.context), torch::zeros_like(c.pooled)};
    } else {
      u.context = padded(u.context, length, negative_layer);
    }
    negative_context.push_back(u.context.expand({r.count, length, u.context.size(2)}));
    if (sdxl) negative_pooled.push_back(u.pooled.expand({r.count, u.pooled.size(1)}));
  }
  auto joined = [&](const std::vector<torch::Tensor>& negative, const std::vector<torch::Tensor>& positive) {
    return guidance ? torch::cat({torch::cat(negative), torch::cat(positive)}) : torch::cat(positive);
  };
  Conditioning out(joined(negative_context, context));
  if (sdxl) {
    out.added.text_embeds = joined(negative_pooled, pooled);
    out.added.time_ids = joined(time_ids, time_ids);
  }
  return out;
}

// The starting latents of text-to-image (unit noise times init_noise_sigma), img2img
// (pipeline_stable_diffusion_img2img.cpp) or inpainting (pipeline_stable_diffusion_inpaint.cpp), after
// set_timesteps (init_noise_sigma depends on the schedule).
Pipeline::PreparedLatents Pipeline::prepare_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                                    std::vector<torch::Generator>& generators, bool guidance) {
  const GenerationRequest& first = batch.front();
  if (!first.mask.empty()) return prepare_inpainting_latents(scheduler, batch, generators, guidance);
  PreparedLatents prepared;
  if (!first.init_image.empty()) {
    prepared.first_index = first_index_for_strength(scheduler, first.steps, first.strength);
    prepared.latents = prepare_img2img_latents(scheduler, batch, generators, prepared.first_index);
    return prepared;
  }
  std::vector<torch::Tensor> initial;
  for (const GenerationRequest& r : batch) initial.push_back(initial_latents(r, &generators));
  prepared.latents = torch::cat(initial) * scheduler.init_noise_sigma();
  return prepared;
}

std::vector<Image> Pipeline::decode_images(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents) {
  torch::Tensor decoded = decode(latents);
  // Counted for the records (taiyi bench's nonfinite_images); to_images copies to the host next anyway.
  times_.nonfinite_images += torch::isfinite(decoded).flatten(1).all(1).logical_not().sum().item<int64_t>();
  std::vector<Image> images;
  int64_t offset = 0;
  for (const GenerationRequest& r : batch) {
    for (Image& image : to_images(decoded.narrow(0, offset, r.count), r.seed)) images.push_back(std::move(image));
    offset += r.count;
  }
  return images;
}

std::vector<Image> Pipeline::generate_batch(const std::vector<GenerationRequest>& requests,
                                            const ProgressCallback& progress) {
  if (requests.empty()) return {};
  const std::vector<GenerationRequest> batch = complete_batch(requests);
  const GenerationRequest& first = batch.front();
  apply_loras(first.loras);
  c10::InferenceMode inference;
  const bool guidance = first.cfg_scale > 1.0;

  auto start = std::chrono::steady_clock::now();
  place_text_encoders(true);
  const Conditioning conditioning = encode_batch_prompts(batch, guidance);
  place_text_encoders(false);  // --offload: the encoders' device memory goes to the UNet
  synchronize(device_);
  times_.encode += seconds_since(start);
  // Peak memory (a bf16 run from a bf16 folder): the text encoders' file pages are not needed in the loop.
  release_mapped_weights("text_encoder");
  release_mapped_weights("text_encoder_2");

  start = std::chrono::steady_clock::now();
  // As StableDiffusionPipeline: set_timesteps first, then the latents.
  Scheduler& scheduler = scheduler_for(sampler_setting(first));
  scheduler.set_timesteps(first.steps);
  std::vector<torch::Generator> generators;
  PreparedLatents prepared = prepare_latents(scheduler, batch, generators, guidance);
  torch::Tensor latents = denoise(scheduler, prepared.latents, conditioning, first, generators, progress,
                                  prepared.first_index, prepared.after_step, prepared.extra_inputs);
  if (first.hires()) latents = hires_pass(batch, latents, conditioning, progress);  // pipeline_hires_fix.cpp
  synchronize(device_);
  times_.denoise += seconds_since(start);
  release_mapped_weights("unet");  // nor the UNet's during the decode, the other peak

  start = std::chrono::steady_clock::now();
  std::vector<Image> images = decode_images(batch, latents);
  times_.decode += seconds_since(start);
  return images;
}

// The VAE's part, fp32 CPU, SD 1.x VAE, peak RSS growth over a 64x64 decode (scripts/vae_tiling_bench.sh):
// untiled 1024x1024 4.01 GB, 2048x2048 16.1 GB (3.7 live copies of the widest activation; estimates 6.4 and
// 25.8 GB); tiled (512-pixel tiles) 1024x1024 1.04 GB, 2048x2048 1.09 GB (estimates 1.66 and 1.81 GB): one
// tile's decode as kDecoderLiveCopies, plus the image being assembled (3 values a pixel: the kept rows, the
// row above, their concatenation, the result). The encoder (diffusers' encode, the same kernels): 2.68 GB at
// 1024x1024, 5.0 copies of its widest (block_out_channels[0] at full size), rounded up.
constexpr double kEncoderLiveCopies = 6;
constexpr double kTiledOutputCopies = 4;

uint64_t Pipeline::vae_memory(int64_t width, int64_t height, int64_t count, bool encode, bool tiled) const {
  const AutoencoderKL& vae = *vae_;
  double run_w = static_cast<double>(width), run_h = static_cast<double>(height), assembled = 0;
  if (tiled) {  // one tile at a time, the largest a full one
    const auto tile = static_cast<double>(vae.tile_sample_size(vae_tiling_));
    run_w = std::min(run_w, tile);
    run_h = std::min(run_h, tile);
    assembled = static_cast<double>(width) * static_cast<double>(height) * 3 * kTiledOutputCopies;
  }
  const double values = encode ? vae.encoder_values_per_pixel() * kEncoderLiveCopies
                               : vae.decoder_values_per_pixel() * kDecoderLiveCopies;
  const double bytes = static_cast<double>(c10::elementSize(vae_dtype())) * static_cast<double>(count) *
                       (run_w * run_h * values + assembled);
  return bytes >= 1.8e19 ? UINT64_MAX : static_cast<uint64_t>(bytes);
}

VaeTiling Pipeline::vae_tiling_for(int64_t width, int64_t height, int64_t count, bool encode) const {
  VaeTiling tiling = vae_tiling_;
  if (tiling.mode != VaeTilingMode::kAuto) return tiling;
  tiling.mode = VaeTilingMode::kOn;
  const int64_t f = vae_->scale_factor();
  const bool would_tile = encode ? vae_->encode_tiles(height, width, tiling) : vae_->decode_tiles(height / f, width / f, tiling);
  tiling.mode = VaeTilingMode::kOff;
  const uint64_t untiled = vae_memory(width, height, count, encode, false);
  const std::optional<uint64_t> available = available_memory(device_);
  if (!would_tile || !available || untiled <= *available) return tiling;
  tiling.mode = VaeTilingMode::kOn;
  if (!vae_tiling_said_) {
    vae_tiling_said_ = true;
    char message[320];
    std::snprintf(message, sizeof message,
                  "VAE tiling: the untiled %s of %lldx%lld needs about %.1f GB, %.1f GB available; tiles of %lld "
                  "pixels from now on where needed (--vae-tiling on|off decides)",
                  encode ? "encode" : "decode", static_cast<long long>(width), static_cast<long long>(height),
                  static_cast<double>(untiled) / 1e9, static_cast<double>(*available) / 1e9,
                  static_cast<long long>(vae_->tile_sample_size(tiling)));
    say(message);
  }
  return tiling;
}

}  // namespace taiyi
