// PNG encoding with text chunks, and atomic file writes; see include/taiyi/image.h.
#include "taiyi/image.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>

#include "taiyi/error.h"

namespace taiyi {

namespace fs = std::filesystem;

static uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

// UTF-8 -> Latin-1 when every code point is below 256; false otherwise.
static bool to_latin1(const std::string& utf8, std::string& latin1) {
  latin1.clear();
  for (size_t i = 0; i < utf8.size();) {
    auto c = static_cast<unsigned char>(utf8[i]);
    if (c < 0x80) {
      latin1 += static_cast<char>(c);
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < utf8.size()) {
      uint32_t cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(utf8[i + 1]) & 0x3Fu);
      if (cp >= 256) return false;
      latin1 += static_cast<char>(cp);
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

static void append_chunk(std::vector<uint8_t>& out, const char type[4], const std::string& payload) {
  put_u32(out, static_cast<uint32_t>(payload.size()));
  size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), payload.begin(), payload.end());
  put_u32(out, crc32(out.data() + start, out.size() - start));
}

std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height,
                                const std::vector<std::pair<std::string, std::string>>& text_chunks) {
  std::vector<uint8_t> png;
  auto sink = [](void* context, void* data, int size) {
    auto* bytes = static_cast<uint8_t*>(data);
    static_cast<std::vector<uint8_t>*>(context)->insert(static_cast<std::vector<uint8_t>*>(context)->end(), bytes,
                                                        bytes + size);
  };
  if (!stbi_write_png_to_func(sink, &png, width, height, 3, rgb, width * 3))
    throw Error("PNG encoding failed for a " + std::to_string(width) + "x" + std::to_string(height) + " image");
  // Text chunks go right after IHDR (8-byte signature + 25-byte IHDR chunk).
  std::vector<uint8_t> chunks;
  for (const auto& [keyword, text] : text_chunks) {
    std::string latin1;
    if (to_latin1(text, latin1)) {
      append_chunk(chunks, "tEXt", keyword + '\0' + latin1);
    } else {
      // keyword, NUL, compression flag 0, method 0, empty language tag NUL, empty translated keyword NUL, text
      append_chunk(chunks, "iTXt", keyword + std::string("\0\0\0\0\0", 5) + text);
    }
  }
  png.insert(png.begin() + 33, chunks.begin(), chunks.end());
  return png;
}

static void write_bytes_atomically(const fs::path& path, const char* data, size_t size) {
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  static std::mt19937_64 rng(std::random_device{}());
  fs::path temp = dir / ("." + path.filename().string() + ".tmp-" + std::to_string(rng() % 1000000000));
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path.string() + ": cannot write: " + std::strerror(errno));
  size_t written = 0;
  while (written < size) {
    ssize_t n = ::write(fd, data + written, size - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      throw Error(path.string() + ": write failed: " + std::strerror(err));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw Error(path.string() + ": write failed: " + std::strerror(err));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw Error(path.string() + ": cannot rename the finished file into place: " + std::strerror(err));
  }
}

void write_file_atomically(const fs::path& path, const std::vector<uint8_t>& bytes) {
  write_bytes_atomically(path, reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  write_bytes_atomically(path, text.data(), text.size());
}

std::vector<std::pair<std::string, std::string>> read_png_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 8 || data.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw Error(path.string() + ": not a PNG file");
  std::vector<std::pair<std::string, std::string>> texts;
  size_t pos = 8;
  while (pos + 12 <= data.size()) {
    uint32_t length = 0;
    for (int i = 0; i < 4; ++i) length = (length << 8) | static_cast<unsigned char>(data[pos + i]);
    std::string type = data.substr(pos + 4, 4);
    if (pos + 12 + length > data.size()) throw Error(path.string() + ": truncated PNG chunk " + type);
    std::string payload = data.substr(pos + 8, length);
    uint32_t stored_crc = 0;
    for (int i = 0; i < 4; ++i) stored_crc = (stored_crc << 8) | static_cast<unsigned char>(data[pos + 8 + length + i]);
    if (crc32(reinterpret_cast<const uint8_t*>(data.data() + pos + 4), length + 4) != stored_crc)
      throw Error(path.string() + ": bad CRC in PNG chunk " + type);
    size_t nul = payload.find('\0');
    if (type == "tEXt" && nul != std::string::npos) {
      std::string utf8;
      for (size_t i = nul + 1; i < payload.size(); ++i) {
        auto c = static_cast<unsigned char>(payload[i]);
        if (c < 0x80) {
          utf8 += static_cast<char>(c);
        } else {
          utf8 += static_cast<char>(0xC0 | (c >> 6));
          utf8 += static_cast<char>(0x80 | (c & 0x3F));
        }
      }
      texts.emplace_back(payload.substr(0, nul), utf8);
    } else if (type == "iTXt" && nul != std::string::npos && nul + 2 < payload.size() && payload[nul + 1] == 0) {
      size_t lang_end = payload.find('\0', nul + 3);
      size_t key_end = lang_end == std::string::npos ? std::string::npos : payload.find('\0', lang_end + 1);
      if (key_end != std::string::npos) texts.emplace_back(payload.substr(0, nul), payload.substr(key_end + 1));
    }
    if (type == "IEND") break;
    pos += 12 + length;
  }
  return texts;
}

}  // namespace taiyi
