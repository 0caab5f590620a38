// PNG encoding with text chunks, and atomic file writes; see include/taiyi/utils/image.h.
#include "taiyi/utils/image.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
// stb_image calls memcpy(NULL, data, 0) for a PNG whose first IDAT chunk is empty (stbi__getn): undefined
// behaviour that UBSan reports (found by tests/fuzz). Its memcpy, and only its, does nothing for 0 bytes.
// (<cstring> above has declared the real one already.)
static inline void* stbi_memcpy(void* to, const void* from, size_t n) { return n ? std::memcpy(to, from, n) : to; }
#define memcpy stbi_memcpy
#include <stb_image.h>
#undef memcpy

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>

// After <cstdio>: jpeglib.h uses FILE and size_t without including their headers.
#include <jpeglib.h>
#include <jerror.h>

#include "taiyi/utils/error.h"

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

// The temporary name of a file being written: hidden, in the same folder (so that rename is atomic),
// with the writer's process id, so that remove_stale_temporaries can tell a killed run's leftovers
// from the files another live process (a --shard beside this one) is writing.
static constexpr const char* kTemporaryMark = ".taiyi-";
static constexpr const char* kTemporarySuffix = ".tmp";

static void write_bytes_atomically(const fs::path& path, const char* data, size_t size) {
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  static std::mt19937_64 rng(std::random_device{}());
  fs::path temp = dir / ("." + path.filename().string() + kTemporaryMark + std::to_string(::getpid()) + "-" +
                         std::to_string(rng() % 1000000000) + kTemporarySuffix);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path.string() + ": cannot write: " + std::strerror(errno));
  auto fail = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(temp.c_str());  // nothing partial is left: the file appears whole or not at all
    throw Error(path.string() + ": " + what + ": " + std::strerror(err));
  };
  size_t written = 0;
  while (written < size) {
    ssize_t n = ::write(fd, data + written, size - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write failed", errno);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail("write failed", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw Error(path.string() + ": write failed: " + std::strerror(err));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw Error(path.string() + ": cannot rename the finished file into place: " + std::strerror(err));
  }
  // The rename itself survives a power cut once the folder is synced (best effort: some file systems refuse).
  if (int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
}

size_t remove_stale_temporaries(const fs::path& folder) {
  size_t removed = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder.empty() ? fs::path(".") : folder, ec)) {
    const std::string name = entry.path().filename().string();
    const size_t mark = name.rfind(kTemporaryMark);
    if (name.empty() || name[0] != '.' || mark == std::string::npos || name.size() < 4 ||
        name.compare(name.size() - 4, 4, kTemporarySuffix) != 0)
      continue;
    // ".<name>.taiyi-<pid>-<random>.tmp": removed when that process is gone.
    const std::string rest = name.substr(mark + std::char_traits<char>::length(kTemporaryMark));
    char* end = nullptr;
    const long pid = std::strtol(rest.c_str(), &end, 10);
    if (pid <= 0 || !end || *end != '-') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) continue;  // still running
    if (fs::remove(entry.path(), ec)) ++removed;
  }
  return removed;
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
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_png_text(data, path.string());
}

