// StateDict: weights by name as lazy views of mapped files, and loading libtorch modules by state-dict
// name from them (diffusers' load_model_dict_into_meta / transformers' _load_state_dict_into_meta_model:
// strict names and shapes, each tensor cast on its own).
#include "taiyi/loaders/state_dict.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include <torch/torch.h>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/torch_checkpoint.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

void StateDict::add(const std::string& name, torch::Tensor view, const std::string& origin) {
  auto [it, fresh] = tensors_.emplace(name, std::make_pair(std::move(view), origin.empty() ? source_ : origin));
  if (!fresh)
    throw Error((origin.empty() ? source_ : origin) + ": tensor " + quoted_name(name) + " also appears in " +
                it->second.second);
  names_.push_back(name);
}

void StateDict::merge(const StateDict& other) {
  for (const std::string& name : other.names()) add(name, *other.find(name), other.origin(name));
}

const torch::Tensor* StateDict::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.first;
}

const std::string& StateDict::origin(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? source_ : it->second.second;
}

uint64_t StateDict::nbytes() const {
  uint64_t total = 0;
  for (const auto& [name, entry] : tensors_) total += static_cast<uint64_t>(entry.first.numel()) * entry.first.element_size();
  return total;
}

static StateDict read_safetensors(const fs::path& path) {
  auto file = std::make_shared<SafetensorsFile>(path);
  StateDict weights = StateDict::named(path.string());
  for (const TensorInfo& info : file->tensors()) weights.add(info.name, file->tensor(info.name));
  return weights;
}

static StateDict read_torch_zip(const fs::path& path) {
  TorchCheckpoint checkpoint = read_torch_checkpoint(path);
  StateDict weights = StateDict::named(path.string());
  for (auto& [name, view] : checkpoint.tensors) weights.add(name, view);
  return weights;
}

StateDict read_weights_file(const fs::path& path) {
  const WeightsFormat format = detect_weights_format(path);
  if (format == WeightsFormat::Safetensors) return read_safetensors(path);
  if (format == WeightsFormat::TorchZip || format == WeightsFormat::TorchLegacy) return read_torch_zip(path);
  if (path.extension() == ".safetensors") return read_safetensors(path);  // its own error (truncated, bad header)
  if (path.extension() == ".ckpt" || path.extension() == ".pt" || path.extension() == ".pth" || path.extension() == ".bin")
    return read_torch_zip(path);  // its own error (not a zip, legacy format)
  throw Error(path.string() + ": not a weights file (expected safetensors or a PyTorch zip checkpoint: .bin, .ckpt, .pt)");
}

StateDict read_weights_files(const std::vector<fs::path>& paths) {
  if (paths.size() == 1) return read_weights_file(paths.front());
  StateDict weights = StateDict::named(paths.empty() ? std::string("(no files)") : paths.front().parent_path().string());
  for (const fs::path& path : paths) weights.merge(read_weights_file(path));
  return weights;
}

