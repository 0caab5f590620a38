// save_pretrained (include/taiyi/pipelines/pipeline_utils.h), what `taiyi convert` runs: a .bin folder, single
// files (configs from --config-dir; the built-in tokenizer files against the hub's) and fp16/bf16 conversions give folders whose every tensor is
// the source's cast to the dtype, bit for bit, and whose image in taiyi is the source's; the half-precision
// weights of a converted folder are used in place from the file; bad input is a one-line Error that leaves
// nothing behind.
#include <cstring>
#include <fstream>
#include <map>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/pipelines/pipeline_utils.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;

namespace {

const std::vector<std::pair<std::string, std::string>> kWeightFiles = {
    {"text_encoder", "model.safetensors"}, {"unet", "diffusion_pytorch_model.safetensors"},
    {"vae", "diffusion_pytorch_model.safetensors"}};

// A fresh parent folder; the converted model goes to <parent>/out.
fs::path output_in(const std::string& name) { return taiyi::test::temp_dir("convert-" + name) / "out"; }

fs::path convert(const fs::path& model, const std::string& name, const std::string& dtype,
                 const taiyi::ModelSourceOptions& source = {}) {
  const fs::path out = output_in(name);
  taiyi::SaveOptions options;
  options.dtype = taiyi::parse_save_dtype(dtype);
  const auto saved = taiyi::save_pretrained(taiyi::ModelSource::open(model, source), out, options);
  EXPECT_EQ(saved.size(), 3u);
  return out;
}

// Every tensor of the converted folder equals the source's (under diffusers names) cast to `dtype`.
void expect_cast_copies(const fs::path& model, const taiyi::ModelSourceOptions& options, const fs::path& out,
                        std::optional<torch::Dtype> dtype) {
  const taiyi::ModelSource source = taiyi::ModelSource::open(model, options);
  for (const auto& [component, file_name] : kWeightFiles) {
    SCOPED_TRACE(component);
    const taiyi::StateDict expected = taiyi::weights_to_save(source, component);
    taiyi::SafetensorsFile written(out / component / file_name);
    ASSERT_EQ(written.tensors().size(), expected.size());
    ASSERT_GT(expected.size(), 10u);
    for (const std::string& name : expected.names()) {
      ASSERT_TRUE(written.find(name)) << name;
      const torch::Tensor view = *expected.find(name);
      const torch::Tensor want = view.to(view.is_floating_point() && dtype ? *dtype : view.scalar_type()).contiguous();
      const torch::Tensor got = written.tensor(name);
      ASSERT_EQ(got.scalar_type(), want.scalar_type()) << name;
      ASSERT_EQ(got.sizes(), want.sizes()) << name;
      EXPECT_EQ(std::memcmp(got.data_ptr(), want.data_ptr(), want.nbytes()), 0) << name << " differs from the source";
    }
  }
}

torch::Tensor image_of(const fs::path& model, const taiyi::ModelSourceOptions& source, const std::string& prompt) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.source = source;
  auto pipe = taiyi::Pipeline::load(model, options);
  taiyi::GenerationRequest request;
  request.prompt = prompt;
  request.steps = 3;
  request.width = 48;
  request.height = 64;
  return taiyi::test::image_tensor(pipe.generate(request));
}

std::string text_of(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

nlohmann::json json_of(const fs::path& path) { return nlohmann::json::parse(text_of(path)); }

}  // namespace

