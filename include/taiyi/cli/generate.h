// `taiyi "prompt"` / `taiyi --prompts FILE`: the generation options (the main command's), filled into a
// job spec and run by the job library (include/taiyi/jobs/job_runner.h); this front end only prints.
#pragma once

#include <string>
#include <vector>

#include "taiyi/jobs/job_runner.h"

namespace CLI {
class App;
}

namespace taiyi::cli {

struct GenerateCommand {
  std::string prompt;                // the positional prompt
  std::string prompt_option;         // -p
  JobSpec spec;                      // everything else a job is (its prompt set from the two above)
  std::string model;
  PipelineOptions pipeline;
  bool json = false, quiet = false;
  std::string preview;               // --preview FILE: the live preview, rewritten every preview_every steps
  int64_t preview_every = 5;
  std::string hires_size;            // --hires-size WxH (into spec.defaults.hires_width/height)
  std::string taesd;                 // --taesd: TAESD weights for the preview instead of the cheap approximation
};

// Registers the generation options on the main command.
void add_generate_options(CLI::App& app, GenerateCommand& command);
// Exit status: 0 all written, 1 some requests failed (the rest written), 130 interrupted; an Error
// (bad options, a single prompt's failure) is thrown for main to print.
int run_generate(const GenerateCommand& command);

}  // namespace taiyi::cli
