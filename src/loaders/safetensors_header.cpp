// The safetensors header: parsing and validation without libtorch (include/taiyi/loaders/safetensors_header.h).
// Mirrors the checks of the reference implementation (huggingface/safetensors, Rust, safetensors/src/
// tensor.rs): header length within the file and under 100 MB, JSON object, known dtype, shape x element
// size == byte span, offsets contiguous from 0 to the end of the file, no duplicate names.
//
// The JSON is read with nlohmann's SAX interface straight into TensorInfo, never into a DOM: memory stays
// about the size of the names plus 64 bytes a tensor, nesting is refused past the format's 3 levels
// before anything is kept, and every count has a limit.
#include "taiyi/loaders/safetensors_header.h"

#include <algorithm>
#include <cctype>
#include <string_view>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "taiyi/utils/error.h"

namespace taiyi {

const char* to_string(StDtype dtype) {
  switch (dtype) {
    case StDtype::F32: return "F32";
    case StDtype::F16: return "F16";
    case StDtype::BF16: return "BF16";
    case StDtype::I64: return "I64";
    case StDtype::I32: return "I32";
    case StDtype::I16: return "I16";
    case StDtype::I8: return "I8";
    case StDtype::U8: return "U8";
    case StDtype::BOOL: return "BOOL";
    case StDtype::F64: return "F64";
  }
  return "?";
}

size_t element_size(StDtype dtype) {
  switch (dtype) {
    case StDtype::F32: case StDtype::I32: return 4;
    case StDtype::I64: case StDtype::F64: return 8;
    case StDtype::I8: case StDtype::U8: case StDtype::BOOL: return 1;
    default: return 2;
  }
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // parse_safetensors_header checked that this fits
  return n;
}

namespace {

using json = nlohmann::json;

// A dtype name in a message: bare when a short word (F64, I8), else escaped and cut.
std::string dtype_in_message(const std::string& dtype) {
  const bool word = !dtype.empty() && dtype.size() <= 16 &&
                    std::all_of(dtype.begin(), dtype.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); });
  return word ? dtype : quoted_excerpt(dtype, 16);
}

// SAX handler: the top object's keys are tensor names (or __metadata__); each value an object with
// dtype (string), shape (list of sizes) and data_offsets ([begin, end]). Other keys of a tensor entry are
// skipped, as the reference's serde reader does.
class HeaderReader : public nlohmann::json_sax<json> {
 public:
  HeaderReader(const std::string& file, uint64_t data_size) : data_size(data_size), file_(file) {}

