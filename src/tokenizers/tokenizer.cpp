// Tokenizers exact to transformers 4.57's slow CLIPTokenizer and BertTokenizer, as diffusers'
// StableDiffusionPipeline calls them: tokenizer(text, padding="max_length",
// max_length=model_max_length, truncation=True). Without ftfy (not a dependency of diffusers or
// transformers), CLIPTokenizer normalises text with BERT's BasicTokenizer, so Chinese ideographs
// become one word each. Python's Unicode answers (unicodedata 14.0, str.lower, str.isspace and the
// regex module's classes) come from src/tokenizers/unicode_tables.inc (tools/gen_unicode_tables.py).
// Plain C++: no torch here.
#include "taiyi/tokenizers/tokenizer.h"

#include <algorithm>
#include <array>
#include <functional>
#include <fstream>
#include <map>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// =============================================================================================
// Unicode facts, as Python sees them
// =============================================================================================

struct PropertyRange {
  char32_t first;
  uint16_t bits;
};
struct LowercaseRun {
  char32_t first, last;
  uint8_t stride;
  int32_t delta;
};
struct MultiLowercase {
  char32_t code_point;
  char32_t lower[3];
  uint8_t length;
};
struct CombiningRun {
  char32_t first, last;
  uint8_t combining_class;
};
struct Decomposition {
  char32_t code_point;
  uint16_t offset;
  uint8_t length;
};
struct Composition {
  char32_t first, second, composite;
};
struct LiteralVariant {
  char32_t literal, variant;
};

#include "unicode_tables.inc"

// Property bits of kProperties (tools/gen_unicode_tables.py).
constexpr uint16_t kControl = 1 << 0;            // category C*
constexpr uint16_t kSpaceSeparator = 1 << 1;     // category Zs
constexpr uint16_t kPunctuation = 1 << 2;        // category P*
constexpr uint16_t kNonspacingMark = 1 << 3;     // category Mn
constexpr uint16_t kPythonSpace = 1 << 4;        // str.isspace()
constexpr uint16_t kRegexLetter = 1 << 5;        // regex [\p{L}], IGNORECASE
constexpr uint16_t kRegexNumber = 1 << 6;        // regex [\p{N}], IGNORECASE
constexpr uint16_t kRegexOther = 1 << 7;         // regex [^\s\p{L}\p{N}], IGNORECASE
constexpr uint16_t kCased = 1 << 8;              // Cased, not Case_Ignorable
constexpr uint16_t kCaseIgnorable = 1 << 9;      // Case_Ignorable

uint16_t properties(char32_t c) {
  auto it = std::upper_bound(std::begin(unicode_tables::kProperties), std::end(unicode_tables::kProperties), c,
                             [](char32_t v, const PropertyRange& r) { return v < r.first; });
  return (it - 1)->bits;
}

bool has(char32_t c, uint16_t bit) { return (properties(c) & bit) != 0; }

// str.lower() of one code point, appended to out (U+0130 lowers to two code points).
void append_lower(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out += (c >= U'A' && c <= U'Z') ? c + 32 : c;
    return;
  }
  for (const MultiLowercase& m : unicode_tables::kLowercaseMulti) {
    if (m.code_point == c) {
      out.append(m.lower, m.length);
      return;
    }
  }
  const auto& runs = unicode_tables::kLowercaseRuns;
  auto it = std::upper_bound(std::begin(runs), std::end(runs), c,
                             [](char32_t v, const LowercaseRun& r) { return v < r.first; });
  if (it != std::begin(runs)) {
    const LowercaseRun& run = *(it - 1);
    if (c <= run.last && (c - run.first) % run.stride == 0) {
      out += static_cast<char32_t>(static_cast<int64_t>(c) + run.delta);
      return;
    }
  }
  out += c;
}

// CPython's handle_capital_sigma: U+03A3 lowers to final sigma U+03C2 after a cased letter
// (skipping case-ignorables) when no cased letter follows.
bool is_final_sigma(const std::u32string& s, size_t i) {
  size_t j = i;
  bool preceded_by_cased = false;
  while (j > 0) {
    char32_t c = s[--j];
    uint16_t bits = properties(c);
    if (!(bits & kCaseIgnorable)) {
      preceded_by_cased = (bits & kCased) != 0;
      break;
    }
  }
  if (!preceded_by_cased) return false;
  for (j = i + 1; j < s.size(); ++j) {
    uint16_t bits = properties(s[j]);
    if (!(bits & kCaseIgnorable)) return !(bits & kCased);
  }
  return true;
}

// Python's str.lower().
std::u32string python_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x3A3) out += is_final_sigma(s, i) ? char32_t(0x3C2) : char32_t(0x3C3);
    else append_lower(s[i], out);
  }
  return out;
}

uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto& runs = unicode_tables::kCombiningClasses;
  auto it = std::upper_bound(std::begin(runs), std::end(runs), c,
                             [](char32_t v, const CombiningRun& r) { return v < r.first; });
  if (it == std::begin(runs)) return 0;
  const CombiningRun& run = *(it - 1);
  return c <= run.last ? run.combining_class : 0;
}

