// The text encoders' shared interface: TextEncoderImpl (token ids -> last_hidden_state, what the
// pipeline sees), make_text_encoder (the class model_index.json names, built from
// text_encoder/config.json), and what the two ports share (taiyi::text_encoders: the options
// CLIPTextConfig and BertConfig hold under the same keys, the transformers activations they use,
// the attention core, the input checks). The ports: modeling_clip.h (transformers' CLIPTextModel)
// and modeling_bert.h (BertModel), whose parameter names are transformers' state-dict keys.
// Inference only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  // SDXL's use (StableDiffusionXLPipeline.encode_prompt with output_hidden_states): transformers'
  // hidden_states[-index_from_end], where 1 is the last layer's output (before final_layer_norm) and
  // num_layers() + 1 the embeddings; and for CLIPTextModelWithProjection its text_embeds (the pooled token of
  // last_hidden_state through text_projection), undefined for the other encoders. Error for BERT and for an
  // index out of range.
  struct HiddenAndPooled {
    torch::Tensor hidden, pooled;
  };
  virtual HiddenAndPooled hidden_state(const torch::Tensor& input_ids, int64_t index_from_end);
  virtual int64_t num_layers() const = 0;
  virtual bool supports_clip_skip() const = 0;
  // Keys present in transformers' checkpoints that this module does not hold (e.g. position_ids
  // buffers, BERT's pooler): load_weights ignores them.
  virtual std::vector<std::string> ignored_checkpoint_keys() const = 0;
  // The token table (textual inversion appends rows; ids are checked against its size).
  virtual nn::EmbeddingImpl& token_embedding() = 0;
};

// The text encoder named in model_index.json, built from its config (weights not loaded).
std::shared_ptr<TextEncoderImpl> make_text_encoder(const ModelFolder& folder);
// SDXL's second text encoder, text_encoder_2: CLIPTextModelWithProjection (Error naming model_index.json for
// another class), built from `config`.
std::shared_ptr<TextEncoderImpl> make_text_encoder_2(const ModelFolder& folder, const Config& config);

// What modeling_clip.cpp and modeling_bert.cpp share.
namespace text_encoders {

// transformers' ACT2FN entries that the Taiyi encoders use.
enum class Activation { QuickGelu, Gelu };
// Reads hidden_act (fallback when absent); another name is config.unsupported("hidden_act", ...).
Activation activation_from_config(const Config& config, const std::string& fallback);
torch::Tensor activate(Activation activation, const torch::Tensor& x);

// Multi-head attention core: q, k, v [B, L, hidden] -> [B, L, hidden], scale 1/sqrt(head_dim)
// (SDPA's default, as both CLIP and BERT use), with an additive mask broadcast to [B, heads, L, L]
// (CLIP's causal_attention_mask) or none (BERT: undefined).
torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, const torch::Tensor& mask);

// transformers' _create_4d_causal_attention_mask as CLIPTextTransformer makes it: [B, 1, L, L] in
// `dtype`, finfo(dtype).min above the diagonal and 0 elsewhere. CLIP's attention takes it with
// is_causal=False (sdpa_attention_forward), not SDPA's is_causal: on the CPU the two give the same
// bits, but on CUDA they select different kernels in fp16/bf16 (is_causal flash, the mask
// memory-efficient), so only the mask gives transformers' bits there.
torch::Tensor causal_attention_mask(int64_t batch, int64_t length, torch::ScalarType dtype, torch::Device device);

// The transformer options that CLIPTextConfig and BertConfig both hold, under the same keys.
struct EncoderOptions {
  int64_t hidden = 0, num_heads = 0, intermediate = 0, num_layers = 0;
  int64_t vocab_size = 0, max_positions = 0;
  double eps = 0.0;
  Activation activation = Activation::Gelu;
};

// Only the defaults of layer_norm_eps and hidden_act differ between the two configs.
EncoderOptions read_encoder_options(const Config& config, double default_eps, const std::string& default_activation);

// diffusers passes the tokenizer's attention mask when the config asks for it; taiyi's encoders
// take none, so such a config cannot be reproduced.
void reject_attention_mask(const Config& config);

// Shape and range checks before the embedding lookups, whose own errors are opaque (or a device
// assert on CUDA). `model` names the class in the Error.
void check_input_ids(const torch::Tensor& input_ids, int64_t vocab_size, int64_t max_positions, const char* model);

}  // namespace text_encoders

}  // namespace taiyi
