// SDXL's two tokenizers against transformers' slow CLIPTokenizer (tests/reference/sdxl_tokenizer.py):
// Taiyi-XL's folders (8067 added tokens from added_tokens.json, split out before BPE; model_max_length 512),
// plain SDXL's (tokenizer_2 pads with "!", id 0) and a Taiyi-XL folder with multi-character added tokens,
// each as encode() and as the web UI's tokenize() (content ids and the comma flags of the chunking rule).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/utils/json.h"
#include "test_util.h"

namespace taiyi {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const Json& golden() {
  static const Json json = read_json_file(test::fixture("ref/sdxl_tokenizer.json"));
  return json;
}

// The text with non-ASCII and control bytes escaped, cut at 120 bytes, for failure messages.
std::string shown(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= 120) return out + "...";
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    }
  }
  return out;
}

template <typename T>
std::string join(const std::vector<T>& values) {
  std::ostringstream out;
  for (size_t i = 0; i < values.size(); ++i) out << (i ? " " : "") << values[i];
  return out.str();
}

// Every text of the golden set `name`: encode()'s ids and counts, tokenize()'s ids, token strings and commas.
void expect_set_matches(const std::string& name) {
  SCOPED_TRACE(name);
  const Json& set = golden()["sets"][name];
  const Json& texts = golden()["texts"];
  auto tokenizer = load_clip_tokenizer(test::fixture(set["dir"].get<std::string>()));
  ASSERT_EQ(tokenizer->max_length(), set["model_max_length"].get<size_t>());
  EXPECT_EQ(tokenizer->vocab_size(), set["vocab_size"].get<size_t>());
  EXPECT_EQ(tokenizer->kind(), "CLIPTokenizer");
  ASSERT_EQ(set["encode"].size(), texts.size());
  size_t differ = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i];
    const Encoding e = tokenizer->encode(text);
    const TextTokens t = tokenizer->tokenize(text);
    const auto want_ids = set["encode"][i].get<std::vector<int64_t>>();
    const auto want_content = set["content"][i].get<std::vector<int64_t>>();
    const auto want_commas = set["commas"][i].get<std::vector<bool>>();
    std::vector<std::string> tokens;
    for (int64_t id : t.ids) tokens.push_back(tokenizer->token(id));
    const bool same = e.ids == want_ids && t.ids == want_content && t.commas == want_commas &&
                      tokens == set["tokens"][i].get<std::vector<std::string>>() &&
                      e.content_tokens == want_content.size() &&
                      e.kept_tokens == std::min(want_content.size(), tokenizer->max_length() - 2);
    if (!same && ++differ <= 5)
      ADD_FAILURE() << "text " << i << " \"" << shown(text) << "\"\n  content expected " << join(want_content)
                    << "\n  content actual   " << join(t.ids) << "\n  commas expected " << join(want_commas)
                    << "\n  commas actual   " << join(t.commas) << "\n  encode equal: " << (e.ids == want_ids);
  }
  EXPECT_EQ(differ, 0u) << differ << " of " << texts.size() << " texts differ";
  std::printf("%s: %zu texts, %zu differ\n", name.c_str(), texts.size(), differ);
}

TEST(TokenizerSdxl, TaiyiXlTokenizersMatchTransformers) {
  expect_set_matches("tiny-taiyi-xl/tokenizer");
  expect_set_matches("tiny-taiyi-xl/tokenizer_2");
}

TEST(TokenizerSdxl, PlainSdxlTokenizersMatchTransformers) {
  expect_set_matches("tiny-sdxl/tokenizer");
  expect_set_matches("tiny-sdxl/tokenizer_2");
}

TEST(TokenizerSdxl, MultiCharacterAddedTokensTakeTheLongestMatch) { expect_set_matches("taiyi-xl-multichar"); }

