// TAESD's decoder: diffusers 0.37.1 models/autoencoders/autoencoder_tiny.py (AutoencoderTiny.decode),
// vae.py DecoderTiny and unets/unet_2d_blocks.py AutoencoderTinyBlock, with the parameter names of the
// state dict (decoder.layers.N.*); its loader for diffusers folders, diffusers-named files and
// madebyollin/taesd's own decoder files; the preview image. Inference only; NCHW.
#include "taiyi/models/autoencoder_tiny.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "taiyi/loaders/state_dict.h"
#include "taiyi/models/layers.h"
#include "taiyi/utils/error.h"

namespace fs = std::filesystem;

namespace taiyi {

namespace {

struct TinyShape {
  int64_t latent_channels = 4, out_channels = 3, upsampling_scaling_factor = 2;
  std::vector<int64_t> block_out_channels, num_blocks;  // per decoder stage
  nn::Activation activation = nn::Activation::ReLU;
};

// AutoencoderTinyBlock(channels, channels, act_fn), the decoder's (its in and out widths are equal, so
// `skip` is nn.Identity and has no weights): conv = Sequential(conv3x3, act, conv3x3, act, conv3x3), whose
// convolutions are conv.0, conv.2, conv.4; fuse is nn.ReLU whatever act_fn says.
class TinyBlockImpl : public torch::nn::Module {
 public:
  TinyBlockImpl(int64_t channels, nn::Activation activation) : activation_(activation) {
    auto conv = register_module("conv", std::make_shared<torch::nn::Module>());
    for (int i = 0; i < 3; ++i)
      convs_.push_back(conv->register_module(std::to_string(2 * i), nn::Conv2d(channels, channels, 3, 1, 1)));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = nn::activate(activation_, convs_[0](x));
    h = nn::activate(activation_, convs_[1](h));
    return torch::relu(convs_[2](h) + x);
  }

 private:
  std::vector<nn::Conv2d> convs_;
  nn::Activation activation_;
};
TORCH_MODULE(TinyBlock);

// DecoderTiny: layers = Sequential(conv(latent, C0), act, then per stage i: num_blocks[i] blocks,
// nn.Upsample(scale_factor, "nearest") and conv(Ci, Ci, bias=False) except after the last stage, which
// ends in conv(Ci, out_channels) with a bias). The parameter-free layers (act, Upsample) take their index
// in the Sequential, so the weighted ones keep diffusers' numbers.
class DecoderTinyImpl : public torch::nn::Module {
 public:
  explicit DecoderTinyImpl(const TinyShape& s) : shape_(s) {
    layers_ = register_module("layers", std::make_shared<torch::nn::Module>());
    add_conv(s.latent_channels, s.block_out_channels.front(), /*bias=*/true);
    steps_.push_back({Step::Activation, nullptr, nullptr});
    for (size_t i = 0; i < s.num_blocks.size(); ++i) {
      const bool is_final_block = i + 1 == s.num_blocks.size();
      const int64_t channels = s.block_out_channels[i];
      for (int64_t b = 0; b < s.num_blocks[i]; ++b) {
        TinyBlock block = layers_->register_module(std::to_string(steps_.size()), TinyBlock(channels, s.activation));
        steps_.push_back({Step::Block, nullptr, block});
      }
      if (!is_final_block) steps_.push_back({Step::Upsample, nullptr, nullptr});
      add_conv(channels, is_final_block ? s.out_channels : channels, /*bias=*/is_final_block);
    }
  }

  torch::Tensor forward(const torch::Tensor& latents) {
    torch::Tensor x = torch::tanh(latents / 3) * 3;  // DecoderTiny's "Clamp"
    const auto factor = static_cast<double>(shape_.upsampling_scaling_factor);
    for (Step& step : steps_) {
      switch (step.kind) {
        case Step::Conv: x = step.conv(x); break;
        case Step::Block: x = step.block(x); break;
        case Step::Activation: x = nn::activate(shape_.activation, x); break;
        case Step::Upsample:  // nn.Upsample -> F.interpolate(scale_factor=f): floor(size * f), scale passed on
          x = at::upsample_nearest2d(x, {x.size(2) * shape_.upsampling_scaling_factor,
                                         x.size(3) * shape_.upsampling_scaling_factor}, factor, factor);
          break;
      }
    }
    return x.mul(2).sub(1);  // [0, 1] -> [-1, 1], diffusers' convention
  }

