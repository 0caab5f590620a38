// SDXL against diffusers' StableDiffusionXLPipeline (tests/reference/sdxl.py, sdxl_pipeline.py) on the tiny
// SDXL pipelines, one plain and one shaped like Taiyi-XL (57475 tokens, 512 positions): both tokenizers' ids,
// encode_prompt's four outputs (with clip skip and force_zeros_for_empty_prompt), the UNet with text_embeds
// and time_ids, and whole text-to-image, img2img and inpainting runs with three samplers (100 % of pixels
// identical); the SDXL configuration errors.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "taiyi/loaders/state_dict.h"
#include "taiyi/loaders/textual_inversion.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/json.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using taiyi::test::expect_close;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;
using Json = nlohmann::json;

taiyi::Pipeline load_fp32(const std::string& model, const std::string& sampler = "") {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "fp32";
  options.sampler = sampler;
  return taiyi::Pipeline::load(fixture(model), options);
}

torch::Tensor ids_tensor(const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kLong); }

TEST(SdxlParity, TokenizersAndEncodePromptEqualDiffusers) {
  const fs::path golden = fixture("ref/sdxl.safetensors");
  const Json cases = taiyi::read_json_file(fixture("ref/sdxl_cases.json"));
  ASSERT_EQ(cases.size(), 6u);
  for (const Json& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    taiyi::Pipeline pipe = load_fp32(c.at("model"));
    ASSERT_TRUE(pipe.is_sdxl());
    const std::string prompt = c.at("prompt");
    EXPECT_TRUE(torch::equal(ids_tensor(pipe.tokenizer().encode(prompt).ids), reference_tensor(golden, name + ".ids_1")));
    EXPECT_TRUE(torch::equal(ids_tensor(pipe.tokenizer_2().encode(prompt).ids), reference_tensor(golden, name + ".ids_2")));
    c10::InferenceMode inference;
    // diffusers' clip_skip (null: none) is the web UI's minus one.
    const int64_t clip_skip = c.at("clip_skip").is_null() ? 1 : c.at("clip_skip").get<int64_t>() + 1;
    const taiyi::PromptEmbeddings positive = pipe.encode_prompt_xl(prompt, clip_skip);
    expect_close(name + " prompt_embeds", positive.context, reference_tensor(golden, name + ".prompt_embeds"), 2e-5);
    expect_close(name + " pooled", positive.pooled, reference_tensor(golden, name + ".pooled_prompt_embeds"), 2e-5);
    const torch::Tensor negative_context = reference_tensor(golden, name + ".negative_prompt_embeds");
    const torch::Tensor negative_pooled = reference_tensor(golden, name + ".negative_pooled_prompt_embeds");
    if (c.at("negative_prompt").is_null()) {  // force_zeros_for_empty_prompt
      EXPECT_EQ(negative_context.abs().max().item<double>(), 0.0);
      EXPECT_EQ(negative_pooled.abs().max().item<double>(), 0.0);
    } else {  // the negative prompt ignores clip_skip in diffusers
      const taiyi::PromptEmbeddings negative = pipe.encode_prompt_xl(c.at("negative_prompt"), 1);
      expect_close(name + " negative_prompt_embeds", negative.context, negative_context, 2e-5);
      expect_close(name + " negative_pooled", negative.pooled, negative_pooled, 2e-5);
    }
  }
}

TEST(SdxlParity, UNetWithTextEmbedsAndTimeIdsEqualsDiffusers) {
  const fs::path golden = fixture("ref/sdxl.safetensors");
  taiyi::Pipeline pipe = load_fp32("tiny-sdxl");
  c10::InferenceMode inference;
  auto ref = [&](const std::string& key) { return reference_tensor(golden, "unet." + key); };
  taiyi::AddedConditions added{ref("text_embeds"), ref("time_ids")};
  const torch::Tensor out = pipe.unet().forward(ref("sample"), ref("timestep"), ref("context"), nullptr, added);
  expect_close("unet out", out, ref("out"), 2e-5);
  // Without the added conditions an SDXL UNet refuses to run, naming what is missing.
  expect_error_naming([&] { pipe.unet().forward(ref("sample"), ref("timestep"), ref("context")); },
                      {"text_embeds", "[2, 40]"});
}

