// The live preview against the web UI's cheap approximation (tests/reference/latent_preview.py), and the
// denoising loop handing its latents to the thread's observer.
#include <gtest/gtest.h>

#include <thread>

#include "taiyi/pipelines/latent_preview.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "test_util.h"

using taiyi::test::fixture;
using taiyi::test::reference_tensor;

TEST(LatentPreview, EqualsTheWebUisCheapApproximation) {
  const auto file = fixture("ref/latent_preview.safetensors");
  const torch::Tensor latents = reference_tensor(file, "latents");
  for (int64_t i = 0; i < latents.size(0); ++i) {
    SCOPED_TRACE(i);
    const taiyi::PixelImage preview = taiyi::cheap_latent_preview(latents, i);
    const torch::Tensor expected = reference_tensor(file, "preview_" + std::to_string(i));
    ASSERT_EQ(preview.height, expected.size(0));
    ASSERT_EQ(preview.width, expected.size(1));
    const torch::Tensor got = torch::from_blob(const_cast<uint8_t*>(preview.pixels.data()), {preview.height, preview.width, 3},
                                               torch::kUInt8);
    EXPECT_TRUE(torch::equal(got, expected.to(torch::kUInt8)));
  }
  taiyi::test::expect_error_naming([&] { taiyi::cheap_latent_preview(latents.narrow(1, 0, 3)); }, {"latent preview", "4"});
  taiyi::test::expect_error_naming([&] { taiyi::cheap_latent_preview(latents, 2); }, {"no image 2"});
}

TEST(LatentPreview, ObserverIsPerThreadAndScoped) {
  EXPECT_EQ(taiyi::latents_observer(), nullptr);
  int calls = 0;
  {
    taiyi::ScopedLatentsObserver outer([&](const torch::Tensor&, int64_t, int64_t) { calls += 1; });
    ASSERT_NE(taiyi::latents_observer(), nullptr);
    {
      taiyi::ScopedLatentsObserver inner([&](const torch::Tensor&, int64_t, int64_t) { calls += 10; });
      (*taiyi::latents_observer())(torch::zeros({1}), 1, 1);
    }
    (*taiyi::latents_observer())(torch::zeros({1}), 1, 1);
    std::thread other([] { EXPECT_EQ(taiyi::latents_observer(), nullptr); });
    other.join();
  }
  EXPECT_EQ(taiyi::latents_observer(), nullptr);
  EXPECT_EQ(calls, 11);
}

TEST(LatentPreview, DenoisingLoopHandsItsLatentsToTheObserver) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  auto pipe = taiyi::Pipeline::load(fixture("tiny-clip"), options);
  taiyi::GenerationRequest r;
  r.prompt = "a cat";
  r.sampler = "Euler";  // one UNet call a step (the folder's PNDM makes steps + 1)
  r.steps = 3;
  r.width = 64;
  r.height = 48;
  r.seed = 1;
  std::vector<int64_t> steps;
  taiyi::ScopedLatentsObserver observer([&](const torch::Tensor& latents, int64_t step, int64_t total) {
    EXPECT_EQ(latents.size(0), 1);
    EXPECT_EQ(latents.size(1), 4);
    EXPECT_EQ(total, 3);
    steps.push_back(step);
  });
  pipe.generate(r);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3}));
}
