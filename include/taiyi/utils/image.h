// PNG output: stb_image_write encodes, taiyi adds the text chunks that web UIs read back
// ("parameters" in the AUTOMATIC1111 format) and writes the file whole or not at all. Image input
// (img2img's init image, inpainting's mask): stb_image decodes PNG and JPEG as PIL's
// Image.open(path).convert("RGB") / convert("L") would, and PIL's Lanczos resize.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace taiyi {

// PNG bytes of an 8-bit RGB image (rows top to bottom, height*width*3 bytes) with text chunks.
// A text that is Latin-1 goes into a tEXt chunk; otherwise (Chinese prompts) into an uncompressed
// UTF-8 iTXt chunk, as PIL's PngInfo.add_text does, so that web UIs read either back.
std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height,
                                const std::vector<std::pair<std::string, std::string>>& text_chunks);

// Writes `bytes` to `path` through a temporary file in the same folder and a rename: the file
// appears whole or not at all. Error naming the path when the folder is not writable.
void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& bytes);
void write_file_atomically(const std::filesystem::path& path, const std::string& text);
// Removes the temporary files that a killed run's write_file_atomically left in `folder` (those of
// processes no longer running); returns how many. A resumed batch calls it on its output folders.
size_t remove_stale_temporaries(const std::filesystem::path& folder);

// An 8-bit image, rows top to bottom, `channels` interleaved (3: RGB, 1: L).
struct PixelImage {
  int64_t width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels
};

// The largest side taiyi reads (its decoded size is checked from the header before decoding).
constexpr int64_t kMaxImageSide = 4096;

// Reads a PNG or JPEG as PIL's Image.open(path).convert("RGB") (channels 3) or .convert("L")
// (channels 1): grayscale is replicated, palettes expanded, alpha dropped (not composited: PIL's
// convert("RGB") ignores it), RGB to L with PIL's ITU-R 601-2 integer weights; 16-bit channels keep
// their high byte, except 16-bit grayscale, which PIL clips to 255. EXIF orientation is not applied
// (PIL's Image.open does not either). PNG decodes losslessly, so pixels equal PIL's; JPEG through
// stb_image's decoder can differ from libjpeg's by a level or two. Error naming the file for a missing,
// unreadable, truncated or non-image file, a zero size or a side over kMaxImageSide.
PixelImage read_image(const std::filesystem::path& path, int channels);
// read_image over a file's bytes (`name` for messages).
PixelImage decode_image(std::string_view data, const std::string& name, int channels);
constexpr size_t kMaxImageFile = size_t{1} << 28;  // 256 MiB: more than any image of kMaxImageSide^2
// (width, height) of an image file, with read_image's checks.
std::pair<int64_t, int64_t> image_size(const std::filesystem::path& path);

// PIL's Image.resize((width, height), Image.LANCZOS) for 8-bit images (Resample.c: two passes of
// 22-bit fixed-point coefficients), so that VaeImageProcessor's resize gives the same pixels. The same
// size returns a copy, as PIL does.
PixelImage resize_lanczos(const PixelImage& image, int64_t width, int64_t height);

// Reads the text chunks (tEXt and iTXt) of a PNG file, for tests and `taiyi info`-like tools.
std::vector<std::pair<std::string, std::string>> read_png_text(const std::filesystem::path& path);
// The same over a PNG's bytes (`name` for messages): a server's uploaded image.
std::vector<std::pair<std::string, std::string>> parse_png_text(std::string_view data, const std::string& name);

}  // namespace taiyi
