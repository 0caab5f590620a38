// Tokenizer parity with transformers' slow CLIPTokenizer and BertTokenizer: every prompt of
// tests/reference/tokenizer.py (hand-written cases, random mixtures, code-point sweeps), for the
// fixture pipelines' tokenizers and for tokenizer folders written in other styles; then the
// error paths and the speed.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "test_util.h"

namespace taiyi {
namespace {

using taiyi::test::expect_error_naming;

namespace fs = std::filesystem;
using Json = nlohmann::json;

const Json& prompts_json() {
  static const Json json = read_json_file(test::fixture("ref/tokenizer_prompts.json"));
  return json;
}

// The prompt with non-printable and non-ASCII bytes escaped, so that a failure shows what it was.
std::string escaped(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    }
  }
  return out.size() > 400 ? out.substr(0, 400) + "..." : out;
}

std::string join(const std::vector<int64_t>& ids) {
  std::ostringstream out;
  // Trailing padding is shown once, as "pad xN".
  size_t end = ids.size();
  while (end > 1 && ids[end - 1] == ids[end - 2]) --end;
  for (size_t i = 0; i < end; ++i) out << (i ? " " : "") << ids[i];
  if (end < ids.size()) out << " (x" << ids.size() - end + 1 << ")";
  return out.str();
}

// Compares every prompt's ids (and content-token count) with the reference; prints the first
// mismatches with the prompt, the expected and the actual ids.
void expect_matches_reference(const Tokenizer& tokenizer, const std::string& set, const std::string& prompt_family,
                              size_t count) {
  const Json& prompts = prompts_json()[prompt_family];
  fs::path file = test::fixture("ref/tokenizer.safetensors");
  torch::Tensor expected = test::reference_tensor(file, set + ".ids").to(torch::kLong);
  torch::Tensor expected_content = test::reference_tensor(file, set + ".content_tokens").to(torch::kLong);
  ASSERT_EQ(expected.dim(), 2);
  ASSERT_EQ(static_cast<size_t>(expected.size(0)), count) << set;
  ASSERT_EQ(static_cast<size_t>(expected.size(1)), tokenizer.max_length()) << set;
  size_t failures = 0;
  for (size_t i = 0; i < count; ++i) {
    std::string prompt = prompts.at(i).get<std::string>();
    Encoding e = tokenizer.encode(prompt);
    const int64_t* row = expected[static_cast<int64_t>(i)].data_ptr<int64_t>();
    std::vector<int64_t> want(row, row + expected.size(1));
    size_t want_content = static_cast<size_t>(expected_content[static_cast<int64_t>(i)].item<int64_t>());
    ASSERT_EQ(e.tokens.size(), e.ids.size());
    EXPECT_EQ(e.kept_tokens, std::min(want_content, tokenizer.max_length() - 2));
    if (e.ids != want || e.content_tokens != want_content) {
      if (++failures <= 10) {
        ADD_FAILURE() << set << " prompt " << i << ": \"" << escaped(prompt) << "\"\n  expected " << join(want)
                      << " (" << want_content << " content tokens)\n  actual   " << join(e.ids) << " ("
                      << e.content_tokens << " content tokens)";
      }
    }
  }
  EXPECT_EQ(failures, 0u) << set << ": " << failures << " of " << count << " prompts differ";
  std::printf("%s: %zu prompts, %zu differ\n", set.c_str(), count, failures);
}

TEST(Tokenizer, ClipMatchesTransformersOnEveryPrompt) {
  auto tokenizer = load_clip_tokenizer(test::fixture("tiny-clip/tokenizer"));
  EXPECT_EQ(tokenizer->kind(), "CLIPTokenizer");
  EXPECT_EQ(tokenizer->max_length(), 77u);
  size_t count = prompts_json()["clip"].size();
  EXPECT_GE(count, 500u);
  expect_matches_reference(*tokenizer, "clip", "clip", count);
}

TEST(Tokenizer, BertMatchesTransformersOnEveryPrompt) {
  auto tokenizer = load_bert_tokenizer(test::fixture("tiny-bert/tokenizer"));
  EXPECT_EQ(tokenizer->kind(), "BertTokenizer");
  EXPECT_EQ(tokenizer->max_length(), 512u);
  size_t count = prompts_json()["bert"].size();
  EXPECT_GE(count, 500u);
  expect_matches_reference(*tokenizer, "bert", "bert", count);
}

