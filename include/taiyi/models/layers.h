// The torch.nn layers shared by the UNet, the VAE and the text encoders (Conv2d, Linear, GroupNorm,
// LayerNorm, Embedding) as libtorch modules whose parameter names are the state-dict keys, and
// diffusers 0.37.1's activations (models/activations.py get_activation). The diffusers blocks built
// from them live beside this header: resnet.h, attention.h, embeddings.h. Inference only; NCHW.
//
// Parameters are created uninitialised (torch::empty, no autograd): load_weights overwrites every
// one of them, and libtorch's random initialisers cost about 10 s for the full-size UNet. Until
// weights are loaded the values are garbage.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"

namespace taiyi::nn {

// nn.Conv2d(in, out, kernel, stride, padding, bias): "weight" [out, in, k, k], "bias" [out].
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
             int64_t padding = 0, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::Tensor weight_, bias_;
  int64_t stride_, padding_;
};
TORCH_MODULE(Conv2d);

// nn.Linear(in, out, bias): "weight" [out, in], "bias" [out].
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  // PyTorch's linear on a non-contiguous input of 3+ dims goes through matmul, which folds the input into one
  // matrix (mm on a copy) when the weight requires grad and decides by the strides when it does not; the two round
  // differently. taiyi's weights never require grad, so by default it computes what a frozen weight gives (libtorch's
  // own choice, which the VAE's attention matches). fold_like_module: what a module's own parameter gives
  // (Transformer2DModel's proj_in under use_linear_projection, whose input is a permuted view), unless
  // frozen_like_peft: peft freezes every base weight of a model it adds LoRA layers to (diffusers' load_lora_weights).
  void set_fold_like_module(bool fold) { fold_like_module_ = fold; }
  void set_frozen_like_peft(bool frozen) { frozen_like_peft_ = frozen; }

 private:
  torch::Tensor weight_, bias_;
  bool fold_like_module_ = false;
  bool frozen_like_peft_ = false;
};
TORCH_MODULE(Linear);

// nn.GroupNorm(num_groups, num_channels, eps, affine=True).
class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t num_groups, int64_t num_channels, double eps);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::Tensor weight_, bias_;
  int64_t num_groups_;
  double eps_;
};
TORCH_MODULE(GroupNorm);

// nn.LayerNorm(dim, eps, elementwise_affine=True) over the last dimension.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::Tensor weight_, bias_;
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(LayerNorm);

// nn.Embedding(num_embeddings, dim): "weight" [num_embeddings, dim]. (padding_idx only affects training.)
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);
  // The table itself: the text encoders add rows 0..L-1 for positions 0..L-1 without a lookup.
  const torch::Tensor& weight() const { return weight_; }
  // Rows appended at the end (textual inversion's new tokens), in the table's dtype and device.
  void append_rows(const torch::Tensor& rows);

 private:
  torch::Tensor weight_;
};
TORCH_MODULE(Embedding);

// diffusers' get_activation: "silu"/"swish", "mish", "gelu" (erf), "relu".
enum class Activation { SiLU, Mish, GELU, ReLU };
// Reads `key` (fallback when absent); an unknown name is config.unsupported(key, ...).
Activation activation_from_config(const Config& config, const std::string& key, const std::string& fallback);
torch::Tensor activate(Activation activation, const torch::Tensor& x);

}  // namespace taiyi::nn
