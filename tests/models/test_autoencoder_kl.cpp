// AutoencoderKL against diffusers (tests/reference/vae.py): decode and encode mean of the tiny VAE
// and its variants to 1e-4, the full-size decoder to a relative L2 error of 1e-5, parameter names
// equal to the checkpoint's keys, and the errors for unsupported configs and mis-shaped weights.
#include <chrono>
#include <set>

#include <gtest/gtest.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"
#include "taiyi/models/autoencoder_kl.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::expect_close;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;

namespace {

using taiyi::test::expect_error_naming;

constexpr double kTinyTolerance = 1e-4;
constexpr double kFullRelativeL2 = 1e-5;
constexpr double kFloat16Tolerance = 1e-2;

fs::path weights_in(const fs::path& dir) { return dir / "diffusion_pytorch_model.safetensors"; }

taiyi::AutoencoderKL load_vae(const fs::path& dir) {
  taiyi::AutoencoderKL vae(taiyi::Config::load(dir / "config.json"));
  taiyi::load_weights(vae.module(), {weights_in(dir)});
  return vae;
}

taiyi::Config tiny_config_with(const nlohmann::json& changes) {
  fs::path path = fixture("tiny-clip/vae/config.json");
  nlohmann::json json = taiyi::read_json_file(path);
  json.update(changes);
  return taiyi::Config(json, path);
}

}  // namespace

TEST(VAE, TinyDecodeMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/vae.safetensors");
  auto vae = load_vae(fixture("tiny-clip/vae"));
  EXPECT_EQ(vae.latent_channels(), 4);
  EXPECT_EQ(vae.scale_factor(), 8);
  EXPECT_DOUBLE_EQ(vae.scaling_factor(), 0.18215);  // the fixture config, like Taiyi's, has the default
  expect_close("vae decode [1,4,8,6]", vae.decode(reference_tensor(ref, "decode.latents")),
               reference_tensor(ref, "decode.images"), kTinyTolerance);
}

TEST(VAE, TinyFloat16DecodeMatchesDiffusersFloat16) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/vae.safetensors");
  taiyi::AutoencoderKL vae(taiyi::Config::load(fixture("tiny-clip/vae/config.json")));
  taiyi::LoadOptions options;
  options.dtype = torch::kHalf;
  taiyi::load_weights(vae.module(), {weights_in(fixture("tiny-clip/vae"))}, options);
  torch::Tensor images = vae.decode(reference_tensor(ref, "decode.latents").to(torch::kHalf));
  EXPECT_EQ(images.scalar_type(), torch::kHalf);
  expect_close("vae float16 decode [1,4,8,6]", images.to(torch::kFloat),
               reference_tensor(ref, "decode.images_float16"), kFloat16Tolerance);
}

TEST(VAE, TinyEncodeMeanMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/vae.safetensors");
  auto vae = load_vae(fixture("tiny-clip/vae"));
  expect_close("vae encode mean [1,3,64,48]", vae.encode_mean(reference_tensor(ref, "encode.images")),
               reference_tensor(ref, "encode.mean"), kTinyTolerance);
}

TEST(VAE, VariantWithoutQuantConvsOrMidAttentionMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/vae.safetensors");
  const std::string name = "no_quant_conv_no_mid_attention";
  auto vae = load_vae(fixture("vae-variants/" + name));
  for (const auto& item : vae.module().named_parameters()) {
    EXPECT_EQ(item.key().find("quant_conv"), std::string::npos) << item.key();
    EXPECT_EQ(item.key().find("attentions"), std::string::npos) << item.key();
  }
  expect_close(name + " decode", vae.decode(reference_tensor(ref, "decode.latents")),
               reference_tensor(ref, "variant." + name + ".decode.images"), kTinyTolerance);
  expect_close(name + " encode mean", vae.encode_mean(reference_tensor(ref, "encode.images")),
               reference_tensor(ref, "variant." + name + ".encode.mean"), kTinyTolerance);
}

