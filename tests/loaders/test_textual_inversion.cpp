// Textual-inversion files for SDXL ({"clip_l", "clip_g"}, tests/reference/sdxl_tokenizer.py writes them) beside
// SD 1 ones: both vector sets read exactly, the layout's errors, the model-family check, and the tokens that
// diffusers' two load_textual_inversion calls give each SDXL tokenizer. (The SD 1 pipeline's embeddings are
// checked end to end in test_lora.cpp.)
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "taiyi/loaders/textual_inversion.h"
#include "taiyi/loaders/textual_inversion_layout.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/utils/json.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using taiyi::test::expect_error_naming;

fs::path embedding_file(const std::string& stem) { return test::fixture("ref/sdxl_embeddings/" + stem + ".safetensors"); }

TEST(TextualInversionSdxl, SdxlFilesYieldBothVectorSets) {
  const fs::path golden = test::fixture("ref/sdxl_embeddings.safetensors");
  for (const auto& [stem, vectors] : {std::pair<std::string, int64_t>{"xl-style", 1}, {"xl-three", 3}}) {
    SCOPED_TRACE(stem);
    const TextualInversion ti = read_embedding(embedding_file(stem));
    EXPECT_EQ(ti.name, stem);
    EXPECT_EQ(ti.file, embedding_file(stem).string());
    ASSERT_TRUE(ti.is_sdxl());
    EXPECT_EQ(ti.vectors.sizes().vec(), (std::vector<int64_t>{vectors, 32}));
    EXPECT_EQ(ti.vectors_2.sizes().vec(), (std::vector<int64_t>{vectors, 48}));
    EXPECT_TRUE(torch::equal(ti.vectors, test::reference_tensor(golden, stem + ".clip_l")));
    EXPECT_TRUE(torch::equal(ti.vectors_2, test::reference_tensor(golden, stem + ".clip_g")));
  }
  EXPECT_EQ(read_embedding(embedding_file("xl-three"), "other-name").name, "other-name");
}

TEST(TextualInversionSdxl, Sd1FilesStayOneVectorSet) {
  const TextualInversion ti = read_embedding(embedding_file("sd1-style"));
  EXPECT_EQ(ti.name, "sd1-style");
  EXPECT_FALSE(ti.is_sdxl());
  EXPECT_FALSE(ti.vectors_2.defined());
  EXPECT_EQ(ti.vectors.sizes().vec(), (std::vector<int64_t>{2, 32}));
}

TensorInfo tensor(const std::string& name, std::vector<int64_t> shape) {
  TensorInfo info;
  info.name = name;
  info.dtype = StDtype::F32;
  info.shape = std::move(shape);
  return info;
}

TEST(TextualInversionSdxl, LayoutOfSdxlFiles) {
  // Order does not matter; other tensors beside clip_l and clip_g are ignored, as the web UI ignores them.
  EmbeddingLayout layout =
      embedding_layout({tensor("clip_g", {4, 1280}), tensor("step", {1}), tensor("clip_l", {4, 768})}, "e.safetensors",
                       "stem", "");
  EXPECT_TRUE(layout.sdxl());
  EXPECT_EQ(layout.key, "clip_l");
  EXPECT_EQ(layout.key_2, "clip_g");
  EXPECT_EQ(layout.name, "stem");
  EXPECT_EQ(layout.vectors, 4);
  EXPECT_EQ(layout.dim, 768);
  EXPECT_EQ(layout.dim_2, 1280);
  layout = embedding_layout({tensor("clip_l", {768}), tensor("clip_g", {1280})}, "e.safetensors", "stem", "given");
  EXPECT_EQ(layout.vectors, 1);
  EXPECT_EQ(layout.name, "given");
  // SD 1 files are as before: no second key.
  layout = embedding_layout({tensor("emb_params", {2, 768})}, "e.safetensors", "stem", "");
  EXPECT_FALSE(layout.sdxl());
  EXPECT_EQ(layout.key, "emb_params");
  EXPECT_EQ(layout.dim_2, 0);
  layout = embedding_layout({tensor("<cat-toy>", {768})}, "e.safetensors", "stem", "");
  EXPECT_FALSE(layout.sdxl());
  EXPECT_EQ(layout.name, "<cat-toy>");
}

