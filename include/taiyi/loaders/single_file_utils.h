// Single-file checkpoints in the original LDM / CompVis layout (`model.diffusion_model.…`,
// `first_stage_model.…`, `cond_stage_model.transformer.…`, `model_ema.…`): the model type, and the names
// of their tensors converted to diffusers / transformers names exactly as diffusers 0.37.1's
// loaders/single_file_utils.py converts them (infer_diffusers_model_type, convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint); SDXL's too
// (`conditioner.embedders.0.transformer.…` CLIP-L, `conditioner.embedders.1.model.…` OpenCLIP bigG).
// Names and shapes only, no tensors and no libtorch: the caller applies each KeyMapping to a lazy view of
// the file's tensor.
//
//   std::vector<taiyi::CheckpointKey> keys = ...;              // names and shapes from the file's header
//   taiyi::check_model_type(taiyi::infer_model_type(keys), "model.safetensors");   // SD 1.x or an Error
//   taiyi::ConvertedKeys unet = taiyi::convert_ldm_unet_checkpoint(keys, "model.safetensors", 2, false);
//   for (const taiyi::KeyMapping& m : unet.mapped)              // m.to: a UNet2DConditionModel parameter
//     load(m.to, m.conv_to_linear ? view(m.from).index({Slice(), Slice(), 0, 0}) : view(m.from));
//
// Every malformed name (a block index that is not a small decimal number, a name nested in another
// block's name) is a one-line taiyi::Error naming the file and the key; nothing else throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "taiyi/loaders/model_folder.h"

namespace taiyi {

// A tensor of the file: its name and shape (the dtype does not matter to the naming).
struct CheckpointKey {
  std::string name;
  std::vector<int64_t> shape;
};

// diffusers' infer_diffusers_model_type, for the families taiyi can name. taiyi runs V1, V1Inpainting,
// XLBase and XLInpaint; the others are named in the error. Vae: a VAE-only file (use it with --vae); NotStableDiffusion: no
// UNet in the LDM layout at all (diffusers would call both "v1", its fall-through).
enum class ModelType {
  V1,               // "v1": SD 1.x (the default when nothing else matches and there is a UNet)
  V1Inpainting,     // "inpainting": input_blocks.0.0.weight has 9 input channels
  V2,               // "v2": attn2.to_k takes 1024-wide (OpenCLIP) context
  V2Inpainting,     // "inpainting_v2"
  XLBase,           // "xl_base"
  XLInpaint,        // "xl_inpaint"
  XLRefiner,        // "xl_refiner"
  Playground,       // "playground-v2-5"
  Upscale,          // "upscale"
  ControlNet,       // "controlnet", "controlnet_xl_*"
  InstructPix2Pix,  // "instruct-pix2pix": 8 input channels
  Vae,
  NotStableDiffusion,
};

ModelType infer_model_type(const std::vector<CheckpointKey>& keys);
// "SD 1.x", "SD 1.x inpainting", "SD 2.x", "SDXL", "ControlNet", "instruct-pix2pix", ...
std::string model_type_name(ModelType type);
// Error "<file>: <what the file is>; taiyi runs SD 1.x and SDXL checkpoints (and their inpainting models)"
// for every type but V1, V1Inpainting, XLBase and XLInpaint (the SDXL refiner among them).
void check_model_type(ModelType type, const std::string& file);
// XLBase and XLInpaint: the pipeline is StableDiffusionXLPipeline's, with text_encoder_2.
bool is_sdxl_model_type(ModelType type);

// The text encoder under cond_stage_model.transformer. (or SDXL's conditioner.embedders.0.transformer.):
// CLIP (text_model.* names, or the web UI's pre-text_model names), BERT (Taiyi-Chinese:
// embeddings.word_embeddings), or none.
std::optional<TextEncoderKind> infer_text_encoder_kind(const std::vector<CheckpointKey>& keys);

// diffusers' EMA rule: more than 100 keys start with "model_ema" (LitEma's dotless names).
bool has_ema_weights(const std::vector<CheckpointKey>& keys);

// One tensor of the file (`from`) under its diffusers / transformers name (`to`), with the shape it has
// there. conv_to_linear: a 1x1 convolution weight used as a Linear weight, as diffusers slices it
// (`w[:, :, 0, 0]`, or `w[:, :, 0]` for a 3-D weight): keep the first two dimensions, index 0 in the rest.
struct KeyMapping {
  std::string from;
  std::string to;
  std::vector<int64_t> shape;
  bool conv_to_linear = false;
  // OpenCLIP's fused attention projection split into q, k and v: rows [row_begin, row_begin + shape[0])
  // of `from` (diffusers' `w[:d]`, `w[d:2d]`, `w[2d:]`); -1: the whole tensor.
  int64_t row_begin = -1;
  // OpenCLIP's text_projection [hidden, projection] read as the Linear weight [projection, hidden] (`w.T`).
  bool transpose = false;
};

// `mapped`: every tensor diffusers' conversion keeps, in its order, each `to` once (where two keys of the
// file become one name the later wins, as in a Python dict). `unused`: the component's keys of the file
// (by prefix) that no mapping reads; the caller reports them.
struct ConvertedKeys {
  std::vector<KeyMapping> mapped;
  std::vector<std::string> unused;
};

// convert_ldm_unet_checkpoint: `model.diffusion_model.*` (and `model_ema.*`, the component's too) to
// UNet2DConditionModel names; layers_per_block from the UNet config. extract_ema: read the EMA weights
// (`model_ema.<name without dots>`) instead, as diffusers does only when has_ema_weights(keys); an EMA
// weight missing for a UNet key is an Error.
ConvertedKeys convert_ldm_unet_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                          int64_t layers_per_block, bool extract_ema);
// The same with the UNet config, as diffusers reads it: layers_per_block, and `label_emb.0.{0,2}.*` as
// add_embedding.linear_{1,2}.* when addition_embed_type is "text_time" (SDXL) or as class_embedding.* when
// class_embed_type is "timestep" or "projection" (an Error naming the file when they are missing, where
// diffusers raises KeyError); `label_emb.weight` as class_embedding.weight when num_class_embeds is set.
ConvertedKeys convert_ldm_unet_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                          const Config& unet_config, bool extract_ema);