taiyi::GenerationRequest request_of(const Json& c) {
  taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
  if (c.at("kind") != "txt2img") {
    r.init_image = fixture(c.at("image").get<std::string>()).string();
    r.strength = c.at("strength");
  }
  if (c.at("kind") == "inpaint") r.mask = fixture(c.at("mask").get<std::string>()).string();
  if (!c.at("lora").get<std::string>().empty()) {
    taiyi::LoraSelection lora;
    lora.file = fixture(c.at("lora").get<std::string>()).string();
    lora.name = fs::path(lora.file).stem().string();
    lora.te_multiplier = lora.unet_multiplier = c.at("lora_scale").get<double>();
    r.loras.push_back(lora);
  }
  return r;
}

TEST(SdxlParity, ImagesEqualDiffusersForTxt2ImgImg2ImgAndInpainting) {
  const fs::path golden = fixture("ref/sdxl_pipeline.safetensors");
  const Json cases = taiyi::read_json_file(fixture("ref/sdxl_pipeline_cases.json"));
  ASSERT_EQ(cases.size(), 11u);
  for (const Json& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    taiyi::Pipeline pipe = load_fp32(c.at("model"), c.at("sampler"));
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(request_of(c)));
    const torch::Tensor expected = reference_tensor(golden, name + ".images");
    ASSERT_EQ(images.sizes(), expected.sizes());
    const double equal = taiyi::test::fraction_within(images, expected, 0);
    std::cout << name << ": " << equal * 100 << " % of pixels equal, max difference "
              << (images - expected).abs().max().item<double>() << "\n";
    EXPECT_EQ(equal, 1.0);
  }
}

// SDXL textual inversion ({"clip_l", "clip_g"}, tests/reference/sdxl_tokenizer.py): after diffusers' two
// load_textual_inversion calls, both tokenizers' ids and encode_prompt's outputs for a prompt using the token.
TEST(SdxlParity, TextualInversionIntoBothEncodersEqualsDiffusers) {
  const Json cases = taiyi::read_json_file(fixture("ref/sdxl_embeddings.json"));
  const fs::path golden = fixture("ref/sdxl_embeddings.safetensors");
  ASSERT_FALSE(cases.empty());
  for (const auto& [stem, c] : cases.items()) {
    SCOPED_TRACE(stem);
    taiyi::Pipeline pipe = load_fp32("tiny-sdxl");
    pipe.add_embedding(taiyi::read_embedding(fixture("ref/sdxl_embeddings/" + stem + ".safetensors")));
    const std::string prompt = c.at("prompt");
    EXPECT_EQ(pipe.tokenizer().vocab_size(), c.at("vocab_size_1").get<size_t>());
    EXPECT_EQ(pipe.tokenizer_2().vocab_size(), c.at("vocab_size_2").get<size_t>());
    EXPECT_EQ(pipe.tokenizer().encode(prompt).ids, c.at("ids_1").get<std::vector<int64_t>>());
    EXPECT_EQ(pipe.tokenizer_2().encode(prompt).ids, c.at("ids_2").get<std::vector<int64_t>>());
    c10::InferenceMode inference;
    const taiyi::PromptEmbeddings e = pipe.encode_prompt_xl(prompt);
    expect_close(stem + " prompt_embeds", e.context.squeeze(0), reference_tensor(golden, stem + ".prompt_embeds"), 2e-5);
    expect_close(stem + " pooled", e.pooled.squeeze(0), reference_tensor(golden, stem + ".pooled_prompt_embeds"), 2e-5);
  }
  // An SD 1 embedding on an SDXL model is refused, naming both.
  taiyi::Pipeline pipe = load_fp32("tiny-sdxl");
  expect_error_naming([&] { pipe.add_embedding(taiyi::read_embedding(fixture("ref/sdxl_embeddings/sd1-style.safetensors"))); },
                      {"sd1-style", "SDXL"});
}

