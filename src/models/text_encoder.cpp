// Port of transformers 4.57 CLIPTextModel (models/clip/modeling_clip.py) and BertModel
// (models/bert/modeling_bert.py) for inference: the module trees register the Python attribute
// names, so named_parameters() are exactly the state-dict keys and load_weights needs no mapping.
// forward(input_ids [B, L] int64) -> last_hidden_state [B, L, hidden], in the parameters' dtype and
// on their device. Dropout is omitted (inference only).
#include "taiyi/models/text_encoder.h"

#include <string>
#include <vector>

#include "taiyi/utils/error.h"
#include "taiyi/models/layers.h"

namespace taiyi {

namespace {

// --- Building blocks -------------------------------------------------------------------------
// torch.nn's Linear, LayerNorm and Embedding come from taiyi/layers.h, shared with the UNet and VAE.

using nn::Embedding;
using nn::LayerNorm;
using nn::Linear;

// transformers' ACT2FN entries that the Taiyi encoders use.
enum class Activation { QuickGelu, Gelu };

Activation activation_from_config(const Config& config, const std::string& fallback) {
  std::string name = config.get_string("hidden_act", fallback);
  if (name == "quick_gelu") return Activation::QuickGelu;
  if (name == "gelu") return Activation::Gelu;
  config.unsupported("hidden_act", "supported: \"quick_gelu\", \"gelu\"");
}

torch::Tensor activate(Activation activation, const torch::Tensor& x) {
  switch (activation) {
    case Activation::QuickGelu:  // QuickGELUActivation: x * sigmoid(1.702 x)
      return x * torch::sigmoid(1.702 * x);
    case Activation::Gelu:  // GELUActivation: the exact erf form
      return torch::gelu(x);
  }
  return x;
}

// Multi-head attention core: q, k, v [B, L, hidden] -> [B, L, hidden], scale 1/sqrt(head_dim)
// (SDPA's default, as both CLIP and BERT use).
torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, bool causal) {
  const int64_t batch = q.size(0), length = q.size(1), hidden = q.size(2);
  const int64_t head_dim = hidden / num_heads;
  auto split_heads = [&](const torch::Tensor& t) {  // [B, L, hidden] -> [B, heads, L, head_dim]
    return t.view({batch, length, num_heads, head_dim}).transpose(1, 2);
  };
  // is_causal equals CLIP's additive mask (finfo.min above the diagonal): those weights are 0.
  torch::Tensor out = at::scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v), {},
                                                       /*dropout_p=*/0.0, /*is_causal=*/causal);
  return out.transpose(1, 2).reshape({batch, length, hidden});  // [B, L, hidden]
}

// The transformer options that CLIPTextConfig and BertConfig both hold, under the same keys.
struct EncoderOptions {
  int64_t hidden = 0, num_heads = 0, intermediate = 0, num_layers = 0;
  int64_t vocab_size = 0, max_positions = 0;
  double eps = 0.0;
  Activation activation = Activation::Gelu;
};

// Only the defaults of layer_norm_eps and hidden_act differ between the two configs.
EncoderOptions read_encoder_options(const Config& config, double default_eps, const std::string& default_activation) {
  EncoderOptions o;
  o.hidden = config.get_int("hidden_size");
  o.num_heads = config.get_int("num_attention_heads");
  if (o.num_heads <= 0 || o.hidden % o.num_heads != 0) {
    config.unsupported("num_attention_heads", "must be positive and divide hidden_size = " + std::to_string(o.hidden));
  }
  o.intermediate = config.get_int("intermediate_size");
  o.num_layers = config.get_int("num_hidden_layers");
  o.eps = config.get_double("layer_norm_eps", default_eps);
  o.activation = activation_from_config(config, default_activation);
  o.vocab_size = config.get_int("vocab_size");
  o.max_positions = config.get_int("max_position_embeddings");
  return o;
}

// diffusers passes the tokenizer's attention mask when the config asks for it; taiyi's encoders
// take none, so such a config cannot be reproduced.
void reject_attention_mask(const Config& config) {
  if (config.get_bool("use_attention_mask", false)) {
    config.unsupported("use_attention_mask", "taiyi's text encoders run without an attention mask");
  }
}

