// torch.save's zip container (include/taiyi/loaders/torch_zip.h): the subset of the zip format (PKWARE
// APPNOTE 6.3) that caffe2/serialize/inline_container.cc writes through miniz. Every offset and size is
// checked against the file before use, with overflow-safe arithmetic; nothing is copied but the names.
#include "taiyi/loaders/torch_zip.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint64_t kEndSize = 22, kZip64EndSize = 56, kZip64LocatorSize = 20, kCentralSize = 46, kLocalSize = 30;

// Little-endian reads within [0, size): the caller checks the range first.
struct Bytes {
  const uint8_t* data;
  uint64_t size;
  uint64_t u(uint64_t at, int n) const {
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = v << 8 | data[at + static_cast<uint64_t>(k)];
    return v;
  }
  bool fits(uint64_t at, uint64_t n) const { return at <= size && n <= size - at; }
};

struct Archive {
  Bytes bytes;
  const std::string& file;
  [[noreturn]] void fail(const std::string& what) const { throw Error(file + ": " + what); }
};

struct End {
  uint64_t at = 0;        // where the central directory must end (the first end record)
  uint64_t entries = 0;
  uint64_t cd_offset = 0;
  uint64_t cd_size = 0;
};

// The zip64 end record through its locator, which sits just before the end record.
void read_zip64_end(const Archive& a, uint64_t end_at, End& end) {
  const Bytes& b = a.bytes;
  if (end_at < kZip64LocatorSize || b.u(end_at - kZip64LocatorSize, 4) != kZip64LocatorSignature)
    a.fail("zip end record asks for zip64 records, but there is no zip64 locator");
  const uint64_t record = b.u(end_at - kZip64LocatorSize + 8, 8);
  const uint64_t limit = end_at - kZip64LocatorSize;
  if (record > limit || limit - record < kZip64EndSize)
    a.fail("zip64 end record at byte " + std::to_string(record) + " lies past the end of the archive (" +
           std::to_string(limit) + " bytes before its locator): truncated or damaged file");
  if (b.u(record, 4) != kZip64EndSignature) a.fail("no zip64 end record at byte " + std::to_string(record));
  end.at = record;
  end.entries = b.u(record + 32, 8);
  end.cd_size = b.u(record + 40, 8);
  end.cd_offset = b.u(record + 48, 8);
}

End read_end(const Archive& a) {
  const Bytes& b = a.bytes;
  if (b.size < kEndSize) a.fail("not a zip archive (" + std::to_string(b.size) + " bytes)");
  // The end record is the last 22 bytes plus a comment of up to 65,535 bytes.
  const uint64_t lowest = b.size - kEndSize > 65535 ? b.size - kEndSize - 65535 : 0;
  for (uint64_t at = b.size - kEndSize + 1; at-- > lowest;) {
    if (b.u(at, 4) != kEndSignature || at + kEndSize + b.u(at + 20, 2) != b.size) continue;
    End end;
    end.at = at;
    end.entries = b.u(at + 10, 2);
    end.cd_size = b.u(at + 12, 4);
    end.cd_offset = b.u(at + 16, 4);
    if (b.u(at + 4, 2) != 0 || b.u(at + 6, 2) != 0) a.fail("a multi-disk zip archive is not supported");
    const bool zip64 = end.entries == 0xFFFF || end.cd_size == 0xFFFFFFFF || end.cd_offset == 0xFFFFFFFF ||
                       (at >= kZip64LocatorSize && b.u(at - kZip64LocatorSize, 4) == kZip64LocatorSignature);
    if (zip64) read_zip64_end(a, at, end);
    if (end.entries > kMaxZipEntries)
      a.fail("zip archive declares " + std::to_string(end.entries) + " entries (limit " + std::to_string(kMaxZipEntries) + ")");
    if (end.cd_offset > end.at || end.cd_size > end.at - end.cd_offset)
      a.fail("zip central directory (" + std::to_string(end.cd_size) + " bytes at byte " + std::to_string(end.cd_offset) +
             ") lies outside the archive (its end record is at byte " + std::to_string(end.at) + ")");
    if (end.entries * kCentralSize > end.cd_size)
      a.fail("zip central directory of " + std::to_string(end.cd_size) + " bytes cannot hold the " +
             std::to_string(end.entries) + " entries it declares");
    return end;
  }
  a.fail("not a zip archive (no end of central directory record)");
}

