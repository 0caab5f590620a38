// The configs and tokenizers built into taiyi for single-file checkpoints; see
// include/taiyi/loaders/single_file_configs.h. diffusers' from_single_file fetches the same files from
// the hub (loaders/single_file_utils.py: fetch_diffusers_config maps an SD 1.x checkpoint to
// stable-diffusion-v1-5/stable-diffusion-v1-5, an SDXL one to stabilityai/stable-diffusion-xl-base-1.0);
// taiyi carries them instead, so a single file runs offline. The JSON below is the hub files' (spec: shared/spec/taiyi-model.md §2-§5) without the
// bookkeeping keys nothing reads (_diffusers_version, _name_or_path, transformers_version, torch_dtype);
// tests/loaders/test_single_file_configs.cpp checks them against the real configs that
// tools/make_fixtures.py builds its full-size pipelines from. No torch here.
#include "taiyi/loaders/single_file_configs.h"

#include "taiyi/tokenizers/builtin_vocab.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/json.h"

namespace taiyi {

namespace {

using Json = nlohmann::json;

// stable-diffusion-v1-5/unet/config.json (the SD 1.x UNet of Taiyi, spec §5).
constexpr const char* kUNetConfig = R"json({
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
})json";

// stable-diffusion-v1-5/vae/config.json: no scaling_factor key, so AutoencoderKL's default 0.18215
// (the LDM yaml's scale_factor) applies.
constexpr const char* kVaeConfig = R"json({
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
})json";

// stable-diffusion-v1-5/scheduler/scheduler_config.json (Taiyi's is the same, spec §4): PLMS, no
// prediction_type (epsilon) nor timestep_spacing ("leading"); clip_sample=false for DDIM's from_config.
constexpr const char* kSchedulerConfig = R"json({
  "_class_name": "PNDMScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
})json";

// stable-diffusion-v1-5/text_encoder/config.json: CLIP ViT-L/14's text tower (spec §2). The token ids
// are the config class's defaults, not the tokenizer's; CLIPTextModel does not read them.
constexpr const char* kClipTextConfig = R"json({
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "vocab_size": 49408
})json";

// Taiyi-Stable-Diffusion-1B-Chinese-v0.1/text_encoder/config.json (spec §2, as its re-saved copies
// read): a BERT-base on the bert-base-chinese vocabulary. Left out: hfl/chinese-roberta-wwm-ext's
// pooler_* leftovers, which BertModel does not read.
constexpr const char* kBertTextConfig = R"json({
  "architectures": ["BertModel"],
  "attention_probs_dropout_prob": 0.1,
  "bos_token_id": 0,
  "directionality": "bidi",
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 768,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": 512,
  "model_type": "bert",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 0,
  "position_embedding_type": "absolute",
  "type_vocab_size": 2,
  "vocab_size": 21128
})json";

// openai/clip-vit-large-patch14's tokenizer_config.json and special_tokens_map.json (stable-diffusion-v1-5's
// tokenizer/ has the same), byte for byte (697 and 389 bytes, spec §3): the old format, without
// added_tokens_decoder, which from_pretrained (and load_settings) still reads.
constexpr const char* kClipTokenizerConfig =
    R"json({"unk_token": {"content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, )json"
    R"json("normalized": true, "__type": "AddedToken"}, "bos_token": {"content": "<|startoftext|>", )json"
    R"json("single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "__type": "AddedToken"}, )json"
    R"json("eos_token": {"content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, )json"
    R"json("normalized": true, "__type": "AddedToken"}, "pad_token": "<|endoftext|>", "add_prefix_space": false, )json"
    R"json("errors": "replace", "do_lower_case": true, "name_or_path": "openai/clip-vit-large-patch14", )json"
    R"json("model_max_length": 77, "special_tokens_map_file": "./special_tokens_map.json", )json"
    R"json("tokenizer_class": "CLIPTokenizer"})json";
