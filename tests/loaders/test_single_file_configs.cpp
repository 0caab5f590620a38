// What a single-file checkpoint lacks, built in (src/loaders/single_file_configs.cpp): the built-in
// tokenizers give transformers' ids (tests/reference/tokenizer.py's goldens, for the fixture tokenizers and
// for the hub-format folders "clip-hub" / "bert-legacy") and the same encodings as the fixture tokenizers
// made from the same vocabularies; the fixture tokenizers are configured as the hub's (spec §3); the
// built-in configs hold the real Taiyi configs' values (tools/make_fixtures.py), and modules built from
// them compute exactly what the fixture pipelines' modules compute.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "taiyi/loaders/state_dict.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/models/modeling_bert.h"
#include "taiyi/models/modeling_clip.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/schedulers/scheduler.h"
#include "taiyi/tokenizers/builtin_vocab.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/utils/json.h"
#include "taiyi/utils/sha256.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr TextEncoderKind kKinds[] = {TextEncoderKind::Clip, TextEncoderKind::Bert};
const char* family(TextEncoderKind kind) { return kind == TextEncoderKind::Clip ? "clip" : "bert"; }

std::unique_ptr<Tokenizer> fixture_tokenizer(TextEncoderKind kind) {
  const fs::path dir = test::fixture(std::string("tiny-") + family(kind) + "/tokenizer");
  return kind == TextEncoderKind::Clip ? load_clip_tokenizer(dir) : load_bert_tokenizer(dir);
}

// The built-in tokenizer's ids for the first `count` prompts of a family against transformers' ids of
// reference set `set` (ref/tokenizer.safetensors); returns how many prompts differ.
size_t count_differences(const Tokenizer& tokenizer, const std::string& set, const std::string& prompt_family,
                         size_t count) {
  static const Json prompts = read_json_file(test::fixture("ref/tokenizer_prompts.json"));
  const fs::path file = test::fixture("ref/tokenizer.safetensors");
  const torch::Tensor expected = test::reference_tensor(file, set + ".ids").to(torch::kLong);
  EXPECT_EQ(static_cast<size_t>(expected.size(1)), tokenizer.max_length()) << set;
  count = std::min(count, static_cast<size_t>(expected.size(0)));
  size_t differ = 0;
  for (size_t i = 0; i < count; ++i) {
    const std::string prompt = prompts[prompt_family].at(i).get<std::string>();
    const int64_t* row = expected[static_cast<int64_t>(i)].data_ptr<int64_t>();
    if (tokenizer.encode(prompt).ids != std::vector<int64_t>(row, row + expected.size(1)) && ++differ <= 5)
      ADD_FAILURE() << set << " prompt " << i
                    << " differs: " << Json(prompt).dump(-1, ' ', true, Json::error_handler_t::replace);
  }
  std::printf("built-in %s tokenizer vs transformers' %s: %zu prompts, %zu differ\n", prompt_family.c_str(),
              set.c_str(), count, differ);
  return count > 0 ? differ : 1;
}

TEST(SingleFileConfigs, BuiltinTokenizersGiveTransformersIds) {
  const Json variants = read_json_file(test::fixture("ref/tokenizer_prompts.json"))["variants"];
  for (TextEncoderKind kind : kKinds) {
    auto tokenizer = builtin_tokenizer(kind);
    const std::string name = family(kind);
    SCOPED_TRACE(name);
    // Every prompt of the fixture tokenizer's goldens, and those of the folder in the hub's old format.
    EXPECT_EQ(count_differences(*tokenizer, name, name, SIZE_MAX), 0u);
    const std::string hub = kind == TextEncoderKind::Clip ? "clip-hub" : "bert-legacy";
    size_t hub_prompts = 0;
    for (const Json& v : variants)
      if (v["name"] == hub) hub_prompts = v["prompts"].get<size_t>();
    ASSERT_GE(hub_prompts, 100u) << hub;
    EXPECT_EQ(count_differences(*tokenizer, hub, name, hub_prompts), 0u);
  }
}

