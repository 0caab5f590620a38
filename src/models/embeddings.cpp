// The timestep projection and TimestepEmbedding; see include/taiyi/models/embeddings.h. Each
// mirrors diffusers 0.37.1's embeddings.py op for op, so that float32 results agree to rounding.
#include "taiyi/models/embeddings.h"

#include <cmath>

namespace taiyi::nn {

torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double freq_shift) {
  const int64_t half = dim / 2;
  torch::Tensor exponent =
      torch::arange(0, half, torch::TensorOptions().dtype(torch::kFloat).device(timesteps.device())) *
      -std::log(10000.0);
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  torch::Tensor emb = timesteps.unsqueeze(1).to(torch::kFloat) * torch::exp(exponent).unsqueeze(0);
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);
  if (flip_sin_to_cos) emb = torch::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = torch::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, nn::Activation activation)
    : activation_(activation) {
  linear_1 = register_module("linear_1", nn::Linear(in_channels, time_embed_dim));
  linear_2 = register_module("linear_2", nn::Linear(time_embed_dim, time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& x) {
  return linear_2(nn::activate(activation_, linear_1(x)));
}

}  // namespace taiyi::nn
