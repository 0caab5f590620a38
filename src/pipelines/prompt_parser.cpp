// Emphasis and chunking of the web UI (modules/prompt_parser.py, modules/sd_hijack_clip.py), written
// from the algorithm; see include/taiyi/pipelines/prompt_parser.h.
#include "taiyi/pipelines/prompt_parser.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string_view>

#include "taiyi/utils/error.h"

namespace taiyi {

namespace {

constexpr double kRoundBracketMultiplier = 1.1;
constexpr double kSquareBracketMultiplier = 1 / 1.1;

// A short printable excerpt of user text for error messages.
std::string excerpt(const std::u32string& text, size_t begin, size_t end) {
  constexpr size_t kMaxChars = 40;
  std::u32string part = text.substr(begin, std::min(end - begin, kMaxChars));
  std::string out;
  for (char32_t c : part) {
    if (c < 0x20 || c == 0x7F) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", static_cast<unsigned>(c));
      out += buffer;
    } else {
      out += unicode::to_utf8(std::u32string(1, c));
    }
  }
  return end - begin > kMaxChars ? out + "..." : out;
}

bool is_digit(char32_t c) { return c >= U'0' && c <= U'9'; }

class Parser {
 public:
  explicit Parser(const std::string& prompt) : text_(unicode::from_utf8(prompt)) {}

  std::vector<PromptFragment> parse() {
    const size_t n = text_.size();
    for (size_t i = 0; i < n;) {
      const char32_t c = text_[i];
      if (c == U'\\') {
        // \( \) \[ \] \\ are the character; a backslash before anything else matches alone, as "".
        const bool escape = i + 1 < n && std::u32string_view(U"()[]\\").find(text_[i + 1]) != std::u32string_view::npos;
        push_text(escape ? text_.substr(i + 1, 1) : std::u32string());
        i += escape ? 2 : 1;
      } else if (c == U'(') {
        round_.push_back(fragments_.size());
        ++i;
      } else if (c == U'[') {
        square_.push_back(fragments_.size());
        ++i;
      } else if (c == U':') {
        size_t end = 0;
        std::u32string number;
        if (match_weight(i, &end, &number) && !round_.empty()) {
          multiply_from(pop(round_), to_double(number, i, end));
        } else if (end) {
          push_text_with_breaks(text_.substr(i, end - i));  // ":1.5)" with nothing open is text
        } else {
          push_text_with_breaks(U":");
          end = i + 1;
        }
        i = end;
      } else if (c == U')' && !round_.empty()) {
        multiply_from(pop(round_), kRoundBracketMultiplier);
        ++i;
      } else if (c == U']' && !square_.empty()) {
        multiply_from(pop(square_), kSquareBracketMultiplier);
        ++i;
      } else if (c == U')' || c == U']') {
        push_text_with_breaks(std::u32string(1, c));
        ++i;
      } else {
        size_t end = i;
        while (end < n && std::u32string_view(U"\\()[]:").find(text_[end]) == std::u32string_view::npos) ++end;
        push_text_with_breaks(text_.substr(i, end - i));
        i = end;
      }
    }
    for (size_t position : round_) multiply_from(position, kRoundBracketMultiplier);
    for (size_t position : square_) multiply_from(position, kSquareBracketMultiplier);
    if (fragments_.empty()) fragments_.push_back({});
    // Merge runs of identical weights (breaks stay apart).
    std::vector<PromptFragment> merged;
    for (PromptFragment& f : fragments_) {
      if (!merged.empty() && !f.is_break && !merged.back().is_break && merged.back().weight == f.weight)
        merged.back().text += f.text;
      else
        merged.push_back(std::move(f));
    }
    return merged;
  }

 private:
  static size_t pop(std::vector<size_t>& stack) {
    size_t top = stack.back();
    stack.pop_back();
    return top;
  }

  void multiply_from(size_t start, double multiplier) {
    for (size_t p = start; p < fragments_.size(); ++p)
      if (!fragments_[p].is_break) fragments_[p].weight *= multiplier;
  }

  void push_text(const std::u32string& text) { fragments_.push_back({unicode::to_utf8(text), 1.0, false}); }

  // re.split(r"\s*\bBREAK\b\s*", text): a break between the parts (empty parts kept, as Python's split).
  void push_text_with_breaks(const std::u32string& text) {
    size_t part_begin = 0;
    for (size_t search = 0;;) {
      size_t at = text.find(U"BREAK", search);
      if (at == std::u32string::npos) break;
      const bool boundary_before = at == 0 || !unicode::is_word(text[at - 1]);
      const bool boundary_after = at + 5 == text.size() || !unicode::is_word(text[at + 5]);
      if (!boundary_before || !boundary_after) {
        search = at + 1;
        continue;
      }
      size_t match_begin = at;
      while (match_begin > part_begin && unicode::is_space(text[match_begin - 1])) --match_begin;
      size_t match_end = at + 5;
      while (match_end < text.size() && unicode::is_space(text[match_end])) ++match_end;
      push_text(text.substr(part_begin, match_begin - part_begin));
      fragments_.push_back({"", 1.0, true});
      part_begin = search = match_end;
    }
    push_text(text.substr(part_begin));
  }

  // `:\s*([+-]?[.\d]+)\s*\)` at `at`: true with the number's text and the match's end.
  bool match_weight(size_t at, size_t* end, std::u32string* number) const {
    const size_t n = text_.size();
    size_t i = at + 1;
    while (i < n && unicode::is_space(text_[i])) ++i;
    const size_t number_begin = i;
    if (i < n && (text_[i] == U'+' || text_[i] == U'-')) ++i;
    const size_t digits_begin = i;
    while (i < n && (is_digit(text_[i]) || text_[i] == U'.')) ++i;
    if (i == digits_begin) return false;
    const size_t number_end = i;
    while (i < n && unicode::is_space(text_[i])) ++i;
    if (i >= n || text_[i] != U')') return false;
    *end = i + 1;
    *number = text_.substr(number_begin, number_end - number_begin);
    return true;
  }

