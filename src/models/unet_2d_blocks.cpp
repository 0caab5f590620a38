// The UNet's down, mid and up blocks; see include/taiyi/models/unet_2d_blocks.h. Each mirrors its
// diffusers 0.37.1 unet_2d_blocks.py class: the same modules in the same order, so the state-dict
// keys and the float32 results agree.
#include "taiyi/models/unet_2d_blocks.h"

#include <utility>

namespace taiyi {

namespace {

nn::ResnetBlock2DOptions resnet_options(const UNetShape& s, int64_t in, int64_t out, double output_scale = 1) {
  nn::ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.temb_channels = s.time_embed_dim;
  o.groups = s.groups;
  o.eps = s.norm_eps;
  o.activation = s.activation;
  o.output_scale_factor = output_scale;
  return o;
}

nn::TransformerOptions transformer_options(const UNetShape& s, size_t block, int64_t channels, bool only_cross) {
  return {channels,  s.heads[block], s.cross_attention_dim[block], s.transformer_layers[block],
          s.groups,  s.use_linear_projection, only_cross};
}

}  // namespace

DownBlockImpl::DownBlockImpl(const UNetShape& s, size_t i, int64_t in_channels, bool add_downsample) {
  const int64_t out_channels = s.block_out_channels[i];
  const bool cross = s.down_block_types[i] == "CrossAttnDownBlock2D";
  auto resnet_list = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attention_list;
  if (cross) attention_list = register_module("attentions", torch::nn::ModuleList());
  for (int64_t j = 0; j < s.layers_per_block[i]; ++j) {
    resnets.push_back(nn::ResnetBlock2D(resnet_options(s, j == 0 ? in_channels : out_channels, out_channels)));
    resnet_list->push_back(resnets.back());
    if (cross) {
      attentions.push_back(
          nn::Transformer2DModel(transformer_options(s, i, out_channels, s.only_cross_attention[i])));
      attention_list->push_back(attentions.back());
    }
  }
  if (add_downsample) {
    downsampler = nn::Downsample2D(out_channels, out_channels, s.downsample_padding);
    register_module("downsamplers", torch::nn::ModuleList(downsampler));
  }
}

torch::Tensor DownBlockImpl::forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                                     std::vector<torch::Tensor>& skips, nn::CrossAttentionCache* cache) {
  for (size_t j = 0; j < resnets.size(); ++j) {
    h = resnets[j](h, temb);
    if (!attentions.empty()) h = attentions[j](h, context, cache);
    skips.push_back(h);
  }
  if (downsampler) {
    h = downsampler(h);
    skips.push_back(h);
  }
  return h;
}

MidBlockImpl::MidBlockImpl(const UNetShape& s) {
  const size_t last = s.block_out_channels.size() - 1;
  const int64_t channels = s.block_out_channels[last];
  auto resnet_list = register_module("resnets", torch::nn::ModuleList());
  auto attention_list = register_module("attentions", torch::nn::ModuleList());
  for (int i = 0; i < 2; ++i) {
    resnets.push_back(nn::ResnetBlock2D(resnet_options(s, channels, channels, s.mid_block_scale_factor)));
    resnet_list->push_back(resnets.back());
  }
  attention = nn::Transformer2DModel(transformer_options(s, last, channels, /*only_cross=*/false));
  attention_list->push_back(attention);
}

torch::Tensor MidBlockImpl::forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                                    nn::CrossAttentionCache* cache) {
  h = resnets[0](h, temb);
  h = attention(h, context, cache);
  return resnets[1](h, temb);
}

UpBlockImpl::UpBlockImpl(const UNetShape& s, size_t up, int64_t in_channels, int64_t prev_output_channels) {
  const size_t n = s.block_out_channels.size();
  const size_t block = n - 1 - up;  // the down block at the same resolution (reversed lists)
  const int64_t out_channels = s.block_out_channels[block];
  const bool cross = s.up_block_types[up] == "CrossAttnUpBlock2D";
  const int64_t num_layers = s.layers_per_block[block] + 1;
  auto resnet_list = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attention_list;
  if (cross) attention_list = register_module("attentions", torch::nn::ModuleList());
  for (int64_t j = 0; j < num_layers; ++j) {
    const int64_t skip_channels = j == num_layers - 1 ? in_channels : out_channels;
    const int64_t resnet_in = j == 0 ? prev_output_channels : out_channels;
    resnets.push_back(nn::ResnetBlock2D(resnet_options(s, resnet_in + skip_channels, out_channels)));
    resnet_list->push_back(resnets.back());
    if (cross) {
      attentions.push_back(
          nn::Transformer2DModel(transformer_options(s, block, out_channels, s.only_cross_attention[block])));
      attention_list->push_back(attentions.back());
    }
  }
  if (up + 1 < n) {
    upsampler = nn::Upsample2D(out_channels, out_channels);
    register_module("upsamplers", torch::nn::ModuleList(upsampler));
  }
}

torch::Tensor UpBlockImpl::forward(torch::Tensor h, const torch::Tensor& temb, const torch::Tensor& context,
                                   std::vector<torch::Tensor>& skips,
                                   std::optional<std::vector<int64_t>> upsample_size, nn::CrossAttentionCache* cache) {
  for (size_t j = 0; j < resnets.size(); ++j) {
    h = torch::cat({h, skips.back()}, 1);
    skips.pop_back();
    h = resnets[j](h, temb);
    if (!attentions.empty()) h = attentions[j](h, context, cache);
  }
  if (upsampler) h = upsampler(h, std::move(upsample_size));
  return h;
}

}  // namespace taiyi
