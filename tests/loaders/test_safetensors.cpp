// Safetensors reader and load_weights: real files written by the harness, and every kind of bad file.
#include <fstream>

#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::Error;
using taiyi::SafetensorsFile;

namespace {

// Writes a safetensors file from a header string and a data buffer (no validation: tests make bad files).
fs::path write_raw(const fs::path& dir, const std::string& name, const std::string& header, const std::string& data,
                   int64_t header_size_override = -1) {
  fs::path p = dir / name;
  std::ofstream f(p, std::ios::binary);
  uint64_t n = header_size_override >= 0 ? static_cast<uint64_t>(header_size_override) : header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << header << data;
  return p;
}

std::string floats(std::initializer_list<float> values) {
  std::string s;
  for (float v : values) s.append(reinterpret_cast<const char*>(&v), sizeof v);
  return s;
}

void expect_error(const fs::path& file, const std::string& needle) {
  try {
    SafetensorsFile st(file);
    ADD_FAILURE() << file << ": expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected to contain: " << needle;
  }
}

struct TwoLinear : torch::nn::Module {
  TwoLinear() {
    fc = register_module("fc", torch::nn::Linear(2, 3));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};

}  // namespace

TEST(Safetensors, ReadsValues) {
  fs::path dir = taiyi::test::temp_dir("st");
  std::string header = R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}})";
  fs::path p = write_raw(dir, "ok.safetensors", header, floats({1, 2, 3, 4}));
  SafetensorsFile st(p);
  ASSERT_EQ(st.tensors().size(), 2u);
  EXPECT_EQ(st.tensors()[0].name, "a");  // file order
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_TRUE(torch::equal(st.tensor("a"), torch::tensor({{1.f, 2.f}})));
  EXPECT_TRUE(torch::equal(st.tensor("b"), torch::tensor({3.f, 4.f})));
  EXPECT_THROW(st.tensor("c"), Error);
  fs::remove_all(dir);
}

// A header of binary junk (terminal escapes, invalid UTF-8, a megabyte of it): the error quotes a short,
// escaped excerpt, never the raw bytes.
TEST(Safetensors, NonJsonHeaderIsQuotedEscapedAndBriefly) {
  fs::path dir = taiyi::test::temp_dir("st-junk");
  std::string junk = "\x1b[2J\x1b]0;owned\x07\xff\xfe";
  junk += std::string(1 << 20, '\x01');
  try {
    SafetensorsFile st(write_raw(dir, "junk.safetensors", junk, ""));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_LT(message.size(), 400u) << message.size();
    EXPECT_EQ(message.find('\x1b'), std::string::npos);
    EXPECT_EQ(message.find('\x01'), std::string::npos);
    EXPECT_NE(message.find("junk.safetensors: header is not valid JSON"), std::string::npos) << message;
    EXPECT_NE(message.find("\\x1b[2J"), std::string::npos) << message;
  }
  EXPECT_EQ(taiyi::quoted_excerpt("a\"b\\c\n\x9b中\xe4", 10), "\"a\\\"b\\\\c\\n\\x9b中\\xe4\"");
  EXPECT_EQ(taiyi::quoted_excerpt(std::string(50, 'x'), 4), "\"xxxx\"...");
  fs::remove_all(dir);
}

