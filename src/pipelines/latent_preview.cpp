// The web UI's cheap latent-to-RGB preview; see include/taiyi/pipelines/latent_preview.h.
#include "taiyi/pipelines/latent_preview.h"

#include <string>

#include "taiyi/models/autoencoder_tiny.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace {
thread_local LatentsObserver* current_observer = nullptr;
}  // namespace

ScopedLatentsObserver::ScopedLatentsObserver(LatentsObserver observer)
    : previous_(current_observer), observer_(std::move(observer)) {
  current_observer = observer_ ? &observer_ : nullptr;
}

ScopedLatentsObserver::~ScopedLatentsObserver() { current_observer = previous_; }

const LatentsObserver* latents_observer() { return current_observer; }

PixelImage cheap_latent_preview(const torch::Tensor& latents, int64_t index) {
  if (latents.dim() != 4 || latents.size(1) != 4)
    throw Error("latent preview: expected latents [B, 4, h, w], got " + std::to_string(latents.dim()) + " dimensions");
  if (index < 0 || index >= latents.size(0)) throw Error("latent preview: no image " + std::to_string(index));
  // sd_vae_approx.py cheap_approximation's SD 1.x coefficients: rows are latent channels, columns R, G, B.
  static const float kCoefficients[4][3] = {
      {0.298f, 0.207f, 0.208f}, {0.187f, 0.286f, 0.173f}, {-0.158f, 0.189f, 0.264f}, {-0.184f, -0.271f, -0.473f}};
  const torch::Tensor coefs = torch::from_blob(const_cast<float*>(&kCoefficients[0][0]), {4, 3}, torch::kFloat);
  const torch::Tensor sample = latents[index].to(torch::kCPU, torch::kFloat);  // [4, h, w]
  torch::Tensor rgb = torch::einsum("lxy,lr->xyr", {sample, coefs});     // [h, w, 3]
  rgb = ((rgb * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).to(torch::kUInt8).contiguous();
  PixelImage image;
  image.height = rgb.size(0);
  image.width = rgb.size(1);
  image.channels = 3;
  image.pixels.assign(rgb.data_ptr<uint8_t>(), rgb.data_ptr<uint8_t>() + rgb.numel());
  return image;
}

LatentPreviewer::LatentPreviewer(const std::string& taesd, torch::Device device, torch::Dtype dtype) {
  if (!taesd.empty()) taesd_ = std::make_shared<AutoencoderTiny>(load_taesd(taesd, device, dtype));
}

PixelImage LatentPreviewer::render(const torch::Tensor& latents, int64_t index) {
  return taesd_ ? taesd_preview(*taesd_, latents, index) : cheap_latent_preview(latents, index);
}

}  // namespace taiyi
