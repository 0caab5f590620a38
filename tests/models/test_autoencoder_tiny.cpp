// TAESD (AutoencoderTiny's decoder) against diffusers (tests/reference/taesd.py): the decode of random
// latents and the preview bytes equal exactly on the CPU in float32, for each form load_taesd reads (a
// diffusers folder, a diffusers-named file, madebyollin's decoder as safetensors and as .pth) and for a
// second config (silu, upsampling factor 3, a stage without blocks, scaling_factor 0.5); parameter names
// equal to diffusers' keys; the errors for files that are not TAESD, missing and mis-shaped keys.
#include <fstream>
#include <set>

#include <gtest/gtest.h>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/state_dict.h"
#include "taiyi/models/autoencoder_tiny.h"
#include "taiyi/utils/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::max_abs_diff;
using taiyi::test::reference_tensor;

namespace {

// Same library, same ops, same order as diffusers on the CPU in float32: the decode is bit-exact.
void expect_equal(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  EXPECT_TRUE(torch::equal(actual, expected)) << name << ": max abs diff " << max_abs_diff(actual, expected)
                                               << " (expected 0)";
}

void expect_preview(const std::string& name, const taiyi::PixelImage& image, const torch::Tensor& expected) {
  ASSERT_EQ(expected.dim(), 3);
  ASSERT_EQ(image.height, expected.size(0)) << name;
  ASSERT_EQ(image.width, expected.size(1)) << name;
  ASSERT_EQ(image.channels, expected.size(2)) << name;
  const torch::Tensor bytes = expected.to(torch::kUInt8).contiguous();
  const std::vector<uint8_t> want(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  size_t differing = 0;
  for (size_t i = 0; i < want.size(); ++i) differing += image.pixels[i] != want[i];
  EXPECT_EQ(differing, 0u) << name << ": bytes differing from diffusers' postprocess of " << want.size();
}

// Every form of the tiny model decodes the reference latents to diffusers' images and previews.
void expect_matches_reference(const fs::path& source) {
  c10::InferenceMode guard;
  const fs::path ref = fixture("ref/taesd.safetensors");
  taiyi::AutoencoderTiny taesd = taiyi::load_taesd(source);
  EXPECT_EQ(taesd.latent_channels(), 4);
  EXPECT_EQ(taesd.out_channels(), 3);
  EXPECT_EQ(taesd.scale_factor(), 8);
  EXPECT_DOUBLE_EQ(taesd.scaling_factor(), 1.0);
  const torch::Tensor latents = reference_tensor(ref, "latents");
  expect_equal(source.filename().string() + " decode [2,4,8,8]", taesd.decode(latents),
               reference_tensor(ref, "decoded"));
  for (int64_t i = 0; i < 2; ++i)
    expect_preview(source.filename().string() + " preview " + std::to_string(i), taiyi::taesd_preview(taesd, latents, i),
                   reference_tensor(ref, "preview_" + std::to_string(i)));
}

}  // namespace

TEST(AutoencoderTiny, DiffusersFolderMatchesDiffusers) { expect_matches_reference(fixture("taesd-tiny")); }

TEST(AutoencoderTiny, DiffusersFileMatchesDiffusers) {
  expect_matches_reference(fixture("taesd-files/autoencoder_tiny.safetensors"));
}

TEST(AutoencoderTiny, OriginalSafetensorsMatchesDiffusers) {
  expect_matches_reference(fixture("taesd-files/taesd_decoder.safetensors"));
}

TEST(AutoencoderTiny, OriginalPthMatchesDiffusers) {
  expect_matches_reference(fixture("taesd-files/taesd_decoder.pth"));
}

TEST(AutoencoderTiny, VariantConfigMatchesDiffusers) {
  c10::InferenceMode guard;
  const fs::path ref = fixture("ref/taesd.safetensors");
  taiyi::AutoencoderTiny taesd = taiyi::load_taesd(fixture("taesd-variant"));
  EXPECT_EQ(taesd.scale_factor(), 9);
  EXPECT_DOUBLE_EQ(taesd.scaling_factor(), 0.5);
  const torch::Tensor latents = reference_tensor(ref, "variant_latents");
  expect_equal("variant decode [1,4,4,4]", taesd.decode(latents), reference_tensor(ref, "variant_decoded"));
  expect_preview("variant preview 0", taiyi::taesd_preview(taesd, latents), reference_tensor(ref, "variant_preview_0"));
}

TEST(AutoencoderTiny, ParameterNamesAreTheDecoderKeys) {
  taiyi::AutoencoderTiny taesd = taiyi::load_taesd(fixture("taesd-tiny"));
  std::set<std::string> names;
  for (const auto& item : taesd.module().named_parameters()) names.insert(item.key());
  std::set<std::string> keys;
  const taiyi::StateDict weights = taiyi::read_weights_file(fixture("taesd-tiny/diffusion_pytorch_model.safetensors"));
  for (const std::string& key : weights.names())
    if (key.rfind("decoder.", 0) == 0) keys.insert(key);
  EXPECT_EQ(names, keys);
  EXPECT_TRUE(names.count("decoder.layers.2.conv.4.bias"));  // a block right after conv and activation
}

TEST(AutoencoderTiny, Float16LoadsAndPreviews) {
  c10::InferenceMode guard;
  const fs::path ref = fixture("ref/taesd.safetensors");
  taiyi::AutoencoderTiny taesd = taiyi::load_taesd(fixture("taesd-tiny"), torch::kCPU, torch::kHalf);
  EXPECT_EQ(taesd.module().parameters().front().scalar_type(), torch::kHalf);
  // float16 rounding moves a few bytes (2 levels at most here, on the CPU); the image stays the reference's.
  const taiyi::PixelImage image = taiyi::taesd_preview(taesd, reference_tensor(ref, "latents"), 1);
  const torch::Tensor actual = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                                                {image.height, image.width, 3}, torch::kUInt8).to(torch::kFloat);
  EXPECT_LE(max_abs_diff(actual, reference_tensor(ref, "preview_1")), 4.0);
}