TEST(Safetensors, RejectsBadFiles) {
  fs::path dir = taiyi::test::temp_dir("st-bad");
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  expect_error(write_raw(dir, "short", "", "", 0), "header is not valid JSON");  // 8 bytes, empty header
  {
    fs::path p = dir / "tiny";
    std::ofstream(p) << "abc";
    expect_error(p, "truncated");
  }
  expect_error(write_raw(dir, "huge_header", "{}", "", 1ll << 40), "100 MB");
  expect_error(write_raw(dir, "past_end", "{}", "", 4096), "past the end");
  expect_error(write_raw(dir, "bad_json", "{\"a\": {\"dtype\"", ""), "header is not valid JSON");
  // Read as a stream: a value in the wrong place is reported where it stands, before the JSON ends.
  expect_error(write_raw(dir, "list_entry", "{\"a\": [", ""), "tensor 'a': expected an object with dtype, shape and data_offsets");
  expect_error(write_raw(dir, "not_object", "[1,2]", ""), "not a JSON object");
  expect_error(write_raw(dir, "dtype", R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", floats({1, 2})),
               "tensor 'a': dtype \"F8_E4M3\" is not supported (expected F32, F16 or BF16)");
  expect_error(write_raw(dir, "span", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", floats({1, 2})),
               "does not match shape");
  expect_error(write_raw(dir, "oob", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", floats({1, 2})),
               "out of bounds");
  expect_error(write_raw(dir, "overlap",
                         R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         floats({1, 2})),
               "overlapping");
  expect_error(write_raw(dir, "gap", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", floats({1, 2})),
               "gapped");
  expect_error(write_raw(dir, "trailing", "{" + ok_entry + "}", floats({1, 2, 3})), "does not match its header");
  expect_error(write_raw(dir, "dup", "{" + ok_entry + "," + ok_entry + "}", floats({1, 2})), "duplicate tensor name 'a'");
  expect_error(write_raw(dir, "shape", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", floats({1, 2})),
               "not a list of sizes");
  expect_error(dir / "absent.safetensors", "cannot open");
  fs::remove_all(dir);
}

TEST(Safetensors, LoadWeightsConvertsAndChecksNames) {
  fs::path dir = taiyi::test::temp_dir("st-load");
  std::string header =
      R"({"fc.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]},)"
      R"("norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[36,48]},"norm.bias":{"dtype":"F32","shape":[3],"data_offsets":[48,60]}})";
  fs::path good = write_raw(dir, "good.safetensors", header, floats({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
  TwoLinear model;
  taiyi::load_weights(model, {good}, {torch::kHalf, torch::kCPU});
  EXPECT_EQ(model.fc->weight.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::equal(model.fc->weight.to(torch::kFloat), torch::tensor({{1.f, 2.f}, {3.f, 4.f}, {5.f, 6.f}})));
  EXPECT_TRUE(torch::equal(model.norm->bias.to(torch::kFloat), torch::tensor({13.f, 14.f, 15.f})));

  // Missing norm.*, an unexpected key, and fc.weight mis-shaped: all in one message.
  std::string bad_header =
      R"({"fc.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]},)"
      R"("extra.weight":{"dtype":"F16","shape":[2],"data_offsets":[36,40]}})";
  std::string data = floats({1, 2, 3, 4, 5, 6, 7, 8, 9});
  data += std::string(4, '\0');
  fs::path bad = write_raw(dir, "bad.safetensors", bad_header, data);
  TwoLinear other;
  try {
    taiyi::load_weights(other, {bad});
    ADD_FAILURE() << "expected a mismatch error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("2 missing [norm.weight, norm.bias]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 unexpected [extra.weight]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("fc.weight (file [2, 3], model [3, 2])"), std::string::npos) << msg;
  }
  // Ignore lists: unexpected by prefix, missing by name.
  taiyi::LoadOptions lenient;
  lenient.ignore_unexpected = {"extra."};
  lenient.ignore_missing = {"norm.weight", "norm.bias", "fc.weight"};
  fs::path partial = write_raw(dir, "partial.safetensors",
                               R"({"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"extra.weight":{"dtype":"F16","shape":[2],"data_offsets":[12,16]}})",
                               floats({7, 8, 9}) + std::string(4, '\0'));
  taiyi::load_weights(other, {partial}, lenient);
  EXPECT_TRUE(torch::equal(other.fc->bias, torch::tensor({7.f, 8.f, 9.f})));
  fs::remove_all(dir);
}

TEST(Safetensors, IntegerIndexBuffersAreIgnoredButNotLoadedAsWeights) {
  // Older transformers checkpoints carry text_model.embeddings.position_ids as I64.
  fs::path dir = taiyi::test::temp_dir("st-i64");
  std::string ids(16, '\0');
  ids[8] = 1;
  std::string header =
      R"({"fc.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]},)"
      R"("norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[36,48]},"norm.bias":{"dtype":"I64","shape":[3],"data_offsets":[48,72]},)"
      R"("position_ids":{"dtype":"I64","shape":[1,2],"data_offsets":[72,88]}})";
  fs::path p = write_raw(dir, "i64.safetensors", header, floats({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}) + std::string(24, '\0') + ids);
  SafetensorsFile st(p);
  EXPECT_TRUE(torch::equal(st.tensor("position_ids"), torch::tensor({{0, 1}}, torch::kLong)));
  TwoLinear model;
  try {
    taiyi::load_weights(model, {p}, taiyi::LoadOptions(torch::kFloat, torch::kCPU, {"position_ids"}));
    ADD_FAILURE() << "an I64 weight must not load";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm.bias (file dtype Long, expected a floating-point type)"), std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

TEST(Safetensors, ReadsHarnessFiles) {
  // A real file written by safetensors' Python writer through diffusers' save_pretrained.
  SafetensorsFile st(taiyi::test::fixture("tiny-clip/unet/diffusion_pytorch_model.safetensors"));
  ASSERT_NE(st.find("conv_in.weight"), nullptr);
  EXPECT_EQ(st.find("conv_in.weight")->shape, (std::vector<int64_t>{32, 4, 3, 3}));
  EXPECT_EQ(st.tensor("conv_in.weight").scalar_type(), torch::kFloat);
}