// Older hub configs, SD 2's pad "!", special-token flags and sides, BERT options, no config.
TEST(Tokenizer, VariantFoldersMatchTransformers) {
  const Json& variants = prompts_json()["variants"];
  ASSERT_GE(variants.size(), 8u);
  for (const Json& v : variants) {
    std::string name = v["name"], family = v["family"];
    SCOPED_TRACE(name);
    fs::path dir = test::fixture(v["dir"].get<std::string>());
    auto tokenizer = family == "clip" ? load_clip_tokenizer(dir) : load_bert_tokenizer(dir);
    if (!v["model_max_length"].is_null()) {
      EXPECT_EQ(tokenizer->max_length(), v["model_max_length"].get<size_t>());
    }
    expect_matches_reference(*tokenizer, name, family, v["prompts"].get<size_t>());
  }
}

TEST(Tokenizer, TokenStringsMatchConvertIdsToTokens) {
  for (std::string family : {"clip", "bert"}) {
    auto tokenizer = family == "clip" ? load_clip_tokenizer(test::fixture("tiny-clip/tokenizer"))
                                      : load_bert_tokenizer(test::fixture("tiny-bert/tokenizer"));
    const Json& expected = prompts_json()["tokens"][family];
    ASSERT_GE(expected.size(), 20u);
    for (size_t i = 0; i < expected.size(); ++i) {
      std::string prompt = prompts_json()[family].at(i).get<std::string>();
      EXPECT_EQ(tokenizer->encode(prompt).tokens, expected[i].get<std::vector<std::string>>())
          << family << " prompt " << i << ": \"" << escaped(prompt) << "\"";
    }
  }
}

