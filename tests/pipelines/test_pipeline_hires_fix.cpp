// The hires fix against its exact composition of diffusers' pipelines (tests/reference/hires.py): every
// latent mode, Lanczos, a cropped and a one-sided hires size, a second-pass sampler, two images.
#include <gtest/gtest.h>

#include "taiyi/jobs/infotext.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/json.h"
#include "test_util.h"

using taiyi::test::fixture;

namespace {

taiyi::GenerationRequest hires_request(const nlohmann::json& c) {
  taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
  r.sampler = c.at("sampler");
  r.hires_scale = c.at("scale");
  r.hires_width = c.at("resize_x");
  r.hires_height = c.at("resize_y");
  r.hires_upscaler = c.at("upscaler");
  r.hires_steps = c.at("hires_steps");
  r.hires_strength = c.at("strength");
  r.hires_sampler = c.at("hires_sampler");
  return r;
}

taiyi::Pipeline load_tiny() {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "fp32";
  return taiyi::Pipeline::load(fixture("tiny-clip"), options);
}

}  // namespace

TEST(HiresFix, ImagesEqualTheDiffusersComposition) {
  const nlohmann::json cases = taiyi::read_json_file(fixture("ref/hires_cases.json"));
  const auto golden = fixture("ref/hires.safetensors");
  auto pipe = load_tiny();
  ASSERT_GE(cases.size(), 10u);
  for (const nlohmann::json& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(hires_request(c)));
    const torch::Tensor expected = taiyi::test::reference_tensor(golden, name + ".images").to(torch::kUInt8);
    ASSERT_EQ(images.sizes(), expected.sizes());
    const double equal = images.eq(expected).to(torch::kDouble).mean().item<double>() * 100;
    std::cout << name << ": " << images.size(2) << "x" << images.size(1) << ", " << equal << "% of values equal diffusers'\n";
    EXPECT_TRUE(torch::equal(images, expected));
  }
}

TEST(HiresFix, TargetSizesAndStepsAsTheWebUiComputesThem) {
  auto pipe = load_tiny();
  taiyi::GenerationRequest r;
  r.width = 512, r.height = 768, r.steps = 20;
  r.hires_scale = 1.5;
  taiyi::HiresTarget t = pipe.hires_target(r);
  EXPECT_EQ(t.width, 768);
  EXPECT_EQ(t.height, 1152);
  EXPECT_EQ(t.steps, 20);
  EXPECT_EQ(t.schedule_steps, 28);  // int(20 / 0.7)
  r.hires_width = 1024, r.hires_height = 1024, r.hires_steps = 10, r.hires_strength = 1.0;
  t = pipe.hires_target(r);  // 512x768 fitted to 1024 wide: 1024x1536, 512 rows cropped (64 latent rows)
  EXPECT_EQ(t.upscale_width, 1024);
  EXPECT_EQ(t.upscale_height, 1536);
  EXPECT_EQ(t.truncate_y, 64);
  EXPECT_EQ(t.height, 1024);
  EXPECT_EQ(t.schedule_steps, 10);  // int(10 / 0.999)
}

TEST(HiresFix, InfotextAsTheWebUiWritesIt) {
  auto pipe = load_tiny();
  taiyi::GenerationRequest r;
  r.prompt = "a cat";
  r.steps = 2, r.width = 64, r.height = 48, r.seed = 5, r.sampler = "Euler", r.cfg_scale = 7;
  r.hires_scale = 1.5, r.hires_steps = 2, r.hires_strength = 0.6;
  const taiyi::GenerationRequest completed = pipe.complete(r);
  const std::vector<taiyi::Image> images = pipe.generate(r);
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].width, 96);
  EXPECT_EQ(images[0].height, 72);
  const std::string text = taiyi::a1111_parameters(r, completed, images[0], pipe.sampler_setting(completed), {"tiny-clip", "", "", ""},
                                                   [](const std::string&) { return std::string(); });
  EXPECT_EQ(text, "a cat\nSteps: 2, Sampler: Euler, Schedule type: Uniform, CFG scale: 7, Seed: 5, Size: 64x48, Model: tiny-clip, "
                  "Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent");
}

TEST(HiresFix, BadSettingsAreOneLineErrors) {
  auto pipe = load_tiny();
  taiyi::GenerationRequest r;
  r.prompt = "a cat";
  r.steps = 2, r.width = 64, r.height = 64;
  auto with = [&](auto change) {
    taiyi::GenerationRequest bad = r;
    bad.hires_scale = 2;
    change(bad);
    return [&pipe, bad] { pipe.validate(bad); };
  };
  using R = taiyi::GenerationRequest;
  taiyi::test::expect_error_naming(with([](R& b) { b.hires_scale = 1.0; }), {"hires scale", "more than 1"});
  taiyi::test::expect_error_naming(with([](R& b) { b.hires_scale = 0.5; }), {"hires scale"});
  taiyi::test::expect_error_naming(with([](R& b) { b.hires_strength = 0; }), {"hires strength 0", "greater than 0"});
  taiyi::test::expect_error_naming(with([](R& b) { b.hires_upscaler = "ESRGAN_4x"; }), {"hires upscaler \"ESRGAN_4x\"", "Lanczos"});
  taiyi::test::expect_error_naming(with([](R& b) { b.hires_sampler = "nope"; }), {"nope"});
  taiyi::test::expect_error_naming(with([](R& b) { b.width = 8192, b.height = 64, b.hires_scale = 4; }), {"hires width", "at most"});
  taiyi::test::expect_error_naming(with([](R& b) { b.init_image = "x.png"; }), {"hires fix", "text-to-image"});
}