// Hangul syllables decompose and compose algorithmically (Unicode §3.12).
constexpr char32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr char32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

void append_decomposed(char32_t c, std::u32string& out) {
  if (c >= kHangulS && c < kHangulS + kHangulSCount) {
    char32_t s = c - kHangulS;
    out += kHangulL + s / kHangulNCount;
    out += kHangulV + (s % kHangulNCount) / kHangulTCount;
    if (s % kHangulTCount) out += kHangulT + s % kHangulTCount;
    return;
  }
  const auto& table = unicode_tables::kDecompositions;
  auto it = std::lower_bound(std::begin(table), std::end(table), c,
                             [](const Decomposition& d, char32_t v) { return d.code_point < v; });
  if (it != std::end(table) && it->code_point == c)
    out.append(unicode_tables::kDecompositionData + it->offset, it->length);
  else
    out += c;
}

// unicodedata.normalize("NFD", s): full decomposition, then canonical ordering of mark runs.
std::u32string nfd(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size() + s.size() / 4);
  for (char32_t c : s) append_decomposed(c, out);
  for (size_t i = 0; i < out.size();) {
    if (combining_class(out[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < out.size() && combining_class(out[end]) != 0) ++end;
    std::stable_sort(out.begin() + i, out.begin() + end,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
  return out;
}

std::optional<char32_t> compose_pair(char32_t a, char32_t b) {
  if (a >= kHangulL && a < kHangulL + kHangulLCount && b >= kHangulV && b < kHangulV + kHangulVCount)
    return kHangulS + ((a - kHangulL) * kHangulVCount + (b - kHangulV)) * kHangulTCount;
  if (a >= kHangulS && a < kHangulS + kHangulSCount && (a - kHangulS) % kHangulTCount == 0 && b > kHangulT &&
      b < kHangulT + kHangulTCount)
    return a + (b - kHangulT);
  const auto& table = unicode_tables::kCompositions;
  auto it = std::lower_bound(std::begin(table), std::end(table), std::make_pair(a, b),
                             [](const Composition& c, const std::pair<char32_t, char32_t>& v) {
                               return c.first < v.first || (c.first == v.first && c.second < v.second);
                             });
  if (it != std::end(table) && it->first == a && it->second == b) return it->composite;
  return std::nullopt;
}

// unicodedata.normalize("NFC", s): NFD, then canonical composition of unblocked pairs.
std::u32string nfc(const std::u32string& s) {
  // Below U+0300 every code point is NFC-stable and none is the second of a composition.
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; })) return s;
  std::u32string decomposed = nfd(s);
  std::u32string out;
  out.reserve(decomposed.size());
  std::optional<size_t> starter;
  uint8_t last_class = 0;  // class of the last code point after the starter (0: none)
  for (char32_t c : decomposed) {
    uint8_t cc = combining_class(c);
    if (starter) {
      bool adjacent = *starter + 1 == out.size();
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (auto composite = compose_pair(out[*starter], c)) {
          out[*starter] = *composite;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_class = 0;
    } else {
      last_class = cc;
    }
    out += c;
  }
  return out;
}

// =============================================================================================
// UTF-8
// =============================================================================================

// Invalid bytes become U+FFFD, which BasicTokenizer then drops (a Python str cannot hold them).
std::u32string decode_utf8(const std::string& text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  for (size_t i = 0; i < n;) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out += b;
      ++i;
      continue;
    }
    size_t length = (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3 : (b >= 0xF0 && b <= 0xF4) ? 4 : 0;
    char32_t c = length == 4 ? b & 0x07 : length == 3 ? b & 0x0F : b & 0x1F;
    bool valid = length != 0 && i + length <= n;
    for (size_t k = 1; valid && k < length; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) valid = false;
      else c = (c << 6) | (p[i + k] & 0x3F);
    }
    if (valid && ((length == 3 && (c < 0x800 || (c >= 0xD800 && c < 0xE000))) ||
                  (length == 4 && (c < 0x10000 || c > 0x10FFFF))))
      valid = false;
    if (!valid) {
      out += char32_t(0xFFFD);
      ++i;
      continue;
    }
    out += c;
    i += length;
  }
  return out;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(c, out);
  return out;
}

// =============================================================================================
// Python str helpers
// =============================================================================================

bool is_python_space(char32_t c) { return has(c, kPythonSpace); }

// str.split() with no argument.
std::vector<std::u32string> python_split(const std::u32string& s) {
  std::vector<std::u32string> words;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_python_space(s[i])) ++i;
    size_t start = i;
    while (i < s.size() && !is_python_space(s[i])) ++i;
    if (i > start) words.emplace_back(s, start, i - start);
  }
  return words;
}

std::u32string python_lstrip(const std::u32string& s) {
  size_t i = 0;
  while (i < s.size() && is_python_space(s[i])) ++i;
  return s.substr(i);
}

