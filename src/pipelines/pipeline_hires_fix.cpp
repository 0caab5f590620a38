// The web UI's hires fix (modules/processing.py StableDiffusionProcessingTxt2Img: calculate_target_resolution,
// sample_hr_pass; sd_samplers_common.py setup_img2img_steps), made of diffusers' pieces so that it has an
// exact reference: the first pass's latents (StableDiffusionPipeline, output_type="latent"), upscaled by
// torch.nn.functional.interpolate in a latent mode (or decoded, resized with PIL's Lanczos and encoded),
// cropped as the web UI crops them, then StableDiffusionImg2ImgPipeline on those latents: exactly `steps`
// steps at the tail of an int(steps / strength) schedule, with fresh noise from each image's seed (the web
// UI makes a new ImageRNG from the seeds for the second pass). Methods of Pipeline.
#include <algorithm>
#include <cmath>

#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"

namespace taiyi {

namespace {

// shared.latent_upscale_modes: the interpolation of each latent mode.
struct LatentMode {
  const char* name;
  const char* interpolation;
  bool antialias;
};
constexpr LatentMode kLatentModes[] = {
    {"Latent", "bilinear", false},
    {"Latent (antialiased)", "bilinear", true},
    {"Latent (bicubic)", "bicubic", false},
    {"Latent (bicubic antialiased)", "bicubic", true},
    {"Latent (nearest)", "nearest", false},
    {"Latent (nearest-exact)", "nearest-exact", false},
};

const LatentMode* latent_mode(const std::string& name) {
  for (const LatentMode& m : kLatentModes)
    if (name == m.name) return &m;
  return nullptr;
}

// F.interpolate(samples, size=(h, w), mode=..., antialias=...) with align_corners left to its default
// (False): the ATen kernels Python's interpolate calls for a given size.
torch::Tensor interpolate(const torch::Tensor& x, const LatentMode& m, int64_t h, int64_t w) {
  const std::vector<int64_t> size{h, w};
  const std::string mode = m.interpolation;
  if (mode == "bilinear") return m.antialias ? at::_upsample_bilinear2d_aa(x, size, false) : at::upsample_bilinear2d(x, size, false);
  if (mode == "bicubic") return m.antialias ? at::_upsample_bicubic2d_aa(x, size, false) : at::upsample_bicubic2d(x, size, false);
  if (mode == "nearest") return at::upsample_nearest2d(x, size);
  return at::_upsample_nearest_exact2d(x, size);
}

std::string upscaler_names() {
  std::string names;
  for (const LatentMode& m : kLatentModes) names += std::string(names.empty() ? "" : ", ") + "\"" + m.name + "\"";
  return names + ", \"Lanczos\"";
}

}  // namespace

HiresTarget Pipeline::hires_target(const GenerationRequest& r) const {
  // calculate_target_resolution (opt_f: the VAE's scale factor).
  const int64_t f = vae_->scale_factor();
  HiresTarget t;
  if (r.hires_width == 0 && r.hires_height == 0) {
    t.upscale_width = static_cast<int64_t>(static_cast<double>(r.width) * r.hires_scale);
    t.upscale_height = static_cast<int64_t>(static_cast<double>(r.height) * r.hires_scale);
  } else if (r.hires_height == 0) {
    t.upscale_width = r.hires_width;
    t.upscale_height = r.hires_width * r.height / r.width;
  } else if (r.hires_width == 0) {
    t.upscale_width = r.hires_height * r.width / r.height;
    t.upscale_height = r.hires_height;
  } else {
    const double src_ratio = static_cast<double>(r.width) / static_cast<double>(r.height);
    const double dst_ratio = static_cast<double>(r.hires_width) / static_cast<double>(r.hires_height);
    if (src_ratio < dst_ratio) {
      t.upscale_width = r.hires_width;
      t.upscale_height = r.hires_width * r.height / r.width;
    } else {
      t.upscale_width = r.hires_height * r.width / r.height;
      t.upscale_height = r.hires_height;
    }
    t.truncate_x = (t.upscale_width - r.hires_width) / f;
    t.truncate_y = (t.upscale_height - r.hires_height) / f;
  }
  t.width = (t.upscale_width / f - t.truncate_x) * f;
  t.height = (t.upscale_height / f - t.truncate_y) * f;
  // setup_img2img_steps with the steps given: int(steps / min(denoise, 0.999)) in all, `steps` of them run.
  t.steps = r.hires_steps > 0 ? r.hires_steps : r.steps;
  t.schedule_steps = static_cast<int64_t>(static_cast<double>(t.steps) / std::min(r.hires_strength, 0.999));
  return t;
}

void Pipeline::validate_hires(const GenerationRequest& r) const {
  if (!r.hires()) return;
  if (!r.init_image.empty()) throw Error("hires fix: for text-to-image only, not with an init image");
  if (r.hires_width == 0 && r.hires_height == 0 && !(r.hires_scale > 1 && r.hires_scale <= 16))
    throw Error("hires scale " + std::to_string(r.hires_scale) + ": must be more than 1 and at most 16");
  if (r.hires_width < 0 || r.hires_height < 0) throw Error("hires size: must be positive");
  if (!(r.hires_strength > 0 && r.hires_strength <= 1))
    throw Error("hires strength " + std::to_string(r.hires_strength) + ": must be greater than 0 and at most 1");
  if (r.hires_steps < 0 || r.hires_steps > 1000) throw Error("hires steps " + std::to_string(r.hires_steps) + ": must be between 0 and 1000");
  if (!latent_mode(r.hires_upscaler) && r.hires_upscaler != "Lanczos")
    throw Error("hires upscaler \"" + r.hires_upscaler + "\": not one taiyi has (" + upscaler_names() + ")");
  if (!r.hires_sampler.empty()) {
    GenerationRequest second = r;
    second.sampler = r.hires_sampler;
    sampler_setting(second);  // an unknown name is an Error naming it
  }
  const HiresTarget t = hires_target(r);
  for (auto [name, value] : {std::pair<const char*, int64_t>{"width", t.width}, {"height", t.height}}) {
    if (value < vae_->scale_factor())
      throw Error(std::string("hires ") + name + " " + std::to_string(value) + ": the second pass would have no pixels");
    if (value > kMaxImageSize || t.upscale_width > kMaxImageSize || t.upscale_height > kMaxImageSize)
      throw Error(std::string("hires ") + name + " " + std::to_string(std::max(value, std::max(t.upscale_width, t.upscale_height))) +
                  ": at most " + std::to_string(kMaxImageSize) + " pixels");
  }
  if (t.steps > 1000 || t.schedule_steps > 10000)
    throw Error("hires steps: " + std::to_string(t.schedule_steps) + " in the second pass's schedule, at most 10000");
  GenerationRequest larger = r;  // the second pass's memory, at the upscaled size
  larger.width = std::max(t.upscale_width, t.width);
  larger.height = std::max(t.upscale_height, t.height);
  larger.hires_scale = 0, larger.hires_width = larger.hires_height = 0;
  check_memory(larger);
}

// The first pass's latents at the second pass's size: interpolated in a latent mode, or (Lanczos) decoded,
// resized with PIL's Lanczos to the latents' size times the scale factor, and encoded as img2img encodes
// an image (latent_dist.sample from each image's generator); then cropped as sample_hr_pass crops.
torch::Tensor Pipeline::hires_upscale(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents,
                                      const HiresTarget& t, std::vector<torch::Generator>& generators) {
  const GenerationRequest& first = batch.front();
  const int64_t f = vae_->scale_factor();
  const int64_t h = t.upscale_height / f, w = t.upscale_width / f;
  torch::Tensor upscaled;
  if (const LatentMode* mode = latent_mode(first.hires_upscaler)) {
    upscaled = interpolate(latents, *mode, h, w);
  } else {
    std::vector<torch::Tensor> pixels;
    for (const Image& image : to_images(decode(latents), 0)) {
      PixelImage resized = resize_lanczos(PixelImage{image.width, image.height, 3, image.rgb}, w * f, h * f);
      // As preprocess_image: NHWC bytes / 255 as an NCHW view (channels_last, as diffusers' numpy_to_pt), 2x - 1.
      torch::Tensor x = torch::from_blob(resized.pixels.data(), {1, resized.height, resized.width, 3}, torch::kUInt8)
                            .to(torch::kFloat).div(255.0).permute({0, 3, 1, 2});
      pixels.push_back(at::sub(at::mul(x, 2.0), 1.0).to(device_, dtype_));
    }
    upscaled = encode_image_latents(torch::cat(pixels), generators);
  }
  // samples[:, :, truncate_y//2 : H - (truncate_y+1)//2, truncate_x//2 : W - (truncate_x+1)//2]
  return upscaled.narrow(2, t.truncate_y / 2, upscaled.size(2) - t.truncate_y / 2 - (t.truncate_y + 1) / 2)
      .narrow(3, t.truncate_x / 2, upscaled.size(3) - t.truncate_x / 2 - (t.truncate_x + 1) / 2);
}

torch::Tensor Pipeline::hires_pass(const std::vector<GenerationRequest>& batch, const torch::Tensor& latents,
                                   const Conditioning& conditioning, const ProgressCallback& progress) {
  const GenerationRequest& first = batch.front();
  const HiresTarget t = hires_target(first);
  GenerationRequest second = first;
  if (!first.hires_sampler.empty()) second.sampler = first.hires_sampler;
  second.width = t.width;
  second.height = t.height;
  Scheduler& scheduler = scheduler_for(sampler_setting(second));
  scheduler.set_timesteps(t.schedule_steps);
  // get_timesteps with init_timestep = steps: the last `steps` of the schedule.
  const int64_t first_index = (t.schedule_steps - t.steps) * scheduler.order();
  if (first_index < 0 || first_index >= static_cast<int64_t>(scheduler.timesteps().size()))
    throw Error("hires fix: " + std::to_string(t.steps) + " steps of a " + std::to_string(t.schedule_steps) +
                "-step schedule leave no denoising step");
  std::vector<torch::Generator> generators;  // fresh, from each image's seed (the web UI's new ImageRNG)
  for (const GenerationRequest& r : batch)
    for (int64_t i = 0; i < r.count; ++i) generators.push_back(at::make_generator<at::CPUGeneratorImpl>(r.seed + static_cast<uint64_t>(i)));
  const torch::Tensor upscaled = hires_upscale(batch, latents, t, generators);
  const torch::Tensor noised = scheduler.add_noise(upscaled, unit_noise(upscaled.sizes(), generators), first_index);
  // SDXL's time_ids follow the second pass's size, as the web UI conditions its hires pass on hr_upscale_to_x/y.
  return denoise(scheduler, noised, resized_conditioning(conditioning, second.width, second.height), second, generators,
                 progress, first_index);
}

}  // namespace taiyi