TEST(AutoencoderTiny, RefusesWhatIsNotTaesd) {
  const fs::path files = fixture("taesd-files");
  expect_error_naming([&] { taiyi::load_taesd(files / "bad_layout.safetensors"); },
                      {"bad_layout.safetensors", "not a TAESD decoder", "conv_in.weight"});
  expect_error_naming([&] { taiyi::load_taesd(files / "bad_missing.safetensors"); },
                      {"bad_missing.safetensors", "madebyollin", "missing", "decoder.layers.2.conv.2.bias"});
  expect_error_naming([&] { taiyi::load_taesd(files / "bad_shape.safetensors"); },
                      {"bad_shape.safetensors", "decoder.layers.2.conv.2.weight"});
  expect_error_naming([&] { taiyi::load_taesd(files / "absent.safetensors"); }, {"absent.safetensors"});
  // A VAE folder (AutoencoderKL) is refused by its config's class name.
  const fs::path dir = taiyi::test::temp_dir("taesd_kl");
  std::ofstream(dir / "config.json") << R"({"_class_name": "AutoencoderKL"})";
  expect_error_naming([&] { taiyi::load_taesd(dir); }, {"config.json", "_class_name", "AutoencoderTiny"});
  std::ofstream(dir / "config.json") << R"({"_class_name": "AutoencoderTiny", "upsample_fn": "bilinear"})";
  expect_error_naming([&] { taiyi::load_taesd(dir); }, {"config.json", "upsample_fn", "nearest"});
  std::ofstream(dir / "config.json") << R"({"decoder_block_out_channels": [8, 16], "num_decoder_blocks": [1, 1]})";
  expect_error_naming([&] { taiyi::load_taesd(dir); }, {"config.json", "decoder_block_out_channels", "equal"});
  std::ofstream(dir / "config.json") << R"({"decoder_block_out_channels": [8, 8], "num_decoder_blocks": [1]})";
  expect_error_naming([&] { taiyi::load_taesd(dir); }, {"config.json", "num_decoder_blocks", "same length"});
  fs::remove(dir / "config.json");
  expect_error_naming([&] { taiyi::load_taesd(dir); }, {"taesd_kl", "config.json"});
}

TEST(AutoencoderTiny, PreviewRefusesWrongLatents) {
  taiyi::AutoencoderTiny taesd = taiyi::load_taesd(fixture("taesd-tiny"));
  expect_error_naming([&] { taiyi::taesd_preview(taesd, torch::zeros({1, 3, 8, 8})); }, {"TAESD preview", "[1, 3, 8, 8]"});
  expect_error_naming([&] { taiyi::taesd_preview(taesd, torch::zeros({1, 4, 8, 8}), 1); }, {"no image 1"});
}