  SafetensorsHeader header;
  const uint64_t data_size;  // bytes after the header

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t) override { return scalar("a negative number"); }
  bool number_unsigned(number_unsigned_t value) override {
    if (skip_depth_ > 0) return true;
    if (where_ == Where::Shape) {
      if (info_.shape.size() >= kMaxSafetensorsDims)
        fail(tensor_where() + ": shape has more than " + std::to_string(kMaxSafetensorsDims) + " dimensions");
      if (value > static_cast<uint64_t>(INT64_MAX)) fail(tensor_where() + ": shape size " + std::to_string(value) + " is too large");
      info_.shape.push_back(static_cast<int64_t>(value));
      return true;
    }
    if (where_ == Where::Offsets) {
      if (offsets_count_ >= 2) fail(tensor_where() + ": data_offsets is not [begin, end]");
      (offsets_count_++ == 0 ? info_.begin : info_.end) = value;
      return true;
    }
    return scalar("a number");
  }
  bool number_float(number_float_t, const string_t&) override { return scalar("a fractional number"); }
  bool binary(binary_t&) override { return scalar("binary"); }

  bool string(string_t& value) override {
    if (skip_depth_ > 0) return true;
    if (where_ == Where::Metadata) {
      if (header.metadata.size() >= kMaxSafetensorsMetadata)
        fail(file_ + ": __metadata__ has more than " + std::to_string(kMaxSafetensorsMetadata) + " entries");
      header.metadata[key_] = std::move(value);
      return true;
    }
    if (where_ == Where::Dtype) {
      if (value == "F32") info_.dtype = StDtype::F32;
      else if (value == "F16") info_.dtype = StDtype::F16;
      else if (value == "BF16") info_.dtype = StDtype::BF16;
      // The others only for buffers such as older checkpoints' text_model.embeddings.position_ids (I64) or
      // a VAE file's model_ema.num_updates (I32), which loading ignores; a weight stored so is reported by
      // check_weights.
      else if (value == "I64") info_.dtype = StDtype::I64;
      else if (value == "I32") info_.dtype = StDtype::I32;
      else if (value == "I16") info_.dtype = StDtype::I16;
      else if (value == "I8") info_.dtype = StDtype::I8;
      else if (value == "U8") info_.dtype = StDtype::U8;
      else if (value == "BOOL") info_.dtype = StDtype::BOOL;
      else if (value == "F64") info_.dtype = StDtype::F64;
      else fail(tensor_where() + ": dtype " + dtype_in_message(value) + " is not supported (expected F32, F16 or BF16)");
      have_dtype_ = true;
      where_ = Where::Entry;
      return true;
    }
    return scalar("a string");
  }

  bool start_object(std::size_t) override {
    if (enter_skipped()) return true;
    switch (where_) {
      case Where::Start: where_ = Where::Top; return true;
      case Where::TopValue:
        if (key_ == "__metadata__") {
          where_ = Where::Metadata;
        } else {
          if (header.tensors.size() >= kMaxSafetensorsTensors)
            fail(file_ + ": more than " + std::to_string(kMaxSafetensorsTensors) + " tensors in the header");
          info_ = TensorInfo{};
          info_.name = key_;
          have_dtype_ = have_shape_ = have_offsets_ = false;
          where_ = Where::Entry;
        }
        return true;
      case Where::EntryValue: skip_depth_ = 1; return true;
      default: return scalar("an object");
    }
  }

  bool key(string_t& name) override {
    if (skip_depth_ > 0) return true;
    if (where_ == Where::Top) {
      if (!names_.insert(name).second) fail(file_ + ": duplicate tensor name " + quoted_name(name) + " in the header");
      key_ = std::move(name);
      where_ = Where::TopValue;
    } else if (where_ == Where::Metadata) {
      key_ = std::move(name);
    } else if (where_ == Where::Entry) {
      bool* seen = name == "dtype" ? &have_dtype_ : name == "shape" ? &have_shape_ : name == "data_offsets" ? &have_offsets_ : nullptr;
      if (seen && *seen) fail(tensor_where() + ": " + name + " appears twice");
      where_ = name == "dtype" ? Where::Dtype : name == "shape" ? Where::ShapeValue
             : name == "data_offsets" ? Where::OffsetsValue : Where::EntryValue;
    }
    return true;
  }

  bool end_object() override {
    if (leave_skipped()) return true;
    if (where_ == Where::Metadata) {
      where_ = Where::Top;
    } else if (where_ == Where::Entry) {
      finish_tensor();
      where_ = Where::Top;
    } else if (where_ == Where::Top) {
      where_ = Where::Done;
    }
    return true;
  }

  bool start_array(std::size_t) override {
    if (enter_skipped()) return true;
    if (where_ == Where::ShapeValue) {
      where_ = Where::Shape;
      have_shape_ = true;
    } else if (where_ == Where::OffsetsValue) {
      where_ = Where::Offsets;
      offsets_count_ = 0;
      have_offsets_ = true;
    } else if (where_ == Where::EntryValue) {
      skip_depth_ = 1;
    } else {
      return scalar("a list");
    }
    return true;
  }

  bool end_array() override {
    if (leave_skipped()) return true;
    if (where_ == Where::Offsets && offsets_count_ != 2) fail(tensor_where() + ": data_offsets is not [begin, end]");
    where_ = Where::Entry;
    return true;
  }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception&) override {
    error_position_ = position;
    return false;
  }

  size_t error_position() const { return error_position_; }

 private:
  enum class Where { Start, Top, TopValue, Metadata, Entry, EntryValue, Dtype, ShapeValue, Shape, OffsetsValue, Offsets, Done };

  [[noreturn]] void fail(const std::string& message) const { throw Error(message); }

  // Entering an object or list: the nesting limit, and whether it lies inside a skipped value.
  bool enter_skipped() {
    if (++depth_ > 3) fail(file_ + ": header nests deeper than a safetensors header does (3 levels)");
    return skip_depth_ > 0 && ++skip_depth_ > 0;
  }
  // Leaving one: whether it closed (part of) a skipped value, back in the tensor entry when all of it.
  bool leave_skipped() {
    --depth_;
    if (skip_depth_ == 0) return false;
    if (--skip_depth_ == 0) where_ = Where::Entry;
    return true;
  }

  std::string tensor_where() const { return file_ + ": tensor " + quoted_name(info_.name); }

  // A value that is not what its place expects (or a skipped value of an unknown entry key).
  bool scalar(const char* what) {
    if (skip_depth_ > 0 || where_ == Where::EntryValue) {
      if (where_ == Where::EntryValue && skip_depth_ == 0) where_ = Where::Entry;
      return true;
    }
    switch (where_) {
      case Where::Start: fail(file_ + ": header is not a JSON object");
      case Where::TopValue:
        if (key_ == "__metadata__") fail(file_ + ": __metadata__ is not an object");
        fail(file_ + ": tensor " + quoted_name(key_) + ": expected an object with dtype, shape and data_offsets");
      case Where::Metadata: fail(file_ + ": __metadata__[" + quoted_name(key_) + "] is not a string");
      case Where::Dtype: fail(tensor_where() + ": dtype is " + what + ", not a string such as \"F16\"");
      case Where::Shape:
      case Where::ShapeValue: fail(tensor_where() + ": shape is not a list of sizes");
      case Where::Offsets:
      case Where::OffsetsValue: fail(tensor_where() + ": data_offsets is not [begin, end]");
      default: fail(file_ + ": unexpected " + std::string(what) + " in the header");
    }
  }

  void finish_tensor() {
    if (!have_dtype_ || !have_shape_ || !have_offsets_)
      fail(tensor_where() + ": expected an object with dtype, shape and data_offsets");
    if (info_.begin > info_.end || info_.end > data_size)
      fail(tensor_where() + ": data_offsets [" + std::to_string(info_.begin) + ", " + std::to_string(info_.end) +
           "] out of bounds of the " + std::to_string(data_size) + "-byte data buffer (truncated file?)");
    // shape x element size, with every product checked: a hostile shape must not wrap around to the span.
    uint64_t expected = element_size(info_.dtype);
    bool overflow = false;
    for (int64_t d : info_.shape) overflow |= __builtin_mul_overflow(expected, static_cast<uint64_t>(d), &expected);
    if (overflow || info_.end - info_.begin != expected) {
      std::string shape = "[";
      for (size_t i = 0; i < info_.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(info_.shape[i]);
      fail(tensor_where() + ": byte span " + std::to_string(info_.end - info_.begin) + " does not match shape " + shape +
           "] x " + std::to_string(element_size(info_.dtype)) + " bytes" +
           (overflow ? " (which overflows)" : " = " + std::to_string(expected)));
    }
    header.tensors.push_back(std::move(info_));
  }

  const std::string& file_;
  Where where_ = Where::Start;
  int depth_ = 0;
  int skip_depth_ = 0;
  std::string key_;
  TensorInfo info_;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  int offsets_count_ = 0;
  std::unordered_set<std::string> names_;
  size_t error_position_ = 0;
};

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t size, const std::string& file) {
  if (size < 8) throw Error(file + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header)");
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxSafetensorsHeader)
    throw Error(file + ": header length " + std::to_string(header_size) + " is over the 100 MB limit (not a safetensors file?)");
  if (8 + header_size > size)
    throw Error(file + ": header length " + std::to_string(header_size) + " runs past the end of the file (" +
                std::to_string(size) + " bytes): truncated or not a safetensors file");

  HeaderReader reader(file, size - 8 - header_size);
  reader.header.data_start = 8 + header_size;
  const char* begin = reinterpret_cast<const char*>(bytes + 8);
  if (!json::sax_parse(begin, begin + header_size, &reader)) {
    // Not nlohmann's message: it quotes the bytes it last read, raw. A short escaped excerpt instead.
    const size_t position = reader.error_position();
    const size_t at = std::min<size_t>(position > 0 ? position - 1 : 0, header_size);
    const size_t from = at > 16 ? at - 16 : 0;
    throw Error(file + ": header is not valid JSON (error at byte " + std::to_string(position) + ", near " +
                quoted_excerpt(std::string_view(begin + from, std::min<size_t>(header_size - from, 32)), 32) +
                "): not a safetensors file, or a damaged one");
  }

  std::vector<TensorInfo>& tensors = reader.header.tensors;
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const TensorInfo& t : tensors) {
    if (t.begin != cursor)
      throw Error(file + ": tensor " + quoted_name(t.name) + " starts at byte " + std::to_string(t.begin) +
                  ", expected " + std::to_string(cursor) + " (overlapping or gapped data_offsets)");
    cursor = t.end;
  }
  if (cursor != reader.data_size)
    throw Error(file + ": tensors cover " + std::to_string(cursor) + " of the " + std::to_string(reader.data_size) +
                " data bytes (file size does not match its header)");
  return std::move(reader.header);
}

}  // namespace taiyi
