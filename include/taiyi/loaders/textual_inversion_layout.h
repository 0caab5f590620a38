// Which tensors of a textual-inversion file hold the vectors, and the token name: the key mapping of
// read_embedding (textual_inversion.h), without libtorch so that it is fuzzed with the other parsers of
// outside input (tests/fuzz).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "taiyi/loaders/safetensors_header.h"

namespace taiyi {

struct EmbeddingLayout {
  // The tensor: "emb_params" (web UI), the file's single tensor (diffusers), or "clip_l" (SDXL: text_encoder's).
  std::string key;
  // SDXL files only: "clip_g", text_encoder_2's vectors; empty for SD 1 / SD 2 files.
  std::string key_2;
  std::string name;  // the token users write
  int64_t vectors = 0, dim = 0;
  int64_t dim_2 = 0;  // SDXL files only: clip_g's width
  bool sdxl() const { return !key_2.empty(); }
};

// `stem`: the file's stem (the web UI's name for emb_params and SDXL files); `name`: a name given instead.
// A file with both "clip_l" and "clip_g" is an SDXL embedding (the web UI's and diffusers' SDXL format; other
// tensors beside them are ignored, as the web UI ignores them). Error naming `file` when the tensors are not
// one embedding of [dim] or [vectors <= 75, dim] (for SDXL: two, of as many vectors), or the name is not one word.
EmbeddingLayout embedding_layout(const std::vector<TensorInfo>& tensors, const std::string& file,
                                 const std::string& stem, const std::string& name);

}  // namespace taiyi
