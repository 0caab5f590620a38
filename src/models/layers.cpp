// torch.nn layers and activations; see include/taiyi/models/layers.h.
// Each forward mirrors the torch.nn (or diffusers 0.37.1) code it ports, op for op, so that float32
// results agree to rounding.
#include "taiyi/models/layers.h"

#include <vector>

#include <cmath>

#include "taiyi/utils/error.h"

namespace taiyi::nn {

// Uninitialised, without autograd: load_weights replaces the storage (set_data) tensor by tensor.
static torch::Tensor uninitialised(torch::IntArrayRef shape) { return torch::empty(shape); }

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
                       int64_t padding, bool bias)
    : stride_(stride), padding_(padding) {
  weight_ = register_parameter("weight", uninitialised({out_channels, in_channels, kernel_size, kernel_size}),
                               /*requires_grad=*/false);
  if (bias) bias_ = register_parameter("bias", uninitialised({out_channels}), /*requires_grad=*/false);
}

torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(x, weight_, bias_, {stride_, stride_}, {padding_, padding_});
}

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias) {
  weight_ = register_parameter("weight", uninitialised({out_features, in_features}), /*requires_grad=*/false);
  if (bias) bias_ = register_parameter("bias", uninitialised({out_features}), /*requires_grad=*/false);
}

// torch.nn.Linear on a non-contiguous input of three or more dims: see set_fold_like_module.
torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (fold_like_module_ && !frozen_like_peft_ && x.dim() >= 3 && !x.is_contiguous()) {
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = weight_.size(0);
    torch::Tensor out = torch::mm(x.reshape({-1, x.size(-1)}), weight_.t()).view(sizes);
    return bias_.defined() ? out + bias_ : out;
  }
  return torch::linear(x, weight_, bias_);
}

GroupNormImpl::GroupNormImpl(int64_t num_groups, int64_t num_channels, double eps)
    : num_groups_(num_groups), eps_(eps) {
  weight_ = register_parameter("weight", uninitialised({num_channels}), /*requires_grad=*/false);
  bias_ = register_parameter("bias", uninitialised({num_channels}), /*requires_grad=*/false);
}

torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  return torch::group_norm(x, num_groups_, weight_, bias_, eps_);
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) {
  weight_ = register_parameter("weight", uninitialised({dim}), /*requires_grad=*/false);
  bias_ = register_parameter("bias", uninitialised({dim}), /*requires_grad=*/false);
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {dim_}, weight_, bias_, eps_);
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t dim) {
  weight_ = register_parameter("weight", uninitialised({num_embeddings, dim}), /*requires_grad=*/false);
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) { return torch::embedding(weight_, ids); }

void EmbeddingImpl::append_rows(const torch::Tensor& rows) {
  weight_.set_data(torch::cat({weight_, rows.to(weight_.device(), weight_.scalar_type())}));
}

Activation activation_from_config(const Config& config, const std::string& key, const std::string& fallback) {
  std::string name = config.get_string(key, fallback);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "mish") return Activation::Mish;
  if (name == "gelu") return Activation::GELU;
  if (name == "relu") return Activation::ReLU;
  config.unsupported(key, "expected one of silu, swish, mish, gelu, relu");
}

torch::Tensor activate(Activation activation, const torch::Tensor& x) {
  switch (activation) {
    case Activation::SiLU: return torch::silu(x);
    case Activation::Mish: return torch::mish(x);
    case Activation::GELU: return torch::gelu(x);
    case Activation::ReLU: return torch::relu(x);
  }
  return x;
}

}  // namespace taiyi::nn
