// Writing safetensors files as huggingface/safetensors' serialize_file (safetensors.torch.save_file) writes
// them, streaming: the header first, then each tensor produced, cast and written on its own, so that a
// model is never held in memory twice.
//
//   std::vector<taiyi::SafetensorsEntry> entries = {{"conv_in.weight", torch::kHalf, {32, 4, 3, 3},
//                                                    [&] { return view.to(torch::kHalf); }}};
//   taiyi::save_safetensors(std::move(entries), "unet/diffusion_pytorch_model.safetensors");
//
// Layout (safetensors/src/tensor.rs, prepare + Metadata's Serialize): u64 little-endian header length, the
// JSON header {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}, ...} without spaces, padded
// with spaces to a multiple of 8 bytes, then the data; tensors sorted by dtype (larger dtype first: I64,
// F32, BF16, F16), then by name, so each one starts aligned for its dtype.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "taiyi/loaders/safetensors_header.h"

namespace taiyi {

struct SafetensorsEntry {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  // Called once, when the tensor's turn comes; must return a CPU tensor of `dtype` and `shape`.
  std::function<torch::Tensor()> produce;
  // Optional: called once the tensor's bytes are written (save_pretrained gives a mapped source's pages back).
  std::function<void()> written;
};

// The safetensors dtype of a torch dtype: F32, F16, BF16, I64; Error naming `what` for any other.
StDtype safetensors_dtype(torch::Dtype dtype, const std::string& what);

// The header bytes (length prefix included) for entries already in file order (sort_safetensors_entries):
// byte for byte what safetensors writes for the same tensors and metadata.
std::string safetensors_header_bytes(const std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata);
// safetensors' order: dtype descending, then name (bytes).
void sort_safetensors_entries(std::vector<SafetensorsEntry>& entries);

// Writes the file (created, or truncated) and fsyncs it; returns its size. Error naming `path` on a failed
// write (a full disk: ENOSPC), on a name given twice, or on a produced tensor whose dtype or shape is not
// the declared one. The caller removes a partial file (save_pretrained writes into a temporary folder).
uint64_t save_safetensors(std::vector<SafetensorsEntry> entries, const std::filesystem::path& path,
                          const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace taiyi
