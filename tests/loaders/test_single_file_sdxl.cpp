// SDXL single-file checkpoints (include/taiyi/loaders/single_file.h) against diffusers: the files of
// tests/reference/sdxl_single_file.py (the tiny-sdxl and tiny-taiyi-xl pipelines in the LDM / SGM layout,
// which diffusers' StableDiffusionXLPipeline.from_single_file reads back to exactly the folders' weights)
// give, per component, exactly the folder's keys and tensors; the built-in SDXL configs and tokenizers hold
// SDXL base's values; the refiner, Taiyi-XL without its tokenizers and mangled files are one-line errors.
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>

#include "taiyi/loaders/safetensors_writer.h"
#include "taiyi/loaders/single_file.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/utils/json.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;

namespace {

const char* const kComponents[] = {"unet", "vae", "text_encoder", "text_encoder_2"};

taiyi::ModelSource open_file(const std::string& file, const std::string& config_dir) {
  taiyi::ModelSourceOptions options;
  if (!config_dir.empty()) options.config_dir = fixture(config_dir);
  return taiyi::ModelSource::open(fixture("sdxl_single_file/" + file), options);
}

// The component's weights as the folder holds them.
taiyi::StateDict folder_weights(const std::string& folder, const std::string& component) {
  return taiyi::read_weights_files(taiyi::ModelFolder::open(fixture(folder)).weight_files(component));
}

// `actual` has exactly the folder's keys, each tensor equal (dtype, shape, values); returns how many.
size_t expect_folder_tensors(const taiyi::StateDict& actual, const std::string& folder, const std::string& component) {
  const taiyi::StateDict expected = folder_weights(folder, component);
  const std::set<std::string> names(actual.names().begin(), actual.names().end());
  const std::set<std::string> expected_names(expected.names().begin(), expected.names().end());
  EXPECT_EQ(names, expected_names) << component;
  EXPECT_EQ(actual.size(), names.size()) << component << ": a name given twice";
  size_t equal = 0;
  for (const std::string& name : expected.names()) {
    const torch::Tensor* tensor = actual.find(name);
    if (!tensor) continue;
    const torch::Tensor& want = *expected.find(name);
    if (tensor->scalar_type() == want.scalar_type() && torch::equal(*tensor, want)) ++equal;
    else ADD_FAILURE() << component << " " << name << ": differs (shape " << tensor->sizes() << ", expected " << want.sizes()
                       << ")";
  }
  return equal;
}

// A copy of sdxl.safetensors with `change` applied to its tensors (name -> tensor; an undefined one dropped).
fs::path mangled_file(const std::string& name, const std::function<void(std::map<std::string, torch::Tensor>&)>& change) {
  const taiyi::StateDict source = taiyi::read_weights_file(fixture("sdxl_single_file/sdxl.safetensors"));
  std::map<std::string, torch::Tensor> tensors;
  for (const std::string& key : source.names()) tensors[key] = source.find(key)->clone();
  change(tensors);
  std::vector<taiyi::SafetensorsEntry> entries;
  for (const auto& [key, tensor] : tensors) {
    if (!tensor.defined()) continue;
    const torch::Tensor t = tensor.contiguous();
    entries.push_back({key, taiyi::StDtype::F32, t.sizes().vec(), [t] { return t; }, nullptr});
  }
  const fs::path path = taiyi::test::temp_dir("sdxl-single-file") / name;
  taiyi::save_safetensors(std::move(entries), path);
  return path;
}

}  // namespace

