// `taiyi tokenize`; see include/taiyi/cli/tokenize.h.
#include "taiyi/cli/tokenize.h"

#include <iostream>

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

// The chunks the model sees (include/taiyi/pipelines/prompt_parser.h): per chunk why it ended, per token its
// id, string and weight.
int run_tokenize(const TokenizeCommand& command) {
  const std::string& model = command.model;
  const std::string& prompt = command.prompt;
  const bool json = command.json;
  const ModelSource source = ModelSource::open(model, command.source);
  auto tokenizer = load_tokenizer(source.folder());
  const TokenizedPrompt t = tokenize_prompt(*tokenizer, prompt);
  const size_t chunk_length = tokenizer->max_length() - 2;
  auto token_strings = [&](const PromptChunk& c) {
    std::vector<std::string> tokens;
    for (int64_t id : c.ids) tokens.push_back(tokenizer->token(id));
    return tokens;
  };
  if (json) {
    Json chunks = Json::array();
    for (const PromptChunk& c : t.chunks)
      chunks.push_back({{"content_tokens", c.content_tokens}, {"cut", chunk_cut_name(c.cut)},
                        {"text", tokenizer->decode(c.content)}, {"ids", c.ids},
                        {"tokens", token_strings(c)}, {"weights", c.weights}});
    std::cout << Json{{"tokenizer", tokenizer->kind()}, {"max_length", tokenizer->max_length()},
                      {"chunk_length", chunk_length}, {"content_tokens", t.content_tokens}, {"weighted", t.weighted},
                      {"context_tokens", t.chunks.size() * tokenizer->max_length()}, {"chunks", chunks}}
                     .dump()
              << "\n";
    return 0;
  }
  std::cout << tokenizer->kind() << ": " << t.content_tokens << " token(s) in " << t.chunks.size() << " chunk(s) of "
            << chunk_length << "\n";
  auto cut_reason = [](ChunkCut cut) -> std::string {
    switch (cut) {
      case ChunkCut::End: return "the prompt's end";
      case ChunkCut::Break: return "BREAK";
      case ChunkCut::Comma: return "full, cut after its last comma";
      case ChunkCut::Full:
        return "full (no comma in its last " + std::to_string(PromptChunkOptions{}.comma_backtrack) + " tokens)";
    }
    return "";
  };
  for (size_t k = 0; k < t.chunks.size(); ++k) {
    const PromptChunk& c = t.chunks[k];
    const std::vector<std::string> tokens = token_strings(c);
    std::cout << "chunk " << k + 1 << ": " << c.content_tokens << " token(s), ended by " << cut_reason(c.cut) << ": \""
              << tokenizer->decode(c.content) << "\"\n";
    const size_t shown = c.content_tokens + 2;  // specials and content; the padding once
    for (size_t i = 0; i < c.ids.size() && i <= shown; ++i) {
      if (i == shown) {
        std::cout << "... padded to " << c.ids.size() << "\n";
        break;
      }
      std::cout << i << "\t" << c.ids[i] << "\t" << tokens[i];
      if (c.weights[i] != 1.0) std::cout << "\t" << format_number(c.weights[i]);
      std::cout << "\n";
    }
  }
  if (t.chunks.size() > 1)
    std::cerr << "taiyi: note: " << t.chunks.size() << " chunks: the UNet attends to " << t.chunks.size() * tokenizer->max_length()
              << " context tokens (nothing is lost)\n";
  return 0;
}

}  // namespace taiyi::cli
