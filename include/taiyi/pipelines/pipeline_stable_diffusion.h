// The text-to-image pipeline, usable from C++ without the CLI: a port of diffusers'
// StableDiffusionPipeline (inference, classifier-free guidance, every sampler of include/taiyi/schedulers/scheduler.h),
// and for an SDXL-family folder of StableDiffusionXLPipeline (two text encoders, pooled text embeddings and
// micro-conditioning: src/pipelines/pipeline_stable_diffusion_xl.cpp).
//
//   taiyi::PipelineOptions opt;                       // device, precision, scheduler
//   auto pipe = taiyi::Pipeline::load("models/taiyi", opt);
//   taiyi::GenerationRequest req;
//   req.prompt = "小桥流水人家，Van Gogh style";
//   req.seed = 42;
//   std::vector<taiyi::Image> images = pipe.generate(req);
//
// Seeds: image i of a request uses seed + i and its own CPU generator, i.e. diffusers with
// generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]; so one image's result
// never depends on the batch it was made in (AUTOMATIC1111 numbers batch seeds the same way).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/loaders/single_file.h"
#include "taiyi/utils/device.h"
#include "taiyi/loaders/textual_inversion.h"
#include "taiyi/loaders/lora_weights.h"
#include "taiyi/schedulers/scheduler.h"
#include "taiyi/models/text_encoder.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/models/autoencoder_kl.h"

namespace taiyi {

struct PipelineOptions {
  std::string device = "auto";     // auto | cpu | cuda | cuda:N
  std::string precision = "auto";  // auto (fp16 on CUDA, fp32 on CPU) | fp16 | fp32 | bf16
  // auto: the model's precision, and when an fp16/bf16 decode gives NaN or Inf that batch is decoded
  // again in fp32 and the VAE stays fp32 from then on (the web UI's "revert VAE to 32-bit"); fp32: always.
  std::string vae_precision = "auto";
  // The sampler: "" (the folder's scheduler, as diffusers), or a --sampler name (web UI's "DPM++ 2M",
  // "Euler a", ..., stable-diffusion.cpp's "dpm++2m", ...; see resolve_sampler). `scheduler` is the
  // older --scheduler pndm|ddim, used when `sampler` is empty.
  std::string sampler = "";
  std::string scheduler = "";
  // --schedule: "" (the sampler's: default, or Karras for a "... Karras" name) | default | karras |
  // exponential | beta.
  std::string schedule = "";
  double eta = 0.0;                // DDIM eta
  Tf32Mode tf32 = Tf32Mode::kDefault;  // fp32 rounding on CUDA; the default is PyTorch's (and diffusers')
  bool cudnn_benchmark = false;    // cuDNN autotuning (CUDA)
  bool channels_last = false;      // UNet/VAE in channels_last memory format (CUDA)
  // LoRA: a prompt's <lora:NAME:...> tag names NAME.safetensors in this folder (or below it), as the
  // web UI's models/Lora. Empty: tags are an Error.
  std::string lora_dir;
  // Textual inversion: files loaded at once (--embedding), and a folder whose *.safetensors files load
  // when their stem appears in a prompt (the web UI's embeddings folder).
  std::vector<std::string> embedding_files;
  std::string embeddings_dir;
  // Where the weights come from (include/taiyi/loaders/single_file.h): --variant, --config-dir,
  // --extract-ema, --prediction-type, --vae.
  ModelSourceOptions source;
  // VAE tiling (diffusers' enable_tiling; include/taiyi/models/autoencoder_kl.h): "auto" tiles a decode or
  // encode only when the untiled one would not fit the device's free memory (said once through notice),
  // "on" whenever a side exceeds the tile, "off" never. vae_tile_size: the tile's side in pixels, 0 = the
  // VAE config's sample_size; else a multiple of 4x the VAE's scale factor (32 for SD), so that tiles meet.
  std::string vae_tiling = "auto";
  int64_t vae_tile_size = 0;
  // --offload (CUDA): the text encoders go to host memory after each batch's encoding and come back for the
  // next one (diffusers' enable_model_cpu_offload idea, for the encoders only), so that SDXL in fp16 fits an
  // 8 GB card: the UNet and the VAE stay on the device. Ignored on the CPU.
  bool offload = false;
  // Receives one-off notices (an fp32 fallback); the CLI prints them.
  std::function<void(const std::string&)> notice;
};

struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  int64_t steps = 50;
  double cfg_scale = 7.5;
  uint64_t seed = 0;
  int64_t width = 0;   // 0: unet sample_size x VAE scale factor
  int64_t height = 0;
  int64_t count = 1;   // images, seeds seed .. seed+count-1, made in one batch
  std::string sampler;   // "" : PipelineOptions' sampler; else a --sampler name (a prompt-file line's)
  std::string schedule;  // "" : PipelineOptions' schedule; else as --schedule
  // img2img (StableDiffusionImg2ImgPipeline): the init image file ("" : text-to-image) and how much of
  // the schedule reworks it (0 < strength <= 1). Size 0 then means the image's, rounded down to a
  // multiple of 8; a given size resizes the image to it (PIL's Lanczos, as VaeImageProcessor).
  std::string init_image;
  double strength = 0.75;
  // Inpainting (StableDiffusionInpaintPipeline): the mask file, white = repaint ("" : none; needs
  // init_image). Read as grayscale, resized like the image, binarised at 0.5. 4-channel UNets blend the
  // kept region back after every step; 9-channel (inpainting) UNets get mask and masked image latents.
  std::string mask;
  // Clip skip in the web UI's numbering: 1 the last layer, N the hidden state N-1 layers before it through
  // the final layer norm (diffusers' clip_skip = N-1), for prompt, negative prompt and padding alike.
  int64_t clip_skip = 1;
  // LoRAs merged for this request (--lora). complete() takes the prompts' <lora:...> tags out of the
  // text and appends them here, resolved in PipelineOptions::lora_dir.
  std::vector<LoraSelection> loras;
  // Hires fix (the web UI's txt2img "Hires. fix", modules/processing.py StableDiffusionProcessingTxt2Img;
  // src/pipelines/pipeline_hires_fix.cpp): text-to-image at width x height, the latents upscaled, then an
  // img2img pass at the larger size. On when hires_scale > 0 or a hires size is given.
  double hires_scale = 0;                   // hr_scale: the second pass at int(width * scale) x int(height * scale)
  int64_t hires_width = 0, hires_height = 0;  // hr_resize_x/y: a size instead (aspect kept, the excess cropped)
  std::string hires_upscaler = "Latent";    // a latent mode of the web UI, or "Lanczos" (decode, resize, encode)
  int64_t hires_steps = 0;                  // hr_second_pass_steps (0: steps)
  double hires_strength = 0.7;              // the second pass's denoising strength (the web UI's slider default)
  std::string hires_sampler;                // hr_sampler_name ("" : the first pass's)
  bool hires() const { return hires_scale > 0 || hires_width > 0 || hires_height > 0; }
};

