// Which tensor of a textual-inversion file holds the vectors, and the token name: the key mapping of
// read_embedding (textual_inversion.h), without libtorch so that it is fuzzed with the other parsers of
// outside input (tests/fuzz).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "taiyi/loaders/safetensors_header.h"

namespace taiyi {

struct EmbeddingLayout {
  std::string key;   // the tensor: "emb_params" (web UI) or the file's single tensor (diffusers)
  std::string name;  // the token users write
  int64_t vectors = 0, dim = 0;
};

// `stem`: the file's stem (the web UI's name for emb_params files); `name`: a name given instead.
// Error naming `file` when the tensors are not one embedding of [dim] or [vectors <= 75, dim], or the
// name is not one word.
EmbeddingLayout embedding_layout(const std::vector<TensorInfo>& tensors, const std::string& file,
                                 const std::string& stem, const std::string& name);

}  // namespace taiyi
