// LDM single-file key conversion against diffusers' own (tests/reference/single_file.py records, per file,
// the keys diffusers reads and what its convert_ldm_*_checkpoint functions make of them): every mapping equal
// in both directions, the unused keys exactly the rest; model types; the EMA rule; malformed names.
#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "taiyi/loaders/safetensors_header.h"
#include "taiyi/loaders/single_file_utils.h"
#include "taiyi/utils/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::CheckpointKey;
using taiyi::ConvertedKeys;
using taiyi::ModelType;
using taiyi::test::expect_error_naming;

namespace {

using Triple = std::tuple<std::string, std::string, std::vector<int64_t>>;  // from, to, shape

nlohmann::json record(const std::string& name) {
  std::ifstream in(taiyi::test::fixture("single_file/" + name + ".json"));
  return nlohmann::json::parse(in);
}

std::vector<CheckpointKey> keys_of(const nlohmann::json& r) {
  std::vector<CheckpointKey> keys;
  for (const auto& k : r.at("keys")) keys.push_back({k.at(0).get<std::string>(), k.at(1).get<std::vector<int64_t>>()});
  return keys;
}

const std::vector<std::string> kRecords = {"clip.safetensors", "clip-ema.ckpt", "clip-inpaint.safetensors",
                                           "clip-inpaint.ckpt", "bert.safetensors", "bert-ema.ckpt",
                                           "vae.safetensors", "vae.ckpt", "vae-2022", "quirks-unet",
                                           "quirks-vae", "quirks-vae-prefix", "quirks-clip"};

// taiyi's mapping equals diffusers' (both directions), conv_to_linear exactly where diffusers changed the
// shape, and `unused` exactly the component's other keys.
void expect_same_conversion(const ConvertedKeys& actual, const nlohmann::json& expected, const std::vector<CheckpointKey>& keys,
                            const std::function<bool(const std::string&)>& belongs, const std::string& what) {
  std::map<std::string, std::vector<int64_t>> file_shapes;
  for (const CheckpointKey& k : keys) file_shapes[k.name] = k.shape;
  std::set<Triple> want, got;
  for (const auto& m : expected) want.insert({m.at(0), m.at(1), m.at(2).get<std::vector<int64_t>>()});
  std::set<std::string> read, targets;
  for (const taiyi::KeyMapping& m : actual.mapped) {
    got.insert({m.from, m.to, m.shape});
    read.insert(m.from);
    EXPECT_TRUE(targets.insert(m.to).second) << what << ": two mappings to " << m.to;
    EXPECT_EQ(m.conv_to_linear, file_shapes.at(m.from) != m.shape) << what << ": " << m.from;
  }
  std::vector<Triple> missing, extra;
  std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(missing));
  std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(extra));
  EXPECT_EQ(got.size(), want.size()) << what;
  for (const Triple& t : missing) ADD_FAILURE() << what << ": missing " << std::get<0>(t) << " -> " << std::get<1>(t);
  for (const Triple& t : extra) ADD_FAILURE() << what << ": extra " << std::get<0>(t) << " -> " << std::get<1>(t);
  std::set<std::string> unused(actual.unused.begin(), actual.unused.end()), expected_unused;
  for (const CheckpointKey& k : keys)
    if (belongs(k.name) && !read.count(k.name)) expected_unused.insert(k.name);
  EXPECT_EQ(unused, expected_unused) << what;
  EXPECT_EQ(unused.size(), actual.unused.size()) << what << ": a key listed twice";
}

bool starts(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
bool unet_key(const std::string& s) { return starts(s, "model.diffusion_model.") || starts(s, "model_ema"); }
bool clip_key(const std::string& s) { return starts(s, "cond_stage_model.") || starts(s, "conditioner.embedders.0.transformer."); }
bool bert_key(const std::string& s) { return starts(s, "cond_stage_model."); }
bool any_key(const std::string&) { return true; }

std::string vae_prefix(const std::vector<CheckpointKey>& keys) {
  std::string prefix;
  for (const char* p : {"first_stage_model.", "vae."})
    for (const CheckpointKey& k : keys)
      if (starts(k.name, p)) prefix = p;
  return prefix;
}

}  // namespace