 private:
  struct Step {
    enum Kind { Conv, Block, Activation, Upsample } kind;
    nn::Conv2d conv;
    TinyBlock block;
  };

  void add_conv(int64_t in, int64_t out, bool bias) {
    nn::Conv2d conv = layers_->register_module(std::to_string(steps_.size()), nn::Conv2d(in, out, 3, 1, 1, bias));
    steps_.push_back({Step::Conv, conv, nullptr});
  }

  TinyShape shape_;
  std::shared_ptr<torch::nn::Module> layers_;
  std::vector<Step> steps_;
};
TORCH_MODULE(DecoderTiny);

// A config whose decoder would not fit in memory is refused before anything is allocated: the released
// TAESD decoder has 1.2M parameters.
constexpr double kMaxParameters = double(int64_t{1} << 30);

TinyShape read_shape(const Config& config) {
  TinyShape s;
  s.latent_channels = config.get_int("latent_channels", 4);
  s.out_channels = config.get_int("out_channels", 3);
  s.upsampling_scaling_factor = config.get_int("upsampling_scaling_factor", 2);
  s.block_out_channels = config.has("decoder_block_out_channels") ? config.get_int_list("decoder_block_out_channels")
                                                                  : std::vector<int64_t>{64, 64, 64, 64};
  s.num_blocks = config.has("num_decoder_blocks") ? config.get_int_list("num_decoder_blocks")
                                                  : std::vector<int64_t>{3, 3, 3, 1};
  s.activation = nn::activation_from_config(config, "act_fn", "relu");
  if (config.get_string("upsample_fn", "nearest") != "nearest")
    config.unsupported("upsample_fn", "only \"nearest\" is supported");
  if (s.latent_channels <= 0 || s.latent_channels > 4096) config.unsupported("latent_channels", "expected 1 to 4096");
  if (s.out_channels <= 0 || s.out_channels > 4096) config.unsupported("out_channels", "expected 1 to 4096");
  if (s.upsampling_scaling_factor < 1 || s.upsampling_scaling_factor > 16)
    config.unsupported("upsampling_scaling_factor", "expected 1 to 16");
  if (s.block_out_channels.empty() || s.block_out_channels.size() > 16)
    config.unsupported("decoder_block_out_channels", "expected 1 to 16 stages");
  if (s.num_blocks.size() != s.block_out_channels.size())  // autoencoder_tiny.py raises the same
    config.unsupported("num_decoder_blocks", "should have the same length as decoder_block_out_channels");
  double parameters = 0;
  for (size_t i = 0; i < s.num_blocks.size(); ++i) {
    const int64_t c = s.block_out_channels[i];
    if (c <= 0 || c != s.block_out_channels.front())
      config.unsupported("decoder_block_out_channels",
                         "expected equal positive widths (DecoderTiny's stage convolutions keep a stage's width, so a "
                         "different next stage could not run)");
    if (s.num_blocks[i] < 0) config.unsupported("num_decoder_blocks", "expected counts of 0 or more");
    parameters += (3.0 * double(s.num_blocks[i]) + 1.0) * 9.0 * double(c) * double(c);
  }
  if (parameters > kMaxParameters)
    config.unsupported("decoder_block_out_channels", "a decoder of over 2^30 parameters (num_decoder_blocks too)");
  return s;
}

}  // namespace

class AutoencoderTinyImpl : public torch::nn::Module {
 public:
  explicit AutoencoderTinyImpl(const Config& config) : shape(read_shape(config)) {
    decoder = register_module("decoder", DecoderTiny(shape));
    scaling_factor = config.get_double("scaling_factor", 1.0);
    shift_factor = config.get_double("shift_factor", 0.0);
  }

  TinyShape shape;
  DecoderTiny decoder{nullptr};
  double scaling_factor = 1.0, shift_factor = 0.0;
};

AutoencoderTiny::AutoencoderTiny(const Config& config) : impl_(std::make_shared<AutoencoderTinyImpl>(config)) {}

torch::Tensor AutoencoderTiny::decode(const torch::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != impl_->shape.latent_channels)
    throw Error("AutoencoderTiny: latents must be [B, " + std::to_string(impl_->shape.latent_channels) +
                ", h, w], got " + c10::str(latents.sizes()));
  return impl_->decoder(latents);
}

