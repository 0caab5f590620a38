// Textual-inversion files (the web UI's emb_params, diffusers' learned_embeds).
#include "taiyi/loaders/textual_inversion.h"

#include <algorithm>

#include "taiyi/loaders/textual_inversion_layout.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"

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
  const std::string& key = layout.key;
  const TensorInfo& info = *file.find(key);
  ti.vectors = file.tensor(key).to(torch::kFloat).reshape({-1, info.shape.back()}).clone();
  if (!torch::isfinite(ti.vectors).all().item<bool>())
    throw Error(path.string() + ": " + quoted_excerpt(key, 60) + " holds NaN or Inf");
  return ti;
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

}  // namespace taiyi