TEST(SingleFileUtils, ConversionsEqualDiffusers) {
  for (const std::string& name : kRecords) {
    SCOPED_TRACE(name);
    const nlohmann::json r = record(name);
    const std::vector<CheckpointKey> keys = keys_of(r);
    if (r.contains("unet")) {
      const int64_t lpb = r.at("layers_per_block");
      expect_same_conversion(taiyi::convert_ldm_unet_checkpoint(keys, name, lpb, false), r.at("unet"), keys, unet_key, "unet");
    }
    if (r.contains("unet_ema"))
      expect_same_conversion(taiyi::convert_ldm_unet_checkpoint(keys, name, r.at("layers_per_block"), true), r.at("unet_ema"),
                             keys, unet_key, "unet_ema");
    if (r.contains("vae")) {
      const std::string prefix = vae_prefix(keys);
      expect_same_conversion(taiyi::convert_ldm_vae_checkpoint(keys, name, r.at("vae_down_blocks"), r.at("vae_up_blocks")),
                             r.at("vae"), keys, [&](const std::string& s) { return starts(s, prefix.c_str()); }, "vae");
    }
    if (r.contains("text_encoder_keys")) {
      const bool bert = r.at("text_encoder") == "bert";
      expect_same_conversion(bert ? taiyi::convert_ldm_bert_checkpoint(keys) : taiyi::convert_ldm_clip_checkpoint(keys),
                             r.at("text_encoder_keys"), keys, bert ? bert_key : clip_key, "text encoder");
    }
    if (r.contains("deprecated"))
      expect_same_conversion(taiyi::convert_deprecated_vae_attention_names(keys), r.at("deprecated"), keys, any_key, "2022 names");
  }
}

