// Port of diffusers 0.37.1 loaders/single_file_utils.py (model type and LDM -> diffusers names), names and
// shapes only (include/taiyi/loaders/single_file_utils.h).
//
// diffusers matches names by substring (`f"input_blocks.{i}" in key`) and renames with str.replace. For
// the UNet, whose block count comes from the keys, taiyi parses each name instead (linear in the keys,
// where substring scans are quadratic) and refuses, with an Error, the names on which the two could
// differ: block indices that are not small decimal numbers, sub-indices over 9, block names nested in a
// name. For the VAE, whose block counts come from the config, the substring rules are kept as they are.
// Renames use replace_all, which is str.replace.
#include "taiyi/loaders/single_file_utils.h"

#include <algorithm>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

constexpr std::string_view kUnetPrefix = "model.diffusion_model.";  // LDM_UNET_KEY
constexpr int64_t kMaxBlockIndex = 999;                              // LDM UNets have 12 input/output blocks
constexpr int64_t kMaxConfigCount = 64;                              // layers_per_block, VAE block counts

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

// Python's str.replace(old, new) (every occurrence, left to right); an empty `old` changes nothing here,
// which is what the callers' `key.replace(prefix, "")` with prefix "" gives too.
std::string replace_all(std::string s, std::string_view old, std::string_view replacement) {
  if (old.empty()) return s;
  for (size_t at = s.find(old); at != std::string::npos; at = s.find(old, at + replacement.size()))
    s.replace(at, old.size(), replacement);
  return s;
}

// The file's keys by name (the first of repeated names).
class KeyIndex {
 public:
  explicit KeyIndex(const std::vector<CheckpointKey>& keys) : keys_(keys) {
    for (size_t i = 0; i < keys.size(); ++i) by_name_.emplace(keys[i].name, i);
  }
  const CheckpointKey* find(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &keys_[it->second];
  }
  const std::vector<CheckpointKey>& keys() const { return keys_; }

 private:
  const std::vector<CheckpointKey>& keys_;
  std::unordered_map<std::string, size_t> by_name_;
};

// The converted state dict: `to` -> the file's key, with Python dict semantics (assigning an existing name
// replaces its value and keeps its place), so that the later of two keys with one target wins as in diffusers.
class MappingBuilder {
 public:
  void put(const CheckpointKey& from, std::string to, bool conv_to_linear = false) {
    KeyMapping m{from.name, std::move(to), from.shape, conv_to_linear};
    if (conv_to_linear) m.shape = {m.shape.at(0), m.shape.at(1)};
    put(std::move(m));
  }
  void put(KeyMapping m) {
    const auto [it, inserted] = position_.emplace(m.to, mapped_.size());
    if (inserted) mapped_.push_back(std::move(m));
    else mapped_[it->second] = std::move(m);
  }
  KeyMapping* find(const std::string& to) {
    const auto it = position_.find(to);
    return it == position_.end() ? nullptr : &mapped_[it->second];
  }
  std::vector<KeyMapping>& mapped() { return mapped_; }
  // `unused`: the keys for which `belongs` holds that no mapping reads.
  template <typename Belongs>
  ConvertedKeys finish(const std::vector<CheckpointKey>& keys, Belongs belongs) {
    std::unordered_set<std::string> read;
    for (const KeyMapping& m : mapped_) read.insert(m.from);
    ConvertedKeys out;
    for (const CheckpointKey& key : keys)
      if (belongs(key.name) && !read.count(key.name)) out.unused.push_back(key.name);
    out.mapped = std::move(mapped_);
    return out;
  }

 private:
  std::vector<KeyMapping> mapped_;
  std::unordered_map<std::string, size_t> position_;
};

// A component's state dict after a prefix is stripped: stripped name -> the file's key, Python dict order.
struct StrippedDict {
  std::vector<std::pair<std::string, const CheckpointKey*>> entries;
  std::unordered_map<std::string, size_t> position;
  void put(std::string name, const CheckpointKey* key) {
    const auto [it, inserted] = position.emplace(name, entries.size());
    if (inserted) entries.emplace_back(std::move(name), key);
    else entries[it->second].second = key;
  }
  const CheckpointKey* find(const std::string& name) const {
    const auto it = position.find(name);
    return it == position.end() ? nullptr : entries[it->second].second;
  }
};

void check_count(int64_t value, const char* what, const std::string& file) {
  if (value < 1 || value > kMaxConfigCount)
    throw Error(file + ": " + what + " = " + std::to_string(value) + ": expected 1 to " +
                std::to_string(kMaxConfigCount));
}

// ---------------------------------------------------------------------------------------------------------
// Model type (infer_diffusers_model_type)

int64_t dim(const CheckpointKey* key, int64_t index) {  // shape[index], Python-style negative index; -1 if none
  if (!key) return -1;
  const int64_t n = static_cast<int64_t>(key->shape.size());
  if (index < 0) index += n;
  return index >= 0 && index < n ? key->shape[index] : -1;
}

}  // namespace