std::u32string python_rstrip(const std::u32string& s) {
  size_t n = s.size();
  while (n > 0 && is_python_space(s[n - 1])) --n;
  return s.substr(0, n);
}

std::u32string join_with_spaces(const std::vector<std::u32string>& words) {
  std::u32string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i) out += U' ';
    out += words[i];
  }
  return out;
}

// =============================================================================================
// BasicTokenizer (transformers/models/bert/tokenization_bert.py; CLIP uses a copy of it)
// =============================================================================================

struct BasicTokenizer {
  bool do_lower_case = true;
  std::unordered_set<std::u32string> never_split;
  bool tokenize_chinese_chars = true;
  std::optional<bool> strip_accents;  // None: follows do_lower_case
  bool do_split_on_punc = true;

  static bool is_chinese_char(char32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
  }
  // transformers' _is_punctuation: all non-alphanumeric ASCII, and category P*.
  static bool is_punctuation(char32_t cp) {
    if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
      return true;
    return has(cp, kPunctuation);
  }

  // _clean_text and _tokenize_chinese_chars in one pass, then NFC, the split into words, lower-casing,
  // accent stripping and the punctuation split.
  std::vector<std::u32string> tokenize(const std::u32string& text,
                                       const std::unordered_set<std::u32string>* extra_never_split) const {
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

  static std::u32string run_strip_accents(const std::u32string& token) {
    std::u32string out;
    for (char32_t c : nfd(token))
      if (!has(c, kNonspacingMark)) out += c;
    return out;
  }

  static void run_split_on_punc(const std::u32string& token, std::vector<std::u32string>& out) {
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
};

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

  void add(const std::u32string& word) {
    if (word.empty()) return;
    int node = 0;
    for (char32_t c : word) {
      auto it = nodes_[node].children.find(c);
      if (it == nodes_[node].children.end()) {
        nodes_.emplace_back();
        it = nodes_[node].children.emplace(c, static_cast<int>(nodes_.size() - 1)).first;
      }
      node = it->second;
    }
    nodes_[node].terminal = true;
  }

  std::vector<std::u32string> split(const std::u32string& text) const {
    std::vector<std::pair<size_t, int>> states;  // partial matches: (start, node), in start order
    std::vector<size_t> offsets = {0};
    size_t skip = 0;
    const size_t n = text.size();
    for (size_t current = 0; current < n; ++current) {
      char32_t current_char = text[current];
      if (skip && current < skip) continue;
      std::vector<size_t> to_remove;
      bool reset = false;
      for (auto& state : states) {
        size_t start = state.first;
        if (nodes_[state.second].terminal) {
          size_t end = 0;
          for (const auto& look : states) {
            size_t lookstart = look.first;
            int looknode = look.second;
            size_t lookahead_index;
            if (lookstart > start) break;
            if (lookstart < start) {
              lookahead_index = current + 1;
              end = current + 1;
            } else {
              lookahead_index = current;
              end = current;
            }
            if (nodes_[looknode].terminal) {
              start = lookstart;
              end = lookahead_index;
              skip = lookahead_index;
            }
            while (lookahead_index < n) {
              int next = child(looknode, text[lookahead_index]);
              if (next < 0) break;
              looknode = next;
              ++lookahead_index;
              if (nodes_[looknode].terminal) {
                start = lookstart;
                end = lookahead_index;
                skip = lookahead_index;
              }
            }
          }
          offsets.push_back(start);
          offsets.push_back(end);
          reset = true;
          break;
        }
        int next = child(state.second, current_char);
        if (next >= 0) state.second = next;
        else to_remove.push_back(start);
      }
      if (reset) {
        states.clear();
      } else {
        states.erase(std::remove_if(states.begin(), states.end(),
                                    [&](const auto& s) {
                                      return std::find(to_remove.begin(), to_remove.end(), s.first) !=
                                             to_remove.end();
                                    }),
                     states.end());
      }
      if (current >= skip) {
        int next = child(0, current_char);
        if (next >= 0) states.emplace_back(current, next);
      }
    }
    for (const auto& state : states) {
      if (nodes_[state.second].terminal) {
        offsets.push_back(state.first);
        offsets.push_back(n);
        break;
      }
    }
    // cut_text
    offsets.push_back(n);
    std::vector<std::u32string> pieces;
    size_t start = 0;
    for (size_t end : offsets) {
      if (start >= end) continue;
      pieces.push_back(text.substr(start, end - start));
      start = end;
    }
    return pieces;
  }

 private:
  struct Node {
    std::map<char32_t, int> children;
    bool terminal = false;
  };
  int child(int node, char32_t c) const {
    auto it = nodes_[node].children.find(c);
    return it == nodes_[node].children.end() ? -1 : it->second;
  }
  std::vector<Node> nodes_;
};

// A special-token attribute value as from_pretrained hands it to the constructor: a plain string
// or an AddedToken (which _add_tokens always re-registers, with its flags).
struct SpecialValue {
  AddedToken token;
  bool is_added_token = false;
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

