// AutoencoderKL (diffusers 0.37.1 models/autoencoders/autoencoder_kl.py and vae.py) with the
// parameter names of its state dict: encoder.*, quant_conv.*, post_quant_conv.*, decoder.*. Every
// size comes from vae/config.json. Inference only; NCHW.
#include "taiyi/models/autoencoder_kl.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "taiyi/utils/error.h"
#include "taiyi/models/attention.h"
#include "taiyi/models/layers.h"
#include "taiyi/models/resnet.h"

namespace taiyi {

namespace {

// The VAE's resnets, attention and output norms use eps 1e-6 whatever the config says (vae.py).
constexpr double kVaeEps = 1e-6;

// The mid-block Attention (attention_processor.py, _from_deprecated_attn_block=True): group_norm,
// to_q/to_k/to_v/to_out.0 with biases, heads = channels / attention_head_dim = 1 (the Encoder
// and Decoder pass attention_head_dim = channels), residual connection, rescale 1.
class VaeAttentionImpl : public torch::nn::Module {
 public:
  VaeAttentionImpl(int64_t channels, int64_t groups) {
    group_norm = register_module("group_norm", nn::GroupNorm(groups, channels, kVaeEps));
    to_q = register_module("to_q", nn::Linear(channels, channels));
    to_k = register_module("to_k", nn::Linear(channels, channels));
    to_v = register_module("to_v", nn::Linear(channels, channels));
    to_out_0 = nn::Linear(channels, channels);
    to_out = register_module("to_out", torch::nn::ModuleList(to_out_0));
  }

  // AttnProcessor2_0 on a 4-d input. Its upcast_softmax flag is unused there: SDPA decides.
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
    torch::Tensor h = x.view({batch, channels, height * width}).transpose(1, 2);  // [B, HW, C]
    h = group_norm(h.transpose(1, 2)).transpose(1, 2);
    torch::Tensor out = nn::multi_head_attention(to_q(h), to_k(h), to_v(h), /*heads=*/1);
    out = to_out_0(out);                                                       // [B, HW, C]
    out = out.transpose(-1, -2).reshape({batch, channels, height, width});
    return out + x;
  }

 private:
  nn::GroupNorm group_norm{nullptr};
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out_0{nullptr};
  torch::nn::ModuleList to_out{nullptr};
};
TORCH_MODULE(VaeAttention);

// UNetMidBlock2D without time embedding: resnets.0, then (attentions.i, resnets.i+1).
class MidBlock2DImpl : public torch::nn::Module {
 public:
  MidBlock2DImpl(int64_t channels, int64_t groups, nn::Activation activation, bool add_attention) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    attentions = register_module("attentions", torch::nn::ModuleList());
    nn::ResnetBlock2DOptions o;
    o.in_channels = o.out_channels = channels;
    o.groups = groups;
    o.eps = kVaeEps;
    o.activation = activation;
    for (int i = 0; i < 2; ++i) {
      resnet_list.push_back(nn::ResnetBlock2D(o));
      resnets->push_back(resnet_list.back());
    }
    if (add_attention) {
      attention = VaeAttention(channels, groups);
      attentions->push_back(attention);
    }
  }

  torch::Tensor forward(torch::Tensor h) {
    h = resnet_list[0](h);
    if (attention) h = attention(h);
    return resnet_list[1](h);
  }

 private:
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
  std::vector<nn::ResnetBlock2D> resnet_list;
  VaeAttention attention{nullptr};
};
TORCH_MODULE(MidBlock2D);