constexpr const char* kClipSpecialTokensMap =
    R"json({"bos_token": {"content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, )json"
    R"json("normalized": true}, "eos_token": {"content": "<|endoftext|>", "single_word": false, "lstrip": false, )json"
    R"json("rstrip": false, "normalized": true}, "unk_token": {"content": "<|endoftext|>", "single_word": false, )json"
    R"json("lstrip": false, "rstrip": false, "normalized": true}, "pad_token": "<|endoftext|>"})json";

// Taiyi-Chinese-v0.1's tokenizer/tokenizer_config.json (spec §3, as re-saved copies read; its
// special_tokens_map_file, a path on IDEA-CCNL's machine, left out) and the five standard special tokens
// of its special_tokens_map.json. model_max_length 512: the pipeline pads to 512 tokens.
constexpr const char* kBertTokenizerConfig = R"json({
  "cls_token": "[CLS]", "do_basic_tokenize": true, "do_lower_case": true, "mask_token": "[MASK]",
  "model_max_length": 512, "never_split": null, "pad_token": "[PAD]", "sep_token": "[SEP]",
  "strip_accents": null, "tokenize_chinese_chars": true, "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"
})json";
constexpr const char* kBertSpecialTokensMap = R"json({
  "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
})json";

// stabilityai/stable-diffusion-xl-base-1.0/unet/config.json (the hub's, every key; upcast_attention null).
constexpr const char* kSdxlUNetConfig = R"json({
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256,
  "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 2048,
  "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "sample_size": 128,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": null,
  "use_linear_projection": true
})json";

// stabilityai/stable-diffusion-xl-base-1.0/vae/config.json: SD's VAE shape, SDXL's latent scale, and
// force_upcast (the pipeline decodes in fp32 when run in fp16).
constexpr const char* kSdxlVaeConfig = R"json({
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 0.13025,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
})json";

// stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json: Euler, "leading" spacing; the
// DDIM/PNDM keys it also carries are what another sampler's from_config reads.
constexpr const char* kSdxlSchedulerConfig = R"json({
  "_class_name": "EulerDiscreteScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null,
  "use_karras_sigmas": false
})json";

// stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower as
// a CLIPTextModelWithProjection (its text_encoder/config.json is CLIP ViT-L/14's, kClipTextConfig).
constexpr const char* kSdxlTextConfig2 = R"json({
  "architectures": ["CLIPTextModelWithProjection"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_size": 1280,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 5120,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 20,
  "num_hidden_layers": 32,
  "pad_token_id": 1,
  "projection_dim": 1280,
  "vocab_size": 49408
})json";

// stabilityai/stable-diffusion-xl-base-1.0/tokenizer_2's tokenizer_config.json and special_tokens_map.json:
// CLIP's vocabulary, padding with "!" (id 0) rather than <|endoftext|>. (Its tokenizer/ is CLIP ViT-L/14's,
// kClipTokenizerConfig: the same vocabulary and options.)
constexpr const char* kSdxlTokenizer2Config = R"json({
  "add_prefix_space": false,
  "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": false, "normalized": true,
                "rstrip": false, "single_word": false},
  "clean_up_tokenization_spaces": true,
  "do_lower_case": true,
  "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true,
                "rstrip": false, "single_word": false},
  "errors": "replace",
  "model_max_length": 77,
  "pad_token": "!",
  "tokenizer_class": "CLIPTokenizer",
  "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true,
                "rstrip": false, "single_word": false}
})json";
constexpr const char* kSdxlTokenizer2SpecialTokensMap = R"json({
  "bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
  "eos_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
  "pad_token": "!",
  "unk_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}
})json";

const char* hub_folder(TextEncoderKind kind, const std::string& component) {
  const bool taiyi_chinese = kind == TextEncoderKind::Bert &&
                             (component == "text_encoder" || component == "tokenizer" || component == "model_index");
  return taiyi_chinese ? "Taiyi-Stable-Diffusion-1B-Chinese-v0.1" : "stable-diffusion-v1-5";
}