TEST(SdxlSingleFile, EveryComponentIsTheFoldersWeights) {
  const std::pair<const char*, const char*> files[] = {
      {"sdxl.safetensors", "tiny-sdxl"}, {"sdxl.ckpt", "tiny-sdxl"}, {"taiyi-xl.safetensors", "tiny-taiyi-xl"}};
  for (const auto& [file, folder] : files) {
    SCOPED_TRACE(file);
    const Json record = taiyi::read_json_file(fixture(std::string("sdxl_single_file/") + file + ".json"));
    ASSERT_EQ(record.at("config"), folder);
    const taiyi::ModelSource source = open_file(file, folder);
    EXPECT_TRUE(source.single_file());
    EXPECT_TRUE(source.folder().is_sdxl());
    EXPECT_TRUE(source.folder().force_zeros_for_empty_prompt());
    EXPECT_NE(source.description().find("SDXL, CLIP and OpenCLIP text encoders"), std::string::npos) << source.description();
    size_t tensors = 0;
    for (const char* component : kComponents) tensors += expect_folder_tensors(source.state_dict(component), folder, component);
    // Every tensor of the file is used but OpenCLIP's logit_scale; each fused q/k/v projection gives three.
    size_t fused = 0;
    for (const Json& key : record.at("keys")) fused += key[0].get<std::string>().find(".attn.in_proj_") != std::string::npos;
    EXPECT_EQ(tensors, record.at("keys").size() - 1 + 2 * fused);
    EXPECT_EQ(fused, 6u);  // 3 layers, weight and bias
    EXPECT_EQ(source.unused_keys(), std::vector<std::string>{"conditioner.embedders.1.model.logit_scale"});
    std::printf("%s: %zu tensors equal to %s's\n", file, tensors, folder);
    // What the file says on top of the folder's configs: the same values here.
    const taiyi::ModelFolder configs = taiyi::ModelFolder::open(fixture(folder));
    for (const char* text : {"text_encoder", "text_encoder_2"})
      for (const char* key : {"vocab_size", "max_position_embeddings"})
        EXPECT_EQ(source.config(text).get_int(key), configs.config(text).get_int(key)) << text << " " << key;
  }
  EXPECT_EQ(open_file("taiyi-xl.safetensors", "tiny-taiyi-xl").config("text_encoder_2").get_int("vocab_size"), 57475);
}

// Without --config-dir: SDXL base's configs. The UNet and VAE convert as with the folder's (same block
// layout); the tiny text encoders are not as wide as SDXL base's, which diffusers refuses too.
TEST(SdxlSingleFile, BuiltInConfigsAreSdxlBase) {
  const taiyi::ModelSource source = open_file("sdxl.safetensors", "");
  EXPECT_TRUE(source.folder().builtin_configs());
  EXPECT_TRUE(source.folder().is_sdxl());
  EXPECT_TRUE(source.folder().force_zeros_for_empty_prompt());
  EXPECT_EQ(source.folder().class_name("text_encoder_2"), "CLIPTextModelWithProjection");
  const taiyi::Config unet = source.config("unet");
  EXPECT_EQ(unet.get_string("addition_embed_type"), "text_time");
  EXPECT_EQ(unet.get_int_list("transformer_layers_per_block"), (std::vector<int64_t>{1, 2, 10}));
  EXPECT_EQ(unet.get_int("cross_attention_dim"), 2048);
  EXPECT_EQ(source.config("vae").get_double("scaling_factor"), 0.13025);
  EXPECT_EQ(source.config("scheduler").get_string("_class_name"), "EulerDiscreteScheduler");
  EXPECT_EQ(source.config("text_encoder_2").get_int("hidden_size"), 1280);
  EXPECT_NE(source.config("text_encoder_2").path().string().find("built-in stable-diffusion-xl-base-1.0"), std::string::npos);
  expect_folder_tensors(source.state_dict("unet"), "tiny-sdxl", "unet");
  expect_folder_tensors(source.state_dict("vae"), "tiny-sdxl", "vae");
  expect_error_naming([&] { source.state_dict("text_encoder_2"); },
                      {"sdxl.safetensors", "conditioner.embedders.1.model.positional_embedding", "width 1280"});
  expect_error_naming([&] { source.state_dict("text_encoder"); }, {"sdxl.safetensors", "position_embedding", "width 768"});
}