// DownEncoderBlock2D (encoder) and UpDecoderBlock2D (decoder): resnets, then an optional
// downsamplers.0 (padding 0: diffusers pads right and bottom) or upsamplers.0.
class SamplingBlockImpl : public torch::nn::Module {
 public:
  SamplingBlockImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                    nn::Activation activation, bool down, bool add_sampler) {
    resnets = register_module("resnets", torch::nn::ModuleList());
    for (int64_t i = 0; i < num_layers; ++i) {
      nn::ResnetBlock2DOptions o;
      o.in_channels = i == 0 ? in_channels : out_channels;
      o.out_channels = out_channels;
      o.groups = groups;
      o.eps = kVaeEps;
      o.activation = activation;
      resnet_list.push_back(nn::ResnetBlock2D(o));
      resnets->push_back(resnet_list.back());
    }
    if (add_sampler && down) {
      downsampler = nn::Downsample2D(out_channels, out_channels, /*padding=*/0);
      register_module("downsamplers", torch::nn::ModuleList(downsampler));
    } else if (add_sampler) {
      upsampler = nn::Upsample2D(out_channels, out_channels);
      register_module("upsamplers", torch::nn::ModuleList(upsampler));
    }
  }

  torch::Tensor forward(torch::Tensor h) {
    for (auto& resnet : resnet_list) h = resnet(h);
    if (downsampler) h = downsampler(h);
    if (upsampler) h = upsampler(h);
    return h;
  }

 private:
  torch::nn::ModuleList resnets{nullptr};
  std::vector<nn::ResnetBlock2D> resnet_list;
  nn::Downsample2D downsampler{nullptr};
  nn::Upsample2D upsampler{nullptr};
};
TORCH_MODULE(SamplingBlock);

struct VaeShape {
  int64_t in_channels, out_channels, latent_channels, layers_per_block, groups;
  std::vector<int64_t> block_out_channels;
  nn::Activation activation;
  bool mid_block_add_attention;
};

// vae.py Encoder (double_z=True): conv_in, down_blocks, mid_block, conv_norm_out, SiLU, conv_out.
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const VaeShape& s) {
    const auto& channels = s.block_out_channels;
    conv_in = register_module("conv_in", nn::Conv2d(s.in_channels, channels.front(), 3, 1, 1));
    down_blocks = register_module("down_blocks", torch::nn::ModuleList());
    int64_t output_channel = channels.front();
    for (size_t i = 0; i < channels.size(); ++i) {
      int64_t input_channel = output_channel;
      output_channel = channels[i];
      blocks.push_back(SamplingBlock(input_channel, output_channel, s.layers_per_block, s.groups, s.activation,
                                     /*down=*/true, /*add_sampler=*/i + 1 < channels.size()));
      down_blocks->push_back(blocks.back());
    }
    mid_block = register_module("mid_block",
                                MidBlock2D(channels.back(), s.groups, s.activation, s.mid_block_add_attention));
    conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(s.groups, channels.back(), kVaeEps));
    conv_out = register_module("conv_out", nn::Conv2d(channels.back(), 2 * s.latent_channels, 3, 1, 1));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = conv_in(x);
    for (auto& block : blocks) h = block(h);
    h = mid_block(h);
    h = torch::silu(conv_norm_out(h));  // nn.SiLU whatever act_fn says
    return conv_out(h);
  }

 private:
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  std::vector<SamplingBlock> blocks;
  MidBlock2D mid_block{nullptr};
  nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Encoder);

// vae.py Decoder (norm_type "group"): conv_in, mid_block, up_blocks (layers_per_block + 1 resnets
// each), conv_norm_out, SiLU, conv_out.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const VaeShape& s) {
    std::vector<int64_t> reversed(s.block_out_channels.rbegin(), s.block_out_channels.rend());
    conv_in = register_module("conv_in", nn::Conv2d(s.latent_channels, reversed.front(), 3, 1, 1));
    mid_block = register_module("mid_block",
                                MidBlock2D(reversed.front(), s.groups, s.activation, s.mid_block_add_attention));
    up_blocks = register_module("up_blocks", torch::nn::ModuleList());
    int64_t output_channel = reversed.front();
    for (size_t i = 0; i < reversed.size(); ++i) {
      int64_t prev_output_channel = output_channel;
      output_channel = reversed[i];
      blocks.push_back(SamplingBlock(prev_output_channel, output_channel, s.layers_per_block + 1, s.groups,
                                     s.activation, /*down=*/false, /*add_sampler=*/i + 1 < reversed.size()));
      up_blocks->push_back(blocks.back());
    }
    conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(s.groups, reversed.back(), kVaeEps));
    conv_out = register_module("conv_out", nn::Conv2d(reversed.back(), s.out_channels, 3, 1, 1));
  }

  torch::Tensor forward(const torch::Tensor& z) {
    torch::Tensor h = conv_in(z);
    h = mid_block(h);
    for (auto& block : blocks) h = block(h);
    h = torch::silu(conv_norm_out(h));
    return conv_out(h);
  }

 private:
  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  MidBlock2D mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  std::vector<SamplingBlock> blocks;
  nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Decoder);