  std::optional<int64_t> find_utf8(const std::string& content) const {
    auto it = encoder_utf8.find(content);
    if (it == encoder_utf8.end()) return std::nullopt;
    return it->second;
  }

  std::optional<int64_t> find(const std::u32string& content) const {
    auto it = encoder.find(content);
    if (it == encoder.end()) return std::nullopt;
    return it->second;
  }

  // PreTrainedTokenizer.tokenize up to _tokenize: lower-casing outside the special tokens (only
  // for tokenizers with a do_lower_case attribute: BERT), the trie split and the lstrip / rstrip /
  // single_word rules of the added tokens.
  std::vector<Piece> split(std::u32string text, bool lower_case_outside_specials) const {
    if (lower_case_outside_specials) text = lower_outside_specials(text);
    std::vector<std::u32string> tokens = trie.split(text);
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::u32string token = tokens[i];
      auto id = find(token);
      if (!id) continue;
      auto extended = decoder.find(*id);
      if (extended == decoder.end()) continue;
      const AddedToken& added = extended->second;
      std::optional<std::u32string> left, right;
      if (i > 0) left = tokens[i - 1];
      if (i + 1 < tokens.size()) right = tokens[i + 1];
      if (added.rstrip && right && !right->empty()) tokens[i + 1] = python_lstrip(*right);
      if (added.lstrip && left && !left->empty()) tokens[i - 1] = python_rstrip(*left);
      if (added.single_word && left && !left->empty() && left->back() != U' ') {
        tokens[i - 1] += token;
        tokens[i].clear();
      } else if (added.single_word && right && !right->empty() && right->front() != U' ') {
        tokens[i + 1] = token + tokens[i + 1];
        tokens[i].clear();
      }
    }
    std::vector<Piece> pieces;
    for (std::u32string& token : tokens) {
      if (token.empty()) continue;
      auto id = find(token);
      pieces.push_back(Piece{std::move(token), id});
    }
    return pieces;
  }

 private:
  // re.sub(r"(special|...)|(.+?)", lambda m: m.groups()[0] or m.groups()[1].lower(), text): the
  // special tokens and the non-special normalized added tokens stay, every other character is
  // lowered alone ('.' does not match a newline, which stays as it is).
  std::u32string lower_outside_specials(const std::u32string& text) const {
    std::vector<const std::u32string*> kept;
    for (const auto& s : all_special_tokens) kept.push_back(&s);
    for (const auto& [id, token] : decoder)
      if (!token.special && token.normalized) kept.push_back(&token.content);
    std::u32string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      const std::u32string* match = nullptr;
      for (const std::u32string* s : kept) {
        if (!s->empty() && text.compare(i, s->size(), *s) == 0) {
          match = s;
          break;
        }
      }
      if (match) {
        out += *match;
        i += match->size();
      } else {
        if (text[i] == U'\n') out += text[i];
        else out += python_lower(text.substr(i, 1));
        ++i;
      }
    }
    return out;
  }
};

// =============================================================================================
// Loading: tokenizer_config.json, special_tokens_map.json, added_tokens.json
// =============================================================================================

const char* const kSpecialAttributes[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                          "pad_token", "cls_token", "mask_token"};

AddedToken parse_added_token(const Json& value, const fs::path& file, const std::string& key) {
  AddedToken token;
  if (value.is_string()) {
    token.content = decode_utf8(value.get<std::string>());
    return token;
  }
  if (!value.is_object() || !value.contains("content") || !value["content"].is_string())
    throw Error(file.string() + ": '" + key + "' = " + json_excerpt(value) +
                ": expected a token string or an object with a \"content\" string");
  auto flag = [&](const char* name, bool fallback) {
    if (!value.contains(name) || value[name].is_null()) return fallback;
    if (!value[name].is_boolean())
      throw Error(file.string() + ": '" + key + "." + name + "' = " + json_excerpt(value[name]) + ": expected true or false");
    return value[name].get<bool>();
  };
  token.content = decode_utf8(value["content"].get<std::string>());
  token.single_word = flag("single_word", false);
  token.lstrip = flag("lstrip", false);
  token.rstrip = flag("rstrip", false);
  token.special = flag("special", false);
  token.normalized = flag("normalized", !token.special);  // tokenizers.AddedToken's default
  return token;
}

std::optional<Json> read_optional_json(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  return read_json_file(path);
}

struct TokenizerSettings {
  Config config;  // tokenizer_config.json (empty when absent)
  size_t max_length = 0;
  bool truncate_left = false;
  bool pad_left = false;
  AddedVocabulary added;
};

