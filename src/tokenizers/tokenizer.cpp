// Tokenizers exact to transformers 4.57's slow CLIPTokenizer and BertTokenizer, as diffusers'
// StableDiffusionPipeline calls them: tokenizer(text, padding="max_length",
// max_length=model_max_length, truncation=True). This file holds what taiyi/tokenizers/tokenizer.h
// declares beyond the two tokenizers: load_tokenizer, which picks one from model_index.json, and the
// unicode:: helpers for the prompt parser. The room, by the transformers file each part ports:
//   tokenization_utils.{h,cpp}  PreTrainedTokenizer: added and special tokens, loading, the shared encode
//   tokenization_bert.{h,cpp}   BasicTokenizer (CLIP uses it too) and BertTokenizer (WordPiece)
//   tokenization_clip.cpp       CLIPTokenizer (byte-level BPE)
//   unicode.{h,cpp}             Python's Unicode answers (unicodedata 14.0, str.lower, str.isspace and the
//                               regex module's classes) from unicode_tables.inc (tools/gen_unicode_tables.py)
// Plain C++: no torch here.
#include "taiyi/tokenizers/tokenizer.h"

#include <string>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/utils/error.h"
#include "tokenizers/unicode.h"

namespace taiyi {

namespace unicode {
std::u32string from_utf8(const std::string& text) { return tokenizers::decode_utf8(text); }
std::string to_utf8(const std::u32string& text) { return tokenizers::encode_utf8(text); }
bool is_space(char32_t c) { return tokenizers::is_python_space(c); }
bool is_word(char32_t c) {
  return c == U'_' || tokenizers::has(c, tokenizers::kRegexLetter) || tokenizers::has(c, tokenizers::kRegexNumber);
}
}  // namespace unicode

std::unique_ptr<Tokenizer> load_tokenizer(const ModelFolder& folder, const std::string& component) {
  // A single file's tokenizers are built in (CLIP ViT-L/14's BPE, bert-base-chinese's WordPiece; SDXL's two).
  if (folder.builtin_configs() && folder.is_sdxl()) return builtin_sdxl_tokenizer(component);
  if (folder.builtin_configs()) return builtin_tokenizer(folder.text_encoder_kind());
  std::string class_name = folder.class_name(component);
  if (class_name == "CLIPTokenizer") return load_clip_tokenizer(folder.component_dir(component));
  if (class_name == "BertTokenizer") return load_bert_tokenizer(folder.component_dir(component));
  std::string why = "taiyi implements the slow CLIPTokenizer and BertTokenizer";
  if (class_name == "CLIPTokenizerFast" || class_name == "BertTokenizerFast")
    why += " (the fast tokenizers normalise text differently, e.g. they do not split Chinese characters)";
  throw Error(folder.index_path().string() + ": " + component + " class '" + class_name +
              "' is not supported: " + why);
}

}  // namespace taiyi