void check_block_types(const Config& config, const std::string& key, const std::string& expected, size_t count) {
  std::vector<std::string> types = config.get_string_list(key);
  if (types.size() != count)
    config.unsupported(key, "expected " + std::to_string(count) + " entries (one per block_out_channels)");
  for (const std::string& type : types) {
    if (type != expected) config.unsupported(key, "only " + expected + " blocks are supported, not " + type);
  }
}

VaeShape read_shape(const Config& config) {
  VaeShape s;
  s.in_channels = config.get_int("in_channels", 3);
  s.out_channels = config.get_int("out_channels", 3);
  s.latent_channels = config.get_int("latent_channels", 4);
  s.layers_per_block = config.get_int("layers_per_block", 1);
  s.groups = config.get_int("norm_num_groups", 32);
  s.block_out_channels = config.has("block_out_channels") ? config.get_int_list("block_out_channels")
                                                          : std::vector<int64_t>{64};
  if (s.block_out_channels.empty()) config.unsupported("block_out_channels", "expected at least one block");
  for (int64_t c : s.block_out_channels) {
    if (c <= 0 || c % s.groups != 0)
      config.unsupported("block_out_channels", "every entry must be a positive multiple of norm_num_groups");
  }
  s.activation = nn::activation_from_config(config, "act_fn", "silu");
  s.mid_block_add_attention = config.get_bool("mid_block_add_attention", true);
  const size_t blocks = s.block_out_channels.size();
  if (config.has("down_block_types")) check_block_types(config, "down_block_types", "DownEncoderBlock2D", blocks);
  if (config.has("up_block_types")) check_block_types(config, "up_block_types", "UpDecoderBlock2D", blocks);
  if (config.has("norm_type") && config.get_string("norm_type") != "group")
    config.unsupported("norm_type", "only \"group\" (AutoencoderKL) is supported");
  return s;
}

}  // namespace

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const Config& config) : shape(read_shape(config)) {
    encoder = register_module("encoder", Encoder(shape));
    decoder = register_module("decoder", Decoder(shape));
    const int64_t latent = shape.latent_channels;
    if (config.get_bool("use_quant_conv", true))
      quant_conv = register_module("quant_conv", nn::Conv2d(2 * latent, 2 * latent, 1));
    if (config.get_bool("use_post_quant_conv", true))
      post_quant_conv = register_module("post_quant_conv", nn::Conv2d(latent, latent, 1));
    scaling_factor = config.get_double("scaling_factor", 0.18215);
    force_upcast = config.get_bool("force_upcast", true);  // AutoencoderKL's default
    // latents_mean / latents_std (Playground v2.5's VAE) change the pipelines' scaling: not implemented.
    for (const char* key : {"latents_mean", "latents_std", "shift_factor"})
      if (config.has(key)) config.unsupported(key, "latent normalisation is not implemented (only scaling_factor)");
    // tile_sample_min_size: sample_size (an int, or a list whose first entry diffusers' tile_latent_min_size
    // uses); diffusers' default 32.
    const nlohmann::json& json = config.json();
    sample_size = json.contains("sample_size") && json["sample_size"].is_array()
                      ? config.get_int_list("sample_size").at(0)
                      : config.get_int("sample_size", 32);
  }

  VaeShape shape;
  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
  double scaling_factor = 0.18215;
  bool force_upcast = true;
  int64_t sample_size = 32;
};

AutoencoderKL::AutoencoderKL(const Config& config) : impl_(std::make_shared<AutoencoderKLImpl>(config)) {}

double AutoencoderKL::decoder_values_per_pixel() const {
  const std::vector<int64_t>& channels = impl_->shape.block_out_channels;
  const size_t levels = channels.size();
  double widest = 0;
  for (size_t i = 0; i < levels; ++i) {  // decoder level i: channels[levels-1-i] at 1/4^(levels-1-i) of the pixels
    const double c = static_cast<double>(channels[levels - 1 - i]);
    const double fraction = std::ldexp(1.0, -2 * static_cast<int>(levels - 1 - i));
    widest = std::max(widest, c * fraction);
    if (i + 1 < levels) widest = std::max(widest, c * fraction * 4);  // its upsampler's output
  }
  return widest;
}

