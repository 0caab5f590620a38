// The key mapping of textual-inversion files (include/taiyi/loaders/textual_inversion_layout.h), as the web UI's
// textual_inversion.py (create_embedding_from_data: emb_params, the SDXL {clip_l, clip_g} dict, a single
// tensor) and diffusers' loaders/textual_inversion.py ({token: vectors}) read them.
#include "taiyi/loaders/textual_inversion_layout.h"

#include <algorithm>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

const TensorInfo* find_tensor(const std::vector<TensorInfo>& tensors, const std::string& name) {
  for (const TensorInfo& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// The vectors of one tensor: [dim] is one vector, [vectors <= 75, dim] that many.
int64_t vector_count(const TensorInfo& info, const std::string& file) {
  const std::string key = quoted_excerpt(info.name, 60);
  if (info.shape.empty() || info.shape.size() > 2 || info.numel() == 0)
    throw Error(file + ": " + key + " has " + std::to_string(info.shape.size()) + " dimensions" +
                (info.numel() == 0 && !info.shape.empty() ? " and no values" : "") + "; an embedding is [dim] or [vectors, dim]");
  if (info.shape.size() == 2 && (info.shape[0] < 1 || info.shape[0] > 75))
    throw Error(file + ": " + key + " holds " + std::to_string(info.shape[0]) + " vectors; at most 75 fit a prompt chunk");
  return info.shape.size() == 2 ? info.shape[0] : 1;
}

std::string tensor_names(const std::vector<TensorInfo>& tensors) {
  std::string names;
  for (size_t i = 0; i < std::min<size_t>(tensors.size(), 5); ++i) names += (i ? ", " : "") + quoted_excerpt(tensors[i].name, 60);
  return names.empty() ? std::string() : " (" + names + ")";
}

}  // namespace

EmbeddingLayout embedding_layout(const std::vector<TensorInfo>& tensors, const std::string& file,
                                 const std::string& stem, const std::string& name) {
  EmbeddingLayout layout;
  const TensorInfo* info = find_tensor(tensors, "emb_params");
  const TensorInfo* clip_l = find_tensor(tensors, "clip_l");
  const TensorInfo* clip_g = find_tensor(tensors, "clip_g");
  const TensorInfo* info_2 = nullptr;
  if (info) {
    layout.name = stem;
  } else if (clip_l && clip_g) {  // SDXL: named by the file, as the web UI names it
    info = clip_l;
    info_2 = clip_g;
    layout.name = stem;
  } else if (clip_l || clip_g) {
    throw Error(file + ": an SDXL embedding holds both 'clip_l' (text_encoder) and 'clip_g' (text_encoder_2); this file has only " +
                (clip_l ? "'clip_l'" : "'clip_g'") + tensor_names(tensors));
  } else if (tensors.size() == 1) {
    info = &tensors.front();
    layout.name = info->name;
  } else {
    throw Error(file + ": not a textual-inversion embedding: expected one tensor 'emb_params' (web UI), "
                "a single {token: vectors} tensor (diffusers) or 'clip_l' and 'clip_g' (SDXL), found " +
                std::to_string(tensors.size()) + " tensors" + tensor_names(tensors));
  }
  layout.key = info->name;
  if (!name.empty()) layout.name = name;
  layout.vectors = vector_count(*info, file);
  layout.dim = info->shape.back();
  if (info_2) {
    layout.key_2 = info_2->name;
    layout.dim_2 = info_2->shape.back();
    // One token name stands for as many vectors in each encoder's prompt (the web UI counts clip_g's).
    const int64_t vectors_2 = vector_count(*info_2, file);
    if (vectors_2 != layout.vectors)
      throw Error(file + ": 'clip_l' holds " + std::to_string(layout.vectors) + " vectors and 'clip_g' " +
                  std::to_string(vectors_2) + "; an SDXL embedding has as many in both");
  }
  if (layout.name.empty() || layout.name.size() > 200 || layout.name.find_first_of(" \t\n\r") != std::string::npos ||
      std::any_of(layout.name.begin(), layout.name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; }))
    throw Error(file + ": embedding name " + quoted_excerpt(layout.name, 60) + " must be one word");
  return layout;
}

}  // namespace taiyi
