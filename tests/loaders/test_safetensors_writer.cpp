// The streaming safetensors writer (include/taiyi/loaders/safetensors_writer.h) against huggingface/safetensors:
// a diffusers file rewritten from its tensors comes out byte for byte the same, and a mixed-dtype header equals
// the one safetensors.torch.save_file wrote for the same tensors.
#include <fstream>
#include <iterator>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/safetensors_writer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;

namespace {

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every tensor of `file`, in reverse file order (the writer must sort them back), produced from the mapping.
std::vector<taiyi::SafetensorsEntry> entries_of(const taiyi::SafetensorsFile& file) {
  std::vector<taiyi::SafetensorsEntry> entries;
  for (auto it = file.tensors().rbegin(); it != file.tensors().rend(); ++it) {
    const std::string name = it->name;
    entries.push_back({name, it->dtype, it->shape, [&file, name] { return file.tensor(name); }, {}});
  }
  return entries;
}

taiyi::SafetensorsEntry zeros(const std::string& name, taiyi::StDtype dtype, std::vector<int64_t> shape, torch::Dtype torch_dtype) {
  return {name, dtype, shape, [shape, torch_dtype] { return torch::zeros(shape, torch_dtype); }, {}};
}

}  // namespace

TEST(SafetensorsWriter, RewritesDiffusersAndTransformersFilesByteForByte) {
  // diffusers' ModelMixin and transformers' PreTrainedModel both save with safetensors.torch.save_file and
  // metadata {"format": "pt"}.
  for (const char* relative : {"tiny-clip/unet/diffusion_pytorch_model.safetensors", "tiny-clip/text_encoder/model.safetensors",
                               "tiny-bert/text_encoder/model.safetensors"}) {
    SCOPED_TRACE(relative);
    const fs::path original = fixture(relative);
    taiyi::SafetensorsFile file(original);
    const fs::path copy = taiyi::test::temp_dir("safetensors_writer") / "copy.safetensors";
    const uint64_t size = taiyi::save_safetensors(entries_of(file), copy);
    EXPECT_EQ(size, fs::file_size(original));
    EXPECT_TRUE(file_bytes(copy) == file_bytes(original)) << copy << " differs from " << original;
    fs::remove_all(copy.parent_path());
  }
}

TEST(SafetensorsWriter, HeaderEqualsSafetensorsForMixedDtypes) {
  // safetensors 0.x: save_file({"b": zeros(3), "a": zeros(2, f16), "c": zeros(1, i64), "d": zeros(1, bf16),
  // "e": zeros(0)}, metadata={"format": "pt"}) writes this header (I64 first, then F32, BF16, F16; by name).
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},"e":{"dtype":"F32","shape":[0],"data_offsets":[20,20]},)"
      R"("d":{"dtype":"BF16","shape":[1],"data_offsets":[20,22]},"a":{"dtype":"F16","shape":[2],"data_offsets":[22,26]}})";
  std::vector<taiyi::SafetensorsEntry> entries = {
      zeros("b", taiyi::StDtype::F32, {3}, torch::kFloat), zeros("a", taiyi::StDtype::F16, {2}, torch::kHalf),
      zeros("c", taiyi::StDtype::I64, {1}, torch::kLong), zeros("d", taiyi::StDtype::BF16, {1}, torch::kBFloat16),
      zeros("e", taiyi::StDtype::F32, {0}, torch::kFloat)};
  const fs::path path = taiyi::test::temp_dir("safetensors_writer_mixed") / "mixed.safetensors";
  taiyi::save_safetensors(entries, path);
  const std::string bytes = file_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  const std::string padded = json + std::string((8 - json.size() % 8) % 8, ' ');
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(length, padded.size());
  EXPECT_EQ(bytes.substr(8, padded.size()), padded);
  EXPECT_EQ(bytes.size(), 8 + padded.size() + 26);
  taiyi::SafetensorsFile reread(path);  // and taiyi's reader takes it
  EXPECT_EQ(reread.tensors().size(), 5u);
  fs::remove_all(path.parent_path());
}

TEST(SafetensorsWriter, NamesTheFileOnBadInput) {
  const fs::path dir = taiyi::test::temp_dir("safetensors_writer_bad");
  // A tensor produced in another dtype than declared.
  std::vector<taiyi::SafetensorsEntry> wrong = {zeros("w", taiyi::StDtype::F16, {2}, torch::kFloat)};
  expect_error_naming([&] { taiyi::save_safetensors(wrong, dir / "wrong.safetensors"); },
                      {(dir / "wrong.safetensors").string(), "'w'", "declared F16"});
  std::vector<taiyi::SafetensorsEntry> twice = {zeros("w", taiyi::StDtype::F32, {2}, torch::kFloat),
                                                zeros("w", taiyi::StDtype::F32, {2}, torch::kFloat)};
  expect_error_naming([&] { taiyi::save_safetensors(twice, dir / "twice.safetensors"); }, {"twice.safetensors", "given twice"});
  expect_error_naming([&] { taiyi::save_safetensors({}, dir / "no-such-folder" / "x.safetensors"); },
                      {"no-such-folder", "cannot create"});
  expect_error_naming([&] { taiyi::safetensors_dtype(torch::kInt, "model.ckpt: tensor 'x'"); },
                      {"model.ckpt: tensor 'x'", "Int"});
  fs::remove_all(dir);
}