// Where the hires fix's second pass goes (calculate_target_resolution): the upscaled size and the latent
// rows and columns cropped after the upscale, as the web UI computes them.
struct HiresTarget {
  int64_t upscale_width = 0, upscale_height = 0;  // hr_upscale_to_x/y
  int64_t truncate_x = 0, truncate_y = 0;         // latent columns / rows cropped (half before, half after)
  int64_t width = 0, height = 0;                  // the final image
  int64_t schedule_steps = 0;                     // the second pass's schedule: int(steps / min(strength, 0.999))
  int64_t steps = 0;                              // the steps run, at its tail
};

// The sampler a request runs with, resolved.
struct SamplerSetting {
  std::string kind;            // make_scheduler's kind ("" : the folder's class)
  SigmaSchedule schedule = SigmaSchedule::Default;
  std::string web_ui_name;     // "DPM++ 2M"
  std::string schedule_type;   // the web UI's "Schedule type" ("" where it has none: PLMS, DDIM, DDPM, LCM)
  nlohmann::json overrides = nlohmann::json::object();  // config keys set as from_config(..., key=value)
  std::string key() const;     // identifies the scheduler instance
};

// What the UNet is conditioned on besides the latents, for a whole batch (unconditional half first with
// guidance): the text context [N, L, D], and for SDXL the added conditions (pooled text_embeds, time_ids).
struct Conditioning {
  Conditioning() = default;
  Conditioning(torch::Tensor text_context) : context(std::move(text_context)) {}  // NOLINT: SD v1: the context alone
  torch::Tensor context;
  AddedConditions added;
};

