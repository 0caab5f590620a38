// What the slow tokenizers share, from transformers' tokenization_utils.py and tokenization_utils_base.py
// (PreTrainedTokenizer): the added tokens and their trie; loading them, the special tokens and
// model_max_length from tokenizer_config.json / special_tokens_map.json / added_tokens.json as
// from_pretrained does; and the shared encode (tokenize, convert, truncate, add specials, pad) in
// SlowTokenizer, the base class of CLIPTokenizer (tokenization_clip.cpp) and BertTokenizer
// (tokenization_bert.cpp). Private to src/tokenizers/. Plain C++: no torch here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi::tokenizers {

// =============================================================================================
// Added tokens (PreTrainedTokenizer: special tokens written literally in the text)
// =============================================================================================

struct AddedToken {
  std::u32string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// transformers' Trie (tokenization_utils.py), ported statement by statement: its longest-match
// lookahead has quirks that a textbook Aho-Corasick would not reproduce.
class Trie {
 public:
  Trie() : nodes_(1) {}

  void add(const std::u32string& word);
  std::vector<std::u32string> split(const std::u32string& text) const;

 private:
  struct Node {
    std::map<char32_t, int> children;
    bool terminal = false;
  };
  using State = std::pair<size_t, int>;  // a partial match: (start, node)
  int child(int node, char32_t c) const {
    auto it = nodes_[node].children.find(c);
    return it == nodes_[node].children.end() ? -1 : it->second;
  }
  std::pair<size_t, size_t> longest_match(const std::u32string& text, const std::vector<State>& states, size_t start,
                                          size_t current, size_t& skip) const;
  static std::vector<std::u32string> cut_text(const std::u32string& text, std::vector<size_t> offsets);
  std::vector<Node> nodes_;
};

// One piece of the text after the added tokens are split out.
struct Piece {
  std::u32string text;
  std::optional<int64_t> added_id;  // set when the piece is an added token
};

// The added-token state of a PreTrainedTokenizer after from_pretrained: _added_tokens_decoder,
// _added_tokens_encoder, the special-token attributes and the trie.
class AddedVocabulary {
 public:
  std::map<int64_t, AddedToken> decoder;
  std::unordered_map<std::u32string, int64_t> encoder;
  std::vector<std::u32string> all_special_tokens;     // attribute order, unique
  std::map<std::string, std::u32string> special_by_attribute;  // "bos_token" -> content
  Trie trie;

  std::unordered_map<std::string, int64_t> encoder_utf8;  // the same, keyed by UTF-8

  std::optional<int64_t> find_utf8(const std::string& content) const;
  std::optional<int64_t> find(const std::u32string& content) const;

  // PreTrainedTokenizer.tokenize up to _tokenize: lower-casing outside the special tokens (only
  // for tokenizers with a do_lower_case attribute: BERT), the trie split and the lstrip / rstrip /
  // single_word rules of the added tokens.
  std::vector<Piece> split(std::u32string text, bool lower_case_outside_specials) const;

 private:
  std::u32string lower_outside_specials(const std::u32string& text) const;
};

// =============================================================================================
// Loading: tokenizer_config.json, special_tokens_map.json, added_tokens.json
// =============================================================================================

struct TokenizerSettings {
  Config config;  // tokenizer_config.json (empty when absent)
  size_t max_length = 0;
  bool truncate_left = false;
  bool pad_left = false;
  AddedVocabulary added;
};

// What PreTrainedTokenizerBase._from_pretrained and PreTrainedTokenizer.__init__ do with the
// added and special tokens of `files` (tokenizer_config.json, special_tokens_map.json, added_tokens.json).
// `defaults` are the constructor's special-token defaults;
// `wrap_as_added_token` the attributes whose string the constructor wraps in an AddedToken
// (CLIP: bos, eos, unk). `vocab_id` finds a content in the model's vocabulary; `vocab_keys` is the
// number of distinct tokens in it.
TokenizerSettings load_settings(const TokenizerFiles& files, size_t default_max_length,
                                const std::map<std::string, std::string>& defaults,
                                const std::vector<std::string>& wrap_as_added_token,
                                const std::function<std::optional<int64_t>(const std::string&)>& vocab_id,
                                const std::function<size_t()>& vocab_keys);

// A tokenizer folder read into memory: <dir>/<vocab_file> and, when given, <dir>/<merges_file> (an Error
// naming the file and its role when one is missing), and those of the JSON files that exist.
TokenizerFiles read_tokenizer_files(const std::filesystem::path& dir, const char* vocab_file, const char* vocab_role,
                                    const char* merges_file = nullptr, const char* merges_role = nullptr);

// Universal-newline line split, as Python's text mode reads files (\r\n, \r and \n end a line).
std::vector<std::string> split_lines(std::string_view text);

// =============================================================================================
// The shared encode: tokenize, convert, truncate, add specials, pad
// =============================================================================================

class SlowTokenizer : public Tokenizer {
 public:
  Encoding encode(const std::string& utf8_text) const override;
  TextTokens tokenize(const std::string& utf8_text) const override;
  std::vector<int64_t> wrap(const std::vector<int64_t>& content, std::vector<double>* weights) const override;
  std::string token(int64_t id) const override { return id_to_token(id); }
  size_t max_length() const override { return settings_.max_length; }
  size_t vocab_size() const override;
  std::vector<int64_t> add_embedding_tokens(const std::string& name, size_t vectors) override;

 protected:
  // The model vocabulary (without added tokens): a token's id, and the number of entries.
  virtual std::optional<int64_t> vocab_lookup(const std::string& token) const = 0;
  virtual size_t vocab_count() const = 0;
  // _tokenize followed by convert_tokens_to_ids, for a piece that is not an added token; appends to
  // `commas` (kept as long as ids) whether each id ends a comma.
  virtual void tokenize_piece(const std::u32string& piece, std::vector<int64_t>& ids, std::vector<bool>* commas) const = 0;
  virtual std::string vocab_token(int64_t id) const = 0;

  // convert_ids_to_tokens: the added-token content, else the vocabulary's string.
  std::string id_to_token(int64_t id) const;

  int64_t special_id(const char* attribute, const std::unordered_map<std::string, int64_t>& vocab,
                     std::optional<int64_t> unk) const;

  std::filesystem::path dir_;
  TokenizerSettings settings_;
  bool lower_case_outside_specials_ = false;
  int64_t first_id_ = 0, last_id_ = 0, pad_id_ = 0;
  std::unordered_map<int64_t, std::vector<int64_t>> expansions_;  // a multi-vector embedding's first id -> all
};

}  // namespace taiyi::tokenizers