ModelType infer_model_type(const std::vector<CheckpointKey>& keys) {
  const KeyIndex index(keys);
  auto has = [&](const char* name) { return index.find(name) != nullptr; };
  const CheckpointKey* conv_in = index.find("model.diffusion_model.input_blocks.0.0.weight");
  const bool v2 = dim(index.find("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"), -1) == 1024;
  // diffusers' xl_base key needs a 10th OpenCLIP layer; taiyi also takes diffusers' open_clip_sdxl key (the
  // second encoder's position table), so that an SDXL of fewer layers (the tiny test pipelines) is SDXL too,
  // where diffusers would fall through to "v1". Real SDXL files (32 layers) get diffusers' answer.
  const bool xl_base = has("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias") ||
                       has("conditioner.embedders.1.model.positional_embedding");
  if (dim(conv_in, 1) == 9) return v2 ? ModelType::V2Inpainting : xl_base ? ModelType::XLInpaint : ModelType::V1Inpainting;
  if (v2) return ModelType::V2;
  if (has("edm_mean")) return ModelType::Playground;
  if (xl_base) return ModelType::XLBase;
  if (has("conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias") ||
      has("conditioner.embedders.0.model.text_projection"))  // the same for the refiner: open_clip_sdxl_refiner
    return ModelType::XLRefiner;
  if (has("model.diffusion_model.input_blocks.10.0.skip_connection.bias")) return ModelType::Upscale;
  if (has("control_model.time_embed.0.weight") || has("controlnet_cond_embedding.conv_in.weight"))
    return ModelType::ControlNet;
  if (dim(conv_in, 1) == 8) return ModelType::InstructPix2Pix;
  // diffusers' fall-through is "v1", whatever the file holds; taiyi wants an LDM UNet to call it one.
  if (conv_in) return ModelType::V1;
  for (const char* vae : {"encoder.conv_in.weight", "first_stage_model.encoder.conv_in.weight", "vae.encoder.conv_in.weight",
                          "decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"})
    if (has(vae)) return ModelType::Vae;
  return ModelType::NotStableDiffusion;
}

std::string model_type_name(ModelType type) {
  switch (type) {
    case ModelType::V1: return "SD 1.x";
    case ModelType::V1Inpainting: return "SD 1.x inpainting";
    case ModelType::V2: return "SD 2.x";
    case ModelType::V2Inpainting: return "SD 2.x inpainting";
    case ModelType::XLBase: return "SDXL";
    case ModelType::XLInpaint: return "SDXL inpainting";
    case ModelType::XLRefiner: return "SDXL refiner";
    case ModelType::Playground: return "Playground v2.5";
    case ModelType::Upscale: return "SD x4 upscaler";
    case ModelType::ControlNet: return "ControlNet";
    case ModelType::InstructPix2Pix: return "instruct-pix2pix";
    case ModelType::Vae: return "VAE";
    case ModelType::NotStableDiffusion: break;
  }
  return "not a Stable Diffusion";
}

bool is_sdxl_model_type(ModelType type) { return type == ModelType::XLBase || type == ModelType::XLInpaint; }

void check_model_type(ModelType type, const std::string& file) {
  if (type == ModelType::V1 || type == ModelType::V1Inpainting || is_sdxl_model_type(type)) return;
  std::string what = "a " + model_type_name(type) + " checkpoint";
  if (type == ModelType::Vae) what = "a VAE file without a UNet (use it with --vae)";
  if (type == ModelType::NotStableDiffusion)
    what = "not a Stable Diffusion checkpoint (no model.diffusion_model.input_blocks.0.0.weight)";
  throw Error(file + ": " + what + "; taiyi runs SD 1.x and SDXL checkpoints (and their inpainting models)");
}

std::optional<TextEncoderKind> infer_text_encoder_kind(const std::vector<CheckpointKey>& keys) {
  const KeyIndex index(keys);
  for (const char* clip : {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                           "cond_stage_model.transformer.embeddings.token_embedding.weight",
                           "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"})
    if (index.find(clip)) return TextEncoderKind::Clip;
  for (const char* bert : {"cond_stage_model.transformer.embeddings.word_embeddings.weight",
                           "cond_stage_model.transformer.bert.embeddings.word_embeddings.weight"})
    if (index.find(bert)) return TextEncoderKind::Bert;
  return std::nullopt;
}

bool has_ema_weights(const std::vector<CheckpointKey>& keys) {
  size_t count = 0;
  for (const CheckpointKey& key : keys) count += starts_with(key.name, "model_ema");
  return count > 100;
}

// ---------------------------------------------------------------------------------------------------------
// UNet (convert_ldm_unet_checkpoint)