TEST(TextualInversionSdxl, BadSdxlLayoutsAreErrors) {
  auto layout_of = [](std::vector<TensorInfo> tensors) {
    return [tensors] { embedding_layout(tensors, "bad.safetensors", "stem", ""); };
  };
  expect_error_naming(layout_of({tensor("clip_g", {2, 1280})}), {"bad.safetensors", "only 'clip_g'", "'clip_l'"});
  expect_error_naming(layout_of({tensor("clip_l", {2, 768}), tensor("x", {2, 768})}), {"bad.safetensors", "only 'clip_l'"});
  expect_error_naming(layout_of({tensor("clip_l", {2, 768}), tensor("clip_g", {3, 1280})}),
                      {"bad.safetensors", "'clip_l' holds 2 vectors and 'clip_g' 3"});
  expect_error_naming(layout_of({tensor("clip_l", {2, 768}), tensor("clip_g", {1, 2, 1280})}),
                      {"bad.safetensors", "\"clip_g\" has 3 dimensions"});
  expect_error_naming(layout_of({tensor("clip_l", {76, 768}), tensor("clip_g", {76, 1280})}),
                      {"bad.safetensors", "\"clip_l\" holds 76 vectors"});
  expect_error_naming(layout_of({tensor("clip_l", {0, 768}), tensor("clip_g", {0, 1280})}),
                      {"bad.safetensors", "no values"});
  expect_error_naming(layout_of({tensor("a", {768}), tensor("b", {768})}), {"bad.safetensors", "2 tensors", "SDXL"});
}

TEST(TextualInversionSdxl, EmbeddingForTheOtherModelFamilyIsAnError) {
  const TextualInversion sdxl = read_embedding(embedding_file("xl-style"));
  const TextualInversion sd1 = read_embedding(embedding_file("sd1-style"));
  EXPECT_NO_THROW(check_embedding_for_model(sdxl, true, "models/tiny-sdxl"));
  EXPECT_NO_THROW(check_embedding_for_model(sd1, false, "models/tiny-clip"));
  for (const auto& [ti, sdxl_model] : {std::pair<const TextualInversion*, bool>{&sdxl, false}, {&sd1, true}}) {
    try {
      check_embedding_for_model(*ti, sdxl_model, "models/a-model");
      ADD_FAILURE() << ti->name << ": no Error";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      for (const std::string& needle : {ti->file, "'" + ti->name + "'", std::string("models/a-model"),
                                        std::string(sdxl_model ? "is an SD 1 / SD 2 embedding" : "is an SDXL embedding")})
        EXPECT_NE(message.find(needle), std::string::npos) << message << "\nlacks: " << needle;
    }
  }
}

// tiny-clip's token rows are 32 wide, as xl-style's clip_l is: without the family check it would load.
TEST(TextualInversionSdxl, Sd1PipelineRefusesAnSdxlEmbedding) {
  Pipeline pipe = Pipeline::load(test::fixture("tiny-clip"), {});
  const size_t tokens = pipe.tokenizer().vocab_size();
  expect_error_naming([&] { pipe.add_embedding(read_embedding(embedding_file("xl-style"))); },
                      {"xl-style.safetensors", "is an SDXL embedding", "tiny-clip"});
  EXPECT_TRUE(pipe.embedding_names().empty());
  EXPECT_EQ(pipe.tokenizer().vocab_size(), tokens);
}

// What the pipeline does with an SDXL embedding's tokens, on each tokenizer: diffusers' two
// load_textual_inversion calls (clip_l with tokenizer, clip_g with tokenizer_2, token = the file's stem).
TEST(TextualInversionSdxl, BothTokenizersGetTheTokensDiffusersAdds) {
  const Json cases = read_json_file(test::fixture("ref/sdxl_embeddings.json"));
  ASSERT_EQ(cases.size(), 2u);
  for (const auto& [stem, c] : cases.items()) {
    SCOPED_TRACE(stem);
    const TextualInversion ti = read_embedding(embedding_file(stem));
    for (const std::string index : {"1", "2"}) {
      auto tokenizer = load_clip_tokenizer(test::fixture(index == "1" ? "tiny-sdxl/tokenizer" : "tiny-sdxl/tokenizer_2"));
      const torch::Tensor& vectors = index == "1" ? ti.vectors : ti.vectors_2;
      const size_t first = tokenizer->vocab_size();
      const std::vector<int64_t> ids = tokenizer->add_embedding_tokens(ti.name, static_cast<size_t>(vectors.size(0)));
      ASSERT_EQ(ids.size(), c["vectors"].get<size_t>());
      EXPECT_EQ(ids.front(), static_cast<int64_t>(first));
      EXPECT_EQ(tokenizer->vocab_size(), c["vocab_size_" + index].get<size_t>());
      EXPECT_EQ(tokenizer->encode(c["prompt"]).ids, c["ids_" + index].get<std::vector<int64_t>>()) << "tokenizer " << index;
    }
  }
}

}  // namespace
}  // namespace taiyi