// SDXL: one text's encoding, the two encoders' hidden states concatenated [1, L, D1 + D2], and the second
// encoder's pooled projection [1, P] (of the first chunk, as the web UI takes it).
struct PromptEmbeddings {
  torch::Tensor context, pooled;
};

// Called after each step with (latents, step position): may return replaced latents (inpainting's
// blending); an undefined tensor keeps them.
using StepHook = std::function<torch::Tensor(const torch::Tensor&, int64_t)>;

struct Image {
  int64_t width = 0, height = 0;
  uint64_t seed = 0;
  std::vector<uint8_t> rgb;  // height * width * 3
};

struct StageTimes {  // seconds, accumulated over generate() calls
  double load = 0, encode = 0, denoise = 0, decode = 0;
  double lora = 0;        // merging and un-merging LoRAs
  int64_t lora_merges = 0;
  int64_t unet_calls = 0;
  int64_t nonfinite_images = 0;  // images whose decoded pixels held NaN or Inf (black or garbage in the PNG)
};

// Called after each denoising step: (step index from 1, total steps).
using ProgressCallback = std::function<void(int64_t, int64_t)>;

// Limits a request is checked against before anything is allocated (Pipeline::validate).
constexpr int64_t kMaxImageSize = 16384;        // pixels a side (the web UI's sliders stop at 2048)
constexpr int64_t kMaxImagesPerRequest = 4096;  // images of one request generated at once

class Pipeline {
 public:
  static Pipeline load(const std::filesystem::path& folder, const PipelineOptions& options);
  // The same modules built from the folder's configs, with small random weights instead of the
  // weight files (benchmarks: no weights needed; the images are noise). Fixed seed.
  static Pipeline load_random(const std::filesystem::path& folder, const PipelineOptions& options);

  // Checks a request against the model (sizes, steps, scale, counts, the memory it needs, the prompt's
  // syntax and length) before anything is allocated; Error with a message for the user.
  void validate(const GenerationRequest& request) const;
  // About how many bytes generating `request` (all its images in one batch) allocates beyond the
  // weights: the VAE decoder's widest activations and the UNet's, times their live copies (measured:
  // scripts/memory_estimate.sh). Error from check_memory when over available_memory(device()).
  uint64_t working_memory(const GenerationRequest& request) const;
  void check_memory(const GenerationRequest& request) const;
  std::vector<Image> generate(const GenerationRequest& request, const ProgressCallback& progress = {});
  // Several requests in one UNet batch (the CLI's --batch-size over a prompt file): they must share
  // steps, cfg_scale, width, height, sampler, strength and context_chunks, and be all text-to-image or
  // all img2img (Error otherwise). Images come back in request order.
  std::vector<Image> generate_batch(const std::vector<GenerationRequest>& requests,
                                    const ProgressCallback& progress = {});
  bool inpainting_unet() const;  // unet in_channels == 9

  // LoRA (include/taiyi/loaders/lora_weights.h; defined in src/loaders/lora_pipeline.cpp): merges a set into the weights, W += multiplier * alpha / rank *
  // up @ down in fp32 per weight, cast to the model dtype; several stack in order. The set merged before
  // is taken out first by restoring the touched weights' originals, bit for bit: re-read from the
  // model's weight files (nothing kept in memory), or for random weights from copies kept of them.
  // Nothing happens when the set is the one merged. generate_batch calls it with its requests' set.
  // Every file is read and checked before anything changes; an Error leaves no LoRA merged.
  void apply_loras(const std::vector<LoraSelection>& loras);
  const std::vector<LoraSelection>& active_loras() const { return active_loras_; }
  int64_t lora_kept_bytes() const;  // memory held to restore the originals (0 for weight files)
  // The targets LoRA files are placed on: every Linear / Conv2d weight of the text encoder and UNet.
  const std::vector<LoraTarget>& lora_targets() const { return lora_targets_; }
  // The file a <lora:NAME> tag means (PipelineOptions::lora_dir), Error when there is none.
  std::filesystem::path find_lora(const std::string& name) const;
  // Textual inversion (include/taiyi/loaders/textual_inversion.h, defined there too): the embedding's tokens added to the tokenizer and
  // its vectors as their rows of the token table, as diffusers' load_textual_inversion. Error when its
  // width is not the table's or a token clashes. Loading one twice is a no-op.
  void add_embedding(const TextualInversion& embedding) const;
  std::vector<std::string> embedding_names() const;  // those loaded

