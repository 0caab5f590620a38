// Safetensors reading (mmap; the header is validated by parse_safetensors_header, safetensors_header.cpp).
#include "taiyi/loaders/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <torch/torch.h>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

torch::Dtype torch_dtype(StDtype dtype) {
  switch (dtype) {
    case StDtype::F32: return torch::kFloat;
    case StDtype::F16: return torch::kHalf;
    case StDtype::BF16: return torch::kBFloat16;
    case StDtype::I64: return torch::kLong;
    case StDtype::I32: return torch::kInt;
    case StDtype::I16: return torch::kShort;
    case StDtype::I8: return torch::kChar;
    case StDtype::U8: return torch::kByte;
    case StDtype::BOOL: return torch::kBool;
    case StDtype::F64: return torch::kDouble;
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

}  // namespace taiyi