struct Central {
  ZipEntry entry;
  uint64_t header = 0;  // the local header's offset
  uint64_t method = 0;
};

// The zip64 extended-information extra field (id 1): the 8-byte values of the fields whose 32-bit
// value is 0xFFFFFFFF, in the order uncompressed size, compressed size, local header offset.
void read_zip64_extra(const Archive& a, uint64_t at, uint64_t length, uint64_t* fields[3], const std::string& name) {
  const Bytes& b = a.bytes;
  for (uint64_t p = at; p + 4 <= at + length;) {
    const uint64_t id = b.u(p, 2), n = b.u(p + 2, 2);
    if (n > at + length - p - 4) a.fail("zip entry " + quoted_name(name) + ": extra field runs past its header");
    if (id == 1) {
      uint64_t q = p + 4;
      for (int k = 0; k < 3; ++k) {
        if (*fields[k] != 0xFFFFFFFF) continue;
        if (q + 8 > p + 4 + n) a.fail("zip entry " + quoted_name(name) + ": zip64 extra field too short");
        *fields[k] = b.u(q, 8);
        q += 8;
      }
      return;
    }
    p += 4 + n;
  }
}

Central read_central(const Archive& a, uint64_t& at, uint64_t cd_end) {
  const Bytes& b = a.bytes;
  if (cd_end - at < kCentralSize || b.u(at, 4) != kCentralSignature)
    a.fail("zip central directory entry at byte " + std::to_string(at) + " is damaged");
  const uint64_t name_length = b.u(at + 28, 2), extra_length = b.u(at + 30, 2), comment_length = b.u(at + 32, 2);
  if (name_length + extra_length + comment_length > cd_end - at - kCentralSize)
    a.fail("zip central directory entry at byte " + std::to_string(at) + " runs past the central directory");
  Central c;
  c.entry.name.assign(reinterpret_cast<const char*>(b.data + at + kCentralSize), name_length);
  const std::string& name = c.entry.name;
  const uint64_t flags = b.u(at + 8, 2);
  c.method = b.u(at + 10, 2);
  uint64_t compressed = b.u(at + 20, 4), size = b.u(at + 24, 4);
  c.header = b.u(at + 42, 4);
  uint64_t* fields[3] = {&size, &compressed, &c.header};
  read_zip64_extra(a, at + kCentralSize + name_length, extra_length, fields, name);
  if (flags & 1) a.fail("zip entry " + quoted_name(name) + " is encrypted");
  if (c.method != 0)
    a.fail("zip entry " + quoted_name(name) + " is compressed (method " + std::to_string(c.method) +
           "); only stored entries, as torch.save writes them, can be mapped: re-save it with "
           "torch.save(torch.load(f), f2) or convert it to safetensors");
  if (compressed != size)
    a.fail("zip entry " + quoted_name(name) + " declares " + std::to_string(compressed) + " stored bytes but " +
           std::to_string(size) + " uncompressed bytes");
  c.entry.size = size;
  at += kCentralSize + name_length + extra_length + comment_length;
  return c;
}

// The local header agrees with the central directory; the data starts after it.
void read_local(const Archive& a, Central& c, uint64_t cd_offset) {
  const Bytes& b = a.bytes;
  const std::string& name = c.entry.name;
  if (c.header > cd_offset || cd_offset - c.header < kLocalSize || b.u(c.header, 4) != kLocalHeaderSignature)
    a.fail("zip entry " + quoted_name(name) + ": no local header at byte " + std::to_string(c.header));
  const uint64_t name_length = b.u(c.header + 26, 2), extra_length = b.u(c.header + 28, 2);
  const uint64_t data = c.header + kLocalSize + name_length + extra_length;
  if (data > cd_offset || name_length != name.size() ||
      std::memcmp(b.data + c.header + kLocalSize, name.data(), name.size()) != 0)
    a.fail("zip entry " + quoted_name(name) + ": its local header does not match the central directory");
  const uint64_t flags = b.u(c.header + 6, 2), method = b.u(c.header + 8, 2);
  const uint64_t compressed = b.u(c.header + 18, 4), size = b.u(c.header + 22, 4);
  const bool sizes_here = !(flags & 8) && compressed != 0xFFFFFFFF && size != 0xFFFFFFFF;
  if (method != c.method || (sizes_here && (compressed != c.entry.size || size != c.entry.size)))
    a.fail("zip entry " + quoted_name(name) + ": its local header declares other sizes or method than the central directory");
  if (c.entry.size > cd_offset - data)
    a.fail("zip entry " + quoted_name(name) + " declares " + std::to_string(c.entry.size) + " bytes at byte " +
           std::to_string(data) + ", past the start of the central directory (byte " + std::to_string(cd_offset) + ")");
  c.entry.offset = data;
}

}  // namespace

