// End-to-end parity with diffusers' StableDiffusionPipeline (tests/reference/pipeline.py): the same
// seed gives the same PNG pixels, fp32 on CPU, for both text-encoder families, PNDM and DDIM.
#include <fstream>

#include <nlohmann/json.hpp>

#include "taiyi/error.h"
#include "taiyi/pipeline.h"
#include "test_util.h"

namespace {

nlohmann::json load_cases() {
  std::ifstream in(taiyi::test::fixture("ref/pipeline_cases.json"));
  return nlohmann::json::parse(in);
}

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
  nlohmann::json cases = load_cases();
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    auto pipe = taiyi::Pipeline::load(taiyi::test::fixture(c["model"].get<std::string>()),
                                      cpu_fp32(c["scheduler"], c["eta"].get<double>()));
    taiyi::GenerationRequest r;
    r.prompt = c["prompt"];
    r.negative_prompt = c["negative_prompt"];
    r.steps = c["steps"];
    r.cfg_scale = c["cfg_scale"];
    r.seed = c["seed"];
    r.width = c["width"];
    r.height = c["height"];
    r.count = c["count"];
    std::vector<taiyi::Image> images = pipe.generate(r);
    torch::Tensor expected = taiyi::test::reference_tensor(taiyi::test::fixture("ref/pipeline.safetensors"), name + ".images");
    ASSERT_EQ(static_cast<int64_t>(images.size()), expected.size(0));
    std::vector<torch::Tensor> actual;
    for (const auto& image : images) {
      EXPECT_EQ(image.width, r.width);
      EXPECT_EQ(image.height, r.height);
      actual.push_back(torch::from_blob(const_cast<uint8_t*>(image.rgb.data()), {image.height, image.width, 3}, torch::kUInt8)
                           .to(torch::kFloat));
    }
    torch::Tensor got = torch::stack(actual);
    ASSERT_EQ(got.sizes(), expected.sizes());
    double max_diff = (got - expected).abs().max().item<double>();
    double identical = (got == expected).to(torch::kDouble).mean().item<double>();
    std::printf("%s: max pixel diff %.0f, identical %.4f%% (tol: diff <= 1, identical >= 99.9%%)\n", name.c_str(),
                max_diff, identical * 100);
    EXPECT_LE(max_diff, 1.0) << name;
    EXPECT_GE(identical, 0.999) << name;
    EXPECT_EQ(images[0].seed, r.seed);
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
    taiyi::Pipeline::load(taiyi::test::fixture("tiny-clip"), cpu_fp32("euler", 0.0));
    ADD_FAILURE() << "unknown scheduler must fail";
  } catch (const taiyi::Error& e) {
    EXPECT_NE(std::string(e.what()).find("euler"), std::string::npos) << e.what();
  }
}
