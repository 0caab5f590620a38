// PyTorch checkpoints as lazy views of a private mapping (include/taiyi/loaders/torch_checkpoint.h), the way
// SafetensorsFile maps safetensors (safetensors.cpp): the mapping lives as long as the last tensor viewing it.
// torch.load(mmap=True) (torch/serialization.py) also views the records in place; unlike it, nothing here
// imports or calls what the pickle names (torch_pickle.cpp).
#include "taiyi/loaders/torch_checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include <torch/torch.h>

#include "taiyi/loaders/torch_pickle.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

namespace {

torch::Dtype torch_dtype(StorageDtype dtype) {
  switch (dtype) {
    case StorageDtype::Float: return torch::kFloat;
    case StorageDtype::Half: return torch::kHalf;
    case StorageDtype::BFloat16: return torch::kBFloat16;
    case StorageDtype::Double: return torch::kDouble;
    case StorageDtype::Int: return torch::kInt;
    case StorageDtype::Long: return torch::kLong;
    case StorageDtype::Short: return torch::kShort;
    case StorageDtype::Char: return torch::kChar;
    case StorageDtype::Byte: return torch::kByte;
    case StorageDtype::Bool: return torch::kBool;
  }
  return torch::kFloat;
}

struct Mapping {
  void* data = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (data != MAP_FAILED) munmap(data, size);
  }
};

std::shared_ptr<Mapping> map_file(const std::string& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(file + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    const std::string why = st.st_size == 0 ? "empty file" : std::string("cannot stat: ") + std::strerror(errno);
    ::close(fd);
    throw Error(file + ": " + why);
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  // Private and writable, as safetensors.cpp: a weight used in place that someone writes gets its own
  // copy of the page; the file never changes.
  mapping->data = mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->data == MAP_FAILED) throw Error(file + ": cannot map: " + std::strerror(errno));
  return mapping;
}

// From the first `length` bytes of a file of `size` bytes.
WeightsFormat detect_format(const uint8_t* head, uint64_t length, uint64_t size) {
  if (length >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return WeightsFormat::TorchZip;
  if (length >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) return WeightsFormat::TorchLegacy;
  if (length >= 9 && head[8] == '{') {
    uint64_t header = 0;
    for (int k = 7; k >= 0; --k) header = header << 8 | head[k];
    if (header >= 2 && header <= size - 8) return WeightsFormat::Safetensors;
  }
  return WeightsFormat::Unknown;
}

// The one-line refusal of a file that is not a torch.save zip archive.
void check_zip_format(const uint8_t* bytes, uint64_t size, const std::string& file) {
  switch (detect_weights_format(bytes, size)) {
    case WeightsFormat::TorchZip: return;
    case WeightsFormat::TorchLegacy:
      throw Error(file + ": a legacy (pre-1.6, non-zip) torch.save file, which taiyi does not read: re-save it with "
                  "PyTorch >= 1.6 (torch.save(torch.load(f), f2)) or convert it to safetensors");
    case WeightsFormat::Safetensors:
      throw Error(file + ": a safetensors file, not a torch.save checkpoint (read it as safetensors)");
    case WeightsFormat::Unknown: break;
  }
  throw Error(file + ": not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)");
}

}  // namespace

WeightsFormat detect_weights_format(const uint8_t* bytes, uint64_t size) { return detect_format(bytes, size, size); }

WeightsFormat detect_weights_format(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (!in || ec) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
  char head[9] = {};
  in.read(head, sizeof head);
  return detect_format(reinterpret_cast<const uint8_t*>(head), static_cast<uint64_t>(in.gcount()), size);
}

TorchCheckpoint read_torch_checkpoint(const fs::path& path) {
  const std::string file = path.string();
  std::shared_ptr<Mapping> mapping = map_file(file);
  const auto* bytes = static_cast<uint8_t*>(mapping->data);
  check_zip_format(bytes, mapping->size, file);
  TorchStateDict state_dict = read_torch_state_dict(bytes, mapping->size, file);
  TorchCheckpoint checkpoint;
  checkpoint.skipped = std::move(state_dict.skipped);
  checkpoint.placeholders = std::move(state_dict.placeholders);
  checkpoint.tensors.reserve(state_dict.tensors.size());
  for (const TensorRecord& t : state_dict.tensors) {
    // read_torch_state_dict checked that offset + extent lies within the record, and the record within the file.
    uint8_t* data = static_cast<uint8_t*>(mapping->data) + t.data_offset + t.storage_offset * element_size(t.dtype);
    auto keep_alive = mapping;
    torch::Tensor view = torch::from_blob(data, t.shape, t.stride, [keep_alive](void*) {},
                                          torch::TensorOptions().dtype(torch_dtype(t.dtype)));
    checkpoint.tensors.emplace_back(t.name, std::move(view));
  }
  return checkpoint;
}

}  // namespace taiyi