// A folder variant of tiny-sdxl: every component linked but the model_index.json / one config rewritten.
fs::path sdxl_variant(const std::string& name, const std::function<void(Json& index, Json& unet)>& edit) {
  const fs::path dir = taiyi::test::temp_dir(name);
  const fs::path source = fixture("tiny-sdxl");
  Json index = taiyi::read_json_file(source / "model_index.json");
  Json unet = taiyi::read_json_file(source / "unet" / "config.json");
  edit(index, unet);
  for (const auto& entry : fs::directory_iterator(source))
    if (entry.path().filename() != "unet" && entry.path().filename() != "model_index.json")
      fs::create_directory_symlink(entry.path(), dir / entry.path().filename());
  fs::create_directory(dir / "unet");
  fs::create_symlink(source / "unet" / "diffusion_pytorch_model.safetensors", dir / "unet" / "diffusion_pytorch_model.safetensors");
  std::ofstream(dir / "unet" / "config.json") << unet.dump(2);
  std::ofstream(dir / "model_index.json") << index.dump(2);
  return dir;
}

TEST(Sdxl, ConfigErrorsNameTheProblem) {
  // A refiner-like folder: an SDXL UNet without text_encoder_2.
  const fs::path no_encoder_2 = sdxl_variant("sdxl-no-te2", [](Json& index, Json&) { index.erase("text_encoder_2"); });
  expect_error_naming([&] { load_fp32(no_encoder_2.string()); }, {"text_time", "text_encoder_2"});
  // The addition embedding's width disagrees with text_encoder_2's projection_dim.
  const fs::path wrong_width = sdxl_variant("sdxl-wrong-width", [](Json&, Json& unet) {
    unet["addition_time_embed_dim"] = 6;
  });
  expect_error_naming([&] { load_fp32(wrong_width.string()); }, {"added time embedding", "projection_dim 40"});
  const fs::path other_type = sdxl_variant("sdxl-text-image", [](Json&, Json& unet) {
    unet["addition_embed_type"] = "text_image";
  });
  expect_error_naming([&] { load_fp32(other_type.string()); }, {"addition_embed_type", "text_image"});
  for (const fs::path& dir : {no_encoder_2, wrong_width, other_type}) fs::remove_all(dir);
}

}  // namespace

namespace {

// The web UI's prompt syntax on SDXL (sd_hijack_clip.py, one embedder per encoder): chunks of
// model_max_length - 2 tokens concatenated along the sequence, the pooled embedding of the first chunk,
// BREAK starting a chunk, and emphasis rescaled to each encoder's own unweighted mean.
TEST(SdxlPromptSyntax, ChunksBreakEmphasisAndPooledAsTheWebUi) {
  taiyi::Pipeline pipe = load_fp32("tiny-taiyi-xl");
  c10::InferenceMode inference;
  // 600 Chinese characters, one added token each: two chunks of 512 positions; the first holds 510 of them.
  std::string line, first_chunk;
  for (int i = 0; i < 100; ++i) line += "小桥流水人家";
  for (int i = 0; i < 85; ++i) first_chunk += "小桥流水人家";  // 510 characters
  const taiyi::PromptEmbeddings long_prompt = pipe.encode_prompt_xl(line);
  const taiyi::PromptEmbeddings head = pipe.encode_prompt_xl(first_chunk);
  ASSERT_EQ(long_prompt.context.sizes(), (std::vector<int64_t>{1, 1024, 80}));
  EXPECT_TRUE(torch::equal(long_prompt.context.narrow(1, 0, 512), head.context));
  EXPECT_TRUE(torch::equal(long_prompt.pooled, head.pooled));

  const taiyi::PromptEmbeddings broken = pipe.encode_prompt_xl("江南水乡 BREAK 一只猫");
  const taiyi::PromptEmbeddings a = pipe.encode_prompt_xl("江南水乡"), b = pipe.encode_prompt_xl("一只猫");
  EXPECT_TRUE(torch::equal(broken.context, torch::cat({a.context, b.context}, 1)));
  EXPECT_TRUE(torch::equal(broken.pooled, a.pooled));

  const taiyi::PromptEmbeddings plain = pipe.encode_prompt_xl("a cat on a red chair");
  const taiyi::PromptEmbeddings weighted = pipe.encode_prompt_xl("a (cat:1.6) on a [red] chair");
  EXPECT_FALSE(torch::allclose(weighted.context, plain.context));
  EXPECT_TRUE(torch::equal(weighted.pooled, plain.pooled));  // the web UI pools before emphasis
  for (auto [offset, width] : {std::pair<int64_t, int64_t>{0, 32}, {32, 48}}) {  // each encoder's own mean
    const double before = plain.context.narrow(2, offset, width).mean().item<double>();
    const double after = weighted.context.narrow(2, offset, width).mean().item<double>();
    EXPECT_NEAR(after, before, 1e-6 * std::max(1.0, std::abs(before)));
  }
}

}  // namespace

