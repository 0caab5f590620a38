// UNet2DConditionModel against diffusers (tests/reference/unet.py): the tiny UNet (square and
// non-square latents, 0-d and per-batch timesteps) and one tiny variant per config option to 1e-4;
// the full-size UNet to a relative L2 error of 1e-5; parameter names equal to the checkpoint's
// keys; errors for unsupported configs and mis-shaped weights; construction time and the memory
// used when loading the full-size UNet into float32 and float16.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"
#include "taiyi/models/unet_2d_condition.h"
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

// Must list the names of VARIANTS in tests/reference/unet.py.
const std::vector<std::string> kVariants = {
    "linear_projection",      "upcast_attention",      "only_cross_attention",   "only_cross_attention_list",
    "attention_head_dim_list", "layers_per_block_1",   "layers_per_block_list",  "norm_eps",
    "transformer_layers_2",   "time_embedding_options", "center_input_mid_scale", "downsample_padding_0",
    "act_fn_mish",            "conv_kernels",
};

fs::path weights_in(const fs::path& dir) { return dir / "diffusion_pytorch_model.safetensors"; }

taiyi::UNet2DConditionModel load_unet(const fs::path& dir, const taiyi::LoadOptions& options = {}) {
  taiyi::UNet2DConditionModel unet(taiyi::Config::load(dir / "config.json"));
  taiyi::load_weights(unet.module(), {weights_in(dir)}, options);
  return unet;
}

taiyi::Config tiny_config_with(const nlohmann::json& changes) {
  fs::path path = fixture("tiny-clip/unet/config.json");
  nlohmann::json json = taiyi::read_json_file(path);
  json.update(changes);
  return taiyi::Config(json, path);
}

std::set<std::string> module_keys(torch::nn::Module& module) {
  std::set<std::string> keys;
  for (const auto& item : module.named_parameters()) keys.insert(item.key());
  for (const auto& item : module.named_buffers()) keys.insert(item.key());
  return keys;
}

std::set<std::string> file_keys(const fs::path& path) {
  std::set<std::string> keys;
  taiyi::SafetensorsFile file(path);
  for (const auto& info : file.tensors()) keys.insert(info.name);
  return keys;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Peak resident set size of this process (VmHWM) in MiB, and resetting it (Linux clear_refs 5).
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}
double current_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

}  // namespace

TEST(UNet, TinySquareWithScalarTimestepMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  auto unet = load_unet(fixture("tiny-clip/unet"));
  EXPECT_EQ(unet.in_channels(), 4);
  EXPECT_EQ(unet.sample_size(), 8);
  torch::Tensor timestep = reference_tensor(ref, "square.timestep").to(torch::kLong).reshape({});  // 0-d
  torch::Tensor out = unet.forward(reference_tensor(ref, "square.sample"), timestep,
                                   reference_tensor(ref, "encoder_hidden_states"));
  expect_close("unet [2,4,8,8] t=981", out, reference_tensor(ref, "square.output"), kTinyTolerance);
}

TEST(UNet, TinyNonSquareWithPerBatchTimestepsMatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  auto unet = load_unet(fixture("tiny-clip/unet"));
  torch::Tensor timesteps = reference_tensor(ref, "nonsquare.timestep").to(torch::kLong);  // [981, 1]
  torch::Tensor out = unet.forward(reference_tensor(ref, "nonsquare.sample"), timesteps,
                                   reference_tensor(ref, "encoder_hidden_states"));
  expect_close("unet [2,4,8,6] t=[981,1]", out, reference_tensor(ref, "nonsquare.output"), kTinyTolerance);
}

// The same UNet in float16 on the CPU against diffusers in float16: the time embedding must be
// computed in float32 and cast, as diffusers does, for the two to agree to float16 rounding.
TEST(UNet, TinyFloat16MatchesDiffusersFloat16) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  taiyi::LoadOptions options;
  options.dtype = torch::kHalf;
  auto unet = load_unet(fixture("tiny-clip/unet"), options);
  torch::Tensor out = unet.forward(reference_tensor(ref, "square.sample").to(torch::kHalf), torch::tensor(981),
                                   reference_tensor(ref, "encoder_hidden_states").to(torch::kHalf));
  EXPECT_EQ(out.scalar_type(), torch::kHalf);
  expect_close("unet float16 [2,4,8,8] t=981", out.to(torch::kFloat), reference_tensor(ref, "square.output_float16"),
               kFloat16Tolerance);
}

