// BERT's slow tokenizer and its BasicTokenizer, ported from transformers/models/bert/tokenization_bert.py (4.57):
// BasicTokenizer (clean-up, Chinese characters, lower-casing, accents, punctuation; CLIPTokenizer runs
// it too) and BertTokenizer (BasicTokenizer, then greedy longest-match WordPiece on vocab.txt), as
// load_bert_tokenizer hands it out; the shared encode is SlowTokenizer's (tokenization_utils.cpp).
// Plain C++: no torch here.
#include "tokenizers/tokenization_bert.h"

#include <memory>
#include <unordered_map>
#include <utility>

#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/utils/error.h"
#include "tokenizers/tokenization_utils.h"
#include "tokenizers/unicode.h"

namespace taiyi {

namespace fs = std::filesystem;

namespace tokenizers {

// =============================================================================================
// BasicTokenizer (transformers/models/bert/tokenization_bert.py; CLIP uses a copy of it)
// =============================================================================================

bool BasicTokenizer::is_chinese_char(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
         (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool BasicTokenizer::is_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
    return true;
  return has(cp, kPunctuation);
}

std::vector<std::u32string> BasicTokenizer::tokenize(
    const std::u32string& text, const std::unordered_set<std::u32string>* extra_never_split) const {
  std::u32string cleaned;
  cleaned.reserve(text.size() + 8);
  for (char32_t c : text) {
    bool tab_or_newline = c == U'\t' || c == U'\n' || c == U'\r';
    uint16_t bits = properties(c);
    if (c == 0 || c == 0xFFFD || (!tab_or_newline && (bits & kControl))) continue;
    if (c == U' ' || tab_or_newline || (bits & kSpaceSeparator)) {
      cleaned += U' ';
    } else if (tokenize_chinese_chars && is_chinese_char(c)) {
      cleaned += U' ';
      cleaned += c;
      cleaned += U' ';
    } else {
      cleaned += c;
    }
  }
  auto in_never_split = [&](const std::u32string& token) {
    return never_split.count(token) || (extra_never_split && extra_never_split->count(token));
  };
  std::vector<std::u32string> split_tokens;
  for (std::u32string& token : python_split(nfc(cleaned))) {
    if (!in_never_split(token)) {
      if (do_lower_case) {
        token = python_lower(token);
        if (strip_accents != false) token = run_strip_accents(token);
      } else if (strip_accents == true) {
        token = run_strip_accents(token);
      }
    }
    if (!do_split_on_punc || in_never_split(token)) split_tokens.push_back(std::move(token));
    else run_split_on_punc(token, split_tokens);
  }
  return python_split(join_with_spaces(split_tokens));
}

std::u32string BasicTokenizer::run_strip_accents(const std::u32string& token) {
  std::u32string out;
  for (char32_t c : nfd(token))
    if (!has(c, kNonspacingMark)) out += c;
  return out;
}

void BasicTokenizer::run_split_on_punc(const std::u32string& token, std::vector<std::u32string>& out) {
  bool start_new_word = true;
  for (char32_t c : token) {
    if (is_punctuation(c)) {
      out.emplace_back(1, c);
      start_new_word = true;
    } else {
      if (start_new_word) out.emplace_back();
      start_new_word = false;
      out.back() += c;
    }
  }
}

namespace {

// =============================================================================================
// BertTokenizer (transformers/models/bert/tokenization_bert.py)
// =============================================================================================

class BertTokenizer final : public SlowTokenizer {
 public:
  explicit BertTokenizer(const TokenizerFiles& files) {
    dir_ = files.dir;
    // load_vocab: line index -> token (rstrip("\n") only); a repeated token keeps its last index.
    std::vector<std::string> lines = split_lines(files.vocab);
    for (size_t i = 0; i < lines.size(); ++i) vocab_[lines[i]] = static_cast<int64_t>(i);
    for (const auto& [token, id] : vocab_) vocab_by_id_[id] = token;

    settings_ = load_settings(
        files, 512,
        {{"unk_token", "[UNK]"}, {"sep_token", "[SEP]"}, {"pad_token", "[PAD]"}, {"cls_token", "[CLS]"},
         {"mask_token", "[MASK]"}},
        {},
        [this](const std::string& s) -> std::optional<int64_t> {
          auto it = vocab_.find(s);
          if (it == vocab_.end()) return std::nullopt;
          return it->second;
        },
        [this] { return vocab_.size(); });
    const Config& config = settings_.config;
    basic_.do_lower_case = config.get_bool("do_lower_case", true);
    do_basic_tokenize_ = config.get_bool("do_basic_tokenize", true);
    basic_.tokenize_chinese_chars = config.get_bool("tokenize_chinese_chars", true);
    if (config.has("strip_accents")) basic_.strip_accents = config.get_bool("strip_accents");
    if (config.has("never_split"))
      for (const std::string& token : config.get_string_list("never_split"))
        basic_.never_split.insert(decode_utf8(token));
    // PreTrainedTokenizer.tokenize lowers the text outside the special tokens first, because a
    // BertTokenizer has a do_lower_case attribute (its basic tokenizer's).
    // (Without basic tokenization the attribute does not exist.)
    lower_case_outside_specials_ = do_basic_tokenize_ && basic_.do_lower_case;
    for (const auto& token : settings_.added.all_special_tokens) special_never_split_.insert(token);

    auto unk = settings_.added.special_by_attribute.find("unk_token");
    if (unk != settings_.added.special_by_attribute.end()) {
      unk_token_ = encode_utf8(unk->second);
      auto v = vocab_.find(unk_token_);
      if (v != vocab_.end()) unk_id_ = v->second;
    }
    first_id_ = special_id("cls_token", vocab_, unk_id_);
    last_id_ = special_id("sep_token", vocab_, unk_id_);
    pad_id_ = special_id("pad_token", vocab_, unk_id_);
    for (const char* comma : {",", "\uFF0C", "\u3001"})
      if (auto it = vocab_.find(comma); it != vocab_.end()) comma_ids_.insert(it->second);
  }

  std::string kind() const override { return "BertTokenizer"; }

  // convert_tokens_to_string: " ".join(tokens).replace(" ##", "").strip().
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    for (int64_t id : ids) {
      const std::string token = id_to_token(id);
      if (token.rfind("##", 0) == 0 && !text.empty()) text += token.substr(2);
      else text += (text.empty() ? "" : " ") + token;
    }
    return text;
  }

 private:
  std::optional<int64_t> vocab_lookup(const std::string& token) const override {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  size_t vocab_count() const override { return vocab_.size(); }

  std::string vocab_token(int64_t id) const override {
    auto it = vocab_by_id_.find(id);
    return it == vocab_by_id_.end() ? unk_token_ : it->second;
  }

  int64_t token_to_id(const std::string& token) const {
    if (auto id = settings_.added.find_utf8(token)) return *id;
    auto it = vocab_.find(token);
    if (it != vocab_.end()) return it->second;
    if (unk_id_) return *unk_id_;
    throw Error((dir_ / "vocab.txt").string() + ": token '" + token + "' and the unk_token are not in the vocabulary");
  }

  void tokenize_piece(const std::u32string& piece, std::vector<int64_t>& ids, std::vector<bool>* commas) const override {
    const size_t first = ids.size();
    if (!do_basic_tokenize_) {
      wordpiece(piece, ids);
    } else {
      for (const std::u32string& token : basic_.tokenize(piece, &special_never_split_)) {
        if (basic_.never_split.count(token)) ids.push_back(token_to_id(encode_utf8(token)));
        else wordpiece(token, ids);
      }
    }
    // Punctuation is split off into tokens of its own: ",", "，" and "、" are commas.
    if (commas)
      for (size_t i = first; i < ids.size(); ++i) commas->push_back(comma_ids_.count(ids[i]) > 0);
  }

  // WordpieceTokenizer.tokenize: greedy longest match, "##" on continuations; a word over 100
  // characters, or with any position unmatched, becomes one unk_token.
  void wordpiece(const std::u32string& text, std::vector<int64_t>& ids) const {
    constexpr size_t kMaxInputCharsPerWord = 100;
    for (const std::u32string& token : python_split(text)) {
      if (token.size() > kMaxInputCharsPerWord) {
        ids.push_back(token_to_id(unk_token_));
        continue;
      }
      std::vector<size_t> offsets;  // byte offset of each code point, and the end
      std::string bytes;
      for (char32_t c : token) {
        offsets.push_back(bytes.size());
        append_utf8(c, bytes);
      }
      offsets.push_back(bytes.size());
      std::vector<int64_t> pieces;
      bool is_bad = false;
      std::string candidate;
      for (size_t start = 0; start < token.size();) {
        size_t end = token.size();
        std::optional<int64_t> found;
        for (; start < end; --end) {
          candidate.assign(start > 0 ? "##" : "");
          candidate.append(bytes, offsets[start], offsets[end] - offsets[start]);
          if (vocab_.count(candidate)) {
            found = token_to_id(candidate);
            break;
          }
        }
        if (!found) {
          is_bad = true;
          break;
        }
        pieces.push_back(*found);
        start = end;
      }
      if (is_bad) ids.push_back(token_to_id(unk_token_));
      else ids.insert(ids.end(), pieces.begin(), pieces.end());
    }
  }

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> vocab_by_id_;
  std::string unk_token_ = "[UNK]";
  std::optional<int64_t> unk_id_;
  bool do_basic_tokenize_ = true;
  BasicTokenizer basic_;
  std::unordered_set<std::u32string> special_never_split_;
  std::unordered_set<int64_t> comma_ids_;
};

}  // namespace

}  // namespace tokenizers

std::unique_ptr<Tokenizer> load_bert_tokenizer(const TokenizerFiles& files) {
  return std::make_unique<tokenizers::BertTokenizer>(files);
}

std::unique_ptr<Tokenizer> load_bert_tokenizer(const fs::path& dir) {
  return load_bert_tokenizer(
      tokenizers::read_tokenizer_files(dir, "vocab.txt", "the BERT tokenizer's WordPiece vocabulary"));
}

}  // namespace taiyi