namespace {

// "model.diffusion_model." stripped; which block it is in.
struct UnetKey {
  std::string name;             // stripped
  const CheckpointKey* source;  // the tensor read (the EMA one with extract_ema)
  enum Group { Other, Input, Middle, Output } group = Other;
  int64_t block = 0;
  int64_t sub = -1;      // the TimestepEmbedSequential slot: input/output blocks only
  std::string rest;      // after "<group>.<block>.<sub>." (input/output) or "<group>.<block>." (middle)
};

// A canonical decimal number ("0" or no leading zero) up to `max`, else -1.
int64_t parse_index(std::string_view text, int64_t max) {
  if (text.empty() || text.size() > 4 || (text.size() > 1 && text[0] == '0')) return -1;
  int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    value = value * 10 + (c - '0');
  }
  return value <= max ? value : -1;
}

[[noreturn]] void malformed(const std::string& file, const std::string& key, const std::string& what) {
  throw Error(file + ": tensor " + quoted_name(key) + ": " + what);
}

// Splits "<group>.<block>[.<sub>].<rest>"; Error for the names on which diffusers' substring matching and
// this parse could differ.
void classify(UnetKey& key, const std::string& full, const std::string& file) {
  static const std::pair<std::string_view, UnetKey::Group> groups[] = {
      {"input_blocks", UnetKey::Input}, {"middle_block", UnetKey::Middle}, {"output_blocks", UnetKey::Output}};
  const std::string_view name = key.name;
  for (const auto& [group_name, group] : groups) {
    const size_t at = name.find(group_name);
    if (at == std::string_view::npos) continue;
    if (at != 0 || name.find(group_name, 1) != std::string_view::npos || key.group != UnetKey::Other)
      malformed(file, full, "a block name inside another name");
    if (name.substr(group_name.size(), 1) != ".")
      malformed(file, full, "no block index after '" + std::string(group_name) + "'");
    key.group = group;
  }
  if (key.group == UnetKey::Other) return;
  const bool middle = key.group == UnetKey::Middle;
  std::string_view rest = name.substr(name.find('.') == std::string_view::npos ? name.size() : name.find('.') + 1);
  auto next = [&](int64_t max, const char* what) {
    const size_t dot = rest.find('.');
    if (dot == std::string_view::npos) malformed(file, full, std::string("no parameter name after the ") + what);
    const int64_t value = parse_index(rest.substr(0, dot), max);
    if (value < 0) malformed(file, full, std::string(what) + " is not a number from 0 to " + std::to_string(max));
    rest = rest.substr(dot + 1);
    return value;
  };
  // diffusers finds middle blocks by `f"middle_block.{i}" in key` and sub-slots by `f"...{i}.1" in key`
  // (prefixes: block 1 would take 12, slot 1 would take 10), so those stay single digits.
  key.block = next(middle ? 9 : kMaxBlockIndex, "block index");
  if (!middle) key.sub = next(9, "block slot");
  key.rest = std::string(rest);
}

std::string str(int64_t value) { return std::to_string(value); }

std::string rename_resnet(const std::string& name) {  // update_unet_resnet_ldm_to_diffusers
  std::string s = replace_all(name, "in_layers.0", "norm1");
  s = replace_all(std::move(s), "in_layers.2", "conv1");
  s = replace_all(std::move(s), "out_layers.0", "norm2");
  s = replace_all(std::move(s), "out_layers.3", "conv2");
  s = replace_all(std::move(s), "emb_layers.1", "time_emb_proj");
  return replace_all(std::move(s), "skip_connection", "conv_shortcut");
}

using Blocks = std::unordered_map<int64_t, std::vector<const UnetKey*>>;

int64_t count_blocks(const Blocks& blocks) { return static_cast<int64_t>(blocks.size()); }

const std::vector<const UnetKey*>& block_keys(const Blocks& blocks, int64_t id) {
  static const std::vector<const UnetKey*> none;
  const auto it = blocks.find(id);
  return it == blocks.end() ? none : it->second;
}

// A sampler conv (`…op.weight`, `…1.conv.weight`): diffusers reads the weight, and the bias beside it.
void put_sampler(MappingBuilder& out, const std::unordered_map<std::string, const UnetKey*>& by_name,
                 const std::string& ldm, const std::string& diffusers) {
  const auto weight = by_name.find(ldm + ".weight");
  if (weight == by_name.end()) return;
  out.put(*weight->second->source, diffusers + ".weight");
  const auto bias = by_name.find(ldm + ".bias");
  if (bias != by_name.end()) out.put(*bias->second->source, diffusers + ".bias");
}

