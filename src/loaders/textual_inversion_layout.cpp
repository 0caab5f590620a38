// The key mapping of textual-inversion files (include/taiyi/loaders/textual_inversion_layout.h), as the web UI's
// textual_inversion.py (emb_params) and diffusers' loaders/textual_inversion.py ({token: vectors}) read them.
#include "taiyi/loaders/textual_inversion_layout.h"

#include <algorithm>

#include "taiyi/utils/error.h"

namespace taiyi {

EmbeddingLayout embedding_layout(const std::vector<TensorInfo>& tensors, const std::string& file,
                                 const std::string& stem, const std::string& name) {
  EmbeddingLayout layout;
  const TensorInfo* info = nullptr;
  for (const TensorInfo& t : tensors)
    if (t.name == "emb_params") info = &t;
  if (info) {
    layout.name = stem;
  } else if (tensors.size() == 1) {
    info = &tensors.front();
    layout.name = info->name;
  } else {
    std::string names;
    for (size_t i = 0; i < std::min<size_t>(tensors.size(), 5); ++i) names += (i ? ", " : "") + quoted_excerpt(tensors[i].name, 60);
    throw Error(file + ": not a textual-inversion embedding: expected one tensor 'emb_params' (web UI) or "
                "a single {token: vectors} tensor (diffusers), found " + std::to_string(tensors.size()) +
                " tensors" + (names.empty() ? std::string() : " (" + names + ")"));
  }
  layout.key = info->name;
  if (!name.empty()) layout.name = name;
  const std::string key = quoted_excerpt(layout.key, 60);
  if (info->shape.empty() || info->shape.size() > 2 || info->numel() == 0)
    throw Error(file + ": " + key + " has " + std::to_string(info->shape.size()) + " dimensions" +
                (info->numel() == 0 && !info->shape.empty() ? " and no values" : "") + "; an embedding is [dim] or [vectors, dim]");
  if (info->shape.size() == 2 && (info->shape[0] < 1 || info->shape[0] > 75))
    throw Error(file + ": " + key + " holds " + std::to_string(info->shape[0]) + " vectors; at most 75 fit a prompt chunk");
  if (layout.name.empty() || layout.name.size() > 200 || layout.name.find_first_of(" \t\n\r") != std::string::npos ||
      std::any_of(layout.name.begin(), layout.name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; }))
    throw Error(file + ": embedding name " + quoted_excerpt(layout.name, 60) + " must be one word");
  layout.dim = info->shape.back();
  layout.vectors = info->shape.size() == 2 ? info->shape[0] : 1;
  return layout;
}

}  // namespace taiyi
