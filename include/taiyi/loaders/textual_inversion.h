// Textual-inversion embeddings as users download them: the web UI's safetensors files (one tensor
// "emb_params" [vectors, dim], named by the file's stem; tools/convert.py writes .pt / .bin ones this
// way) and diffusers' learned_embeds.safetensors ({token: [dim] or [vectors, dim]}, named by its key).
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
  torch::Tensor vectors;  // [vectors, dim] float32, CPU
};

// Reads an embedding file. `name` empty: the web UI's file stem for emb_params files, the key for
// diffusers' single-tensor files; else the given name. Error naming the file for anything else.
TextualInversion read_embedding(const std::filesystem::path& path, const std::string& name = "");

// The *.safetensors files of a folder by stem (the web UI's embeddings folder); none when it is absent.
std::vector<std::filesystem::path> embedding_files(const std::filesystem::path& folder);

}  // namespace taiyi
