// The fuzz targets' kept inputs (tests/data/fuzz/<target>/: each crash the fuzzer found, kept with its
// fix) replayed through the same target bodies, and the limits that hold for hostile input
// (issue 14): each case must end in a taiyi::Error naming the problem, with memory bounded.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "fuzz_targets.h"
#include "taiyi/jobs/prompt_file.h"
#include "taiyi/utils/json.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "taiyi/loaders/safetensors_header.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::Error;
using taiyi::test::expect_error_naming;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string safetensors(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace

// Every kept input of every target runs without a crash or an exception other than Error (which the
// target bodies accept). The folder must hold some: a missing folder is a failure, not a pass.
TEST(FuzzRegressions, KeptInputsRunClean) {
  setenv("TAIYI_FIXTURES", taiyi::test::fixtures_dir().c_str(), 1);
  const fs::path root = taiyi::test::source_dir() / "tests" / "data" / "fuzz";
  ASSERT_TRUE(fs::is_directory(root)) << root;
  size_t inputs = 0;
  for (const auto& folder : fs::directory_iterator(root)) {
    if (!folder.is_directory()) continue;
    const taiyi::fuzz::Target* target = taiyi::fuzz::find_target(folder.path().filename().string());
    ASSERT_NE(target, nullptr) << "no fuzz target named by " << folder.path();
    for (const auto& file : fs::directory_iterator(folder.path())) {
      const std::string bytes = read_bytes(file.path());
      SCOPED_TRACE(file.path().string());
      EXPECT_NO_THROW(target->run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      ++inputs;
    }
  }
  EXPECT_GE(inputs, 5u);
}

// The crashes' causes, each asserted on its own (the replay above only shows that nothing escapes).
TEST(FuzzRegressions, ImageCrashesAreErrors) {
  const fs::path root = taiyi::test::source_dir() / "tests" / "data" / "fuzz" / "image";
  auto decode = [&](const char* name) {
    const std::string bytes = read_bytes(root / name);
    return taiyi::decode_image(std::string_view(bytes).substr(1), name, 3);  // byte 0: the target's channel choice
  };
  expect_error_naming([&] { decode("png-idat-length-past-end"); }, {"png-idat-length-past-end", "truncated PNG", "IDAT"});
  expect_error_naming([&] { decode("png-idat-header-at-end"); }, {"truncated PNG", "runs past the end of the file"});
  // Found against stb_image's JPEG decoder, which taiyi no longer uses; libjpeg-turbo refuses them itself.
  expect_error_naming([&] { decode("jpeg-huffman-table-over-256-codes"); }, {"corrupt JPEG", "Bogus Huffman table"});
  expect_error_naming([&] { decode("jpeg-fill-bytes-before-soi"); }, {"corrupt JPEG", "Not a JPEG file"});
}

TEST(HostileInput, SafetensorsHeaderLimits) {
  auto parse = [](const std::string& file) {
    return taiyi::parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "h.safetensors");
  };
  // A length that would allocate 2^63 bytes: refused from the 8 bytes alone.
  std::string huge(8, '\xff');
  expect_error_naming([&] { parse(huge + "{}"); }, {"h.safetensors", "header length", "100 MB limit"});
  // A million levels of nesting: refused at the fourth.
  const std::string deep = "{\"a\":{\"dtype\":\"F32\",\"shape\":" + std::string(1'000'000, '[') + std::string(1'000'000, ']') + "}}";
  expect_error_naming([&] { parse(safetensors(deep)); }, {"h.safetensors", "nests deeper", "3 levels"});
  const std::string deep_objects = [] {
    std::string s;
    for (int i = 0; i < 100'000; ++i) s += "{\"a\":";
    return s + "1" + std::string(100'000, '}');
  }();
  expect_error_naming([&] { parse(safetensors(deep_objects)); }, {"nests deeper"});
  // A shape whose product overflows 64 bits, against a 0-byte span.
  expect_error_naming([&] { parse(safetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})")); },
                      {"tensor 'a'", "overflows"});
  // A dimension count and a tensor count over the limits.
  expect_error_naming([&] { parse(safetensors(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", "abcd")); },
                      {"more than 8 dimensions"});
  // Names quoted escaped: a terminal escape in a tensor name never reaches the message raw.
  try {
    parse(safetensors("{\"\\u001b]0;x\\u0007\":{\"dtype\":\"F8_E5M2\",\"shape\":[8],\"data_offsets\":[0,8]}}", std::string(8, '\0')));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\x1b'), std::string::npos) << message;
    EXPECT_NE(message.find("\\x1b]0;x\\x07"), std::string::npos) << message;
  }
}

TEST(HostileInput, JsonLimits) {
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  expect_error_naming([&] { taiyi::parse_json_text(deep, "config.json"); }, {"config.json", "nested more than 64 levels"});
  expect_error_naming([&] { taiyi::parse_json_text("{\"a\": 1e999}", "config.json"); }, {"config.json", "malformed JSON"});
  // nlohmann's own message quotes what it read raw: ours is escaped.
  try {
    taiyi::parse_json_text("{\"a\": \x1b[2J", "config.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\x1b'), std::string::npos) << e.what();
  }
  // A prompt-file line nested a million deep is that line's error; the next line still runs.
  const std::string deep_line = std::string(500'000, '[') + std::string(500'000, ']');  // under the line limit
  const std::string file = "{\"prompt\": " + deep_line + "}\n{\"prompt\": \"ok\"}\n";
  const taiyi::PromptFile parsed = taiyi::parse_prompt_file(file, "p.jsonl", true);
  ASSERT_EQ(parsed.errors.size(), 1u);
  EXPECT_NE(parsed.errors[0].message.find("p.jsonl:1: JSON nested more than 64 levels"), std::string::npos) << parsed.errors[0].message;
  ASSERT_EQ(parsed.jobs.size(), 1u);
  EXPECT_EQ(parsed.jobs[0].prompt, "ok");
  EXPECT_EQ(parsed.jobs[0].line, 2);
  // A line over the line limit, and an unknown key of control characters, quoted escaped.
  const std::string long_line = "{\"prompt\": \"" + std::string(taiyi::kMaxPromptLine, 'a') + "\"}\n{\"\\u001b[31m\": 1}\n";
  const taiyi::PromptFile limited = taiyi::parse_prompt_file(long_line, "q.jsonl", true);
  ASSERT_EQ(limited.errors.size(), 2u);
  EXPECT_NE(limited.errors[0].message.find("q.jsonl:1: line of"), std::string::npos) << limited.errors[0].message;
  EXPECT_NE(limited.errors[1].message.find("unknown key \"\\x1b[31m\""), std::string::npos) << limited.errors[1].message;
}

TEST(HostileInput, PromptLimits) {
  auto tokenizer = taiyi::load_clip_tokenizer(taiyi::test::fixture("tiny-clip/tokenizer"));
  // A million characters: refused before tokenizing.
  const std::string million(1'000'000, 'a');
  expect_error_naming([&] { taiyi::tokenize_prompt(*tokenizer, million); }, {"prompt", "1000000 bytes", "65536"});
  // One 60,000-letter word (under the byte limit) is tokenized as Python's BPE would, then refused
  // as too many tokens; the merge loop is O(n log n), so this takes milliseconds, not minutes.
  std::string word;
  for (int i = 0; i < 60'000; ++i) word += static_cast<char>('a' + (i * 7 + i / 13) % 26);
  // (The BPE's merges against transformers' on long words: Tokenizer.* with ref/tokenizer.safetensors.)
  expect_error_naming([&] { taiyi::tokenize_prompt(*tokenizer, word); }, {"prompt", "chunks"});
}

TEST(HostileInput, ImageHeaderLimits) {
  // A 100000 x 100000 PNG header (59 bytes) is refused from the header, before any allocation.
  std::string png = std::string("\x89PNG\r\n\x1a\n", 8) + std::string("\0\0\0\x0dIHDR", 8);
  for (uint32_t v : {100000u, 100000u}) {
    for (int k = 3; k >= 0; --k) png += static_cast<char>((v >> (8 * k)) & 0xFF);
  }
  png += std::string("\x08\x02\0\0\0", 5) + std::string(4, '\0');
  expect_error_naming([&] { taiyi::decode_image(png, "big.png", 3); }, {"big.png", "100000x100000", "4096 pixels a side"});
}
