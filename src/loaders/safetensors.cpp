// Safetensors reading (mmap; the header is validated by parse_safetensors_header, safetensors_header.cpp)
// and loading modules by state-dict name.
#include "taiyi/loaders/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <unordered_map>

#include <torch/torch.h>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

static torch::Dtype torch_dtype(StDtype dtype) {
  switch (dtype) {
    case StDtype::F32: return torch::kFloat;
    case StDtype::F16: return torch::kHalf;
    case StDtype::BF16: return torch::kBFloat16;
    case StDtype::I64: return torch::kLong;
  }
  return torch::kFloat;
}

struct SafetensorsFile::Mapping {
  void* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data && data != MAP_FAILED) munmap(data, size);
  }
};

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  const std::string file = path.string();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(file + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(file + ": cannot stat: " + std::strerror(errno));
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw Error(file + ": truncated safetensors file (" + std::to_string(size_) + " bytes, no header)");
  }
  mapping_ = std::make_shared<Mapping>();
  mapping_->size = size_;
  // Private and writable: a weight used in place from the mapping (load_weights) that someone writes
  // gets its own copy of the page (copy-on-write); the file is never changed.
  mapping_->data = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_->data == MAP_FAILED) throw Error(file + ": cannot map: " + std::strerror(errno));
  SafetensorsHeader header = parse_safetensors_header(static_cast<const uint8_t*>(mapping_->data), size_, file);
  data_start_ = header.data_start;
  tensors_ = std::move(header.tensors);
  metadata_ = std::move(header.metadata);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() = default;

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (!info) throw Error(path_.string() + ": no tensor '" + name + "'");
  auto* ptr = static_cast<uint8_t*>(mapping_->data) + data_start_ + info->begin;
  auto keep_alive = mapping_;
  // A view of the private mapping: writes stay in this process (copy-on-write), the file is untouched.
  return torch::from_blob(ptr, info->shape, [keep_alive](void*) {}, torch::TensorOptions().dtype(torch_dtype(info->dtype)));
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

// Every tensor of the files by name; Error on a name found in two shards.
using TensorIndex = std::unordered_map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>>;
static TensorIndex index_tensors(const std::vector<const SafetensorsFile*>& files) {
  TensorIndex available;
  for (const SafetensorsFile* file : files) {
    for (const TensorInfo& info : file->tensors()) {
      if (!available.emplace(info.name, std::make_pair(file, &info)).second)
        throw Error(file->path().string() + ": tensor " + quoted_name(info.name) + " also appears in another shard");
    }
  }
  return available;
}

static std::vector<std::pair<std::string, torch::Tensor>> state_dict_targets(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  return targets;
}

static WeightMismatch compare(const std::vector<std::pair<std::string, torch::Tensor>>& targets,
                              const TensorIndex& available, const LoadOptions& options) {
  WeightMismatch result;
  std::set<std::string> used;
  for (const auto& [name, target] : targets) {
    auto it = available.find(name);
    if (it == available.end()) {
      if (!matches_any(name, options.ignore_missing)) result.missing.push_back(name);
      continue;
    }
    used.insert(name);
    const TensorInfo& info = *it->second.second;
    if (c10::IntArrayRef(info.shape) != target.sizes()) {
      result.mis_shaped.push_back(name + " (file " + shape_string(info.shape) + ", model " +
                                  shape_string(target.sizes()) + ")");
    } else if (target.is_floating_point() && info.dtype == StDtype::I64) {
      result.mis_shaped.push_back(name + " (file dtype I64, expected F32, F16 or BF16)");
    }
  }
  for (const auto& [name, where] : available) {
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

WeightMismatch check_weights(torch::nn::Module& module, const std::vector<const SafetensorsFile*>& files,
                             const LoadOptions& options) {
  return compare(state_dict_targets(module), index_tensors(files), options);
}

void load_weights(torch::nn::Module& module, const std::vector<fs::path>& files, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  std::vector<std::unique_ptr<SafetensorsFile>> opened;
  std::vector<const SafetensorsFile*> views;
  for (const fs::path& path : files) {
    opened.push_back(std::make_unique<SafetensorsFile>(path));
    views.push_back(opened.back().get());
  }
  const TensorIndex available = index_tensors(views);
  std::string directory = files.empty() ? std::string("(no files)") : files.front().parent_path().string();

  std::vector<std::pair<std::string, torch::Tensor>> targets = state_dict_targets(module);
  WeightMismatch mismatch = compare(targets, available, options);
  if (!mismatch.empty()) throw Error(mismatch.message(directory));

  for (auto& [name, target] : targets) {
    auto it = available.find(name);
    if (it == available.end()) {
      target.set_data(target.to(options.device, target.is_floating_point() ? options.dtype : target.scalar_type()));
      continue;
    }
    const torch::Dtype dtype = target.is_floating_point() ? options.dtype : target.scalar_type();
    target.set_data(load_tensor(*it->second.first, name, dtype, options.device));
  }
}

torch::Tensor load_tensor(const SafetensorsFile& file, const std::string& name, torch::Dtype dtype, torch::Device device) {
  torch::Tensor source = file.tensor(name);
  // On the CPU, a tensor stored in the compute dtype is used in place from the mapping, as diffusers'
  // safetensors loading does: no anonymous copy to fault in and fill (4 GB for the fp32 model), and the
  // pages stay shared with the page cache. Only when its data is aligned for the dtype. The mapping is
  // private: writes to such a tensor copy the pages they touch, never the file.
  if (device.is_cpu() && source.scalar_type() == dtype &&
      reinterpret_cast<uintptr_t>(source.data_ptr()) % source.element_size() == 0)
    return source;
  // One tensor at a time: convert on the CPU when that shrinks the transfer, else on the device.
  torch::Tensor converted;
  if (device.is_cpu() || static_cast<int64_t>(c10::elementSize(dtype)) < source.element_size())
    converted = source.to(dtype).to(device);
  else
    converted = source.to(device).to(dtype);
  if (converted.data_ptr() == source.data_ptr()) converted = converted.clone();  // never alias the mapping
  release_pages(source);
  return converted;
}

}  // namespace taiyi