void convert_down_blocks(MappingBuilder& out, const Blocks& input, const std::unordered_map<std::string, const UnetKey*>& by_name,
                         int64_t layers_per_block) {
  for (int64_t i = 1; i < count_blocks(input); ++i) {
    const std::string block = str((i - 1) / (layers_per_block + 1)), layer = str((i - 1) % (layers_per_block + 1));
    const std::string ldm = "input_blocks." + str(i);
    for (const UnetKey* key : block_keys(input, i))
      if (key->sub == 0 && !starts_with(key->rest, "op"))
        out.put(*key->source, replace_all(rename_resnet(key->name), ldm + ".0", "down_blocks." + block + ".resnets." + layer));
    put_sampler(out, by_name, ldm + ".0.op", "down_blocks." + block + ".downsamplers.0.conv");
    for (const UnetKey* key : block_keys(input, i))
      if (key->sub == 1)
        out.put(*key->source, replace_all(key->name, ldm + ".1", "down_blocks." + block + ".attentions." + layer));
  }
}

void convert_mid_block(MappingBuilder& out, const Blocks& middle) {
  for (int64_t i = 0; i < count_blocks(middle); ++i) {
    const std::string ldm = "middle_block." + str(i), index = str(i > 0 ? i - 1 : 0);
    for (const UnetKey* key : block_keys(middle, i)) {
      if (i % 2 == 0) out.put(*key->source, replace_all(rename_resnet(key->name), ldm, "mid_block.resnets." + index));
      else out.put(*key->source, replace_all(key->name, ldm, "mid_block.attentions." + index));
    }
  }
}

void convert_up_blocks(MappingBuilder& out, const Blocks& output, const std::unordered_map<std::string, const UnetKey*>& by_name,
                       int64_t layers_per_block) {
  for (int64_t i = 0; i < count_blocks(output); ++i) {
    const std::string block = str(i / (layers_per_block + 1)), layer = str(i % (layers_per_block + 1));
    const std::string ldm = "output_blocks." + str(i);
    for (const UnetKey* key : block_keys(output, i))
      if (key->sub == 0 && !starts_with(key->rest, "op"))
        out.put(*key->source, replace_all(rename_resnet(key->name), ldm + ".0", "up_blocks." + block + ".resnets." + layer));
    for (const UnetKey* key : block_keys(output, i))
      if (key->sub == 1 && !starts_with(key->rest, "conv"))
        out.put(*key->source, replace_all(key->name, ldm + ".1", "up_blocks." + block + ".attentions." + layer));
    // The upsampler is slot 1 in a block without attention, slot 2 after one; diffusers tries both.
    put_sampler(out, by_name, ldm + ".1.conv", "up_blocks." + block + ".upsamplers.0.conv");
    put_sampler(out, by_name, ldm + ".2.conv", "up_blocks." + block + ".upsamplers.0.conv");
  }
}

// The UNet's keys, stripped and classified; with extract_ema each reads its LitEma twin
// ("model_ema." + the name after "model." without dots).
std::vector<UnetKey> unet_keys(const KeyIndex& index, const std::string& file, bool use_ema) {
  std::vector<UnetKey> keys;
  for (const CheckpointKey& key : index.keys()) {
    if (!starts_with(key.name, kUnetPrefix)) continue;
    UnetKey k;
    k.name = key.name.substr(kUnetPrefix.size());
    k.source = &key;
    if (use_ema) {
      std::string flat = "model_ema.";
      for (char c : std::string_view(key.name).substr(key.name.find('.') + 1))
        if (c != '.') flat += c;
      k.source = index.find(flat);
      if (!k.source)
        throw Error(file + ": EMA weights were asked for, but " + quoted_name(key.name) + " has no EMA twin " +
                    quoted_name(flat));
    }
    keys.push_back(std::move(k));
  }
  return keys;
}

// What convert_ldm_unet_checkpoint reads of the UNet config.
struct UnetConversion {
  int64_t layers_per_block = 0;
  bool class_embedding = false;     // class_embed_type "timestep" | "projection"
  bool addition_embedding = false;  // addition_embed_type "text_time" (SDXL)
  bool num_class_embeds = false;    // num_class_embeds set (the x4 upscaler's label_emb.weight)
};

// DIFFUSERS_TO_LDM_MAPPING["unet"]["class_embed_type"] / ["addition_embed_type"]: the `label_emb.0` MLP.
void put_label_embedding(MappingBuilder& out, const std::unordered_map<std::string, const UnetKey*>& by_name,
                         const std::string& diffusers, const std::string& file) {
  static const std::pair<const char*, const char*> parts[] = {{"linear_1.weight", "label_emb.0.0.weight"},
                                                              {"linear_1.bias", "label_emb.0.0.bias"},
                                                              {"linear_2.weight", "label_emb.0.2.weight"},
                                                              {"linear_2.bias", "label_emb.0.2.bias"}};
  for (const auto& [name, ldm] : parts) {
    const auto it = by_name.find(ldm);
    if (it == by_name.end())  // diffusers: KeyError
      throw Error(file + ": the UNet config asks for " + diffusers + ", but the file has no " +
                  quoted_name(std::string(kUnetPrefix) + ldm));
    out.put(*it->second->source, diffusers + "." + name);
  }
}

