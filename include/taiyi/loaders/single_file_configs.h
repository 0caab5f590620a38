// What a single-file checkpoint (model.safetensors / .ckpt in the LDM layout) lacks, built into taiyi:
// the configs and tokenizers of the hub folders that diffusers' from_single_file would fetch. The
// configs are the hub files' values (stable-diffusion-v1-5 for the UNet, VAE, PNDM scheduler and CLIP
// text encoder; Taiyi-Stable-Diffusion-1B-Chinese-v0.1 for the BERT text encoder and its tokenizer);
// the vocabularies are the ones OpenAI and Google published (taiyi/tokenizers/builtin_vocab.h).
//
//   taiyi::Config unet(taiyi::builtin_config("unet", kind), taiyi::builtin_source(kind, "unet"));
//   auto tokenizer = taiyi::builtin_tokenizer(kind);  // no file read, no download
//
// The UNet config is SD 1.x's 4-channel one: a 9-channel (inpainting) file sets in_channels itself,
// as diffusers' stable-diffusion-inpainting config differs only there. An SDXL file (xl_base, xl_inpaint)
// takes stabilityai/stable-diffusion-xl-base-1.0's files instead (builtin_sdxl_*), which diffusers fetches
// for it. No torch here.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi {

// model_index.json of a StableDiffusionPipeline with this text encoder (CLIPTextModel + CLIPTokenizer, or
// BertModel + BertTokenizer), as diffusers 0.37.1 saves one built without a safety checker, feature
// extractor or image encoder (a single file holds none of them).
nlohmann::json builtin_model_index(TextEncoderKind kind);
// <component>/config.json ("unet", "vae", "text_encoder") or scheduler/scheduler_config.json
// ("scheduler"); Error naming the component for any other.
nlohmann::json builtin_config(const std::string& component, TextEncoderKind kind);
// The CLIPTokenizer of openai/clip-vit-large-patch14 (stable-diffusion-v1-5/tokenizer), or the
// BertTokenizer of Taiyi-Chinese-v0.1, from the built-in vocabularies.
std::unique_ptr<Tokenizer> builtin_tokenizer(TextEncoderKind kind);
// Where a built-in file comes from, for messages and `taiyi info`: "built-in stable-diffusion-v1-5
// unet/config.json", "built-in Taiyi-Stable-Diffusion-1B-Chinese-v0.1 tokenizer", "... model_index.json"
// (component "model_index"). Config(builtin_config(c, kind), builtin_source(kind, c)) names it in errors.
std::string builtin_source(TextEncoderKind kind, const std::string& component);
// The built-in tokenizer as the hub's tokenizer/ folder holds it, file name -> bytes: vocab.json, merges.txt,
// tokenizer_config.json and special_tokens_map.json (CLIP); vocab.txt, tokenizer_config.json and
// special_tokens_map.json (BERT). What `taiyi convert` writes for a single file.
std::vector<std::pair<std::string, std::string>> builtin_tokenizer_files(TextEncoderKind kind);

// stabilityai/stable-diffusion-xl-base-1.0: model_index.json as diffusers 0.37.1 saves a
// StableDiffusionXLPipeline built without a feature extractor or image encoder (force_zeros_for_empty_prompt
// true); the configs of "unet" (text_time, transformer_layers_per_block [1, 2, 10]), "vae" (scaling_factor
// 0.13025, force_upcast), "scheduler" (EulerDiscreteScheduler), "text_encoder" (CLIP ViT-L/14, as SD 1.x's)
// and "text_encoder_2" (OpenCLIP bigG: 1280 wide, 32 layers, projection 1280); Error for any other component.
nlohmann::json builtin_sdxl_model_index();
nlohmann::json builtin_sdxl_config(const std::string& component);
// "tokenizer" (CLIP ViT-L/14's, padding with <|endoftext|>) or "tokenizer_2" (the same vocabulary, padding
// with "!"), both 77 tokens; Error for any other name.
std::unique_ptr<Tokenizer> builtin_sdxl_tokenizer(const std::string& component);
// "built-in stable-diffusion-xl-base-1.0 unet/config.json", ... (component "model_index": model_index.json).
std::string builtin_sdxl_source(const std::string& component);
// The tokenizer folder's files ("tokenizer" or "tokenizer_2"), as builtin_tokenizer_files.
std::vector<std::pair<std::string, std::string>> builtin_sdxl_tokenizer_files(const std::string& component);

}  // namespace taiyi
