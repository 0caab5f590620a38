// End-to-end parity with diffusers' StableDiffusionPipeline (tests/reference/pipeline.py): the same
// seed gives the same PNG pixels, fp32 on CPU, for both text-encoder families, PNDM and DDIM.
#include <fstream>

#include <nlohmann/json.hpp>

#include "taiyi/utils/error.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "test_util.h"

namespace {

// Half precision against diffusers' half precision (issue 9's figure for fp16).
constexpr double kHalfMinPsnrDb = 35.0;

taiyi::PipelineOptions cpu_fp32(const std::string& scheduler, double eta) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "fp32";
  options.scheduler = scheduler;
  options.eta = eta;
  return options;
}

}  // namespace

TEST(PipelineParity, ImagesMatchDiffusers) {
  nlohmann::json cases = taiyi::test::pipeline_cases();
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    std::vector<taiyi::Image> images = taiyi::test::run_pipeline_case(c, cpu_fp32("", 0.0));
    torch::Tensor expected = taiyi::test::reference_tensor(taiyi::test::fixture("ref/pipeline.safetensors"), name + ".images");
    ASSERT_EQ(static_cast<int64_t>(images.size()), expected.size(0));
    for (const auto& image : images) {
      EXPECT_EQ(image.width, c["width"].get<int64_t>());
      EXPECT_EQ(image.height, c["height"].get<int64_t>());
    }
    torch::Tensor got = taiyi::test::image_tensor(images);
    ASSERT_EQ(got.sizes(), expected.sizes());
    double max_diff = (got - expected).abs().max().item<double>();
    double identical = (got == expected).to(torch::kDouble).mean().item<double>();
    std::printf("%s: max pixel diff %.0f, identical %.4f%% (tol: diff <= 1, identical >= 99.9%%)\n", name.c_str(),
                max_diff, identical * 100);
    EXPECT_LE(max_diff, 1.0) << name;
    EXPECT_GE(identical, 0.999) << name;
    EXPECT_EQ(images[0].seed, c["seed"].get<uint64_t>());
  }
}

TEST(PipelineParity, BatchOfPromptsEqualsSeparateRuns) {
  // generate_batch puts several prompts in one UNet batch; each image must be what it is alone.
  auto pipe = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("", 0.0));
  taiyi::GenerationRequest a, b;
  a.prompt = "山水画";
  b.prompt = "a red boat";
  b.negative_prompt = "blurry";
  a.steps = b.steps = 4;
  a.seed = 11;
  b.seed = 12;
  a.width = b.width = 64;
  a.height = b.height = 64;
  auto together = pipe.generate_batch({a, b});
  auto alone_a = pipe.generate(a);
  auto alone_b = pipe.generate(b);
  ASSERT_EQ(together.size(), 2u);
  auto diff = [](const taiyi::Image& x, const taiyi::Image& y) {
    int worst = 0;
    for (size_t i = 0; i < x.rgb.size(); ++i) worst = std::max(worst, std::abs(int(x.rgb[i]) - int(y.rgb[i])));
    return worst;
  };
  EXPECT_LE(diff(together[0], alone_a[0]), 1);
  EXPECT_LE(diff(together[1], alone_b[0]), 1);
  EXPECT_GT(diff(together[0], together[1]), 10);  // different prompts and seeds do differ
}

TEST(PipelineParity, RejectsBadRequests) {
  auto pipe = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("", 0.0));
  taiyi::GenerationRequest r;
  r.prompt = "x";
  r.width = 500;
  r.height = 64;
  EXPECT_THROW(pipe.generate(r), taiyi::Error);
  r.width = 64;
  r.steps = 0;
  EXPECT_THROW(pipe.generate(r), taiyi::Error);
  r.steps = 2;
  r.cfg_scale = -1;
  EXPECT_THROW(pipe.generate(r), taiyi::Error);
  try {
    taiyi::PipelineOptions o = cpu_fp32("", 0.0);
    o.device = "cuda";
    if (!torch::cuda::is_available()) {
      taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), o);
      ADD_FAILURE() << "cuda without a GPU must fail";
    }
  } catch (const taiyi::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA GPU"), std::string::npos) << e.what();
  }
  try {
    taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("eulerx", 0.0));
    ADD_FAILURE() << "unknown scheduler must fail";
  } catch (const taiyi::Error& e) {
    EXPECT_NE(std::string(e.what()).find("eulerx"), std::string::npos) << e.what();
  }
}