ConvertedKeys convert_unet(const std::vector<CheckpointKey>& keys, const std::string& file, const UnetConversion& config,
                           bool extract_ema) {
  const int64_t layers_per_block = config.layers_per_block;
  check_count(layers_per_block, "layers_per_block", file);
  const KeyIndex index(keys);
  std::vector<UnetKey> unet = unet_keys(index, file, extract_ema && has_ema_weights(keys));
  std::unordered_map<std::string, const UnetKey*> by_name;
  Blocks input, middle, output;
  for (UnetKey& key : unet) {
    classify(key, std::string(kUnetPrefix) + key.name, file);
    by_name.emplace(key.name, &key);
    if (key.group == UnetKey::Input) input[key.block].push_back(&key);
    if (key.group == UnetKey::Middle) middle[key.block].push_back(&key);
    if (key.group == UnetKey::Output) output[key.block].push_back(&key);
  }
  MappingBuilder out;
  // DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].
  static const std::pair<const char*, const char*> layers[] = {
      {"time_embedding.linear_1.weight", "time_embed.0.weight"}, {"time_embedding.linear_1.bias", "time_embed.0.bias"},
      {"time_embedding.linear_2.weight", "time_embed.2.weight"}, {"time_embedding.linear_2.bias", "time_embed.2.bias"},
      {"conv_in.weight", "input_blocks.0.0.weight"},             {"conv_in.bias", "input_blocks.0.0.bias"},
      {"conv_norm_out.weight", "out.0.weight"},                  {"conv_norm_out.bias", "out.0.bias"},
      {"conv_out.weight", "out.2.weight"},                       {"conv_out.bias", "out.2.bias"}};
  for (const auto& [diffusers, ldm] : layers) {
    const auto it = by_name.find(ldm);
    if (it != by_name.end()) out.put(*it->second->source, diffusers);
  }
  if (config.class_embedding) put_label_embedding(out, by_name, "class_embedding", file);
  if (config.addition_embedding) put_label_embedding(out, by_name, "add_embedding", file);
  if (config.num_class_embeds && by_name.count("label_emb.weight"))
    out.put(*by_name.at("label_emb.weight")->source, "class_embedding.weight");
  convert_down_blocks(out, input, by_name, layers_per_block);
  convert_mid_block(out, middle);
  convert_up_blocks(out, output, by_name, layers_per_block);
  return out.finish(keys, [](const std::string& name) {
    return starts_with(name, kUnetPrefix) || starts_with(name, "model_ema");
  });
}

}  // namespace

ConvertedKeys convert_ldm_unet_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                          int64_t layers_per_block, bool extract_ema) {
  UnetConversion config;
  config.layers_per_block = layers_per_block;
  return convert_unet(keys, file, config, extract_ema);
}

ConvertedKeys convert_ldm_unet_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                          const Config& unet_config, bool extract_ema) {
  // `"class_embed_type" in config and config["class_embed_type"] in [...]`: a null or other value is no.
  const std::string class_type = unet_config.has("class_embed_type") && unet_config.json().at("class_embed_type").is_string()
                                     ? unet_config.json().at("class_embed_type").get<std::string>() : "";
  const nlohmann::json& json = unet_config.json();
  const UnetConversion config{unet_config.get_int("layers_per_block"), class_type == "timestep" || class_type == "projection",
                              json.contains("addition_embed_type") && json.at("addition_embed_type") == "text_time",
                              unet_config.has("num_class_embeds")};
  return convert_unet(keys, file, config, extract_ema);
}

// ---------------------------------------------------------------------------------------------------------
// VAE (convert_ldm_vae_checkpoint)

