// PNG output: stb_image_write encodes, taiyi adds the text chunks that web UIs read back
// ("parameters" in the AUTOMATIC1111 format) and writes the file whole or not at all.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
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

// Reads the text chunks (tEXt and iTXt) of a PNG file, for tests and `taiyi info`-like tools.
std::vector<std::pair<std::string, std::string>> read_png_text(const std::filesystem::path& path);

}  // namespace taiyi