// Gives the page cache back once a tensor is copied, so that peak RSS stays near the size of the
// converted model rather than the model plus the mapped file.
void release_pages(const torch::Tensor& view) {
  const long page = sysconf(_SC_PAGESIZE);
  auto begin = reinterpret_cast<uintptr_t>(view.data_ptr());
  auto end = begin + view.nbytes();
  uintptr_t first = (begin + page - 1) / page * page;
  uintptr_t last = end / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

static bool matches_any(const std::string& key, const std::vector<std::string>& patterns) {
  for (const std::string& p : patterns) {
    if (key == p) return true;
    if (!p.empty() && p.back() == '.' && key.rfind(p, 0) == 0) return true;
  }
  return false;
}

static std::string shape_string(c10::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

static std::vector<std::pair<std::string, torch::Tensor>> state_dict_targets(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  return targets;
}

static WeightMismatch compare(const std::vector<std::pair<std::string, torch::Tensor>>& targets,
                              const StateDict& weights, const LoadOptions& options) {
  WeightMismatch result;
  std::set<std::string> used;
  for (const auto& [name, target] : targets) {
    const torch::Tensor* source = weights.find(name);
    if (!source) {
      if (!matches_any(name, options.ignore_missing)) result.missing.push_back(name);
      continue;
    }
    used.insert(name);
    if (source->sizes() != target.sizes()) {
      result.mis_shaped.push_back(name + " (file " + shape_string(source->sizes()) + ", model " +
                                  shape_string(target.sizes()) + ")");
    } else if (target.is_floating_point() && !source->is_floating_point()) {
      result.mis_shaped.push_back(name + " (file dtype " + std::string(c10::toString(source->scalar_type())) +
                                  ", expected a floating-point type)");
    }
  }
  for (const std::string& name : weights.names()) {
    if (!used.count(name) && !matches_any(name, options.ignore_unexpected)) result.unexpected.push_back(name);
  }
  std::sort(result.unexpected.begin(), result.unexpected.end());
  return result;
}

std::string WeightMismatch::message(const std::string& where) const {
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    const size_t shown = std::min<size_t>(names.size(), 12);
    for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + listed_name(names[i], 300);  // names from the files
    if (names.size() > shown) s += ", ... (" + std::to_string(names.size() - shown) + " more)";
    return s;
  };
  std::string msg = where + ": weights do not match the model:";
  if (!missing.empty()) msg += " " + std::to_string(missing.size()) + " missing [" + list(missing) + "];";
  if (!unexpected.empty()) msg += " " + std::to_string(unexpected.size()) + " unexpected [" + list(unexpected) + "];";
  if (!mis_shaped.empty()) msg += " " + std::to_string(mis_shaped.size()) + " mis-shaped [" + list(mis_shaped) + "];";
  if (msg.back() == ';') msg.pop_back();
  return msg;
}

WeightMismatch check_weights(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options) {
  return compare(state_dict_targets(module), weights, options);
}

void load_weights(torch::nn::Module& module, const StateDict& weights, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> targets = state_dict_targets(module);
  WeightMismatch mismatch = compare(targets, weights, options);
  if (!mismatch.empty()) throw Error(mismatch.message(weights.source()));

  for (auto& [name, target] : targets) {
    const torch::Tensor* source = weights.find(name);
    const torch::Dtype dtype = target.is_floating_point() ? options.dtype : target.scalar_type();
    if (!source) {
      target.set_data(target.to(options.device, dtype));
      continue;
    }
    torch::Tensor loaded = load_tensor(*source, dtype, options.device);
    if (options.in_place && loaded.data_ptr() == source->data_ptr()) options.in_place->push_back(loaded);
    target.set_data(loaded);
  }
}

void load_weights(torch::nn::Module& module, const std::vector<fs::path>& files, const LoadOptions& options) {
  load_weights(module, read_weights_files(files), options);
}

torch::Tensor load_tensor(const torch::Tensor& source, torch::Dtype dtype, torch::Device device) {
  // On the CPU, a tensor stored in the compute dtype is used in place from the mapping, as diffusers'
  // safetensors loading does: no anonymous copy to fault in and fill (4 GB for the fp32 model), and the
  // pages stay shared with the page cache. Only when its data is aligned for the dtype and it is
  // contiguous (a pickled view with strides is copied). The mapping is private: writes to such a tensor
  // copy the pages they touch, never the file.
  if (device.is_cpu() && source.scalar_type() == dtype && source.is_contiguous() &&
      reinterpret_cast<uintptr_t>(source.data_ptr()) % source.element_size() == 0)
    return source;
  // One tensor at a time: convert on the CPU when that shrinks the transfer, else on the device.
  torch::Tensor converted;
  if (device.is_cpu() || static_cast<int64_t>(c10::elementSize(dtype)) < source.element_size())
    converted = source.to(dtype).contiguous().to(device);
  else
    converted = source.to(device).to(dtype).contiguous();
  if (converted.data_ptr() == source.data_ptr()) converted = converted.clone();  // never alias the mapping
  if (source.is_contiguous()) release_pages(source);  // a strided view may share pages with others still to read
  return converted;
}

}  // namespace taiyi