TEST(PipelineFp16Safety, VaeNanOrInfIsDecodedAgainInFp32Once) {
  c10::InferenceMode guard;
  auto fp32 = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("", 0.0));
  taiyi::PipelineOptions options = cpu_fp32("", 0.0);
  options.precision = "fp16";
  std::vector<std::string> notices;
  options.notice = [&](const std::string& text) { notices.push_back(text); };
  auto fp16 = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), options);
  EXPECT_EQ(fp16.vae_dtype(), torch::kHalf);
  // Latents of about 2e4: finite in fp16, but latents / scaling_factor (0.18215) passes fp16's 65504.
  torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(5);
  torch::Tensor latents = (torch::randn({1, 4, 8, 8}, generator) * 2e4).to(torch::kHalf);
  ASSERT_TRUE(torch::isfinite(latents).all().item<bool>());
  ASSERT_FALSE(torch::isfinite(latents / 0.18215).all().item<bool>());
  torch::Tensor expected = fp32.decode(latents.to(torch::kFloat));
  torch::Tensor got = fp16.decode(latents);
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_NE(notices[0].find("fp32"), std::string::npos) << notices[0];
  EXPECT_EQ(fp16.vae_dtype(), torch::kFloat);
  EXPECT_TRUE(torch::isfinite(got).all().item<bool>());
  taiyi::test::expect_close("fp32 fallback decode", got, expected, 1e-6);
  fp16.decode(latents);
  EXPECT_EQ(notices.size(), 1u) << "said once";
}

TEST(PipelineFp16Safety, VaePrecisionFp32IsTheFp32Decoder) {
  c10::InferenceMode guard;
  auto fp32 = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("", 0.0));
  taiyi::PipelineOptions options = cpu_fp32("", 0.0);
  options.precision = "fp16";
  options.vae_precision = "fp32";
  auto fp16 = taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), options);
  EXPECT_EQ(fp16.dtype(), torch::kHalf);
  EXPECT_EQ(fp16.vae_dtype(), torch::kFloat);
  torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(6);
  torch::Tensor latents = torch::randn({1, 4, 8, 8}, generator).to(torch::kHalf);
  taiyi::test::expect_close("--vae-precision fp32 decode", fp16.decode(latents), fp32.decode(latents.to(torch::kFloat)), 0.0);
  options.vae_precision = "fp64";
  taiyi::test::expect_error_naming([&] { taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), options); },
                                   {"--vae-precision", "fp64"});
}

// fp16 and bf16 on the CPU (AVX512-BF16 here) against diffusers at the same precision on the CPU (random
// tiny models amplify rounding: against the fp32 golden both are about 13 dB, see tests/reference/pipeline.py).
TEST(PipelineParity, Fp16AndBf16OnTheCpuMatchDiffusersAtTheSamePrecision) {
  for (const auto& [precision, suffix] : {std::pair<std::string, std::string>{"fp16", "_float16"}, {"bf16", "_bfloat16"}}) {
    for (const auto& c : taiyi::test::pipeline_cases()) {
      const std::string name = c["name"];
      taiyi::PipelineOptions options = cpu_fp32("", 0.0);
      options.precision = precision;
      torch::Tensor got = taiyi::test::image_tensor(taiyi::test::run_pipeline_case(c, options));
      torch::Tensor expected =
          taiyi::test::reference_tensor(taiyi::test::fixture("ref/pipeline.safetensors"), name + ".images" + suffix);
      ASSERT_EQ(got.sizes(), expected.sizes());
      const double psnr = taiyi::test::psnr_db(got, expected);
      std::printf("%s %s: PSNR %.1f dB against diffusers %s, %.2f%% of pixels within 1/255\n", name.c_str(),
                  precision.c_str(), psnr, precision.c_str(), 100 * taiyi::test::fraction_within(got, expected, 1));
      EXPECT_GE(psnr, kHalfMinPsnrDb) << name << " " << precision;
      EXPECT_GE(taiyi::test::fraction_within(got, expected, 1), 0.999) << name << " " << precision;
    }
  }
}

TEST(PipelineFp16Safety, TextEncoderOverflowIsEncodedAgainInFp32) {
  c10::InferenceMode guard;
  // tests/reference/pipeline.py's tiny-clip-overflow: NaN in fp16 (in transformers too), finite in fp32.
  const auto folder = taiyi::test::fixture("tiny-clip-overflow");
  auto fp32 = taiyi::Pipeline::load(folder, cpu_fp32("", 0.0));
  taiyi::PipelineOptions options = cpu_fp32("", 0.0);
  options.precision = "fp16";
  std::vector<std::string> notices;
  options.notice = [&](const std::string& text) { notices.push_back(text); };
  auto fp16 = taiyi::Pipeline::load(folder, options);
  torch::Tensor expected = fp32.encode_prompt("a cat on the moon");
  ASSERT_TRUE(torch::isfinite(expected).all().item<bool>());
  torch::Tensor got = fp16.encode_prompt("a cat on the moon");
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_NE(notices[0].find("text encoder"), std::string::npos) << notices[0];
  EXPECT_EQ(got.scalar_type(), torch::kHalf);
  taiyi::test::expect_close("fp32 fallback text encoder", got.to(torch::kFloat), expected.to(torch::kHalf).to(torch::kFloat), 0.0);
  fp16.encode_prompt("another prompt");
  EXPECT_EQ(notices.size(), 1u) << "said once";
}
