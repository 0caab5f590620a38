// VAE tiling against diffusers (tests/reference/vae_tiling.py): AutoencoderKL's tiled decode and encode
// of the tiny VAE with its tiles shrunk to 32 pixels / 4 latents (several rows and columns, ragged edge
// tiles, a batch of 2) bit for bit; a tile larger than the input leaves the untiled path; txt2img and
// img2img through the pipeline with --vae-tiling on equal diffusers' pipelines with enable_tiling(); the
// memory estimate counts the tiled decode; bad options are one-line errors.
#include <gtest/gtest.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/loaders/state_dict.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::VaeTiling;
using taiyi::VaeTilingMode;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;

namespace {

taiyi::AutoencoderKL tiny_vae() {
  const fs::path dir = fixture("tiny-clip/vae");
  taiyi::AutoencoderKL vae(taiyi::Config::load(dir / "config.json"));
  taiyi::load_weights(vae.module(), {dir / "diffusion_pytorch_model.safetensors"});
  return vae;
}

VaeTiling tiles(int64_t sample, int64_t latent, double overlap = 0.25) {
  VaeTiling t;
  t.mode = VaeTilingMode::kOn;
  t.tile_sample_size = sample;
  t.tile_latent_size = latent;
  t.overlap = overlap;
  return t;
}

// torch::equal, with the largest difference in the message when not.
void expect_equal(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  const double diff = taiyi::test::max_abs_diff(actual, expected);
  std::printf("%s %s: max abs diff %.3g (bit-identical required)\n", name.c_str(), c10::str(actual.sizes()).c_str(), diff);
  EXPECT_TRUE(torch::equal(actual, expected)) << name << ": max abs diff " << diff;
}

const fs::path& golden() {
  static const fs::path path = fixture("ref/vae_tiling.safetensors");
  return path;
}

}  // namespace

TEST(VaeTiling, TiledDecodeEqualsDiffusers) {
  c10::InferenceMode guard;
  auto vae = tiny_vae();
  const torch::Tensor latents = reference_tensor(golden(), "decode.latents");  // [2, 4, 10, 13]
  EXPECT_TRUE(vae.decode_tiles(10, 13, tiles(32, 4)));
  expect_equal("tiled decode, overlap 0.25", vae.decode(latents, tiles(32, 4)), reference_tensor(golden(), "decode.images"));
  expect_equal("tiled decode, overlap 0.5", vae.decode(latents, tiles(32, 4, 0.5)),
               reference_tensor(golden(), "decode_half_overlap.images"));
  // Tiling differs from the untiled decode: the test above could not pass by decoding whole.
  EXPECT_GT(taiyi::test::max_abs_diff(vae.decode(latents), reference_tensor(golden(), "decode.images")), 0.1);
}

TEST(VaeTiling, TileLargerThanTheLatentsIsTheUntiledDecode) {
  c10::InferenceMode guard;
  auto vae = tiny_vae();
  const torch::Tensor latents = reference_tensor(golden(), "decode.latents");
  EXPECT_FALSE(vae.decode_tiles(10, 13, tiles(128, 16)));
  EXPECT_FALSE(vae.decode_tiles(13, 13, tiles(0, 13)));  // strictly greater, as diffusers' _decode
  EXPECT_TRUE(vae.decode_tiles(14, 13, tiles(0, 13)));
  const torch::Tensor expected = reference_tensor(golden(), "decode_untiled.images");
  expect_equal("decode, tile of 16 latents", vae.decode(latents, tiles(128, 16)), expected);
  expect_equal("decode, tiling off", vae.decode(latents), expected);
}

TEST(VaeTiling, TiledEncodeEqualsDiffusers) {
  c10::InferenceMode guard;
  auto vae = tiny_vae();
  const torch::Tensor images = reference_tensor(golden(), "encode.images");  // [2, 3, 80, 104]
  EXPECT_TRUE(vae.encode_tiles(80, 104, tiles(32, 4)));
  auto [mean, std] = vae.encode_distribution(images, tiles(32, 4));
  expect_equal("tiled encode mean", mean, reference_tensor(golden(), "encode.mean"));
  expect_equal("tiled encode std", std, reference_tensor(golden(), "encode.std"));
  expect_equal("tiled encode_mean", vae.encode_mean(images, tiles(32, 4)), reference_tensor(golden(), "encode.mean"));
  EXPECT_GT(taiyi::test::max_abs_diff(vae.encode_mean(images), mean), 1e-3);
}

TEST(VaeTiling, TileSizesDefaultToTheConfigs) {
  auto vae = tiny_vae();  // sample_size 64, scale factor 8
  EXPECT_EQ(vae.tile_sample_size(VaeTiling{}), 64);
  EXPECT_EQ(vae.tile_latent_size(VaeTiling{}), 8);
  EXPECT_EQ(vae.tile_latent_size(tiles(96, 0)), 12);
  EXPECT_DOUBLE_EQ(VaeTiling{}.overlap, 0.25);
  EXPECT_EQ(VaeTiling{}.mode, VaeTilingMode::kOff);
  EXPECT_DOUBLE_EQ(vae.encoder_values_per_pixel(), 8);  // block_out_channels [8, 16, 16, 16]: 8 at full size
}

TEST(VaeTiling, BadModesAndTilesAreErrors) {
  c10::InferenceMode guard;
  auto vae = tiny_vae();
  EXPECT_EQ(taiyi::parse_vae_tiling_mode("on"), VaeTilingMode::kOn);
  EXPECT_EQ(taiyi::parse_vae_tiling_mode("off"), VaeTilingMode::kOff);
  EXPECT_EQ(taiyi::parse_vae_tiling_mode("auto"), VaeTilingMode::kAuto);
  expect_error_naming([] { taiyi::parse_vae_tiling_mode("yes"); }, {"--vae-tiling", "yes"});
  const torch::Tensor latents = torch::zeros({1, 4, 4, 4});
  expect_error_naming([&] { vae.tiled_decode(latents, tiles(8, 1)); }, {"VAE tiling", "1 latents"});
  VaeTiling automatic;
  automatic.mode = VaeTilingMode::kAuto;
  expect_error_naming([&] { vae.decode(latents, automatic); }, {"auto"});
}

