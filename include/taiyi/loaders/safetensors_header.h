// The safetensors header alone: its parsing and validation, without libtorch, so that the fuzz build
// (tests/fuzz) is small. SafetensorsFile (safetensors.h) maps a file and calls this.
//
// Format: 8-byte little-endian header length n, n bytes of JSON {name: {dtype, shape,
// data_offsets:[begin,end]}, "__metadata__": {...}}, then the data buffer.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace taiyi {

// Weights are F32, F16 or BF16; the integer types and F64 are read for the buffers and counters checkpoints
// also hold (position_ids, a VAE file's model_ema.num_updates as I32) that loading ignores or reports.
enum class StDtype { F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F64 };
const char* to_string(StDtype dtype);
size_t element_size(StDtype dtype);

struct TensorInfo {
  std::string name;
  StDtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
  int64_t numel() const;  // validated: never overflows
};

// Limits that hold whatever a file says (the reference reader has the first; the others bound the
// memory a hostile header can make the parser use to a few times the header's length).
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;  // bytes, as huggingface/safetensors
constexpr size_t kMaxSafetensorsTensors = 100'000;       // SD 1.x checkpoints: ~1,100; SDXL LoRAs: ~7,000
constexpr size_t kMaxSafetensorsDims = 8;
constexpr size_t kMaxSafetensorsMetadata = 100'000;      // __metadata__ entries (kohya LoRAs: ~60)

struct SafetensorsHeader {
  uint64_t data_start = 0;            // 8 + header length
  std::vector<TensorInfo> tensors;    // sorted by offset (file order)
  std::map<std::string, std::string> metadata;
};

// Parses and validates the first `size` bytes of a file of `size` bytes (the whole file: offsets are
// checked against its end): header length within the file and the limit, JSON well-formed and at
// most 3 levels deep, known dtypes, shape x element size == byte span (no overflow), offsets
// contiguous from 0 to the end of the file, no duplicate names. Error naming `file` otherwise;
// quoted content is escaped and brief.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t size, const std::string& file);

}  // namespace taiyi
