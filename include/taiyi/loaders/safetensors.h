// Safetensors files, memory-mapped and validated, and strict loading of a libtorch module by name.
//
//   taiyi::SafetensorsFile file("unet/diffusion_pytorch_model.safetensors");
//   torch::Tensor w = file.tensor("conv_in.weight");           // a CPU view of the mapping
//   taiyi::load_weights(*unet, {path}, {torch::kHalf, torch::kCUDA});
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

namespace torch::nn {
class Module;
}

namespace taiyi {

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

struct LoadOptions {
  LoadOptions(torch::Dtype dtype_ = torch::kFloat, torch::Device device_ = torch::kCPU,
              std::vector<std::string> ignore_unexpected_ = {}, std::vector<std::string> ignore_missing_ = {})
      : dtype(dtype_), device(device_), ignore_unexpected(std::move(ignore_unexpected_)),
        ignore_missing(std::move(ignore_missing_)) {}
  torch::Dtype dtype = torch::kFloat;
  torch::Device device = torch::kCPU;
  // Keys in the files that may be absent from the module without error, by prefix or exact name
  // (e.g. "text_model.embeddings.position_ids", or "encoder." when only decoding).
  std::vector<std::string> ignore_unexpected;
  // Module keys that may be absent from the files (their initial values are kept).
  std::vector<std::string> ignore_missing;
};

// What load_weights would find wrong, from names and shapes alone (no tensor data is read): module
// keys absent from the files (less options.ignore_missing), file keys the module lacks (less
// options.ignore_unexpected), and keys whose shapes differ. `taiyi info` reports these per component.
struct WeightMismatch {
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;  // sorted
  std::vector<std::string> mis_shaped;  // "name (file [a, b], model [c, d])"
  bool empty() const { return missing.empty() && unexpected.empty() && mis_shaped.empty(); }
  // One line: "<where>: weights do not match the model: N missing [...]; N unexpected [...]; ...".
  std::string message(const std::string& where) const;
};
// Error when one tensor name appears in two of the files (shards).
WeightMismatch check_weights(torch::nn::Module& module, const std::vector<const SafetensorsFile*>& files,
                             const LoadOptions& options = {});

// Copies every parameter and buffer of `module` from the files by its state-dict name, converting
// to options.dtype and options.device tensor by tensor (never a second full copy of the model).
// Missing, unexpected and mis-shaped keys are all collected and reported in one Error.
// Integer buffers keep their dtype.
void load_weights(torch::nn::Module& module, const std::vector<std::filesystem::path>& files,
                  const LoadOptions& options = {});

// One tensor of a file as load_weights converts it to dtype on device (on the CPU, a view of the mapping
// when the file already holds that dtype): reloading a parameter this way restores it bit for bit.
torch::Tensor load_tensor(const SafetensorsFile& file, const std::string& name, torch::Dtype dtype, torch::Device device);

// Gives a mapped view's whole pages back (madvise DONTNEED) once it is copied: resident memory drops;
// a later read faults them in from the file again. Only for views of an unmodified mapping (writes to a
// private mapping would be lost).
void release_pages(const torch::Tensor& view);

}  // namespace taiyi
