// The pickle of torch.save files (include/taiyi/loaders/torch_pickle.h): an interpreter for the opcodes of
// CPython's Lib/pickle.py (listed in Lib/pickletools.py) that builds inert values only, and the state dict
// by diffusers' load_single_file_checkpoint rule (loaders/single_file_utils.py).
//
// Written here rather than taken from libtorch (torch::pickle_load, torch::jit::Unpickler): those read
// whole records into memory and resolve classes by name, while this one must never call or import
// anything, leave the storages unread (lazy views of the mapping), bound its memory by the pickle's size,
// and build without libtorch for the fuzz build.
//
// Values live in one arena and refer to each other by index, so that nothing here recurses on what the
// input nests (building, reading and freeing are all loops), and cycles through the memo are harmless.
#include "taiyi/loaders/torch_pickle.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <unordered_map>

#include "taiyi/loaders/torch_zip.h"
#include "taiyi/utils/error.h"

namespace taiyi {

const char* to_string(StorageDtype dtype) {
  static const char* const names[] = {"FloatStorage", "HalfStorage",  "BFloat16Storage", "DoubleStorage", "IntStorage",
                                      "LongStorage",  "ShortStorage", "CharStorage",     "ByteStorage",   "BoolStorage"};
  return names[static_cast<int>(dtype)];
}

size_t element_size(StorageDtype dtype) {
  static const size_t sizes[] = {4, 2, 2, 8, 4, 8, 2, 1, 1, 1};
  return sizes[static_cast<int>(dtype)];
}

namespace {

enum class Kind : uint8_t { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Set, Global, Placeholder, Storage, Tensor };

// The globals given meaning; every other one is a placeholder.
enum class Known : uint8_t { Other, RebuildTensorV2, RebuildParameter, RebuildFromTypeV2, OrderedDict, Size, Device, StorageType };

struct Object {
  Kind kind = Kind::None;
  Known known = Known::Other;  // Global
  StorageDtype dtype = StorageDtype::Float;  // Global of a storage type
  uint32_t depth = 0;          // containers: how deep they nest
  int64_t integer = 0;         // Int, Bool; Storage, Tensor: index into storages_ / tensors_
  double real = 0;             // Float
  std::string text;            // Str, Bytes; Global, Placeholder: "module.name"
  std::vector<uint32_t> items;  // Tuple, List, Set; Dict: key, value, key, value...
};

struct Storage {
  StorageDtype dtype;
  std::string key;
  uint64_t numel;
};

Known known_global(const std::string& module, const std::string& name, StorageDtype& dtype) {
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") return Known::RebuildTensorV2;
  if (module == "torch._utils" && (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state"))
    return Known::RebuildParameter;
  if (module == "torch._tensor" && name == "_rebuild_from_type_v2") return Known::RebuildFromTypeV2;
  if (module == "collections" && name == "OrderedDict") return Known::OrderedDict;
  if (module == "torch" && name == "Size") return Known::Size;
  if (module == "torch" && name == "device") return Known::Device;
  if (module == "torch") {
    for (int d = 0; d <= static_cast<int>(StorageDtype::Bool); ++d) {
      if (name == to_string(static_cast<StorageDtype>(d))) {
        dtype = static_cast<StorageDtype>(d);
        return Known::StorageType;
      }
    }
    if (name == "UntypedStorage") {  // torch.load reads it as bytes
      dtype = StorageDtype::Byte;
      return Known::StorageType;
    }
  }
  return Known::Other;
}

// The one-line reason a view [offset, shape, stride] does not fit a storage of `numel` elements, or "".
std::string view_problem(uint64_t numel, uint64_t offset, const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
  uint64_t last = offset, count = 1;
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const auto size = static_cast<uint64_t>(shape[i]), step = static_cast<uint64_t>(stride[i]);
    if (size == 0) empty = true;
    uint64_t extent = 0;
    if (__builtin_mul_overflow(count, size, &count) || count > static_cast<uint64_t>(INT64_MAX) ||
        (size > 0 && (__builtin_mul_overflow(size - 1, step, &extent) || __builtin_add_overflow(last, extent, &last))))
      return "its shape and stride overflow";
  }
  if (empty ? offset > numel : last >= numel)
    return "the view (offset " + std::to_string(offset) + ", last element " + std::to_string(last) +
           ") runs past the end of its storage of " + std::to_string(numel) + " elements";
  return "";
}

class Unpickler {
 public:
  Unpickler(const uint8_t* bytes, uint64_t size, const std::string& file) : bytes_(bytes), size_(size), file_(file) {}

  uint32_t run();
  TorchPickle state_dict(uint32_t root);

 private:
  const uint8_t* bytes_;
  uint64_t size_;
  const std::string& file_;
  uint64_t pos_ = 0, op_at_ = 0;
  std::vector<Object> objects_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
  std::vector<Storage> storages_;
  std::map<std::string, size_t> storage_keys_;
  std::vector<TensorRecord> tensors_;
  std::vector<std::string> placeholders_;
  std::map<std::string, bool> placeholder_seen_;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(file_ + ": pickle byte " + std::to_string(op_at_) + ": " + what);
  }
  // Reading the input.
  const uint8_t* take(uint64_t n, const char* what);
  uint64_t unsigned_le(int n);
  std::string text_line();
  int64_t parse_decimal(std::string line, bool allow_long) const;
  int64_t decimal_line(bool allow_long) { return parse_decimal(text_line(), allow_long); }
  // Values.
  uint32_t make(Kind kind);
  uint32_t make_text(Kind kind, uint64_t length);
  uint32_t make_int(int64_t value, Kind kind = Kind::Int);
  uint32_t make_sequence(Kind kind, std::vector<uint32_t> items);
  uint32_t placeholder(const std::string& name);
  const Object& at(uint32_t index) const { return objects_[index]; }
  void push(uint32_t index);
  uint32_t pop();
  uint32_t top() const;
  std::vector<uint32_t> pop_mark();
  void adopt(uint32_t container, const std::vector<uint32_t>& items);
  void add_items(Kind expected, const char* op, const std::vector<uint32_t>& items);
  // Opcodes, by group; each returns false for an opcode not its own.
  bool step();
  bool constant(uint8_t op);
  bool text(uint8_t op);
  bool container(uint8_t op);
  bool stack_or_memo(uint8_t op);
  bool object(uint8_t op);
  // What calling a global would give, without calling anything.
  uint32_t global(const std::string& module, const std::string& name);
  uint32_t call(uint32_t callable, uint32_t args, bool nested = false);
  uint32_t instantiate(uint32_t cls, uint32_t args);
  uint32_t rebuild_tensor(const std::vector<uint32_t>& args);
  uint32_t persistent_load(uint32_t pid);
  std::vector<int64_t> int_tuple(uint32_t index, const char* what);
};

const uint8_t* Unpickler::take(uint64_t n, const char* what) {
  if (n > size_ - pos_)
    fail(std::string(what) + " of " + std::to_string(n) + " bytes runs past the end of the pickle (" +
         std::to_string(size_ - pos_) + " bytes left): truncated or damaged file");
  const uint8_t* at = bytes_ + pos_;
  pos_ += n;
  return at;
}

uint64_t Unpickler::unsigned_le(int n) {
  const uint8_t* at = take(static_cast<uint64_t>(n), "an argument");
  uint64_t v = 0;
  for (int k = n - 1; k >= 0; --k) v = v << 8 | at[k];
  return v;
}

// Protocol 0's newline-ended arguments (GLOBAL's names, INT, GET...): at most 64 KiB.
std::string Unpickler::text_line() {
  const uint64_t limit = std::min<uint64_t>(size_ - pos_, 65536);
  const void* newline = std::memchr(bytes_ + pos_, '\n', limit);
  if (!newline) fail("a text argument has no end of line within 64 KiB");
  const auto length = static_cast<uint64_t>(static_cast<const uint8_t*>(newline) - (bytes_ + pos_));
  std::string line(reinterpret_cast<const char*>(bytes_ + pos_), length);
  pos_ += length + 1;
  return line;
}

int64_t Unpickler::parse_decimal(std::string line, bool allow_long) const {
  if (allow_long && !line.empty() && line.back() == 'L') line.pop_back();
  const size_t i = !line.empty() && line[0] == '-' ? 1 : 0;
  if (line.size() <= i || line.size() - i > 18) fail("bad decimal argument " + quoted_name(line, 40));
  for (size_t k = i; k < line.size(); ++k)
    if (line[k] < '0' || line[k] > '9') fail("bad decimal argument " + quoted_name(line, 40));
  return std::stoll(line);  // at most 18 digits: fits
}

uint32_t Unpickler::make(Kind kind) {
  if (objects_.size() >= kMaxPickleObjects) fail("more than " + std::to_string(kMaxPickleObjects) + " objects");
  objects_.emplace_back();
  objects_.back().kind = kind;
  return static_cast<uint32_t>(objects_.size() - 1);
}

uint32_t Unpickler::make_text(Kind kind, uint64_t length) {
  const uint8_t* at = take(length, kind == Kind::Str ? "a string" : "a bytes object");
  const uint32_t index = make(kind);
  objects_[index].text.assign(reinterpret_cast<const char*>(at), length);
  return index;
}

uint32_t Unpickler::make_int(int64_t value, Kind kind) {
  const uint32_t index = make(kind);
  objects_[index].integer = value;
  return index;
}

uint32_t Unpickler::make_sequence(Kind kind, std::vector<uint32_t> items) {
  const uint32_t index = make(kind);
  adopt(index, items);
  return index;
}

uint32_t Unpickler::placeholder(const std::string& name) {
  const uint32_t index = make(Kind::Placeholder);
  objects_[index].text = name;
  return index;
}

void Unpickler::push(uint32_t index) {
  if (stack_.size() >= kMaxPickleStack) fail("stack deeper than " + std::to_string(kMaxPickleStack));
  stack_.push_back(index);
}

uint32_t Unpickler::pop() {
  if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
  const uint32_t index = stack_.back();
  stack_.pop_back();
  return index;
}

uint32_t Unpickler::top() const {
  if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
  return stack_.back();
}

std::vector<uint32_t> Unpickler::pop_mark() {
  if (marks_.empty()) fail("no MARK to pop to");
  std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
  stack_.resize(marks_.back());
  marks_.pop_back();
  return items;
}

// Items into a container (key/value pairs into a dict), its nesting depth kept and limited.
void Unpickler::adopt(uint32_t container, const std::vector<uint32_t>& items) {
  if (objects_[container].kind == Kind::Dict && items.size() % 2 != 0) fail("dict items with a key and no value");
  for (uint32_t item : items) {
    const uint32_t depth = objects_[item].depth + 1;
    if (depth > kMaxPickleNesting) fail("containers nested more than " + std::to_string(kMaxPickleNesting) + " levels deep");
    objects_[container].depth = std::max(objects_[container].depth, depth);
  }
  objects_[container].items.insert(objects_[container].items.end(), items.begin(), items.end());
}

// APPEND(S), SETITEM(S), ADDITEMS on the object under them: a list, dict or set as the opcode expects; a
// placeholder takes them and stays inert (Python would call its methods).
void Unpickler::add_items(Kind expected, const char* op, const std::vector<uint32_t>& items) {
  const uint32_t container = top();
  if (at(container).kind == Kind::Placeholder) return;
  if (at(container).kind != expected) fail(std::string(op) + " on an object of the wrong type");
  adopt(container, items);
}

uint32_t Unpickler::run() {
  if (size_ > kMaxPickleBytes) fail("pickle of " + std::to_string(size_) + " bytes (limit " + std::to_string(kMaxPickleBytes) + ")");
  objects_.reserve(std::min<uint64_t>(size_ / 8 + 16, 1u << 20));
  while (step()) {
  }
  if (stack_.size() != 1 || !marks_.empty())
    fail("STOP with " + std::to_string(stack_.size()) + " objects and " + std::to_string(marks_.size()) +
         " marks on the stack (expected one object)");
  return stack_[0];
}

bool Unpickler::step() {
  op_at_ = pos_;
  if (pos_ >= size_) fail("the pickle ends without STOP: truncated file");
  const uint8_t op = bytes_[pos_++];
  if (op == '.') return false;  // STOP
  if (constant(op) || text(op) || container(op) || stack_or_memo(op) || object(op)) return true;
  if (op == 0x82 || op == 0x83 || op == 0x84) fail("extension registry codes (EXT1/2/4) are not supported");
  if (op == 0x97 || op == 0x98) fail("out-of-band buffers (NEXT_BUFFER/READONLY_BUFFER) are not supported");
  if (op == 'S' || op == 'V' || op == 'P')
    fail(std::string("protocol 0 opcode '") + static_cast<char>(op) + "' is not supported (torch.save writes protocol 2)");
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", op);
  fail(std::string("unknown pickle opcode ") + hex);
}

bool Unpickler::constant(uint8_t op) {
  switch (op) {
    case 0x80: {  // PROTO
      const uint64_t version = unsigned_le(1);
      if (version > 5) fail("pickle protocol " + std::to_string(version) + " (at most 5 is known)");
      return true;
    }
    case 0x95: {  // FRAME: a length to check; its opcodes follow as usual
      const uint64_t length = unsigned_le(8);
      if (length > size_ - pos_) fail("a frame of " + std::to_string(length) + " bytes runs past the end of the pickle");
      return true;
    }
    case 'N': push(make(Kind::None)); return true;
    case 0x88: push(make_int(1, Kind::Bool)); return true;  // NEWTRUE
    case 0x89: push(make_int(0, Kind::Bool)); return true;  // NEWFALSE
    case 'J': push(make_int(static_cast<int32_t>(unsigned_le(4)))); return true;  // BININT
    case 'K': push(make_int(static_cast<int64_t>(unsigned_le(1)))); return true;  // BININT1
    case 'M': push(make_int(static_cast<int64_t>(unsigned_le(2)))); return true;  // BININT2
    case 0x8a: case 0x8b: {  // LONG1, LONG4: little-endian two's complement of n bytes
      const uint64_t n = op == 0x8a ? unsigned_le(1) : unsigned_le(4);
      if (op == 0x8b && n > 0x7FFFFFFF) fail("LONG4 with a negative length");
      const uint8_t* at = take(n, "a long integer");
      if (n > 8) {
        push(make(Kind::BigInt));
        return true;
      }
      uint64_t v = n && (at[n - 1] & 0x80) ? ~uint64_t{0} : 0;
      for (uint64_t k = n; k-- > 0;) v = v << 8 | at[k];
      push(make_int(static_cast<int64_t>(v)));
      return true;
    }
    case 'G': {  // BINFLOAT, big-endian
      const uint8_t* at = take(8, "a float");
      uint64_t bits = 0;
      for (int k = 0; k < 8; ++k) bits = bits << 8 | at[k];
      const uint32_t index = make(Kind::Float);
      std::memcpy(&objects_[index].real, &bits, 8);
      push(index);
      return true;
    }
    default: return false;
  }
}

// Numbers and strings in their text (INT, LONG, FLOAT) and length-prefixed forms.
bool Unpickler::text(uint8_t op) {
  switch (op) {
    case 'I': {  // INT; protocol 0 writes booleans as "I01" and "I00"
      const std::string line = text_line();
      if (line == "00" || line == "01") push(make_int(line == "01", Kind::Bool));
      else push(make_int(parse_decimal(line, false)));
      return true;
    }
    case 'L': push(make_int(decimal_line(true))); return true;
    case 'F': {
      const std::string line = text_line();
      char* end = nullptr;
      const double value = std::strtod(line.c_str(), &end);
      if (line.empty() || end != line.c_str() + line.size()) fail("bad FLOAT argument " + quoted_name(line, 40));
      const uint32_t index = make(Kind::Float);
      objects_[index].real = value;
      push(index);
      return true;
    }
    case 'T': case 'X': {  // BINSTRING, BINUNICODE
      const uint64_t n = unsigned_le(4);
      if (op == 'T' && n > 0x7FFFFFFF) fail("BINSTRING with a negative length");
      push(make_text(Kind::Str, n));
      return true;
    }
    case 'U': case 0x8c: push(make_text(Kind::Str, unsigned_le(1))); return true;  // SHORT_BINSTRING, SHORT_BINUNICODE
    case 0x8d: push(make_text(Kind::Str, unsigned_le(8))); return true;            // BINUNICODE8
    case 'C': push(make_text(Kind::Bytes, unsigned_le(1))); return true;           // SHORT_BINBYTES
    case 'B': push(make_text(Kind::Bytes, unsigned_le(4))); return true;           // BINBYTES
    case 0x8e: case 0x96: push(make_text(Kind::Bytes, unsigned_le(8))); return true;  // BINBYTES8, BYTEARRAY8
    default: return false;
  }
}

bool Unpickler::container(uint8_t op) {
  switch (op) {
    case ']': push(make(Kind::List)); return true;   // EMPTY_LIST
    case ')': push(make(Kind::Tuple)); return true;  // EMPTY_TUPLE
    case '}': push(make(Kind::Dict)); return true;   // EMPTY_DICT
    case 0x8f: push(make(Kind::Set)); return true;   // EMPTY_SET
    case 'l': push(make_sequence(Kind::List, pop_mark())); return true;
    case 't': push(make_sequence(Kind::Tuple, pop_mark())); return true;
    case 'd': push(make_sequence(Kind::Dict, pop_mark())); return true;
    case 0x91: push(make_sequence(Kind::Set, pop_mark())); return true;  // FROZENSET
    case 0x85: case 0x86: case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
      std::vector<uint32_t> items(static_cast<size_t>(op - 0x84));
      for (size_t k = items.size(); k-- > 0;) items[k] = pop();
      push(make_sequence(Kind::Tuple, std::move(items)));
      return true;
    }
    case 'a': {  // APPEND
      const uint32_t value = pop();
      add_items(Kind::List, "APPEND", {value});
      return true;
    }
    case 's': {  // SETITEM
      const uint32_t value = pop(), key = pop();
      add_items(Kind::Dict, "SETITEM", {key, value});
      return true;
    }
    case 'e': add_items(Kind::List, "APPENDS", pop_mark()); return true;
    case 'u': add_items(Kind::Dict, "SETITEMS", pop_mark()); return true;
    case 0x90: add_items(Kind::Set, "ADDITEMS", pop_mark()); return true;
    default: return false;
  }
}

bool Unpickler::stack_or_memo(uint8_t op) {
  switch (op) {
    case '(':  // MARK
      if (marks_.size() >= kMaxPickleMarks) fail("more than " + std::to_string(kMaxPickleMarks) + " open MARKs");
      marks_.push_back(stack_.size());
      return true;
    case '0':  // POP: the top object, or the mark when nothing is above it (pickle.py load_pop)
      if (!marks_.empty() && stack_.size() == marks_.back()) pop_mark(); else pop();
      return true;
    case '1': pop_mark(); return true;  // POP_MARK
    case '2': push(top()); return true;  // DUP
    case 'g': case 'h': case 'j': {      // GET, BINGET, LONG_BINGET
      const int64_t slot = op == 'g' ? decimal_line(false) : static_cast<int64_t>(unsigned_le(op == 'h' ? 1 : 4));
      auto it = memo_.find(static_cast<uint64_t>(slot));
      if (slot < 0 || it == memo_.end()) fail("memo slot " + std::to_string(slot) + " is read before it is set");
      push(it->second);
      return true;
    }
    case 'p': case 'q': case 'r': {  // PUT, BINPUT, LONG_BINPUT
      const int64_t slot = op == 'p' ? decimal_line(false) : static_cast<int64_t>(unsigned_le(op == 'q' ? 1 : 4));
      if (slot < 0) fail("negative memo slot");
      memo_[static_cast<uint64_t>(slot)] = top();
      return true;
    }
    case 0x94: {  // MEMOIZE
      const uint64_t slot = memo_.size();
      memo_[slot] = top();
      return true;
    }
    default: return false;
  }
}

bool Unpickler::object(uint8_t op) {
  switch (op) {
    case 'c': {  // GLOBAL
      const std::string module = text_line();
      push(global(module, text_line()));
      return true;
    }
    case 0x93: {  // STACK_GLOBAL
      const uint32_t name = pop(), module = pop();
      if (at(name).kind != Kind::Str || at(module).kind != Kind::Str) fail("STACK_GLOBAL with names that are not strings");
      const std::string module_name = at(module).text, global_name = at(name).text;  // copies: global() grows objects_
      push(global(module_name, global_name));
      return true;
    }
    case 'R': {  // REDUCE: callable(*args), never called
      const uint32_t args = pop(), callable = pop();
      push(call(callable, args));
      return true;
    }
    case 'b':  // BUILD: the state is dropped, the object stays inert
      pop();
      top();
      return true;
    case 0x81: {  // NEWOBJ
      const uint32_t args = pop(), cls = pop();
      push(instantiate(cls, args));
      return true;
    }
    case 0x92: {  // NEWOBJ_EX
      pop();
      const uint32_t args = pop(), cls = pop();
      push(instantiate(cls, args));
      return true;
    }
    case 'i': {  // INST
      const std::string module = text_line();
      const uint32_t cls = global(module, text_line());
      pop_mark();
      push(instantiate(cls, make(Kind::Tuple)));
      return true;
    }
    case 'o': {  // OBJ
      const std::vector<uint32_t> items = pop_mark();
      if (items.empty()) fail("OBJ without a class");
      push(instantiate(items[0], make(Kind::Tuple)));
      return true;
    }
    case 'Q': push(persistent_load(pop())); return true;  // BINPERSID
    default: return false;
  }
}

uint32_t Unpickler::global(const std::string& module, const std::string& name) {
  StorageDtype dtype = StorageDtype::Float;
  const Known known = known_global(module, name, dtype);
  const uint32_t index = make(Kind::Global);
  objects_[index].known = known;
  objects_[index].dtype = dtype;
  objects_[index].text = module + "." + name;
  if (known == Known::Other && !placeholder_seen_[objects_[index].text]) {
    placeholder_seen_[objects_[index].text] = true;
    placeholders_.push_back(objects_[index].text);
  }
  return index;
}

// REDUCE. Only the rebuild functions, OrderedDict(), torch.Size and torch.device mean something; any other
// callable gives a placeholder named after it.
uint32_t Unpickler::call(uint32_t callable, uint32_t args, bool nested) {
  const Object& f = at(callable);
  const std::string name = f.kind == Kind::Global || f.kind == Kind::Placeholder ? f.text : "a non-global callable";
  if (f.kind != Kind::Global || at(args).kind != Kind::Tuple) return placeholder(name);
  const std::vector<uint32_t> a = at(args).items;
  switch (f.known) {
    case Known::RebuildTensorV2: return rebuild_tensor(a);
    case Known::RebuildParameter:  // (data, requires_grad, backward_hooks[, state]): the tensor
      return !a.empty() && at(a[0]).kind == Kind::Tensor ? a[0] : placeholder(name);
    case Known::RebuildFromTypeV2:  // (func, new_type, args, state): func(*args), one level only
      return a.size() == 4 && !nested ? call(a[0], a[2], true) : placeholder(name);
    case Known::OrderedDict: return a.empty() ? make(Kind::Dict) : placeholder(name);
    case Known::Size: return a.size() == 1 && at(a[0]).kind == Kind::Tuple ? a[0] : placeholder(name);
    case Known::Device:
      if (!a.empty() && at(a[0]).kind == Kind::Str) {
        const uint32_t index = make(Kind::Str);
        objects_[index].text = at(a[0]).text;
        return index;
      }
      return placeholder(name);
    default: return placeholder(name);
  }
}

// NEWOBJ / INST / OBJ: an instance of a class, inert; OrderedDict() is a dict.
uint32_t Unpickler::instantiate(uint32_t cls, uint32_t args) {
  const Object& c = at(cls);
  if (c.kind == Kind::Global && c.known == Known::OrderedDict && at(args).kind == Kind::Tuple && at(args).items.empty())
    return make(Kind::Dict);
  return placeholder(c.kind == Kind::Global || c.kind == Kind::Placeholder ? c.text : "an instance of a non-global class");
}

std::vector<int64_t> Unpickler::int_tuple(uint32_t index, const char* what) {
  const Object& t = at(index);
  if (t.kind != Kind::Tuple) fail(std::string("_rebuild_tensor_v2: its ") + what + " is not a tuple");
  if (t.items.size() > kMaxTensorDims) fail(std::string("_rebuild_tensor_v2: its ") + what + " has more than 32 dimensions");
  std::vector<int64_t> values;
  for (uint32_t item : t.items) {
    if (at(item).kind != Kind::Int || at(item).integer < 0)
      fail(std::string("_rebuild_tensor_v2: its ") + what + " holds something other than a non-negative integer");
    values.push_back(at(item).integer);
  }
  return values;
}

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
// metadata]): a record of the view, checked against the storage's numel.
uint32_t Unpickler::rebuild_tensor(const std::vector<uint32_t>& args) {
  if (args.size() < 4) fail("_rebuild_tensor_v2 with " + std::to_string(args.size()) + " arguments (expected 6 or 7)");
  if (at(args[0]).kind != Kind::Storage) fail("_rebuild_tensor_v2 of something other than a storage");
  if (at(args[1]).kind != Kind::Int || at(args[1]).integer < 0) fail("_rebuild_tensor_v2 with a bad storage offset");
  const Storage& storage = storages_[static_cast<size_t>(at(args[0]).integer)];
  TensorRecord record;
  record.dtype = storage.dtype;
  record.storage_key = storage.key;
  record.storage_numel = storage.numel;
  record.storage_offset = static_cast<uint64_t>(at(args[1]).integer);
  record.shape = int_tuple(args[2], "size");
  record.stride = int_tuple(args[3], "stride");
  if (record.shape.size() != record.stride.size()) fail("_rebuild_tensor_v2 with a size and a stride of different lengths");
  const std::string problem = view_problem(storage.numel, record.storage_offset, record.shape, record.stride);
  if (!problem.empty()) fail("tensor of storage " + quoted_name(storage.key) + ": " + problem);
  tensors_.push_back(std::move(record));
  return make_int(static_cast<int64_t>(tensors_.size() - 1), Kind::Tensor);
}

// BINPERSID with torch.save's ('storage', torch.<T>Storage, key, location, numel).
uint32_t Unpickler::persistent_load(uint32_t pid) {
  const Object& p = at(pid);
  const auto& i = p.items;
  if (p.kind != Kind::Tuple || i.size() != 5 || at(i[0]).kind != Kind::Str || at(i[0]).text != "storage" ||
      at(i[1]).kind != Kind::Global || at(i[1]).known != Known::StorageType || at(i[2]).kind != Kind::Str ||
      at(i[3]).kind != Kind::Str || at(i[4]).kind != Kind::Int || at(i[4]).integer < 0)
    fail("unsupported persistent id (expected ('storage', torch.<type>Storage, key, location, numel))");
  Storage storage{at(i[1]).dtype, at(i[2]).text, static_cast<uint64_t>(at(i[4]).integer)};
  auto [it, added] = storage_keys_.emplace(storage.key, storages_.size());
  if (added) {
    storages_.push_back(storage);
  } else if (storages_[it->second].dtype != storage.dtype || storages_[it->second].numel != storage.numel) {
    fail("storage " + quoted_name(storage.key) + " is declared twice with different types or sizes");
  }
  return make_int(static_cast<int64_t>(it->second), Kind::Storage);
}

// A key in `skipped`: the string, or what it is.
std::string key_label(const Object& key) {
  if (key.kind == Kind::Str) return key.text;
  if (key.kind == Kind::Int) return "(integer key " + std::to_string(key.integer) + ")";
  return "(a key that is not a string)";
}

TorchPickle Unpickler::state_dict(uint32_t root) {
  TorchPickle result;
  result.placeholders = placeholders_;
  // diffusers: `while "state_dict" in checkpoint: checkpoint = checkpoint["state_dict"]`.
  uint32_t current = root;
  for (int level = 0; at(current).kind == Kind::Dict; ++level) {
    const std::vector<uint32_t>& items = at(current).items;
    int64_t found = -1;
    for (size_t k = 0; k < items.size(); k += 2)
      if (at(items[k]).kind == Kind::Str && at(items[k]).text == "state_dict") found = static_cast<int64_t>(k);
    if (found < 0) break;
    if (level == kMaxStateDictNesting)
      throw Error(file_ + ": \"state_dict\" nested more than " + std::to_string(kMaxStateDictNesting) + " levels deep");
    for (size_t k = 0; k < items.size(); k += 2)
      if (!(at(items[k]).kind == Kind::Str && at(items[k]).text == "state_dict")) result.skipped.push_back(key_label(at(items[k])));
    current = items[static_cast<size_t>(found) + 1];
  }
  const Object& dict = at(current);
  if (dict.kind != Kind::Dict)
    throw Error(file_ + ": the checkpoint holds no state dict: its top object is " +
         (dict.kind == Kind::Placeholder ? "an object of " + quoted_name(dict.text, 100) : std::string("not a dict")));
  // A key given twice keeps its first place and its last value, as a Python dict does.
  std::unordered_map<std::string, uint32_t> last;
  std::vector<std::string> order;
  for (size_t k = 0; k < dict.items.size(); k += 2) {
    const Object& key = at(dict.items[k]);
    if (key.kind != Kind::Str) {
      result.skipped.push_back(key_label(key));
    } else if (last.emplace(key.text, dict.items[k + 1]).second) {
      order.push_back(key.text);
    } else {
      last[key.text] = dict.items[k + 1];
    }
  }
  for (const std::string& name : order) {
    const Object& value = at(last[name]);
    if (value.kind != Kind::Tensor) {
      result.skipped.push_back(name);
      continue;
    }
    result.tensors.push_back(tensors_[static_cast<size_t>(value.integer)]);
    result.tensors.back().name = name;
  }
  return result;
}

}  // namespace