namespace {

std::string rename_vae_resnet(const std::string& name, const std::string& old, const std::string& replacement) {
  return replace_all(replace_all(name, old, replacement), "nin_shortcut", "conv_shortcut");
}

// update_vae_attentions_ldm_to_diffusers: renamed, and 3-D / 4-D weights sliced to Linear ones.
void put_vae_attention(MappingBuilder& out, const StrippedDict& vae, const std::string& side) {
  static const std::pair<const char*, const char*> parts[] = {
      {"norm.weight", "group_norm.weight"}, {"norm.bias", "group_norm.bias"}, {"q.weight", "to_q.weight"},
      {"q.bias", "to_q.bias"},              {"k.weight", "to_k.weight"},      {"k.bias", "to_k.bias"},
      {"v.weight", "to_v.weight"},          {"v.bias", "to_v.bias"},          {"proj_out.weight", "to_out.0.weight"},
      {"proj_out.bias", "to_out.0.bias"}};
  for (const auto& [name, key] : vae.entries) {
    if (!contains(name, side + ".mid.attn")) continue;
    std::string to = replace_all(name, "mid.attn_1", "mid_block.attentions.0");
    for (const auto& [old, replacement] : parts) to = replace_all(std::move(to), old, replacement);
    const size_t dims = key->shape.size();
    out.put(*key, std::move(to), dims == 3 || dims == 4);
  }
}

void put_vae_mid_resnets(MappingBuilder& out, const StrippedDict& vae, const std::string& side) {
  for (int i = 1; i <= 2; ++i)
    for (const auto& [name, key] : vae.entries)
      if (contains(name, side + ".mid.block") && contains(name, side + ".mid.block_" + str(i)))
        out.put(*key, rename_vae_resnet(name, "mid.block_" + str(i), "mid_block.resnets." + str(i - 1)));
}

void put_vae_sampler(MappingBuilder& out, const StrippedDict& vae, const std::string& ldm, const std::string& diffusers) {
  if (!vae.find(ldm + ".weight")) return;
  out.put(*vae.find(ldm + ".weight"), diffusers + ".weight");
  if (const CheckpointKey* bias = vae.find(ldm + ".bias")) out.put(*bias, diffusers + ".bias");
}

// One level of the encoder (`down.i` -> `down_blocks.i`) or decoder (`up.k` -> `up_blocks.j`): its resnets
// are every key holding `down.i` but not `down.i.downsample` (diffusers' substring match), then its sampler.
void put_vae_level(MappingBuilder& out, const StrippedDict& vae, const std::string& side, const std::string& ldm,
                   const std::string& sampler, const std::string& diffusers) {
  for (const auto& [name, key] : vae.entries)
    if (contains(name, ldm) && !contains(name, ldm + "." + sampler))
      out.put(*key, rename_vae_resnet(name, ldm + ".block", diffusers + ".resnets"));
  put_vae_sampler(out, vae, side + "." + ldm + "." + sampler + ".conv", side + "." + diffusers + "." + sampler + "rs.0.conv");
}

void convert_vae_blocks(MappingBuilder& out, const StrippedDict& vae, int64_t num_down, int64_t num_up) {
  for (int64_t i = 0; i < num_down; ++i) put_vae_level(out, vae, "encoder", "down." + str(i), "downsample", "down_blocks." + str(i));
  put_vae_mid_resnets(out, vae, "encoder");
  put_vae_attention(out, vae, "encoder");
  for (int64_t i = 0; i < num_up; ++i)  // the LDM decoder counts its up blocks from the bottom
    put_vae_level(out, vae, "decoder", "up." + str(num_up - 1 - i), "upsample", "up_blocks." + str(i));
  put_vae_mid_resnets(out, vae, "decoder");
  put_vae_attention(out, vae, "decoder");
}

// conv_attn_to_linear, run by diffusers on the converted dict: it slices weights still named like the
// 2022 attention; after the renames only a name the VAE does not have can be one, and only the slices
// that give a Linear weight are expressible here.
void conv_attn_to_linear(std::vector<KeyMapping>& mapped, const std::string& file) {
  for (KeyMapping& m : mapped) {
    const size_t dims = m.shape.size();
    const size_t last_dot = m.to.rfind('.');
    const size_t dot = last_dot == std::string::npos || last_dot == 0 ? std::string::npos : m.to.rfind('.', last_dot - 1);
    const std::string last_two = dot == std::string::npos ? m.to : m.to.substr(dot + 1);
    const bool qkv = last_two == "query.weight" || last_two == "key.weight" || last_two == "value.weight";
    if ((qkv && dims == 4) || (!qkv && contains(m.to, "proj_attn.weight") && dims == 3)) {
      m.conv_to_linear = true;
      m.shape = {m.shape[0], m.shape[1]};
    } else if ((qkv || contains(m.to, "proj_attn.weight")) && dims > 2) {
      throw Error(file + ": tensor " + quoted_name(m.from) + " of " + str(static_cast<int64_t>(dims)) +
                  " dimensions, named like an attention weight: expected a 1x1 convolution");
    }
  }
}

}  // namespace

ConvertedKeys convert_ldm_vae_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                         int64_t num_down_blocks, int64_t num_up_blocks) {
  check_count(num_down_blocks, "the VAE's number of down blocks", file);
  check_count(num_up_blocks, "the VAE's number of up blocks", file);
  std::string prefix;  // the last of LDM_VAE_KEYS that a key starts with
  for (const char* candidate : {"first_stage_model.", "vae."})
    for (const CheckpointKey& key : keys)
      if (starts_with(key.name, candidate)) {
        prefix = candidate;
        break;
      }
  StrippedDict vae;
  for (const CheckpointKey& key : keys)
    if (starts_with(key.name, prefix)) vae.put(replace_all(key.name, prefix, ""), &key);
  MappingBuilder out;
  for (const char* side : {"encoder.", "decoder."})  // DIFFUSERS_TO_LDM_MAPPING["vae"]
    for (const auto& [diffusers, ldm] : {std::pair<const char*, const char*>{"conv_in", "conv_in"}, {"conv_out", "conv_out"},
                                         {"conv_norm_out", "norm_out"}})
      for (const char* leaf : {".weight", ".bias"})
        if (const CheckpointKey* key = vae.find(side + std::string(ldm) + leaf)) out.put(*key, side + std::string(diffusers) + leaf);
  for (const char* conv : {"quant_conv", "post_quant_conv"})
    for (const char* leaf : {".weight", ".bias"})
      if (const CheckpointKey* key = vae.find(conv + std::string(leaf))) out.put(*key, conv + std::string(leaf));
  convert_vae_blocks(out, vae, num_down_blocks, num_up_blocks);
  conv_attn_to_linear(out.mapped(), file);
  return out.finish(keys, [&](const std::string& name) { return starts_with(name, prefix); });
}