torch::nn::Module& AutoencoderTiny::module() { return *impl_; }
int64_t AutoencoderTiny::latent_channels() const { return impl_->shape.latent_channels; }
int64_t AutoencoderTiny::out_channels() const { return impl_->shape.out_channels; }
int64_t AutoencoderTiny::scale_factor() const {
  int64_t factor = 1;
  for (size_t i = 1; i < impl_->shape.num_blocks.size(); ++i) factor *= impl_->shape.upsampling_scaling_factor;
  return factor;
}
double AutoencoderTiny::scaling_factor() const { return impl_->scaling_factor; }
double AutoencoderTiny::shift_factor() const { return impl_->shift_factor; }

namespace {

constexpr const char* kLayersPrefix = "decoder.layers.";

// "<N>.<rest>" from position `start` of `name`: N of at most 6 digits, rest not empty.
bool split_index(const std::string& name, size_t start, int64_t* index, std::string* rest) {
  const size_t dot = name.find('.', start);
  if (dot == std::string::npos || dot == start || dot - start > 6 || dot + 1 == name.size()) return false;
  for (size_t i = start; i < dot; ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  *index = std::stoll(name.substr(start, dot - start));
  *rest = name.substr(dot + 1);
  return true;
}

bool has_prefix(const StateDict& weights, const std::string& prefix) {
  for (const std::string& name : weights.names())
    if (name.rfind(prefix, 0) == 0) return true;
  return false;
}

// madebyollin/taesd's decoder keys as diffusers names them: taesd.py's Decoder is nn.Sequential(Clamp(),
// conv, ReLU, Block, ...), DecoderTiny's Sequential lacks the Clamp (its forward applies it), so N.* is
// decoder.layers.<N-1>.*. Other names pass unchanged, for load_weights to report as unexpected.
StateDict from_original_layout(const StateDict& original, const fs::path& file) {
  StateDict renamed = StateDict::named(file.string() + " (madebyollin/taesd layout, N.* read as decoder.layers.<N-1>.*)");
  for (const std::string& name : original.names()) {
    int64_t index = 0;
    std::string rest;
    std::string target = name;
    if (split_index(name, 0, &index, &rest)) {
      if (index == 0)
        throw Error(file.string() + ": key " + quoted_name(name) +
                    ": index 0 of taesd.py's Decoder is Clamp(), which has no weights");
      target = kLayersPrefix + std::to_string(index - 1) + "." + rest;
    }
    renamed.add(target, *original.find(name), original.origin(name));
  }
  return renamed;
}

const torch::Tensor& conv_weight(const StateDict& weights, int64_t index, const fs::path& file) {
  const std::string key = kLayersPrefix + std::to_string(index) + ".weight";
  const torch::Tensor* weight = weights.find(key);
  if (weight == nullptr)
    throw Error(file.string() + ": no " + quoted_name(key) + " (the first convolution): not a TAESD decoder");
  if (weight->dim() != 4)
    throw Error(file.string() + ": " + quoted_name(key) + " has shape " + c10::str(weight->sizes()) +
                ", expected a convolution [out, in, 3, 3]");
  return *weight;
}

// The sizes of a decoder in diffusers' names, which a single file does not state: latent_channels from
// layer 0, then per stage its blocks (layers with conv.*) up to the stage's convolution (a plain weight),
// whose input width is the stage's; the one with a bias is the last, its output width out_channels.
// Layer indices without weights are the activation and the upsamplers. Whatever else the file holds or
// lacks, load_weights then reports by name.
Config config_from_weights(const StateDict& weights, const fs::path& file) {
  std::set<int64_t> convs, biased, blocks;
  for (const std::string& name : weights.names()) {
    int64_t index = 0;
    std::string rest;
    if (name.rfind(kLayersPrefix, 0) != 0 || !split_index(name, std::string(kLayersPrefix).size(), &index, &rest))
      continue;
    if (rest == "weight") convs.insert(index);
    if (rest == "bias") biased.insert(index);
    if (rest.rfind("conv.", 0) == 0) blocks.insert(index);
  }
  nlohmann::json json = {{"latent_channels", conv_weight(weights, 0, file).size(1)}};
  std::vector<int64_t> channels, num_blocks;
  int64_t count = 0;
  std::set<int64_t> layers = convs;
  layers.insert(blocks.begin(), blocks.end());
  for (int64_t index : layers) {
    if (index == 0) continue;
    if (blocks.count(index)) {
      ++count;
      continue;
    }
    const torch::Tensor& weight = conv_weight(weights, index, file);
    channels.push_back(weight.size(1));
    num_blocks.push_back(count);
    count = 0;
    if (biased.count(index)) {
      json["out_channels"] = weight.size(0);
      break;
    }
  }
  if (!json.contains("out_channels"))
    throw Error(file.string() + ": no final convolution with a bias after the blocks: not a TAESD decoder");
  json["decoder_block_out_channels"] = channels;
  json["num_decoder_blocks"] = num_blocks;
  return Config(json, file.string() + " (sizes read from its weights)");
}

}  // namespace

AutoencoderTiny load_taesd(const fs::path& path, torch::Device device, torch::Dtype dtype) {
  const LoadOptions options(dtype, device, /*ignore_unexpected=*/{"encoder."});
  torch::NoGradGuard no_grad;
  if (fs::is_directory(path)) {
    const fs::path config_path = path / "config.json";
    if (!fs::exists(config_path))
      throw Error(path.string() + ": no config.json (expected a diffusers AutoencoderTiny folder or a TAESD file)");
    const Config config = Config::load(config_path);
    if (config.get_string("_class_name", "AutoencoderTiny") != "AutoencoderTiny")
      config.unsupported("_class_name", "expected AutoencoderTiny (TAESD)");
    AutoencoderTiny taesd(config);
    load_weights(taesd.module(), read_weights_files(component_weight_files(path, "")), options);
    return taesd;
  }
  if (!fs::exists(path)) throw Error(path.string() + ": no such TAESD file or folder");
  StateDict weights = read_weights_file(path);
  if (!has_prefix(weights, kLayersPrefix)) {
    if (!weights.contains("1.weight"))
      throw Error(path.string() + ": not a TAESD decoder: neither diffusers' 'decoder.layers.0.weight' nor " +
                  "madebyollin/taesd's '1.weight'" +
                  (weights.empty() ? std::string(" (no tensors)") : ", first key " + quoted_name(weights.names().front())));
    weights = from_original_layout(weights, path);
  }
  AutoencoderTiny taesd(config_from_weights(weights, path));
  load_weights(taesd.module(), weights, options);
  return taesd;
}

PixelImage taesd_preview(AutoencoderTiny& taesd, const torch::Tensor& latents, int64_t index) {
  if (latents.dim() != 4 || latents.size(1) != taesd.latent_channels())
    throw Error("TAESD preview: expected latents [B, " + std::to_string(taesd.latent_channels()) + ", h, w], got " +
                c10::str(latents.sizes()));
  if (index < 0 || index >= latents.size(0))
    throw Error("TAESD preview: no image " + std::to_string(index) + " in a batch of " + std::to_string(latents.size(0)));
  c10::InferenceMode guard;
  const torch::Tensor weight = taesd.module().parameters().front();
  const torch::Tensor sample = latents.narrow(0, index, 1).to(weight.device(), weight.scalar_type());
  torch::Tensor image = taesd.decode(sample / taesd.scaling_factor());
  image = (image * 0.5 + 0.5).clamp(0, 1);  // VaeImageProcessor.denormalize, in the decode's dtype
  // pt_to_numpy (permute, float) and numpy_to_pil: (x * 255).round().astype("uint8").
  const torch::Tensor bytes =
      (image[0].permute({1, 2, 0}).to(torch::kCPU, torch::kFloat) * 255).round().to(torch::kUInt8).contiguous();
  PixelImage out;
  out.height = bytes.size(0);
  out.width = bytes.size(1);
  out.channels = bytes.size(2);
  out.pixels.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  return out;
}

}  // namespace taiyi
