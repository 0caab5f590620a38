// Port of transformers 4.57 CLIPTextModel (models/clip/modeling_clip.py) for inference: the module
// tree registers the Python attribute names (text_model.encoder.layers.N.self_attn.q_proj.weight,
// ...), so named_parameters() are exactly the state-dict keys and load_weights needs no mapping.
// forward(input_ids [B, L] int64, skip) -> the hidden state `skip` layers before the last, through
// final_layer_norm ([B, L, hidden]), in the parameters' dtype and on their device. Dropout is omitted.
#include "taiyi/models/modeling_clip.h"

#include <string>
#include <vector>

#include "taiyi/models/layers.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

// torch.nn's layers come from layers.h; what CLIP shares with BERT from text_encoder.h.
using nn::Embedding;
using nn::LayerNorm;
using nn::Linear;
using text_encoders::activate;
using text_encoders::Activation;
using text_encoders::causal_attention_mask;
using text_encoders::check_input_ids;
using text_encoders::EncoderOptions;
using text_encoders::multi_head_attention;
using text_encoders::read_encoder_options;
using text_encoders::reject_attention_mask;

// CLIPAttention: q_proj, k_proj, v_proj, out_proj (all with bias).
struct ClipAttentionImpl : torch::nn::Module {
  ClipAttentionImpl(int64_t hidden, int64_t num_heads) : num_heads(num_heads) {
    k_proj = register_module("k_proj", Linear(hidden, hidden));
    v_proj = register_module("v_proj", Linear(hidden, hidden));
    q_proj = register_module("q_proj", Linear(hidden, hidden));
    out_proj = register_module("out_proj", Linear(hidden, hidden));
  }
  // x [B, L, hidden]; mask: causal_attention_mask [B, 1, L, L].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    return out_proj(multi_head_attention(q_proj(x), k_proj(x), v_proj(x), num_heads, mask));
  }
  Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  int64_t num_heads;
};
TORCH_MODULE(ClipAttention);

// CLIPMLP: fc1 -> activation -> fc2.
struct ClipMlpImpl : torch::nn::Module {
  ClipMlpImpl(int64_t hidden, int64_t intermediate, Activation activation) : activation(activation) {
    fc1 = register_module("fc1", Linear(hidden, intermediate));
    fc2 = register_module("fc2", Linear(intermediate, hidden));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(activate(activation, fc1(x))); }
  Linear fc1{nullptr}, fc2{nullptr};
  Activation activation;
};
TORCH_MODULE(ClipMlp);