Json parse_builtin(const char* text, TextEncoderKind kind, const std::string& file) {
  return parse_json_text(text, builtin_source(kind, file));
}

}  // namespace

std::string builtin_source(TextEncoderKind kind, const std::string& component) {
  std::string file = component;
  if (component == "model_index") file = "model_index.json";
  else if (component == "scheduler") file = "scheduler/scheduler_config.json";
  else if (component != "tokenizer") file = component + "/config.json";
  return std::string("built-in ") + hub_folder(kind, component) + " " + file;
}

Json builtin_model_index(TextEncoderKind kind) {
  const bool bert = kind == TextEncoderKind::Bert;
  return Json{{"_class_name", "StableDiffusionPipeline"},
              {"feature_extractor", Json::array({nullptr, nullptr})},
              {"image_encoder", Json::array({nullptr, nullptr})},
              {"requires_safety_checker", false},
              {"safety_checker", Json::array({nullptr, nullptr})},
              {"scheduler", Json::array({"diffusers", "PNDMScheduler"})},
              {"text_encoder", Json::array({"transformers", bert ? "BertModel" : "CLIPTextModel"})},
              {"tokenizer", Json::array({"transformers", bert ? "BertTokenizer" : "CLIPTokenizer"})},
              {"unet", Json::array({"diffusers", "UNet2DConditionModel"})},
              {"vae", Json::array({"diffusers", "AutoencoderKL"})}};
}

Json builtin_config(const std::string& component, TextEncoderKind kind) {
  if (component == "unet") return parse_builtin(kUNetConfig, kind, component);
  if (component == "vae") return parse_builtin(kVaeConfig, kind, component);
  if (component == "scheduler") return parse_builtin(kSchedulerConfig, kind, component);
  if (component == "text_encoder")
    return parse_builtin(kind == TextEncoderKind::Bert ? kBertTextConfig : kClipTextConfig, kind, component);
  throw Error("built-in configs: no component '" + component +
              "' (there are unet, vae, scheduler and text_encoder; the tokenizer is builtin_tokenizer)");
}

std::unique_ptr<Tokenizer> builtin_tokenizer(TextEncoderKind kind) {
  TokenizerFiles files;
  files.dir = builtin_source(kind, "tokenizer");
  if (kind == TextEncoderKind::Bert) {
    files.vocab = std::string(builtin_bert_vocab());
    files.tokenizer_config = parse_json_text(kBertTokenizerConfig, (files.dir / "tokenizer_config.json").string());
    files.special_tokens_map = parse_json_text(kBertSpecialTokensMap, (files.dir / "special_tokens_map.json").string());
    return load_bert_tokenizer(files);
  }
  derive_clip_vocab(builtin_clip_bpe(), files);
  files.tokenizer_config = parse_json_text(kClipTokenizerConfig, (files.dir / "tokenizer_config.json").string());
  files.special_tokens_map = parse_json_text(kClipSpecialTokensMap, (files.dir / "special_tokens_map.json").string());
  return load_clip_tokenizer(files);
}

namespace {

// A CLIP tokenizer folder's files: the built-in vocabulary with these settings.
std::vector<std::pair<std::string, std::string>> clip_tokenizer_files(const char* config, const char* special_tokens) {
  TokenizerFiles files;
  derive_clip_vocab(builtin_clip_bpe(), files);
  return {{"vocab.json", files.vocab},
          {"merges.txt", files.merges},
          {"tokenizer_config.json", config},
          {"special_tokens_map.json", special_tokens}};
}

}  // namespace

std::vector<std::pair<std::string, std::string>> builtin_tokenizer_files(TextEncoderKind kind) {
  if (kind == TextEncoderKind::Bert)
    return {{"vocab.txt", std::string(builtin_bert_vocab())},
            {"tokenizer_config.json", kBertTokenizerConfig},
            {"special_tokens_map.json", kBertSpecialTokensMap}};
  return clip_tokenizer_files(kClipTokenizerConfig, kClipSpecialTokensMap);
}