static void check_input(const torch::Tensor& x, int64_t channels, const char* what) {
  if (x.dim() != 4 || x.size(1) != channels)
    throw Error(std::string("AutoencoderKL: ") + what + " must be [B, " + std::to_string(channels) +
                ", h, w], got " + c10::str(x.sizes()));
}

torch::Tensor AutoencoderKL::decode(const torch::Tensor& latents, const VaeTiling& tiling) {
  check_input(latents, impl_->shape.latent_channels, "latents");
  if (decode_tiles(latents.size(2), latents.size(3), tiling)) return tiled_decode(latents, tiling);
  torch::Tensor z = latents;
  if (impl_->post_quant_conv) z = impl_->post_quant_conv(z);
  return impl_->decoder(z);
}

// _encode: the moments (encoder, quant_conv), or with tiling on and a side over the tile _tiled_encode's.
static torch::Tensor encode_moments(AutoencoderKL& vae, AutoencoderKLImpl& impl, const torch::Tensor& images,
                                    const VaeTiling& tiling) {
  check_input(images, impl.shape.in_channels, "images");
  if (vae.encode_tiles(images.size(2), images.size(3), tiling)) return vae.tiled_encode(images, tiling);
  torch::Tensor moments = impl.encoder(images);
  if (impl.quant_conv) moments = impl.quant_conv(moments);
  return moments;
}

torch::Tensor AutoencoderKL::encode_mean(const torch::Tensor& images, const VaeTiling& tiling) {
  // DiagonalGaussianDistribution: mean, logvar = torch.chunk(parameters, 2, dim=1).
  return encode_moments(*this, *impl_, images, tiling).chunk(2, 1)[0];
}

std::pair<torch::Tensor, torch::Tensor> AutoencoderKL::encode_distribution(const torch::Tensor& images,
                                                                           const VaeTiling& tiling) {
  auto halves = encode_moments(*this, *impl_, images, tiling).chunk(2, 1);
  const torch::Tensor logvar = at::clamp(halves[1], -30.0, 20.0);
  return {halves[0], at::exp(at::mul(logvar, 0.5))};
}

torch::nn::Module& AutoencoderKL::module() { return *impl_; }
double AutoencoderKL::scaling_factor() const { return impl_->scaling_factor; }
bool AutoencoderKL::force_upcast() const { return impl_->force_upcast; }
int64_t AutoencoderKL::scale_factor() const {
  return int64_t{1} << (impl_->shape.block_out_channels.size() - 1);
}
int64_t AutoencoderKL::latent_channels() const { return impl_->shape.latent_channels; }

VaeTilingMode parse_vae_tiling_mode(const std::string& name) {
  if (name == "off") return VaeTilingMode::kOff;
  if (name == "on") return VaeTilingMode::kOn;
  if (name == "auto") return VaeTilingMode::kAuto;
  throw Error("--vae-tiling " + name + ": expected on, off or auto");
}

int64_t AutoencoderKL::tile_sample_size(const VaeTiling& tiling) const {
  return tiling.tile_sample_size > 0 ? tiling.tile_sample_size : impl_->sample_size;
}

int64_t AutoencoderKL::tile_latent_size(const VaeTiling& tiling) const {
  if (tiling.tile_latent_size > 0) return tiling.tile_latent_size;
  // int(sample_size / (2 ** (len(block_out_channels) - 1))): a true division, truncated.
  return static_cast<int64_t>(static_cast<double>(tile_sample_size(tiling)) / static_cast<double>(scale_factor()));
}

static bool tiling_on(const VaeTiling& tiling) {
  if (tiling.mode == VaeTilingMode::kAuto)
    throw Error("AutoencoderKL: VAE tiling \"auto\" is the pipeline's to resolve to on or off");
  return tiling.mode == VaeTilingMode::kOn;
}

// _decode / _encode: tiled only when a side is strictly greater than the tile.
bool AutoencoderKL::decode_tiles(int64_t latent_height, int64_t latent_width, const VaeTiling& tiling) const {
  const int64_t tile = tile_latent_size(tiling);
  return tiling_on(tiling) && (latent_width > tile || latent_height > tile);
}

