// LoRA files as users download them, placed on taiyi's modules by name: the kohya / web UI layout
// (lora_unet_<module path with '_'>.lora_down.weight, .lora_up.weight, .alpha; lora_te_ / lora_te1_ for
// the text encoder, lora_te2_ for SDXL's second; UNet modules also by their original LDM names,
// lora_unet_input_blocks_4_1_proj_in, as the web UI places them, SD 1.x's and SDXL's) and diffusers' PEFT
// layout (unet.<module>.lora_A.weight / lora_B, text_encoder.<module>..., text_encoder_2.<module>...; also
// diffusers' older .lora.down / .lora.up, .lora_linear_layer.down / .up and attention-processor
// <attention>.processor.to_q_lora.down names, as its loaders convert them).
// The mapping is derived from the module tree (every Linear and Conv2d weight is a target, its kohya
// name its path with '.' replaced by '_'), the way diffusers' lora_conversion_utils.py and the web UI's
// networks.py resolve names. Also the web UI's <lora:NAME:MULTIPLIER> prompt tags.
//
// No torch here: names, shapes and numbers only (the fuzzing issue's parsers stay small).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace taiyi {

// A weight a LoRA may patch: a Linear ([out, in]) or Conv2d ([out, in, kh, kw]) weight.
struct LoraTarget {
  std::string component;  // "unet" | "text_encoder" | "text_encoder_2" (SDXL's CLIPTextModelWithProjection)
  std::string module;     // diffusers / transformers module path, "down_blocks.0.attentions.0.proj_in"
  std::vector<int64_t> weight_shape;
};

// A tensor of a LoRA file: name and shape (alpha values are passed separately).
struct LoraTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// One module's low-rank update: W += multiplier * alpha / rank * up @ down.
struct LoraPatch {
  std::string component, module;
  std::vector<int64_t> weight_shape;
  std::string down_key, up_key;  // tensor names in the file
  int64_t rank = 0;
  double alpha = 0;              // the file's alpha, or the rank when it gives none
};

enum class LoraLayout { Kohya, Peft };
const char* to_string(LoraLayout layout);

struct LoraPlan {
  LoraLayout layout = LoraLayout::Kohya;
  std::vector<LoraPatch> patches;        // in file order of the down keys
  std::vector<std::string> unplaced;     // keys that name no module of this model (or an unsupported kind)
  std::vector<std::string> mis_shaped;   // "key: why" (shapes, ranks, a missing half)
  bool ok() const { return unplaced.empty() && mis_shaped.empty(); }
  // One Error-ready line naming the file and every problem (the first few of each kind, then a count).
  std::string message(const std::string& file) const;
};

// Places every tensor of a LoRA file on the targets. `alphas` holds the values of the file's scalar
// ".alpha" tensors by name; `metadata` the file's __metadata__ (PEFT's lora_adapter_metadata JSON gives
// lora_alpha and alpha_pattern per component). Never throws for the file's content: problems go to
// unplaced / mis_shaped.
LoraPlan plan_lora(const std::vector<LoraTensor>& tensors, const std::map<std::string, double>& alphas,
                   const std::map<std::string, std::string>& metadata, const std::vector<LoraTarget>& targets);

// The original LDM UNet's name (ldm/modules/diffusionmodules/openaimodel.py, as the web UI's LoRA keys
// write it with '_' and without lora_unet_) of every UNet target that has one, in target order:
// {"down_blocks.1.attentions.0.proj_in", "input_blocks_4_1_proj_in"}, resnet conv1 / conv2 / time_emb_proj /
// conv_shortcut as in_layers_2 / out_layers_3 / emb_layers_1 / skip_connection, a downsampler as
// input_blocks_N_0_op, an upsampler as output_blocks_N_1_conv (_2_conv in a block with attentions),
// conv_in / conv_out / time_embedding / SDXL's add_embedding as input_blocks_0_0 / out_2 / time_embed_0, _2 /
// label_emb_0_0, _0_2. The block arithmetic (layers_per_block, which blocks have attentions or samplers)
// is read off the targets themselves, so SDXL's UNet (no attentions in its first block, several
// transformer blocks per attention) is numbered as SGM numbers it.
std::vector<std::pair<std::string, std::string>> ldm_lora_names(const std::vector<LoraTarget>& targets);

// A <lora:NAME:TE:UNET> (or <lyco:...>) tag of a prompt, as the web UI's extra networks parse it:
// positional multipliers (the text encoder's, then the UNet's, which defaults to the first), or named
// te=, unet=; the default multiplier is 1.
struct LoraTag {
  std::string name;
  double te_multiplier = 1.0;
  double unet_multiplier = 1.0;
};
struct ExtraNetworks {
  std::string text;           // the prompt with every <kind:...> tag taken out
  std::vector<LoraTag> loras;
};
// Error for a malformed multiplier or an extra network kind other than lora / lyco (e.g. hypernet).
ExtraNetworks parse_extra_networks(const std::string& prompt);

}  // namespace taiyi