TorchPickle parse_torch_pickle(const uint8_t* bytes, uint64_t size, const std::string& file) {
  Unpickler unpickler(bytes, size, file);
  return unpickler.state_dict(unpickler.run());
}

TorchStateDict read_torch_state_dict(const uint8_t* bytes, uint64_t size, const std::string& file) {
  const TorchZip zip = parse_torch_zip(bytes, size, file);
  TorchStateDict result;
  result.top = zip.top;
  static_cast<TorchPickle&>(result) =
      parse_torch_pickle(bytes + zip.data_pkl->offset, zip.data_pkl->size, file + " (" + zip.data_pkl->name + ")");
  for (TensorRecord& t : result.tensors) {
    const ZipEntry* record = zip.record(t.storage_key);
    const std::string tensor = "tensor " + quoted_name(t.name);
    if (!record)
      throw Error(file + ": " + tensor + ": its storage record " + quoted_name(zip.top + "/data/" + t.storage_key) + " is missing");
    uint64_t bytes_needed = 0;
    if (__builtin_mul_overflow(t.storage_numel, element_size(t.dtype), &bytes_needed) || bytes_needed != record->size)
      throw Error(file + ": " + tensor + ": its storage declares " + std::to_string(t.storage_numel) + " elements of " +
                  to_string(t.dtype) + " (" + std::to_string(element_size(t.dtype)) + " bytes each), but its record " +
                  quoted_name(record->name) + " holds " + std::to_string(record->size) + " bytes");
    t.data_offset = record->offset;
  }
  return result;
}

}  // namespace taiyi
