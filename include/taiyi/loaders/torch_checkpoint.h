// PyTorch checkpoints (torch.save's zip format: .ckpt, .pt, .pth, pytorch_model.bin,
// diffusion_pytorch_model.bin) read without running code: the state dict as lazy CPU views of the mapped
// file, nothing read until a tensor is used.
//
//   taiyi::TorchCheckpoint ckpt = taiyi::read_torch_checkpoint("model.ckpt");
//   for (auto& [name, tensor] : ckpt.tensors) ...   // views of the mapping (shared by every tensor)
//
// The zip (torch_zip.h) and the pickle (torch_pickle.h) are parsed and checked before any view is made;
// each problem is an Error naming the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace taiyi {

struct TorchCheckpoint {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // file order; lazy views of the mapping
  // Both lists are raw text from the file: quote them (listed_name, utils/error.h) before printing.
  std::vector<std::string> skipped;       // keys not followed (e.g. "optimizer_states", "callbacks"), for `taiyi info`
  std::vector<std::string> placeholders;  // the distinct globals read as inert placeholders ("__main__.MyCallback")
};

// Maps the file privately (writes to a view copy the page, never the file) and returns its state dict: the
// tensors of diffusers' load_single_file_checkpoint rule (descend into "state_dict"), each with its
// stride and storage offset; tensors sharing a storage share its bytes. Error naming the file for a legacy
// (pre-1.6) or non-zip file, a compressed record, or anything parse_torch_zip / read_torch_state_dict refuse.
TorchCheckpoint read_torch_checkpoint(const std::filesystem::path& path);

// The format of a weights file from its first bytes.
enum class WeightsFormat {
  Safetensors,  // 8-byte little-endian header length, then '{'
  TorchZip,     // a zip local header ("PK\3\4"): torch.save since PyTorch 1.6
  TorchLegacy,  // a pickle (PROTO opcode): torch.save before 1.6, or _use_new_zipfile_serialization=False
  Unknown,
};
WeightsFormat detect_weights_format(const uint8_t* bytes, uint64_t size);
WeightsFormat detect_weights_format(const std::filesystem::path& path);  // reads the first 9 bytes; Error if unreadable

}  // namespace taiyi
