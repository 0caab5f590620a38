// Live previews of the denoising loop, cheap enough to run every few steps: the web UI's "Approx cheap"
// live preview (modules/sd_vae_approx.py cheap_approximation, shown by sd_samplers_common.py
// single_sample_to_image): each latent pixel's 4 channels projected to RGB by a fixed 4x3 matrix, at the
// latents' resolution (64x64 for a 512x512 image). Never a VAE decode.
//
// Pipeline::denoise hands its latents after every step to the observer installed on the calling
// thread (a server's worker, the CLI's --preview), so that the pipeline's interface and the loop's
// cost without an observer stay as they were.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "taiyi/utils/image.h"

namespace taiyi {

// (latents [B, 4, h, w] after step `step` of `total`); called on the denoising thread, between steps.
using LatentsObserver = std::function<void(const torch::Tensor& latents, int64_t step, int64_t total)>;

// Installs `observer` for the calling thread while it lives (the previous one is restored after).
class ScopedLatentsObserver {
 public:
  explicit ScopedLatentsObserver(LatentsObserver observer);
  ~ScopedLatentsObserver();
  ScopedLatentsObserver(const ScopedLatentsObserver&) = delete;
  ScopedLatentsObserver& operator=(const ScopedLatentsObserver&) = delete;

 private:
  LatentsObserver* previous_;
  LatentsObserver observer_;
};

// The calling thread's observer, or nullptr.
const LatentsObserver* latents_observer();

// Image `index` of the latents as the web UI's cheap approximation shows it: RGB = latents^T . coefs,
// then x * 0.5 + 0.5 clamped to [0, 1], * 255 truncated to uint8. Error for latents that are not 4-channel.
PixelImage cheap_latent_preview(const torch::Tensor& latents, int64_t index = 0);

class AutoencoderTiny;

// The preview a front end shows: TAESD's decode (include/taiyi/models/autoencoder_tiny.h, at full size)
// when its weights are given (--taesd FILE|DIR), else the cheap approximation. Not thread-safe: one
// denoising thread uses it.
class LatentPreviewer {
 public:
  LatentPreviewer() = default;
  // Loads TAESD onto the pipeline's device in its dtype; "" : the cheap approximation. Error from load_taesd.
  LatentPreviewer(const std::string& taesd, torch::Device device, torch::Dtype dtype);
  PixelImage render(const torch::Tensor& latents, int64_t index = 0);
  bool uses_taesd() const { return taesd_ != nullptr; }

 private:
  std::shared_ptr<AutoencoderTiny> taesd_;
};

}  // namespace taiyi