TEST(SavePretrained, BinFolderKeepsEveryTensorAndGivesTheSameImage) {
  const fs::path model = fixture("tiny-clip-bin");
  const fs::path out = convert(model, "bin", "keep");
  expect_cast_copies(model, {}, out, std::nullopt);
  for (const char* config : {"unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"})
    EXPECT_EQ(json_of(out / config), json_of(model / config)) << config;
  for (const char* file : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_EQ(text_of(out / "tokenizer" / file), text_of(model / "tokenizer" / file)) << file;
  EXPECT_FALSE(fs::exists(out / "unet" / "diffusion_pytorch_model.bin"));
  const torch::Tensor expected = image_of(model, {}, "a photo of an astronaut riding a horse");
  const torch::Tensor image = image_of(out, {}, "a photo of an astronaut riding a horse");
  EXPECT_EQ(taiyi::test::max_abs_diff(image, expected), 0.0);
  // Nothing left beside the output.
  for (const fs::directory_entry& entry : fs::directory_iterator(out.parent_path())) EXPECT_EQ(entry.path(), out);
  fs::remove_all(out.parent_path());
}

TEST(SavePretrained, HalfPrecisionIsTheSourceCastTensorByTensor) {
  const fs::path model = fixture("tiny-clip");
  for (const auto& [name, dtype] : {std::pair<std::string, torch::Dtype>{"fp16", torch::kHalf}, {"bf16", torch::kBFloat16}}) {
    SCOPED_TRACE(name);
    const fs::path out = convert(model, name, name);
    expect_cast_copies(model, {}, out, dtype);
    const double ratio = static_cast<double>(fs::file_size(out / "unet" / "diffusion_pytorch_model.safetensors")) /
                         static_cast<double>(fs::file_size(model / "unet" / "diffusion_pytorch_model.safetensors"));
    EXPECT_NEAR(ratio, 0.5, 0.01);
    fs::remove_all(out.parent_path());
  }
}

TEST(SavePretrained, SingleFilesGiveTheirImageFromTheWrittenFolder) {
  // LDM keys converted, configs from --config-dir with what the file says on top: the converted folder
  // alone gives the file's image.
  for (const auto& [file, config_dir] : {std::pair<std::string, std::string>{"single_file/clip.safetensors", "tiny-clip"},
                                         {"single_file/bert.safetensors", "tiny-bert"},
                                         {"single_file/clip-ema.ckpt", "tiny-clip"}}) {
    SCOPED_TRACE(file);
    const fs::path model = fixture(file);
    taiyi::ModelSourceOptions options;
    options.config_dir = fixture(config_dir);
    const fs::path out = convert(model, "single", "keep", options);
    expect_cast_copies(model, options, out, std::nullopt);
    const taiyi::ModelSource source = taiyi::ModelSource::open(model, options);
    EXPECT_EQ(json_of(out / "unet" / "config.json"), source.config("unet").json());
    EXPECT_EQ(json_of(out / "model_index.json")["text_encoder"][1], source.folder().class_name("text_encoder"));
    EXPECT_EQ(text_of(out / "tokenizer" / "tokenizer_config.json"), text_of(options.config_dir / "tokenizer" / "tokenizer_config.json"));
    EXPECT_EQ(taiyi::test::max_abs_diff(image_of(out, {}, "小桥流水人家"), image_of(model, options, "小桥流水人家")), 0.0);
    fs::remove_all(out.parent_path());
  }
  // A 9-channel file with a 4-channel config folder: in_channels from the file is in the written config.
  taiyi::ModelSourceOptions options;
  options.config_dir = fixture("tiny-clip");
  const fs::path out = convert(fixture("single_file/clip-inpaint.safetensors"), "inpaint", "fp16", options);
  EXPECT_EQ(json_of(options.config_dir / "unet" / "config.json")["in_channels"], 4);
  EXPECT_EQ(json_of(out / "unet" / "config.json")["in_channels"], 9);
  fs::remove_all(out.parent_path());
}

TEST(SavePretrained, BuiltInTokenizerFilesAreTheHubs) {
  // What a single file with built-in configs gets in tokenizer/: the vocabularies the harness derives as the
  // hub has them (tools/make_fixtures.py's write_clip_vocab; bert-base-chinese's vocab.txt), and configs
  // that parse.
  std::map<std::string, std::string> clip, bert;
  for (const auto& [name, bytes] : taiyi::builtin_tokenizer_files(taiyi::TextEncoderKind::Clip)) clip[name] = bytes;
  for (const auto& [name, bytes] : taiyi::builtin_tokenizer_files(taiyi::TextEncoderKind::Bert)) bert[name] = bytes;
  EXPECT_EQ(nlohmann::json::parse(clip.at("vocab.json")), json_of(fixture("clip-vocab/vocab.json")));
  EXPECT_EQ(clip.at("merges.txt"), text_of(fixture("clip-vocab/merges.txt")));
  EXPECT_EQ(nlohmann::json::parse(clip.at("tokenizer_config.json"))["model_max_length"], 77);
  EXPECT_EQ(nlohmann::json::parse(clip.at("special_tokens_map.json"))["pad_token"], "<|endoftext|>");
  EXPECT_EQ(bert.at("vocab.txt"), text_of(fixture("tiny-bert/tokenizer/vocab.txt")));
  EXPECT_EQ(nlohmann::json::parse(bert.at("tokenizer_config.json"))["tokenizer_class"], "BertTokenizer");
  EXPECT_EQ(nlohmann::json::parse(bert.at("special_tokens_map.json"))["cls_token"], "[CLS]");
}

TEST(SavePretrained, ConvertedBf16WeightsAreUsedInPlace) {
  // A bf16 run from a bf16 folder maps the weights: every UNet parameter lies in the file's mapping.
  const fs::path out = convert(fixture("tiny-clip"), "inplace", "bf16");
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "bf16";
  auto pipe = taiyi::Pipeline::load(out, options);
  const fs::path file = fs::canonical(out / "unet" / "diffusion_pytorch_model.safetensors");
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;  // this file's mappings, from /proc/self/maps
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.size() > file.string().size() && line.compare(line.size() - file.string().size(), std::string::npos, file.string()) == 0)
      ranges.emplace_back(std::stoull(line.substr(0, line.find('-')), nullptr, 16),
                          std::stoull(line.substr(line.find('-') + 1), nullptr, 16));
  ASSERT_FALSE(ranges.empty()) << file << " is not mapped";
  size_t mapped = 0, total = 0;
  for (const auto& p : pipe.unet().module().parameters()) {
    const auto address = reinterpret_cast<uintptr_t>(p.data_ptr());
    ++total;
    for (const auto& [begin, end] : ranges) mapped += address >= begin && address < end;
    EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  }
  EXPECT_EQ(mapped, total) << "UNet parameters copied out of the bf16 file";
  fs::remove_all(out.parent_path());
}