// Independent of the harness: each entry of added_tokens.json is its own id, whole; the 600-character prompt
// keeps 510; the pad id is the pad token's ("<|endoftext|>" for Taiyi-XL, "!" = 0 for SDXL's tokenizer_2).
TEST(TokenizerSdxl, AddedTokensAreWholeAndPaddingUsesThePadId) {
  const fs::path dir = test::fixture("tiny-taiyi-xl/tokenizer_2");
  auto tokenizer = load_clip_tokenizer(dir);
  const Json added = read_json_file(dir / "added_tokens.json");
  ASSERT_EQ(added.size(), 8067u);
  size_t wrong = 0;
  for (const auto& item : added.items()) {
    const std::vector<int64_t> want = {item.value().get<int64_t>()};
    const std::vector<int64_t> ids = tokenizer->tokenize(item.key()).ids;
    if (ids != want && ++wrong <= 5) ADD_FAILURE() << "'" << item.key() << "': " << join(ids) << ", want " << want[0];
    EXPECT_EQ(tokenizer->token(want[0]), item.key());
  }
  EXPECT_EQ(wrong, 0u);
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += "一只猫";
  const Encoding e = tokenizer->encode(long_text);
  EXPECT_EQ(e.content_tokens, 600u);
  EXPECT_EQ(e.kept_tokens, 510u);
  EXPECT_EQ(e.ids.size(), 512u);
  EXPECT_EQ(e.ids.back(), 49407);
  EXPECT_EQ(tokenizer->encode("猫").ids.back(), 49407);  // padded with <|endoftext|>

  auto sdxl_2 = load_clip_tokenizer(test::fixture("tiny-sdxl/tokenizer_2"));
  const Encoding cat = sdxl_2->encode("a cat");
  EXPECT_EQ(std::vector<int64_t>(cat.ids.begin(), cat.ids.begin() + 4), (std::vector<int64_t>{49406, 320, 2368, 49407}));
  EXPECT_EQ(cat.ids[4], 0);
  EXPECT_EQ(cat.ids.back(), 0);
  EXPECT_EQ(golden()["sets"]["tiny-sdxl/tokenizer_2"]["pad_token_id"].get<int64_t>(), 0);
}

// Prints the load time of the Taiyi-XL-shaped folder and of one with 8 times as many added tokens (linear,
// not quadratic, in their number); asserts only values, as the other speed tests do.
TEST(TokenizerSdxl, LoadTimeGrowsLinearlyWithAddedTokens) {
  const fs::path taiyi = test::fixture("tiny-taiyi-xl/tokenizer");
  auto time_load = [](const fs::path& dir, size_t expected_vocab) {
    const auto start = std::chrono::steady_clock::now();
    auto tokenizer = load_clip_tokenizer(dir);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(tokenizer->vocab_size(), expected_vocab);
    return ms;
  };
  const double plain_ms = time_load(test::fixture("tiny-sdxl/tokenizer"), 49408);
  const double taiyi_ms = time_load(taiyi, 57475);
  // 64536 added tokens: the 8067 CJK ones and "w<n>z" words (multi-character, so the trie is deep too).
  const fs::path big = test::temp_dir("tokenizer_sdxl_many_added");
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(taiyi / name, big / name, fs::copy_options::overwrite_existing);
  Json added = read_json_file(taiyi / "added_tokens.json");
  for (int64_t id = 57475; id < 49408 + 8 * 8067; ++id) added["w" + std::to_string(id) + "z"] = id;
  std::ofstream(big / "added_tokens.json") << added.dump();
  const double big_ms = time_load(big, 49408 + 8 * 8067);
  // A word's prefix that no added token ends ("w60000") falls back to byte-level BPE.
  std::vector<int64_t> want = {60000, added["猫"].get<int64_t>()};
  for (int64_t id : load_clip_tokenizer(taiyi)->tokenize("w60000").ids) want.push_back(id);
  EXPECT_EQ(load_clip_tokenizer(big)->tokenize("w60000z猫w60000").ids, want);
  std::printf("CLIP tokenizer load: plain %.1f ms, Taiyi-XL (8067 added) %.1f ms, 64536 added %.1f ms\n", plain_ms,
              taiyi_ms, big_ms);
}

}  // namespace
}  // namespace taiyi