std::vector<ZipEntry> parse_zip(const uint8_t* bytes, uint64_t size, const std::string& file) {
  const Archive a{Bytes{bytes, size}, file};
  const End end = read_end(a);
  std::vector<Central> centrals;
  centrals.reserve(end.entries);
  std::set<std::string> names;
  uint64_t at = end.cd_offset;
  for (uint64_t i = 0; i < end.entries; ++i) {
    centrals.push_back(read_central(a, at, end.cd_offset + end.cd_size));
    read_local(a, centrals.back(), end.cd_offset);
    if (!names.insert(centrals.back().entry.name).second)
      a.fail("zip entry " + quoted_name(centrals.back().entry.name) + " appears twice");
  }
  // Entries (local header to the end of the data) must not overlap: a record that shares bytes with
  // another would let one tensor's data alias another entry.
  std::vector<const Central*> by_offset;
  for (const Central& c : centrals) by_offset.push_back(&c);
  std::sort(by_offset.begin(), by_offset.end(), [](const Central* x, const Central* y) { return x->header < y->header; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Central& previous = *by_offset[i - 1];
    if (previous.entry.offset + previous.entry.size > by_offset[i]->header)
      a.fail("zip entries " + quoted_name(previous.entry.name) + " and " + quoted_name(by_offset[i]->entry.name) + " overlap");
  }
  std::vector<ZipEntry> entries;
  entries.reserve(centrals.size());
  for (Central& c : centrals) entries.push_back(std::move(c.entry));
  return entries;
}

const ZipEntry* TorchZip::record(const std::string& key) const {
  auto it = records.find(key);
  return it == records.end() ? nullptr : &entries[it->second];
}

TorchZip parse_torch_zip(const uint8_t* bytes, uint64_t size, const std::string& file) {
  TorchZip zip;
  zip.entries = parse_zip(bytes, size, file);
  if (zip.entries.empty()) throw Error(file + ": empty zip archive, not a torch.save file");
  // inline_container.cc: the first entry's folder is the archive's name, and every entry is under it.
  const std::string& first = zip.entries.front().name;
  const size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0)
    throw Error(file + ": zip entry " + quoted_name(first) + " is not in a top folder: not a torch.save archive");
  zip.top = first.substr(0, slash);
  const std::string prefix = zip.top + "/", data_prefix = prefix + "data/";
  for (size_t i = 0; i < zip.entries.size(); ++i) {
    const ZipEntry& entry = zip.entries[i];
    if (entry.name.compare(0, prefix.size(), prefix) != 0)
      throw Error(file + ": zip entry " + quoted_name(entry.name) + " is outside the archive's folder " + quoted_name(prefix));
    if (entry.name == prefix + "data.pkl") zip.data_pkl = &entry;
    if (entry.name == prefix + "byteorder") {
      const std::string order(reinterpret_cast<const char*>(bytes + entry.offset), std::min<uint64_t>(entry.size, 16));
      if (order != "little")
        throw Error(file + ": saved with byte order " + quoted_name(order) + "; only little-endian checkpoints are "
                    "read: re-save it on a little-endian machine or convert it to safetensors");
    }
    if (entry.name.compare(0, data_prefix.size(), data_prefix) == 0) {
      const std::string key = entry.name.substr(data_prefix.size());
      if (!key.empty() && key.find('/') == std::string::npos) zip.records.emplace(key, i);
    }
  }
  if (!zip.data_pkl) throw Error(file + ": no " + quoted_name(prefix + "data.pkl") + " in the zip archive: not a torch.save file");
  return zip;
}

}  // namespace taiyi