TEST(UNet, TinyVariantsMatchDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  torch::Tensor sample = reference_tensor(ref, "nonsquare.sample");
  torch::Tensor timesteps = reference_tensor(ref, "variant.timestep");  // float [999.5, 3.25]
  torch::Tensor context = reference_tensor(ref, "encoder_hidden_states");
  // Every variant the reference made is tested here (a new one in unet.py must be listed above).
  taiyi::SafetensorsFile ref_file(ref);
  for (const auto& info : ref_file.tensors()) {
    const std::string prefix = "variant.", suffix = ".output";
    if (info.name.rfind(prefix, 0) != 0 || info.name.size() <= prefix.size() + suffix.size() ||
        info.name.compare(info.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    std::string name = info.name.substr(prefix.size(), info.name.size() - prefix.size() - suffix.size());
    EXPECT_NE(std::find(kVariants.begin(), kVariants.end(), name), kVariants.end()) << "untested variant " << name;
  }
  for (const std::string& name : kVariants) {
    SCOPED_TRACE(name);
    fs::path dir = fixture("unet-variants/" + name);
    taiyi::UNet2DConditionModel unet(taiyi::Config::load(dir / "config.json"));
    EXPECT_EQ(module_keys(unet.module()), file_keys(weights_in(dir)));
    taiyi::load_weights(unet.module(), {weights_in(dir)});
    expect_close("unet variant " + name, unet.forward(sample, timesteps, context),
                 reference_tensor(ref, "variant." + name + ".output"), kTinyTolerance);
  }
}

TEST(UNet, ParameterNamesAreTheCheckpointKeys) {
  fs::path dir = fixture("tiny-clip/unet");
  taiyi::UNet2DConditionModel unet(taiyi::Config::load(dir / "config.json"));
  std::set<std::string> keys = module_keys(unet.module());
  EXPECT_EQ(keys, file_keys(weights_in(dir)));
  for (const char* key : {"time_embedding.linear_1.weight",
                          "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                          "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
                          "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                          "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
                          "down_blocks.0.downsamplers.0.conv.weight", "mid_block.resnets.1.time_emb_proj.weight",
                          "up_blocks.0.upsamplers.0.conv.weight", "up_blocks.1.resnets.0.conv_shortcut.weight",
                          "conv_norm_out.weight"}) {
    EXPECT_TRUE(keys.count(key)) << key;
  }
}

TEST(UNet, TimestepOnAnotherDtypeOrShapeGivesTheSameResult) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  auto unet = load_unet(fixture("tiny-clip/unet"));
  torch::Tensor sample = reference_tensor(ref, "square.sample");
  torch::Tensor context = reference_tensor(ref, "encoder_hidden_states");
  torch::Tensor expected = reference_tensor(ref, "square.output");
  // 981 as a float 0-d tensor, and as a [B] int64 tensor: diffusers broadcasts both the same way.
  expect_close("unet t=981.0 (float 0-d)", unet.forward(sample, torch::tensor(981.0f), context), expected,
               kTinyTolerance);
  expect_close("unet t=[981,981] (int64)", unet.forward(sample, torch::full({2}, 981, torch::kLong), context),
               expected, kTinyTolerance);
}

// The keys and values a CrossAttentionCache keeps give the bits of a UNet without one, on the call
// that fills it and on later ones (other timesteps, as in the denoising loop); a call with another
// context does not reuse them. Also with only_cross_attention, where attn1 attends to the text too.
TEST(UNet, CrossAttentionCacheGivesTheSameBitsAsNone) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet.safetensors");
  torch::Tensor sample = reference_tensor(ref, "square.sample");
  torch::Tensor context = reference_tensor(ref, "encoder_hidden_states");
  torch::Tensor other = context.flip(1).contiguous();  // another context of the same shape
  for (const fs::path& dir : {fixture("tiny-clip/unet"), fixture("unet-variants/only_cross_attention")}) {
    SCOPED_TRACE(dir.string());
    auto unet = load_unet(dir);
    // attn2 everywhere, and attn1 where only_cross_attention (never in the mid block: get_mid_block
    // does not pass it).
    size_t text_attentions = 0;
    const bool only_cross = dir.filename() == "only_cross_attention";
    auto ends_with = [](const std::string& name, const std::string& end) {
      return name.size() >= end.size() && name.compare(name.size() - end.size(), end.size(), end) == 0;
    };
    for (const auto& item : unet.module().named_modules()) {
      const bool mid = item.key().rfind("mid_block.", 0) == 0;
      if (ends_with(item.key(), ".attn2") || (only_cross && !mid && ends_with(item.key(), ".attn1"))) ++text_attentions;
    }
    taiyi::nn::CrossAttentionCache cache;
    for (int64_t t : {981, 500, 1}) {
      torch::Tensor timestep = torch::tensor(t);
      EXPECT_TRUE(torch::equal(unet.forward(sample, timestep, context, &cache), unet.forward(sample, timestep, context)))
          << "t=" << t;
      EXPECT_EQ(cache.size(), text_attentions);
    }
    EXPECT_TRUE(torch::equal(unet.forward(sample, torch::tensor(981), other, &cache),
                             unet.forward(sample, torch::tensor(981), other)))
        << "a cache filled for one context used for another";
  }
}