namespace {

// The real Taiyi-XL configs with random fp16 weights (tests/reference/sdxl.py, --full): the 2.6 B-parameter
// UNet loads by name and matches diffusers' fp32 output on one 64x64 input (batch 2, 512 context tokens),
// within the relative error two fp32 implementations of this depth reach.
constexpr double kFullSdxlRelativeL2 = 1e-4;

TEST(FullSizeSdxl, UNetMatchesDiffusers) {
  const fs::path golden = fixture("ref/sdxl_full.safetensors");
  const fs::path dir = fixture("full-taiyi-xl/unet");
  c10::InferenceMode inference;
  taiyi::UNet2DConditionModel unet(taiyi::Config::load(dir / "config.json"));
  taiyi::load_weights(unet.module(), {dir / "diffusion_pytorch_model.safetensors"}, taiyi::LoadOptions(torch::kFloat));
  auto ref = [&](const std::string& key) { return reference_tensor(golden, key); };
  const auto start = std::chrono::steady_clock::now();
  const torch::Tensor out = unet.forward(ref("sample"), ref("timestep"), ref("context"), nullptr,
                                         taiyi::AddedConditions{ref("text_embeds"), ref("time_ids")});
  const double forward_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double error = taiyi::test::relative_l2(out, ref("out"));
  std::printf("full-size SDXL UNet [2,4,8,8], 512 tokens: relative L2 %.3g (tol %.3g), max abs diff %.3g, forward %.2f s\n",
              error, kFullSdxlRelativeL2, taiyi::test::max_abs_diff(out, ref("out")), forward_s);
  EXPECT_LE(error, kFullSdxlRelativeL2);
}

// The whole Taiyi-XL-shaped pipeline loads (both 57475-token encoders, 512 positions) and encodes a Chinese
// prompt one token per character.
TEST(FullSizeSdxl, PipelineLoadsInBf16AndTokenizesChineseAsTaiyiXl) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "bf16";
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("full-taiyi-xl"), options);
  EXPECT_TRUE(pipe.is_sdxl());
  EXPECT_EQ(pipe.tokenizer().max_length(), 512u);
  EXPECT_EQ(pipe.tokenizer_2().vocab_size(), 57475u);
  const taiyi::Encoding e = pipe.tokenizer().encode("小桥流水人家");
  EXPECT_EQ(e.content_tokens, 6u);
  c10::InferenceMode inference;
  const taiyi::PromptEmbeddings embeddings = pipe.encode_prompt_xl("小桥流水人家，Van Gogh style");
  EXPECT_EQ(embeddings.context.sizes(), (std::vector<int64_t>{1, 512, 2048}));
  EXPECT_EQ(embeddings.pooled.sizes(), (std::vector<int64_t>{1, 1280}));
  EXPECT_TRUE(torch::isfinite(embeddings.context).all().item<bool>());
}

}  // namespace
