// diffusers 0.37.1's ResnetBlock2D (models/resnet.py), Downsample2D (downsampling.py) and
// Upsample2D (upsampling.py) as libtorch modules whose parameter names are the state-dict keys
// (norm1, conv1, time_emb_proj, ..., conv), shared by the UNet and the VAE. Inference only; NCHW.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "taiyi/models/layers.h"

namespace taiyi::nn {

// The options of diffusers' ResnetBlock2D that the SD v1 UNet and VAE use
// (time_embedding_norm "default", pre_norm, no up/down inside the block).
struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;  // 0: no time_emb_proj (the VAE)
  int64_t groups = 32;
  double eps = 1e-6;
  Activation activation = Activation::SiLU;
  double output_scale_factor = 1.0;
};

// norm1, conv1, time_emb_proj, norm2, conv2 and conv_shortcut (1x1, when in != out channels):
// out = (shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))) + proj(act(temb)))))) / output_scale_factor.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x [B, in, h, w]; temb [B, temb_channels], or undefined when temb_channels == 0.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

 private:
  ResnetBlock2DOptions options_;
  GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  Linear time_emb_proj{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// Downsample2D(use_conv=True, name="op"): a 3x3 stride-2 conv named "conv". With padding 0 the
// input is first padded by (0, 1, 0, 1) (right and bottom only), as diffusers does (the VAE).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  Conv2d conv{nullptr};
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

// Upsample2D(use_conv=True): nearest-neighbour 2x (or to output_size when given, as the UNet does
// for sizes not divisible by its overall up factor), then a 3x3 conv named "conv".
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& x, std::optional<std::vector<int64_t>> output_size = std::nullopt);

 private:
  Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace taiyi::nn
