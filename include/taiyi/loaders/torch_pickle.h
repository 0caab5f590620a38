// The pickle of a torch.save file (<top>/data.pkl), read without running anything and without libtorch,
// so that the fuzz build (tests/fuzz) is small: the tensor records of its state dict.
//
//   const TorchPickle pickle = parse_torch_pickle(bytes, size, "model.ckpt (archive/data.pkl)");
//   for (const TensorRecord& t : pickle.tensors) ...  // name, dtype, storage key, offset, shape, stride
//   const TorchStateDict sd = read_torch_state_dict(file_bytes, file_size, "model.ckpt");  // zip + pickle,
//                                                   // every record checked against its zip entry
//
// The interpreter builds only dicts, lists, tuples, strings, bytes, numbers, None and tensor records
// (torch._utils._rebuild_tensor_v2 / _rebuild_parameter over ('storage', torch.<T>Storage, key, location,
// numel) persistent ids, collections.OrderedDict). Every other global is an inert placeholder: calling,
// instantiating or building it gives another placeholder, so Lightning and web UI checkpoints with
// callbacks, hyper-parameters and optimizer state give their tensors and nothing else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace taiyi {

// The storage types torch.save names (torch.FloatStorage, ...), as their element type.
enum class StorageDtype { Float, Half, BFloat16, Double, Int, Long, Short, Char, Byte, Bool };
const char* to_string(StorageDtype dtype);  // "FloatStorage", ...
size_t element_size(StorageDtype dtype);

struct TensorRecord {
  std::string name;             // the state-dict key
  StorageDtype dtype = StorageDtype::Float;
  std::string storage_key;      // the record <top>/data/<key>
  uint64_t storage_numel = 0;   // elements of the storage
  uint64_t storage_offset = 0;  // elements
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // elements
  uint64_t data_offset = 0;     // read_torch_state_dict: the record's first byte in the file
};

// Limits that hold whatever a file says. A 12 GB Lightning checkpoint's pickle is a few MB with about a
// hundred thousand objects; memory stays within a small multiple of the pickle's size and under these.
constexpr uint64_t kMaxPickleBytes = 512ull << 20;
constexpr size_t kMaxPickleObjects = 4'000'000;  // about 80 bytes each
constexpr size_t kMaxPickleStack = 1'000'000;
constexpr size_t kMaxPickleMarks = 10'000;
// Python's pickler recurses once per level, so a file it wrote nests less deep than its recursion limit (1000).
constexpr uint32_t kMaxPickleNesting = 1'000;
constexpr size_t kMaxTensorDims = 32;
constexpr int kMaxStateDictNesting = 16;  // {"state_dict": {"state_dict": ...}}

struct TorchPickle {
  std::vector<TensorRecord> tensors;      // the state dict's tensors, in the pickle's order (data_offset 0)
  std::vector<std::string> skipped;       // keys not followed: other keys beside "state_dict" at every level
                                          // descended, and state-dict entries that are not tensors
  std::vector<std::string> placeholders;  // the distinct globals read as inert placeholders, first seen first
};

// Runs the pickle (protocols 2-5, not 0's text strings, out-of-band buffers or the extension registry),
// then takes the state dict by diffusers' load_single_file_checkpoint rule: while the object is a dict
// holding "state_dict", its value; then its string keys whose values are tensors. Checks each view
// (offset + extent within the storage's numel, no overflow). Error naming `file` and the byte offset for
// an unknown opcode, truncated input, a GET of an unset memo slot, a STOP with a non-empty stack, a malformed
// tensor or storage, or a limit passed.
TorchPickle parse_torch_pickle(const uint8_t* bytes, uint64_t size, const std::string& file);

struct TorchStateDict : TorchPickle {
  std::string top;  // the archive's top folder
};

// parse_torch_zip, parse_torch_pickle on <top>/data.pkl, then every tensor's record: present, exactly
// numel x element size bytes (a storage larger than its record, or two tensors naming one storage with
// other types or sizes, is an Error); data_offset set.
TorchStateDict read_torch_state_dict(const uint8_t* bytes, uint64_t size, const std::string& file);

}  // namespace taiyi
