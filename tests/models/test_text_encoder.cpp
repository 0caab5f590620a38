// Text encoders (src/models/modeling_clip.cpp, modeling_bert.cpp) against transformers' CLIPTextModel
// and BertModel: the goldens of tests/reference/text_encoder.py (ref/text_encoder*.safetensors), the
// state-dict names, and the errors for configs taiyi cannot run.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/safetensors.h"
#include "taiyi/models/modeling_bert.h"
#include "taiyi/models/modeling_clip.h"
#include "taiyi/models/text_encoder.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using test::expect_close;
using test::fixture;
using test::reference_tensor;

// The reference computes in float32 on the CPU, as these tests do: the difference is summation
// order only.
constexpr double kTolerance = 1e-4;

std::string shape_of(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs `encoder` on the ids of each case ("<family>.<case>.input_ids" in `golden`) and compares
// with "<family>.<case>.last_hidden_state".
void expect_matches_reference(const std::string& label, TextEncoderImpl& encoder, const fs::path& golden,
                              const std::string& family, const std::vector<std::string>& cases) {
  c10::InferenceMode inference;
  for (const std::string& name : cases) {
    const std::string prefix = family + "." + name;
    // Stored as float32 (exact below 2^24): see the reference script.
    torch::Tensor input_ids = reference_tensor(golden, prefix + ".input_ids").to(torch::kLong);
    torch::Tensor expected = reference_tensor(golden, prefix + ".last_hidden_state");
    ASSERT_TRUE(input_ids.defined() && expected.defined());
    const auto started = std::chrono::steady_clock::now();
    torch::Tensor actual = encoder.forward(input_ids);
    std::printf("%s: forward %s %s in %.2f s\n", label.c_str(), prefix.c_str(),
                shape_of(input_ids).c_str(), seconds_since(started));
    expect_close(label + " " + prefix + ".last_hidden_state", actual, expected, kTolerance);
  }
}

// The text encoder of a fixture pipeline, loaded as the pipeline loads it, on the cases of
// tests/reference/text_encoder.py.
void expect_pipeline_matches_reference(const std::string& pipeline, const std::string& family,
                                       const std::string& golden_file) {
  ModelFolder folder = ModelFolder::open(fixture(pipeline));
  const fs::path golden = fixture(golden_file);
  auto started = std::chrono::steady_clock::now();
  auto encoder = make_text_encoder(folder);
  const double built = seconds_since(started);
  started = std::chrono::steady_clock::now();
  load_weights(*encoder, folder.weight_files("text_encoder"),
               {torch::kFloat, torch::kCPU, encoder->ignored_checkpoint_keys()});
  std::printf("%s: built in %.3f s, weights loaded in %.2f s\n", pipeline.c_str(), built, seconds_since(started));
  expect_matches_reference(pipeline, *encoder, golden, family, {"prompt", "random", "short"});
}

// The tiny config with weights of realistic scale (the reference's sharpened()); the file also holds
// the keys of older checkpoints (position_ids; BERT's pooler) that load_weights must ignore.
void expect_sharp_weights_match_reference(const std::string& pipeline, const std::string& family) {
  ModelFolder folder = ModelFolder::open(fixture(pipeline));
  auto encoder = make_text_encoder(folder);
  load_weights(*encoder, {fixture("ref/text_encoder_sharp_" + family + ".safetensors")},
               {torch::kFloat, torch::kCPU, encoder->ignored_checkpoint_keys()});
  expect_matches_reference(pipeline + " (sharp weights)", *encoder, fixture("ref/text_encoder.safetensors"),
                           family, {"sharp"});
}

bool is_ignored(const std::string& key, const std::vector<std::string>& ignored) {
  for (const auto& pattern : ignored) {
    if (key == pattern || (!pattern.empty() && pattern.back() == '.' && key.rfind(pattern, 0) == 0)) return true;
  }
  return false;
}

// named_parameters() (and buffers, none expected) equal the checkpoint's keys minus the ignored ones.
void expect_names_are_checkpoint_keys(const std::string& pipeline, size_t expected_count) {
  ModelFolder folder = ModelFolder::open(fixture(pipeline));
  auto encoder = make_text_encoder(folder);
  std::set<std::string> module_keys;
  for (const auto& item : encoder->named_parameters()) module_keys.insert(item.key());
  for (const auto& item : encoder->named_buffers()) module_keys.insert(item.key());
  std::set<std::string> checkpoint_keys;
  for (const fs::path& file : folder.weight_files("text_encoder")) {
    SafetensorsFile weights(file);
    for (const TensorInfo& info : weights.tensors()) {
      if (!is_ignored(info.name, encoder->ignored_checkpoint_keys())) checkpoint_keys.insert(info.name);
    }
  }
  EXPECT_EQ(module_keys, checkpoint_keys);
  EXPECT_EQ(module_keys.size(), expected_count);
}

// The config.json of a fixture's text encoder with one key changed.
Config text_encoder_config_with(const std::string& pipeline, const std::string& key, const nlohmann::json& value) {
  Config original = ModelFolder::open(fixture(pipeline)).config("text_encoder");
  nlohmann::json json = original.json();
  json[key] = value;
  return Config(json, original.path());
}

template <typename Function>
std::string error_message(Function&& function) {
  try {
    function();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a taiyi::Error";
  return "";
}

TEST(TextEncoder, ClipMatchesTransformers) {
  expect_pipeline_matches_reference("tiny-clip", "clip", "ref/text_encoder.safetensors");
}

TEST(TextEncoder, BertMatchesTransformers) {
  expect_pipeline_matches_reference("tiny-bert", "bert", "ref/text_encoder.safetensors");
}

TEST(TextEncoder, ClipWithSharpWeightsMatchesTransformers) {
  expect_sharp_weights_match_reference("tiny-clip", "clip");
}

TEST(TextEncoder, BertWithSharpWeightsMatchesTransformers) {
  expect_sharp_weights_match_reference("tiny-bert", "bert");
}

// CLIP's attention takes transformers' additive causal mask (is_causal=False), which selects
// transformers' kernel on CUDA; on the CPU it must give the bits SDPA's is_causal gives (what taiyi
// called before), in each dtype a text encoder runs in.
TEST(TextEncoder, ClipCausalMaskGivesTheBitsOfIsCausalOnTheCpu) {
  c10::InferenceMode guard;
  const int64_t batch = 2, length = 77, heads = 4, head_dim = 16;
  // torch.finfo(dtype).min
  const std::vector<std::pair<torch::ScalarType, double>> dtypes = {
      {torch::kFloat, -3.4028234663852886e38}, {torch::kBFloat16, -3.3895313892515355e38}, {torch::kHalf, -65504.0}};
  for (const auto& entry : dtypes) {
    const torch::ScalarType dtype = entry.first;
    const double finfo_min = entry.second;
    SCOPED_TRACE(c10::toString(dtype));
    torch::Tensor mask = text_encoders::causal_attention_mask(batch, length, dtype, torch::kCPU);
    ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{batch, 1, length, length}));
    EXPECT_EQ(mask[0][0][0][1].item<double>(), finfo_min);  // above the diagonal
    EXPECT_EQ(mask[1][0][5][5].item<double>(), 0.0);
    EXPECT_EQ(mask[1][0][5][0].item<double>(), 0.0);
    torch::manual_seed(0);
    auto make = [&] { return torch::randn({batch, length, heads * head_dim}).to(dtype); };
    const torch::Tensor q = make(), k = make(), v = make();
    auto split = [&](const torch::Tensor& t) { return t.view({batch, length, heads, head_dim}).transpose(1, 2); };
    const torch::Tensor is_causal =
        at::scaled_dot_product_attention(split(q), split(k), split(v), {}, 0.0, /*is_causal=*/true)
            .transpose(1, 2)
            .reshape({batch, length, heads * head_dim});
    EXPECT_TRUE(torch::equal(text_encoders::multi_head_attention(q, k, v, heads, mask), is_causal));
  }
}

