// StableDiffusionImg2ImgPipeline's steps (diffusers pipelines/stable_diffusion/
// pipeline_stable_diffusion_img2img.py): the init image preprocessed, encoded and noised to the
// strength's first timestep. Methods of Pipeline (include/taiyi/pipelines/pipeline_stable_diffusion.h).
#include <algorithm>

#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"

namespace taiyi {

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

torch::Tensor Pipeline::encode_image_latents(const torch::Tensor& images, std::vector<torch::Generator>& generators) {
  AutoencoderKL& vae = vae_fp32_ ? *vae_fp32_ : *vae_;
  const VaeTiling tiling = vae_tiling_for(images.size(3), images.size(2), 1, true);  // one image at a time
  std::vector<torch::Tensor> samples;
  for (int64_t i = 0; i < images.size(0); ++i) {
    torch::Tensor image = images.narrow(0, i, 1);
    if (vae_fp32_) image = image.to(torch::kFloat);
    auto [mean, std] = vae.encode_distribution(image, tiling);
    const torch::Tensor draw =
        torch::randn(mean.sizes(), generators.at(static_cast<size_t>(i)), torch::TensorOptions().dtype(mean.scalar_type()));
    samples.push_back(at::add(mean, at::mul(std, draw.to(device_))).to(dtype_));
  }
  return at::mul(torch::cat(samples), vae.scaling_factor());
}

// prepare_latents: each image's latent_dist.sample from its own generator, times scaling_factor, then
// the scheduler's add_noise at the first kept timestep with noise drawn per image from the same generators.
torch::Tensor Pipeline::prepare_img2img_latents(Scheduler& scheduler, const std::vector<GenerationRequest>& batch,
                                                std::vector<torch::Generator>& generators, int64_t first_index) {
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
  return scheduler.add_noise(init_latents, unit_noise(init_latents.sizes(), generators), first_index);
}

}  // namespace taiyi
