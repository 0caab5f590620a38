// LoRA and textual inversion against diffusers (tests/reference/lora.py): key placement for both
// layouts, merged weights against diffusers' fuse_lora, whole images (>= 99.9 % of pixel values within
// 1/255, the maximum reported), scale 0 and un-merging bit for bit, prompt tags, bad files; the web
// UI's short hash; textual-inversion embeddings against load_textual_inversion.
#include <fstream>
#include <sstream>

#include "taiyi/loaders/textual_inversion.h"
#include "taiyi/utils/image.h"
#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/loaders/lora_weights.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/utils/sha256.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;

Json read_json(const fs::path& path) {
  std::ifstream in(path);
  return Json::parse(in);
}

taiyi::LoraSelection selection(const std::string& name, double scale) {
  return taiyi::LoraSelection{fixture("loras/" + name + ".safetensors").string(), name, scale, scale};
}

taiyi::GenerationRequest lora_request(const Json& c) {
  taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
  r.sampler = c.value("sampler", "");
  for (const auto& item : c["loras"]) r.loras.push_back(selection(item[0], item[1]));
  return r;
}

// Every parameter of the pipeline's UNet and text encoder, cloned: "component.name" -> tensor.
std::map<std::string, torch::Tensor> snapshot(taiyi::Pipeline& pipe) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : pipe.unet().module().named_parameters())
    out["unet." + p.key()] = p.value().clone();
  for (const auto& p : pipe.text_encoder().named_parameters()) out["text_encoder." + p.key()] = p.value().clone();
  return out;
}

// A safetensors file of float32 tensors (values: 0.01 * index), for the bad-file cases.
void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
  Json header = Json::object();
  std::string data;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> values(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = 0.01f * static_cast<float>(i % 7);
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + values.size() * 4}}};
    data.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  }
  const std::string text = header.dump();
  uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << text << data;
}

// --- placement (no torch) ---------------------------------------------------------------------

std::vector<taiyi::LoraTarget> toy_targets() {
  return {{"unet", "down_blocks.0.attentions.0.proj_in", {32, 32, 1, 1}},
          {"unet", "down_blocks.0.resnets.0.conv1", {32, 16, 3, 3}},
          {"unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k", {64, 32}},
          {"text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", {32, 32}}};
}

