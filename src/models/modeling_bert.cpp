// Port of transformers 4.57 BertModel (models/bert/modeling_bert.py) without the pooler, for
// inference: the module tree registers the Python attribute names (embeddings.word_embeddings.weight,
// encoder.layer.N.attention.self.query.weight, ...), so named_parameters() are exactly the state-dict
// keys and load_weights needs no mapping. forward(input_ids [B, L] int64) -> last_hidden_state
// [B, L, hidden], in the parameters' dtype and on their device. Dropout is omitted.
#include "taiyi/models/modeling_bert.h"

#include <string>
#include <vector>

#include "taiyi/models/layers.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

// torch.nn's layers come from layers.h; what BERT shares with CLIP from text_encoder.h.
using nn::Embedding;
using nn::LayerNorm;
using nn::Linear;
using text_encoders::activate;
using text_encoders::Activation;
using text_encoders::check_input_ids;
using text_encoders::EncoderOptions;
using text_encoders::multi_head_attention;
using text_encoders::read_encoder_options;
using text_encoders::reject_attention_mask;

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
    return multi_head_attention(query(x), key(x), value(x), num_heads, /*mask=*/{});
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

std::shared_ptr<TextEncoderImpl> make_bert_model(const Config& config) {
  return std::make_shared<BertModelImpl>(config);
}

}  // namespace taiyi
