// transformers' CLIPTextModel and CLIPTextModelWithProjection (models/clip/modeling_clip.py) behind the TextEncoderImpl interface,
// with transformers' state-dict keys (text_model.encoder.layers.N.self_attn.q_proj.weight, ...).
// Sizes come from text_encoder/config.json. Inference only.
#pragma once

#include <memory>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/models/text_encoder.h"

namespace taiyi {

// Pre-LayerNorm transformer, causal mask, quick_gelu (or gelu per hidden_act), final LayerNorm.
std::shared_ptr<TextEncoderImpl> make_clip_text_model(const Config& config);
// CLIPTextModelWithProjection (SDXL's text_encoder_2): the same text_model plus text_projection
// ([projection_dim, hidden], no bias), whose output is hidden_state()'s pooled text_embeds.
std::shared_ptr<TextEncoderImpl> make_clip_text_model_with_projection(const Config& config);

}  // namespace taiyi
