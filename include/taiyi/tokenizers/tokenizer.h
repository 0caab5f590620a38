// Tokenizers exact to transformers' slow CLIPTokenizer and BertTokenizer as diffusers'
// StableDiffusionPipeline loads them (transformers 4.57, no ftfy installed): the ids that the
// pipeline passes to the text encoder, padded to model_max_length.
//
//   auto tok = taiyi::load_tokenizer(folder);        // picks CLIP or BERT from model_index.json
//   taiyi::Encoding e = tok->encode("小桥流水人家");  // e.ids.size() == tok->max_length()
//
// No torch here: the tokenizers are plain C++.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace taiyi {

class ModelFolder;

struct Encoding {
  std::vector<int64_t> ids;         // [BOS/CLS] + content + [EOS/SEP] + padding, max_length long
  std::vector<std::string> tokens;  // the token string of each id (same length as ids)
  size_t content_tokens = 0;        // content tokens before truncation (no specials)
  size_t kept_tokens = 0;           // content tokens kept after truncation
  bool truncated() const { return kept_tokens < content_tokens; }
};

// A text's content tokens: no specials, no padding, no truncation (the web UI tokenizes each prompt
// fragment this way, with add_special_tokens=False, truncation=False).
struct TextTokens {
  std::vector<int64_t> ids;
  std::vector<bool> commas;  // per id: it ends a comma ("," and, for the chunking rule, "，" and "、")
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True).
  virtual Encoding encode(const std::string& utf8_text) const = 0;
  virtual TextTokens tokenize(const std::string& utf8_text) const = 0;
  // max_length ids from at most max_length - 2 content ids, laid out as encode() lays them out
  // (specials, padding on the tokenizer's side). `weights`, when given, holds one weight per content id
  // and comes back aligned with the ids, 1 for the specials and the padding.
  virtual std::vector<int64_t> wrap(const std::vector<int64_t>& content, std::vector<double>* weights = nullptr) const = 0;
  virtual std::string token(int64_t id) const = 0;  // convert_ids_to_tokens
  // convert_tokens_to_string of the ids' tokens: readable text (CLIP's byte-level tokens joined back
  // into characters, BERT's "##" pieces into words).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual size_t max_length() const = 0;  // model_max_length from tokenizer_config.json
  // len(tokenizer): the vocabulary's tokens plus the added ones (ids of new tokens start here).
  virtual size_t vocab_size() const = 0;
  // diffusers' load_textual_inversion: tokens NAME, NAME_1, ..., NAME_{vectors-1} added as
  // tokenizer.add_tokens adds them (non-special, normalized; lower-cased for do_lower_case tokenizers),
  // ids from vocab_size(); NAME in a text then stands for all of them (maybe_convert_prompt). Error when
  // one of them is a token already. Returns the new ids.
  virtual std::vector<int64_t> add_embedding_tokens(const std::string& name, size_t vectors) = 0;
  virtual std::string kind() const = 0;   // "CLIPTokenizer" or "BertTokenizer"
};

// CLIP byte-level BPE from <dir>/vocab.json and merges.txt; special tokens and model_max_length
// from tokenizer_config.json / special_tokens_map.json.
std::unique_ptr<Tokenizer> load_clip_tokenizer(const std::filesystem::path& dir);
// BERT WordPiece from <dir>/vocab.txt; options from tokenizer_config.json.
std::unique_ptr<Tokenizer> load_bert_tokenizer(const std::filesystem::path& dir);
// A tokenizer folder's files held in memory, for models that come without one (single-file checkpoints,
// whose tokenizers are built in: taiyi/loaders/single_file_configs.h). Parsed as the files would be;
// `dir` stands for the folder in messages ("<dir>/vocab.json: ...").
struct TokenizerFiles {
  std::filesystem::path dir;
  std::string vocab;   // the bytes of vocab.json (CLIP) or vocab.txt (BERT)
  std::string merges;  // the bytes of merges.txt (CLIP)
  // tokenizer_config.json, special_tokens_map.json, added_tokens.json; null where the file is absent.
  nlohmann::json tokenizer_config, special_tokens_map, added_tokens;
};
std::unique_ptr<Tokenizer> load_clip_tokenizer(const TokenizerFiles& files);
std::unique_ptr<Tokenizer> load_bert_tokenizer(const TokenizerFiles& files);
// files.vocab and files.merges as openai/clip-vit-large-patch14 has them, derived from OpenAI's
// bpe_simple_vocab_16e6.txt as its vocab.json / merges.txt were: the 256 byte symbols, the same with
// "</w>", the first 48894 merges joined, then <|startoftext|> and <|endoftext|> (49408 tokens).
void derive_clip_vocab(std::string_view bpe_simple_vocab, TokenizerFiles& files);
// The tokenizer named in model_index.json for `component` ("tokenizer", or SDXL's "tokenizer_2").
std::unique_ptr<Tokenizer> load_tokenizer(const ModelFolder& folder, const std::string& component = "tokenizer");

// Characters as Python sees them (the tables of tools/gen_unicode_tables.py), for the prompt parser.
namespace unicode {
std::u32string from_utf8(const std::string& text);  // invalid bytes become U+FFFD
std::string to_utf8(const std::u32string& text);
bool is_space(char32_t c);  // str.isspace(), re's \s
bool is_word(char32_t c);   // re's \w: letters, numbers and '_'
}  // namespace unicode

}  // namespace taiyi
