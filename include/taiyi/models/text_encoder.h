// Text encoders as libtorch modules whose parameter names are transformers' state-dict keys:
// CLIPTextModel (text_model.encoder.layers.N.self_attn.q_proj.weight, ...) and BertModel
// (embeddings.word_embeddings.weight, encoder.layer.N.attention.self.query.weight, ...).
// Sizes come from text_encoder/config.json. Inference only; forward returns last_hidden_state.
#pragma once

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/models/layers.h"

namespace taiyi {

// The interface the pipeline sees: token ids [B, L] (int64) -> last_hidden_state [B, L, hidden].
struct TextEncoderImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& input_ids) { return forward(input_ids, 0); }
  // Clip skip (diffusers' clip_skip = skip, the web UI's "Clip skip" = skip + 1): CLIP's hidden state
  // `skip` layers before the last, through the final layer norm. 0: last_hidden_state. Error for BERT
  // (it has no final layer norm; diffusers fails there too) and for skip >= num_layers() + 1.
  virtual torch::Tensor forward(const torch::Tensor& input_ids, int64_t skip) = 0;
  virtual int64_t num_layers() const = 0;
  virtual bool supports_clip_skip() const = 0;
  // Keys present in transformers' checkpoints that this module does not hold (e.g. position_ids
  // buffers, BERT's pooler): load_weights ignores them.
  virtual std::vector<std::string> ignored_checkpoint_keys() const = 0;
  // The token table (textual inversion appends rows; ids are checked against its size).
  virtual nn::EmbeddingImpl& token_embedding() = 0;
};

// Pre-LayerNorm transformer, causal mask, quick_gelu (or gelu per hidden_act), final LayerNorm.
std::shared_ptr<TextEncoderImpl> make_clip_text_model(const Config& config);
// Post-LayerNorm transformer, erf GELU, no attention mask, token types all zero (no pooler).
std::shared_ptr<TextEncoderImpl> make_bert_model(const Config& config);
// The text encoder named in model_index.json, built from its config (weights not loaded).
std::shared_ptr<TextEncoderImpl> make_text_encoder(const ModelFolder& folder);

}  // namespace taiyi