TEST(TextEncoder, ClipParameterNamesAreCheckpointKeys) {
  // 2 embeddings + 16 tensors per layer + final LayerNorm (2 layers in the tiny config).
  expect_names_are_checkpoint_keys("tiny-clip", 2 + 16 * 2 + 2);
}

TEST(TextEncoder, BertParameterNamesAreCheckpointKeys) {
  // 3 embeddings + LayerNorm + 16 tensors per layer; the pooler (2 tensors) is left out.
  expect_names_are_checkpoint_keys("tiny-bert", 3 + 2 + 16 * 2);
}

TEST(TextEncoder, UnsupportedHiddenActIsAnError) {
  Config config = text_encoder_config_with("tiny-clip", "hidden_act", "relu6");
  std::string message = error_message([&] { make_clip_text_model(config); });
  EXPECT_NE(message.find(config.path().string()), std::string::npos) << message;
  EXPECT_NE(message.find("hidden_act"), std::string::npos) << message;
  EXPECT_NE(message.find("relu6"), std::string::npos) << message;

  config = text_encoder_config_with("tiny-bert", "hidden_act", "gelu_new");
  message = error_message([&] { make_bert_model(config); });
  EXPECT_NE(message.find("hidden_act"), std::string::npos) << message;
  EXPECT_NE(message.find("gelu_new"), std::string::npos) << message;
}