  // Building blocks, exposed for tests and benchmarks.
  // The prompt as the web UI encodes it (include/taiyi/pipelines/prompt_parser.h): emphasis, chunks of
  // max_length - 2 tokens, BREAK; [1, chunks * max_length, D]. Without syntax and within one chunk,
  // diffusers' encode_prompt exactly.
  // SDXL: the context part of encode_prompt_xl.
  torch::Tensor encode_prompt(const std::string& prompt, int64_t clip_skip = 1);
  // SDXL (StableDiffusionXLPipeline.encode_prompt for one prompt, with the web UI's syntax as above): each
  // encoder's hidden_states[-(clip_skip + 1)] (no final layer norm; clip_skip in the web UI's numbering, so 1
  // is diffusers' default hidden_states[-2]), concatenated, and text_embeds. Error for an SD v1 model.
  PromptEmbeddings encode_prompt_xl(const std::string& prompt, int64_t clip_skip = 1);
  // SDXL's time_ids for an image of width x height (_get_add_time_ids: original size = target size =
  // (height, width), crop (0, 0)), [1, 6] in the model dtype on the device.
  torch::Tensor add_time_ids(int64_t width, int64_t height) const;
  int64_t prompt_chunks(const std::string& prompt) const;  // chunks of a prompt (tokenizes only)
  // A request's context length in chunks: its prompt's, or with guidance the longer of prompt and
  // negative prompt (the shorter is padded). Requests batched together must agree on it.
  int64_t context_chunks(const GenerationRequest& request) const;
  // [count, C, h, w] of unit noise; `generators` receives each image's CPU generator, advanced past
  // the draw (the samplers' noise continues from it, as in diffusers). Scale by the scheduler's
  // init_noise_sigma for text-to-image.
  torch::Tensor initial_latents(const GenerationRequest& request, std::vector<torch::Generator>* generators = nullptr) const;
  // The request with width/height defaults filled in, validated.
  GenerationRequest complete(const GenerationRequest& request) const;
  // The sampler a request uses, and its scheduler (made once per sampler setting, reused).
  SamplerSetting sampler_setting(const GenerationRequest& request) const;
  Scheduler& scheduler_for(const SamplerSetting& setting);
  // The denoising loop of StableDiffusionPipeline.__call__ on timesteps()[first_index:] of a scheduler
  // whose set_timesteps ran (img2img and inpainting start later; `after_step` blends latents).
  // `extra_inputs` (an inpainting UNet's mask and masked-image latents, already doubled for CFG) are
  // concatenated to the UNet input after scale_model_input.
  torch::Tensor denoise(Scheduler& scheduler, torch::Tensor latents, const Conditioning& conditioning,
                        const GenerationRequest& request, std::vector<torch::Generator>& generators,
                        const ProgressCallback& progress = {}, int64_t first_index = 0, const StepHook& after_step = {},
                        const std::vector<torch::Tensor>& extra_inputs = {});
  torch::Tensor decode(const torch::Tensor& latents);                          // [B, 3, H, W] in [0, 1]
  // VaeImageProcessor.preprocess of an init image file at width x height: [1, 3, H, W] in [-1, 1],
  // model dtype, on the device.
  torch::Tensor preprocess_image(const std::string& path, int64_t width, int64_t height) const;
  // The mask processor's preprocess: grayscale, resized, / 255, binarised at 0.5: [1, 1, H, W] float32 on the CPU.
  static torch::Tensor preprocess_mask(const std::string& path, int64_t width, int64_t height);
  // img2img's start: get_timesteps' first position for `strength` (after set_timesteps), Error when
  // nothing would be denoised.
  static int64_t first_index_for_strength(const Scheduler& scheduler, int64_t steps, double strength);
  static std::vector<Image> to_images(const torch::Tensor& images01, uint64_t first_seed);
  // The hires fix's second pass (src/pipelines/pipeline_hires_fix.cpp): its size and steps for a completed
  // request, and the pass itself on the first pass's latents (UNet space), returning the final latents.
  HiresTarget hires_target(const GenerationRequest& request) const;
  torch::Tensor hires_pass(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents,
                           const Conditioning& conditioning, const ProgressCallback& progress);

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  UNet2DConditionModel& unet() { return *unet_; }
  TextEncoderImpl& text_encoder() { return *text_encoder_; }
  // SDXL: the second tokenizer and text encoder (CLIPTextModelWithProjection); is_sdxl() says whether there are.
  bool is_sdxl() const { return text_encoder_2_ != nullptr; }
  const Tokenizer& tokenizer_2() const { return *tokenizer_2_; }
  TextEncoderImpl& text_encoder_2() { return *text_encoder_2_; }
  // The scheduler of the pipeline's default sampler (PipelineOptions).
  Scheduler& scheduler() { return scheduler_for(sampler_setting(GenerationRequest{})); }
  const ModelFolder& folder() const { return source_.folder(); }
  const ModelSource& source() const { return source_; }
  torch::Device device() const { return device_; }
  torch::Dtype dtype() const { return dtype_; }
  // The VAE's dtype now: the model's, or fp32 when forced or after a fallback.
  torch::Dtype vae_dtype() const { return vae_fp32_ ? torch::kFloat : dtype_; }
  const Numerics& numerics() const { return numerics_; }
  int64_t default_width() const;
  int64_t default_height() const;
  std::string model_name() const;   // the folder's name or the file's stem, for PNG metadata (the web UI's "Model")
  std::string sampler_name() const; // the default sampler as the web UI prints it ("PLMS", "DPM++ 2M")
  const StageTimes& times() const { return times_; }

