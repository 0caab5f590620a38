// `taiyi tokenize`: the chunks, token ids and weights the model sees for a prompt
// (include/taiyi/pipelines/prompt_parser.h), as text or JSON.
#pragma once

#include <string>

#include "taiyi/loaders/single_file.h"

namespace CLI {
class App;
}

namespace taiyi::cli {

struct TokenizeCommand {
  std::string model;
  ModelSourceOptions source;  // a single file's --config-dir (its tokenizer) and the rest, as generation takes them
  std::string prompt;
  bool json = false;
};

// Registers the subcommand on `app`; its options fill `command`.
CLI::App* add_tokenize_command(CLI::App& app, TokenizeCommand& command);
int run_tokenize(const TokenizeCommand& command);

}  // namespace taiyi::cli
