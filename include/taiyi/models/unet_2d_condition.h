// UNet2DConditionModel (diffusers) for the SD v1 and SDXL families as a libtorch module whose parameter names
// are diffusers' state-dict keys (down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight,
// ...). Every size comes from unet/config.json; unsupported block types or options are an Error
// naming the key and value. Inference only; NCHW.
#pragma once

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/models/attention.h"

namespace taiyi {

class UNet2DConditionModelImpl;  // defined in unet_2d_condition.cpp

// SDXL's added_cond_kwargs (addition_embed_type "text_time"): text_embeds [B, P], the second text encoder's
// pooled projection, and time_ids [B, 6], the micro-conditioning (original size, crop top-left, target size).
// Both undefined for a UNet without an addition embedding.
struct AddedConditions {
  torch::Tensor text_embeds, time_ids;
  bool defined() const { return text_embeds.defined(); }
};

class UNet2DConditionModel {
 public:
  explicit UNet2DConditionModel(const Config& config);
  // sample [B, in_channels, h, w]; timestep: a 0-d or [B] tensor (int64 or float) on any device;
  // encoder_hidden_states [B, L, cross_attention_dim] -> noise prediction [B, out_channels, h, w].
  // With a cache, the attention layers' keys and values of encoder_hidden_states are computed on the
  // first call and reused by the later ones (one cache per generation; see CrossAttentionCache).
  // `added`: required exactly when the config has addition_embed_type "text_time" (Error otherwise).
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                        const torch::Tensor& encoder_hidden_states, nn::CrossAttentionCache* cache = nullptr,
                        const AddedConditions& added = {});
  torch::nn::Module& module();
  int64_t in_channels() const;
  // addition_embed_type "text_time" (SDXL): the time-ids embedding width per id (addition_time_embed_dim)
  // and the add_embedding's input width; 0 without one.
  int64_t addition_time_embed_dim() const;
  int64_t projection_class_embeddings_input_dim() const;
  int64_t sample_size() const;

 private:
  std::shared_ptr<UNet2DConditionModelImpl> impl_;
};

}  // namespace taiyi