TEST(SavePretrained, BadInputIsAOneLineErrorAndLeavesNothing) {
  const taiyi::ModelSource source = taiyi::ModelSource::open(fixture("tiny-clip"), {});
  // An output folder that is not empty is never touched.
  const fs::path busy = output_in("busy");
  fs::create_directories(busy);
  std::ofstream(busy / "mine.txt") << "mine";
  expect_error_naming([&] { taiyi::save_pretrained(source, busy, {}); }, {busy.string(), "not empty"});
  EXPECT_EQ(text_of(busy / "mine.txt"), "mine");
  expect_error_naming([&] { taiyi::parse_save_dtype("fp8"); }, {"--dtype", "fp8", "fp16, bf16, fp32 or keep"});
  expect_error_naming([&] { taiyi::ModelSource::open(busy / "mine.txt", {}); }, {"mine.txt"});
  // A failure half-way (the UNet's config is broken, after the text encoder was written): the temporary
  // folder is removed and the output never appears.
  const fs::path broken = taiyi::test::temp_dir("convert-broken-source") / "model";
  fs::copy(fixture("tiny-clip"), broken, fs::copy_options::recursive);
  std::ofstream(broken / "unet" / "config.json", std::ios::trunc) << "{\"in_channels\": ";
  const fs::path out = output_in("broken");
  expect_error_naming([&] { taiyi::save_pretrained(taiyi::ModelSource::open(broken, {}), out, {}); },
                      {(broken / "unet" / "config.json").string()});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(fs::is_empty(out.parent_path())) << "the temporary folder was left behind";
  fs::remove_all(busy.parent_path());
  fs::remove_all(out.parent_path());
  fs::remove_all(broken.parent_path());
}