TEST(SingleFileConfigs, BuiltinTokenizersEncodeAsTheFixtureTokenizers) {
  const std::string long_chinese = [] {
    std::string s;
    for (int i = 0; i < 300; ++i) s += "一只可爱的猫咪坐在窗台上，";
    return s;
  }();
  const std::vector<std::string> prompts = {
      "小桥流水人家", "飞流直下三千尺，疑是银河落九天。", "a photo of an astronaut riding a horse on mars",
      "masterpiece, best quality, 1girl, 汉服, 长发", "油画：山水（宋代）【高清】《千里江山图》 by 王希孟",
      long_chinese, long_chinese + " and then some English words at the end",
      "", "   ", "<|startoftext|>a<|endoftext|>b <|ENDOFTEXT|>", "[CLS] [SEP] [MASK] [unk]", "Café NAÏVE Ångström ﬁ",
      "\x00\x07tab\tnew\nline\r\n\u3000\u200b", "\xff\xfe broken utf-8 \xe4\xb8", "👨‍👩‍👧‍👦 🐱 ☕", std::string(150, 'x')};
  for (TextEncoderKind kind : kKinds) {
    SCOPED_TRACE(family(kind));
    auto builtin = builtin_tokenizer(kind);
    auto fixture = fixture_tokenizer(kind);
    EXPECT_EQ(builtin->kind(), fixture->kind());
    EXPECT_EQ(builtin->vocab_size(), fixture->vocab_size());
    EXPECT_EQ(builtin->max_length(), kind == TextEncoderKind::Clip ? 77u : 512u);
    EXPECT_EQ(builtin->max_length(), fixture->max_length());
    size_t truncated = 0;
    for (const std::string& prompt : prompts) {
      SCOPED_TRACE(Json(prompt).dump(-1, ' ', true, Json::error_handler_t::replace));
      const Encoding a = builtin->encode(prompt), b = fixture->encode(prompt);
      EXPECT_EQ(a.ids, b.ids);
      EXPECT_EQ(a.tokens, b.tokens);
      EXPECT_EQ(a.content_tokens, b.content_tokens);
      EXPECT_EQ(a.kept_tokens, b.kept_tokens);
      truncated += a.truncated();
      const TextTokens ta = builtin->tokenize(prompt), tb = fixture->tokenize(prompt);
      EXPECT_EQ(ta.ids, tb.ids);
      EXPECT_EQ(ta.commas, tb.commas);
      EXPECT_EQ(builtin->decode(a.ids), fixture->decode(b.ids));
    }
    EXPECT_GE(truncated, 2u);  // the long prompts are cut at max_length
  }
  // The CLIP vocabulary is the hub's: 256 + 256 byte symbols, 48894 merges, 2 specials; "</w>" on word ends.
  EXPECT_EQ(builtin_tokenizer(TextEncoderKind::Clip)->vocab_size(), 49408u);
  EXPECT_EQ(builtin_tokenizer(TextEncoderKind::Clip)->token(49406), "<|startoftext|>");
  EXPECT_EQ(builtin_tokenizer(TextEncoderKind::Bert)->token(101), "[CLS]");
}

