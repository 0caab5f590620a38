// The taiyi command line: parses arguments and dispatches to a subcommand (one file each in src/cli/),
// which calls the library. Nothing else.
//   taiyi "小桥流水人家，Van Gogh style" -o out.png
//   taiyi --prompts prompts.txt -o outputs/ --resume --shard 0/4
//   taiyi tokenize --model DIR "prompt"        taiyi info --model DIR        taiyi bench --model DIR
//   taiyi convert model.ckpt models/my-model --dtype fp16
//   taiyi serve --port 7860                  (the web UI's API and a page)
#include <cstdlib>
#include <exception>
#include <iostream>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "taiyi/cli/bench.h"
#include "taiyi/cli/convert.h"
#include "taiyi/cli/generate.h"
#include "taiyi/cli/info.h"
#include "taiyi/cli/serve.h"
#include "taiyi/cli/tokenize.h"
#include "taiyi/utils/error.h"

int main(int argc, char** argv) {
  // c10's CPU allocator backs allocations of 2 MB and more with transparent huge pages when this is set
  // (read at its first allocation, so before any tensor): the weights (4 GB in fp32) and the large
  // activation buffers then fault in 2 MB at a time instead of 4 kB. Measured on the full-size CPU run
  // (256x256, 4 steps): minor page faults 3.9 M -> 0.4 M, system time 15 s -> 3.4 s, wall 19.0 s -> 12.2 s.
  // A user's own setting wins (THP_MEM_ALLOC_ENABLE=0 turns it off).
  setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0);
  CLI::App app{"taiyi: text to image with Taiyi-Stable-Diffusion (and SD 1.x) models, in C++ with libtorch.\n"
               "  taiyi \"小桥流水人家，Van Gogh style\" -o out.png"};
  app.set_version_flag("--version", "taiyi 0.1.0");
  // The last of a repeated option wins, as in most command lines (and handy in scripts).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  taiyi::cli::GenerateCommand generate;
  taiyi::cli::add_generate_options(app, generate);
  taiyi::cli::TokenizeCommand tokenize;
  CLI::App* tokenize_app = taiyi::cli::add_tokenize_command(app, tokenize);
  taiyi::cli::InfoCommand info;
  CLI::App* info_app = taiyi::cli::add_info_command(app, info);
  taiyi::cli::BenchCommand bench;
  CLI::App* bench_app = taiyi::cli::add_bench_command(app, bench);
  taiyi::cli::ConvertCommand convert;
  CLI::App* convert_app = taiyi::cli::add_convert_command(app, convert);
  taiyi::cli::ServeCommand serve;
  CLI::App* serve_app = taiyi::cli::add_serve_command(app, serve);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*tokenize_app) return taiyi::cli::run_tokenize(tokenize);
    if (*info_app) return taiyi::cli::run_info(info);
    if (*bench_app) return taiyi::cli::run_bench_command(bench);
    if (*convert_app) return taiyi::cli::run_convert(convert);
    if (*serve_app) return taiyi::cli::run_serve(serve);
    return taiyi::cli::run_generate(generate);
  } catch (const taiyi::Error& e) {
    std::cerr << "taiyi: error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "taiyi: error: " << e.what_without_backtrace() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "taiyi: error: " << e.what() << "\n";
    return 2;
  }
}
