// The text encoders' shared pieces (see include/taiyi/models/text_encoder.h) and make_text_encoder.
// The models themselves: modeling_clip.cpp (CLIPTextModel) and modeling_bert.cpp (BertModel).
#include "taiyi/models/text_encoder.h"

#include <limits>
#include <string>

#include "taiyi/models/modeling_bert.h"
#include "taiyi/models/modeling_clip.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace text_encoders {

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

torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, const torch::Tensor& mask) {
  const int64_t batch = q.size(0), length = q.size(1), hidden = q.size(2);
  const int64_t head_dim = hidden / num_heads;
  auto split_heads = [&](const torch::Tensor& t) {  // [B, L, hidden] -> [B, heads, L, head_dim]
    return t.view({batch, length, num_heads, head_dim}).transpose(1, 2);
  };
  torch::Tensor out = at::scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v),
                                                       mask.defined() ? std::optional<torch::Tensor>(mask) : std::nullopt,
                                                       /*dropout_p=*/0.0, /*is_causal=*/false);
  return out.transpose(1, 2).reshape({batch, length, hidden});  // [B, L, hidden]
}

torch::Tensor causal_attention_mask(int64_t batch, int64_t length, torch::ScalarType dtype, torch::Device device) {
  double lowest = 0;  // torch.finfo(dtype).min
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "causal_attention_mask",
                                  [&] { lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest()); });
  // torch.full((L, L), min).masked_fill_(j <= i, 0): min where j > i, the strict upper triangle.
  torch::Tensor mask = torch::full({length, length}, lowest, torch::TensorOptions().dtype(dtype).device(device)).triu(1);
  return mask.unsqueeze(0).unsqueeze(0).expand({batch, 1, length, length});  // [B, 1, L, L]
}

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

void reject_attention_mask(const Config& config) {
  if (config.get_bool("use_attention_mask", false)) {
    config.unsupported("use_attention_mask", "taiyi's text encoders run without an attention mask");
  }
}

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

}  // namespace text_encoders

TextEncoderImpl::HiddenAndPooled TextEncoderImpl::hidden_state(const torch::Tensor&, int64_t) {
  throw Error("this text encoder has no SDXL hidden-state output (CLIPTextModel and CLIPTextModelWithProjection do)");
}

std::shared_ptr<TextEncoderImpl> make_text_encoder_2(const ModelFolder& folder, const Config& config) {
  const std::string cls = folder.class_name("text_encoder_2");
  if (cls != "CLIPTextModelWithProjection")
    throw Error(folder.index_path().string() + ": text_encoder_2 class " + quoted_excerpt(cls, 60) +
                " is not supported (expected CLIPTextModelWithProjection)");
  return make_clip_text_model_with_projection(config);
}

std::shared_ptr<TextEncoderImpl> make_text_encoder(const ModelFolder& folder) {
  // text_encoder_kind() is the Error naming model_index.json and any other class.
  switch (folder.text_encoder_kind()) {
    case TextEncoderKind::Clip:
      return make_clip_text_model(folder.config("text_encoder"));
    case TextEncoderKind::Bert:
      return make_bert_model(folder.config("text_encoder"));
  }
  throw Error(folder.index_path().string() + ": unknown text encoder kind");
}

}  // namespace taiyi
