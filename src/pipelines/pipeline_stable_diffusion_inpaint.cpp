// StableDiffusionInpaintPipeline's steps (diffusers pipelines/stable_diffusion/
// pipeline_stable_diffusion_inpaint.py): the mask, the masked image's latents, and per UNet kind what the
// loop gets: a 9-channel UNet the mask and masked-image latents as extra inputs, a 4-channel one the kept
// region blended back after every step. Methods of Pipeline (include/taiyi/pipelines/pipeline_stable_diffusion.h).
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/image.h"

namespace taiyi {

bool Pipeline::inpainting_unet() const { return unet_->in_channels() == 2 * vae_->latent_channels() + 1; }

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

Pipeline::PreparedLatents Pipeline::prepare_inpainting_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                                               std::vector<torch::Generator>& generators, bool guidance) {
  PreparedLatents prepared;
  const Inpainting inpaint = prepare_inpainting(scheduler, batch, generators, &prepared.first_index);
  prepared.latents = inpaint.latents;
  if (inpainting_unet()) {
    prepared.extra_inputs = guidance ? std::vector<torch::Tensor>{torch::cat({inpaint.mask, inpaint.mask}),
                                                                  torch::cat({inpaint.masked_image_latents, inpaint.masked_image_latents})}
                                     : std::vector<torch::Tensor>{inpaint.mask, inpaint.masked_image_latents};
    return prepared;
  }
  // After each step the kept region goes back to the image's latents, noised to the next timestep.
  const auto total = static_cast<int64_t>(scheduler.timesteps().size());
  prepared.after_step = [&scheduler, inpaint, total](const torch::Tensor& x, int64_t index) {
    torch::Tensor proper = inpaint.image_latents;
    if (index < total - 1) proper = scheduler.add_noise(inpaint.image_latents, inpaint.noise, index + 1);
    return at::add(at::mul(at::rsub(inpaint.mask, 1), proper), at::mul(inpaint.mask, x));
  };
  return prepared;
}

}  // namespace taiyi