// Shape and range checks before the embedding lookups, whose own errors are opaque (or a device
// assert on CUDA).
void check_input_ids(const torch::Tensor& input_ids, int64_t vocab_size, int64_t max_positions,
                     const char* model) {
  std::string where = std::string(model) + ": input_ids";
  if (input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong) {
    throw Error(where + " must be a 2-D int64 tensor [batch, length], got " + std::to_string(input_ids.dim()) +
                "-D " + std::string(c10::toString(input_ids.scalar_type())));
  }
  if (input_ids.size(1) > max_positions) {
    throw Error(where + " length " + std::to_string(input_ids.size(1)) + " exceeds max_position_embeddings " +
                std::to_string(max_positions));
  }
  if (input_ids.numel() == 0) return;
  const int64_t lowest = input_ids.min().item<int64_t>(), highest = input_ids.max().item<int64_t>();
  if (lowest < 0 || highest >= vocab_size) {
    throw Error(where + " out of range: ids span [" + std::to_string(lowest) + ", " + std::to_string(highest) +
                "], vocab_size is " + std::to_string(vocab_size));
  }
}

// --- CLIPTextModel ---------------------------------------------------------------------------

// CLIPAttention: q_proj, k_proj, v_proj, out_proj (all with bias).
struct ClipAttentionImpl : torch::nn::Module {
  ClipAttentionImpl(int64_t hidden, int64_t num_heads) : num_heads(num_heads) {
    k_proj = register_module("k_proj", Linear(hidden, hidden));
    v_proj = register_module("v_proj", Linear(hidden, hidden));
    q_proj = register_module("q_proj", Linear(hidden, hidden));
    out_proj = register_module("out_proj", Linear(hidden, hidden));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return out_proj(multi_head_attention(q_proj(x), k_proj(x), v_proj(x), num_heads, /*causal=*/true));
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
  torch::Tensor forward(torch::Tensor x) {
    x = x + self_attn(layer_norm1(x));
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
    const int64_t layers = options.num_layers - skip;
    for (int64_t i = 0; i < layers; ++i) x = encoder->layers[static_cast<size_t>(i)]->as<ClipEncoderLayer>()->forward(x);
    return final_layer_norm(x);
  }
  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  LayerNorm final_layer_norm{nullptr};
  EncoderOptions options;
};
TORCH_MODULE(ClipTextTransformer);

struct ClipTextModelImpl : TextEncoderImpl {
  explicit ClipTextModelImpl(const Config& config) {
    reject_attention_mask(config);
    text_model = register_module("text_model", ClipTextTransformer(config));
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
};

// --- BertModel -------------------------------------------------------------------------------

// BertEmbeddings: word + token_type (all 0) + absolute position, then LayerNorm.
struct BertEmbeddingsImpl : torch::nn::Module {
  BertEmbeddingsImpl(int64_t vocab_size, int64_t max_positions, int64_t type_vocab_size, int64_t hidden,
                     double eps) {
    word_embeddings = register_module("word_embeddings", Embedding(vocab_size, hidden));
    position_embeddings = register_module("position_embeddings", Embedding(max_positions, hidden));
    token_type_embeddings = register_module("token_type_embeddings", Embedding(type_vocab_size, hidden));
    layer_norm = register_module("LayerNorm", LayerNorm(hidden, eps));
  }
  torch::Tensor forward(const torch::Tensor& input_ids) {  // [B, L] -> [B, L, hidden]
    const int64_t length = input_ids.size(1);
    // Rows 0..L-1 and row 0 are what the lookups of positions 0..L-1 and token type 0 return; the
    // additions keep transformers' order.
    torch::Tensor x = word_embeddings(input_ids) + token_type_embeddings->weight()[0];
    x = x + position_embeddings->weight().slice(0, 0, length);
    return layer_norm(x);
  }
  Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  LayerNorm layer_norm{nullptr};  // registered as transformers' "LayerNorm"
};
TORCH_MODULE(BertEmbeddings);

// BertSelfAttention: query, key, value. No mask: the pipeline passes none, so [PAD] attends too.
struct BertSelfAttentionImpl : torch::nn::Module {
  BertSelfAttentionImpl(int64_t hidden, int64_t num_heads) : num_heads(num_heads) {
    query = register_module("query", Linear(hidden, hidden));
    key = register_module("key", Linear(hidden, hidden));
    value = register_module("value", Linear(hidden, hidden));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return multi_head_attention(query(x), key(x), value(x), num_heads, /*causal=*/false);
  }
  Linear query{nullptr}, key{nullptr}, value{nullptr};
  int64_t num_heads;
};
TORCH_MODULE(BertSelfAttention);

// BertSelfOutput and BertOutput: dense, then post-LayerNorm of (dense + residual).
struct BertResidualOutputImpl : torch::nn::Module {
  BertResidualOutputImpl(int64_t in_features, int64_t hidden, double eps) {
    dense = register_module("dense", Linear(in_features, hidden));
    layer_norm = register_module("LayerNorm", LayerNorm(hidden, eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual) {
    return layer_norm(dense(x) + residual);
  }
  Linear dense{nullptr};
  LayerNorm layer_norm{nullptr};  // registered as transformers' "LayerNorm"
};
TORCH_MODULE(BertResidualOutput);

// BertAttention: attention.self + attention.output.
struct BertAttentionImpl : torch::nn::Module {
  BertAttentionImpl(int64_t hidden, int64_t num_heads, double eps) {
    self = register_module("self", BertSelfAttention(hidden, num_heads));
    output = register_module("output", BertResidualOutput(hidden, hidden, eps));
  }
  torch::Tensor forward(const torch::Tensor& x) { return output->forward(self(x), x); }
  BertSelfAttention self{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

// BertIntermediate: dense -> activation.
struct BertIntermediateImpl : torch::nn::Module {
  BertIntermediateImpl(int64_t hidden, int64_t intermediate, Activation activation) : activation(activation) {
    dense = register_module("dense", Linear(hidden, intermediate));
  }
  torch::Tensor forward(const torch::Tensor& x) { return activate(activation, dense(x)); }
  Linear dense{nullptr};
  Activation activation;
};
TORCH_MODULE(BertIntermediate);

struct BertLayerImpl : torch::nn::Module {
  explicit BertLayerImpl(const EncoderOptions& o) {
    attention = register_module("attention", BertAttention(o.hidden, o.num_heads, o.eps));
    intermediate = register_module("intermediate", BertIntermediate(o.hidden, o.intermediate, o.activation));
    output = register_module("output", BertResidualOutput(o.intermediate, o.hidden, o.eps));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor attended = attention(x);
    return output->forward(intermediate(attended), attended);
  }
  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertLayer);

struct BertEncoderImpl : torch::nn::Module {
  explicit BertEncoderImpl(torch::nn::ModuleList layer_list) { layer = register_module("layer", layer_list); }
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(BertEncoder);

// BertModel without the pooler (the pipeline uses last_hidden_state only).
struct BertModelImpl : TextEncoderImpl {
  explicit BertModelImpl(const Config& config) {
    reject_attention_mask(config);
    // Options that change the computation or add parameters, as BertModel reads them.
    const std::string position_type = config.get_string("position_embedding_type", "absolute");
    if (position_type != "absolute") config.unsupported("position_embedding_type", "supported: \"absolute\"");
    if (config.get_bool("is_decoder", false)) config.unsupported("is_decoder", "supported: false (an encoder)");
    if (config.get_bool("add_cross_attention", false)) config.unsupported("add_cross_attention", "supported: false");

    options = read_encoder_options(config, 1e-12, "gelu");  // BertConfig's defaults
    const int64_t type_vocab_size = config.get_int("type_vocab_size");
    if (type_vocab_size < 1) config.unsupported("type_vocab_size", "must be at least 1 (token type 0 is used)");

    embeddings = register_module("embeddings", BertEmbeddings(options.vocab_size, options.max_positions,
                                                              type_vocab_size, options.hidden, options.eps));
    torch::nn::ModuleList layers;
    for (int64_t i = 0; i < options.num_layers; ++i) layers->push_back(BertLayer(options));
    encoder = register_module("encoder", BertEncoder(layers));
  }
  torch::Tensor forward(const torch::Tensor& input_ids, int64_t skip) override {
    if (skip != 0)
      throw Error("BertModel: clip skip needs a CLIP text encoder (BERT has no final layer norm to apply)");
    check_input_ids(input_ids, token_embedding().weight().size(0), options.max_positions, "BertModel");
    torch::Tensor x = embeddings(input_ids);  // [B, L, hidden]
    for (const auto& layer : *encoder->layer) x = layer->as<BertLayer>()->forward(x);
    return x;
  }
  std::vector<std::string> ignored_checkpoint_keys() const override {
    return {"pooler.", "embeddings.position_ids", "embeddings.token_type_ids"};
  }
  int64_t num_layers() const override { return options.num_layers; }
  bool supports_clip_skip() const override { return false; }
  nn::EmbeddingImpl& token_embedding() override { return *embeddings->word_embeddings; }
  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  EncoderOptions options;
};

}  // namespace

std::shared_ptr<TextEncoderImpl> make_clip_text_model(const Config& config) {
  return std::make_shared<ClipTextModelImpl>(config);
}

std::shared_ptr<TextEncoderImpl> make_bert_model(const Config& config) {
  return std::make_shared<BertModelImpl>(config);
}

std::shared_ptr<TextEncoderImpl> make_text_encoder(const ModelFolder& folder) {
  // text_encoder_kind() is the Error naming model_index.json and any other class.
  switch (folder.text_encoder_kind()) {
    case TextEncoderKind::Clip:
      return make_clip_text_model(folder.config("text_encoder"));
    case TextEncoderKind::Bert:
      return make_bert_model(folder.config("text_encoder"));
  }
  throw Error((folder.root() / "model_index.json").string() + ": unknown text encoder kind");
}

}  // namespace taiyi