 private:
  Pipeline() = default;
  static Pipeline load(const std::filesystem::path& folder, const PipelineOptions& options, bool random_weights);
  void say(const std::string& notice) const;
  // SDXL: the UNet's addition embedding matches text_encoder_2's projection (diffusers' _get_add_time_ids
  // check), and an SDXL UNet is not loaded without the second encoder; Error naming the configs otherwise.
  void check_sdxl_components() const;
  torch::Tensor encode_ids(const std::vector<int64_t>& chunk_ids, int64_t skip);  // [1, L, D], with the fp32 fallback
  void load_component(torch::nn::Module& module, const std::string& component, torch::Dtype dtype,
                      const std::vector<std::string>& ignored_keys = {});
  // Gives back the resident pages of a component's weights used in place from the files (CPU, the
  // file's dtype) once it is idle for this batch: they are clean file pages, faulted in again from the
  // page cache at the next use. Not while a LoRA is merged (its writes live in those pages).
  void release_mapped_weights(const std::string& component);
  struct Inpainting {
    torch::Tensor latents, noise, image_latents, mask, masked_image_latents;  // mask undefined: not inpainting
  };
  Inpainting prepare_inpainting(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                std::vector<torch::Generator>& generators, int64_t* first_index);
  // generate_batch's steps: the batch completed and checked, its prompts encoded, its starting latents
  // (with what the loop needs for img2img and inpainting), its images decoded.
  struct PreparedLatents {
    torch::Tensor latents;
    int64_t first_index = 0;                  // where in the schedule the loop starts
    StepHook after_step;                      // a 4-channel UNet's inpainting blend
    std::vector<torch::Tensor> extra_inputs;  // a 9-channel UNet's mask and masked-image latents
  };
  std::vector<GenerationRequest> complete_batch(const std::vector<GenerationRequest>& requests) const;
  // The batch's context (and SDXL's text_embeds and time_ids: an empty negative prompt is zeros when
  // model_index.json's force_zeros_for_empty_prompt says so, diffusers' negative_prompt=None).
  Conditioning encode_batch_prompts(const std::vector<GenerationRequest>& batch, bool guidance);
  // SDXL: one text through both encoders at hidden_states[-index_from_end], chunk by chunk, with the web UI's
  // emphasis per encoder.
  PromptEmbeddings encode_text_xl(const std::string& text, int64_t index_from_end);
  // The conditioning for another image size (the hires fix's second pass): SDXL's time_ids remade.
  Conditioning resized_conditioning(const Conditioning& conditioning, int64_t width, int64_t height) const;
  // The web UI's emphasis on one chunk's hidden states (sd_hijack_clip.py): multiplied token by token and
  // rescaled to the unweighted mean, in fp32; unchanged when every weight is 1.
  torch::Tensor apply_emphasis(torch::Tensor z, const std::vector<double>& weights) const;
  PreparedLatents prepare_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                  std::vector<torch::Generator>& generators, bool guidance);
  torch::Tensor prepare_img2img_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                        std::vector<torch::Generator>& generators, int64_t first_index);
  PreparedLatents prepare_inpainting_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                             std::vector<torch::Generator>& generators, bool guidance);
  std::vector<Image> decode_images(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents);
  void validate_hires(const GenerationRequest& request) const;
  torch::Tensor hires_upscale(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents,
                              const HiresTarget& target, std::vector<torch::Generator>& generators);
  // The tiling a VAE decode (or, encode = true, an encode of one image) of `count` images of width x
  // height uses: PipelineOptions' vae_tiling with auto resolved by the untiled run's memory (said once).
  VaeTiling vae_tiling_for(int64_t width, int64_t height, int64_t count, bool encode) const;
  uint64_t vae_memory(int64_t width, int64_t height, int64_t count, bool encode, bool tiled) const;  // bytes
  // randn of `shape`, image i from generators[i] (randn_tensor with a list of CPU generators), on the device.
  torch::Tensor unit_noise(at::IntArrayRef shape, const std::vector<torch::Generator>& generators) const;
  // _encode_vae_image: latent_dist.sample of [N, 3, H, W] images, image i from generators[i], scaled.
  torch::Tensor encode_image_latents(const torch::Tensor& images, std::vector<torch::Generator>& generators);
  // --offload: the text encoders to the device (before encoding) or to host memory (after).
  void place_text_encoders(bool on_device);
  // Loads the embeddings folder's files whose stems appear in `text`.
  void activate_embeddings(const std::string& text) const;
  // A LoRA update of one weight: its patch and scale multiplier * alpha / rank.
  struct LoraUpdate {
    std::shared_ptr<LoraFile> file;
    LoraPatch patch;
    double scale = 0;
  };
  void merge_lora_weight(torch::nn::Module& module, const std::string& param, const std::vector<LoraUpdate>& updates,
                         const std::string& original_key);
  void restore_lora_weights();
  std::vector<std::pair<torch::nn::Module*, std::string>> lora_copies(const std::string& component);  // (module, key suffix)
  torch::Tensor in_model_layout(torch::Tensor weight) const;  // channels_last where the model keeps it
  void replace_weight(torch::Tensor& weight, const torch::Tensor& values) const;
  ModelSource source_;
  PipelineOptions options_;
  torch::Device device_ = torch::kCPU;
  torch::Dtype dtype_ = torch::kFloat;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::shared_ptr<TextEncoderImpl> text_encoder_;
  std::shared_ptr<Tokenizer> tokenizer_2_;            // SDXL
  std::shared_ptr<TextEncoderImpl> text_encoder_2_;   // SDXL
  bool force_zeros_for_empty_prompt_ = false;         // SDXL (model_index.json)
  std::shared_ptr<UNet2DConditionModel> unet_;
  std::shared_ptr<AutoencoderKL> vae_;
  std::shared_ptr<AutoencoderKL> vae_fp32_;                 // set when the VAE runs in fp32
  std::shared_ptr<TextEncoderImpl> text_encoder_fp32_;      // set after a text-encoder overflow
  bool random_weights_ = false;
  int64_t unet_first_channels_ = 0;  // unet block_out_channels[0], for working_memory
  Numerics numerics_;
  Config scheduler_file_config_;  // scheduler/scheduler_config.json
  std::map<std::string, std::shared_ptr<Scheduler>> schedulers_;  // by SamplerSetting::key()
  std::vector<LoraTarget> lora_targets_;
  std::vector<LoraSelection> active_loras_;
  std::vector<std::pair<std::string, std::vector<LoraUpdate>>> lora_updates_;  // "component|param" -> updates, merged now
  std::map<std::string, torch::Tensor> lora_originals_;  // random weights only: "component|param|copy" -> original
  mutable std::vector<TextualInversion> embeddings_;      // loaded, in order (their rows follow the table's)
  mutable std::map<std::string, std::filesystem::path> embedding_folder_;  // stem -> file, not loaded yet
  StageTimes times_;
  VaeTiling vae_tiling_;                  // from PipelineOptions: mode and tile size
  mutable bool vae_tiling_said_ = false;  // the auto notice is given once
  std::map<std::string, std::vector<torch::Tensor>> mapped_weights_;  // component -> weights that are file pages
};

}  // namespace taiyi
