// Attention, FeedForward, BasicTransformerBlock, Transformer2DModel and the attention core; see
// include/taiyi/models/attention.h. Each forward mirrors the diffusers 0.37.1 code named in its
// comment (attention_processor.py, attention.py, transformers/transformer_2d.py), op for op, so
// that float32 results agree to rounding.
#include "taiyi/models/attention.h"

namespace taiyi::nn {

namespace {

// Transformer2DModel's own constants as the UNet blocks build it (transformer_2d.py defaults):
// GroupNorm eps 1e-6, LayerNorm eps 1e-5, GEGLU feed-forward 4x wide, no q/k/v bias.
constexpr double kTransformerGroupNormEps = 1e-6;
constexpr double kTransformerLayerNormEps = 1e-5;
constexpr int64_t kFeedForwardMult = 4;

}  // namespace

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

AttentionImpl::AttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim)
    : heads_(heads) {
  const int64_t inner = heads * head_dim;
  to_q = register_module("to_q", nn::Linear(query_dim, inner, /*bias=*/false));
  to_k = register_module("to_k", nn::Linear(context_dim, inner, /*bias=*/false));
  to_v = register_module("to_v", nn::Linear(context_dim, inner, /*bias=*/false));
  to_out_0 = nn::Linear(inner, query_dim);
  register_module("to_out", torch::nn::ModuleList(to_out_0));
}

CrossAttentionCache::KeysValues CrossAttentionCache::get(const AttentionImpl* layer, const torch::Tensor& context,
                                                         const std::function<KeysValues()>& project) {
  if (!context_.is_same(context)) {
    entries_.clear();
    context_ = context;
  }
  auto found = entries_.find(layer);
  if (found == entries_.end()) found = entries_.emplace(layer, project()).first;
  return found->second;
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context, CrossAttentionCache* cache) {
  if (!context.defined()) return to_out_0(nn::multi_head_attention(to_q(x), to_k(x), to_v(x), heads_));
  auto project = [&] { return CrossAttentionCache::KeysValues{to_k(context), to_v(context)}; };
  const auto [keys, values] = cache ? cache->get(this, context, project) : project();
  return to_out_0(nn::multi_head_attention(to_q(x), keys, values, heads_));
}

FeedForwardImpl::FeedForwardImpl(int64_t dim) {
  const int64_t inner = dim * kFeedForwardMult;
  auto geglu = std::make_shared<torch::nn::Module>();
  proj = geglu->register_module("proj", nn::Linear(dim, inner * 2));
  out = nn::Linear(inner, dim);
  torch::nn::ModuleList net;
  net->push_back(geglu);
  net->push_back(torch::nn::Identity());
  net->push_back(out);
  register_module("net", net);
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  auto halves = proj(x).chunk(2, -1);  // GEGLU: hidden_states, gate
  return out(halves[0] * torch::gelu(halves[1]));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim,
                                                     bool only_cross)
    : only_cross_attention_(only_cross) {
  norm1 = register_module("norm1", nn::LayerNorm(dim, kTransformerLayerNormEps));
  attn1 = register_module("attn1", Attention(dim, only_cross ? cross_dim : dim, heads, head_dim));
  norm2 = register_module("norm2", nn::LayerNorm(dim, kTransformerLayerNormEps));
  attn2 = register_module("attn2", Attention(dim, cross_dim, heads, head_dim));
  norm3 = register_module("norm3", nn::LayerNorm(dim, kTransformerLayerNormEps));
  ff = register_module("ff", FeedForward(dim));
}

torch::Tensor BasicTransformerBlockImpl::forward(torch::Tensor h, const torch::Tensor& context,
                                                 CrossAttentionCache* cache) {
  h = attn1(norm1(h), only_cross_attention_ ? context : torch::Tensor(), cache) + h;
  h = attn2(norm2(h), context, cache) + h;
  return ff(norm3(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const TransformerOptions& o) : linear_(o.use_linear_projection) {
  const int64_t head_dim = o.channels / o.heads;
  const int64_t inner = o.heads * head_dim;
  norm = register_module("norm", nn::GroupNorm(o.groups, o.channels, kTransformerGroupNormEps));
  if (linear_) {
    proj_in_linear = register_module("proj_in", nn::Linear(o.channels, inner));
    proj_in_linear->set_fold_like_module(true);  // its input is a permuted view (see LinearImpl)
  } else {
    proj_in_conv = register_module("proj_in", nn::Conv2d(o.channels, inner, 1));
  }
  auto list = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers; ++i) {
    blocks.push_back(BasicTransformerBlock(inner, o.heads, head_dim, o.cross_dim, o.only_cross_attention));
    list->push_back(blocks.back());
  }
  if (linear_) {
    proj_out_linear = register_module("proj_out", nn::Linear(inner, o.channels));
  } else {
    proj_out_conv = register_module("proj_out", nn::Conv2d(inner, o.channels, 1));
  }
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x, const torch::Tensor& context,
                                              CrossAttentionCache* cache) {
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  torch::Tensor h = norm(x);
  int64_t inner;
  if (!linear_) {
    h = proj_in_conv(h);
    inner = h.size(1);
    h = h.permute({0, 2, 3, 1}).reshape({batch, height * width, inner});  // [B, HW, inner]
  } else {
    inner = h.size(1);
    h = proj_in_linear(h.permute({0, 2, 3, 1}).reshape({batch, height * width, inner}));
  }
  for (auto& block : blocks) h = block(h, context, cache);
  if (!linear_) {
    h = h.reshape({batch, height, width, inner}).permute({0, 3, 1, 2}).contiguous();
    h = proj_out_conv(h);
  } else {
    h = proj_out_linear(h);
    h = h.reshape({batch, height, width, inner}).permute({0, 3, 1, 2}).contiguous();
  }
  return h + x;
}

}  // namespace taiyi::nn