// ---------------------------------------------------------------------------------------------------------
// Text encoders

ConvertedKeys convert_ldm_clip_checkpoint(const std::vector<CheckpointKey>& keys) {
  static const std::pair<std::string_view, std::string_view> webui_sd1[] = {
      {"cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.text_model.embeddings."},
      {"cond_stage_model.transformer.encoder.", "cond_stage_model.transformer.text_model.encoder."},
      {"cond_stage_model.transformer.final_layer_norm.", "cond_stage_model.transformer.text_model.final_layer_norm."}};
  static const std::string_view prefixes[] = {"cond_stage_model.transformer.", "conditioner.embedders.0.transformer."};
  MappingBuilder out;
  for (const CheckpointKey& key : keys) {
    std::string name = key.name;
    for (const auto& [old, replacement] : webui_sd1)  // transform_checkpoint_dict_key
      if (starts_with(name, old)) name = std::string(replacement) + name.substr(old.size());
    for (std::string_view prefix : prefixes)
      if (starts_with(name, prefix)) out.put(key, replace_all(name, prefix, ""));
  }
  return out.finish(keys, [](const std::string& name) {
    return starts_with(name, "cond_stage_model.") || starts_with(name, prefixes[1]);
  });
}

namespace {

// SD_2_TEXT_ENCODER_KEYS_TO_IGNORE: SD 2.x's last OpenCLIP layer (and projection), which diffusers never reads.
bool sd2_key_to_ignore(const std::string& name) {
  static const std::string layer = "cond_stage_model.model.transformer.resblocks.23.";
  static const std::unordered_set<std::string> parts = {
      "attn.in_proj_bias", "attn.in_proj_weight", "attn.out_proj.bias", "attn.out_proj.weight", "ln_1.bias", "ln_1.weight",
      "ln_2.bias",         "ln_2.weight",         "mlp.c_fc.bias",      "mlp.c_fc.weight",      "mlp.c_proj.bias", "mlp.c_proj.weight"};
  return name == "cond_stage_model.model.text_projection" || (starts_with(name, layer) && parts.count(name.substr(layer.size())));
}

// An OpenCLIP in_proj_weight / in_proj_bias as diffusers slices it: rows [:d], [d:2d] and [2d:] (clamped as
// Python's slices are) become q_proj, k_proj and v_proj.
void put_fused_projection(MappingBuilder& out, const CheckpointKey& key, const std::string& to, int64_t d,
                          const std::string& leaf, const std::string& file) {
  const size_t dims = leaf == "weight" ? 2 : 1;  // w[:d, :] needs two dimensions, b[:d] one
  if (key.shape.size() < dims)
    throw Error(file + ": tensor " + quoted_name(key.name) + " of " + str(static_cast<int64_t>(key.shape.size())) +
                " dimensions: expected at least " + str(static_cast<int64_t>(dims)));
  const int64_t rows = std::max<int64_t>(key.shape[0], 0), q_end = std::min(d, rows);
  const int64_t bounds[] = {0, q_end, q_end + std::min(d, rows - q_end), rows};  // no 2 * d: it could overflow
  static const char* parts[] = {"q_proj", "k_proj", "v_proj"};
  for (int i = 0; i < 3; ++i) {
    KeyMapping m{key.name, to + "." + parts[i] + "." + leaf, key.shape};
    m.shape[0] = bounds[i + 1] - bounds[i];
    m.row_begin = bounds[i];
    out.put(std::move(m));
  }
}

}  // namespace

