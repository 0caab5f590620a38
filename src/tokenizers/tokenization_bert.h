// BERT's BasicTokenizer (transformers/models/bert/tokenization_bert.py), which the BertTokenizer of
// tokenization_bert.cpp runs before WordPiece and which CLIPTokenizer, without ftfy, runs to normalise
// its text (transformers keeps a copy of it in tokenization_clip.py). Private to src/tokenizers/.
// Plain C++: no torch here.
#pragma once

#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace taiyi::tokenizers {

struct BasicTokenizer {
  bool do_lower_case = true;
  std::unordered_set<std::u32string> never_split;
  bool tokenize_chinese_chars = true;
  std::optional<bool> strip_accents;  // None: follows do_lower_case
  bool do_split_on_punc = true;

  static bool is_chinese_char(char32_t cp);
  // transformers' _is_punctuation: all non-alphanumeric ASCII, and category P*.
  static bool is_punctuation(char32_t cp);

  // _clean_text and _tokenize_chinese_chars in one pass, then NFC, the split into words, lower-casing,
  // accent stripping and the punctuation split.
  std::vector<std::u32string> tokenize(const std::u32string& text,
                                       const std::unordered_set<std::u32string>* extra_never_split) const;

  static std::u32string run_strip_accents(const std::u32string& token);
  static void run_split_on_punc(const std::u32string& token, std::vector<std::u32string>& out);
};

}  // namespace taiyi::tokenizers