std::vector<std::pair<std::string, std::string>> parse_png_text(std::string_view data, const std::string& name) {
  const fs::path path = name;  // for the messages below
  if (data.size() < 8 || data.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw Error(path.string() + ": not a PNG file");
  std::vector<std::pair<std::string, std::string>> texts;
  size_t pos = 8;
  while (pos + 12 <= data.size()) {
    uint32_t length = 0;
    for (int i = 0; i < 4; ++i) length = (length << 8) | static_cast<unsigned char>(data[pos + i]);
    const std::string type(data.substr(pos + 4, 4));
    if (pos + 12 + length > data.size()) throw Error(path.string() + ": truncated PNG chunk " + type);
    const std::string payload(data.substr(pos + 8, length));
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

// ---- image input ----

// PIL's RGB to L: L = R * 299/1000 + G * 587/1000 + B * 114/1000 in 16-bit fixed point.
static uint8_t rgb_to_l(const uint8_t* rgb) {
  return static_cast<uint8_t>((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16);
}

static std::string read_whole_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path.string() + ": image file not found");
  if (fs::is_directory(path, ec)) throw Error(path.string() + ": is a folder, expected an image file");
  const auto size = fs::file_size(path, ec);
  if (ec) throw Error(path.string() + ": cannot read the image file: " + ec.message());
  // An image of kMaxImageSide^2 pixels, even 16-bit RGBA stored raw, is 128 MiB: a larger file is not one
  // we take, and is refused before anything is read.
  if (size > kMaxImageFile)
    throw Error(path.string() + ": image file of " + std::to_string(size) + " bytes is larger than taiyi reads (256 MiB)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot read the image file");
  std::string data(static_cast<size_t>(size), '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (!in) throw Error(path.string() + ": cannot read the image file");
  return data;
}

std::pair<int64_t, int64_t> image_size(const fs::path& path) {
  const PixelImage probe = read_image(path, 1);
  return {probe.width, probe.height};
}

PixelImage read_image(const fs::path& path, int channels) {
  if (channels != 1 && channels != 3) throw Error("read_image: channels must be 1 or 3");
  const std::string data = read_whole_file(path);
  return decode_image(data, path.string(), channels);
}

// ---- JPEG: libjpeg-turbo, the decoder PIL's Image.open uses ----
// PIL's JpegDecode.c: default settings (islow IDCT, fancy upsampling), YCbCr to RGB in libjpeg,
// grayscale kept as L, CMYK as CMYK (inverted when an Adobe marker is present: rawmode "CMYK;I").
// libjpeg reports errors through error_exit, which must not return: it longjmps back to
// decode_jpeg_pixels, whose frame holds nothing with a destructor, and the message is thrown from there.

namespace {

constexpr int kMaxJpegScans = 500;  // libjpeg-turbo's own advice against progressive-scan DoS (djpeg -maxscans)
constexpr long kMaxJpegMemory = 512L << 20;  // a 4096^2 progressive CMYK image's coefficients need 128 MiB

struct JpegErrors {
  jpeg_error_mgr manager;  // first: libjpeg's pointer to it is a pointer to this
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_fail(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings are ignored as PIL ignores them, except the end of the data coming first: PIL refuses a
// truncated image ("image file is truncated") where libjpeg would fill the rest with gray.
void jpeg_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(cinfo);
}

void jpeg_scan_limit(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) {
    auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
    std::snprintf(errors->message, sizeof errors->message, "more than %d scans", kMaxJpegScans);
    std::longjmp(errors->jump, 1);
  }
}

enum class JpegColor { kGray, kRgb, kCmyk, kCmykInverted };

struct JpegHeader {
  int width = 0, height = 0, components = 0;
  JpegColor color = JpegColor::kRgb;
};

// Decodes into `pixels` (width*height*components bytes, resized once the header is read); returns false
// with errors.message set when libjpeg refuses the file. Only plain data lives in this frame.
bool decode_jpeg_pixels(const unsigned char* bytes, unsigned long size, JpegErrors& errors, JpegHeader& header,
                        std::vector<uint8_t>& pixels) {
  jpeg_decompress_struct cinfo;
  jpeg_progress_mgr progress;
  cinfo.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = jpeg_fail;
  errors.manager.emit_message = jpeg_warning;
  progress.progress_monitor = jpeg_scan_limit;
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &progress;
  cinfo.mem->max_memory_to_use = kMaxJpegMemory;
  jpeg_mem_src(&cinfo, bytes, size);
  jpeg_read_header(&cinfo, TRUE);
  header.width = static_cast<int>(cinfo.image_width);
  header.height = static_cast<int>(cinfo.image_height);
  if (header.width > kMaxImageSide || header.height > kMaxImageSide) {
    jpeg_destroy_decompress(&cinfo);
    return true;  // the caller names the size
  }
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; header.color = JpegColor::kGray; break;
    case JCS_YCbCr: case JCS_RGB: cinfo.out_color_space = JCS_RGB; header.color = JpegColor::kRgb; break;
    case JCS_CMYK: case JCS_YCCK:
      cinfo.out_color_space = JCS_CMYK;
      header.color = cinfo.saw_Adobe_marker ? JpegColor::kCmykInverted : JpegColor::kCmyk;
      break;
    default:
      std::snprintf(errors.message, sizeof errors.message, "%d color components that are not gray, RGB or CMYK",
                    cinfo.num_components);
      jpeg_destroy_decompress(&cinfo);
      return false;
  }
  jpeg_start_decompress(&cinfo);
  header.components = cinfo.output_components;
  const size_t row = static_cast<size_t>(cinfo.output_width) * static_cast<size_t>(header.components);
  pixels.resize(row * cinfo.output_height);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW rows[1] = {pixels.data() + row * cinfo.output_scanline};
    jpeg_read_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

// PIL's cmyk2rgb (Convert.c): each channel (255 - K) - C * (255 - K) / 255, rounded as MULDIV255.
uint8_t cmyk_channel(int ink, int black) {
  const int white = 255 - black;
  const int product = ink * white + 128;
  return static_cast<uint8_t>(std::clamp(white - (((product >> 8) + product) >> 8), 0, 255));
}

}  // namespace

static PixelImage decode_jpeg(std::string_view data, const std::string& name, int channels) {
  JpegErrors errors{};
  JpegHeader header;
  std::vector<uint8_t> decoded;
  if (!decode_jpeg_pixels(reinterpret_cast<const unsigned char*>(data.data()), data.size(), errors, header, decoded))
    throw Error(name + ": corrupt JPEG: " + errors.message);
  if (header.width <= 0 || header.height <= 0)
    throw Error(name + ": image of size " + std::to_string(header.width) + "x" + std::to_string(header.height));
  if (header.width > kMaxImageSide || header.height > kMaxImageSide)
    throw Error(name + ": image of " + std::to_string(header.width) + "x" + std::to_string(header.height) +
                " is larger than taiyi reads (" + std::to_string(kMaxImageSide) + " pixels a side)");
  PixelImage image;
  image.width = header.width;
  image.height = header.height;
  image.channels = channels;
  const size_t count = static_cast<size_t>(header.width) * static_cast<size_t>(header.height);
  if (header.color == JpegColor::kGray) {
    image.pixels.resize(count * static_cast<size_t>(channels));
    for (size_t i = 0; i < count; ++i)
      for (int k = 0; k < channels; ++k) image.pixels[i * static_cast<size_t>(channels) + static_cast<size_t>(k)] = decoded[i];
    return image;
  }
  if (header.color != JpegColor::kRgb) {  // CMYK to RGB in place, as PIL's convert("RGB")
    const bool inverted = header.color == JpegColor::kCmykInverted;
    for (size_t i = 0; i < count; ++i) {
      int ink[4];
      for (int k = 0; k < 4; ++k) ink[k] = inverted ? 255 - decoded[i * 4 + static_cast<size_t>(k)] : decoded[i * 4 + static_cast<size_t>(k)];
      for (int k = 0; k < 3; ++k) decoded[i * 3 + static_cast<size_t>(k)] = cmyk_channel(ink[k], ink[3]);
    }
    decoded.resize(count * 3);
  }
  if (channels == 3) {
    image.pixels = std::move(decoded);
  } else {
    image.pixels.resize(count);
    for (size_t i = 0; i < count; ++i) image.pixels[i] = rgb_to_l(&decoded[i * 3]);
  }
  return image;
}

PixelImage decode_image(std::string_view data, const std::string& name, int channels) {
  if (channels != 1 && channels != 3) throw Error("decode_image: channels must be 1 or 3");
  if (data.size() > kMaxImageFile)
    throw Error(name + ": image file of " + std::to_string(data.size()) + " bytes is larger than taiyi reads (256 MiB)");
  const auto* bytes = reinterpret_cast<const stbi_uc*>(data.data());
  const int length = static_cast<int>(data.size());
  const fs::path path = name;  // for the messages below
  int width = 0, height = 0, file_channels = 0;
  // A PNG's size is in its IHDR chunk (bytes 16-23, big-endian): checked first, so that the message
  // names it (stb_image refuses such headers too, but only as "corrupt").
  static const char kPngSignature[] = "\x89PNG\r\n\x1a\n";
  if (data.size() >= 24 && data.compare(0, 8, kPngSignature, 8) == 0) {
    auto be32 = [&](size_t at) {
      return (uint64_t{bytes[at]} << 24) | (uint64_t{bytes[at + 1]} << 16) | (uint64_t{bytes[at + 2]} << 8) | bytes[at + 3];
    };
    const uint64_t w = be32(16), h = be32(20);
    if (w > static_cast<uint64_t>(kMaxImageSide) || h > static_cast<uint64_t>(kMaxImageSide))
      throw Error(path.string() + ": image of " + std::to_string(w) + "x" + std::to_string(h) +
                  " is larger than taiyi reads (" + std::to_string(kMaxImageSide) + " pixels a side)");
    // Every chunk within the file: stb_image allocates an IDAT chunk's stated length before it reads
    // the chunk (found by tests/fuzz: a 30-byte file asking for 1.7 GB), so that length is checked here.
    for (size_t pos = 8; pos + 8 <= data.size();) {  // a chunk: length, type, data, CRC
      const uint64_t chunk = be32(pos);
      const std::string_view type = data.substr(pos + 4, 4);
      if (chunk + 4 > data.size() - pos - 8)
        throw Error(name + ": truncated PNG: chunk " + quoted_excerpt(type, 4) + " of " + std::to_string(chunk) +
                    " bytes runs past the end of the file");
      if (type == "IEND") break;
      pos += 12 + static_cast<size_t>(chunk);
    }
  }
  if (!data.empty() && static_cast<unsigned char>(data[0]) == 0xFF) return decode_jpeg(data, name, channels);
  if (!stbi_info_from_memory(bytes, length, &width, &height, &file_channels))
    throw Error(path.string() + ": not a PNG or JPEG image (" + stbi_failure_reason() + ")");
  if (width <= 0 || height <= 0) throw Error(path.string() + ": image of size " + std::to_string(width) + "x" + std::to_string(height));
  if (width > kMaxImageSide || height > kMaxImageSide)
    throw Error(path.string() + ": image of " + std::to_string(width) + "x" + std::to_string(height) +
                " is larger than taiyi reads (" + std::to_string(kMaxImageSide) + " pixels a side)");
  PixelImage image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  const size_t count = static_cast<size_t>(width) * static_cast<size_t>(height);
  const bool gray16 = (file_channels == 1 || file_channels == 2) && stbi_is_16_bit_from_memory(bytes, length);
  if (gray16) {
    // PIL opens 16-bit grayscale as I;16 and converts it by clipping to 255.
    int w = 0, h = 0, c = 0;
    stbi_us* values = stbi_load_16_from_memory(bytes, length, &w, &h, &c, 1);
    if (!values) throw Error(path.string() + ": cannot decode the image (" + stbi_failure_reason() + ")");
    image.pixels.resize(count * static_cast<size_t>(channels));
    for (size_t i = 0; i < count; ++i) {
      const auto v = static_cast<uint8_t>(std::min<int>(values[i], 255));
      for (int k = 0; k < channels; ++k) image.pixels[i * static_cast<size_t>(channels) + static_cast<size_t>(k)] = v;
    }
    stbi_image_free(values);
    return image;
  }
  int w = 0, h = 0, c = 0;
  stbi_uc* rgb = stbi_load_from_memory(bytes, length, &w, &h, &c, 3);
  if (!rgb) throw Error(path.string() + ": cannot decode the image (" + stbi_failure_reason() + ")");
  if (channels == 3) {
    image.pixels.assign(rgb, rgb + count * 3);
  } else if (file_channels <= 2) {
    // Grayscale stays itself (stb replicated it into R, G and B).
    image.pixels.resize(count);
    for (size_t i = 0; i < count; ++i) image.pixels[i] = rgb[i * 3];
  } else {
    image.pixels.resize(count);
    for (size_t i = 0; i < count; ++i) image.pixels[i] = rgb_to_l(&rgb[i * 3]);
  }
  stbi_image_free(rgb);
  return image;
}

// ---- PIL's Lanczos resampling (libImaging/Resample.c) ----

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);  // truncated sinc
  return 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc: for each output pixel its first input pixel, count and
// fixed-point weights (ksize of them).
struct Coefficients {
  int ksize = 0;
  std::vector<int> bounds;  // xmin, xmax per output pixel
  std::vector<int32_t> weights;
};

Coefficients precompute(int in_size, double in0, double in1, int out_size) {
  const double support_radius = 3.0;
  const double scale = (in1 - in0) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_radius * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  std::vector<double> prekk(static_cast<size_t>(out_size) * static_cast<size_t>(c.ksize), 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &prekk[static_cast<size_t>(xx) * static_cast<size_t>(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double w = lanczos_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.bounds[static_cast<size_t>(xx) * 2] = xmin;
    c.bounds[static_cast<size_t>(xx) * 2 + 1] = xmax;
  }
  c.weights.resize(prekk.size());
  for (size_t i = 0; i < prekk.size(); ++i)
    c.weights[i] = static_cast<int32_t>(prekk[i] < 0 ? -0.5 + prekk[i] * (1 << kPrecisionBits) : 0.5 + prekk[i] * (1 << kPrecisionBits));
  return c;
}

uint8_t clip8(int64_t in) {
  const int64_t v = in >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

PixelImage resize_lanczos(const PixelImage& in, int64_t width, int64_t height) {
  if (width <= 0 || height <= 0) throw Error("resize to " + std::to_string(width) + "x" + std::to_string(height));
  if (width == in.width && height == in.height) return in;
  const int channels = static_cast<int>(in.channels);
  const Coefficients horiz = precompute(static_cast<int>(in.width), 0, static_cast<double>(in.width), static_cast<int>(width));
  Coefficients vert = precompute(static_cast<int>(in.height), 0, static_cast<double>(in.height), static_cast<int>(height));
  const bool need_horizontal = width != in.width;
  const bool need_vertical = height != in.height;
  const int ybox_first = vert.bounds[0];
  const int ybox_last = vert.bounds[static_cast<size_t>(height) * 2 - 2] + vert.bounds[static_cast<size_t>(height) * 2 - 1];
  PixelImage current = in;
  if (need_horizontal) {
    // Horizontal pass over the rows the vertical pass reads.
    for (int64_t i = 0; i < height; ++i) vert.bounds[static_cast<size_t>(i) * 2] -= ybox_first;
    PixelImage temp;
    temp.width = width;
    temp.height = ybox_last - ybox_first;
    temp.channels = channels;
    temp.pixels.resize(static_cast<size_t>(temp.width * temp.height * channels));
    for (int64_t yy = 0; yy < temp.height; ++yy) {
      const uint8_t* row = &in.pixels[static_cast<size_t>((yy + ybox_first) * in.width * channels)];
      for (int64_t xx = 0; xx < width; ++xx) {
        const int xmin = horiz.bounds[static_cast<size_t>(xx) * 2], xmax = horiz.bounds[static_cast<size_t>(xx) * 2 + 1];
        const int32_t* k = &horiz.weights[static_cast<size_t>(xx) * static_cast<size_t>(horiz.ksize)];
        for (int b = 0; b < channels; ++b) {
          int64_t ss = int64_t{1} << (kPrecisionBits - 1);
          for (int x = 0; x < xmax; ++x) ss += static_cast<int64_t>(row[(x + xmin) * channels + b]) * k[x];
          temp.pixels[static_cast<size_t>((yy * width + xx) * channels + b)] = clip8(ss);
        }
      }
    }
    current = std::move(temp);
  }
  if (!need_vertical) return current;
  PixelImage out;
  out.width = width;
  out.height = height;
  out.channels = channels;
  out.pixels.resize(static_cast<size_t>(width * height * channels));
  for (int64_t yy = 0; yy < height; ++yy) {
    const int ymin = vert.bounds[static_cast<size_t>(yy) * 2], ymax = vert.bounds[static_cast<size_t>(yy) * 2 + 1];
    const int32_t* k = &vert.weights[static_cast<size_t>(yy) * static_cast<size_t>(vert.ksize)];
    for (int64_t xx = 0; xx < width; ++xx) {
      for (int b = 0; b < channels; ++b) {
        int64_t ss = int64_t{1} << (kPrecisionBits - 1);
        for (int y = 0; y < ymax; ++y)
          ss += static_cast<int64_t>(current.pixels[static_cast<size_t>(((y + ymin) * width + xx) * channels + b)]) * k[y];
        out.pixels[static_cast<size_t>((yy * width + xx) * channels + b)] = clip8(ss);
      }
    }
  }
  return out;
}

}  // namespace taiyi
