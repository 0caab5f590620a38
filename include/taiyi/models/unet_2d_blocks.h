// The UNet's blocks, ports of diffusers 0.37.1 models/unets/unet_2d_blocks.py as the SD v1 UNet
// builds them (CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D /
// UpBlock2D), as libtorch modules whose parameter names are the state-dict keys (resnets.N,
// attentions.N, downsamplers.0, upsamplers.0). Sizes come from UNetShape, which
// unet_2d_condition.cpp reads from unet/config.json. Inference only; NCHW.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/models/attention.h"
#include "taiyi/models/layers.h"
#include "taiyi/models/resnet.h"

namespace taiyi {

// Everything the module tree needs from unet/config.json, read and checked once.
struct UNetShape {
  int64_t in_channels = 4, out_channels = 4;
  std::vector<int64_t> block_out_channels;
  std::vector<std::string> down_block_types, up_block_types;
  // Per down block (the up blocks use them reversed), as diffusers expands int-or-list keys.
  std::vector<int64_t> layers_per_block, heads, cross_attention_dim, transformer_layers;
  std::vector<bool> only_cross_attention;
  bool use_linear_projection = false;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  double norm_eps = 1e-5;
  double mid_block_scale_factor = 1;
  int64_t groups = 32;
  int64_t downsample_padding = 1;
  int64_t conv_in_kernel = 3, conv_out_kernel = 3;
  int64_t time_embed_dim = 0;
  // addition_embed_type "text_time" (SDXL): 0 when absent.
  int64_t addition_time_embed_dim = 0, projection_class_embeddings_input_dim = 0;
  nn::Activation activation = nn::Activation::SiLU;
};

// CrossAttnDownBlock2D (resnets.i then attentions.i) or DownBlock2D (resnets only), then
// downsamplers.0 unless it is the last block. Returns the output and the skip connections.
class DownBlockImpl : public torch::nn::Module {
 public:
  DownBlockImpl(const UNetShape& s, size_t i, int64_t in_channels, bool add_downsample);
  // Appends each resnet's (or attention's) output and the downsampler's to `skips`.
  torch::Tensor forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips, nn::CrossAttentionCache* cache);

 private:
  std::vector<nn::ResnetBlock2D> resnets;
  std::vector<nn::Transformer2DModel> attentions;
  nn::Downsample2D downsampler{nullptr};
};
TORCH_MODULE(DownBlock);

// UNetMidBlock2DCrossAttn: resnets.0, then (attentions.i, resnets.i+1); one layer. Its
// transformers never use only_cross_attention (get_mid_block does not pass it).
class MidBlockImpl : public torch::nn::Module {
 public:
  explicit MidBlockImpl(const UNetShape& s);
  torch::Tensor forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                        nn::CrossAttentionCache* cache);

 private:
  std::vector<nn::ResnetBlock2D> resnets;
  nn::Transformer2DModel attention{nullptr};
};
TORCH_MODULE(MidBlock);

// CrossAttnUpBlock2D or UpBlock2D: each resnet takes the running tensor concatenated with the
// latest skip connection; upsamplers.0 unless it is the last block. `up` counts from the bottom.
class UpBlockImpl : public torch::nn::Module {
 public:
  UpBlockImpl(const UNetShape& s, size_t up, int64_t in_channels, int64_t prev_output_channels);

  size_t num_resnets() const { return resnets.size(); }

  // Pops one skip connection per resnet from the back of `skips`.
  torch::Tensor forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips, std::optional<std::vector<int64_t>> upsample_size,
                        nn::CrossAttentionCache* cache);

 private:
  std::vector<nn::ResnetBlock2D> resnets;
  std::vector<nn::Transformer2DModel> attentions;
  nn::Upsample2D upsampler{nullptr};
};
TORCH_MODULE(UpBlock);

}  // namespace taiyi
