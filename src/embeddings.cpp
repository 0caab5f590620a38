// Textual-inversion files (the web UI's emb_params, diffusers' learned_embeds).
#include "taiyi/embeddings.h"

#include <algorithm>

#include "taiyi/error.h"
#include "taiyi/safetensors.h"

namespace taiyi {

namespace fs = std::filesystem;

TextualInversion read_embedding(const fs::path& path, const std::string& name) {
  if (!fs::is_regular_file(path)) throw Error(path.string() + ": embedding file not found");
  if (path.extension() != ".safetensors")
    throw Error(path.string() + ": embeddings are read from .safetensors (taiyi never unpickles); convert it with "
                "tools/convert.py --embedding " + path.string() + " " + path.stem().string() + ".safetensors");
  SafetensorsFile file(path);
  const auto& tensors = file.tensors();
  TextualInversion ti;
  ti.file = path.string();
  std::string key;
  if (file.find("emb_params")) {
    key = "emb_params";
    ti.name = path.stem().string();
  } else if (tensors.size() == 1) {
    key = tensors.front().name;
    ti.name = key;
  } else {
    std::string names;
    for (size_t i = 0; i < std::min<size_t>(tensors.size(), 5); ++i) names += (i ? ", " : "") + tensors[i].name;
    throw Error(path.string() + ": not a textual-inversion embedding: expected one tensor 'emb_params' (web UI) or "
                "a single {token: vectors} tensor (diffusers), found " + std::to_string(tensors.size()) +
                " tensors (" + names + ")");
  }
  if (!name.empty()) ti.name = name;
  const TensorInfo& info = *file.find(key);
  if (info.shape.empty() || info.shape.size() > 2 || info.numel() == 0)
    throw Error(path.string() + ": '" + key + "' has " + std::to_string(info.shape.size()) +
                " dimensions; an embedding is [dim] or [vectors, dim]");
  if (info.shape.size() == 2 && (info.shape[0] < 1 || info.shape[0] > 75))
    throw Error(path.string() + ": '" + key + "' holds " + std::to_string(info.shape[0]) +
                " vectors; at most 75 fit a prompt chunk");
  if (ti.name.empty() || ti.name.find_first_of(" \t\n\r") != std::string::npos)
    throw Error(path.string() + ": embedding name '" + ti.name + "' must be one word");
  ti.vectors = file.tensor(key).to(torch::kFloat).reshape({-1, info.shape.back()}).clone();
  if (!torch::isfinite(ti.vectors).all().item<bool>()) throw Error(path.string() + ": '" + key + "' holds NaN or Inf");
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