ConvertedKeys convert_open_clip_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                           const std::string& prefix, int64_t hidden_size) {
  const KeyIndex index(keys);
  const CheckpointKey* projection = index.find(prefix + "text_projection");
  if (projection && projection->shape.size() != 2)
    throw Error(file + ": tensor " + quoted_name(projection->name) + " of " +
                str(static_cast<int64_t>(projection->shape.size())) + " dimensions: expected [hidden, projection]");
  const int64_t d = projection ? projection->shape[0] : hidden_size;  // the q/k/v split
  if (d < 1) throw Error(file + ": OpenCLIP width " + str(d) + " (text_projection's first dimension): expected at least 1");
  // DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"], in its order.
  static const std::pair<const char*, const char*> layers[] = {
      {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
      {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
      {"text_model.final_layer_norm.weight", "ln_final.weight"},
      {"text_model.final_layer_norm.bias", "ln_final.bias"},
      {"text_projection.weight", "text_projection"}};
  MappingBuilder out;
  for (const auto& [diffusers, ldm] : layers) {
    const CheckpointKey* key = index.find(prefix + ldm);
    if (!key || sd2_key_to_ignore(key->name)) continue;
    if (key != projection) {
      out.put(*key, diffusers);
      continue;
    }
    KeyMapping m{key->name, diffusers, {key->shape[1], key->shape[0]}};
    m.transpose = true;  // `.T.contiguous()`: the values, as a Linear weight [projection, hidden]
    out.put(std::move(m));
  }
  // DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"] (new name <- old), applied in order with str.replace.
  static const std::pair<const char*, const char*> tower_names[] = {
      {"text_model.encoder.layers.", "resblocks."}, {"layer_norm1", "ln_1"}, {"layer_norm2", "ln_2"},
      {".fc1.", ".c_fc."}, {".fc2.", ".c_proj."}, {".self_attn", ".attn"},
      {"transformer.text_model.final_layer_norm.", "ln_final."},
      {"transformer.text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
      {"transformer.text_model.embeddings.position_embedding.weight", "positional_embedding"}};
  const std::string tower = prefix + "transformer.";
  for (const CheckpointKey& key : keys) {
    if (sd2_key_to_ignore(key.name) || !starts_with(key.name, tower)) continue;
    std::string name = replace_all(key.name, tower, "");
    for (const auto& [replacement, old] : tower_names)
      name = replace_all(replace_all(replace_all(std::move(name), old, replacement), ".in_proj_weight", ""), ".in_proj_bias", "");
    if (ends_with(key.name, ".in_proj_weight")) put_fused_projection(out, key, name, d, "weight", file);
    else if (ends_with(key.name, ".in_proj_bias")) put_fused_projection(out, key, name, d, "bias", file);
    else out.put(key, std::move(name));
  }
  return out.finish(keys, [&](const std::string& name) { return starts_with(name, prefix); });
}

ConvertedKeys convert_ldm_bert_checkpoint(const std::vector<CheckpointKey>& keys) {
  constexpr std::string_view prefix = "cond_stage_model.transformer.";
  // transformers' _load_pretrained_model: a checkpoint with a "bert" prefix is a task model's; a
  // BertModel (which has no `bert` attribute) then reads only its "bert." keys, without the prefix.
  bool has_prefix = false;
  for (const CheckpointKey& key : keys)
    has_prefix |= starts_with(key.name, prefix) && starts_with(std::string_view(key.name).substr(prefix.size()), "bert");
  MappingBuilder out;
  for (const CheckpointKey& key : keys) {
    if (!starts_with(key.name, prefix)) continue;
    std::string name = key.name.substr(prefix.size());
    // PreTrainedModel._fix_state_dict_key_on_load (with torch's parametrized weight norm).
    static const std::pair<std::string_view, std::string_view> legacy[] = {
        {"LayerNorm.beta", "LayerNorm.bias"}, {"LayerNorm.gamma", "LayerNorm.weight"},
        {"weight_g", "parametrizations.weight.original0"}, {"weight_v", "parametrizations.weight.original1"}};
    for (const auto& [old, replacement] : legacy)
      if (ends_with(name, old)) {
        name = replace_all(std::move(name), old, replacement);
        break;
      }
    if (has_prefix) {
      if (!starts_with(name, "bert.")) continue;
      name = name.substr(5);
    }
    out.put(key, std::move(name));
  }
  return out.finish(keys, [](const std::string& name) { return starts_with(name, "cond_stage_model."); });
}

// ---------------------------------------------------------------------------------------------------------
// Diffusers folders of 2022

ConvertedKeys convert_deprecated_vae_attention_names(const std::vector<CheckpointKey>& keys) {
  // The attentions built with _from_deprecated_attn_block in an AutoencoderKL: its mid blocks' one each.
  static const char* paths[] = {"encoder.mid_block.attentions.0", "decoder.mid_block.attentions.0"};
  static const std::pair<const char*, const char*> parts[] = {
      {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
  const KeyIndex index(keys);
  std::unordered_set<std::string> renamed;
  for (const char* path : paths)
    for (const auto& [old, replacement] : parts)
      for (const char* leaf : {".weight", ".bias"}) renamed.insert(std::string(path) + "." + old + leaf);
  MappingBuilder out;
  for (const CheckpointKey& key : keys)
    if (!renamed.count(key.name)) out.put(key, key.name);
  for (const char* path : paths)  // `state_dict[new] = state_dict.pop(old)`, in diffusers' order
    for (const auto& [old, replacement] : parts)
      for (const char* leaf : {".weight", ".bias"})
        if (const CheckpointKey* key = index.find(std::string(path) + "." + old + leaf))
          out.put(*key, std::string(path) + "." + replacement + leaf);
  return out.finish(keys, [](const std::string&) { return true; });
}

}  // namespace taiyi
