// Long and weighted prompts: the web UI's parser (its documented examples), chunking and weighting
// against the harness (tests/reference/prompts.py), end to end against StableDiffusionPipeline fed the
// harness's prompt_embeds, and clip skip against diffusers' clip_skip.
#include <fstream>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::PromptFragment;

namespace {

nlohmann::json read_json(const std::string& relative) {
  std::ifstream in(taiyi::test::fixture(relative));
  return nlohmann::json::parse(in);
}

std::string describe(const std::vector<PromptFragment>& fragments) {
  std::string text;
  for (const auto& f : fragments)
    text += f.is_break ? "[BREAK] " : "['" + f.text + "', " + std::to_string(f.weight) + "] ";
  return text;
}

// Loaded once per model folder: the tiny pipelines load in well under a second, but the cases are many.
taiyi::Pipeline& pipeline(const std::string& model) {
  static std::map<std::string, std::unique_ptr<taiyi::Pipeline>> loaded;
  auto& p = loaded[model];
  if (!p) p = std::make_unique<taiyi::Pipeline>(taiyi::Pipeline::load(taiyi::test::fixture(model), {}));
  return *p;
}

}  // namespace

// parse_prompt_attention's doctests in the web UI (modules/prompt_parser.py), value for value.
TEST(PromptParser, WebUiDocumentedExamples) {
  using F = std::vector<PromptFragment>;
  EXPECT_EQ(taiyi::parse_prompt_attention("normal text"), (F{{"normal text", 1.0}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("an (important) word"), (F{{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("(unbalanced"), (F{{"unbalanced", 1.1}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("\\(literal\\]"), (F{{"(literal]", 1.0}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("(unnecessary)(parens)"), (F{{"unnecessaryparens", 1.1}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            (F{{"a ", 1.0},
               {"house", 1.5730000000000004},
               {" ", 1.1},
               {"on", 1.0},
               {" a ", 1.1},
               {"hill", 0.55},
               {", sun, ", 1.1},
               {"sky", 1.4641000000000006},
               {".", 1.1}}));
}

// Every parser case of the harness (Chinese, full-width punctuation, emoji, weights with spaces and
// signs, escapes, stray brackets, BREAK in every position): the same fragments and weights, bit for bit.
TEST(PromptParser, MatchesTheHarnessOnEveryCase) {
  const nlohmann::json cases = read_json("ref/prompt_parser_cases.json");
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    const std::string prompt = c["prompt"];
    if (c.contains("error")) {
      taiyi::test::expect_error_naming([&] { taiyi::parse_prompt_attention(prompt); }, {"is not a number"});
      continue;
    }
    std::vector<PromptFragment> expected;
    for (const auto& f : c["fragments"]) expected.push_back({f[0].get<std::string>(), f[1].get<double>(), f[2].get<bool>()});
    const auto got = taiyi::parse_prompt_attention(prompt);
    EXPECT_EQ(got, expected) << "prompt: " << prompt << "\n got: " << describe(got) << "\nwant: " << describe(expected);
  }
}

TEST(PromptParser, BreakAndEscapes) {
  using F = std::vector<PromptFragment>;
  EXPECT_EQ(taiyi::parse_prompt_attention("a BREAK b"), (F{{"a", 1.0}, {"", 1.0, true}, {"b", 1.0}}));
  // On word boundaries only, and only in upper case.
  EXPECT_EQ(taiyi::parse_prompt_attention("BREAKfast break"), (F{{"BREAKfast break", 1.0}}));
  EXPECT_EQ(taiyi::parse_prompt_attention("小桥BREAK流水"), (F{{"小桥BREAK流水", 1.0}}));
  // Inside brackets BREAK still breaks, and the brackets' weight goes on around it.
  EXPECT_EQ(taiyi::parse_prompt_attention("(a BREAK b)"), (F{{"a", 1.1}, {"", 1.0, true}, {"b", 1.1}}));
  // A lone backslash vanishes; an escaped one stays.
  EXPECT_EQ(taiyi::parse_prompt_attention("a\\b \\\\"), (F{{"ab \\", 1.0}}));
  taiyi::test::expect_error_naming([] { taiyi::parse_prompt_attention("(cat:1.2.3)"); }, {"'(cat:1.2.3)'", "not a number"});
}

// The chunks of every harness prompt (both tokenizers; commas at and around the 20-token backtrack
// window, full-width and ideographic commas, BREAK, weights across chunks, exactly 75 and 76 tokens):
// ids, weights and the reason each chunk ended.
TEST(PromptChunks, MatchTheHarnessOnEveryCase) {
  const nlohmann::json cases = read_json("ref/prompt_chunk_cases.json");
  ASSERT_GE(cases.size(), 20u);
  std::map<std::string, std::unique_ptr<taiyi::Tokenizer>> tokenizers;
  size_t multi_chunk = 0;
  for (const auto& c : cases) {
    const std::string model = c["model"], prompt = c["prompt"];
    auto& tokenizer = tokenizers[model];
    if (!tokenizer) tokenizer = taiyi::load_tokenizer(taiyi::ModelFolder::open(taiyi::test::fixture(model)));
    const taiyi::TokenizedPrompt got = taiyi::tokenize_prompt(*tokenizer, prompt);
    const auto& want = c["chunks"];
    ASSERT_EQ(got.chunks.size(), want.size()) << model << ": " << prompt;
    multi_chunk += want.size() > 1;
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(got.chunks[k].ids, want[k]["ids"].get<std::vector<int64_t>>()) << model << " chunk " << k << ": " << prompt;
      EXPECT_EQ(got.chunks[k].weights, want[k]["weights"].get<std::vector<double>>()) << model << " chunk " << k << ": " << prompt;
      EXPECT_EQ(taiyi::chunk_cut_name(got.chunks[k].cut), want[k]["cut"].get<std::string>()) << model << " chunk " << k << ": " << prompt;
    }
  }
  EXPECT_GE(multi_chunk, 15u);
}

// The issue's prompt: 99 CLIP tokens, cut after the full-width comma before "电影灯光".
TEST(PromptChunks, TheNinetyNineTokenPrompt) {
  auto tokenizer = taiyi::load_tokenizer(taiyi::ModelFolder::open(taiyi::test::fixture("tiny-clip")));
  const std::string prompt = "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k";
  const taiyi::TokenizedPrompt t = taiyi::tokenize_prompt(*tokenizer, prompt);
  EXPECT_EQ(t.content_tokens, 99u);
  ASSERT_EQ(t.chunks.size(), 2u);
  EXPECT_EQ(t.chunks[0].cut, taiyi::ChunkCut::Comma);
  EXPECT_EQ(t.chunks[0].content_tokens + t.chunks[1].content_tokens, 99u);
  // With the backtrack off, the first chunk is simply full, so the comparisons above can fail.
  taiyi::PromptChunkOptions no_backtrack;
  no_backtrack.comma_backtrack = 0;
  const taiyi::TokenizedPrompt plain = taiyi::tokenize_prompt(*tokenizer, prompt, no_backtrack);
  EXPECT_EQ(plain.chunks[0].content_tokens, 75u);
  EXPECT_EQ(plain.chunks[0].cut, taiyi::ChunkCut::Full);
}

// Without syntax and within one chunk: exactly diffusers' ids, and the embedding of the text encoder
// on them, bit for bit.
TEST(PromptChunks, ShortPlainPromptsAreDiffusersEncoding) {
  for (const std::string model : {"tiny-clip", "tiny-bert"}) {
    taiyi::Pipeline& pipe = pipeline(model);
    for (const std::string prompt : {"小桥流水人家，Van Gogh style", "", "a cat: on a mat", "飞流直下三千尺，疑是银河落九天"}) {
      const taiyi::TokenizedPrompt t = taiyi::tokenize_prompt(pipe.tokenizer(), prompt);
      ASSERT_EQ(t.chunks.size(), 1u);
      EXPECT_EQ(t.chunks[0].ids, pipe.tokenizer().encode(prompt).ids) << prompt;
      EXPECT_FALSE(t.weighted);
    }
  }
}

TEST(PromptChunks, LimitsAreErrors) {
  auto tokenizer = taiyi::load_tokenizer(taiyi::ModelFolder::open(taiyi::test::fixture("tiny-clip")));
  std::string huge;
  for (int i = 0; i < 33 * 75; ++i) huge += "cat ";
  taiyi::test::expect_error_naming([&] { taiyi::tokenize_prompt(*tokenizer, huge); }, {"more than 32 chunks", "2400 tokens"});
  std::string deep(80, '(');
  taiyi::test::expect_error_naming([&] { taiyi::tokenize_prompt(*tokenizer, deep + "cat"); }, {"'cat' has weight", "1000"});
  taiyi::test::expect_error_naming([&] { taiyi::tokenize_prompt(*tokenizer, "(cat:1001)"); }, {"weight"});
  EXPECT_NO_THROW(taiyi::tokenize_prompt(*tokenizer, "(cat:-1000)"));
}

// The harness's end-to-end cases: the embeddings (each chunk, weights, clip skip, padding of the
// shorter prompt) and the image StableDiffusionPipeline makes from them.
TEST(PromptParity, EmbeddingsAndImagesMatchTheHarness) {
  const nlohmann::json cases = read_json("ref/prompt_cases.json");
  ASSERT_GE(cases.size(), 10u);
  const fs::path ref = taiyi::test::fixture("ref/prompts.safetensors");
  c10::InferenceMode inference;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    taiyi::Pipeline& pipe = pipeline(c["model"]);
    const taiyi::GenerationRequest r = taiyi::test::request_of_case(c);
    EXPECT_EQ(pipe.prompt_chunks(r.prompt), c["chunks"].get<int64_t>()) << name;
    const torch::Tensor positive = pipe.encode_prompt(r.prompt, r.clip_skip);
    const torch::Tensor expected = taiyi::test::reference_tensor(ref, name + ".prompt_embeds");
    if (positive.size(1) == expected.size(1)) {
      EXPECT_EQ(taiyi::test::max_abs_diff(positive, expected), 0.0) << name << ": prompt_embeds";
    } else {  // padded to the negative prompt's length: the unpadded part
      EXPECT_EQ(taiyi::test::max_abs_diff(positive, expected.slice(1, 0, positive.size(1))), 0.0) << name;
    }
    const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(r));
    const torch::Tensor want = taiyi::test::reference_tensor(ref, name + ".images");
    EXPECT_EQ(taiyi::test::fraction_within(images, want, 0), 1.0)
        << name << ": max diff " << taiyi::test::max_abs_diff(images, want);
  }
}

// The harness's weighting is the web UI's (multiply, then rescale to the unweighted mean): without the
// rescale the embedding differs, so the parity above would catch a missing step.
TEST(PromptParity, WithoutTheMeanRescaleTheEmbeddingDiffers) {
  taiyi::Pipeline& pipe = pipeline("tiny-clip");
  c10::InferenceMode inference;
  const std::string prompt = "a (castle:1.3) on a [hill], ((sunset)), 水彩";
  const taiyi::TokenizedPrompt t = taiyi::tokenize_prompt(pipe.tokenizer(), prompt);
  ASSERT_TRUE(t.weighted);
  torch::Tensor plain = pipe.encode_prompt("a castle on a hill, sunset, 水彩");
  std::vector<float> w(t.chunks[0].weights.begin(), t.chunks[0].weights.end());
  torch::Tensor unscaled = plain * torch::tensor(w).reshape({1, -1, 1});
  const torch::Tensor weighted = pipe.encode_prompt(prompt);
  EXPECT_GT(taiyi::test::max_abs_diff(weighted, unscaled), 1e-4);
  // ... and the rescale keeps the mean.
  EXPECT_NEAR(weighted.mean().item<double>(), plain.mean().item<double>(), 1e-6);
}

TEST(PromptParity, ClipSkipErrors) {
  taiyi::Pipeline& bert = pipeline("tiny-bert");
  taiyi::GenerationRequest r;
  r.prompt = "小桥";
  r.clip_skip = 2;
  taiyi::test::expect_error_naming([&] { bert.validate(bert.complete(r)); }, {"clip skip 2", "CLIP text encoder", "BertModel"});
  taiyi::Pipeline& clip = pipeline("tiny-clip");
  r.clip_skip = 4;  // tiny CLIP has 2 layers: 1 to 3
  taiyi::test::expect_error_naming([&] { clip.validate(clip.complete(r)); }, {"clip skip 4", "between 1", "3"});
  r.clip_skip = 0;
  taiyi::test::expect_error_naming([&] { clip.validate(clip.complete(r)); }, {"clip skip 0"});
}

// Requests of different context lengths cannot share a UNet batch (padding one would change its image).
TEST(PromptParity, BatchesMustShareTheChunkCount) {
  taiyi::Pipeline& pipe = pipeline("tiny-clip");
  taiyi::GenerationRequest a, b;
  a.prompt = "小桥流水";
  b.prompt = "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k";
  for (auto* r : {&a, &b}) {
    r->steps = 2;
    r->width = r->height = 64;
  }
  EXPECT_EQ(pipe.context_chunks(a), 1);
  EXPECT_EQ(pipe.context_chunks(b), 2);
  taiyi::test::expect_error_naming([&] { pipe.generate_batch({a, b}); }, {"same chunk count"});
  // The negative prompt counts with guidance only.
  a.negative_prompt = b.prompt;
  EXPECT_EQ(pipe.context_chunks(a), 2);
  a.cfg_scale = 1.0;
  EXPECT_EQ(pipe.context_chunks(a), 1);
}

// The real configs with random weights (make_fixtures.py --full): long, weighted and clip-skipped
// prompts through the full-size CLIP and BERT encoders, against the harness.
TEST(FullSizePrompts, EmbeddingsMatchTheHarness) {
  const nlohmann::json cases = read_json("ref/prompt_full_cases.json");
  ASSERT_EQ(cases.size(), 3u);
  const fs::path ref = taiyi::test::fixture("ref/prompts_full.safetensors");
  c10::InferenceMode inference;
  for (const std::string model : {"full-clip", "full-bert"}) {
    taiyi::Pipeline pipe = taiyi::Pipeline::load(taiyi::test::fixture(model), {});
    for (const auto& c : cases) {
      if (c["model"] != model) continue;
      const std::string name = c["name"];
      EXPECT_EQ(pipe.prompt_chunks(c["prompt"]), c["chunks"].get<int64_t>()) << name;
      const torch::Tensor got = pipe.encode_prompt(c["prompt"], c["clip_skip"]);
      const torch::Tensor want = taiyi::test::reference_tensor(ref, name + ".prompt_embeds");
      std::printf("%s: %lld chunks, max abs diff %g\n", name.c_str(), static_cast<long long>(c["chunks"].get<int64_t>()),
                  taiyi::test::max_abs_diff(got, want));
      taiyi::test::expect_close(name, got, want, 1e-5);
    }
  }
}
