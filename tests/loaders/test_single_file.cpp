// Models as users download them (include/taiyi/loaders/single_file.h), end to end against diffusers:
// .bin folders, fp16 variants, the 2022 VAE names, single-file checkpoints and separate VAE files
// (tests/reference/sources.py), every image identical; and the one-line errors for what taiyi cannot run.
#include <fstream>

#include "taiyi/loaders/single_file.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::fixtures_dir;

namespace {

Json source_cases(const std::string& name = "ref/sources_cases.json") {
  std::ifstream in(fixture(name));
  return Json::parse(in);
}

taiyi::ModelSourceOptions source_options(const Json& c) {
  taiyi::ModelSourceOptions options;
  options.variant = c.value("variant", "");
  if (!c.value("vae", "").empty()) options.vae = fixtures_dir() / c.value("vae", "");
  if (!c.value("config_dir", "").empty()) options.config_dir = fixtures_dir() / c.value("config_dir", "");
  options.extract_ema = c.value("extract_ema", false);
  return options;
}

// The case's images with taiyi, loading `model` as the case's options say.
torch::Tensor run_source_case(const Json& c, const fs::path& model, taiyi::ModelSourceOptions options) {
  taiyi::PipelineOptions pipeline;
  pipeline.source = std::move(options);
  auto pipe = taiyi::Pipeline::load(model, pipeline);
  taiyi::GenerationRequest request = taiyi::test::request_of_case(c);
  if (c.contains("mask")) {  // a 9-channel UNet: inpainting
    request.init_image = (fixtures_dir() / c["init_image"].get<std::string>()).string();
    request.mask = (fixtures_dir() / c["mask"].get<std::string>()).string();
    request.strength = c["strength"].get<double>();
  }
  return taiyi::test::image_tensor(pipe.generate(request));
}

void expect_identical_images(const Json& c, const torch::Tensor& images,
                             const std::string& reference = "ref/sources.safetensors") {
  const torch::Tensor expected = taiyi::test::reference_tensor(fixture(reference), c["name"].get<std::string>() + ".images");
  ASSERT_EQ(images.sizes(), expected.sizes()) << c["name"];
  EXPECT_EQ(taiyi::test::fraction_within(images, expected, 0), 1.0)
      << c["name"] << ": max abs diff " << taiyi::test::max_abs_diff(images, expected);
}

}  // namespace

TEST(ModelSource, EveryFormEqualsDiffusersImage) {
  const Json cases = source_cases();
  ASSERT_GE(cases.size(), 4u);
  for (const Json& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    expect_identical_images(c, run_source_case(c, fixtures_dir() / c["model"].get<std::string>(), source_options(c)));
  }
}

// The full-size random pipeline (the real Chinese-EN configs) as one LDM .safetensors, read with the built-in
// configs and tokenizer (no --config-dir), against diffusers' from_single_file(file, config=full-clip).
TEST(FullSizeSingleFile, BuiltInConfigsGiveDiffusersImage) {
  const Json cases = source_cases("ref/sources_full_cases.json");
  ASSERT_EQ(cases.size(), 1u);
  const Json& c = cases[0];
  const fs::path model = fixtures_dir() / c["model"].get<std::string>();
  const taiyi::ModelSource source = taiyi::ModelSource::open(model, {});
  EXPECT_TRUE(source.folder().builtin_configs());
  expect_identical_images(c, run_source_case(c, model, {}), "ref/sources_full.safetensors");
}

TEST(ModelSource, DescribesWhatItOpened) {
  taiyi::ModelSource bin = taiyi::ModelSource::open(fixture("tiny-clip-bin"), {});
  EXPECT_FALSE(bin.single_file());
  EXPECT_EQ(bin.folder().weight_files("unet").front().filename(), "diffusion_pytorch_model.bin");
  const taiyi::StateDict unet = bin.state_dict("unet");
  EXPECT_TRUE(unet.contains("conv_in.weight"));
  taiyi::ModelSourceOptions fp16;
  fp16.variant = "fp16";
  taiyi::ModelSource variant = taiyi::ModelSource::open(fixture("tiny-clip-fp16"), fp16);
  EXPECT_EQ(variant.state_dict("unet").find("conv_in.weight")->scalar_type(), torch::kHalf);
  // The 2022 names come out as today's.
  const taiyi::StateDict vae = taiyi::ModelSource::open(fixture("tiny-clip-vae2022"), {}).state_dict("vae");
  EXPECT_TRUE(vae.contains("decoder.mid_block.attentions.0.to_q.weight"));
  EXPECT_FALSE(vae.contains("decoder.mid_block.attentions.0.query.weight"));
}

TEST(ModelSource, BadInputIsOneLineError) {
  fs::path dir = taiyi::test::temp_dir("sources");
  taiyi::ModelSourceOptions fp16;
  fp16.variant = "fp16";
  expect_error_naming([&] { taiyi::ModelSource::open(fixture("tiny-clip"), fp16).state_dict("unet"); },
                      {"unet", "no weights of variant 'fp16'"});
  expect_error_naming([&] { taiyi::ModelSource::open(dir / "none.safetensors", {}); }, {"none.safetensors", "not found"});
  std::ofstream(dir / "notes.ckpt") << "just some text, not a checkpoint";
  expect_error_naming([&] { taiyi::ModelSource::open(dir / "notes.ckpt", {}); }, {"notes.ckpt", "not a PyTorch checkpoint"});
  taiyi::ModelSourceOptions v;
  v.prediction_type = "x";
  expect_error_naming([&] { taiyi::ModelSource::open(fixture("tiny-clip"), v); }, {"--prediction-type x"});
  taiyi::ModelSourceOptions ema;
  ema.extract_ema = true;
  expect_error_naming([&] { taiyi::ModelSource::open(fixture("tiny-clip"), ema); }, {"--extract-ema", "single-file"});
  fs::remove_all(dir);
}

// The web UI's declaration of a v-prediction SD 1.x model: a same-name .yaml beside the checkpoint.
TEST(ModelSource, YamlBesideTheFileDeclaresVPrediction) {
  fs::path dir = taiyi::test::temp_dir("yaml");
  std::ofstream(dir / "model.safetensors") << "x";
  EXPECT_EQ(taiyi::yaml_prediction_type(dir / "model.safetensors"), "");
  std::ofstream(dir / "model.yaml") << "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
                                       "    parameterization: \"v\"\n    linear_start: 0.00085\n";
  EXPECT_EQ(taiyi::yaml_prediction_type(dir / "model.safetensors"), "v_prediction");
  std::ofstream(dir / "model.yaml") << "model:\n  params:\n    parameterization: eps\n";
  EXPECT_EQ(taiyi::yaml_prediction_type(dir / "model.safetensors"), "");
  std::ofstream(dir / "model.yaml") << "model:\n  params:\n    parameterization: \"x0\"\n";
  expect_error_naming([&] { taiyi::yaml_prediction_type(dir / "model.safetensors"); }, {"model.yaml", "parameterization", "x0"});
  fs::remove_all(dir);
}