// What PreTrainedTokenizerBase._from_pretrained and PreTrainedTokenizer.__init__ do with the
// added and special tokens. `defaults` are the constructor's special-token defaults;
// `wrap_as_added_token` the attributes whose string the constructor wraps in an AddedToken
// (CLIP: bos, eos, unk). `vocab_id` finds a content in the model's vocabulary; `vocab_keys` is the
// number of distinct tokens in it.
TokenizerSettings load_settings(const fs::path& dir, size_t default_max_length,
                                const std::map<std::string, std::string>& defaults,
                                const std::vector<std::string>& wrap_as_added_token,
                                const std::function<std::optional<int64_t>(const std::string&)>& vocab_id,
                                const std::function<size_t()>& vocab_keys) {
  TokenizerSettings settings;
  fs::path config_path = dir / "tokenizer_config.json";
  Json init = Json::object();
  if (auto json = read_optional_json(config_path)) init = *json;
  settings.config = Config(init, config_path);
  const Config& config = settings.config;

  if (config.has("model_max_length")) {
    const Json& value = init["model_max_length"];
    if (!value.is_number_integer() || value.get<int64_t>() < 2 || value.get<int64_t>() > 1000000)
      config.unsupported("model_max_length", "an integer between 2 and 1000000 (the text encoder's positions)");
    settings.max_length = static_cast<size_t>(value.get<int64_t>());
  } else {
    // transformers would use VERY_LARGE_INTEGER, with which the pipeline cannot run: take the
    // text encoder's usual length instead.
    settings.max_length = default_max_length;
  }
  for (const char* key : {"truncation_side", "padding_side"}) {
    std::string side = config.get_string(key, "right");
    if (side != "right" && side != "left") config.unsupported(key, "\"right\" or \"left\"");
    (std::string(key) == "truncation_side" ? settings.truncate_left : settings.pad_left) = side == "left";
  }

  // added_tokens_decoder (tokenizers saved by transformers >= 4.34); otherwise the older files.
  std::map<int64_t, AddedToken> added_decoder;
  std::map<std::u32string, AddedToken> added_by_content;
  std::map<std::string, std::optional<SpecialValue>> values;  // attribute -> value (nullopt: None)
  std::vector<SpecialValue> additional;
  bool have_additional = false;
  auto parse_value = [](const Json& value, const fs::path& file, const std::string& key,
                        bool force_special) -> std::optional<SpecialValue> {
    if (value.is_null()) return std::nullopt;
    SpecialValue v;
    v.token = parse_added_token(value, file, key);
    v.is_added_token = value.is_object();
    if (v.is_added_token && force_special) {
      v.token.special = true;
      if (!value.contains("normalized")) v.token.normalized = false;
    }
    return v;
  };
  auto parse_list = [&](const Json& list, const fs::path& file, const std::string& key, bool force_special) {
    if (!list.is_array())
      throw Error(file.string() + ": '" + key + "' = " + json_excerpt(list) + ": expected a list of tokens");
    std::vector<SpecialValue> out;
    for (const Json& item : list)
      if (auto v = parse_value(item, file, key, force_special)) out.push_back(*v);
    return out;
  };

  for (const char* attr : kSpecialAttributes) {
    if (init.contains(attr)) values[attr] = parse_value(init[attr], config_path, attr, false);
  }
  if (init.contains("additional_special_tokens") && !init["additional_special_tokens"].is_null()) {
    additional = parse_list(init["additional_special_tokens"], config_path, "additional_special_tokens", false);
    have_additional = true;
  }

  if (init.contains("added_tokens_decoder")) {
    const Json& entries = init["added_tokens_decoder"];
    if (!entries.is_object())
      throw Error(config_path.string() + ": 'added_tokens_decoder' must map token ids to token objects");
    for (const auto& item : entries.items()) {
      int64_t id;
      try {
        size_t used = 0;
        id = std::stoll(item.key(), &used);
        if (used != item.key().size()) throw std::invalid_argument("trailing characters");
      } catch (const std::exception&) {
        throw Error(config_path.string() + ": added_tokens_decoder key " + quoted_name(item.key()) + " is not a token id");
      }
      if (!item.value().is_object())
        throw Error(config_path.string() + ": added_tokens_decoder[" + quoted_name(item.key()) + "] must be a token object");
      AddedToken token = parse_added_token(item.value(), config_path, "added_tokens_decoder." + item.key());
      added_decoder[id] = token;
      added_by_content[token.content] = token;
    }
  } else {
    fs::path map_path = dir / "special_tokens_map.json";
    if (auto map = read_optional_json(map_path)) {
      if (!map->is_object()) throw Error(map_path.string() + ": expected a JSON object");
      for (const auto& item : map->items()) {
        if (item.key() == "additional_special_tokens") {
          // Appended to the tokenizer_config.json list, without duplicates.
          std::vector<SpecialValue> merged = additional;
          for (const SpecialValue& v : parse_list(item.value(), map_path, item.key(), true)) {
            bool seen = std::any_of(merged.begin(), merged.end(), [&](const SpecialValue& m) {
              return m.token.content == v.token.content && m.is_added_token == v.is_added_token;
            });
            if (!seen) merged.push_back(v);
          }
          additional = merged;
          have_additional = true;
        } else if (std::find(std::begin(kSpecialAttributes), std::end(kSpecialAttributes), item.key()) !=
                   std::end(kSpecialAttributes)) {
          values[item.key()] = parse_value(item.value(), map_path, item.key(), true);
        }
      }
    }
    fs::path added_path = dir / "added_tokens.json";
    if (auto added_json = read_optional_json(added_path)) {
      if (!added_json->is_object()) throw Error(added_path.string() + ": expected a JSON object of token -> id");
      std::vector<std::u32string> specials;
      for (const auto& [attr, value] : values)
        if (value) specials.push_back(value->token.content);
      for (const SpecialValue& v : additional) specials.push_back(v.token.content);
      for (const auto& item : added_json->items()) {
        if (!item.value().is_number_integer())
          throw Error(added_path.string() + ": " + quoted_name(item.key()) + " = " + json_excerpt(item.value()) +
                      ": expected a token id");
        AddedToken token;
        token.content = decode_utf8(item.key());
        token.special = std::find(specials.begin(), specials.end(), token.content) != specials.end();
        token.normalized = !token.special;
        added_decoder[item.value().get<int64_t>()] = token;
        added_by_content[token.content] = token;
      }
    }
  }
  // Special-token attributes given as strings take the flags of the added token of that content.
  for (auto& [attr, value] : values) {
    if (!value || added_by_content.empty()) continue;
    auto it = added_by_content.find(value->token.content);
    if (it != added_by_content.end()) value = SpecialValue{it->second, true};
  }
  // Constructor defaults for the attributes the files do not set.
  for (const auto& [attr, content] : defaults) {
    if (!values.count(attr)) values[attr] = SpecialValue{AddedToken{decode_utf8(content)}, false};
  }
  for (const std::string& attr : wrap_as_added_token) {
    auto it = values.find(attr);
    if (it != values.end() && it->second && !it->second->is_added_token) {
      it->second->token = AddedToken{it->second->token.content};  // lstrip = rstrip = False
      it->second->is_added_token = true;
    }
  }

  // The attributes in SPECIAL_TOKENS_ATTRIBUTES order, then extra_special_tokens.
  std::vector<std::pair<std::string, SpecialValue>> ordered;
  for (const char* attr : kSpecialAttributes) {
    auto it = values.find(attr);
    if (it != values.end() && it->second && !it->second->token.content.empty()) ordered.emplace_back(attr, *it->second);
  }
  if (have_additional)
    for (const SpecialValue& v : additional) ordered.emplace_back("additional_special_tokens", v);
  if (init.contains("extra_special_tokens") && !init["extra_special_tokens"].is_null()) {
    const Json& extra = init["extra_special_tokens"];
    if (!extra.is_object()) throw Error(config_path.string() + ": 'extra_special_tokens' must be an object");
    for (const auto& item : extra.items())
      if (auto v = parse_value(item.value(), config_path, "extra_special_tokens." + item.key(), false))
        ordered.emplace_back(item.key(), *v);
  }

  AddedVocabulary& added = settings.added;
  added.decoder = added_decoder;
  for (const auto& [id, token] : added.decoder) added.encoder[token.content] = id;
  // all_special_tokens_extended: unique by content, first attribute wins.
  std::vector<SpecialValue> extended;
  for (const auto& [attr, value] : ordered) {
    if (attr != "additional_special_tokens" && !added.special_by_attribute.count(attr))
      added.special_by_attribute[attr] = value.token.content;
    bool seen = std::find(added.all_special_tokens.begin(), added.all_special_tokens.end(), value.token.content) !=
                added.all_special_tokens.end();
    if (seen) continue;
    added.all_special_tokens.push_back(value.token.content);
    extended.push_back(value);
  }
  // _add_tokens(special_tokens=True) for those not yet in the added encoder (an AddedToken never
  // compares equal to a string key, so AddedTokens are always re-registered).
  size_t new_index = vocab_keys();
  for (const auto& [content, id] : added.encoder) {
    if (!vocab_id(encode_utf8(content))) ++new_index;  // get_vocab() also counts the added tokens
  }
  size_t appended = 0;
  std::unordered_map<std::u32string, int64_t> appended_ids;
  for (SpecialValue value : extended) {
    if (!value.is_added_token && added.encoder.count(value.token.content)) continue;
    AddedToken token = value.token;
    if (!value.is_added_token) token.normalized = false;
    token.special = true;
    int64_t index;
    if (auto it = added.encoder.find(token.content); it != added.encoder.end()) {
      index = it->second;
    } else if (auto id = vocab_id(encode_utf8(token.content))) {
      index = *id;
    } else if (auto a = appended_ids.find(token.content); a != appended_ids.end()) {
      index = a->second;
    } else {
      index = static_cast<int64_t>(new_index + appended++);
      appended_ids[token.content] = index;
    }
    added.decoder[index] = token;
    added.encoder[token.content] = index;
  }
  for (const auto& [id, token] : added.decoder) added.trie.add(token.content);
  for (const auto& [content, id] : added.encoder) added.encoder_utf8[encode_utf8(content)] = id;
  return settings;
}

