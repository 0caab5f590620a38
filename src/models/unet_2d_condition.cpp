// UNet2DConditionModel for the SD v1 and SDXL families, a port of diffusers 0.37.1 models/unets/
// unet_2d_condition.py with the parameter names of its state dict: unet/config.json read and checked
// into a UNetShape, then conv_in, time_embedding (embeddings.h), down_blocks, mid_block, up_blocks
// (unet_2d_blocks.h), conv_norm_out and conv_out. Every size comes from unet/config.json; an option
// taiyi does not implement is an Error naming the key and value. Inference only; NCHW.
#include "taiyi/models/unet_2d_condition.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "taiyi/utils/error.h"
#include "taiyi/models/embeddings.h"
#include "taiyi/models/layers.h"
#include "taiyi/models/unet_2d_blocks.h"

namespace taiyi {

namespace {

// Keys whose only supported value is their diffusers default: null, or the given JSON value.
void require_default(const Config& config, const std::string& key, const nlohmann::json& supported,
                     const std::string& what) {
  if (!config.has(key)) return;
  if (supported.is_null() || config.json().at(key) != supported) config.unsupported(key, what);
}

std::vector<bool> bool_or_list(const Config& config, const std::string& key, size_t count) {
  if (!config.has(key)) return std::vector<bool>(count, false);
  const nlohmann::json& value = config.json().at(key);
  if (value.is_boolean()) return std::vector<bool>(count, value.get<bool>());
  if (value.is_array() && value.size() == count) {
    std::vector<bool> list;
    for (const auto& item : value) {
      if (!item.is_boolean()) config.unsupported(key, "expected a bool or a list of bools");
      list.push_back(item.get<bool>());
    }
    return list;
  }
  config.unsupported(key, "expected a bool or a list of " + std::to_string(count) + " bools");
}

// "UNetResDownBlock2D" is an alias of "DownBlock2D" in get_down_block / get_up_block.
std::string strip_unetres(const std::string& type) {
  return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type;
}

// The channels and the block lists: block_out_channels and one down and one up block type per entry.
void read_blocks(const Config& config, UNetShape& s) {
  s.in_channels = config.get_int("in_channels", 4);
  s.out_channels = config.get_int("out_channels", 4);
  s.block_out_channels = config.has("block_out_channels") ? config.get_int_list("block_out_channels")
                                                          : std::vector<int64_t>{320, 640, 1280, 1280};
  s.down_block_types = config.has("down_block_types")
                           ? config.get_string_list("down_block_types")
                           : std::vector<std::string>{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                      "CrossAttnDownBlock2D", "DownBlock2D"};
  s.up_block_types = config.has("up_block_types")
                         ? config.get_string_list("up_block_types")
                         : std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                    "CrossAttnUpBlock2D"};
  const size_t n = s.block_out_channels.size();
  if (n == 0) config.unsupported("block_out_channels", "expected at least one block");
  if (s.down_block_types.size() != n)
    config.unsupported("down_block_types", "expected one entry per block_out_channels (" + std::to_string(n) + ")");
  if (s.up_block_types.size() != n)
    config.unsupported("up_block_types", "expected one entry per block_out_channels (" + std::to_string(n) + ")");
  for (auto& type : s.down_block_types) {
    type = strip_unetres(type);
    if (type != "CrossAttnDownBlock2D" && type != "DownBlock2D")
      config.unsupported("down_block_types", "supported: CrossAttnDownBlock2D, DownBlock2D; not " + type);
  }
  for (auto& type : s.up_block_types) {
    type = strip_unetres(type);
    if (type != "CrossAttnUpBlock2D" && type != "UpBlock2D")
      config.unsupported("up_block_types", "supported: CrossAttnUpBlock2D, UpBlock2D; not " + type);
  }
}

// The int-or-list keys, one value per down block.
void read_per_block(const Config& config, UNetShape& s) {
  const size_t n = s.block_out_channels.size();
  // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (SD v1 configs call
  // the number of heads attention_head_dim). 0.37.1 raises on num_attention_heads itself.
  require_default(config, "num_attention_heads", nullptr,
                  "diffusers rejects it for UNet2DConditionModel; give the number of heads as attention_head_dim");
  s.heads = config.get_int_or_list("attention_head_dim", n, 8);
  s.layers_per_block = config.get_int_or_list("layers_per_block", n, 2);
  s.cross_attention_dim = config.get_int_or_list("cross_attention_dim", n, 1280);
  s.transformer_layers = config.get_int_or_list("transformer_layers_per_block", n, 1);
  s.only_cross_attention = bool_or_list(config, "only_cross_attention", n);
  for (size_t i = 0; i < n; ++i) {
    if (s.heads[i] <= 0 || s.block_out_channels[i] % s.heads[i] != 0)
      config.unsupported("attention_head_dim", "the number of heads must divide block_out_channels");
  }
}

// The scalar options: norms, kernels, the time embedding, the activation.
void read_options(const Config& config, UNetShape& s) {
  s.use_linear_projection = config.get_bool("use_linear_projection", false);
  // upcast_attention only changes the old AttnProcessor; AttnProcessor2_0 (diffusers' default with
  // torch 2) ignores it and so does taiyi: SDPA keeps its own accumulation precision.
  (void)config.get_bool("upcast_attention", false);
  s.center_input_sample = config.get_bool("center_input_sample", false);
  s.flip_sin_to_cos = config.get_bool("flip_sin_to_cos", true);
  s.freq_shift = config.get_double("freq_shift", 0);
  s.norm_eps = config.get_double("norm_eps", 1e-5);
  s.mid_block_scale_factor = config.get_double("mid_block_scale_factor", 1);
  if (!config.has("norm_num_groups") && config.json().contains("norm_num_groups"))
    config.unsupported("norm_num_groups", "null (no output GroupNorm) is not supported");
  s.groups = config.get_int("norm_num_groups", 32);
  for (int64_t c : s.block_out_channels) {
    if (c <= 0 || c % s.groups != 0)
      config.unsupported("block_out_channels", "every entry must be a positive multiple of norm_num_groups");
  }
  s.downsample_padding = config.get_int("downsample_padding", 1);
  s.conv_in_kernel = config.get_int("conv_in_kernel", 3);
  s.conv_out_kernel = config.get_int("conv_out_kernel", 3);
  if (s.conv_in_kernel <= 0 || s.conv_in_kernel % 2 == 0) config.unsupported("conv_in_kernel", "expected odd");
  if (s.conv_out_kernel <= 0 || s.conv_out_kernel % 2 == 0) config.unsupported("conv_out_kernel", "expected odd");
  s.time_embed_dim = config.get_int("time_embedding_dim", s.block_out_channels[0] * 4);
  s.activation = nn::activation_from_config(config, "act_fn", "silu");
}

// SDXL's addition embedding (unet_2d_condition.py _set_add_embedding, "text_time"): add_time_proj
// (Timesteps(addition_time_embed_dim)) and add_embedding (TimestepEmbedding(projection_class_embeddings_input_dim)).
void read_addition_embedding(const Config& config, UNetShape& s) {
  if (!config.has("addition_embed_type")) return;
  if (config.get_string("addition_embed_type") != "text_time")
    config.unsupported("addition_embed_type", "taiyi implements \"text_time\" (SDXL) only");
  s.addition_time_embed_dim = config.get_int("addition_time_embed_dim");
  s.projection_class_embeddings_input_dim = config.get_int("projection_class_embeddings_input_dim");
  if (s.addition_time_embed_dim <= 0 || s.addition_time_embed_dim % 2 != 0)
    config.unsupported("addition_time_embed_dim", "expected a positive even number");
  if (s.projection_class_embeddings_input_dim <= 6 * s.addition_time_embed_dim)
    config.unsupported("projection_class_embeddings_input_dim",
                       "expected 6 x addition_time_embed_dim plus the pooled text embedding's width");
}

// Options of other UNets (SD 2.x upscalers, Kandinsky, ...) that taiyi does not implement: an Error unless
// they hold their default.
void reject_unsupported(const Config& config) {
  const std::string sd1 = "taiyi implements the SD v1 and SDXL UNets";
  require_default(config, "time_embedding_type", "positional", "only \"positional\" is supported");
  require_default(config, "resnet_time_scale_shift", "default", "only \"default\" is supported");
  require_default(config, "mid_block_type", "UNetMidBlock2DCrossAttn", "only UNetMidBlock2DCrossAttn is supported");
  if (!config.has("mid_block_type") && config.json().contains("mid_block_type"))
    config.unsupported("mid_block_type", "a UNet without mid block is not supported");
  require_default(config, "dual_cross_attention", false, sd1);
  require_default(config, "attention_type", "default", sd1);
  require_default(config, "class_embed_type", nullptr, sd1);
  require_default(config, "num_class_embeds", nullptr, sd1);
  require_default(config, "encoder_hid_dim", nullptr, sd1);
  require_default(config, "encoder_hid_dim_type", nullptr, sd1);
  require_default(config, "time_cond_proj_dim", nullptr, sd1);
  require_default(config, "time_embedding_act_fn", nullptr, sd1);
  require_default(config, "timestep_post_act", nullptr, sd1);
  require_default(config, "reverse_transformer_layers_per_block", nullptr, sd1);
}

// In this order: the later parts check against block_out_channels (and default from it).
UNetShape read_shape(const Config& config) {
  UNetShape s;
  read_blocks(config, s);
  read_per_block(config, s);
  read_options(config, s);
  read_addition_embedding(config, s);
  reject_unsupported(config);
  return s;
}

}  // namespace

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const Config& config) : config_(config), shape_(read_shape(config)) {
    const UNetShape& s = shape_;
    const size_t n = s.block_out_channels.size();
    conv_in = register_module(
        "conv_in", nn::Conv2d(s.in_channels, s.block_out_channels[0], s.conv_in_kernel, 1, (s.conv_in_kernel - 1) / 2));
    time_embedding = register_module("time_embedding",
                                     nn::TimestepEmbedding(s.block_out_channels[0], s.time_embed_dim, s.activation));
    if (s.addition_time_embed_dim > 0)  // TimestepEmbedding's default act_fn, "silu"
      add_embedding = register_module("add_embedding", nn::TimestepEmbedding(s.projection_class_embeddings_input_dim,
                                                                             s.time_embed_dim, nn::Activation::SiLU));

    auto down_list = register_module("down_blocks", torch::nn::ModuleList());
    int64_t output_channel = s.block_out_channels[0];
    for (size_t i = 0; i < n; ++i) {
      const int64_t input_channel = output_channel;
      output_channel = s.block_out_channels[i];
      down_blocks.push_back(DownBlock(s, i, input_channel, /*add_downsample=*/i + 1 < n));
      down_list->push_back(down_blocks.back());
    }

    mid_block = register_module("mid_block", MidBlock(s));

    auto up_list = register_module("up_blocks", torch::nn::ModuleList());
    std::vector<int64_t> reversed(s.block_out_channels.rbegin(), s.block_out_channels.rend());
    output_channel = reversed[0];
    for (size_t i = 0; i < n; ++i) {
      const int64_t prev_output_channel = output_channel;
      output_channel = reversed[i];
      const int64_t input_channel = reversed[std::min(i + 1, n - 1)];
      up_blocks.push_back(UpBlock(s, i, input_channel, prev_output_channel));
      up_list->push_back(up_blocks.back());
    }

    conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(s.groups, s.block_out_channels[0], s.norm_eps));
    conv_out = register_module("conv_out", nn::Conv2d(s.block_out_channels[0], s.out_channels, s.conv_out_kernel, 1,
                                                      (s.conv_out_kernel - 1) / 2));
  }

  // unet_2d_condition.py UNet2DConditionModel.forward without the optional extras.
  torch::Tensor forward(torch::Tensor sample, const torch::Tensor& timestep, const torch::Tensor& context,
                        nn::CrossAttentionCache* cache, const AddedConditions& added) {
    const UNetShape& s = shape_;
    check_inputs(sample, timestep, context);
    check_added(added, sample.size(0));
    const int64_t batch = sample.size(0);

    // Sizes not divisible by the overall up factor make every upsampler follow its skip's size.
    const int64_t up_factor = int64_t{1} << (s.block_out_channels.size() - 1);
    const bool forward_upsample_size = sample.size(2) % up_factor != 0 || sample.size(3) % up_factor != 0;

    if (s.center_input_sample) sample = 2 * sample - 1.0;

    torch::Tensor timesteps = timestep.dim() == 0 ? timestep.unsqueeze(0) : timestep;
    timesteps = timesteps.to(sample.device()).expand({batch});
    torch::Tensor t_emb = nn::timestep_embedding(timesteps, s.block_out_channels[0], s.flip_sin_to_cos, s.freq_shift)
                              .to(sample.scalar_type());
    torch::Tensor emb = time_embedding(t_emb);
    if (add_embedding) emb = emb + add_embedding(added_embedding(added, emb.scalar_type()));

    torch::Tensor h = conv_in(sample);
    std::vector<torch::Tensor> skips{h};
    for (auto& block : down_blocks) h = block(h, emb, context, skips, cache);
    h = mid_block(h, emb, context, cache);
    for (size_t i = 0; i < up_blocks.size(); ++i) {
      std::optional<std::vector<int64_t>> upsample_size;
      const size_t remaining = skips.size() - up_blocks[i]->num_resnets();
      if (i + 1 < up_blocks.size() && forward_upsample_size) {
        upsample_size = std::vector<int64_t>{skips[remaining - 1].size(2), skips[remaining - 1].size(3)};
      }
      h = up_blocks[i](h, emb, context, skips, upsample_size, cache);
    }
    h = nn::activate(s.activation, conv_norm_out(h));
    return conv_out(h);
  }

  const Config& config() const { return config_; }
  const UNetShape& shape() const { return shape_; }

 private:
  // get_aug_embed's "text_time": the time ids' sinusoidal embeddings (float32, as Timesteps computes them)
  // flattened per sample after text_embeds, in the embedding's dtype.
  torch::Tensor added_embedding(const AddedConditions& added, torch::ScalarType dtype) const {
    const UNetShape& s = shape_;
    torch::Tensor time_embeds = nn::timestep_embedding(added.time_ids.flatten(), s.addition_time_embed_dim,
                                                       s.flip_sin_to_cos, s.freq_shift);
    time_embeds = time_embeds.reshape({added.text_embeds.size(0), -1});
    return torch::cat({added.text_embeds.to(torch::kFloat), time_embeds}, -1).to(dtype);
  }

  void check_added(const AddedConditions& added, int64_t batch) const {
    const UNetShape& s = shape_;
    if (!add_embedding) {
      if (added.defined()) throw Error("UNet2DConditionModel: text_embeds / time_ids given to a UNet without addition_embed_type");
      return;
    }
    const int64_t pooled = s.projection_class_embeddings_input_dim - 6 * s.addition_time_embed_dim;
    if (!added.text_embeds.defined() || added.text_embeds.dim() != 2 || added.text_embeds.size(0) != batch ||
        added.text_embeds.size(1) != pooled)
      throw Error("UNet2DConditionModel: addition_embed_type text_time needs text_embeds [" + std::to_string(batch) +
                  ", " + std::to_string(pooled) + "], got " +
                  (added.text_embeds.defined() ? c10::str(added.text_embeds.sizes()) : std::string("none")));
    if (!added.time_ids.defined() || added.time_ids.dim() != 2 || added.time_ids.size(0) != batch ||
        added.time_ids.size(1) != 6)
      throw Error("UNet2DConditionModel: addition_embed_type text_time needs time_ids [" + std::to_string(batch) +
                  ", 6], got " + (added.time_ids.defined() ? c10::str(added.time_ids.sizes()) : std::string("none")));
  }

  void check_inputs(const torch::Tensor& sample, const torch::Tensor& timestep, const torch::Tensor& context) const {
    const UNetShape& s = shape_;
    if (sample.dim() != 4 || sample.size(1) != s.in_channels)
      throw Error("UNet2DConditionModel: sample must be [B, " + std::to_string(s.in_channels) + ", h, w], got " +
                  c10::str(sample.sizes()));
    const int64_t batch = sample.size(0);
    if (timestep.dim() > 1 || (timestep.dim() == 1 && timestep.size(0) != batch && timestep.size(0) != 1))
      throw Error("UNet2DConditionModel: timestep must be 0-d or [" + std::to_string(batch) + "], got " +
                  c10::str(timestep.sizes()));
    const int64_t cross_dim = s.cross_attention_dim.back();
    if (context.dim() != 3 || context.size(0) != batch || context.size(2) != cross_dim)
      throw Error("UNet2DConditionModel: encoder_hidden_states must be [" + std::to_string(batch) + ", L, " +
                  std::to_string(cross_dim) + "], got " + c10::str(context.sizes()));
  }

  Config config_;
  UNetShape shape_;
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  nn::TimestepEmbedding time_embedding{nullptr}, add_embedding{nullptr};
  std::vector<DownBlock> down_blocks;
  MidBlock mid_block{nullptr};
  std::vector<UpBlock> up_blocks;
  nn::GroupNorm conv_norm_out{nullptr};
};

UNet2DConditionModel::UNet2DConditionModel(const Config& config)
    : impl_(std::make_shared<UNet2DConditionModelImpl>(config)) {}

torch::Tensor UNet2DConditionModel::forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                                            const torch::Tensor& encoder_hidden_states,
                                            nn::CrossAttentionCache* cache, const AddedConditions& added) {
  return impl_->forward(sample, timestep, encoder_hidden_states, cache, added);
}

torch::nn::Module& UNet2DConditionModel::module() { return *impl_; }
int64_t UNet2DConditionModel::in_channels() const { return impl_->shape().in_channels; }
int64_t UNet2DConditionModel::addition_time_embed_dim() const { return impl_->shape().addition_time_embed_dim; }
int64_t UNet2DConditionModel::projection_class_embeddings_input_dim() const {
  return impl_->shape().projection_class_embeddings_input_dim;
}
int64_t UNet2DConditionModel::sample_size() const { return impl_->config().get_int("sample_size"); }

}  // namespace taiyi