// convert_ldm_vae_checkpoint: the prefix is `first_stage_model.` or `vae.` when a key has it, else none
// (a VAE file, whose `loss.*` and `model_ema.*` keys are never mapped); the block counts are those of the
// VAE config's down_block_types / up_block_types. The decoder's up blocks are reversed; the mid-block
// attention's 1x1 convolutions become Linear weights (conv_to_linear).
ConvertedKeys convert_ldm_vae_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                         int64_t num_down_blocks, int64_t num_up_blocks);

// convert_ldm_clip_checkpoint: strips `cond_stage_model.transformer.` (and SDXL's
// `conditioner.embedders.0.transformer.`), after the web UI's SD1 fixes of pre-text_model names
// (modules/sd_models.py checkpoint_dict_replacements_sd1), which diffusers lacks.
ConvertedKeys convert_ldm_clip_checkpoint(const std::vector<CheckpointKey>& keys);

// convert_open_clip_checkpoint: an OpenCLIP text tower under `prefix` (SDXL's "conditioner.embedders.1.model.")
// as a CLIPTextModelWithProjection: positional_embedding, token_embedding, ln_final and text_projection
// (transposed) by name; `transformer.resblocks.N.*` renamed to text_model.encoder.layers.N.* (ln_1 ->
// layer_norm1, attn -> self_attn, mlp.c_fc -> mlp.fc1, ...), each attn.in_proj_weight / in_proj_bias split
// by rows into q_proj, k_proj and v_proj of text_projection's shape[0] rows each (`hidden_size`, the
// config's, when the file has no text_projection). Error naming the file for a text_projection that is
// not 2-D or a fused projection that cannot be sliced so.
ConvertedKeys convert_open_clip_checkpoint(const std::vector<CheckpointKey>& keys, const std::string& file,
                                           const std::string& prefix, int64_t hidden_size);

// Taiyi-Chinese's BertModel: strips `cond_stage_model.transformer.`, then renames as transformers'
// from_pretrained does for a BertModel (LayerNorm gamma/beta, a `bert.` prefix dropped); diffusers has no
// single-file path for it (tools/convert.py SingleFileSource._load_bert).
ConvertedKeys convert_ldm_bert_checkpoint(const std::vector<CheckpointKey>& keys);

// A diffusers VAE of 2022 (diffusers < 0.14): the mid-block attentions' `query/key/value/proj_attn` renamed
// `to_q/to_k/to_v/to_out.0`, as ModelMixin._fix_state_dict_keys_on_load (models/modeling_utils.py) does for
// a non-sharded file; every other key keeps its name (mapped to itself).
ConvertedKeys convert_deprecated_vae_attention_names(const std::vector<CheckpointKey>& keys);

}  // namespace taiyi
