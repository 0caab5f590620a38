// TAESD: diffusers' AutoencoderTiny (models/autoencoders/autoencoder_tiny.py), its decoder only, as a
// libtorch module whose parameter names are diffusers' state-dict keys (decoder.layers.N.*), for the live
// previews of the denoising loop. Sizes from config.json (or from the weights, for a single file).
// Inference only; NCHW.
//
//   taiyi::AutoencoderTiny taesd = taiyi::load_taesd("taesd_decoder.safetensors", torch::kCUDA, torch::kHalf);
//   taiyi::PixelImage preview = taiyi::taesd_preview(taesd, latents);  // the loop's latents, image 0
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/image.h"

namespace taiyi {

class AutoencoderTinyImpl;  // defined in autoencoder_tiny.cpp

class AutoencoderTiny {
 public:
  // Reads latent_channels, out_channels, decoder_block_out_channels, num_decoder_blocks,
  // upsampling_scaling_factor, act_fn, upsample_fn ("nearest" only), scaling_factor, shift_factor, with
  // AutoencoderTiny's defaults for absent keys. Error naming the file and key for anything else, and for
  // unequal decoder_block_out_channels (DecoderTiny's stage convolutions keep a stage's width, so the
  // next stage could not run).
  explicit AutoencoderTiny(const Config& config);
  // AutoencoderTiny.decode(latents).sample: latents [B, latent_channels, h, w] -> images
  // [B, out_channels, h*s, w*s] (s = scale_factor()) in [-1, 1], not clamped. Latents as the denoising
  // loop holds them divided by scaling_factor(), as the pipeline does; not cast (the caller matches the
  // module's device and dtype).
  torch::Tensor decode(const torch::Tensor& latents);
  torch::nn::Module& module();
  int64_t latent_channels() const;
  int64_t out_channels() const;
  int64_t scale_factor() const;   // upsampling_scaling_factor^(len(num_decoder_blocks) - 1): pixels per latent
  double scaling_factor() const;  // config scaling_factor, 1.0 when absent (TAESD decodes scaled latents)
  double shift_factor() const;    // config shift_factor, 0.0 when absent

 private:
  std::shared_ptr<AutoencoderTinyImpl> impl_;
};

// Loads TAESD's decoder from
//  (a) a diffusers folder: config.json (_class_name AutoencoderTiny) and its weights
//      (diffusion_pytorch_model.safetensors or .bin), e.g. madebyollin/taesd;
//  (b) one weights file in diffusers' names (decoder.layers.N.*; encoder.* is ignored);
//  (c) madebyollin/taesd's own taesd_decoder.safetensors / .pth (keys 1.weight, 3.conv.0.weight, ...:
//      taesd.py's Decoder is an nn.Sequential whose index 0 is Clamp(), so its N is diffusers' N-1).
// A single file has no config: AutoencoderTiny's defaults, with the sizes (latent_channels, out_channels,
// decoder_block_out_channels, num_decoder_blocks) read from the weights' shapes and layer indices, which
// for the released TAESD files are exactly the defaults. .pth / .bin are read by taiyi's restricted
// unpickler (torch.save zips only). Error naming the file (and key) for a file of neither layout, a missing,
// unexpected or mis-shaped key, or a folder without config.json.
AutoencoderTiny load_taesd(const std::filesystem::path& path, torch::Device device = torch::kCPU,
                           torch::Dtype dtype = torch::kFloat);

// Image `index` of the denoising loop's latents [B, latent_channels, h, w] as diffusers shows a TAESD
// decode: that image alone, moved to the module's device and dtype, decode(latents / scaling_factor)
// (pipeline_stable_diffusion.py's decode, which never reads shift_factor), then
// VaeImageProcessor.postprocess(..., "pil"): (x * 0.5 + 0.5).clamp(0, 1) in the decode's dtype, to float32
// on the CPU, (x * 255).round() (half to even, numpy's and torch's) to uint8, HWC. Runs under
// InferenceMode. Error for latents of another rank or channel count, or no image `index`.
PixelImage taesd_preview(AutoencoderTiny& taesd, const torch::Tensor& latents, int64_t index = 0);

}  // namespace taiyi
