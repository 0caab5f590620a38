// Model folder and config access: the harness's folders, and malformed or missing files.
#include <fstream>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::Config;
using taiyi::Error;
using taiyi::ModelFolder;

namespace {

using taiyi::test::expect_error_naming;

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

}  // namespace

TEST(ModelFolder, ReadsHarnessPipelines) {
  ModelFolder clip = ModelFolder::open(taiyi::test::fixture("tiny-clip"));
  EXPECT_EQ(clip.class_name("unet"), "UNet2DConditionModel");
  EXPECT_EQ(clip.text_encoder_kind(), taiyi::TextEncoderKind::Clip);
  EXPECT_EQ(clip.config("unet").get_int_list("block_out_channels"), (std::vector<int64_t>{32, 64, 64}));
  EXPECT_EQ(clip.config("scheduler").get_string("_class_name"), "PNDMScheduler");
  EXPECT_EQ(clip.weight_files("text_encoder").front().filename(), "model.safetensors");
  ModelFolder bert = ModelFolder::open(taiyi::test::fixture("tiny-bert"));
  EXPECT_EQ(bert.text_encoder_kind(), taiyi::TextEncoderKind::Bert);
}

TEST(ModelFolder, BadFolders) {
  fs::path dir = taiyi::test::temp_dir("folder");
  expect_error_naming([&] { ModelFolder::open(dir / "nope"); }, {"nope", "model folder not found"});
  expect_error_naming([&] { ModelFolder::open(dir); }, {"model_index.json", "file not found"});
  write(dir / "model_index.json", "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\"],");
  expect_error_naming([&] { ModelFolder::open(dir); }, {"model_index.json", "malformed JSON"});
  write(dir / "model_index.json",
        R"({"text_encoder": ["transformers", "T5EncoderModel"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": 3})");
  ModelFolder folder = ModelFolder::open(dir);
  expect_error_naming([&] { folder.text_encoder_kind(); }, {"model_index.json", "T5EncoderModel", "not supported"});
  expect_error_naming([&] { folder.class_name("vae"); }, {"model_index.json", "'vae'"});
  expect_error_naming([&] { folder.class_name("scheduler"); }, {"no 'scheduler' entry"});
  expect_error_naming([&] { folder.config("unet"); }, {"unet", "component folder not found"});
  write(dir / "unet" / "config.json", "{}");
  expect_error_naming([&] { folder.weight_files("unet"); }, {"unet", "no weights found"});
  write(dir / "unet" / "model.ckpt", "x");
  expect_error_naming([&] { folder.weight_files("unet"); }, {"unet", "no weights found", "found model.ckpt"});
  fs::remove_all(dir);
}

// diffusers' and transformers' choice in a local folder: safetensors before .bin, the variant's names
// (_add_variant) when one is asked for, and an index's shards.
TEST(ModelFolder, WeightFilesAsDiffusersPicksThem) {
  fs::path dir = taiyi::test::temp_dir("weights");
  write(dir / "model_index.json", R"({"unet": ["diffusers", "UNet2DConditionModel"]})");
  write(dir / "unet" / "config.json", "{}");
  auto pick = [&](const std::string& variant) {
    std::vector<std::string> names;
    for (const fs::path& p : ModelFolder::open(dir, variant).weight_files("unet")) names.push_back(p.filename().string());
    return names;
  };
  write(dir / "unet" / "diffusion_pytorch_model.bin", "x");
  EXPECT_EQ(pick(""), (std::vector<std::string>{"diffusion_pytorch_model.bin"}));
  write(dir / "unet" / "diffusion_pytorch_model.safetensors", "x");
  EXPECT_EQ(pick(""), (std::vector<std::string>{"diffusion_pytorch_model.safetensors"}));
  expect_error_naming([&] { pick("fp16"); }, {"unet", "no weights of variant 'fp16'", "diffusion_pytorch_model.fp16.safetensors"});
  write(dir / "unet" / "diffusion_pytorch_model.fp16.bin", "x");
  EXPECT_EQ(pick("fp16"), (std::vector<std::string>{"diffusion_pytorch_model.fp16.bin"}));
  write(dir / "unet" / "diffusion_pytorch_model.fp16.safetensors", "x");
  EXPECT_EQ(pick("fp16"), (std::vector<std::string>{"diffusion_pytorch_model.fp16.safetensors"}));
  fs::remove(dir / "unet" / "diffusion_pytorch_model.fp16.safetensors");
  fs::remove(dir / "unet" / "diffusion_pytorch_model.fp16.bin");
  write(dir / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json",
        R"({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.fp16.safetensors", "b": "diffusion_pytorch_model-00002-of-00002.fp16.safetensors"}})");
  EXPECT_EQ(pick("fp16"), (std::vector<std::string>{"diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
                                                     "diffusion_pytorch_model-00002-of-00002.fp16.safetensors"}));
  fs::remove_all(dir);
}

TEST(Config, TypedGettersNameFileAndKey) {
  Config c(nlohmann::json::parse(R"({"a": 3, "f": 0.5, "s": "x", "l": [1, 2], "b": true, "n": null, "bad": "7"})"),
           "dir/config.json");
  EXPECT_EQ(c.get_int("a"), 3);
  EXPECT_EQ(c.get_int("n", 9), 9);
  EXPECT_EQ(c.get_int("absent", 4), 4);
  EXPECT_DOUBLE_EQ(c.get_double("f"), 0.5);
  EXPECT_EQ(c.get_int_or_list("a", 3), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(c.get_int_or_list("l", 2), (std::vector<int64_t>{1, 2}));
  expect_error_naming([&] { c.get_int("absent"); }, {"dir/config.json", "missing key 'absent'"});
  expect_error_naming([&] { c.get_int("bad"); }, {"dir/config.json", "'bad' = \"7\"", "expected an integer"});
  expect_error_naming([&] { c.get_int_or_list("l", 3); }, {"'l'", "expected 3 entries"});
  expect_error_naming([&] { c.get_bool("a"); }, {"'a' = 3", "true or false"});
  expect_error_naming([&] { c.unsupported("s", "only y"); }, {"dir/config.json", "'s' = \"x\" is not supported: only y"});
}