// CLIPEncoderLayer: pre-LayerNorm residual blocks.
struct ClipEncoderLayerImpl : torch::nn::Module {
  explicit ClipEncoderLayerImpl(const EncoderOptions& o) {
    self_attn = register_module("self_attn", ClipAttention(o.hidden, o.num_heads));
    layer_norm1 = register_module("layer_norm1", LayerNorm(o.hidden, o.eps));
    mlp = register_module("mlp", ClipMlp(o.hidden, o.intermediate, o.activation));
    layer_norm2 = register_module("layer_norm2", LayerNorm(o.hidden, o.eps));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask) {
    x = x + self_attn(layer_norm1(x), mask);
    return x + mlp(layer_norm2(x));
  }
  ClipAttention self_attn{nullptr};
  LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

// CLIPTextEmbeddings. transformers' position_ids buffer (0..max-1) is not a parameter here:
// positions 0..L-1 are the first L rows of position_embedding.weight.
struct ClipTextEmbeddingsImpl : torch::nn::Module {
  ClipTextEmbeddingsImpl(int64_t vocab_size, int64_t max_positions, int64_t hidden) {
    token_embedding = register_module("token_embedding", Embedding(vocab_size, hidden));
    position_embedding = register_module("position_embedding", Embedding(max_positions, hidden));
  }
  torch::Tensor forward(const torch::Tensor& input_ids) {  // [B, L] -> [B, L, hidden]
    return token_embedding(input_ids) + position_embedding->weight().slice(0, 0, input_ids.size(1));
  }
  Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

struct ClipEncoderImpl : torch::nn::Module {
  explicit ClipEncoderImpl(torch::nn::ModuleList layers_list) { layers = register_module("layers", layers_list); }
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(ClipEncoder);

// CLIPTextTransformer: embeddings, causal pre-LN encoder, final_layer_norm.
struct ClipTextTransformerImpl : torch::nn::Module {
  explicit ClipTextTransformerImpl(const Config& config) {
    options = read_encoder_options(config, 1e-5, "quick_gelu");  // CLIPTextConfig's defaults
    embeddings = register_module("embeddings",
                                 ClipTextEmbeddings(options.vocab_size, options.max_positions, options.hidden));
    torch::nn::ModuleList layers;
    for (int64_t i = 0; i < options.num_layers; ++i) layers->push_back(ClipEncoderLayer(options));
    encoder = register_module("encoder", ClipEncoder(layers));
    final_layer_norm = register_module("final_layer_norm", LayerNorm(options.hidden, options.eps));
  }
  // hidden_states[-(skip + 1)] through final_layer_norm: the first num_layers - skip layers.
  torch::Tensor forward(const torch::Tensor& input_ids, int64_t skip) {
    torch::Tensor x = embeddings(input_ids);  // [B, L, hidden]
    const torch::Tensor mask = causal_attention_mask(x.size(0), x.size(1), x.scalar_type(), x.device());
    return final_layer_norm(run_layers(x, mask, 0, options.num_layers - skip));
  }
  // Layers [from, to) on x.
  torch::Tensor run_layers(torch::Tensor x, const torch::Tensor& mask, int64_t from, int64_t to) {
    for (int64_t i = from; i < to; ++i)
      x = encoder->layers[static_cast<size_t>(i)]->as<ClipEncoderLayer>()->forward(x, mask);
    return x;
  }
  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  LayerNorm final_layer_norm{nullptr};
  EncoderOptions options;
};
TORCH_MODULE(ClipTextTransformer);

struct ClipTextModelImpl : TextEncoderImpl {
  ClipTextModelImpl(const Config& config, bool with_projection) {
    reject_attention_mask(config);
    text_model = register_module("text_model", ClipTextTransformer(config));
    eos_token_id = config.get_int("eos_token_id", 2);  // CLIPTextConfig's default
    if (with_projection) {
      const int64_t projection_dim = config.get_int("projection_dim", 512);
      if (projection_dim <= 0) config.unsupported("projection_dim", "expected a positive number");
      text_projection = register_module("text_projection",
                                        Linear(text_model->options.hidden, projection_dim, /*bias=*/false));
    }
  }
  // transformers' hidden_states[-index_from_end] and, with a projection, text_embeds: CLIPTextTransformer's
  // pooled_output is last_hidden_state at the highest id when eos_token_id is 2 (configs before transformers
  // 4.31; for Taiyi-XL's added Chinese tokens that is a character, not the end token, and IDEA's code pools the
  // same way), else at the first eos_token_id.
  HiddenAndPooled hidden_state(const torch::Tensor& input_ids, int64_t index_from_end) override {
    const EncoderOptions& o = text_model->options;
    check_input_ids(input_ids, token_embedding().weight().size(0), o.max_positions, "CLIPTextModel");
    if (index_from_end < 1 || index_from_end > o.num_layers + 1)
      throw Error("CLIPTextModel: hidden_states[-" + std::to_string(index_from_end) + "] is out of range: this text " +
                  "encoder has " + std::to_string(o.num_layers) + " layers");
    torch::Tensor x = text_model->embeddings(input_ids);
    const torch::Tensor mask = causal_attention_mask(x.size(0), x.size(1), x.scalar_type(), x.device());
    const int64_t taken = o.num_layers + 1 - index_from_end;
    HiddenAndPooled out;
    out.hidden = x = text_model->run_layers(x, mask, 0, taken);
    if (!text_projection) return out;
    torch::Tensor last = text_model->final_layer_norm(text_model->run_layers(x, mask, taken, o.num_layers));
    torch::Tensor positions = eos_token_id == 2 ? input_ids.to(torch::kInt).argmax(-1)
                                                : input_ids.to(torch::kInt).eq(eos_token_id).to(torch::kInt).argmax(-1);
    torch::Tensor pooled = last.index({torch::arange(last.size(0), positions.device()), positions});
    out.pooled = text_projection(pooled);
    return out;
  }
  torch::Tensor forward(const torch::Tensor& input_ids, int64_t skip) override {
    const EncoderOptions& o = text_model->options;
    check_input_ids(input_ids, token_embedding().weight().size(0), o.max_positions, "CLIPTextModel");
    if (skip < 0 || skip > o.num_layers)
      throw Error("CLIPTextModel: clip skip " + std::to_string(skip + 1) + " (the web UI's numbering) is out of range: " +
                  "this text encoder has " + std::to_string(o.num_layers) + " layers, so 1 to " +
                  std::to_string(o.num_layers + 1));
    return text_model->forward(input_ids, skip);
  }
  int64_t num_layers() const override { return text_model->options.num_layers; }
  nn::EmbeddingImpl& token_embedding() override { return *text_model->embeddings->token_embedding; }
  bool supports_clip_skip() const override { return true; }
  std::vector<std::string> ignored_checkpoint_keys() const override {
    return {"text_model.embeddings.position_ids"};  // persistent in transformers < 4.31
  }
  ClipTextTransformer text_model{nullptr};
  Linear text_projection{nullptr};
  int64_t eos_token_id = 2;
};

}  // namespace

std::shared_ptr<TextEncoderImpl> make_clip_text_model(const Config& config) {
  return std::make_shared<ClipTextModelImpl>(config, /*with_projection=*/false);
}

std::shared_ptr<TextEncoderImpl> make_clip_text_model_with_projection(const Config& config) {
  return std::make_shared<ClipTextModelImpl>(config, /*with_projection=*/true);
}

}  // namespace taiyi