bool AutoencoderKL::encode_tiles(int64_t height, int64_t width, const VaeTiling& tiling) const {
  const int64_t tile = tile_sample_size(tiling);
  return tiling_on(tiling) && (width > tile || height > tile);
}

namespace {

// blend_v (dim 2) and blend_h (dim 3) of autoencoder_kl.py: b's first `extent` rows (columns) faded in
// place from a's last ones. The weights are Python floats, i.e. doubles applied as scalars.
void blend(const torch::Tensor& a, const torch::Tensor& b, int64_t extent, int64_t dim) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double w = static_cast<double>(y) / static_cast<double>(extent);
    b.select(dim, y).copy_(at::add(at::mul(a.select(dim, a.size(dim) - extent + y), 1.0 - w), at::mul(b.select(dim, y), w)));
  }
}

// The loop of tiled_decode and _tiled_encode: tiles of `in_tile` a side every int(in_tile * (1 - overlap))
// through `run`, whose results are `out_tile` a side; each blended in raster order with the already
// blended results above it (blend_v) and to its left (blend_h) over int(out_tile * overlap), cropped to
// row_limit = out_tile - that, concatenated along W, then H. diffusers runs every tile before blending;
// a tile's result does not depend on the blending, so running a row and blending it at once gives the
// same numbers while only the row above stays alive.
torch::Tensor run_tiles(const torch::Tensor& x, int64_t in_tile, const char* unit, int64_t out_tile, const VaeTiling& tiling,
                        const std::function<torch::Tensor(const torch::Tensor&)>& run) {
  const auto step = static_cast<int64_t>(static_cast<double>(in_tile) * (1 - tiling.overlap));
  if (!(tiling.overlap >= 0 && tiling.overlap < 1) || step < 1)  // range(0, H, step) needs a positive step
    throw Error("VAE tiling: a tile of " + std::to_string(in_tile) + " " + unit +
                " with overlap " + std::to_string(tiling.overlap) + " leaves no step between tiles (tile too small)");
  const auto blend_extent = static_cast<int64_t>(static_cast<double>(out_tile) * tiling.overlap);
  const int64_t row_limit = out_tile - blend_extent;
  std::vector<torch::Tensor> above, result_rows;
  for (int64_t i = 0; i < x.size(2); i += step) {
    std::vector<torch::Tensor> row, result_row;
    for (int64_t j = 0; j < x.size(3); j += step) {
      torch::Tensor result = run(x.slice(2, i, i + in_tile).slice(3, j, j + in_tile));
      if (!above.empty()) blend(above[row.size()], result, blend_extent, 2);
      if (!row.empty()) blend(row.back(), result, blend_extent, 3);
      result_row.push_back(result.slice(2, 0, row_limit).slice(3, 0, row_limit));
      row.push_back(result);
    }
    result_rows.push_back(torch::cat(result_row, 3));
    above = std::move(row);
  }
  return torch::cat(result_rows, 2);
}

}  // namespace

torch::Tensor AutoencoderKL::tiled_decode(const torch::Tensor& latents, const VaeTiling& tiling) {
  check_input(latents, impl_->shape.latent_channels, "latents");
  return run_tiles(latents, tile_latent_size(tiling), "latents", tile_sample_size(tiling), tiling, [&](const torch::Tensor& tile) {
    return impl_->decoder(impl_->post_quant_conv ? impl_->post_quant_conv(tile) : tile);
  });
}

torch::Tensor AutoencoderKL::tiled_encode(const torch::Tensor& images, const VaeTiling& tiling) {
  check_input(images, impl_->shape.in_channels, "images");
  return run_tiles(images, tile_sample_size(tiling), "pixels", tile_latent_size(tiling), tiling, [&](const torch::Tensor& tile) {
    torch::Tensor moments = impl_->encoder(tile);
    return impl_->quant_conv ? impl_->quant_conv(moments) : moments;
  });
}

double AutoencoderKL::encoder_values_per_pixel() const {
  const std::vector<int64_t>& channels = impl_->shape.block_out_channels;
  double widest = 0;
  for (size_t i = 0; i < channels.size(); ++i)  // level i: channels[i] at 1/4^i of the pixels
    widest = std::max(widest, static_cast<double>(channels[i]) * std::ldexp(1.0, -2 * static_cast<int>(i)));
  return widest;
}

}  // namespace taiyi
