// Textual-inversion embeddings as users download them: the web UI's safetensors files (one tensor
// "emb_params" [vectors, dim], named by the file's stem; tools/convert.py writes .pt / .bin ones this
// way), diffusers' learned_embeds.safetensors ({token: [dim] or [vectors, dim]}, named by its key), and SDXL's
// {"clip_l": [vectors, 768], "clip_g": [vectors, 1280]} (the web UI's and diffusers' SDXL format, named by the
// file's stem; diffusers loads it with two load_textual_inversion calls, one per text encoder and tokenizer).
// The pipeline gives each vector a token, as diffusers' load_textual_inversion does
// (loaders/textual_inversion.py): NAME, NAME_1, ... appended to the tokenizer and the token table.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace taiyi {

struct TextualInversion {
  std::string name;       // the token users write
  std::string file;
  torch::Tensor vectors;  // [vectors, dim] float32, CPU: text_encoder's rows (an SDXL file's "clip_l")
  // SDXL files only: "clip_g" [vectors, dim_2] float32, CPU, text_encoder_2's rows; undefined for SD 1 / SD 2 files.
  torch::Tensor vectors_2;
  bool is_sdxl() const { return vectors_2.defined(); }
};

// Reads an embedding file. `name` empty: the web UI's file stem for emb_params files, the key for
// diffusers' single-tensor files; else the given name. Error naming the file for anything else.
TextualInversion read_embedding(const std::filesystem::path& path, const std::string& name = "");

// Error (one line naming the file, the embedding and `model`) when the embedding is for the other model family:
// an SDXL file on an SD 1 / SD 2 model, or an SD 1 / SD 2 file on an SDXL model (`sdxl_model`:
// ModelFolder::is_sdxl()). The web UI skips both (their widths differ from the model's); taiyi says why.
void check_embedding_for_model(const TextualInversion& embedding, bool sdxl_model, const std::string& model);

// The *.safetensors files of a folder by stem (the web UI's embeddings folder); none when it is absent.
std::vector<std::filesystem::path> embedding_files(const std::filesystem::path& folder);

}  // namespace taiyi
