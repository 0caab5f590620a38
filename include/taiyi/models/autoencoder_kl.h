// AutoencoderKL (diffusers) as a libtorch module whose parameter names are diffusers' state-dict
// keys (encoder.*, quant_conv.*, post_quant_conv.*, decoder.*). Sizes from vae/config.json.
// Inference only; NCHW.
#pragma once

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"

namespace taiyi {

class AutoencoderKLImpl;  // defined in autoencoder_kl.cpp

class AutoencoderKL {
 public:
  explicit AutoencoderKL(const Config& config);
  // latents [B, latent_channels, h, w] (already divided by scaling_factor) -> images [B, 3, 8h, 8w]
  // in [-1, 1] (not clamped): post_quant_conv then the decoder.
  torch::Tensor decode(const torch::Tensor& latents);
  // images [B, 3, H, W] in [-1, 1] -> mean of the latent distribution [B, latent_channels, H/8, W/8]
  // (encoder, quant_conv, first half of the moments; not scaled).
  torch::Tensor encode_mean(const torch::Tensor& images);
  // The latent distribution's (mean, std): DiagonalGaussianDistribution's logvar clamped to [-30, 20],
  // std = exp(0.5 * logvar). latent_dist.sample(generator) is mean + std * randn(mean.shape).
  std::pair<torch::Tensor, torch::Tensor> encode_distribution(const torch::Tensor& images);
  torch::nn::Module& module();
  double scaling_factor() const;  // config scaling_factor, 0.18215 when absent
  int64_t scale_factor() const;   // 2^(len(block_out_channels)-1): pixels per latent
  int64_t latent_channels() const;
  // The decoder's widest activation in values per output pixel (for the memory estimate of
  // Pipeline::validate): its levels run the reversed block_out_channels, each at 4x the pixels of the
  // one before, and each upsampler's output has its level's channels at the next level's size. SD 1.x
  // ([128, 256, 512, 512]): 256 (the last upsampler's output, at full size).
  double decoder_values_per_pixel() const;

 private:
  std::shared_ptr<AutoencoderKLImpl> impl_;
};

}  // namespace taiyi