// The embedded bytes are the files' (a stale object, e.g. from a compiler cache, would differ).
TEST(SingleFileConfigs, EmbeddedVocabulariesAreTheDataFiles) {
  auto read = [](const char* name) {
    std::ifstream in(test::source_dir() / "src" / "tokenizers" / "data" / name, std::ios::binary);
    EXPECT_TRUE(in.good()) << name;
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  // OpenAI's merges are stored gzipped and inflated by the build: the embedded text is the one whose
  // size and SHA-256 src/tokenizers/data/README.md gives.
  const std::string bert = read("bert-base-chinese-vocab.txt");
  EXPECT_EQ(builtin_clip_bpe().size(), 3194984u);
  EXPECT_EQ(sha256_hex(std::string(builtin_clip_bpe())), "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8");
  EXPECT_TRUE(builtin_bert_vocab() == bert);
  EXPECT_EQ(builtin_clip_bpe().substr(0, 5), "\"bpe_");  // OpenAI's first line, which the derivation skips
}

// tools/make_fixtures.py saves its tokenizers with transformers 4.57 (added_tokens_decoder); the values
// that decide the ids must be the hub's (spec §3): openai/clip-vit-large-patch14's and Taiyi-Chinese's.
TEST(SingleFileConfigs, FixtureTokenizerConfigsAreTheHubs) {
  const Json clip = read_json_file(test::fixture("tiny-clip/tokenizer/tokenizer_config.json"));
  EXPECT_EQ(clip["model_max_length"], 77);
  EXPECT_EQ(clip["bos_token"], "<|startoftext|>");
  for (const char* attr : {"eos_token", "unk_token", "pad_token"}) EXPECT_EQ(clip[attr], "<|endoftext|>") << attr;
  // The hub's AddedTokens: single_word, lstrip, rstrip false; normalized true.
  for (const char* id : {"49406", "49407"}) {
    const Json& token = clip["added_tokens_decoder"][id];
    EXPECT_EQ(token["normalized"], true) << id;
    EXPECT_EQ(token["lstrip"], false) << id;
    EXPECT_EQ(token["rstrip"], false) << id;
    EXPECT_EQ(token["single_word"], false) << id;
  }
  EXPECT_EQ(clip["added_tokens_decoder"].size(), 2u);

  const Json bert = read_json_file(test::fixture("tiny-bert/tokenizer/tokenizer_config.json"));
  const Json hub = {{"cls_token", "[CLS]"}, {"do_basic_tokenize", true}, {"do_lower_case", true},
                    {"mask_token", "[MASK]"}, {"model_max_length", 512}, {"never_split", nullptr},
                    {"pad_token", "[PAD]"}, {"sep_token", "[SEP]"}, {"strip_accents", nullptr},
                    {"tokenize_chinese_chars", true}, {"tokenizer_class", "BertTokenizer"}, {"unk_token", "[UNK]"}};
  for (const auto& [key, value] : hub.items()) EXPECT_EQ(bert[key], value) << key;
  const std::string_view vocab = builtin_bert_vocab();
  EXPECT_EQ(std::count(vocab.begin(), vocab.end(), '\n'), 21128);
}

// The keys tools/make_fixtures.py shrinks in its tiny configs (UNET_TINY, VAE_TINY, CLIP_TINY, BERT_TINY):
// everything else is the real configs' value.
const std::set<std::string>& shrunk_keys(const std::string& component, TextEncoderKind kind) {
  static const std::set<std::string> unet = {"sample_size", "down_block_types", "up_block_types", "block_out_channels",
                                             "norm_num_groups", "cross_attention_dim", "attention_head_dim"};
  static const std::set<std::string> vae = {"layers_per_block", "norm_num_groups", "sample_size", "block_out_channels"};
  static const std::set<std::string> clip = {"hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                                             "num_attention_heads"};
  static const std::set<std::string> bert = {"hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size"};
  static const std::set<std::string> none;
  if (component == "unet") return unet;
  if (component == "vae") return vae;
  if (component == "text_encoder") return kind == TextEncoderKind::Clip ? clip : bert;
  return none;
}

// Keys of the hub's files that the configs transformers 4.57 writes do not carry, and that its models do
// not read: BERT's hfl/chinese-roberta-wwm-ext leftover and token ids; CLIP's "dropout" (CLIPTextConfig
// has no such option any more).
const std::set<std::string> kHubOnlyKeys = {"directionality", "bos_token_id", "eos_token_id", "dropout"};

Config fixture_config(const std::string& folder, const std::string& component) {
  return ModelFolder::open(test::fixture(folder)).config(component);
}

// Every key of the built-in config has the fixture config's value, but for `skip`.
void expect_same_values(const Json& builtin, const Config& fixture, const std::set<std::string>& skip) {
  size_t compared = 0;
  for (const auto& [key, value] : builtin.items()) {
    if (skip.count(key)) continue;
    if (!fixture.json().contains(key)) {
      EXPECT_TRUE(kHubOnlyKeys.count(key)) << fixture.path() << " lacks built-in key " << key;
      continue;
    }
    EXPECT_EQ(value, fixture.json()[key]) << fixture.path() << ": " << key;
    ++compared;
  }
  EXPECT_GE(compared, builtin.size() / 2) << fixture.path();
}

TEST(SingleFileConfigs, ConfigsHoldTheRealConfigsValues) {
  for (TextEncoderKind kind : kKinds) {
    const std::string folder = std::string("tiny-") + family(kind);
    for (const std::string component : {"unet", "vae", "scheduler", "text_encoder"}) {
      SCOPED_TRACE(folder + " " + component);
      expect_same_values(builtin_config(component, kind), fixture_config(folder, component),
                         shrunk_keys(component, kind));
    }
    const Json index = builtin_model_index(kind);
    const Json fixture_index = read_json_file(test::fixture(folder + "/model_index.json"));
    for (const char* component : {"unet", "vae", "scheduler", "text_encoder", "tokenizer", "safety_checker"})
      EXPECT_EQ(index[component], fixture_index[component]) << component;
  }
  // The SD 1.x widths (spec §5) and the scheduler (spec §4).
  const Json unet = builtin_config("unet", TextEncoderKind::Clip);
  EXPECT_EQ(unet["block_out_channels"], Json({320, 640, 1280, 1280}));
  EXPECT_EQ(unet["cross_attention_dim"], 768);
  EXPECT_EQ(unet["in_channels"], 4);
  EXPECT_EQ(builtin_config("vae", TextEncoderKind::Bert)["block_out_channels"], Json({128, 256, 512, 512}));
  EXPECT_EQ(builtin_config("text_encoder", TextEncoderKind::Bert)["vocab_size"], 21128);
  EXPECT_EQ(builtin_config("text_encoder", TextEncoderKind::Clip)["vocab_size"], 49408);
  test::expect_error_naming([] { builtin_config("tokenizer", TextEncoderKind::Clip); }, {"built-in", "'tokenizer'"});
  EXPECT_EQ(builtin_source(TextEncoderKind::Clip, "unet"), "built-in stable-diffusion-v1-5 unet/config.json");
  EXPECT_EQ(builtin_source(TextEncoderKind::Bert, "text_encoder"),
            "built-in Taiyi-Stable-Diffusion-1B-Chinese-v0.1 text_encoder/config.json");
  EXPECT_EQ(builtin_source(TextEncoderKind::Bert, "scheduler"),
            "built-in stable-diffusion-v1-5 scheduler/scheduler_config.json");
}

// tests/reference/single_file_configs.py: diffusers and transformers, given the built-in files, derive the
// very configs make_fixtures.py builds its full-size pipelines from (defaults filled in included), but for
// the keys their models do not read.
TEST(SingleFileConfigs, LibrariesDeriveTheRealConfigsFromTheBuiltinFiles) {
  const Json record = read_json_file(test::fixture("ref/single_file_configs.json"));
  const std::pair<const char*, std::pair<std::string, TextEncoderKind>> names[] = {
      {"unet", {"unet", TextEncoderKind::Clip}},
      {"vae", {"vae", TextEncoderKind::Clip}},
      {"scheduler", {"scheduler", TextEncoderKind::Clip}},
      {"clip_text_encoder", {"text_encoder", TextEncoderKind::Clip}},
      {"bert_text_encoder", {"text_encoder", TextEncoderKind::Bert}}};
  ASSERT_EQ(record.size(), std::size(names));
  for (const auto& [name, component] : names) {
    SCOPED_TRACE(name);
    // What the reference read from the source is what the binary holds.
    EXPECT_EQ(record[name]["file"], builtin_config(component.first, component.second));
    for (const auto& [key, values] : record[name]["differences"].items())
      EXPECT_TRUE(key == "architectures" || kHubOnlyKeys.count(key))
          << key << ": " << values[0].dump() << " from the built-in file, " << values[1].dump() << " in the real config";
  }
}

// The built-in config with the tiny fixture's widths: what the keys the hub's file leaves out default to
// must be what the fixture's config spells out.
Config tiny_builtin(const std::string& component, TextEncoderKind kind, const Config& fixture) {
  Json json = builtin_config(component, kind);
  for (const std::string& key : shrunk_keys(component, kind)) json[key] = fixture.json()[key];
  return Config(json, builtin_source(kind, component));
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// The checkpoint keys a text encoder does not hold (position_ids, BERT's pooler) are not a mismatch.
LoadOptions ignoring(const TextEncoderImpl& encoder) {
  return LoadOptions(torch::kFloat, torch::kCPU, encoder.ignored_checkpoint_keys());
}

// Modules built from the built-in configs load the fixture pipelines' weights and compute bit for bit
// what the modules of the fixtures' own configs compute.
TEST(SingleFileConfigs, ModulesFromBuiltinConfigsComputeAsTheFixtures) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const ModelFolder clip_folder = ModelFolder::open(test::fixture("tiny-clip"));
  {
    const Config fixture = clip_folder.config("unet");
    UNet2DConditionModel a(tiny_builtin("unet", TextEncoderKind::Clip, fixture)), b(fixture);
    load_weights(a.module(), clip_folder.weight_files("unet"));
    load_weights(b.module(), clip_folder.weight_files("unet"));
    const auto sample = torch::randn({1, 4, 8, 8});
    const auto context = torch::randn({1, 77, fixture.get_int("cross_attention_dim")});
    const auto t = torch::tensor(981);
    EXPECT_EQ(max_diff(a.forward(sample, t, context), b.forward(sample, t, context)), 0.0);
  }
  {
    const Config fixture = clip_folder.config("vae");
    AutoencoderKL a(tiny_builtin("vae", TextEncoderKind::Clip, fixture)), b(fixture);
    load_weights(a.module(), clip_folder.weight_files("vae"));
    load_weights(b.module(), clip_folder.weight_files("vae"));
    const auto latents = torch::randn({1, 4, 8, 8});
    EXPECT_EQ(max_diff(a.decode(latents), b.decode(latents)), 0.0);
    EXPECT_EQ(a.scaling_factor(), 0.18215);
  }
  for (TextEncoderKind kind : kKinds) {
    const ModelFolder folder = ModelFolder::open(test::fixture(std::string("tiny-") + family(kind)));
    const Config fixture = folder.config("text_encoder");
    const Config config = tiny_builtin("text_encoder", kind, fixture);
    auto make = [&](const Config& c) {
      return kind == TextEncoderKind::Clip ? make_clip_text_model(c) : make_bert_model(c);
    };
    auto a = make(config), b = make(fixture);
    for (auto* encoder : {a.get(), b.get()})
      load_weights(*encoder, folder.weight_files("text_encoder"), ignoring(*encoder));
    const auto ids = torch::tensor(builtin_tokenizer(kind)->encode("小桥流水人家, a small bridge").ids).unsqueeze(0);
    EXPECT_EQ(max_diff(a->forward(ids), b->forward(ids)), 0.0) << family(kind);
  }
  // PLMS and DDIM. (The fixture's file, saved by diffusers 0.37.1, also spells out PNDM's
  // timestep_spacing "leading", which the hub's leaves out: a sampler whose own default differs, such as
  // Euler's "linspace", then takes its default from the built-in file, as from the hub's folder.)
  for (const std::string kind : {"", "pndm", "ddim"}) {
    auto a = make_scheduler(Config(builtin_config("scheduler", TextEncoderKind::Clip), "built-in"), kind);
    auto b = make_scheduler(clip_folder.config("scheduler"), kind);
    a->set_timesteps(20);
    b->set_timesteps(20);
    EXPECT_EQ(a->timesteps(), b->timesteps()) << kind;
    EXPECT_EQ(a->class_name(), b->class_name()) << kind;
  }
}

// The real Taiyi configs (make_fixtures.py --full): every built-in key, widths included, and the
// modules' parameter names and shapes against the full-size weight files (no data read).
TEST(FullSizeSingleFileConfigs, ConfigsAreTheFullSizeConfigs) {
  for (TextEncoderKind kind : kKinds) {
    const ModelFolder folder = ModelFolder::open(test::fixture(std::string("full-") + family(kind)));
    for (const std::string component : {"unet", "vae", "scheduler", "text_encoder"}) {
      SCOPED_TRACE(std::string(family(kind)) + " " + component);
      expect_same_values(builtin_config(component, kind), folder.config(component), {});
    }
    const Config text_config(builtin_config("text_encoder", kind), builtin_source(kind, "text_encoder"));
    auto encoder = kind == TextEncoderKind::Clip ? make_clip_text_model(text_config) : make_bert_model(text_config);
    const StateDict text_weights = read_weights_files(folder.weight_files("text_encoder"));
    const WeightMismatch text = check_weights(*encoder, text_weights, ignoring(*encoder));
    EXPECT_TRUE(text.empty()) << text.message(family(kind));
  }
  const ModelFolder folder = ModelFolder::open(test::fixture("full-clip"));
  UNet2DConditionModel unet(Config(builtin_config("unet", TextEncoderKind::Clip), "built-in unet"));
  AutoencoderKL vae(Config(builtin_config("vae", TextEncoderKind::Clip), "built-in vae"));
  const WeightMismatch u = check_weights(unet.module(), read_weights_files(folder.weight_files("unet")));
  const WeightMismatch v = check_weights(vae.module(), read_weights_files(folder.weight_files("vae")));
  EXPECT_TRUE(u.empty()) << u.message("unet");
  EXPECT_TRUE(v.empty()) << v.message("vae");
}

}  // namespace
}  // namespace taiyi
