// CLIP's slow tokenizer, ported from transformers/models/clip/tokenization_clip.py (transformers 4.57):
// byte-level BPE on vocab.json and merges.txt, as load_clip_tokenizer hands it out. Without ftfy (not a
// dependency of diffusers or transformers), CLIPTokenizer normalises text with BERT's BasicTokenizer
// (tokenization_bert.cpp), so Chinese ideographs become one word each; then the regex module's
// pre-tokenisation pattern and the merges. The shared encode is SlowTokenizer's (tokenization_utils.cpp).
// Plain C++: no torch here.
#include <algorithm>
#include <array>
#include <functional>
#include <memory>
#include <queue>
#include <unordered_map>
#include <utility>

#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/utils/error.h"
#include "tokenizers/tokenization_bert.h"
#include "tokenizers/tokenization_utils.h"
#include "tokenizers/unicode.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace tokenizers {
namespace {

// merge.split(): the symbols of a merges.txt line.
std::vector<std::string> split_ascii_whitespace(const std::string& line) {
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f'; };
  std::vector<std::string> words;
  for (size_t i = 0; i < line.size();) {
    while (i < line.size() && is_space(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    if (i > start) words.emplace_back(line, start, i - start);
  }
  return words;
}

// =============================================================================================
// CLIPTokenizer (transformers/models/clip/tokenization_clip.py)
// =============================================================================================

// bytes_to_unicode(): printable bytes map to themselves, the other 68 to U+0100 onwards.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? char32_t(b) : char32_t(256 + n++);
  }
  return table;
}

class ClipTokenizer final : public SlowTokenizer {
 public:
  explicit ClipTokenizer(const TokenizerFiles& files) {
    dir_ = files.dir;
    load_vocab(files.vocab, files.dir / "vocab.json");
    load_merges(files.merges, files.dir / "merges.txt");

    settings_ = load_settings(
        files, 77,
        {{"unk_token", "<|endoftext|>"}, {"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
         {"pad_token", "<|endoftext|>"}},
        {"bos_token", "eos_token", "unk_token"},
        [this](const std::string& s) -> std::optional<int64_t> {
          auto it = vocab_.find(s);
          if (it == vocab_.end()) return std::nullopt;
          return it->second;
        },
        [this] { return vocab_.size(); });
    // _convert_token_to_id: encoder.get(token, encoder.get(unk_token)).
    if (auto it = settings_.added.special_by_attribute.find("unk_token");
        it != settings_.added.special_by_attribute.end()) {
      auto v = vocab_.find(encode_utf8(it->second));
      if (v != vocab_.end()) unk_id_ = v->second;
    }
    first_id_ = special_id("bos_token", vocab_, unk_id_);
    last_id_ = special_id("eos_token", vocab_, unk_id_);
    pad_id_ = special_id("pad_token", vocab_, unk_id_);

    symbol_ids_.resize(symbols_.size());
    for (size_t i = 0; i < symbols_.size(); ++i) symbol_ids_[i] = token_to_id(symbols_[i]);
    for (const char* special : {"<|startoftext|>", "<|endoftext|>"}) cached_specials_[special] = token_to_id(special);
    if (auto it = vocab_.find(",</w>"); it != vocab_.end()) comma_id_ = it->second;
  }

  std::string kind() const override { return "CLIPTokenizer"; }

  // convert_tokens_to_string: the tokens' byte characters back to bytes, "</w>" a space (specials kept).
  std::string decode(const std::vector<int64_t>& ids) const override {
    static const std::unordered_map<char32_t, char> byte_of = [] {
      std::unordered_map<char32_t, char> table;
      const std::array<char32_t, 256> chars = bytes_to_unicode();
      for (size_t b = 0; b < 256; ++b) table[chars[b]] = static_cast<char>(b);
      return table;
    }();
    std::string bytes;
    for (int64_t id : ids) {
      const std::string token = id_to_token(id);
      if (settings_.added.decoder.count(id)) {
        bytes += token;
        continue;
      }
      std::u32string chars = decode_utf8(token);
      const bool word_end = chars.size() >= 4 && chars.compare(chars.size() - 4, 4, U"</w>") == 0;
      if (word_end) chars.resize(chars.size() - 4);
      for (char32_t c : chars) {
        auto it = byte_of.find(c);
        if (it != byte_of.end()) bytes += it->second;
      }
      if (word_end) bytes += ' ';
    }
    while (!bytes.empty() && bytes.back() == ' ') bytes.pop_back();
    return encode_utf8(decode_utf8(bytes));  // a cut-off character becomes U+FFFD
  }

 private:
  void load_vocab(std::string_view text, const fs::path& path) {
    Json json = parse_json_text(text, path.string());
    if (!json.is_object()) throw Error(path.string() + ": expected a JSON object of token -> id");
    vocab_.reserve(json.size());
    vocab_by_id_.reserve(json.size());
    for (auto it = json.begin(); it != json.end(); ++it) {
      if (!it.value().is_number_integer())
        throw Error(path.string() + ": token " + quoted_name(it.key()) + " = " + json_excerpt(it.value()) + ": expected an integer id");
      int64_t id = it.value().get<int64_t>();
      vocab_.emplace(it.key(), id);
      vocab_by_id_[id] = it.key();
    }
  }

  // merges.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]: the "#version" line is skipped and
  // at most 48894 merges are read (the OpenAI vocabulary size is hard-coded in transformers).
  void load_merges(std::string_view text, const fs::path& path) {
    std::vector<std::string> lines = split_lines(text);
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f'; };
    // .strip() of the whole text: leading blank lines vanish (and with them the line numbers' offset).
    size_t first = 0;
    while (first < lines.size() && std::all_of(lines[first].begin(), lines[first].end(), is_space)) ++first;
    size_t last = lines.size();
    while (last > first && std::all_of(lines[last - 1].begin(), lines[last - 1].end(), is_space)) --last;
    constexpr size_t kMaxMerges = 49152 - 256 - 2;
    const std::array<char32_t, 256> byte_chars = bytes_to_unicode();
    for (size_t i = 0; i < 256; ++i) {
      std::string symbol;
      append_utf8(byte_chars[i], symbol);
      byte_symbol_[i] = intern(symbol);
      byte_symbol_end_[i] = intern(symbol + "</w>");
    }
    merges_.reserve(std::min(kMaxMerges, last - first));
    symbol_index_.reserve(std::min(kMaxMerges, last - first) + 1024);
    symbols_.reserve(std::min(kMaxMerges, last - first) + 1024);
    for (size_t i = first + 1; i < last && i - first <= kMaxMerges; ++i) {
      std::vector<std::string> parts = split_ascii_whitespace(lines[i]);
      if (parts.size() != 2)
        throw Error(path.string() + ":" + std::to_string(i + 1) +
                    ": expected two symbols separated by a space, found " + std::to_string(parts.size()) + " in " +
                    quoted_excerpt(lines[i], 80));
      int32_t a = intern(parts[0]), b = intern(parts[1]);
      int32_t merged = intern(parts[0] + parts[1]);
      // dict(zip(merges, range(...))): a repeated pair keeps its last rank.
      merges_[pair_key(a, b)] = Merge{static_cast<int32_t>(i - first - 1), merged};
    }
  }

  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t intern(const std::string& symbol) {
    auto it = symbol_index_.find(symbol);
    if (it != symbol_index_.end()) return it->second;
    auto id = static_cast<int32_t>(symbols_.size());
    symbol_index_.emplace(symbol, id);
    symbols_.push_back(symbol);
    return id;
  }

  int64_t token_to_id(const std::string& token) const {
    if (auto id = settings_.added.find_utf8(token)) return *id;
    auto it = vocab_.find(token);
    if (it != vocab_.end()) return it->second;
    if (unk_id_) return *unk_id_;
    throw Error((dir_ / "vocab.json").string() + ": token '" + token + "' and the unk_token are not in the vocabulary");
  }

  std::optional<int64_t> vocab_lookup(const std::string& token) const override {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  size_t vocab_count() const override { return vocab_.size(); }

  std::string vocab_token(int64_t id) const override {
    auto it = vocab_by_id_.find(id);
    return it == vocab_by_id_.end() ? std::string() : it->second;
  }

  void tokenize_piece(const std::u32string& piece, std::vector<int64_t>& ids, std::vector<bool>* commas) const override {
    // Without ftfy: " ".join(BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize(text)).
    std::u32string text = join_with_spaces(basic_.tokenize(piece, nullptr));
    // re.findall(pattern, text) with the pattern
    //   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
    // under IGNORECASE, alternatives tried in order at each position.
    size_t n = text.size();
    for (size_t pos = 0; pos < n;) {
      size_t length = 0;
      for (const char* literal : {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
        if (matches_literal(text, pos, literal)) {
          length = std::char_traits<char>::length(literal);
          break;
        }
      }
      if (!length) {
        uint16_t bits = properties(text[pos]);
        if (bits & kRegexLetter) {
          length = 1;
          while (pos + length < n && has(text[pos + length], kRegexLetter)) ++length;
        } else if (bits & kRegexNumber) {
          length = 1;
        } else if (bits & kRegexOther) {
          length = 1;
          while (pos + length < n && has(text[pos + length], kRegexOther)) ++length;
        }
      }
      if (!length) {  // whitespace: no alternative matches here
        ++pos;
        continue;
      }
      const size_t first = ids.size();
      bpe(encode_utf8(text.substr(pos, length)), ids);
      if (commas) {
        // The web UI's comma is the token ",</w>"; a word ending in a full-width comma or an ideographic
        // comma (several byte-level tokens) counts as one too, at its last token.
        for (size_t i = first; i < ids.size(); ++i) commas->push_back(comma_id_ && ids[i] == *comma_id_);
        const char32_t last = text[pos + length - 1];
        if (ids.size() > first && (last == U'\uFF0C' || last == U'\u3001')) commas->back() = true;
      }
      pos += length;
    }
  }

  // A literal of the pattern at text[pos], with the case variants that IGNORECASE allows.
  static bool matches_literal(const std::u32string& text, size_t pos, const char* literal) {
    for (size_t k = 0; literal[k]; ++k, ++pos) {
      if (pos >= text.size()) return false;
      char32_t want = static_cast<unsigned char>(literal[k]), got = text[pos];
      if (got == want) continue;
      if (!is_literal_case_variant(want, got)) return false;
    }
    return true;
  }

  // CLIPTokenizer.bpe on the byte-encoded match; appends the ids of the resulting symbols.
  void bpe(const std::string& token_bytes, std::vector<int64_t>& ids) const {
    // The cache starts with the two specials, which come back whole (no "</w>").
    if (auto it = cached_specials_.find(token_bytes); it != cached_specials_.end()) {
      ids.push_back(it->second);
      return;
    }
    std::vector<int32_t> word;
    word.reserve(token_bytes.size());
    for (size_t i = 0; i < token_bytes.size(); ++i) {
      auto b = static_cast<unsigned char>(token_bytes[i]);
      word.push_back(i + 1 < token_bytes.size() ? byte_symbol_[b] : byte_symbol_end_[b]);
    }
    // Python's loop merges, until no pair has a rank, every occurrence of the lowest-ranked pair, left to
    // right, without overlaps: O(n^2) in the word's length, which a hostile prompt makes a million. The
    // same merges in O(n log n): the symbols as a linked list, every adjacent ranked pair in a min-heap
    // by (rank, position); all entries of the lowest rank are taken at once and applied left to right,
    // skipping those that an earlier merge of the batch (or of an earlier one) has made stale; the new
    // neighbours' pairs go in afterwards, as Python's next pass would find them.
    const int32_t n = static_cast<int32_t>(word.size());
    std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) prev[static_cast<size_t>(i)] = i - 1, next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
    using Entry = std::pair<int32_t, int32_t>;  // (rank, position of the pair's left symbol)
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    auto rank_at = [&](int32_t pos) -> const Merge* {  // the merge of the pair at pos, if any
      if (pos < 0 || word[static_cast<size_t>(pos)] < 0) return nullptr;
      const int32_t right = next[static_cast<size_t>(pos)];
      if (right < 0) return nullptr;
      auto it = merges_.find(pair_key(word[static_cast<size_t>(pos)], word[static_cast<size_t>(right)]));
      return it == merges_.end() ? nullptr : &it->second;
    };
    auto push = [&](int32_t pos) {
      if (const Merge* m = rank_at(pos)) heap.emplace(m->rank, pos);
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    std::vector<int32_t> batch, merged_at;
    while (!heap.empty()) {
      const int32_t rank = heap.top().first;
      batch.clear();
      while (!heap.empty() && heap.top().first == rank) {
        batch.push_back(heap.top().second);
        heap.pop();
      }
      std::sort(batch.begin(), batch.end());  // left to right
      merged_at.clear();
      for (int32_t pos : batch) {
        const Merge* m = rank_at(pos);
        if (!m || m->rank != rank) continue;  // stale: a neighbour merged since
        const auto p = static_cast<size_t>(pos);
        const int32_t right = next[p];
        word[p] = m->merged;
        word[static_cast<size_t>(right)] = -1;
        next[p] = next[static_cast<size_t>(right)];
        if (next[p] >= 0) prev[static_cast<size_t>(next[p])] = pos;
        merged_at.push_back(pos);
      }
      for (int32_t pos : merged_at) {
        if (word[static_cast<size_t>(pos)] < 0) continue;
        push(prev[static_cast<size_t>(pos)]);
        push(pos);
      }
    }
    std::vector<int32_t> merged_word;
    for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = next[static_cast<size_t>(i)]) merged_word.push_back(word[static_cast<size_t>(i)]);
    word.swap(merged_word);
    for (int32_t symbol : word) ids.push_back(symbol_ids_[symbol]);
  }

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> vocab_by_id_;
  std::optional<int64_t> unk_id_;
  std::unordered_map<std::string, int32_t> symbol_index_;
  std::vector<std::string> symbols_;
  std::vector<int64_t> symbol_ids_;  // convert_tokens_to_ids of each interned symbol
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_symbol_{}, byte_symbol_end_{};
  std::unordered_map<std::string, int64_t> cached_specials_;
  std::optional<int64_t> comma_id_;  // ",</w>"
  BasicTokenizer basic_{/*do_lower_case=*/true, {}, /*tokenize_chinese_chars=*/true,
                        /*strip_accents=*/false, /*do_split_on_punc=*/false};
};

}  // namespace
}  // namespace tokenizers

std::unique_ptr<Tokenizer> load_clip_tokenizer(const TokenizerFiles& files) {
  return std::make_unique<tokenizers::ClipTokenizer>(files);
}

std::unique_ptr<Tokenizer> load_clip_tokenizer(const fs::path& dir) {
  return load_clip_tokenizer(tokenizers::read_tokenizer_files(dir, "vocab.json", "the CLIP tokenizer's vocabulary",
                                                              "merges.txt", "the CLIP tokenizer's BPE merges"));
}

// tools/make_fixtures.py's write_clip_vocab, which mirrors how the hub's files were made:
//   merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
//   vocab = bytes_to_unicode() values, the same + "</w>", "".join(merge) for each, the two specials
// merges.txt gets a "#version: 0.2" first line, which the tokenizer skips.
void derive_clip_vocab(std::string_view bpe_simple_vocab, TokenizerFiles& files) {
  constexpr size_t kMerges = 49152 - 256 - 2;
  std::vector<std::string_view> merges;
  for (size_t start = 0, line = 0; start <= bpe_simple_vocab.size() && merges.size() < kMerges; ++line) {
    size_t end = bpe_simple_vocab.find('\n', start);
    if (end == std::string_view::npos) end = bpe_simple_vocab.size();
    if (line > 0) merges.push_back(bpe_simple_vocab.substr(start, end - start));
    start = end + 1;
  }
  std::vector<std::string> vocab;
  vocab.reserve(2 * 256 + merges.size() + 2);
  const std::array<char32_t, 256> byte_chars = tokenizers::bytes_to_unicode();
  // dict(zip(bs, cs)).values(): the printable bytes in order, then the others.
  for (int pass = 0; pass < 2; ++pass)
    for (size_t b = 0; b < 256; ++b)
      if ((byte_chars[b] < 256) == (pass == 0))
        vocab.emplace_back(tokenizers::encode_utf8(std::u32string(1, byte_chars[b])));
  for (size_t i = 0; i < 256; ++i) vocab.push_back(vocab[i] + "</w>");
  std::string merges_text = "#version: 0.2\n";
  for (std::string_view merge : merges) {
    std::string joined, spaced;
    for (const std::string& part : tokenizers::split_ascii_whitespace(std::string(merge))) {
      joined += part;
      spaced += (spaced.empty() ? "" : " ") + part;
    }
    vocab.push_back(joined);
    merges_text.append(spaced).push_back('\n');
  }
  vocab.emplace_back("<|startoftext|>");
  vocab.emplace_back("<|endoftext|>");
  Json json = Json::object();
  for (size_t id = 0; id < vocab.size(); ++id) json[vocab[id]] = id;  // a repeated token keeps its last id
  files.vocab = json.dump(-1, ' ', false, Json::error_handler_t::replace);  // invalid UTF-8 cannot throw
  files.merges = std::move(merges_text);
}

}  // namespace taiyi
