// StableDiffusionXLPipeline's part of Pipeline (diffusers 0.37.1 pipelines/stable_diffusion_xl/
// pipeline_stable_diffusion_xl.py): encode_prompt through two text encoders (each one's hidden_states[-2],
// concatenated; the second's pooled text_embeds) and the micro-conditioning time_ids of _get_add_time_ids.
// Pipeline::encode_batch_prompts puts them together for a batch (with force_zeros_for_empty_prompt); the
// denoising loop, img2img, inpainting, the hires fix and the decode are the shared ones
// (pipeline_stable_diffusion*.cpp): for SDXL they pass the added conditions to the UNet, and the VAE follows
// force_upcast (Pipeline::load).
#include <string>
#include <vector>

#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "taiyi/utils/error.h"

namespace taiyi {

void Pipeline::check_sdxl_components() const {
  const int64_t time_dim = unet_->addition_time_embed_dim();
  if (!is_sdxl()) {
    if (time_dim > 0)
      throw Error(folder().index_path().string() + ": the UNet has addition_embed_type \"text_time\" (SDXL), but " +
                  "model_index.json names no text_encoder_2: an SDXL refiner or a partial folder is not supported");
    return;
  }
  if (time_dim == 0)
    throw Error(folder().index_path().string() + ": an SDXL pipeline (text_encoder_2) needs a UNet with " +
                "addition_embed_type \"text_time\"; this one has none");
  // _get_add_time_ids' check: six time ids of addition_time_embed_dim each, then the pooled projection.
  const Config encoder_2 = source_.config("text_encoder_2");
  const int64_t projection = encoder_2.get_int("projection_dim", 512);  // CLIPTextConfig's default
  const int64_t passed = 6 * time_dim + projection;
  if (passed != unet_->projection_class_embeddings_input_dim())
    throw Error("the UNet expects an added time embedding vector of length " +
                std::to_string(unet_->projection_class_embeddings_input_dim()) + ", but a vector of " +
                std::to_string(passed) + " would be made (6 x addition_time_embed_dim " + std::to_string(time_dim) +
                " + text_encoder_2 projection_dim " + std::to_string(projection) + "): the configs do not match");
}

torch::Tensor Pipeline::add_time_ids(int64_t width, int64_t height) const {
  // original_size + crops_coords_top_left + target_size, in prompt_embeds' dtype.
  const std::vector<float> ids = {static_cast<float>(height), static_cast<float>(width), 0.0F, 0.0F,
                                  static_cast<float>(height), static_cast<float>(width)};
  return torch::tensor(ids).to(dtype_).reshape({1, 6}).to(device_);
}

PromptEmbeddings Pipeline::encode_text_xl(const std::string& text, int64_t index_from_end) {
  const TokenizedPrompt first = tokenize_prompt(*tokenizer_, text);
  const TokenizedPrompt second = tokenize_prompt(*tokenizer_2_, text);
  if (first.chunks.size() != second.chunks.size())
    throw Error("the two tokenizers split this prompt into " + std::to_string(first.chunks.size()) + " and " +
                std::to_string(second.chunks.size()) + " chunks: their vocabularies differ");
  // The web UI's SDXL conditioner: each encoder weighs its own chunk output (sd_hijack_clip.py per
  // embedder), the outputs are concatenated per token, the chunks along the sequence, and the pooled
  // embedding is the first chunk's (TextConditionalModel.forward: zs[0].pooled).
  std::vector<torch::Tensor> chunks;
  torch::Tensor pooled;
  for (size_t k = 0; k < first.chunks.size(); ++k) {
    const torch::Tensor ids_1 = torch::tensor(first.chunks[k].ids, torch::kLong).unsqueeze(0).to(device_);
    const torch::Tensor ids_2 = torch::tensor(second.chunks[k].ids, torch::kLong).unsqueeze(0).to(device_);
    const torch::Tensor hidden_1 = text_encoder_->hidden_state(ids_1, index_from_end).hidden;
    TextEncoderImpl::HiddenAndPooled out_2 = text_encoder_2_->hidden_state(ids_2, index_from_end);
    if (k == 0) pooled = out_2.pooled;
    chunks.push_back(torch::cat({apply_emphasis(hidden_1, first.chunks[k].weights),
                                 apply_emphasis(out_2.hidden, second.chunks[k].weights)},
                                -1));
  }
  return {chunks.size() == 1 ? chunks.front() : torch::cat(chunks, 1), pooled};
}

PromptEmbeddings Pipeline::encode_prompt_xl(const std::string& prompt, int64_t clip_skip) {
  if (!is_sdxl()) throw Error("encode_prompt_xl: not an SDXL model");
  if (clip_skip < 1) throw Error("clip skip " + std::to_string(clip_skip) + ": expected 1 or more");
  // diffusers: hidden_states[-(clip_skip + 2)] with its clip_skip = the web UI's - 1.
  return encode_text_xl(prompt, clip_skip + 1);
}

void Pipeline::place_text_encoders(bool on_device) {
  if (!options_.offload || !device_.is_cuda()) return;
  const torch::Device target = on_device ? device_ : torch::Device(torch::kCPU);
  c10::InferenceMode normal_tensors(false);  // parameters stay ordinary tensors, as load_weights made them
  torch::NoGradGuard no_grad;
  for (TextEncoderImpl* encoder : {text_encoder_.get(), text_encoder_2_.get(), text_encoder_fp32_.get()})
    if (encoder) encoder->to(target, /*non_blocking=*/false);
}

Conditioning Pipeline::resized_conditioning(const Conditioning& conditioning, int64_t width, int64_t height) const {
  if (!conditioning.added.defined()) return conditioning;
  Conditioning resized = conditioning;
  resized.added.time_ids = add_time_ids(width, height).expand({conditioning.added.time_ids.size(0), 6}).contiguous();
  return resized;
}

}  // namespace taiyi
