// UNet2DConditionModel (diffusers) for the SD v1 family as a libtorch module whose parameter names
// are diffusers' state-dict keys (down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight,
// ...). Every size comes from unet/config.json; unsupported block types or options are an Error
// naming the key and value. Inference only; NCHW.
#pragma once

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/models/attention.h"

namespace taiyi {

class UNet2DConditionModelImpl;  // defined in unet_2d_condition.cpp

class UNet2DConditionModel {
 public:
  explicit UNet2DConditionModel(const Config& config);
  // sample [B, in_channels, h, w]; timestep: a 0-d or [B] tensor (int64 or float) on any device;
  // encoder_hidden_states [B, L, cross_attention_dim] -> noise prediction [B, out_channels, h, w].
  // With a cache, the attention layers' keys and values of encoder_hidden_states are computed on the
  // first call and reused by the later ones (one cache per generation; see CrossAttentionCache).
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                        const torch::Tensor& encoder_hidden_states, nn::CrossAttentionCache* cache = nullptr);
  torch::nn::Module& module();
  int64_t in_channels() const;
  int64_t sample_size() const;

 private:
  std::shared_ptr<UNet2DConditionModelImpl> impl_;
};

}  // namespace taiyi
