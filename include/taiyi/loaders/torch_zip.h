// The zip container of torch.save (PyTorch >= 1.6): its entries located and validated, without libtorch,
// so that the fuzz build (tests/fuzz) is small. read_torch_checkpoint (torch_checkpoint.h) maps a file and
// calls this; parse_torch_pickle (torch_pickle.h) reads <top>/data.pkl.
//
//   const TorchZip zip = parse_torch_zip(bytes, size, "model.ckpt");
//   const ZipEntry* pickle = zip.data_pkl;   // bytes + pickle->offset, pickle->size bytes
//   const ZipEntry* record = zip.record("0");  // <top>/data/0, a storage's bytes
//
// Layout, as caffe2/serialize/inline_container.cc (PyTorchStreamReader, writing through miniz) makes it:
// every entry STORED (method 0) under one top folder (`archive/`, or the file's stem in older PyTorch),
// local headers with a data descriptor (sizes in the central directory only), data aligned to 64 bytes,
// zip64 records past 4 GB or 65,535 entries.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace taiyi {

struct ZipEntry {
  std::string name;     // full name, e.g. "archive/data/0"
  uint64_t offset = 0;  // of the entry's data, from the start of the file
  uint64_t size = 0;    // bytes
};

// Limits that hold whatever a file says: a 12 GB Lightning checkpoint has a few thousand entries.
constexpr uint64_t kMaxZipEntries = 1'000'000;

struct TorchZip {
  std::string top;                  // the top folder, without the slash
  std::vector<ZipEntry> entries;    // in central-directory order
  const ZipEntry* data_pkl = nullptr;
  std::map<std::string, size_t> records;  // storage key ("0") -> index into entries of <top>/data/<key>
  const ZipEntry* record(const std::string& key) const;  // nullptr when absent
};

// The entries of a zip file of `size` bytes (all of it: offsets are checked against its end): the end of
// central directory (and the zip64 end record and its locator), the central directory entries and each
// entry's local header. Error naming `file` on a compressed or encrypted entry (saying how to re-save),
// an offset or size outside the file, entries overlapping each other or the central directory, a local
// header that disagrees with the central directory, or more than kMaxZipEntries entries.
std::vector<ZipEntry> parse_zip(const uint8_t* bytes, uint64_t size, const std::string& file);

// parse_zip, then the torch.save layout: one top folder holding data.pkl; byteorder, when present,
// "little"; records <top>/data/<key>. Error naming `file` otherwise.
TorchZip parse_torch_zip(const uint8_t* bytes, uint64_t size, const std::string& file);

}  // namespace taiyi
