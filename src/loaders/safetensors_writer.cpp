// Streaming safetensors writer, mirroring huggingface/safetensors' serialize_file (src/tensor.rs): the same
// order, header bytes and alignment, so that a tensor set written here equals safetensors.torch.save_file's
// file byte for byte (tests/loaders/test_safetensors_writer.cpp rewrites a diffusers file and compares).
#include "taiyi/loaders/safetensors_writer.h"

#include "taiyi/loaders/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <torch/torch.h>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;

namespace {

// safetensors' Dtype enum order (BOOL < U8 < ... < F16 < BF16 < ... < F32 < F64 < I64): files list the
// larger ones first.
int dtype_rank(StDtype dtype) {
  switch (dtype) {
    case StDtype::BOOL: return 0;
    case StDtype::U8: return 1;
    case StDtype::I8: return 2;
    case StDtype::I16: return 5;
    case StDtype::F16: return 7;
    case StDtype::BF16: return 8;
    case StDtype::I32: return 9;
    case StDtype::F32: return 11;
    case StDtype::F64: return 12;
    case StDtype::I64: return 13;
  }
  return 0;
}

// A JSON string as serde_json writes it: '"', '\\' and control characters escaped, the rest as it is.
std::string json_string(const std::string& text) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += std::string("\\u00") + hex[c >> 4] + hex[c & 15];
        else out += ch;
    }
  }
  return out + "\"";
}

uint64_t byte_size(const SafetensorsEntry& entry) {
  uint64_t n = element_size(entry.dtype);
  for (int64_t d : entry.shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Writes all of `size` bytes, retrying short writes; Error naming the file with errno's text otherwise.
void write_all(int fd, const void* data, uint64_t size, const fs::path& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<uint64_t>(size, 1u << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(path.string() + ": write failed: " + std::strerror(n < 0 ? errno : EIO));
    p += n;
    size -= static_cast<uint64_t>(n);
  }
}

void write_entry(int fd, const SafetensorsEntry& entry, const fs::path& path) {
  torch::Tensor tensor = entry.produce();
  if (tensor.scalar_type() != torch_dtype(entry.dtype) ||
      tensor.sizes() != c10::IntArrayRef(entry.shape) || !tensor.device().is_cpu())
    throw Error(path.string() + ": tensor " + quoted_name(entry.name) + " came out as " +
                std::string(c10::toString(tensor.scalar_type())) + " " + c10::str(tensor.sizes()) + ", declared " +
                to_string(entry.dtype) + " " + c10::str(c10::IntArrayRef(entry.shape)));
  tensor = tensor.contiguous();
  write_all(fd, tensor.data_ptr(), tensor.nbytes(), path);
  if (entry.written) entry.written();
}

}  // namespace

StDtype safetensors_dtype(torch::Dtype dtype, const std::string& what) {
  switch (dtype) {
    case torch::kFloat: return StDtype::F32;
    case torch::kHalf: return StDtype::F16;
    case torch::kBFloat16: return StDtype::BF16;
    case torch::kLong: return StDtype::I64;
    default:
      throw Error(what + ": dtype " + std::string(c10::toString(dtype)) +
                  " cannot be written (taiyi writes F32, F16, BF16 and I64 tensors)");
  }
}

void sort_safetensors_entries(std::vector<SafetensorsEntry>& entries) {
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    if (a.dtype != b.dtype) return dtype_rank(a.dtype) > dtype_rank(b.dtype);
    return a.name < b.name;  // std::string compares bytes as unsigned char, as Rust's String does
  });
}

std::string safetensors_header_bytes(const std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it)
      json += (it == metadata.begin() ? "" : ",") + json_string(it->first) + ":" + json_string(it->second);
    json += "}";
  }
  uint64_t offset = 0;
  for (const SafetensorsEntry& entry : entries) {
    if (json.size() > 1) json += ",";
    std::string shape;
    for (int64_t d : entry.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    const uint64_t end = offset + byte_size(entry);
    json += json_string(entry.name) + ":{\"dtype\":\"" + to_string(entry.dtype) + "\",\"shape\":[" + shape +
            "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  json += "}";
  json.append((8 - json.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string bytes(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return bytes + json;
}

uint64_t save_safetensors(std::vector<SafetensorsEntry> entries, const fs::path& path,
                          const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const SafetensorsEntry& entry : entries)
    if (!names.insert(entry.name).second) throw Error(path.string() + ": tensor " + quoted_name(entry.name) + " given twice");
  sort_safetensors_entries(entries);
  const std::string header = safetensors_header_bytes(entries, metadata);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path.string() + ": cannot create: " + std::strerror(errno));
  uint64_t size = header.size();
  try {
    write_all(fd, header.data(), header.size(), path);
    for (const SafetensorsEntry& entry : entries) {
      write_entry(fd, entry, path);
      size += byte_size(entry);
    }
    if (::fsync(fd) != 0) throw Error(path.string() + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw Error(path.string() + ": close failed: " + std::strerror(errno));
  return size;
}

}  // namespace taiyi
