// Prompt syntax and long prompts as the AUTOMATIC1111 web UI reads them, re-implemented from its
// published algorithm: emphasis (modules/prompt_parser.py, parse_prompt_attention) and 75-token chunks
// with comma backtracking and BREAK (modules/sd_hijack_clip.py, tokenize_line). No torch here: the
// pipeline encodes each chunk and applies the weights (Pipeline::encode_prompt).
//
//   auto fragments = taiyi::parse_prompt_attention("a (red:1.3) house");  // {"a ",1}, {"red",1.3}, {" house",1}
//   taiyi::TokenizedPrompt t = taiyi::tokenize_prompt(tokenizer, "a (red:1.3) house");
//   t.chunks.size() == 1; t.chunks[0].ids.size() == tokenizer.max_length()
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi {

struct PromptFragment {
  std::string text;       // UTF-8, escapes resolved
  double weight = 1.0;    // the product of its brackets' multipliers
  bool is_break = false;  // the keyword BREAK (text empty): the current chunk ends here
  bool operator==(const PromptFragment& o) const {
    return text == o.text && weight == o.weight && is_break == o.is_break;
  }
};

// parse_prompt_attention: "(a)" x1.1, "[a]" /1.1, "(a:1.5)" x1.5 (the web UI's `:\s*([+-]?[.\d]+)\s*\)`),
// nested brackets multiply, "\(" "\)" "\[" "\]" "\\" are literal characters (a lone "\" vanishes),
// a ")" or "]" with nothing open is text, brackets left open apply to the end, runs of equal weight
// are merged. BREAK (upper case, on word boundaries, with the spaces around it) becomes a break
// fragment; unlike the web UI, inside brackets too (there it turns into the word "BREAK" with weight
// -1.1). Error when a weight such as "1.2.3" is not a number.
std::vector<PromptFragment> parse_prompt_attention(const std::string& prompt);

// Why a chunk ended.
enum class ChunkCut {
  End,    // the prompt ended
  Break,  // BREAK
  Comma,  // it was full, and the tokens after its last comma (within comma_backtrack) moved on
  Full,   // it was full, with no comma near its end
};
const char* chunk_cut_name(ChunkCut cut);  // "end", "BREAK", "comma", "full"

struct PromptChunk {
  std::vector<int64_t> ids;      // tokenizer.max_length() ids: specials, content, padding
  std::vector<double> weights;   // per id; 1 for the specials and the padding
  std::vector<int64_t> content;  // the content ids alone
  size_t content_tokens = 0;
  ChunkCut cut = ChunkCut::End;
};

struct PromptChunkOptions {
  size_t comma_backtrack = 20;  // the web UI's comma_padding_backtrack; 0 turns it off
  size_t max_chunks = 32;       // a longer prompt is an error (it would grow the UNet's context without bound)
  double max_weight = 1000;     // |weight| of a token above this is an error
  size_t max_bytes = 65536;     // a longer prompt is an error before it is parsed (32 x 75 tokens fit in ~15 KB)
};

struct TokenizedPrompt {
  std::vector<PromptChunk> chunks;  // at least one
  size_t content_tokens = 0;        // over all chunks
  bool weighted = false;            // some token's weight is not 1
};

// Chunks of max_length - 2 content tokens (75 for CLIP, 510 for BERT): each fragment is tokenized on
// its own; when a chunk is full and a comma ("," and here also "，" and "、") is among its last
// comma_backtrack tokens, the tokens after that comma start the next chunk; BREAK ends a chunk. A
// prompt without syntax of at most max_length - 2 tokens gives exactly tokenizer.encode()'s ids.
TokenizedPrompt tokenize_prompt(const Tokenizer& tokenizer, const std::string& prompt,
                                const PromptChunkOptions& options = {});

}  // namespace taiyi