TEST(UNet, UnsupportedBlockTypeIsAnErrorNamingKeyAndValue) {
  expect_error_naming(
      [] {
        taiyi::UNet2DConditionModel(tiny_config_with(
            {{"down_block_types", {"SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}}}));
      },
      {"config.json", "down_block_types", "SimpleCrossAttnDownBlock2D"});
  expect_error_naming(
      [] {
        taiyi::UNet2DConditionModel(
            tiny_config_with({{"up_block_types", {"UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"}}}));
      },
      {"config.json", "up_block_types", "AttnUpBlock2D"});
  expect_error_naming(
      [] { taiyi::UNet2DConditionModel(tiny_config_with({{"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"}})); },
      {"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"});
}

TEST(UNet, UnsupportedOptionIsAnErrorNamingKeyAndValue) {
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"class_embed_type", "timestep"}})); },
                      {"config.json", "class_embed_type", "timestep"});
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"addition_embed_type", "text_image"}})); },
                      {"addition_embed_type", "text_image"});
  expect_error_naming(
      [] { taiyi::UNet2DConditionModel(tiny_config_with({{"resnet_time_scale_shift", "scale_shift"}})); },
      {"resnet_time_scale_shift", "scale_shift"});
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"time_embedding_type", "fourier"}})); },
                      {"time_embedding_type", "fourier"});
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"dual_cross_attention", true}})); },
                      {"dual_cross_attention", "true"});
  // diffusers 0.37.1 itself raises on num_attention_heads (the heads are attention_head_dim).
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"num_attention_heads", 4}})); },
                      {"num_attention_heads", "4"});
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"act_fn", "tanh"}})); },
                      {"act_fn", "tanh"});
  expect_error_naming([] { taiyi::UNet2DConditionModel(tiny_config_with({{"attention_head_dim", {2, 4}}})); },
                      {"attention_head_dim", "3 entries"});
}

TEST(UNet, MisShapedWeightsAreLoadWeightsError) {
  // A narrower text width than the checkpoint's: every attn2.to_k / to_v weight mismatches.
  taiyi::UNet2DConditionModel unet(tiny_config_with({{"cross_attention_dim", 16}}));
  expect_error_naming([&] { taiyi::load_weights(unet.module(), {weights_in(fixture("tiny-clip/unet"))}); },
                      {"mis-shaped", "attn2.to_k.weight", "[64, 32]", "[64, 16]"});
}

TEST(UNet, RejectsInputsOfTheWrongShape) {
  c10::InferenceMode guard;
  auto unet = load_unet(fixture("tiny-clip/unet"));
  torch::Tensor context = torch::zeros({2, 77, 32});
  expect_error_naming([&] { unet.forward(torch::zeros({2, 3, 8, 8}), torch::tensor(1), context); },
                      {"sample", "[2, 3, 8, 8]"});
  expect_error_naming([&] { unet.forward(torch::zeros({2, 4, 8, 8}), torch::tensor(1), torch::zeros({2, 77, 16})); },
                      {"encoder_hidden_states", "[2, 77, 16]"});
  expect_error_naming([&] { unet.forward(torch::zeros({2, 4, 8, 8}), torch::zeros({3}), context); },
                      {"timestep", "[3]"});
}