// ---------------------------------------------------------------------------------------------------------
// SDXL: what diffusers' fetch_diffusers_config names for "xl_base" and "xl_inpaint" files
// (DIFFUSERS_DEFAULT_PIPELINE_PATHS; the inpainting UNet differs only in in_channels, which the file sets).

namespace {

constexpr const char* kSdxlHub = "stable-diffusion-xl-base-1.0";

void check_sdxl_tokenizer(const std::string& component) {
  if (component != "tokenizer" && component != "tokenizer_2")
    throw Error(std::string("built-in ") + kSdxlHub + ": no tokenizer '" + component +
                "' (there are tokenizer and tokenizer_2)");
}

}  // namespace

std::string builtin_sdxl_source(const std::string& component) {
  std::string file = component;
  if (component == "model_index") file = "model_index.json";
  else if (component == "scheduler") file = "scheduler/scheduler_config.json";
  else if (component != "tokenizer" && component != "tokenizer_2") file = component + "/config.json";
  return std::string("built-in ") + kSdxlHub + " " + file;
}

Json builtin_sdxl_model_index() {
  auto entry = [](const char* library, const char* name) { return Json::array({library, name}); };
  return Json{{"_class_name", "StableDiffusionXLPipeline"},
              {"feature_extractor", Json::array({nullptr, nullptr})},
              {"force_zeros_for_empty_prompt", true},
              {"image_encoder", Json::array({nullptr, nullptr})},
              {"scheduler", entry("diffusers", "EulerDiscreteScheduler")},
              {"text_encoder", entry("transformers", "CLIPTextModel")},
              {"text_encoder_2", entry("transformers", "CLIPTextModelWithProjection")},
              {"tokenizer", entry("transformers", "CLIPTokenizer")},
              {"tokenizer_2", entry("transformers", "CLIPTokenizer")},
              {"unet", entry("diffusers", "UNet2DConditionModel")},
              {"vae", entry("diffusers", "AutoencoderKL")}};
}

Json builtin_sdxl_config(const std::string& component) {
  const char* text = component == "unet"             ? kSdxlUNetConfig
                     : component == "vae"            ? kSdxlVaeConfig
                     : component == "scheduler"      ? kSdxlSchedulerConfig
                     : component == "text_encoder"   ? kClipTextConfig
                     : component == "text_encoder_2" ? kSdxlTextConfig2
                                                     : nullptr;
  if (!text)
    throw Error(std::string("built-in ") + kSdxlHub + " configs: no component '" + component +
                "' (there are unet, vae, scheduler, text_encoder and text_encoder_2; the tokenizers are "
                "builtin_sdxl_tokenizer)");
  return parse_json_text(text, builtin_sdxl_source(component));
}

std::unique_ptr<Tokenizer> builtin_sdxl_tokenizer(const std::string& component) {
  check_sdxl_tokenizer(component);
  const bool second = component == "tokenizer_2";
  TokenizerFiles files;
  files.dir = builtin_sdxl_source(component);
  derive_clip_vocab(builtin_clip_bpe(), files);
  files.tokenizer_config = parse_json_text(second ? kSdxlTokenizer2Config : kClipTokenizerConfig,
                                           (files.dir / "tokenizer_config.json").string());
  files.special_tokens_map = parse_json_text(second ? kSdxlTokenizer2SpecialTokensMap : kClipSpecialTokensMap,
                                             (files.dir / "special_tokens_map.json").string());
  return load_clip_tokenizer(files);
}

std::vector<std::pair<std::string, std::string>> builtin_sdxl_tokenizer_files(const std::string& component) {
  check_sdxl_tokenizer(component);
  return component == "tokenizer_2" ? clip_tokenizer_files(kSdxlTokenizer2Config, kSdxlTokenizer2SpecialTokensMap)
                                    : clip_tokenizer_files(kClipTokenizerConfig, kClipSpecialTokensMap);
}

}  // namespace taiyi