namespace {

taiyi::Pipeline tiled_pipeline(const nlohmann::json& c, const std::string& tiling = "on",
                               std::vector<std::string>* notices = nullptr) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "fp32";
  options.vae_tiling = tiling;
  options.vae_tile_size = c.at("vae_tile_size");
  if (notices) options.notice = [notices](const std::string& notice) { notices->push_back(notice); };
  return taiyi::Pipeline::load(fixture(c.at("model").get<std::string>()), options);
}

}  // namespace

TEST(VaeTiling, PipelinesWithTilingOnEqualDiffusers) {
  const nlohmann::json cases = taiyi::read_json_file(fixture("ref/vae_tiling_cases.json"));
  ASSERT_EQ(cases.size(), 2u);
  for (const nlohmann::json& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    auto pipe = tiled_pipeline(c);
    taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
    if (c.contains("image")) {
      r.init_image = fixture(c.at("image").get<std::string>()).string();
      r.strength = c.at("strength");
    }
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(r));
    expect_equal(name + " with --vae-tiling on, tiles of 32 px", images, reference_tensor(golden(), name + ".images"));
  }
}

TEST(VaeTiling, MemoryEstimateCountsTheTiledDecode) {
  const nlohmann::json c = taiyi::read_json_file(fixture("ref/vae_tiling_cases.json")).at(0);
  std::vector<std::string> notices;
  auto on = tiled_pipeline(c, "on"), off = tiled_pipeline(c, "off"), automatic = tiled_pipeline(c, "auto", &notices);
  taiyi::GenerationRequest r;
  r.width = r.height = 2048;
  const uint64_t tiled = on.working_memory(r), untiled = off.working_memory(r);
  std::printf("tiny VAE, 2048x2048 working memory: %.3f GB untiled, %.3f GB tiled (tiles of 32 px)\n",
              static_cast<double>(untiled) / 1e9, static_cast<double>(tiled) / 1e9);
  EXPECT_LT(tiled * 2, untiled);
  // auto: the untiled estimate where it fits the free memory (one image here), else the tiled one, said once.
  const std::optional<uint64_t> available = taiyi::available_memory(torch::kCPU);
  ASSERT_TRUE(available.has_value());
  ASSERT_LT(untiled, *available);
  EXPECT_EQ(automatic.working_memory(r), untiled);
  EXPECT_TRUE(notices.empty());
  r.count = taiyi::kMaxImagesPerRequest;  // 4096 images at once: the untiled decode cannot fit
  ASSERT_GT(off.working_memory(r), *available);
  EXPECT_EQ(automatic.working_memory(r), on.working_memory(r));
  EXPECT_LT(on.working_memory(r), off.working_memory(r));
  automatic.working_memory(r);
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_NE(notices[0].find("VAE tiling: the untiled decode of 2048x2048"), std::string::npos) << notices[0];
  r.count = 1;
  // A tile larger than the image: tiling changes nothing.
  r.width = r.height = 32;
  EXPECT_EQ(on.working_memory(r), off.working_memory(r));
}

TEST(VaeTiling, BadPipelineOptionsAreErrors) {
  nlohmann::json c = taiyi::read_json_file(fixture("ref/vae_tiling_cases.json")).at(0);
  expect_error_naming([&] { tiled_pipeline(c, "sometimes"); }, {"--vae-tiling", "sometimes"});
  c["vae_tile_size"] = 40;
  expect_error_naming([&] { tiled_pipeline(c); }, {"--vae-tile-size", "40", "multiple of 32"});
  c["vae_tile_size"] = -32;
  expect_error_naming([&] { tiled_pipeline(c); }, {"--vae-tile-size", "-32"});
}

// --full fixtures: the SD 1.x VAE config (random weights), a 1024x1024 decode in diffusers' own tiles
// (512 pixels, 64 latents, overlap 0.25: 3 x 3 tiles, the last row and column ragged), to the relative
// L2 error of the untiled full-size decode test (test_autoencoder_kl.cpp), bit-identity reported.
TEST(FullSizeVaeTiling, Decode1024MatchesDiffusers) {
  c10::InferenceMode guard;
  const fs::path ref = fixture("ref/vae_tiling_full.safetensors"), dir = fixture("full-clip/vae");
  taiyi::AutoencoderKL vae(taiyi::Config::load(dir / "config.json"));
  taiyi::load_weights(vae.module(), {dir / "diffusion_pytorch_model.safetensors"});
  VaeTiling on;
  on.mode = VaeTilingMode::kOn;
  ASSERT_EQ(vae.tile_sample_size(on), 512);
  ASSERT_EQ(vae.tile_latent_size(on), 64);
  const torch::Tensor images = vae.decode(reference_tensor(ref, "decode.latents"), on);
  const torch::Tensor expected = reference_tensor(ref, "decode.images");
  ASSERT_EQ(images.sizes(), expected.sizes());
  const double error = taiyi::test::relative_l2(images, expected);
  std::printf("full-size tiled VAE decode [1,4,128,128] -> 1024x1024: relative L2 %.3g (tol 1e-5), max abs diff %.3g, "
              "bit-identical %s\n",
              error, taiyi::test::max_abs_diff(images, expected), torch::equal(images, expected) ? "yes" : "no");
  EXPECT_LE(error, 1e-5);
}