TEST(FullSizeUNet, MatchesDiffusers) {
  c10::InferenceMode guard;
  fs::path ref = fixture("ref/unet_full.safetensors");
  auto start = std::chrono::steady_clock::now();
  auto unet = load_unet(fixture("full-clip/unet"));
  const double load_s = seconds_since(start);
  start = std::chrono::steady_clock::now();
  torch::Tensor out = unet.forward(reference_tensor(ref, "sample"),
                                   reference_tensor(ref, "timestep").to(torch::kLong).reshape({}),
                                   reference_tensor(ref, "encoder_hidden_states"));
  const double forward_s = seconds_since(start);
  torch::Tensor expected = reference_tensor(ref, "output");
  ASSERT_EQ(out.sizes(), expected.sizes());
  const double error = taiyi::test::relative_l2(out, expected);
  std::printf("full-size UNet [2,4,64,64] t=981: relative L2 %.3g (tol %.3g), max abs diff %.3g; "
              "construct+load %.2f s, forward %.2f s\n",
              error, kFullRelativeL2, taiyi::test::max_abs_diff(out, expected), load_s, forward_s);
  EXPECT_LE(error, kFullRelativeL2);
}

TEST(FullSizeUNet, ParameterNamesAreTheCheckpointKeys) {
  fs::path dir = fixture("full-clip/unet");
  taiyi::UNet2DConditionModel unet(taiyi::Config::load(dir / "config.json"));
  std::set<std::string> keys = module_keys(unet.module());
  EXPECT_EQ(keys.size(), 686u);  // spec §11
  EXPECT_EQ(keys, file_keys(weights_in(dir)));
}

// Parameters are created uninitialised: building the 860M-parameter tree must not run libtorch's
// random initialisers (about 10 s on 2 cores) nor touch the memory.
TEST(FullSizeUNet, ConstructionIsFastAndTouchesNoMemory) {
  taiyi::Config config = taiyi::Config::load(fixture("full-clip/unet/config.json"));
  const double rss_before = current_rss_mib();
  auto start = std::chrono::steady_clock::now();
  taiyi::UNet2DConditionModel unet(config);
  const double construct_s = seconds_since(start);
  const double rss_growth = current_rss_mib() - rss_before;
  int64_t count = 0;
  for (const auto& p : unet.module().parameters()) count += p.numel();
  std::printf("full-size UNet construction: %.3f s, %lld parameters, RSS growth %.0f MiB\n", construct_s,
              static_cast<long long>(count), rss_growth);
  EXPECT_GT(count, 800'000'000);
  EXPECT_LT(construct_s, 2.0);
  EXPECT_LT(rss_growth, 256.0);
}

// The figure for the notes: load time and peak RSS of the full-size UNet (fp32 safetensors) into
// float16 and into float32. load_weights converts tensor by tensor, so float16 must never hold a
// float32 copy of the model: its peak growth stays well under the float32 size of the weights.
TEST(FullSizeUNet, LoadTimeAndPeakMemory) {
  fs::path dir = fixture("full-clip/unet");
  const double file_mib = static_cast<double>(fs::file_size(weights_in(dir))) / (1024.0 * 1024.0);
  for (torch::Dtype dtype : {torch::kHalf, torch::kFloat}) {
    ASSERT_TRUE(reset_peak_rss()) << "cannot reset VmHWM through /proc/self/clear_refs";
    const double rss_before = current_rss_mib();
    auto start = std::chrono::steady_clock::now();
    taiyi::LoadOptions options;
    options.dtype = dtype;
    {
      auto unet = load_unet(dir, options);
      const double load_s = seconds_since(start);
      const double peak_growth = peak_rss_mib() - rss_before;
      const double held = current_rss_mib() - rss_before;
      for (const auto& p : unet.module().parameters()) ASSERT_EQ(p.scalar_type(), dtype);
      std::printf("full-size UNet load into %s: %.2f s, peak RSS growth %.0f MiB, held %.0f MiB "
                  "(file %.0f MiB, process peak %.0f MiB)\n",
                  dtype == torch::kHalf ? "float16" : "float32", load_s, peak_growth, held, file_mib,
                  peak_rss_mib());
      if (dtype == torch::kHalf) {
        EXPECT_LT(peak_growth, 0.75 * file_mib);
      }
    }
  }
}
