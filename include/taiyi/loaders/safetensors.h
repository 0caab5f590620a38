// Safetensors files, memory-mapped and validated, and strict loading of a libtorch module by name.
//
//   taiyi::SafetensorsFile file("unet/diffusion_pytorch_model.safetensors");
//   torch::Tensor w = file.tensor("conv_in.weight");           // a CPU view of the mapping
//
// The header is parsed and checked before use (parse_safetensors_header, safetensors_header.h); each
// problem is an Error naming the file and the tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "taiyi/loaders/safetensors_header.h"

namespace taiyi {

// The torch dtype of a safetensors dtype.
torch::Dtype torch_dtype(StDtype dtype);

class SafetensorsFile {
 public:
  // Maps and validates the file: header length within the file, JSON well-formed, dtypes F32, F16
  // or BF16, offsets in bounds, ordered and non-overlapping, spans equal to shape x element size,
  // no duplicate names.
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }
  // A CPU tensor viewing the mapped bytes (no copy). It keeps the mapping alive.
  torch::Tensor tensor(const std::string& name) const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace taiyi