// Universal-newline line split, as Python's text mode reads files (\r\n, \r and \n end a line).
std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  std::vector<std::string> lines;
  std::string line;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      lines.push_back(std::move(line));
      line.clear();
    } else {
      line += c;
    }
  }
  if (!line.empty()) lines.push_back(std::move(line));
  return lines;
}

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

void require_file(const fs::path& path, const std::string& what) {
  if (!fs::is_regular_file(path)) throw Error(path.string() + ": file not found (" + what + ")");
}

// =============================================================================================
// The shared encode: tokenize, convert, truncate, add specials, pad
// =============================================================================================

class SlowTokenizer : public Tokenizer {
 public:
  Encoding encode(const std::string& utf8_text) const override {
    std::vector<int64_t> content = tokenize(utf8_text).ids;
    Encoding encoding;
    encoding.content_tokens = content.size();
    // truncation=True ("longest_first") keeps max_length - 2 content ids.
    size_t keep = std::min(content.size(), settings_.max_length - 2);
    if (settings_.truncate_left) content.erase(content.begin(), content.end() - static_cast<ptrdiff_t>(keep));
    else content.resize(keep);
    encoding.kept_tokens = keep;
    encoding.ids = wrap(content, nullptr);
    encoding.tokens.reserve(encoding.ids.size());
    for (int64_t id : encoding.ids) encoding.tokens.push_back(id_to_token(id));
    return encoding;
  }

