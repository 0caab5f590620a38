// AutoencoderKL (diffusers) as a libtorch module whose parameter names are diffusers' state-dict
// keys (encoder.*, quant_conv.*, post_quant_conv.*, decoder.*). Sizes from vae/config.json.
// Inference only; NCHW.
#pragma once

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"

namespace taiyi {

class AutoencoderKLImpl;  // defined in autoencoder_kl.cpp

// VAE tiling as diffusers' AutoencoderKL.enable_tiling() and its tile attributes: tiles of
// tile_sample_size pixels (tile_latent_size latents) overlapping by `overlap` of a tile, decoded or
// encoded one by one and blended (tiled_decode, _tiled_encode).
enum class VaeTilingMode { kOff, kOn, kAuto };  // auto: the caller (Pipeline) decides on or off by memory
VaeTilingMode parse_vae_tiling_mode(const std::string& name);  // "off" | "on" | "auto"; Error otherwise
struct VaeTiling {
  VaeTilingMode mode = VaeTilingMode::kOff;
  int64_t tile_sample_size = 0;  // tile_sample_min_size; 0: the config's sample_size
  int64_t tile_latent_size = 0;  // tile_latent_min_size; 0: int(tile_sample_size / 2^(len(block_out_channels)-1))
  double overlap = 0.25;         // tile_overlap_factor
};

class AutoencoderKL {
 public:
  explicit AutoencoderKL(const Config& config);
  // latents [B, latent_channels, h, w] (already divided by scaling_factor) -> images [B, 3, 8h, 8w]
  // in [-1, 1] (not clamped): post_quant_conv then the decoder.
  // With tiling on, diffusers' _decode: tiled_decode when a side of the latents exceeds the tile's.
  torch::Tensor decode(const torch::Tensor& latents, const VaeTiling& tiling = {});
  // images [B, 3, H, W] in [-1, 1] -> mean of the latent distribution [B, latent_channels, H/8, W/8]
  // (encoder, quant_conv, first half of the moments; not scaled).
  torch::Tensor encode_mean(const torch::Tensor& images, const VaeTiling& tiling = {});
  // The latent distribution's (mean, std): DiagonalGaussianDistribution's logvar clamped to [-30, 20],
  // std = exp(0.5 * logvar). latent_dist.sample(generator) is mean + std * randn(mean.shape).
  // With tiling on, _encode: _tiled_encode's moments when a side of the images exceeds the tile's.
  std::pair<torch::Tensor, torch::Tensor> encode_distribution(const torch::Tensor& images, const VaeTiling& tiling = {});
  // tiled_decode (images) and _tiled_encode (the moments [B, 2 * latent_channels, h, w]) whatever the size.
  torch::Tensor tiled_decode(const torch::Tensor& latents, const VaeTiling& tiling);
  torch::Tensor tiled_encode(const torch::Tensor& images, const VaeTiling& tiling);
  // Whether decode / encode of latents / images with this height and width tile (mode on, a side over the tile).
  bool decode_tiles(int64_t latent_height, int64_t latent_width, const VaeTiling& tiling) const;
  bool encode_tiles(int64_t height, int64_t width, const VaeTiling& tiling) const;
  // The tile sizes in effect: the tiling's, or the config's where it gives 0.
  int64_t tile_sample_size(const VaeTiling& tiling) const;
  int64_t tile_latent_size(const VaeTiling& tiling) const;
  torch::nn::Module& module();
  double scaling_factor() const;  // config scaling_factor, 0.18215 when absent
  // config force_upcast (default true): the SDXL pipelines decode and encode in fp32 when the VAE is fp16.
  bool force_upcast() const;
  int64_t scale_factor() const;   // 2^(len(block_out_channels)-1): pixels per latent
  int64_t latent_channels() const;
  // The decoder's widest activation in values per output pixel (for the memory estimate of
  // Pipeline::validate): its levels run the reversed block_out_channels, each at 4x the pixels of the
  // one before, and each upsampler's output has its level's channels at the next level's size. SD 1.x
  // ([128, 256, 512, 512]): 256 (the last upsampler's output, at full size).
  double decoder_values_per_pixel() const;
  // The encoder's widest activation in values per input pixel: block_out_channels[i] at 1/4^i of the
  // pixels, each downsampler's padded input at its level's size. SD 1.x: 128.
  double encoder_values_per_pixel() const;

 private:
  std::shared_ptr<AutoencoderKLImpl> impl_;
};

}  // namespace taiyi
