// Textual-inversion files (the web UI's emb_params, diffusers' learned_embeds).
#include "taiyi/loaders/textual_inversion.h"

#include <algorithm>

#include "taiyi/loaders/textual_inversion_layout.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"

namespace taiyi {

namespace fs = std::filesystem;

TextualInversion read_embedding(const fs::path& path, const std::string& name) {
  if (!fs::is_regular_file(path)) throw Error(path.string() + ": embedding file not found");
  if (path.extension() != ".safetensors")
    throw Error(path.string() + ": embeddings are read from .safetensors (taiyi never unpickles); convert it with "
                "tools/convert.py --embedding " + path.string() + " " + path.stem().string() + ".safetensors");
  SafetensorsFile file(path);
  const EmbeddingLayout layout = embedding_layout(file.tensors(), path.string(), path.stem().string(), name);
  TextualInversion ti;
  ti.file = path.string();
  ti.name = layout.name;
  // [dim] or [vectors, dim] -> [vectors, dim] float32, all finite.
  auto read_vectors = [&](const std::string& key) {
    const TensorInfo& info = *file.find(key);
    torch::Tensor vectors = file.tensor(key).to(torch::kFloat).reshape({-1, info.shape.back()}).clone();
    if (!torch::isfinite(vectors).all().item<bool>())
      throw Error(path.string() + ": " + quoted_excerpt(key, 60) + " holds NaN or Inf");
    return vectors;
  };
  ti.vectors = read_vectors(layout.key);
  if (layout.sdxl()) ti.vectors_2 = read_vectors(layout.key_2);
  return ti;
}

void check_embedding_for_model(const TextualInversion& embedding, bool sdxl_model, const std::string& model) {
  if (embedding.is_sdxl() == sdxl_model) return;
  if (embedding.is_sdxl())
    throw Error(embedding.file + ": embedding '" + embedding.name + "' is an SDXL embedding ('clip_l' and 'clip_g'); " +
                model + " is an SD 1 / SD 2 model, with one text encoder (use an embedding trained for it)");
  throw Error(embedding.file + ": embedding '" + embedding.name + "' is an SD 1 / SD 2 embedding (one vector set); " +
              model + " is an SDXL model, whose two text encoders take 'clip_l' and 'clip_g' vectors (use an SDXL embedding)");
}

std::vector<fs::path> embedding_files(const fs::path& folder) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (folder.empty() || !fs::is_directory(folder, ec)) return files;
  for (const auto& entry : fs::directory_iterator(folder, ec))
    if (entry.is_regular_file(ec) && entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// --- The pipeline's side: diffusers' TextualInversionLoaderMixin.load_textual_inversion ------------

namespace {

// An embedding's vectors fit a tokenizer and its text encoder's token table (checked before anything changes).
void check_embedding_fits(const TextualInversion& embedding, const torch::Tensor& vectors, const Tokenizer& tokenizer,
                          TextEncoderImpl& encoder, const std::string& component, const std::string& model) {
  const torch::Tensor& table = encoder.token_embedding().weight();
  const int64_t rows = table.size(0), dim = table.size(1);
  if (vectors.size(1) != dim)
    throw Error(embedding.file + ": embedding '" + embedding.name + "' has vectors of " + std::to_string(vectors.size(1)) +
                " values; " + component + "'s tokens have " + std::to_string(dim) + " (an embedding for another model?)");
  if (static_cast<int64_t>(tokenizer.vocab_size()) != rows)
    throw Error(embedding.file + ": textual inversion needs the tokenizer's " + std::to_string(tokenizer.vocab_size()) +
                " tokens to match " + component + "'s " + std::to_string(rows) + " token rows (" + model + ")");
}

}  // namespace

// SDXL: diffusers loads an SDXL file with two load_textual_inversion calls, "clip_l" into tokenizer / text_encoder
// and "clip_g" into tokenizer_2 / text_encoder_2, under the same token names.
void Pipeline::add_embedding(const TextualInversion& embedding) const {
  for (const TextualInversion& loaded : embeddings_)
    if (loaded.name == embedding.name) return;
  const std::string model = folder().root().string();
  check_embedding_for_model(embedding, folder().is_sdxl(), model);
  check_embedding_fits(embedding, embedding.vectors, *tokenizer_, *text_encoder_, "the text encoder", model);
  if (text_encoder_2_)
    check_embedding_fits(embedding, embedding.vectors_2, *tokenizer_2_, *text_encoder_2_, "text_encoder_2", model);
  c10::InferenceMode normal_tensors(false);
  torch::NoGradGuard no_grad;
  const auto count = static_cast<size_t>(embedding.vectors.size(0));
  tokenizer_->add_embedding_tokens(embedding.name, count);
  text_encoder_->token_embedding().append_rows(embedding.vectors);
  if (text_encoder_fp32_ && text_encoder_fp32_ != text_encoder_) text_encoder_fp32_->token_embedding().append_rows(embedding.vectors);
  if (text_encoder_2_) {
    tokenizer_2_->add_embedding_tokens(embedding.name, static_cast<size_t>(embedding.vectors_2.size(0)));
    text_encoder_2_->token_embedding().append_rows(embedding.vectors_2);
  }
  embeddings_.push_back(embedding);
}

std::vector<std::string> Pipeline::embedding_names() const {
  std::vector<std::string> names;
  for (const TextualInversion& ti : embeddings_) names.push_back(ti.name);
  return names;
}

void Pipeline::activate_embeddings(const std::string& text) const {
  for (auto it = embedding_folder_.begin(); it != embedding_folder_.end();) {
    if (text.find(it->first) != std::string::npos) {
      add_embedding(read_embedding(it->second, it->first));  // an Error leaves it to fail again next time
      it = embedding_folder_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace taiyi
