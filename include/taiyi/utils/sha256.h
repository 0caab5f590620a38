// SHA-256 (FIPS 180-4), for the short file hashes the web UI writes into PNG parameters ("Lora hashes")
// that model sites match. Plain C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace taiyi {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::string hex_digest();  // finishes the hash: 64 lowercase hex digits

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;
};

std::string sha256_hex(const std::string& bytes);
// The SHA-256 of a file's bytes from `offset` to its end (Error naming the file when unreadable).
std::string sha256_file(const std::filesystem::path& path, uint64_t offset = 0);

// sha256_file of a whole file through a cache, as the web UI's cache.json keeps model hashes: entries
// keyed by the absolute path and valid while its size and modification time are the same. The cache is
// `cache_file` (JSON); an unreadable or malformed cache is recomputed and rewritten, never an error.
std::string cached_sha256_file(const std::filesystem::path& path, const std::filesystem::path& cache_file);

}  // namespace taiyi
