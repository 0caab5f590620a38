// SDXL LoRAs against diffusers' StableDiffusionXLPipeline.load_lora_weights + fuse_lora
// (tests/reference/sdxl_lora.py): on tiny-sdxl's targets, read off its folder's weight files, every file
// (kohya with LDM and with diffusers block names, PEFT, diffusers' older and attention-processor names)
// places on exactly the
// weights diffusers changed, and W + scale * alpha / rank * up @ down (lora_delta, peft's formula) gives
// diffusers' fused values; the LDM names of the SDXL UNet are the reference's; key forms by rule.
#include <fstream>
#include <iostream>
#include <set>

#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/loaders/lora_weights.h"
#include "taiyi/loaders/safetensors.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using taiyi::test::fixture;

const char* const kComponents[] = {"unet", "text_encoder", "text_encoder_2"};

fs::path weights_file(const std::string& component) {
  return fixture("tiny-sdxl/" + component + "/" +
                 (component == "unet" ? "diffusion_pytorch_model.safetensors" : "model.safetensors"));
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// tiny-sdxl's LoRA targets without the pipeline: every 2-D (Linear) and 4-D (Conv2d) weight of the three
// components but the text encoders' token and position embeddings (nn.Embedding). It is what
// lora_targets(component, module) gives on the built modules (norms are 1-D).
std::vector<taiyi::LoraTarget> folder_targets() {
  std::vector<taiyi::LoraTarget> targets;
  for (const char* component : kComponents) {
    taiyi::SafetensorsFile file(weights_file(component));
    for (const taiyi::TensorInfo& info : file.tensors()) {
      const std::string& name = info.name;
      if (!ends_with(name, ".weight") || (info.shape.size() != 2 && info.shape.size() != 4)) continue;
      const std::string module = name.substr(0, name.size() - 7);
      if (ends_with(module, "_embedding")) continue;
      targets.push_back({component, module, info.shape});
    }
  }
  return targets;
}

Json reference_record() {
  std::ifstream in(fixture("ref/sdxl_lora.json"));
  return Json::parse(in);
}

// Every stride-th value of the flattened weight, stride = ceil(numel / sample), as the reference keeps.
torch::Tensor sampled(const torch::Tensor& weight, int64_t sample) {
  torch::Tensor flat = weight.flatten();
  const int64_t stride = std::max<int64_t>(1, (flat.numel() + sample - 1) / sample);
  return flat.slice(0, 0, flat.numel(), stride);
}

TEST(LoraSdxl, TargetsOfTheFolder) {
  std::map<std::string, size_t> counts;
  for (const auto& t : folder_targets()) ++counts[t.component];
  // 258 UNet modules in its blocks + conv_in, conv_out, time_embedding and add_embedding's two linears;
  // per CLIP layer q, k, v, out_proj, fc1, fc2 (3 layers), and text_encoder_2's text_projection.
  EXPECT_EQ(counts["unet"], 264u);
  EXPECT_EQ(counts["text_encoder"], 18u);
  EXPECT_EQ(counts["text_encoder_2"], 19u);
}

TEST(LoraSdxl, LdmNamesAreSgmNumbering) {
  const Json expected = reference_record()["ldm_names"];
  std::map<std::string, std::string> got;
  for (auto& [module, ldm] : taiyi::ldm_lora_names(folder_targets())) got[module] = ldm;
  for (const auto& [module, ldm] : expected.items()) {
    ASSERT_TRUE(got.count(module)) << module;
    EXPECT_EQ(got[module], ldm.get<std::string>()) << module;
  }
  // Beyond the reference's table: SDXL's add_embedding, SGM's label_emb.0.0 / .0.2.
  EXPECT_EQ(got.size(), expected.size() + 2);
  EXPECT_EQ(got["add_embedding.linear_1"], "label_emb_0_0");
  EXPECT_EQ(got["add_embedding.linear_2"], "label_emb_0_2");
  // Spot checks of the arithmetic (no attentions in down_blocks.0, two transformer blocks in up_blocks.0).
  EXPECT_EQ(got["down_blocks.0.downsamplers.0.conv"], "input_blocks_3_0_op");
  EXPECT_EQ(got["down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"],
            "input_blocks_5_1_transformer_blocks_0_attn1_to_q");
  EXPECT_EQ(got["up_blocks.0.attentions.2.transformer_blocks.1.ff.net.2"],
            "output_blocks_2_1_transformer_blocks_1_ff_net_2");
  EXPECT_EQ(got["up_blocks.1.upsamplers.0.conv"], "output_blocks_5_2_conv");
  EXPECT_EQ(got["up_blocks.2.resnets.2.conv_shortcut"], "output_blocks_8_0_skip_connection");
}

TEST(LoraSdxl, PlacesExactlyTheWeightsDiffusersChanged) {
  const auto targets = folder_targets();
  const Json files = reference_record()["files"];
  ASSERT_EQ(files.size(), 5u);
  for (const auto& [name, record] : files.items()) {
    const taiyi::LoraFile lora = taiyi::read_lora(fixture("loras/" + name + ".safetensors"), targets);
    std::set<std::string> placed, changed;
    for (const auto& p : lora.plan.patches) placed.insert(p.component + "." + p.module + ".weight");
    for (const auto& key : record["changed"]) changed.insert(key.get<std::string>());
    EXPECT_EQ(placed.size(), lora.plan.patches.size()) << name;
    EXPECT_EQ(placed, changed) << name;
    const bool kohya = name.rfind("sdxl_kohya", 0) == 0;
    EXPECT_EQ(lora.plan.layout, kohya ? taiyi::LoraLayout::Kohya : taiyi::LoraLayout::Peft) << name;
  }
}

TEST(LoraSdxl, MergedWeightsAreDiffusersFused) {
  const auto targets = folder_targets();
  const Json record = reference_record();
  const int64_t sample = record["sample"].get<int64_t>();
  std::map<std::string, std::unique_ptr<taiyi::SafetensorsFile>> weights;
  for (const char* component : kComponents)
    weights[component] = std::make_unique<taiyi::SafetensorsFile>(weights_file(component));
  const taiyi::SafetensorsFile fused(fixture("ref/sdxl_lora.safetensors"));  // diffusers' values
  torch::NoGradGuard no_grad;
  for (const auto& [name, file] : record["files"].items()) {
    const taiyi::LoraFile lora = taiyi::read_lora(fixture("loras/" + name + ".safetensors"), targets);
    const double scale = file["scale"].get<double>();
    double worst = 0;
    size_t exact = 0;
    for (const auto& p : lora.plan.patches) {
      const std::string param = p.module + ".weight";
      // fuse_lora(lora_scale=s) on every component: peft's scaling alpha / r, times s.
      torch::Tensor merged = weights.at(p.component)->tensor(param).to(torch::kFloat, false, true);
      merged += taiyi::lora_delta(lora, p, scale * p.alpha / static_cast<double>(p.rank), torch::kCPU);
      const torch::Tensor expected = fused.tensor(name + "." + p.component + "." + param);
      const torch::Tensor got = sampled(merged, sample);
      ASSERT_EQ(got.sizes(), expected.sizes()) << name << " " << param;
      const double diff = (got - expected).abs().max().item<double>();
      worst = std::max(worst, diff);
      exact += diff == 0;
      EXPECT_LE(diff, 1e-6) << name << " " << p.component << " " << param;
    }
    std::cout << name << ": " << lora.plan.patches.size() << " weights, " << exact
              << " bit-identical to diffusers', max abs diff " << worst << "\n";
  }
}

// --- key forms by rule (no torch) ---------------------------------------------------------------

std::vector<taiyi::LoraTarget> toy_sdxl_targets() {
  return {{"unet", "down_blocks.1.attentions.0.proj_in", {48, 48}},
          {"unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0", {48, 48}},
          {"text_encoder_2", "text_model.encoder.layers.0.self_attn.k_proj", {48, 48}},
          {"unet", "add_embedding.linear_1", {80, 88}},
          {"text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", {32, 32}},
          {"text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj", {48, 48}},
          {"text_encoder_2", "text_projection", {40, 48}}};
}

TEST(LoraSdxl, KohyaTextEncoderPrefixes) {
  auto pair = [](const std::string& base, int64_t out, int64_t in) {
    return std::vector<taiyi::LoraTensor>{{base + ".lora_down.weight", {2, in}}, {base + ".lora_up.weight", {out, 2}}};
  };
  std::vector<taiyi::LoraTensor> tensors;
  for (auto part : {pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 48, 48),
                    pair("lora_te2_text_projection", 40, 48), pair("lora_unet_label_emb_0_0", 80, 88),
                    pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32)})
    tensors.insert(tensors.end(), part.begin(), part.end());
  taiyi::LoraPlan plan = taiyi::plan_lora(tensors, {}, {}, toy_sdxl_targets());
  ASSERT_TRUE(plan.ok()) << plan.message("sdxl");
  ASSERT_EQ(plan.patches.size(), 4u);
  EXPECT_EQ(plan.patches[0].component, "text_encoder_2");
  EXPECT_EQ(plan.patches[1].module, "text_projection");
  EXPECT_EQ(plan.patches[2].module, "add_embedding.linear_1");
  EXPECT_EQ(plan.patches[3].component, "text_encoder");
  // SD 1.x's lora_te_ stays the (first) text encoder; with lora_te1_ for the same module it is a duplicate.
  tensors = pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 32, 32);
  plan = taiyi::plan_lora(tensors, {}, {}, toy_sdxl_targets());
  ASSERT_TRUE(plan.ok()) << plan.message("sd1");
  EXPECT_EQ(plan.patches.at(0).component, "text_encoder");
  auto te1 = pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32);
  tensors.insert(tensors.end(), te1.begin(), te1.end());
  EXPECT_EQ(taiyi::plan_lora(tensors, {}, {}, toy_sdxl_targets()).mis_shaped.size(), 2u);
}

