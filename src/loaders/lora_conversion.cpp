// LoRA key placement (kohya and PEFT layouts) and the web UI's <lora:...> tags. Plain C++.
#include "taiyi/loaders/lora_conversion.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "taiyi/utils/json.h"
#include "taiyi/utils/error.h"
#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi {

namespace {

using Json = nlohmann::json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string underscored(std::string path) {
  std::replace(path.begin(), path.end(), '.', '_');
  return path;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// A key split into the module it names and which part of the update it is.
enum class Part { Down, Up, Alpha };
struct KeyParts {
  std::string component, module;  // module as written (kohya: underscored)
  Part part;
};

// kohya: <prefix><underscored module>.{lora_down.weight, lora_up.weight, alpha}. SD 1.x files name the
// text encoder lora_te_, SDXL's lora_te1_ and lora_te2_ (its second, CLIPTextModelWithProjection), as
// diffusers' _convert_non_diffusers_lora_to_diffusers sorts them.
std::optional<KeyParts> kohya_parts(const std::string& key) {
  static const std::pair<const char*, const char*> kPrefixes[] = {{"lora_unet_", "unet"},
                                                                  {"lora_te_", "text_encoder"},
                                                                  {"lora_te1_", "text_encoder"},
                                                                  {"lora_te2_", "text_encoder_2"}};
  static const std::pair<const char*, Part> kSuffixes[] = {
      {".lora_down.weight", Part::Down}, {".lora_up.weight", Part::Up}, {".alpha", Part::Alpha}};
  for (const auto& [prefix, component] : kPrefixes) {
    if (!starts_with(key, prefix)) continue;
    for (const auto& [suffix, part] : kSuffixes) {
      if (!ends_with(key, suffix)) continue;
      std::string module = key.substr(std::string(prefix).size(),
                                      key.size() - std::string(prefix).size() - std::string(suffix).size());
      if (module.empty() || module.find('.') != std::string::npos) return std::nullopt;
      return KeyParts{component, module, part};
    }
  }
  return std::nullopt;
}

// diffusers' attention-processor names of 2023 (LoRAAttnProcessor: <attention>.processor.to_q_lora.down.weight;
// the text encoders' <self_attn>.to_q_lora.down.weight) renamed as its loaders rename them
// (state_dict_utils.py: ".processor." dropped, then UNET_TO_DIFFUSERS / DIFFUSERS_OLD_TO_DIFFUSERS): to_q, to_k,
// to_v, to_out.0 in the UNet, q_proj, k_proj, v_proj, out_proj in a text encoder, each "<module>.lora.down...".
std::string without_processor_names(std::string rest, bool unet) {
  static const char* const kNames[][3] = {{".to_q_lora.", ".to_q.lora.", ".q_proj.lora."},
                                          {".to_k_lora.", ".to_k.lora.", ".k_proj.lora."},
                                          {".to_v_lora.", ".to_v.lora.", ".v_proj.lora."},
                                          {".to_out_lora.", ".to_out.0.lora.", ".out_proj.lora."}};
  for (size_t at; (at = rest.find(".processor.")) != std::string::npos;) rest.replace(at, 11, ".");
  for (const auto& names : kNames) {
    const size_t at = rest.rfind(names[0]);
    if (at != std::string::npos) return rest.replace(at, std::string(names[0]).size(), names[unet ? 1 : 2]);
  }
  return rest;
}

// PEFT / diffusers: <component>.<module>.{lora_A.weight, lora_B.weight}, or diffusers' older names that
// its loaders still convert (state_dict_utils.py: UNET_TO_DIFFUSERS' .lora.down / .lora.up, the text
// encoders' .lora_linear_layer.down / .up, the attention processors' above), and network alphas
// <component>.<module>.alpha.
std::optional<KeyParts> peft_parts(const std::string& key) {
  static const char* kComponents[] = {"unet", "text_encoder", "text_encoder_2"};
  static const std::pair<const char*, Part> kSuffixes[] = {{".lora_A.weight", Part::Down},
                                                           {".lora_B.weight", Part::Up},
                                                           {".lora.down.weight", Part::Down},
                                                           {".lora.up.weight", Part::Up},
                                                           {".lora_linear_layer.down.weight", Part::Down},
                                                           {".lora_linear_layer.up.weight", Part::Up},
                                                           {".alpha", Part::Alpha}};
  for (const char* component : kComponents) {
    const std::string prefix = std::string(component) + ".";
    if (!starts_with(key, prefix)) continue;
    const std::string rest = without_processor_names(key.substr(prefix.size()), prefix == "unet.");
    for (const auto& [suffix, part] : kSuffixes) {
      if (!ends_with(rest, suffix)) continue;
      std::string module = rest.substr(0, rest.size() - std::string(suffix).size());
      if (module.empty()) return std::nullopt;
      return KeyParts{component, module, part};
    }
  }
  return std::nullopt;
}

// PEFT's alpha for a module from lora_adapter_metadata: alpha_pattern entries match a module whose
// path ends with the key at a dot boundary (peft's re.match(rf"(.*\.)?{key}$")), else lora_alpha.
std::optional<double> metadata_alpha(const Json& adapter, const std::string& component, const std::string& module) {
  if (!adapter.is_object()) return std::nullopt;
  auto pattern = adapter.find(component + ".alpha_pattern");
  if (pattern != adapter.end() && pattern->is_object()) {
    for (const auto& item : pattern->items()) {
      const std::string& k = item.key();
      if ((module == k || ends_with(module, "." + k)) && item.value().is_number()) return item.value().get<double>();
    }
  }
  auto alpha = adapter.find(component + ".lora_alpha");
  if (alpha != adapter.end() && alpha->is_number()) return alpha->get<double>();
  return std::nullopt;
}

// The layout: any kohya-prefixed key makes it kohya (a file mixing both is reported key by key).
LoraLayout detect_layout(const std::vector<LoraTensor>& tensors) {
  return std::any_of(tensors.begin(), tensors.end(), [](const LoraTensor& t) { return starts_with(t.name, "lora_"); })
             ? LoraLayout::Kohya
             : LoraLayout::Peft;
}

// How the original LDM UNet (ldm/modules/diffusionmodules/openaimodel.py, the web UI's model) numbers
// what diffusers nests: input_blocks[0] is conv_in, then per down block its [ResBlock, SpatialTransformer]
// pairs and a Downsample; middle_block [ResBlock, SpatialTransformer, ResBlock]; per up block its
// [ResBlock, SpatialTransformer?, Upsample?] entries, the Upsample right after the ResBlock where the block
// has no attention. The counts come from the module tree itself (it is built from the config's
// layers_per_block and block types), so no config travels with the targets. SDXL's UNet (SGM's
// openaimodel.py numbers it the same way) fits: its first down block has resnets and a Downsample but no
// SpatialTransformer, so input_blocks 1-2 are ResBlocks alone and 3 its op; the transformer depth of a
// block (transformer_layers_per_block) only lengthens the names inside a SpatialTransformer.
struct UnetBlocks {
  std::map<int, int> down_resnets, up_resnets;  // block -> resnet count
  std::map<int, bool> down_sampler, up_attention;
};

// "down_blocks.1.resnets.0.conv1" -> {"down_blocks", 1, "resnets", 0, "conv1"}; nullopt for other paths.
struct BlockPath {
  std::string blocks, kind, rest;
  int block = 0, index = 0;
};
std::optional<BlockPath> block_path(const std::string& module) {
  std::vector<std::string> p;
  for (size_t start = 0;;) {
    const size_t dot = module.find('.', start);
    p.push_back(module.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  auto number = [](const std::string& s) {
    const bool digits = std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    return !s.empty() && s.size() < 6 && digits ? std::stoi(s) : -1;
  };
  BlockPath b;
  const bool mid = p[0] == "mid_block";
  const size_t kind_at = mid ? 1 : 2;
  if (!(mid || p[0] == "down_blocks" || p[0] == "up_blocks") || p.size() < kind_at + 3) return std::nullopt;
  b.blocks = p[0];
  b.block = mid ? 0 : number(p[1]);
  b.kind = p[kind_at];
  b.index = number(p[kind_at + 1]);
  if (b.block < 0 || b.index < 0) return std::nullopt;
  for (size_t i = kind_at + 2; i < p.size(); ++i) b.rest += (b.rest.empty() ? "" : "_") + p[i];
  return b;
}

UnetBlocks unet_blocks(const std::vector<LoraTarget>& targets) {
  UnetBlocks u;
  for (const LoraTarget& t : targets) {
    if (t.component != "unet") continue;
    auto b = block_path(t.module);
    if (!b) continue;
    if (b->kind == "resnets" && b->blocks != "mid_block") {
      int& count = (b->blocks == "down_blocks" ? u.down_resnets : u.up_resnets)[b->block];
      count = std::max(count, b->index + 1);
    }
    if (b->blocks == "down_blocks" && b->kind == "downsamplers") u.down_sampler[b->block] = true;
    if (b->blocks == "up_blocks" && b->kind == "attentions") u.up_attention[b->block] = true;
  }
  return u;
}

// A ResBlock's layers by their LDM names (in_layers = [GroupNorm, SiLU, conv], out_layers = [GroupNorm,
// SiLU, Dropout, conv], emb_layers = [SiLU, Linear]).
std::string ldm_resnet_part(const std::string& part) {
  static const std::pair<const char*, const char*> kParts[] = {
      {"conv1", "in_layers_2"}, {"conv2", "out_layers_3"}, {"time_emb_proj", "emb_layers_1"},
      {"conv_shortcut", "skip_connection"}};
  for (const auto& [diffusers, ldm] : kParts)
    if (part == diffusers) return ldm;
  return "";
}

// The LDM name (underscored, without lora_unet_) of a UNet module, or "" when it has none.
std::string ldm_unet_name(const std::string& module, const UnetBlocks& u) {
  static const std::pair<const char*, const char*> kTop[] = {
      {"conv_in", "input_blocks_0_0"}, {"conv_out", "out_2"},
      {"time_embedding.linear_1", "time_embed_0"}, {"time_embedding.linear_2", "time_embed_2"},
      // SDXL's text_time embedding: SGM's label_emb = Sequential(Sequential(linear, SiLU, linear)).
      {"add_embedding.linear_1", "label_emb_0_0"}, {"add_embedding.linear_2", "label_emb_0_2"}};
  for (const auto& [diffusers, ldm] : kTop)
    if (module == diffusers) return ldm;
  auto b = block_path(module);
  if (!b) return "";
  const bool resnet = b->kind == "resnets";
  const std::string part = resnet ? ldm_resnet_part(b->rest) : b->rest;
  if (part.empty()) return "";
  if (b->blocks == "mid_block") {  // one sequence [ResBlock, SpatialTransformer, ResBlock], no inner index
    if (resnet && b->index < 2) return "middle_block_" + std::to_string(b->index * 2) + "_" + part;
    return b->kind == "attentions" && b->index == 0 ? "middle_block_1_" + part : "";
  }
  const std::string inner = "_" + std::string(resnet ? "0" : "1") + "_" + part;
  const bool down = b->blocks == "down_blocks";
  const std::map<int, int>& counts = down ? u.down_resnets : u.up_resnets;
  int offset = down ? 1 : 0;  // input_blocks[0] is conv_in
  for (const auto& [block, count] : counts)
    if (block < b->block) offset += count + (down && u.down_sampler.count(block) ? 1 : 0);
  const int resnets = counts.count(b->block) ? counts.at(b->block) : 0;
  const std::string blocks = down ? "input_blocks_" : "output_blocks_";
  if (resnet || b->kind == "attentions") return blocks + std::to_string(offset + b->index) + inner;
  if (down && b->kind == "downsamplers" && b->rest == "conv") return blocks + std::to_string(offset + resnets) + "_0_op";
  if (!down && b->kind == "upsamplers" && b->rest == "conv" && resnets > 0)
    return blocks + std::to_string(offset + resnets - 1) + (u.up_attention.count(b->block) ? "_2" : "_1") + "_conv";
  return "";
}

// The targets, looked up by component and module name as the layout writes them.
std::unordered_map<std::string, const LoraTarget*> targets_by_name(const std::vector<LoraTarget>& targets,
                                                                    LoraLayout layout) {
  std::unordered_map<std::string, const LoraTarget*> by_name;  // "component|module as the layout writes it"
  for (const LoraTarget& target : targets) {
    const std::string module = layout == LoraLayout::Kohya ? underscored(target.module) : target.module;
    by_name.emplace(target.component + "|" + module, &target);
  }
  // kohya keys with the LDM UNet's names (lora_unet_input_blocks_4_1_proj_in) name the same modules, as in the
  // web UI (networks.py: "lora_unet" -> "diffusion_model" on its LDM module names).
  if (layout == LoraLayout::Kohya) {
    std::unordered_map<std::string, std::string> ldm_of;
    for (auto& [module, ldm] : ldm_lora_names(targets)) ldm_of.emplace(module, std::move(ldm));
    for (const LoraTarget& target : targets) {
      auto ldm = target.component == "unet" ? ldm_of.find(target.module) : ldm_of.end();
      if (ldm != ldm_of.end()) by_name.emplace("unet|" + ldm->second, &target);
    }
  }
  return by_name;
}

// The file's lora_adapter_metadata (PEFT's alphas) as JSON; null when it has none or it is not JSON.
Json adapter_metadata(const std::map<std::string, std::string>& metadata) {
  Json adapter;
  if (auto it = metadata.find("lora_adapter_metadata"); it != metadata.end()) {
    try {
      adapter = parse_json_text(it->second, "lora_adapter_metadata");  // nesting bounded (utils/json.h)
    } catch (const Error&) {
      adapter = Json();  // not JSON: no alphas from it, as peft would find none
    }
  }
  return adapter;
}

// The keys placed on one target so far; `order` is that of its down key in the file.
struct Pending {
  const LoraTarget* target = nullptr;
  const LoraTensor* down = nullptr;
  const LoraTensor* up = nullptr;
  const LoraTensor* alpha_key = nullptr;
  std::optional<double> alpha;
  size_t order = 0;
};

// An alpha key: its value onto `p` when it is a finite scalar, else a mis-shaped entry of the plan.
void place_alpha(const LoraTensor& tensor, const std::map<std::string, double>& alphas, Pending& p, LoraPlan& plan) {
  auto value = alphas.find(tensor.name);
  if (!tensor.shape.empty() && !(tensor.shape.size() == 1 && tensor.shape[0] == 1)) {
    plan.mis_shaped.push_back(tensor.name + ": alpha of shape " + shape_text(tensor.shape) + ", expected a scalar");
  } else if (value == alphas.end() || !std::isfinite(value->second)) {
    plan.mis_shaped.push_back(tensor.name + ": alpha is not a finite number");
  } else {
    p.alpha = value->second;
  }
}

// Places each key on the target it names (down, up or alpha); keys naming none go to plan.unplaced.
// Returns the targets' keys in file order of their down keys.
std::vector<Pending> place_keys(const std::vector<LoraTensor>& tensors, const std::map<std::string, double>& alphas,
                                const std::unordered_map<std::string, const LoraTarget*>& by_name, LoraPlan& plan) {
  std::map<const LoraTarget*, Pending> pending;
  size_t order = 0;
  for (const LoraTensor& tensor : tensors) {
    auto parts = plan.layout == LoraLayout::Kohya ? kohya_parts(tensor.name) : peft_parts(tensor.name);
    auto found = parts ? by_name.find(parts->component + "|" + parts->module) : by_name.end();
    if (found == by_name.end()) {
      plan.unplaced.push_back(tensor.name);
      continue;
    }
    Pending& p = pending[found->second];
    p.target = found->second;
    // Two keys for one part of a module (an LDM and a diffusers name, lora_te_ and lora_te1_): the web UI
    // keeps whichever comes last, diffusers drops the LDM keys of a mixed file; neither is what the file's
    // author can have meant, so it is refused.
    const LoraTensor*& slot = parts->part == Part::Down ? p.down : parts->part == Part::Up ? p.up : p.alpha_key;
    if (slot) {
      plan.mis_shaped.push_back(tensor.name + ": names the same " + p.target->component + " module " +
                                p.target->module + " as " + slot->name);
      continue;
    }
    slot = &tensor;
    if (parts->part == Part::Down) p.order = order++;
    if (parts->part == Part::Alpha) place_alpha(tensor, alphas, p, plan);
  }
  std::vector<Pending> ordered;
  for (auto& [target, p] : pending) ordered.push_back(p);
  std::sort(ordered.begin(), ordered.end(), [](const Pending& a, const Pending& b) { return a.order < b.order; });
  return ordered;
}

// One target's keys: a patch onto plan.patches when both halves are there and fit the weight's shape,
// else a mis-shaped entry. The alpha: the file's, else the adapter metadata's, else the rank.
void add_patch(const Pending& p, const Json& adapter, LoraPlan& plan) {
  const LoraTarget& t = *p.target;
  const std::string where = t.component + " " + t.module;
  if (!p.down || !p.up) {
    plan.mis_shaped.push_back(where + ": " + (p.down ? "lora_down / lora_A" : "lora_up / lora_B") +
                              " given without its other half");
    return;
  }
  // Linear [out, in]: down [r, in], up [out, r]. Conv2d [out, in, kh, kw]: down [r, in, kh, kw],
  // up [out, r, 1, 1]; a 1x1 conv also takes linear-shaped halves (and a linear 1x1-shaped ones).
  const auto& w = t.weight_shape;
  const auto& d = p.down->shape;
  const auto& u = p.up->shape;
  const bool conv = w.size() == 4;
  const bool pointwise = !conv || (w[2] == 1 && w[3] == 1);
  auto is = [](const std::vector<int64_t>& s, std::vector<int64_t> expected) { return s == expected; };
  const int64_t rank = d.empty() ? 0 : d[0];
  bool down_ok = false, up_ok = false;
  if (rank > 0 && w.size() >= 2) {
    down_ok = (conv && is(d, {rank, w[1], w[2], w[3]})) || (pointwise && (is(d, {rank, w[1]}) || is(d, {rank, w[1], 1, 1})));
    up_ok = is(u, {w[0], rank}) || is(u, {w[0], rank, 1, 1});
  }
  if (!down_ok || !up_ok) {
    plan.mis_shaped.push_back(where + " " + shape_text(w) + ": down " + shape_text(d) + ", up " + shape_text(u) +
                              (u.size() >= 2 && rank > 0 && u[1] != rank
                                   ? " (ranks differ: down " + std::to_string(rank) + ", up " + std::to_string(u[1]) + ")"
                                   : ""));
    return;
  }
  LoraPatch patch;
  patch.component = t.component;
  patch.module = t.module;
  patch.weight_shape = w;
  patch.down_key = p.down->name;
  patch.up_key = p.up->name;
  patch.rank = rank;
  patch.alpha = p.alpha ? *p.alpha : metadata_alpha(adapter, t.component, t.module).value_or(static_cast<double>(rank));
  plan.patches.push_back(std::move(patch));
}

}  // namespace

std::vector<std::pair<std::string, std::string>> ldm_lora_names(const std::vector<LoraTarget>& targets) {
  const UnetBlocks blocks = unet_blocks(targets);
  std::vector<std::pair<std::string, std::string>> names;
  for (const LoraTarget& target : targets) {
    const std::string ldm = target.component == "unet" ? ldm_unet_name(target.module, blocks) : "";
    if (!ldm.empty()) names.emplace_back(target.module, ldm);
  }
  return names;
}

const char* to_string(LoraLayout layout) { return layout == LoraLayout::Kohya ? "kohya" : "diffusers (PEFT)"; }

std::string LoraPlan::message(const std::string& file) const {
  auto listed = [](const std::vector<std::string>& items) {
    std::string text;
    const size_t shown = std::min<size_t>(items.size(), 8);
    for (size_t i = 0; i < shown; ++i) text += (i ? ", " : "") + listed_name(items[i], 300);  // keys from the file
    if (items.size() > shown) text += ", ... (" + std::to_string(items.size() - shown) + " more)";
    return text;
  };
  std::string text = file + ": not a LoRA for this model";
  if (!unplaced.empty()) {
    text += "; " + std::to_string(unplaced.size()) + " key(s) name no module of its UNet or text encoder: " + listed(unplaced);
    const bool other_architecture = std::any_of(unplaced.begin(), unplaced.end(), [](const std::string& k) {
      return starts_with(k, "lora_te2_") || starts_with(k, "text_encoder_2.") || starts_with(k, "lora_transformer_") ||
             starts_with(k, "transformer.") || starts_with(k, "lora_unet_input_blocks_") ||
             starts_with(k, "lora_unet_middle_block_") || starts_with(k, "lora_unet_output_blocks_");
    });
    if (other_architecture)
      text += " (keys of another architecture: SD 1.x and SDXL differ in text encoders and UNet blocks; or a DiT)";
  }
  if (!mis_shaped.empty()) text += "; " + std::to_string(mis_shaped.size()) + " mis-shaped: " + listed(mis_shaped);
  return text;
}

LoraPlan plan_lora(const std::vector<LoraTensor>& tensors, const std::map<std::string, double>& alphas,
                   const std::map<std::string, std::string>& metadata, const std::vector<LoraTarget>& targets) {
  LoraPlan plan;
  plan.layout = detect_layout(tensors);
  const std::unordered_map<std::string, const LoraTarget*> by_name = targets_by_name(targets, plan.layout);
  const Json adapter = adapter_metadata(metadata);
  for (const Pending& p : place_keys(tensors, alphas, by_name, plan)) add_patch(p, adapter, plan);
  return plan;
}

ExtraNetworks parse_extra_networks(const std::string& prompt) {
  // The web UI's re_extra_net, r"<(\w+):([^>]+)>", applied left to right; matched tags are removed.
  ExtraNetworks result;
  const std::u32string text = unicode::from_utf8(prompt);
  std::u32string kept;
  size_t i = 0;
  size_t close = 0;  // the first '>' at or after where it was last looked for (text.size(): none): linear, not
                     // quadratic, for a hostile "<a:<a:<a:..." with no '>'
  while (i < text.size()) {
    if (text[i] == U'<') {
      size_t j = i + 1;
      while (j < text.size() && unicode::is_word(text[j])) ++j;
      if (j > i + 1 && j < text.size() && text[j] == U':') {
        if (close < j + 1) {
          close = j + 1;
          while (close < text.size() && text[close] != U'>') ++close;
        }
        const size_t k = close;
        if (k < text.size() && k > j + 1) {
          const std::string kind = unicode::to_utf8(text.substr(i + 1, j - i - 1));
          const std::string args = unicode::to_utf8(text.substr(j + 1, k - j - 1));
          const std::string tag = quoted_name(unicode::to_utf8(text.substr(i, k - i + 1)), 120);
          if (kind != "lora" && kind != "lyco")
            throw Error("prompt tag " + tag + ": unknown extra network " + quoted_name(kind, 40) + " (taiyi applies lora and lyco)");
          std::vector<std::string> positional;
          std::map<std::string, std::string> named;
          size_t start = 0;
          while (true) {
            size_t colon = args.find(':', start);
            std::string item = args.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
            size_t eq = item.find('=');
            if (eq != std::string::npos && item.find('=', eq + 1) == std::string::npos)
              named[item.substr(0, eq)] = item.substr(eq + 1);
            else
              positional.push_back(item);
            if (colon == std::string::npos) break;
            start = colon + 1;
          }
          auto number = [&](const std::string& value) {
            // Python's float(): surrounding whitespace allowed, nothing else.
            size_t b = value.find_first_not_of(" \t\n\r\f\v"), e = value.find_last_not_of(" \t\n\r\f\v");
            const std::string trimmed = b == std::string::npos ? "" : value.substr(b, e - b + 1);
            char* end = nullptr;
            errno = 0;
            double v = trimmed.empty() ? 0 : std::strtod(trimmed.c_str(), &end);
            if (trimmed.empty() || end != trimmed.c_str() + trimmed.size() || !std::isfinite(v))
              throw Error("prompt tag " + tag + ": multiplier " + quoted_name(value, 40) + " is not a number");
            return v;
          };
          if (positional.empty() || positional[0].empty()) throw Error("prompt tag " + tag + ": no LoRA name");
          LoraTag lora;
          lora.name = positional[0];
          lora.te_multiplier = positional.size() > 1 ? number(positional[1]) : 1.0;
          if (named.count("te")) lora.te_multiplier = number(named["te"]);
          lora.unet_multiplier = positional.size() > 2 ? number(positional[2]) : lora.te_multiplier;
          if (named.count("unet")) lora.unet_multiplier = number(named["unet"]);
          result.loras.push_back(lora);
          i = k + 1;
          continue;
        }
      }
    }
    kept += text[i++];
  }
  // Untouched prompts stay byte for byte (to_utf8 would replace invalid bytes).
  result.text = result.loras.empty() ? prompt : unicode::to_utf8(kept);
  return result;
}

}  // namespace taiyi
