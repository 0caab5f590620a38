// `taiyi tokenize`; see include/taiyi/cli/tokenize.h.
#include "taiyi/cli/tokenize.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "taiyi/cli/options.h"
#include "taiyi/loaders/single_file.h"
#include "taiyi/jobs/infotext.h"
#include "taiyi/loaders/model_folder.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi::cli {

using Json = nlohmann::json;

CLI::App* add_tokenize_command(CLI::App& app, TokenizeCommand& command) {
  command.model = default_model();
  CLI::App* tokenize = app.add_subcommand("tokenize", "print the chunks, token ids and weights the model sees for a prompt");
  add_model_option(tokenize, command.model);
  add_model_source_options(tokenize, command.source);
  tokenize->add_option("prompt", command.prompt, "the prompt")->required();
  tokenize->add_flag("--json", command.json, "JSON output");
  return tokenize;
}

namespace {

std::vector<std::string> token_strings(const Tokenizer& tokenizer, const PromptChunk& chunk) {
  std::vector<std::string> tokens;
  for (int64_t id : chunk.ids) tokens.push_back(tokenizer.token(id));
  return tokens;
}

Json tokenized_json(const Tokenizer& tokenizer, const TokenizedPrompt& t) {
  Json chunks = Json::array();
  for (const PromptChunk& c : t.chunks)
    chunks.push_back({{"content_tokens", c.content_tokens}, {"cut", chunk_cut_name(c.cut)},
                      {"text", tokenizer.decode(c.content)}, {"ids", c.ids},
                      {"tokens", token_strings(tokenizer, c)}, {"weights", c.weights}});
  return {{"tokenizer", tokenizer.kind()}, {"max_length", tokenizer.max_length()},
          {"chunk_length", tokenizer.max_length() - 2}, {"content_tokens", t.content_tokens}, {"weighted", t.weighted},
          {"context_tokens", t.chunks.size() * tokenizer.max_length()}, {"chunks", chunks}};
}

std::string cut_reason(ChunkCut cut) {
  switch (cut) {
    case ChunkCut::End: return "the prompt's end";
    case ChunkCut::Break: return "BREAK";
    case ChunkCut::Comma: return "full, cut after its last comma";
    case ChunkCut::Full:
      return "full (no comma in its last " + std::to_string(PromptChunkOptions{}.comma_backtrack) + " tokens)";
  }
  return "";
}

void print_tokenized(const Tokenizer& tokenizer, const TokenizedPrompt& t) {
  std::cout << tokenizer.kind() << ": " << t.content_tokens << " token(s) in " << t.chunks.size() << " chunk(s) of "
            << tokenizer.max_length() - 2 << "\n";
  for (size_t k = 0; k < t.chunks.size(); ++k) {
    const PromptChunk& c = t.chunks[k];
    const std::vector<std::string> tokens = token_strings(tokenizer, c);
    std::cout << "chunk " << k + 1 << ": " << c.content_tokens << " token(s), ended by " << cut_reason(c.cut) << ": \""
              << tokenizer.decode(c.content) << "\"\n";
    const size_t shown = c.content_tokens + 2;  // specials and content; the padding once
    for (size_t i = 0; i < c.ids.size() && i <= shown; ++i) {
      if (i == shown) {
        std::cout << "... padded to " << c.ids.size() << " with " << c.ids[i] << " " << tokens[i] << "\n";
        break;
      }
      std::cout << i << "\t" << c.ids[i] << "\t" << tokens[i];
      if (c.weights[i] != 1.0) std::cout << "\t" << format_number(c.weights[i]);
      std::cout << "\n";
    }
  }
}

bool same_ids(const TokenizedPrompt& a, const TokenizedPrompt& b) {
  if (a.chunks.size() != b.chunks.size()) return false;
  for (size_t k = 0; k < a.chunks.size(); ++k)
    if (a.chunks[k].ids != b.chunks[k].ids) return false;
  return true;
}

}  // namespace

// The chunks the model sees (include/taiyi/pipelines/prompt_parser.h): per chunk why it ended, per token its
// id, string and weight. An SDXL model's tokenizer_2 too (SDXL base's pads with "!", so its ids differ in the
// padding; Taiyi-XL's are the first's): in full when its ids differ, else one line saying they are the same.
int run_tokenize(const TokenizeCommand& command) {
  const ModelSource source = ModelSource::open(command.model, command.source);
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(source.folder());
  const TokenizedPrompt t = tokenize_prompt(*tokenizer, command.prompt);
  std::unique_ptr<Tokenizer> tokenizer_2;
  TokenizedPrompt t2;
  if (source.folder().is_sdxl()) {
    tokenizer_2 = load_tokenizer(source.folder(), "tokenizer_2");
    t2 = tokenize_prompt(*tokenizer_2, command.prompt);
  }
  if (command.json) {
    Json out = tokenized_json(*tokenizer, t);
    if (tokenizer_2) out["tokenizer_2"] = tokenized_json(*tokenizer_2, t2);
    std::cout << out.dump() << "\n";
    return 0;
  }
  print_tokenized(*tokenizer, t);
  if (tokenizer_2) {
    std::cout << "tokenizer_2: ";
    if (same_ids(t, t2)) {
      std::cout << tokenizer_2->kind() << ", the same ids\n";
    } else {
      print_tokenized(*tokenizer_2, t2);
    }
  }
  if (t.chunks.size() > 1)
    std::cerr << "taiyi: note: " << t.chunks.size() << " chunks: the UNet attends to " << t.chunks.size() * tokenizer->max_length()
              << " context tokens (nothing is lost)\n";
  return 0;
}

}  // namespace taiyi::cli