TEST(SingleFileUtils, RecordsHoldTheFilesKeys) {
  // The .safetensors files' own headers (the .ckpt files need the pickle reader): the records are their keys.
  // (Not vae.safetensors: its model_ema.num_updates is I32, as the web UI's VAE files have it, which
  // parse_safetensors_header does not take yet.)
  for (const std::string name : {"clip.safetensors", "clip-inpaint.safetensors", "bert.safetensors"}) {
    std::ifstream in(taiyi::test::fixture("single_file/" + name), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const taiyi::SafetensorsHeader header =
        taiyi::parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
    std::map<std::string, std::vector<int64_t>> from_file, from_record;
    for (const taiyi::TensorInfo& t : header.tensors) from_file[t.name] = t.shape;
    for (const CheckpointKey& k : keys_of(record(name))) from_record[k.name] = k.shape;
    EXPECT_EQ(from_file, from_record) << name;
  }
}

TEST(SingleFileUtils, ModelTypeAndTextEncoderOfEachFile) {
  const std::map<std::string, std::pair<ModelType, std::optional<taiyi::TextEncoderKind>>> expected = {
      {"clip.safetensors", {ModelType::V1, taiyi::TextEncoderKind::Clip}},
      {"clip-ema.ckpt", {ModelType::V1, taiyi::TextEncoderKind::Clip}},
      {"clip-inpaint.safetensors", {ModelType::V1Inpainting, taiyi::TextEncoderKind::Clip}},
      {"clip-inpaint.ckpt", {ModelType::V1Inpainting, taiyi::TextEncoderKind::Clip}},
      {"bert.safetensors", {ModelType::V1, taiyi::TextEncoderKind::Bert}},
      {"bert-ema.ckpt", {ModelType::V1, taiyi::TextEncoderKind::Bert}},
      {"vae.safetensors", {ModelType::Vae, std::nullopt}},  // diffusers: "v1", its fall-through
      {"vae.ckpt", {ModelType::Vae, std::nullopt}}};
  for (const auto& [name, want] : expected) {
    const nlohmann::json r = record(name);
    const std::vector<CheckpointKey> keys = keys_of(r);
    EXPECT_EQ(taiyi::infer_model_type(keys), want.first) << name;
    EXPECT_EQ(r.at("model_type"), want.first == ModelType::V1Inpainting ? "inpainting" : "v1") << name;
    EXPECT_EQ(taiyi::infer_text_encoder_kind(keys), want.second) << name;
    EXPECT_EQ(taiyi::has_ema_weights(keys), name.find("-ema") != std::string::npos) << name;
  }
  EXPECT_NO_THROW(taiyi::check_model_type(ModelType::V1Inpainting, "m.ckpt"));
  expect_error_naming([] { taiyi::check_model_type(ModelType::Vae, "vae.ckpt"); }, {"vae.ckpt", "VAE file", "--vae"});
}

TEST(SingleFileUtils, OtherFamiliesAreNamed) {
  const std::string unet = "model.diffusion_model.";
  const std::vector<std::pair<std::vector<CheckpointKey>, ModelType>> cases = {
      {{{unet + "input_blocks.0.0.weight", {320, 4, 3, 3}}, {unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", {320, 1024}}},
       ModelType::V2},
      {{{unet + "input_blocks.0.0.weight", {320, 9, 3, 3}}, {unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", {320, 1024}}},
       ModelType::V2Inpainting},
      {{{unet + "input_blocks.0.0.weight", {320, 4, 3, 3}}, {unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", {320, 768}}},
       ModelType::V1},
      {{{unet + "input_blocks.0.0.weight", {320, 4, 3, 3}}, {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", {1280}}},
       ModelType::XLBase},
      {{{unet + "input_blocks.0.0.weight", {320, 9, 3, 3}}, {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", {1280}}},
       ModelType::XLInpaint},
      {{{"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias", {1280}}}, ModelType::XLRefiner},
      // Fewer than 10 OpenCLIP layers (diffusers: "v1"): SDXL by the encoders' tables (single_file_utils.cpp).
      {{{unet + "input_blocks.0.0.weight", {32, 4, 3, 3}}, {"conditioner.embedders.1.model.positional_embedding", {77, 48}}},
       ModelType::XLBase},
      {{{unet + "input_blocks.0.0.weight", {32, 9, 3, 3}}, {"conditioner.embedders.1.model.positional_embedding", {77, 48}}},
       ModelType::XLInpaint},
      {{{"conditioner.embedders.0.model.text_projection", {48, 48}}}, ModelType::XLRefiner},
      {{{"edm_mean", {1, 4, 1, 1}}, {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", {1280}}}, ModelType::Playground},
      {{{unet + "input_blocks.0.0.weight", {128, 7, 3, 3}}, {unet + "input_blocks.10.0.skip_connection.bias", {512}}}, ModelType::Upscale},
      {{{"control_model.time_embed.0.weight", {1280, 320}}}, ModelType::ControlNet},
      {{{"controlnet_cond_embedding.conv_in.weight", {16, 3, 3, 3}}}, ModelType::ControlNet},
      {{{unet + "input_blocks.0.0.weight", {320, 8, 3, 3}}}, ModelType::InstructPix2Pix},
      {{{"encoder.conv_in.weight", {128, 3, 3, 3}}}, ModelType::Vae},
      {{{unet + "double_blocks.0.img_attn.norm.key_norm.scale", {128}}}, ModelType::NotStableDiffusion},
      {{{unet + "input_blocks.0.0.weight", {}}}, ModelType::V1},  // no shape[1]: not 9 channels
      {{}, ModelType::NotStableDiffusion}};
  for (const auto& [keys, type] : cases) {
    const ModelType t = type;
    EXPECT_EQ(taiyi::infer_model_type(keys), t) << taiyi::model_type_name(t);
    EXPECT_EQ(taiyi::is_sdxl_model_type(t), t == ModelType::XLBase || t == ModelType::XLInpaint);
    if (t == ModelType::V1 || taiyi::is_sdxl_model_type(t)) EXPECT_NO_THROW(taiyi::check_model_type(t, "x.safetensors"));
    else
      expect_error_naming([&] { taiyi::check_model_type(t, "x.safetensors"); },
                          {"x.safetensors", t == ModelType::NotStableDiffusion ? "not a Stable Diffusion" : taiyi::model_type_name(t),
                           "taiyi runs SD 1.x and SDXL"});
  }
  EXPECT_EQ(taiyi::model_type_name(ModelType::V2), "SD 2.x");
  EXPECT_EQ(taiyi::model_type_name(ModelType::XLBase), "SDXL");
  EXPECT_EQ(taiyi::model_type_name(ModelType::InstructPix2Pix), "instruct-pix2pix");
}

TEST(SingleFileUtils, WebUiFixesPreTextModelClipNames) {
  // Old CLIP files lack "text_model."; the web UI's checkpoint_dict_replacements_sd1 restores it.
  const nlohmann::json r = record("clip.safetensors");
  std::vector<CheckpointKey> keys = keys_of(r);
  const std::string with = "cond_stage_model.transformer.text_model.", without = "cond_stage_model.transformer.";
  std::map<std::string, std::string> old_name;  // the new name of each renamed key -> its old name
  for (CheckpointKey& k : keys)
    if (starts(k.name, with.c_str())) {
      const std::string renamed = without + k.name.substr(with.size());
      old_name[k.name] = renamed;
      k.name = renamed;
    }
  ASSERT_GT(old_name.size(), 10u);
  EXPECT_EQ(taiyi::infer_text_encoder_kind(keys), taiyi::TextEncoderKind::Clip);
  nlohmann::json expected = r.at("text_encoder_keys");
  for (auto& m : expected) m[0] = old_name.count(m[0]) ? old_name[m[0]] : m[0].get<std::string>();
  expect_same_conversion(taiyi::convert_ldm_clip_checkpoint(keys), expected, keys, clip_key, "old CLIP names");
}

TEST(SingleFileUtils, EmaRule) {
  const nlohmann::json r = record("clip-ema.ckpt");
  std::vector<CheckpointKey> keys = keys_of(r);
  // diffusers' recorded EMA conversion reads model_ema.* only, its default the model's own weights.
  for (const auto& m : r.at("unet_ema")) EXPECT_TRUE(starts(m.at(0), "model_ema.")) << m.at(0);
  for (const auto& m : r.at("unet")) EXPECT_TRUE(starts(m.at(0), "model.diffusion_model.")) << m.at(0);
  // A UNet weight without its EMA twin.
  const std::string twin = "model_ema.diffusion_modelout2bias";
  keys.erase(std::remove_if(keys.begin(), keys.end(), [&](const CheckpointKey& k) { return k.name == twin; }), keys.end());
  expect_error_naming([&] { taiyi::convert_ldm_unet_checkpoint(keys, "clip-ema.ckpt", 2, true); },
                      {"clip-ema.ckpt", "model.diffusion_model.out.2.bias", twin});
  EXPECT_NO_THROW(taiyi::convert_ldm_unet_checkpoint(keys, "clip-ema.ckpt", 2, false));
  // 100 model_ema keys are not "EMA weights" (diffusers wants more than 100).
  std::vector<CheckpointKey> few = keys_of(record("clip.safetensors"));
  for (int i = 0; i < 100; ++i) few.push_back({"model_ema.x" + std::to_string(i), {1}});
  EXPECT_FALSE(taiyi::has_ema_weights(few));
  few.push_back({"model_ema.decay", {}});
  EXPECT_TRUE(taiyi::has_ema_weights(few));
}

TEST(SingleFileUtils, MalformedNamesAreErrors) {
  const std::string u = "model.diffusion_model.";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {u + "input_blocks.x.0.weight", "block index is not a number"},
      {u + "input_blocks.1000.0.weight", "block index is not a number from 0 to 999"},
      {u + "input_blocks.99999999999999999999.0.weight", "block index"},
      {u + "input_blocks.01.0.weight", "block index"},
      {u + "input_blocks.-1.0.weight", "block index"},
      {u + "output_blocks.3.10.conv.weight", "block slot is not a number from 0 to 9"},
      {u + "middle_block.12.proj.weight", "block index is not a number from 0 to 9"},
      {u + "input_blocks.1", "no parameter name"},
      {u + "input_blocks.1.0", "no parameter name"},
      {u + "foo.input_blocks.1.0.weight", "a block name inside another name"},
      {u + "input_blocks.1.1.output_blocks.weight", "a block name inside another name"},
      {u + "input_blocksX.1.0.weight", "no block index after 'input_blocks'"},
      {u + "input_blocks", "no block index after 'input_blocks'"}};
  for (const auto& [name, what] : cases) {
    SCOPED_TRACE(name);
    std::vector<CheckpointKey> keys = keys_of(record("clip.safetensors"));
    keys.push_back({name, {4}});
    expect_error_naming([&] { taiyi::convert_ldm_unet_checkpoint(keys, "bad.safetensors", 2, false); },
                        {"bad.safetensors", "'" + name + "'", what});
  }
  const std::vector<CheckpointKey> keys = keys_of(record("clip.safetensors"));
  expect_error_naming([&] { taiyi::convert_ldm_unet_checkpoint(keys, "m.ckpt", 0, false); }, {"m.ckpt", "layers_per_block = 0"});
  expect_error_naming([&] { taiyi::convert_ldm_vae_checkpoint(keys, "m.ckpt", 4, 100); }, {"m.ckpt", "up blocks = 100"});
  // Attention-named weights that diffusers' conv_attn_to_linear would cut to no Linear shape.
  std::vector<CheckpointKey> vae = keys;
  vae.push_back({"first_stage_model.encoder.down.0.x.query.weight", {4, 4, 1}});
  expect_error_naming([&] { taiyi::convert_ldm_vae_checkpoint(vae, "v.ckpt", 4, 4); },
                      {"v.ckpt", "first_stage_model.encoder.down.0.x.query.weight", "3 dimensions"});
}