TEST(LoraSdxl, PeftTextEncoder2AndOlderNames) {
  const std::vector<taiyi::LoraTensor> tensors = {
      {"text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", {4, 48}},
      {"text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", {48, 4}},
      {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight", {2, 32}},
      {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight", {32, 2}},
      {"unet.down_blocks.1.attentions.0.proj_in.lora.down.weight", {3, 48}},
      {"unet.down_blocks.1.attentions.0.proj_in.lora.up.weight", {48, 3}},
      // LoRAAttnProcessor's names: the attention's processor, to_q_lora for to_q (a text encoder's q_proj).
      {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight", {2, 48}},
      {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight", {48, 2}},
      {"text_encoder_2.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight", {2, 48}},
      {"text_encoder_2.text_model.encoder.layers.0.self_attn.to_k_lora.up.weight", {48, 2}}};
  const std::string metadata =
      R"({"text_encoder_2.lora_alpha": 8, "text_encoder.lora_alpha": 1, "unet.lora_alpha": 6})";
  taiyi::LoraPlan plan = taiyi::plan_lora(tensors, {}, {{"lora_adapter_metadata", metadata}}, toy_sdxl_targets());
  ASSERT_TRUE(plan.ok()) << plan.message("peft");
  ASSERT_EQ(plan.patches.size(), 5u);
  EXPECT_EQ(plan.patches[0].component, "text_encoder_2");
  EXPECT_EQ(plan.patches[0].alpha, 8.0);  // its own component's lora_alpha
  EXPECT_EQ(plan.patches[1].component, "text_encoder");
  EXPECT_EQ(plan.patches[1].alpha, 1.0);
  EXPECT_EQ(plan.patches[2].rank, 3);
  EXPECT_EQ(plan.patches[2].alpha, 6.0);
  EXPECT_EQ(plan.patches[3].module, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0");
  EXPECT_EQ(plan.patches[4].module, "text_model.encoder.layers.0.self_attn.k_proj");
  EXPECT_EQ(plan.patches[4].component, "text_encoder_2");
  // A second text encoder's keys on a model without one name no module.
  std::vector<taiyi::LoraTarget> sd1;
  for (const auto& t : toy_sdxl_targets())
    if (t.component != "text_encoder_2") sd1.push_back(t);
  plan = taiyi::plan_lora(tensors, {}, {}, sd1);
  EXPECT_EQ(plan.unplaced.size(), 4u);
  EXPECT_NE(plan.message("x").find("another architecture"), std::string::npos) << plan.message("x");
}

}  // namespace