  TextTokens tokenize(const std::string& utf8_text) const override {
    TextTokens tokens;
    for (const Piece& piece : settings_.added.split(decode_utf8(utf8_text), lower_case_outside_specials_)) {
      if (piece.added_id) {
        auto expansion = expansions_.find(*piece.added_id);
        if (expansion == expansions_.end()) {
          tokens.ids.push_back(*piece.added_id);
          tokens.commas.push_back(false);
        } else {
          tokens.ids.insert(tokens.ids.end(), expansion->second.begin(), expansion->second.end());
          tokens.commas.insert(tokens.commas.end(), expansion->second.size(), false);
        }
      } else {
        tokenize_piece(piece.text, tokens.ids, &tokens.commas);
      }
    }
    return tokens;
  }

  std::vector<int64_t> wrap(const std::vector<int64_t>& content, std::vector<double>* weights) const override {
    if (content.size() > settings_.max_length - 2)
      throw Error("wrap: " + std::to_string(content.size()) + " content tokens, at most " +
                  std::to_string(settings_.max_length - 2) + " fit");
    std::vector<int64_t> ids;
    ids.reserve(settings_.max_length);
    ids.push_back(first_id_);
    ids.insert(ids.end(), content.begin(), content.end());
    ids.push_back(last_id_);
    const size_t padding = settings_.max_length - ids.size();
    if (settings_.pad_left) ids.insert(ids.begin(), padding, pad_id_);
    else ids.insert(ids.end(), padding, pad_id_);
    if (weights) {
      weights->resize(content.size(), 1.0);
      weights->insert(weights->begin(), 1.0);
      weights->push_back(1.0);
      weights->insert(settings_.pad_left ? weights->begin() : weights->end(), padding, 1.0);
    }
    return ids;
  }

  std::string token(int64_t id) const override { return id_to_token(id); }

  size_t max_length() const override { return settings_.max_length; }

  size_t vocab_size() const override {
    size_t count = vocab_count();
    for (const auto& [content, id] : settings_.added.encoder)
      if (!vocab_lookup(encode_utf8(content))) ++count;
    return count;
  }

  std::vector<int64_t> add_embedding_tokens(const std::string& name, size_t vectors) override {
    std::vector<std::u32string> contents;
    for (size_t i = 0; i < vectors; ++i) {
      std::u32string content = decode_utf8(i == 0 ? name : name + "_" + std::to_string(i));
      if (lower_case_outside_specials_) content = python_lower(content);
      const std::string utf8 = encode_utf8(content);
      if (content.empty() || vocab_lookup(utf8) || settings_.added.find(content))
        throw Error("textual inversion: token '" + utf8 + "' is already in the tokenizer's vocabulary (" +
                    dir_.string() + "); rename the embedding");
      contents.push_back(std::move(content));
    }
    const int64_t first = static_cast<int64_t>(vocab_size());
    std::vector<int64_t> ids;
    for (size_t i = 0; i < contents.size(); ++i) {
      const int64_t id = first + static_cast<int64_t>(i);
      AddedToken token;
      token.content = contents[i];
      settings_.added.decoder[id] = token;
      settings_.added.encoder[token.content] = id;
      settings_.added.encoder_utf8[encode_utf8(token.content)] = id;
      settings_.added.trie.add(token.content);
      ids.push_back(id);
    }
    if (ids.size() > 1) expansions_[ids.front()] = ids;
    return ids;
  }