  // Python's float() of the matched number: one '.' at most and a digit somewhere.
  double to_double(const std::u32string& number, size_t begin, size_t end) const {
    std::string ascii(number.begin(), number.end());  // only [+-.0-9] here
    const bool negative = !ascii.empty() && ascii[0] == '-';
    const size_t start = (!ascii.empty() && (ascii[0] == '+' || ascii[0] == '-')) ? 1 : 0;
    const size_t dots = static_cast<size_t>(std::count(ascii.begin(), ascii.end(), '.'));
    double value = 0;
    auto [ptr, ec] = std::from_chars(ascii.data() + start, ascii.data() + ascii.size(), value);
    if (dots > 1 || ascii.size() - start == dots || ec != std::errc() || ptr != ascii.data() + ascii.size()) {
      const size_t open = text_.rfind(U'(', begin);  // quote from the bracket the weight closes
      throw Error("prompt: the weight in '" + excerpt(text_, open == std::u32string::npos ? begin : open, end) +
                  "' is not a number (expected e.g. (word:1.2))");
    }
    return negative ? -value : value;
  }

  std::u32string text_;
  std::vector<PromptFragment> fragments_;
  std::vector<size_t> round_, square_;
};

}  // namespace

std::vector<PromptFragment> parse_prompt_attention(const std::string& prompt) { return Parser(prompt).parse(); }

const char* chunk_cut_name(ChunkCut cut) {
  switch (cut) {
    case ChunkCut::End: return "end";
    case ChunkCut::Break: return "BREAK";
    case ChunkCut::Comma: return "comma";
    case ChunkCut::Full: return "full";
  }
  return "?";
}

// tokenize_line of sd_hijack_clip.py, with the tokenizer's own chunk layout (wrap()).
TokenizedPrompt tokenize_prompt(const Tokenizer& tokenizer, const std::string& prompt, const PromptChunkOptions& options) {
  const size_t chunk_length = tokenizer.max_length() - 2;
  // Checked before any work: max_chunks of tokens never take more than a few bytes a token.
  if (prompt.size() > options.max_bytes)
    throw Error("prompt: " + std::to_string(prompt.size()) + " bytes is over the " + std::to_string(options.max_bytes) +
                " a prompt may have (taiyi takes at most " + std::to_string(options.max_chunks * chunk_length) + " tokens)");
  TokenizedPrompt out;
  std::vector<int64_t> tokens;
  std::vector<double> weights;
  std::optional<size_t> last_comma;
  auto next_chunk = [&](ChunkCut cut) {
    if (out.chunks.size() >= options.max_chunks) {
      std::ostringstream message;
      message << "prompt: more than " << options.max_chunks << " chunks of " << chunk_length
              << " tokens; taiyi takes at most " << options.max_chunks * chunk_length << " tokens";
      throw Error(message.str());
    }
    PromptChunk chunk;
    chunk.content = tokens;
    chunk.content_tokens = tokens.size();
    chunk.weights = weights;
    chunk.ids = tokenizer.wrap(tokens, &chunk.weights);
    chunk.cut = cut;
    out.content_tokens += tokens.size();
    out.chunks.push_back(std::move(chunk));
    tokens.clear();
    weights.clear();
    last_comma.reset();
  };

  for (const PromptFragment& fragment : parse_prompt_attention(prompt)) {
    if (fragment.is_break) {
      next_chunk(ChunkCut::Break);
      continue;
    }
    const TextTokens text = tokenizer.tokenize(fragment.text);
    if (!text.ids.empty() && !(std::abs(fragment.weight) <= options.max_weight)) {
      std::ostringstream message;
      const std::u32string text32 = unicode::from_utf8(fragment.text);
      message << "prompt: '" << excerpt(text32, 0, text32.size()) << "' has weight "
              << fragment.weight << "; taiyi takes weights from " << -options.max_weight << " to " << options.max_weight;
      throw Error(message.str());
    }
    if (fragment.weight != 1.0 && !text.ids.empty()) out.weighted = true;
    for (size_t position = 0; position < text.ids.size(); ++position) {
      if (text.commas[position]) {
        last_comma = tokens.size();
      } else if (options.comma_backtrack != 0 && tokens.size() == chunk_length && last_comma &&
                 tokens.size() - *last_comma <= options.comma_backtrack) {
        // Full, with a comma among the last tokens: what follows the comma moves to the next chunk.
        const size_t cut_at = *last_comma + 1;
        std::vector<int64_t> moved_tokens(tokens.begin() + static_cast<ptrdiff_t>(cut_at), tokens.end());
        std::vector<double> moved_weights(weights.begin() + static_cast<ptrdiff_t>(cut_at), weights.end());
        tokens.resize(cut_at);
        weights.resize(cut_at);
        next_chunk(ChunkCut::Comma);
        tokens = std::move(moved_tokens);
        weights = std::move(moved_weights);
      }
      if (tokens.size() == chunk_length) next_chunk(ChunkCut::Full);
      tokens.push_back(text.ids[position]);
      weights.push_back(fragment.weight);
    }
  }
  if (!tokens.empty() || out.chunks.empty()) next_chunk(ChunkCut::End);
  return out;
}

}  // namespace taiyi