TEST(TextEncoder, UnsupportedBertOptionsAreErrors) {
  Config config = text_encoder_config_with("tiny-bert", "position_embedding_type", "relative_key");
  std::string message = error_message([&] { make_bert_model(config); });
  EXPECT_NE(message.find("position_embedding_type"), std::string::npos) << message;
  EXPECT_NE(message.find("relative_key"), std::string::npos) << message;

  config = text_encoder_config_with("tiny-bert", "is_decoder", true);
  message = error_message([&] { make_bert_model(config); });
  EXPECT_NE(message.find("is_decoder"), std::string::npos) << message;
}

TEST(TextEncoder, UnknownClassInModelIndexIsAnError) {
  const fs::path dir = test::temp_dir("text_encoder_class");
  const fs::path source = fixture("tiny-clip");
  nlohmann::json index = read_json_file(source / "model_index.json");
  index["text_encoder"] = {"transformers", "T5EncoderModel"};
  std::ofstream(dir / "model_index.json") << index.dump(2);
  fs::create_directory(dir / "text_encoder");
  fs::copy_file(source / "text_encoder" / "config.json", dir / "text_encoder" / "config.json");
  std::string message = error_message([&] { make_text_encoder(ModelFolder::open(dir)); });
  EXPECT_NE(message.find("model_index.json"), std::string::npos) << message;
  EXPECT_NE(message.find("T5EncoderModel"), std::string::npos) << message;
  // File by file: the fs::remove_all that libtorch.so exports crashes on non-empty folders.
  for (const fs::path& path :
       {dir / "text_encoder" / "config.json", dir / "text_encoder", dir / "model_index.json", dir}) {
    fs::remove(path);
  }
}

TEST(TextEncoder, BadInputIdsAreErrors) {
  Config config = ModelFolder::open(fixture("tiny-clip")).config("text_encoder");
  auto encoder = make_clip_text_model(config);
  const int64_t vocab_size = config.get_int("vocab_size");
  const int64_t max_positions = config.get_int("max_position_embeddings");
  c10::InferenceMode inference;
  std::string message = error_message([&] { encoder->forward(torch::zeros({1, max_positions + 1}, torch::kLong)); });
  EXPECT_NE(message.find("max_position_embeddings"), std::string::npos) << message;
  message = error_message([&] { encoder->forward(torch::full({1, 4}, vocab_size, torch::kLong)); });
  EXPECT_NE(message.find("vocab_size"), std::string::npos) << message;
  message = error_message([&] { encoder->forward(torch::zeros({4}, torch::kLong)); });
  EXPECT_NE(message.find("input_ids"), std::string::npos) << message;
}

// The real Taiyi configs with random weights (tools/make_fixtures.py --full).
TEST(FullSizeTextEncoder, ClipMatchesTransformers) {
  expect_pipeline_matches_reference("full-clip", "clip", "ref/text_encoder_full.safetensors");
}

TEST(FullSizeTextEncoder, BertMatchesTransformers) {
  expect_pipeline_matches_reference("full-bert", "bert", "ref/text_encoder_full.safetensors");
}

TEST(FullSizeTextEncoder, ClipParameterNamesAreCheckpointKeys) {
  expect_names_are_checkpoint_keys("full-clip", 2 + 16 * 12 + 2);  // spec §11: 196 tensors
}

TEST(FullSizeTextEncoder, BertParameterNamesAreCheckpointKeys) {
  expect_names_are_checkpoint_keys("full-bert", 3 + 2 + 16 * 12);  // spec §11: 199 with the pooler
}

}  // namespace
}  // namespace taiyi
