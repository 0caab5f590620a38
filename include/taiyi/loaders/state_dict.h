// A component's weights by state-dict name, as lazy CPU views of memory-mapped files: safetensors, or
// torch.save zips (.bin, .ckpt) read by the restricted unpickler. Nothing is read until a tensor is used,
// so a 12 GB training checkpoint costs what the model takes from it. Loaders rename and reshape views
// (single-file conversion, 2022 VAE names) without touching the data.
//
//   taiyi::StateDict weights = taiyi::read_weights_file("unet/diffusion_pytorch_model.bin");
//   taiyi::load_weights(unet->module(), weights, {torch::kHalf, torch::kCUDA});
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace torch::nn {
class Module;
}

namespace taiyi {

class StateDict {
 public:
  StateDict() = default;
  // (No constructor from a name: load_weights(module, {path}) stays the file-list overload.)
  static StateDict named(std::string source) {
    StateDict weights;
    weights.source_ = std::move(source);
    return weights;
  }

  // What messages name: the file or folder the tensors come from.
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

  // Error naming `origin` (the file or shard) when the name is already present.
  void add(const std::string& name, torch::Tensor view, const std::string& origin = "");
  // Every tensor of `other` (shards); Error on a name present in both.
  void merge(const StateDict& other);
  const torch::Tensor* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  size_t size() const { return names_.size(); }
  bool empty() const { return names_.empty(); }
  const std::vector<std::string>& names() const { return names_; }  // in the order added
  // The file a tensor came from (for messages and `taiyi info`).
  const std::string& origin(const std::string& name) const;
  // The bytes the file holds for the tensors (element count x element size), without reading them.
  uint64_t nbytes() const;

 private:
  std::string source_;
  std::vector<std::string> names_;
  std::map<std::string, std::pair<torch::Tensor, std::string>> tensors_;
};

// Every tensor of one weights file: .safetensors (any name), or a torch.save zip (.bin, .ckpt, .pt, .pth),
// descending into "state_dict" as diffusers' load_single_file_checkpoint does. Error naming the file for
// a legacy (pre-1.6) pickle, a compressed record, or anything else.
StateDict read_weights_file(const std::filesystem::path& path);
// Several files (shards) as one StateDict; Error on a name found in two of them.
StateDict read_weights_files(const std::vector<std::filesystem::path>& paths);

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
  // When set, receives the module's tensors that are the files' own pages (CPU, same dtype): a caller
  // may give those pages back (release_pages) while the module is idle, as long as nothing wrote to them.
  std::vector<torch::Tensor>* in_place = nullptr;
};

// What load_weights would find wrong, from names and shapes alone (no tensor data is read): module
// keys absent from the weights (less options.ignore_missing), weights the module lacks (less
// options.ignore_unexpected), and keys whose shapes differ. `taiyi info` reports these per component.
struct WeightMismatch {
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;  // sorted
  std::vector<std::string> mis_shaped;  // "name (file [a, b], model [c, d])"
  bool empty() const { return missing.empty() && unexpected.empty() && mis_shaped.empty(); }
  // One line: "<where>: weights do not match the model: N missing [...]; N unexpected [...]; ...".
  std::string message(const std::string& where) const;
};
WeightMismatch check_weights(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options = {});

// Copies every parameter and buffer of `module` from the weights by its state-dict name, converting
// to options.dtype and options.device tensor by tensor (never a second full copy of the model).
// Missing, unexpected and mis-shaped keys are all collected and reported in one Error naming
// weights.source(). Integer buffers keep their dtype.
void load_weights(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options = {});
// The same from weight files (shards of one component).
void load_weights(torch::nn::Module& module, const std::vector<std::filesystem::path>& files,
                  const LoadOptions& options = {});

// One tensor as load_weights converts it to dtype on device (on the CPU, the view itself when it
// already holds that dtype and is aligned: the file's pages are used in place): reloading a parameter
// this way restores it bit for bit.
torch::Tensor load_tensor(const torch::Tensor& view, torch::Dtype dtype, torch::Device device);

// Gives a mapped view's whole pages back (madvise DONTNEED) once it is copied: resident memory drops;
// a later read faults them in from the file again. Only for views of an unmodified mapping (writes to a
// private mapping would be lost).
void release_pages(const torch::Tensor& view);

}  // namespace taiyi