 protected:
  // The model vocabulary (without added tokens): a token's id, and the number of entries.
  virtual std::optional<int64_t> vocab_lookup(const std::string& token) const = 0;
  virtual size_t vocab_count() const = 0;
  // _tokenize followed by convert_tokens_to_ids, for a piece that is not an added token; appends to
  // `commas` (kept as long as ids) whether each id ends a comma.
  virtual void tokenize_piece(const std::u32string& piece, std::vector<int64_t>& ids, std::vector<bool>* commas) const = 0;
  virtual std::string vocab_token(int64_t id) const = 0;

  // convert_ids_to_tokens: the added-token content, else the vocabulary's string.
  std::string id_to_token(int64_t id) const {
    auto it = settings_.added.decoder.find(id);
    if (it != settings_.added.decoder.end()) return encode_utf8(it->second.content);
    return vocab_token(id);
  }

  int64_t special_id(const char* attribute, const std::unordered_map<std::string, int64_t>& vocab,
                     std::optional<int64_t> unk) const {
    auto it = settings_.added.special_by_attribute.find(attribute);
    if (it == settings_.added.special_by_attribute.end())
      throw Error((dir_ / "tokenizer_config.json").string() + ": no " + attribute +
                  " (the pipeline's padding and special tokens need it)");
    if (auto id = settings_.added.find(it->second)) return *id;
    auto v = vocab.find(encode_utf8(it->second));
    if (v != vocab.end()) return v->second;
    if (unk) return *unk;
    throw Error((dir_ / "tokenizer_config.json").string() + ": " + attribute + " '" + encode_utf8(it->second) +
                "' is not in the vocabulary");
  }

  fs::path dir_;
  TokenizerSettings settings_;
  bool lower_case_outside_specials_ = false;
  int64_t first_id_ = 0, last_id_ = 0, pad_id_ = 0;
  std::unordered_map<int64_t, std::vector<int64_t>> expansions_;  // a multi-vector embedding's first id -> all
};

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
  explicit ClipTokenizer(const fs::path& dir) {
    dir_ = dir;
    fs::path vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
    require_file(vocab_path, "the CLIP tokenizer's vocabulary");
    require_file(merges_path, "the CLIP tokenizer's BPE merges");
    load_vocab(vocab_path);
    load_merges(merges_path);

    settings_ = load_settings(
        dir, 77,
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
  void load_vocab(const fs::path& path) {
    Json json = read_json_file(path);
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
  void load_merges(const fs::path& path) {
    std::vector<std::string> lines = read_lines(path);
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
      bool variant = std::any_of(std::begin(unicode_tables::kLiteralCaseVariants),
                                 std::end(unicode_tables::kLiteralCaseVariants),
                                 [&](const LiteralVariant& v) { return v.literal == want && v.variant == got; });
      if (!variant) return false;
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

// =============================================================================================
// BertTokenizer (transformers/models/bert/tokenization_bert.py)
// =============================================================================================

class BertTokenizer final : public SlowTokenizer {
 public:
  explicit BertTokenizer(const fs::path& dir) {
    dir_ = dir;
    fs::path vocab_path = dir / "vocab.txt";
    require_file(vocab_path, "the BERT tokenizer's WordPiece vocabulary");
    // load_vocab: line index -> token (rstrip("\n") only); a repeated token keeps its last index.
    std::vector<std::string> lines = read_lines(vocab_path);
    for (size_t i = 0; i < lines.size(); ++i) vocab_[lines[i]] = static_cast<int64_t>(i);
    for (const auto& [token, id] : vocab_) vocab_by_id_[id] = token;

    settings_ = load_settings(
        dir, 512,
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

namespace unicode {
std::u32string from_utf8(const std::string& text) { return decode_utf8(text); }
std::string to_utf8(const std::u32string& text) { return encode_utf8(text); }
bool is_space(char32_t c) { return is_python_space(c); }
bool is_word(char32_t c) { return c == U'_' || has(c, kRegexLetter) || has(c, kRegexNumber); }
}  // namespace unicode

std::unique_ptr<Tokenizer> load_clip_tokenizer(const fs::path& dir) { return std::make_unique<ClipTokenizer>(dir); }

std::unique_ptr<Tokenizer> load_bert_tokenizer(const fs::path& dir) { return std::make_unique<BertTokenizer>(dir); }

std::unique_ptr<Tokenizer> load_tokenizer(const ModelFolder& folder) {
  std::string class_name = folder.class_name("tokenizer");
  if (class_name == "CLIPTokenizer") return load_clip_tokenizer(folder.component_dir("tokenizer"));
  if (class_name == "BertTokenizer") return load_bert_tokenizer(folder.component_dir("tokenizer"));
  std::string why = "taiyi implements the slow CLIPTokenizer and BertTokenizer";
  if (class_name == "CLIPTokenizerFast" || class_name == "BertTokenizerFast")
    why += " (the fast tokenizers normalise text differently, e.g. they do not split Chinese characters)";
  throw Error((folder.root() / "model_index.json").string() + ": tokenizer class '" + class_name +
              "' is not supported: " + why);
}

}  // namespace taiyi