TEST(SdxlSingleFile, RefinerTaiyiXlWithoutTokenizersAndMangledFilesAreErrors) {
  expect_error_naming([] { open_file("sdxl-refiner.safetensors", ""); },
                      {"sdxl-refiner.safetensors", "SDXL refiner", "taiyi runs SD 1.x and SDXL"});
  expect_error_naming([] { open_file("taiyi-xl.safetensors", ""); },
                      {"taiyi-xl.safetensors", "57475 tokens", "512 positions", "--config-dir"});
  expect_error_naming([] { open_file("sdxl.safetensors", "tiny-clip"); }, {"sdxl.safetensors", "tiny-clip", "not an SDXL folder"});
  const std::string in_proj = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight";
  taiyi::ModelSourceOptions tiny;
  tiny.config_dir = fixture("tiny-sdxl");
  const fs::path flat = mangled_file("flat.safetensors", [&](auto& t) { t[in_proj] = t[in_proj].flatten(); });
  expect_error_naming([&] { taiyi::ModelSource::open(flat, tiny).state_dict("text_encoder_2"); },
                      {"flat.safetensors", in_proj, "1 dimensions"});
  const std::string projection = "conditioner.embedders.1.model.text_projection";
  const fs::path cube = mangled_file("cube.safetensors", [&](auto& t) { t[projection] = t[projection].unsqueeze(0); });
  expect_error_naming([&] { taiyi::ModelSource::open(cube, tiny).state_dict("text_encoder_2"); },
                      {"cube.safetensors", projection, "3 dimensions"});
  const fs::path no_label = mangled_file("no-label.safetensors", [](auto& t) {
    t["model.diffusion_model.label_emb.0.2.bias"] = torch::Tensor();
  });
  expect_error_naming([&] { taiyi::ModelSource::open(no_label, tiny).state_dict("unet"); },
                      {"no-label.safetensors", "add_embedding", "model.diffusion_model.label_emb.0.2.bias"});
  const fs::path one_encoder = mangled_file("one-encoder.safetensors", [](auto& t) {
    for (auto& [name, tensor] : t)
      if (name.rfind("conditioner.embedders.1.", 0) == 0) tensor = torch::Tensor();
    t["conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"] = torch::zeros({48});
  });
  expect_error_naming([&] { taiyi::ModelSource::open(one_encoder, tiny); },
                      {"one-encoder.safetensors", "without its second text encoder"});
  std::ofstream(taiyi::test::temp_dir("sdxl-single-file") / "cut.safetensors", std::ios::binary) << std::string(8, '\x7f');
  expect_error_naming([] { taiyi::ModelSource::open(taiyi::test::temp_dir("sdxl-single-file") / "cut.safetensors", {}); },
                      {"cut.safetensors"});
}

// diffusers' xl_inpaint: the 9-channel UNet (latents, mask, masked image) of an SDXL file; in_channels comes
// from the file as for SD 1.x inpainting files (the built-in UNet config is SDXL base's 4-channel one).
TEST(SdxlSingleFile, InpaintingUNetTakesNineChannels) {
  const std::string conv_in = "model.diffusion_model.input_blocks.0.0.weight";
  torch::Tensor nine;
  const fs::path file = mangled_file("inpaint.safetensors", [&](auto& t) {
    nine = torch::randn({t[conv_in].size(0), 9, 3, 3});
    t[conv_in] = nine;
  });
  for (const std::string config_dir : {"tiny-sdxl", ""}) {
    taiyi::ModelSourceOptions options;
    if (!config_dir.empty()) options.config_dir = fixture(config_dir);
    const taiyi::ModelSource source = taiyi::ModelSource::open(file, options);
    EXPECT_NE(source.description().find("SDXL inpainting"), std::string::npos) << source.description();
    EXPECT_TRUE(source.folder().is_sdxl());
    EXPECT_EQ(source.config("unet").get_int("in_channels"), 9) << config_dir;
    EXPECT_TRUE(torch::equal(*source.state_dict("unet").find("conv_in.weight"), nine)) << config_dir;
  }
}

