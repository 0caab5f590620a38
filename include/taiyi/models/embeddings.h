// diffusers 0.37.1's timestep embeddings (models/embeddings.py): the sinusoidal projection
// get_timestep_embedding and the TimestepEmbedding MLP (linear_1, linear_2: its state-dict keys),
// as the SD v1 UNet uses them. Inference only.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "taiyi/models/layers.h"

namespace taiyi::nn {

// embeddings.py get_timestep_embedding (scale 1, max_period 10000), in float32 as diffusers does
// whatever the model dtype: timesteps [B] -> [B, dim].
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double freq_shift);

// embeddings.py TimestepEmbedding: linear_1, act, linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, nn::Activation activation);
  // x [B, in_channels] -> [B, time_embed_dim].
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Activation activation_;
  nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace taiyi::nn