TEST(LoraKeys, KohyaNamesPlaceByRule) {
  std::vector<taiyi::LoraTensor> tensors = {
      {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", {4, 32, 1, 1}},
      {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", {32, 4, 1, 1}},
      {"lora_unet_down_blocks_0_attentions_0_proj_in.alpha", {}},
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", {8, 16, 3, 3}},
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", {32, 8, 1, 1}},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", {2, 32}},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", {32, 2}}};
  taiyi::LoraPlan plan = taiyi::plan_lora(
      tensors, {{"lora_unet_down_blocks_0_attentions_0_proj_in.alpha", 2.0}}, {}, toy_targets());
  EXPECT_TRUE(plan.ok()) << plan.message("toy");
  EXPECT_EQ(plan.layout, taiyi::LoraLayout::Kohya);
  ASSERT_EQ(plan.patches.size(), 3u);
  EXPECT_EQ(plan.patches[0].module, "down_blocks.0.attentions.0.proj_in");
  EXPECT_EQ(plan.patches[0].alpha, 2.0);
  EXPECT_EQ(plan.patches[1].module, "down_blocks.0.resnets.0.conv1");
  EXPECT_EQ(plan.patches[1].rank, 8);
  EXPECT_EQ(plan.patches[1].alpha, 8.0);  // no alpha: the rank
  EXPECT_EQ(plan.patches[2].component, "text_encoder");
}

TEST(LoraKeys, PeftNamesAndMetadataAlpha) {
  std::vector<taiyi::LoraTensor> tensors = {
      {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", {4, 32}},
      {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight", {64, 4}},
      {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", {4, 32}},
      {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", {32, 4}}};
  const std::string metadata =
      R"({"unet.lora_alpha": 8, "unet.r": 4, "text_encoder.lora_alpha": 4, "text_encoder.alpha_pattern": {"layers.0.self_attn.q_proj": 2}})";
  taiyi::LoraPlan plan = taiyi::plan_lora(tensors, {}, {{"lora_adapter_metadata", metadata}}, toy_targets());
  ASSERT_TRUE(plan.ok()) << plan.message("toy");
  EXPECT_EQ(plan.layout, taiyi::LoraLayout::Peft);
  ASSERT_EQ(plan.patches.size(), 2u);
  EXPECT_EQ(plan.patches[0].alpha, 8.0);
  EXPECT_EQ(plan.patches[1].alpha, 2.0);  // alpha_pattern wins
}

TEST(LoraKeys, ForeignKeysWrongRanksAndHalvesAreListed) {
  std::vector<taiyi::LoraTensor> tensors = {
      // SDXL: a second text encoder, and the UNet's transformer depth of 10.
      {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", {4, 1280}},
      {"lora_unet_down_blocks_2_attentions_0_transformer_blocks_7_attn1_to_q.lora_down.weight", {4, 1280}},
      // ranks that differ between the halves
      {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight", {4, 32}},
      {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight", {64, 8}},
      // an up without its down
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", {32, 2}},
      // LyCORIS LoHa (not a LoRA)
      {"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", {32, 4}}};
  taiyi::LoraPlan plan = taiyi::plan_lora(tensors, {}, {}, toy_targets());
  EXPECT_FALSE(plan.ok());
  EXPECT_TRUE(plan.patches.empty());
  EXPECT_EQ(plan.unplaced.size(), 3u);
  EXPECT_EQ(plan.mis_shaped.size(), 2u);
  const std::string message = plan.message("sdxl.safetensors");
  for (const char* needle : {"sdxl.safetensors", "lora_te2_text_model", "transformer_blocks_7", "hada_w1_a",
                             "ranks differ: down 4, up 8", "without its other half", "SDXL"})
    EXPECT_NE(message.find(needle), std::string::npos) << message << "\nlacks: " << needle;
}

TEST(LoraKeys, LdmBlockNamesPlaceAsTheWebUiPlacesThem) {
  // toy_targets: one resnet per down block (layers_per_block 1), so input_blocks_1 is down_blocks.0's first.
  std::vector<taiyi::LoraTensor> tensors = {
      {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight", {4, 32, 1, 1}},
      {"lora_unet_input_blocks_1_1_proj_in.lora_up.weight", {32, 4, 1, 1}},
      {"lora_unet_input_blocks_1_1_proj_in.alpha", {}},
      {"lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight", {8, 16, 3, 3}},
      {"lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight", {32, 8, 1, 1}},
      {"lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.lora_down.weight", {2, 32}},
      {"lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.lora_up.weight", {64, 2}},
      {"lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.alpha", {}}};
  const std::map<std::string, double> alphas = {{"lora_unet_input_blocks_1_1_proj_in.alpha", 3.0},
                                                {"lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.alpha", 5.0}};
  taiyi::LoraPlan plan = taiyi::plan_lora(tensors, alphas, {}, toy_targets());
  ASSERT_TRUE(plan.ok()) << plan.message("ldm");
  ASSERT_EQ(plan.patches.size(), 3u);
  EXPECT_EQ(plan.patches[0].module, "down_blocks.0.attentions.0.proj_in");
  EXPECT_EQ(plan.patches[0].alpha, 3.0);
  EXPECT_EQ(plan.patches[1].module, "down_blocks.0.resnets.0.conv1");
  EXPECT_EQ(plan.patches[2].module, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k");
  EXPECT_EQ(plan.patches[2].alpha, 5.0);  // its own alpha (diffusers 0.37.1 would use the most common one)

  // Both names for one module: refused (the web UI keeps the last, diffusers the diffusers-named one).
  tensors.push_back({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", {4, 32, 1, 1}});
  tensors.push_back({"lora_unet_input_blocks_7_1_proj_in.lora_down.weight", {4, 32, 1, 1}});  // SDXL-deep
  plan = taiyi::plan_lora(tensors, alphas, {}, toy_targets());
  ASSERT_EQ(plan.mis_shaped.size(), 1u);
  EXPECT_EQ(plan.unplaced, std::vector<std::string>{"lora_unet_input_blocks_7_1_proj_in.lora_down.weight"});
  for (const char* needle : {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight: names the same unet module "
                             "down_blocks.0.attentions.0.proj_in as lora_unet_input_blocks_1_1_proj_in.lora_down.weight",
                             "another architecture"})
    EXPECT_NE(plan.message("ldm").find(needle), std::string::npos) << plan.message("ldm");
}

TEST(LoraKeys, PromptTagsAsTheWebUiParsesThem) {
  auto n = taiyi::parse_extra_networks("a cat <lora:style:0.8>, <lora:ink:0.5:0.25> <lyco:x:te=0.3:unet=0.6> 油画 <lora:plain>");
  EXPECT_EQ(n.text, "a cat ,   油画 ");
  ASSERT_EQ(n.loras.size(), 4u);
  EXPECT_EQ(n.loras[0].name, "style");
  EXPECT_EQ(n.loras[0].te_multiplier, 0.8);
  EXPECT_EQ(n.loras[0].unet_multiplier, 0.8);
  EXPECT_EQ(n.loras[1].te_multiplier, 0.5);
  EXPECT_EQ(n.loras[1].unet_multiplier, 0.25);
  EXPECT_EQ(n.loras[2].te_multiplier, 0.3);
  EXPECT_EQ(n.loras[2].unet_multiplier, 0.6);
  EXPECT_EQ(n.loras[3].te_multiplier, 1.0);
  // Not tags: no word before ':', no ':', nothing before '>'.
  EXPECT_EQ(taiyi::parse_extra_networks("<:x> <lora> <a b:c> <lora:>").text, "<:x> <lora> <a b:c> <lora:>");
  expect_error_naming([] { taiyi::parse_extra_networks("x <lora:style:strong>"); }, {"<lora:style:strong>", "'strong'"});
  expect_error_naming([] { taiyi::parse_extra_networks("<hypernet:h:1>"); }, {"hypernet", "lora"});
}

TEST(LoraHash, Sha256AndTheWebUiShortHash) {
  EXPECT_EQ(taiyi::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(taiyi::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(taiyi::sha256_hex(std::string(1000, 'a')),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
  const Json hashes = read_json(fixture("ref/lora_hashes.json"));
  for (const auto& [name, hash] : hashes.items())
    EXPECT_EQ(taiyi::lora_short_hash(fixture("loras/" + name + ".safetensors")), hash.get<std::string>()) << name;
}

// --- merging against diffusers' fuse_lora -------------------------------------------------------

TEST(LoraMerge, FusedWeightsMatchDiffusers) {
  const fs::path golden = fixture("ref/lora.safetensors");
  taiyi::SafetensorsFile reference(golden);
  for (const Json& c : read_json(fixture("ref/lora_cases.json"))) {
    SCOPED_TRACE(c["name"].get<std::string>());
    taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture(c["model"].get<std::string>()), {});
    const auto before = snapshot(pipe);
    pipe.apply_loras(lora_request(c).loras);
    const auto after = snapshot(pipe);
    const std::string prefix = c["name"].get<std::string>() + ".";
    size_t changed = 0, recorded = 0;
    double worst = 0;
    for (const auto& [name, value] : after) {
      const bool differs = !torch::equal(value, before.at(name));
      const bool in_reference = reference.find(prefix + name) != nullptr;
      EXPECT_EQ(differs, in_reference) << name;
      changed += differs;
      if (!in_reference) continue;
      ++recorded;
      torch::Tensor expected = reference_tensor(golden, prefix + name);
      torch::Tensor actual = value.flatten().slice(0, 0, expected.numel());
      worst = std::max(worst, taiyi::test::max_abs_diff(actual, expected));
    }
    std::cout << c["name"].get<std::string>() << ": " << changed << " weights merged, max |taiyi - diffusers| " << worst
              << "\n";
    EXPECT_GT(recorded, 0u);
    EXPECT_LE(worst, 1e-6);
  }
}

TEST(LoraMerge, ImagesMatchDiffusers) {
  const fs::path golden = fixture("ref/lora.safetensors");
  for (const Json& c : read_json(fixture("ref/lora_cases.json"))) {
    SCOPED_TRACE(c["name"].get<std::string>());
    taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture(c["model"].get<std::string>()), {});
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(lora_request(c)));
    const torch::Tensor expected = reference_tensor(golden, c["name"].get<std::string>() + ".images");
    ASSERT_EQ(images.sizes(), expected.sizes());
    const double within = taiyi::test::fraction_within(images, expected, 1.0);
    std::cout << c["name"].get<std::string>() << ": " << within * 100 << " % of pixel values within 1/255, max diff "
              << taiyi::test::max_abs_diff(images, expected) << "\n";
    EXPECT_GE(within, 0.999);
  }
}

TEST(LoraMerge, ScaleZeroIsTheModelBitForBit) {
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  taiyi::GenerationRequest plain;
  plain.prompt = "a cat on a windowsill";
  plain.steps = 4;
  plain.seed = 3;
  const auto without = pipe.generate(plain);
  taiyi::GenerationRequest zero = plain;
  zero.loras = {selection("kohya_clip", 0.0), selection("peft_clip", 0.0)};
  EXPECT_EQ(pipe.generate(zero).front().rgb, without.front().rgb);
}

TEST(LoraMerge, UnmergingRestoresEveryWeightBitForBit) {
  for (bool random : {false, true}) {
    SCOPED_TRACE(random ? "random weights (kept copies)" : "weight files (re-read)");
    taiyi::Pipeline pipe = random ? taiyi::Pipeline::load_random(fixture("tiny-clip"), {})
                                  : taiyi::Pipeline::load(fixture("tiny-clip"), {});
    const auto original = snapshot(pipe);
    pipe.apply_loras({selection("peft_clip", 0.8)});
    pipe.apply_loras({selection("kohya_clip", 0.5), selection("kohya_clip_attn", 0.7)});
    if (random) EXPECT_GT(pipe.lora_kept_bytes(), 0);
    else EXPECT_EQ(pipe.lora_kept_bytes(), 0);
    pipe.apply_loras({});
    EXPECT_EQ(pipe.lora_kept_bytes(), 0);
    const auto restored = snapshot(pipe);
    size_t unequal = 0;
    for (const auto& [name, value] : original) unequal += !torch::equal(value, restored.at(name));
    EXPECT_EQ(unequal, 0u);
  }
}

TEST(LoraMerge, PromptTagsEqualTheExplicitSelection) {
  taiyi::PipelineOptions options;
  options.lora_dir = fixture("loras").string();
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), options);
  Json c;
  for (const Json& item : read_json(fixture("ref/lora_cases.json")))
    if (item["name"] == "stacked_clip") c = item;
  const auto explicit_images = pipe.generate(lora_request(c));
  taiyi::GenerationRequest tagged = taiyi::test::request_of_case(c);
  tagged.sampler = c["sampler"];
  tagged.prompt = "<lora:kohya_clip:0.5>" + tagged.prompt + "<lora:kohya_clip_attn:0.7:0.7>";
  const taiyi::GenerationRequest completed = pipe.complete(tagged);
  EXPECT_EQ(completed.prompt, c["prompt"].get<std::string>());
  ASSERT_EQ(completed.loras.size(), 2u);
  EXPECT_EQ(completed.loras[1].name, "kohya_clip_attn");
  pipe.apply_loras({});
  EXPECT_EQ(pipe.generate(tagged).front().rgb, explicit_images.front().rgb);
  tagged.prompt = "<lora:missing:1> x";
  expect_error_naming([&] { pipe.complete(tagged); }, {"<lora:missing>", "missing.safetensors", "--lora-dir"});
}

TEST(LoraMerge, KohyaBertTextEncoderKeysEqualThePeftOnes) {
  // diffusers places no kohya keys of a BERT text encoder; taiyi's, by the same rule as CLIP's, must
  // merge exactly what the PEFT-layout file of the same LoRA merges.
  const fs::path dir = taiyi::test::temp_dir("lora-bert-kohya");
  taiyi::SafetensorsFile peft(fixture("loras/peft_bert.safetensors"));
  Json header = Json::object();
  std::string data;
  for (const auto& info : peft.tensors()) {
    std::string name = info.name;
    if (name.rfind("text_encoder.", 0) != 0) continue;
    const bool down = name.find(".lora_A.") != std::string::npos;
    std::string module = name.substr(13, name.find(down ? ".lora_A." : ".lora_B.") - 13);
    std::replace(module.begin(), module.end(), '.', '_');
    const std::string kohya = "lora_te_" + module + (down ? ".lora_down.weight" : ".lora_up.weight");
    torch::Tensor t = peft.tensor(name).to(torch::kFloat).contiguous();
    header[kohya] = {{"dtype", "F32"}, {"shape", info.shape}, {"data_offsets", {data.size(), data.size() + t.numel() * 4}}};
    data.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * 4);
    if (down) {
      float alpha = 4.0f;  // peft_bert's lora_alpha (tests/reference/lora.py)
      header["lora_te_" + module + ".alpha"] = {{"dtype", "F32"}, {"shape", Json::array()},
                                                {"data_offsets", {data.size(), data.size() + 4}}};
      data.append(reinterpret_cast<const char*>(&alpha), 4);
    }
  }
  const std::string text = header.dump();
  uint64_t length = text.size();
  std::ofstream(dir / "kohya_te.safetensors", std::ios::binary).write(reinterpret_cast<const char*>(&length), 8) << text << data;

  taiyi::Pipeline a = taiyi::Pipeline::load(fixture("tiny-bert"), {});
  taiyi::Pipeline b = taiyi::Pipeline::load(fixture("tiny-bert"), {});
  a.apply_loras({selection("peft_bert", 0.6)});
  b.apply_loras({taiyi::LoraSelection{(dir / "kohya_te.safetensors").string(), "kohya_te", 0.6, 0.6}});
  const auto pa = snapshot(a), pb = snapshot(b);
  size_t compared = 0;
  for (const auto& [name, value] : pb) {
    if (name.rfind("text_encoder.", 0) != 0) continue;
    EXPECT_TRUE(torch::equal(value, pa.at(name))) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0u);
}

// --- LDM block names (tests/reference/lora_ldm.py) ----------------------------------------------

TEST(LoraLdm, EveryUnetModuleHasTheWebUiName) {
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  const Json expected = read_json(fixture("ref/lora_ldm.json"))["names"];
  const auto names = taiyi::ldm_lora_names(pipe.lora_targets());
  size_t matched = 0;
  for (const auto& [module, ldm] : names) {
    ASSERT_TRUE(expected.contains(module)) << module;
    EXPECT_EQ(ldm, expected[module].get<std::string>()) << module;
    ++matched;
  }
  EXPECT_EQ(matched, expected.size());
  EXPECT_GT(matched, 150u);
}

// The web UI's rule on every module, and diffusers' load_lora_weights(unet_config=...) + fuse_lora on
// every module but those the reference lists as diffusers 0.37.1's faults (attention alphas lost, the
// upsampler of an up block without attentions dropped, LDM keys of a mixed file dropped), where ours must
// differ from diffusers'.
TEST(LoraLdm, MergedWeightsFollowTheWebUiAndDiffusersWhereItIsRight) {
  const fs::path golden = fixture("ref/lora_ldm.safetensors");
  taiyi::SafetensorsFile reference(golden);
  const Json record = read_json(fixture("ref/lora_ldm.json"));
  for (const Json& c : record["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const Json& differs = record["diffusers_differs"][name];
    taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
    const auto before = snapshot(pipe);
    pipe.apply_loras({selection(c["file"], c["multiplier"])});
    size_t changed = 0, as_diffusers = 0;
    double worst = 0;
    for (const auto& [param, value] : snapshot(pipe)) {
      const bool differs_here = !torch::equal(value, before.at(param));
      ASSERT_EQ(differs_here, reference.find(name + ".webui." + param) != nullptr) << param;
      if (!differs_here) continue;
      ++changed;
      torch::Tensor webui = reference_tensor(golden, name + ".webui." + param);
      torch::Tensor ours = value.flatten().slice(0, 0, webui.numel());
      worst = std::max(worst, taiyi::test::max_abs_diff(ours, webui));
      const bool theirs = reference.find(name + ".diffusers." + param) != nullptr;
      const double off = theirs ? taiyi::test::max_abs_diff(ours, reference_tensor(golden, name + ".diffusers." + param)) : 1;
      if (differs.contains(param)) {
        EXPECT_GT(off, 1e-4) << param << ": " << differs[param];
        std::cout << name << ": " << param << " follows the web UI, not diffusers: " << differs[param].get<std::string>() << "\n";
      } else {
        EXPECT_LE(off, 1e-6) << param;
        as_diffusers += off <= 1e-6;
      }
    }
    std::cout << name << ": " << changed << " weights merged, max |taiyi - web UI rule| " << worst << ", "
              << as_diffusers << " equal to diffusers', " << differs.size() << " its faults\n";
    EXPECT_EQ(as_diffusers + differs.size(), changed);
    EXPECT_LE(worst, 1e-6);
  }
}

TEST(LoraLdm, RenamedKohyaFileEqualsTheDiffusersNamedOneBitForBit) {
  taiyi::Pipeline a = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  taiyi::Pipeline b = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  const auto original = snapshot(a);
  a.apply_loras({selection("kohya_clip", 0.9)});
  b.apply_loras({selection("kohya_clip_ldm", 0.9)});
  const auto pa = snapshot(a), pb = snapshot(b);
  size_t changed = 0;
  for (const auto& [name, value] : pa) {
    EXPECT_TRUE(torch::equal(value, pb.at(name))) << name;
    changed += !torch::equal(value, original.at(name));
  }
  EXPECT_GT(changed, 50u);
}

TEST(LoraLdm, ImageEqualsDiffusersPipelineWithTheWebUiWeights) {
  const fs::path golden = fixture("ref/lora_ldm.safetensors");
  const Json c = read_json(fixture("ref/lora_ldm.json"))["cases"][0];
  taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
  r.loras = {selection(c["file"], c["multiplier"])};
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(r));
  const torch::Tensor expected = reference_tensor(golden, c["name"].get<std::string>() + ".images");
  ASSERT_EQ(images.sizes(), expected.sizes());
  const double within = taiyi::test::fraction_within(images, expected, 1.0);
  std::cout << c["name"].get<std::string>() << ": " << within * 100 << " % of pixel values within 1/255, max diff "
            << taiyi::test::max_abs_diff(images, expected) << "\n";
  EXPECT_GE(within, 0.999);
}

TEST(LoraMerge, BadFilesAreErrorsNamingTheFileAndKeys) {
  const fs::path dir = taiyi::test::temp_dir("lora-bad");
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  const auto original = snapshot(pipe);
  write_safetensors(dir / "sdxl.safetensors",
                    {{"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", {4, 1280}},
                     {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", {1280, 4}},
                     {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q.lora_down.weight", {4, 640}},
                     {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q.lora_up.weight", {640, 4}}});
  expect_error_naming([&] { pipe.apply_loras({taiyi::LoraSelection{(dir / "sdxl.safetensors").string(), "sdxl", 1, 1}}); },
                      {"sdxl.safetensors", "4 key(s) name no module", "lora_te2_", "transformer_blocks_1_attn1_to_q"});
  // Ranks: tiny-clip's to_q is [32, 32]; halves of rank 4 and 8.
  write_safetensors(dir / "ranks.safetensors",
                    {{"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", {4, 32}},
                     {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", {32, 8}}});
  expect_error_naming([&] { pipe.apply_loras({taiyi::LoraSelection{(dir / "ranks.safetensors").string(), "r", 1, 1}}); },
                      {"ranks.safetensors", "attn1.to_q", "ranks differ: down 4, up 8"});
  // Truncated: the header promises more data than the file holds.
  std::ifstream in(fixture("loras/kohya_clip.safetensors"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(dir / "cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  expect_error_naming([&] { pipe.apply_loras({taiyi::LoraSelection{(dir / "cut.safetensors").string(), "cut", 1, 1}}); },
                      {"cut.safetensors"});
  // A good LoRA before a bad one in the same set: nothing stays merged.
  expect_error_naming([&] {
    pipe.apply_loras({selection("peft_clip", 1.0), taiyi::LoraSelection{(dir / "sdxl.safetensors").string(), "sdxl", 1, 1}});
  }, {"sdxl.safetensors"});
  EXPECT_TRUE(pipe.active_loras().empty());
  const auto after = snapshot(pipe);
  for (const auto& [name, value] : original) EXPECT_TRUE(torch::equal(value, after.at(name))) << name;
  expect_error_naming([&] { pipe.apply_loras({taiyi::LoraSelection{(dir / "none.safetensors").string(), "none", 1, 1}}); },
                      {"none.safetensors", "not found"});
}

// --- textual inversion ---------------------------------------------------------------------------

TEST(TextualInversion, PromptEmbeddingsAndImagesMatchDiffusers) {
  const fs::path golden = fixture("ref/embeddings.safetensors");
  for (const Json& c : read_json(fixture("ref/embeddings_cases.json"))) {
    SCOPED_TRACE(c["name"].get<std::string>());
    taiyi::PipelineOptions options;
    options.embedding_files = {fixture("loras/tiny-style.safetensors").string(),
                               fixture("loras/learned_embeds_bad-hands.safetensors").string()};
    taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), options);
    EXPECT_EQ(pipe.embedding_names(), (std::vector<std::string>{"tiny-style", "<bad-hands>"}));
    const std::string name = c["name"];
    c10::InferenceMode guard;
    taiyi::test::expect_close("prompt_embeds", pipe.encode_prompt(c["prompt"]), reference_tensor(golden, name + ".prompt_embeds"), 1e-5);
    taiyi::test::expect_close("negative_prompt_embeds", pipe.encode_prompt(c["negative_prompt"]),
                              reference_tensor(golden, name + ".negative_prompt_embeds"), 1e-5);
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(taiyi::test::request_of_case(c)));
    const torch::Tensor expected = reference_tensor(golden, name + ".images");
    std::cout << name << ": " << taiyi::test::fraction_within(images, expected, 1.0) * 100
              << " % of pixel values within 1/255, max diff " << taiyi::test::max_abs_diff(images, expected) << "\n";
    EXPECT_GE(taiyi::test::fraction_within(images, expected, 1.0), 0.999);
  }
}

TEST(TextualInversion, FolderEmbeddingsLoadWhenTheirNameAppears) {
  taiyi::PipelineOptions options;
  options.embeddings_dir = fixture("loras").string();
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), options);
  EXPECT_TRUE(pipe.embedding_names().empty());
  taiyi::GenerationRequest r;
  r.prompt = "a lighthouse";
  pipe.complete(r);
  EXPECT_TRUE(pipe.embedding_names().empty());
  r.negative_prompt = "tiny-style";
  pipe.complete(r);
  EXPECT_EQ(pipe.embedding_names(), std::vector<std::string>{"tiny-style"});
  // Its three vectors: "tiny-style" stands for three tokens.
  EXPECT_EQ(pipe.tokenizer().tokenize("tiny-style").ids.size(), 3u);
}

TEST(TextualInversion, BadEmbeddingsAreErrors) {
  const fs::path dir = taiyi::test::temp_dir("ti-bad");
  write_safetensors(dir / "wide.safetensors", {{"emb_params", {2, 768}}});
  write_safetensors(dir / "two.safetensors", {{"a", {32}}, {"b", {32}}});
  write_safetensors(dir / "cat.safetensors", {{"emb_params", {1, 32}}});
  std::ofstream(dir / "old.pt") << "pickle";
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("tiny-clip"), {});
  expect_error_naming([&] { pipe.add_embedding(taiyi::read_embedding(dir / "wide.safetensors")); },
                      {"wide.safetensors", "768", "32"});
  expect_error_naming([&] { taiyi::read_embedding(dir / "two.safetensors"); }, {"two.safetensors", "2 tensors"});
  expect_error_naming([&] { taiyi::read_embedding(dir / "old.pt"); }, {"old.pt", "tools/convert.py"});
  // "cat" is a token of CLIP's vocabulary (diffusers refuses it the same way).
  expect_error_naming([&] { pipe.add_embedding(taiyi::read_embedding(dir / "cat.safetensors")); },
                      {"'cat'", "already in the tokenizer's vocabulary"});
}

}  // namespace

// --- the command line ----------------------------------------------------------------------------

namespace {

std::vector<std::string> cli(const std::vector<std::string>& args) {
  std::vector<std::string> all{"--steps", "3", "-W", "64", "-H", "64", "--device", "cpu", "-q",
                               "--model", fixture("tiny-clip").string(), "--lora-dir", fixture("loras").string(),
                               "--embeddings-dir", taiyi::test::temp_dir("no-embeddings").string()};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

std::string parameters_of(const fs::path& png) { return taiyi::test::png_parameters(png); }

std::vector<uint8_t> pixels_of(const fs::path& png) { return taiyi::read_image(png, 3).pixels; }

TEST(LoraCli, PromptFileGroupsLoraSetsAndRecordsHashes) {
  const fs::path dir = taiyi::test::temp_dir("lora-cli");
  const Json hashes = read_json(fixture("ref/lora_hashes.json"));
  std::ofstream(dir / "p.txt") << "a cat <lora:kohya_clip:0.8>\na dog\na cat <lora:kohya_clip:0.8>\n"
                                  "a bird <lora:peft_clip:1> <lora:kohya_clip_attn:0.5>\na dog <lora:missing:1>\n";
  auto r = taiyi::test::run_taiyi(cli({"--prompts", (dir / "p.txt").string(), "-o", (dir / "out").string() + "/",
                                       "--seed", "5", "--json"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;  // line 5's LoRA does not exist; the others are written
  EXPECT_NE(r.err.find("line 5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("missing.safetensors"), std::string::npos) << r.err;
  // Grouped by set in order of first appearance: lines 1 and 3, then 2, then 4.
  std::vector<int64_t> order;
  std::istringstream records(r.out);
  for (std::string line; std::getline(records, line);) order.push_back(Json::parse(line)["line"]);
  EXPECT_EQ(order, (std::vector<int64_t>{1, 3, 2, 4}));
  EXPECT_EQ(parameters_of(dir / "out/00001-0.png"),
            "a cat <lora:kohya_clip:0.8>\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: tiny-clip, "
            "Lora hashes: \"kohya_clip: " + hashes["kohya_clip"].get<std::string>() + "\"");
  EXPECT_EQ(parameters_of(dir / "out/00002-0.png").find("Lora hashes"), std::string::npos);
  EXPECT_NE(parameters_of(dir / "out/00004-0.png")
                .find("Lora hashes: \"peft_clip: " + hashes["peft_clip"].get<std::string>() +
                      ", kohya_clip_attn: " + hashes["kohya_clip_attn"].get<std::string>() + "\""),
            std::string::npos);
  // Each image equals a run of its line alone: merging, un-merging and re-merging leave no drift.
  for (const auto& [line, prompt] : std::vector<std::pair<int, std::string>>{
           {3, "a cat <lora:kohya_clip:0.8>"}, {2, "a dog"}, {4, "a bird <lora:peft_clip:1> <lora:kohya_clip_attn:0.5>"}}) {
    const fs::path single = dir / ("single-" + std::to_string(line) + ".png");
    auto s = taiyi::test::run_taiyi(cli({prompt, "--seed", std::to_string(5 + line - 1), "-o", single.string()}));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    char name[32];
    std::snprintf(name, sizeof name, "out/%05d-0.png", line);
    EXPECT_EQ(pixels_of(single), pixels_of(dir / name)) << "line " << line;
  }
  // --lora FILE:SCALE is the same as the tag.
  const fs::path option = dir / "option.png";
  auto o = taiyi::test::run_taiyi(cli({"a cat", "--seed", "5", "-o", option.string(), "--lora",
                                       fixture("loras/kohya_clip.safetensors").string() + ":0.8"}));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(pixels_of(option), pixels_of(dir / "out/00001-0.png"));
}

TEST(LoraCli, InfoListsWhatALoraPatchesAndWhatItCannotPlace) {
  auto r = taiyi::test::run_taiyi({"info", "--model", fixture("tiny-clip").string(), "--lora",
                                   fixture("loras/kohya_clip.safetensors").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* needle : {"layout:    kohya", "text_encoder text_model.encoder.layers.0.self_attn.q_proj  (linear, rank 4, alpha 2)",
                             "unet down_blocks.0.resnets.0.conv1  (conv 3x3, rank 4, alpha 2)", "usable:    yes"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << r.out << "\nlacks: " << needle;
  const fs::path dir = taiyi::test::temp_dir("lora-info");
  write_safetensors(dir / "sdxl.safetensors",
                    {{"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", {4, 1280}},
                     {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", {1280, 4}}});
  auto bad = taiyi::test::run_taiyi({"info", "--model", fixture("tiny-clip").string(), "--lora", (dir / "sdxl.safetensors").string()});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("keys that name no module of this model: 2"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"), std::string::npos);
}

}  // namespace

// The real UNet config with random weights (make_fixtures.py --full): a rank-32 kohya LoRA of every
// attention, feed-forward and projection weight, merged as diffusers' fuse_lora(lora_scale=0.9) does,
// then un-merged back to the weight files' values.
TEST(FullSizeLora, Rank32MergeMatchesDiffusersAndUnmerges) {
  const fs::path golden = fixture("ref/lora_full.safetensors");
  taiyi::SafetensorsFile reference(golden);
  taiyi::Pipeline pipe = taiyi::Pipeline::load(fixture("full-clip"), {});
  taiyi::SafetensorsFile unet_file(fixture("full-clip/unet/diffusion_pytorch_model.safetensors"));
  pipe.apply_loras({taiyi::LoraSelection{fixture("loras/full-rank32.safetensors").string(), "full-rank32", 0.9, 0.9}});
  auto parameters = pipe.unet().module().named_parameters();
  size_t compared = 0;
  double worst = 0;
  for (const auto& info : reference.tensors()) {
    const std::string name = info.name.substr(0, info.name.size() - 5);  // less ".head"
    const torch::Tensor* weight = parameters.find(name);
    ASSERT_NE(weight, nullptr) << name;
    const torch::Tensor expected = reference_tensor(golden, info.name);
    worst = std::max(worst, taiyi::test::max_abs_diff(weight->flatten().slice(0, 0, expected.numel()), expected));
    ++compared;
  }
  std::cout << "full-size rank-32 LoRA: " << compared << " UNet weights merged, max |taiyi - diffusers| " << worst << "\n";
  EXPECT_GT(compared, 100u);
  EXPECT_LE(worst, 1e-6);
  pipe.apply_loras({});
  size_t unequal = 0;
  for (const auto& info : reference.tensors()) {
    const std::string name = info.name.substr(0, info.name.size() - 5);
    unequal += !torch::equal(*parameters.find(name), unet_file.tensor(name));
  }
  EXPECT_EQ(unequal, 0u);
}