// The built-in SDXL files are SDXL base's: what diffusers and transformers derive from them is sdxl.py's
// full-size configs (tests/reference/sdxl_single_file.py), and they hold the tiny fixture's values where the
// fixture is not shrunk.
TEST(SdxlSingleFileConfigs, BuiltInFilesAreSdxlBase) {
  const Json record = taiyi::read_json_file(fixture("ref/sdxl_single_file_configs.json"));
  const std::pair<const char*, const char*> names[] = {
      {"sdxl_unet", "unet"}, {"sdxl_vae", "vae"}, {"sdxl_scheduler", "scheduler"}, {"sdxl_text_encoder_2", "text_encoder_2"}};
  ASSERT_EQ(record.size(), std::size(names));
  // Keys the hub's files carry that the libraries' configs do not (or spell as null).
  const std::set<std::string> hub_only = {"architectures", "dropout", "upcast_attention", "clip_sample", "sample_max_value",
                                          "set_alpha_to_one", "skip_prk_steps"};
  for (const auto& [name, component] : names) {
    SCOPED_TRACE(name);
    EXPECT_EQ(record[name]["file"], taiyi::builtin_sdxl_config(component));
    for (const auto& [key, values] : record[name]["differences"].items())
      EXPECT_TRUE(hub_only.count(key)) << key << ": " << values[0].dump() << " built in, " << values[1].dump() << " in sdxl.py";
  }
  EXPECT_EQ(taiyi::builtin_sdxl_config("text_encoder"), taiyi::builtin_config("text_encoder", taiyi::TextEncoderKind::Clip));
  Json index = taiyi::read_json_file(fixture("tiny-sdxl/model_index.json"));
  index.erase("_diffusers_version");
  EXPECT_EQ(taiyi::builtin_sdxl_model_index(), index);
  const taiyi::ModelFolder tiny = taiyi::ModelFolder::open(fixture("tiny-sdxl"));
  size_t compared = 0;  // the tiny pipeline's scheduler is SDXL base's, saved by diffusers 0.37.1
  const Json saved = tiny.config("scheduler").json(), builtin = taiyi::builtin_sdxl_config("scheduler");
  for (const auto& [key, value] : builtin.items()) {
    if (!saved.contains(key)) continue;
    EXPECT_EQ(value, saved[key]) << "scheduler " << key;
    ++compared;
  }
  EXPECT_GE(compared, 15u);
  expect_error_naming([] { taiyi::builtin_sdxl_config("tokenizer_2"); }, {"stable-diffusion-xl-base-1.0", "'tokenizer_2'"});
  expect_error_naming([] { taiyi::builtin_sdxl_tokenizer("text_encoder"); }, {"stable-diffusion-xl-base-1.0", "'text_encoder'"});
}

// The built-in tokenizers give the ids of tiny-sdxl's (the same vocabulary; tokenizer_2 pads with "!"),
// recorded by transformers in ref/sdxl.safetensors for each tiny-sdxl prompt case.
TEST(SdxlSingleFileConfigs, BuiltInTokenizersGiveTransformersIds) {
  const Json cases = taiyi::read_json_file(fixture("ref/sdxl_cases.json"));
  const std::unique_ptr<taiyi::Tokenizer> tokenizers[] = {taiyi::builtin_sdxl_tokenizer("tokenizer"),
                                                          taiyi::builtin_sdxl_tokenizer("tokenizer_2")};
  size_t compared = 0;
  for (const Json& c : cases) {
    if (c["model"] != "tiny-sdxl") continue;
    for (int i = 0; i < 2; ++i) {
      const std::string name = c["name"].get<std::string>() + ".ids_" + std::to_string(i + 1);
      const torch::Tensor expected = taiyi::test::reference_tensor(fixture("ref/sdxl.safetensors"), name).to(torch::kLong);
      const std::vector<int64_t> ids = tokenizers[i]->encode(c["prompt"].get<std::string>()).ids;
      EXPECT_TRUE(torch::equal(torch::tensor(ids), expected)) << name;
      ++compared;
    }
  }
  EXPECT_GE(compared, 6u);
  EXPECT_EQ(tokenizers[1]->encode("a").ids.back(), 0);  // "!"
  EXPECT_EQ(tokenizers[0]->encode("a").ids.back(), 49407);
  std::map<std::string, std::string> files;
  for (const auto& [name, bytes] : taiyi::builtin_sdxl_tokenizer_files("tokenizer_2")) files[name] = bytes;
  EXPECT_EQ(taiyi::parse_json_text(files.at("special_tokens_map.json"), "map")["pad_token"], "!");
  EXPECT_EQ(files.at("vocab.json"), taiyi::builtin_tokenizer_files(taiyi::TextEncoderKind::Clip).front().second);
}
