// Building blocks shared by the UNet, the VAE and the text encoders; see include/taiyi/models/layers.h.
// Each forward mirrors the diffusers 0.37.1 (or torch.nn) code named in its comment, op for op, so
// that float32 results agree to rounding.
#include "taiyi/models/layers.h"

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

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return torch::linear(x, weight_, bias_); }

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

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  norm1 = register_module("norm1", GroupNorm(o.groups, o.in_channels, o.eps));
  conv1 = register_module("conv1", Conv2d(o.in_channels, o.out_channels, 3, 1, 1));
  if (o.temb_channels > 0) time_emb_proj = register_module("time_emb_proj", Linear(o.temb_channels, o.out_channels));
  norm2 = register_module("norm2", GroupNorm(o.groups, o.out_channels, o.eps));
  conv2 = register_module("conv2", Conv2d(o.out_channels, o.out_channels, 3, 1, 1));
  if (o.in_channels != o.out_channels)
    conv_shortcut = register_module("conv_shortcut", Conv2d(o.in_channels, o.out_channels, 1, 1, 0));
}

// diffusers resnet.py ResnetBlock2D.forward, time_embedding_norm == "default".
torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  torch::Tensor h = activate(options_.activation, norm1(x));
  h = conv1(h);
  if (time_emb_proj && temb.defined()) {
    torch::Tensor t = time_emb_proj(activate(options_.activation, temb));  // [B, out]
    h = h + t.unsqueeze(-1).unsqueeze(-1);
  }
  h = activate(options_.activation, norm2(h));
  h = conv2(h);
  torch::Tensor shortcut = conv_shortcut ? conv_shortcut(x) : x;
  // Dividing by 1.0 is exact, so this matches diffusers whatever the factor.
  return (shortcut + h) / options_.output_scale_factor;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding) : padding_(padding) {
  conv = register_module("conv", Conv2d(channels, out_channels, 3, 2, padding));
}

// diffusers downsampling.py Downsample2D.forward (use_conv=True).
torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  if (padding_ == 0) return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", Conv2d(channels, out_channels, 3, 1, 1));
}

// diffusers upsampling.py Upsample2D.forward (use_conv=True, interpolate=True): F.interpolate with
// scale_factor=2.0 passes the scale to the kernel; with size= it passes none.
torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, std::optional<std::vector<int64_t>> output_size) {
  torch::Tensor h;
  if (output_size) {
    h = at::upsample_nearest2d(x, *output_size);
  } else {
    h = at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}, 2.0, 2.0);
  }
  return conv(h);
}

torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t heads) {
  const int64_t batch = q.size(0);
  const int64_t head_dim = k.size(-1) / heads;
  // [B, L, heads*d] -> [B, heads, L, d]
  auto split = [&](const torch::Tensor& t) { return t.view({batch, -1, heads, head_dim}).transpose(1, 2); };
  torch::Tensor out = at::scaled_dot_product_attention(split(q), split(k), split(v));
  // [B, heads, Lq, d] -> [B, Lq, heads*d]
  return out.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(q.scalar_type());
}

}  // namespace taiyi::nn
