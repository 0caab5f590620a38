// diffusers 0.37.1's attention blocks as the SD v1 UNet builds them, as libtorch modules whose
// parameter names are the state-dict keys: Attention (models/attention_processor.py, computed as
// AttnProcessor2_0 does), FeedForward and BasicTransformerBlock (models/attention.py), and
// Transformer2DModel (models/transformers/transformer_2d.py) on continuous input; plus the
// attention core they share with the VAE's mid-block attention, and the per-generation cache of the
// keys and values projected from the text context (CrossAttentionCache). Inference only; NCHW
// outside, [B, L, C] inside.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "taiyi/models/layers.h"

namespace taiyi::nn {

// Multi-head attention as AttnProcessor2_0 computes it after the projections:
// q [B, Lq, heads*d], k and v [B, Lk, heads*d] -> [B, Lq, heads*d], through
// at::scaled_dot_product_attention on [B, heads, L, d] with the default scale 1/sqrt(d).
torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t heads);

class AttentionImpl;

// The keys and values that the UNet's attention layers project from the text context, kept for one
// generation. The context is constant over the denoising loop, so each layer's to_k(context) and
// to_v(context) are computed on the first UNet call and reused by the later ones: the same ops on the
// same inputs, so the same bits (diffusers recomputes them every step). Pipeline::denoise makes one
// per loop and drops it after; a UNet called without one computes them every time.
// It is bound to the context tensor it first sees (by identity): a call with another tensor empties
// it first, so it never serves one context's keys for another. Do not change a context in place while
// a cache holds it.
class CrossAttentionCache {
 public:
  using KeysValues = std::pair<torch::Tensor, torch::Tensor>;
  // `layer`'s keys and values for `context`: project() on first use, the kept pair afterwards.
  KeysValues get(const AttentionImpl* layer, const torch::Tensor& context, const std::function<KeysValues()>& project);
  // The number of layers whose keys and values are kept.
  size_t size() const { return entries_.size(); }

 private:
  torch::Tensor context_;
  std::unordered_map<const AttentionImpl*, KeysValues> entries_;
};

// attention_processor.py Attention as BasicTransformerBlock builds it: to_q/to_k/to_v without
// bias, to_out.0 with bias; keys and values from `context` (cross-attention) or from x.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim);
  // x [B, L, query_dim]; context [B, Lc, context_dim] or undefined (self-attention). With a cache,
  // the keys and values of a context come from it (see CrossAttentionCache).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, CrossAttentionCache* cache = nullptr);

 private:
  int64_t heads_;
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out_0{nullptr};
};
TORCH_MODULE(Attention);

// attention.py FeedForward with activation_fn "geglu": net.0 = GEGLU (net.0.proj), net.1 =
// dropout (an Identity here, to keep the index), net.2 = Linear.
class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Linear proj{nullptr}, out{nullptr};
};
TORCH_MODULE(FeedForward);

// attention.py BasicTransformerBlock, norm_type "layer_norm": self-attention (or attention to the
// text when only_cross_attention), cross-attention, feed-forward, each pre-norm with a residual.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim, bool only_cross);
  torch::Tensor forward(torch::Tensor h, const torch::Tensor& context, CrossAttentionCache* cache = nullptr);

 private:
  bool only_cross_attention_;
  nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct TransformerOptions {
  int64_t channels, heads, cross_dim, layers, groups;
  bool use_linear_projection, only_cross_attention;
};

// transformer_2d.py Transformer2DModel on continuous input: norm, proj_in (1x1 conv or linear),
// transformer_blocks, proj_out, plus the input as residual.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const TransformerOptions& o);
  // x [B, channels, h, w]; context [B, L, cross_dim] -> [B, channels, h, w].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, CrossAttentionCache* cache = nullptr);

 private:
  bool linear_;
  nn::GroupNorm norm{nullptr};
  nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  std::vector<BasicTransformerBlock> blocks;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace taiyi::nn