TEST(Tokenizer, KnownIdsOfTheClipVocabulary) {
  // Independent of the harness: OpenAI CLIP's ids for a short prompt and the truncation counts.
  auto tokenizer = load_clip_tokenizer(test::fixture("tiny-clip/tokenizer"));
  Encoding e = tokenizer->encode("a photo of a cat");
  std::vector<int64_t> head(e.ids.begin(), e.ids.begin() + 7);
  EXPECT_EQ(head, (std::vector<int64_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  EXPECT_EQ(e.ids.back(), 49407);
  EXPECT_EQ(e.tokens[1], "a</w>");
  EXPECT_FALSE(e.truncated());
  Encoding long_text = tokenizer->encode(std::string(200, 'x') + " " + std::string(300, '1'));
  EXPECT_TRUE(long_text.truncated());
  EXPECT_EQ(long_text.kept_tokens, 75u);
  EXPECT_EQ(long_text.ids.size(), 77u);
}

TEST(Tokenizer, InvalidUtf8IsDroppedLikeReplacementCharacters) {
  // A Python str cannot hold invalid UTF-8; taiyi decodes each bad byte to U+FFFD, which
  // BasicTokenizer's _clean_text drops, as it drops a literal U+FFFD.
  for (std::string family : {"clip", "bert"}) {
    auto tokenizer = family == "clip" ? load_clip_tokenizer(test::fixture("tiny-clip/tokenizer"))
                                      : load_bert_tokenizer(test::fixture("tiny-bert/tokenizer"));
    std::vector<int64_t> clean = tokenizer->encode("ab 小c").ids;
    for (std::string bad : {"a\xff" "b \xe5\xb0\x8f" "c", "a\xc0\xaf" "b 小\xed\xa0\x80" "c",
                            "a\xf5\x80\x80\x80" "b 小c", "ab\xf0\x9f 小c\xe5"}) {
      EXPECT_EQ(tokenizer->encode(bad).ids, clean) << family << ": \"" << escaped(bad) << "\"";
    }
  }
}

TEST(Tokenizer, LoadTokenizerPicksTheModelIndexClass) {
  auto clip = load_tokenizer(ModelFolder::open(test::fixture("tiny-clip")));
  EXPECT_EQ(clip->kind(), "CLIPTokenizer");
  auto bert = load_tokenizer(ModelFolder::open(test::fixture("tiny-bert")));
  EXPECT_EQ(bert->kind(), "BertTokenizer");
  EXPECT_EQ(bert->encode("小桥").ids.size(), 512u);
}

void copy_folder(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) fs::copy(entry.path(), to / entry.path().filename());
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

TEST(Tokenizer, ClipErrorsNameTheFile) {
  fs::path base = test::temp_dir("tokenizer_clip_errors");
  fs::path source = test::fixture("tiny-clip/tokenizer");

  fs::path no_vocab = base / "no_vocab";
  copy_folder(source, no_vocab);
  fs::remove(no_vocab / "vocab.json");
  expect_error_naming([&] { load_clip_tokenizer(no_vocab); }, {"vocab.json"});

  fs::path no_merges = base / "no_merges";
  copy_folder(source, no_merges);
  fs::remove(no_merges / "merges.txt");
  expect_error_naming([&] { load_clip_tokenizer(no_merges); }, {"merges.txt"});

  fs::path malformed = base / "malformed";
  copy_folder(source, malformed);
  write_file(malformed / "vocab.json", "{\"a\": 1, \"b\": ");
  expect_error_naming([&] { load_clip_tokenizer(malformed); }, {"vocab.json", "malformed"});

  fs::path not_ids = base / "not_ids";
  copy_folder(source, not_ids);
  write_file(not_ids / "vocab.json", "{\"a\": 1, \"b\": \"two\"}");
  expect_error_naming([&] { load_clip_tokenizer(not_ids); }, {"vocab.json", "'b'"});

  fs::path bad_merge = base / "bad_merge";
  copy_folder(source, bad_merge);
  write_file(bad_merge / "merges.txt", "#version: 0.2\ni n\nt h e\n");
  expect_error_naming([&] { load_clip_tokenizer(bad_merge); }, {"merges.txt:3", "two symbols"});

  fs::path bad_config = base / "bad_config";
  copy_folder(source, bad_config);
  write_file(bad_config / "tokenizer_config.json", "{\"model_max_length\": 1e30}");
  expect_error_naming([&] { load_clip_tokenizer(bad_config); }, {"tokenizer_config.json", "model_max_length"});
}

TEST(Tokenizer, BertErrorsNameTheFile) {
  fs::path base = test::temp_dir("tokenizer_bert_errors");
  fs::path no_vocab = base / "no_vocab";
  copy_folder(test::fixture("tiny-bert/tokenizer"), no_vocab);
  fs::remove(no_vocab / "vocab.txt");
  expect_error_naming([&] { load_bert_tokenizer(no_vocab); }, {"vocab.txt"});

  fs::path bad_option = base / "bad_option";
  copy_folder(test::fixture("tiny-bert/tokenizer"), bad_option);
  write_file(bad_option / "tokenizer_config.json", "{\"do_lower_case\": \"yes\"}");
  expect_error_naming([&] { load_bert_tokenizer(bad_option); }, {"tokenizer_config.json", "do_lower_case"});
}

TEST(Tokenizer, UnknownTokenizerClassNamesModelIndex) {
  fs::path base = test::temp_dir("tokenizer_class");
  for (std::string class_name : {"CLIPTokenizerFast", "T5Tokenizer"}) {
    fs::path root = base / class_name;
    fs::create_directories(root);
    fs::copy(test::fixture("tiny-clip/tokenizer"), root / "tokenizer", fs::copy_options::recursive);
    write_file(root / "model_index.json",
               "{\"_class_name\": \"StableDiffusionPipeline\", \"tokenizer\": [\"transformers\", \"" + class_name +
                   "\"]}");
    expect_error_naming([&] { load_tokenizer(ModelFolder::open(root)); }, {"model_index.json", class_name});
  }
}

// Prints the speed; asserts only values (a timed assertion fails on a loaded or sanitized machine, and
// speed belongs to benchmarks).
TEST(Tokenizer, LoadsAndEncodesRepeatedly) {
  auto start = std::chrono::steady_clock::now();
  auto clip = load_clip_tokenizer(test::fixture("tiny-clip/tokenizer"));
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::string prompt = "masterpiece, best quality, 小桥流水人家，古风少女，长发，汉服，a painting in the style of "
                       "清明上河图, highly detailed, trending on artstation, 8k";
  ASSERT_GE(clip->encode(prompt).content_tokens, 60u);
  constexpr int kRuns = 200;
  start = std::chrono::steady_clock::now();
  size_t total = 0;
  for (int i = 0; i < kRuns; ++i) total += clip->encode(prompt).ids.size();
  double encode_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kRuns;
  EXPECT_EQ(total, kRuns * 77u);
  std::printf("CLIP tokenizer: load %.1f ms, encode %.3f ms per 77-token prompt\n", load_ms, encode_ms);
}

}  // namespace
}  // namespace taiyi