TEST(VAE, ParameterNamesAreTheCheckpointKeys) {
  fs::path dir = fixture("tiny-clip/vae");
  taiyi::AutoencoderKL vae(taiyi::Config::load(dir / "config.json"));
  std::set<std::string> module_keys, file_keys;
  for (const auto& item : vae.module().named_parameters()) module_keys.insert(item.key());
  for (const auto& item : vae.module().named_buffers()) module_keys.insert(item.key());
  taiyi::SafetensorsFile file(weights_in(dir));
  for (const auto& info : file.tensors()) file_keys.insert(info.name);
  EXPECT_EQ(module_keys, file_keys);
  EXPECT_TRUE(module_keys.count("decoder.mid_block.attentions.0.to_out.0.weight"));
  EXPECT_TRUE(module_keys.count("encoder.down_blocks.0.downsamplers.0.conv.weight"));
}

TEST(VAE, ScalingFactorComesFromTheConfig) {
  EXPECT_DOUBLE_EQ(taiyi::AutoencoderKL(tiny_config_with({{"scaling_factor", 0.13025}})).scaling_factor(), 0.13025);
  nlohmann::json json = taiyi::read_json_file(fixture("tiny-clip/vae/config.json"));
  json.erase("scaling_factor");
  EXPECT_DOUBLE_EQ(taiyi::AutoencoderKL(taiyi::Config(json, "vae/config.json")).scaling_factor(), 0.18215);
}

TEST(VAE, UnsupportedBlockTypeIsAnErrorNamingKeyAndValue) {
  expect_error_naming(
      [] {
        taiyi::AutoencoderKL(tiny_config_with(
            {{"down_block_types",
              {"DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}}}));
      },
      {"config.json", "down_block_types", "AttnDownEncoderBlock2D"});
  expect_error_naming([] { taiyi::AutoencoderKL(tiny_config_with({{"act_fn", "tanh"}})); },
                      {"config.json", "act_fn", "tanh"});
}

TEST(VAE, MisShapedWeightsAreLoadWeightsError) {
  // A config with wider latents than the checkpoint: conv_out/quant_conv/post_quant_conv/conv_in mismatch.
  taiyi::AutoencoderKL vae(tiny_config_with({{"latent_channels", 8}}));
  expect_error_naming([&] { taiyi::load_weights(vae.module(), {weights_in(fixture("tiny-clip/vae"))}); },
                      {"mis-shaped", "post_quant_conv.weight"});
}

TEST(VAE, RejectsLatentsWithTheWrongChannelCount) {
  c10::InferenceMode guard;
  auto vae = load_vae(fixture("tiny-clip/vae"));
  expect_error_naming([&] { vae.decode(torch::zeros({1, 3, 8, 8})); }, {"latents", "[1, 3, 8, 8]"});
}

TEST(FullSizeVAE, DecodeMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/vae_full.safetensors");
  auto start = std::chrono::steady_clock::now();
  auto vae = load_vae(fixture("full-clip/vae"));
  auto loaded = std::chrono::steady_clock::now();
  torch::Tensor images = vae.decode(reference_tensor(ref, "decode.latents"));
  auto decoded = std::chrono::steady_clock::now();
  torch::Tensor expected = reference_tensor(ref, "decode.images");
  ASSERT_EQ(images.sizes(), expected.sizes());
  double error = taiyi::test::relative_l2(images, expected);
  std::printf("full-size VAE decode [1,4,64,64] -> 512x512: relative L2 %.3g (tol %.3g), max abs diff %.3g; "
              "load %.2f s, decode %.2f s\n",
              error, kFullRelativeL2, taiyi::test::max_abs_diff(images, expected),
              std::chrono::duration<double>(loaded - start).count(),
              std::chrono::duration<double>(decoded - loaded).count());
  EXPECT_LE(error, kFullRelativeL2);
}
