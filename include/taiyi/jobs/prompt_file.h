// Batch runs over prompt files: parsing (plain text or JSONL), sharding across processes, output
// names. Kept apart from the CLI so that each rule is tested on its own.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace taiyi {

// One line of a prompt file; fields a JSONL line leaves out are unset (the command line's apply).
struct PromptJob {
  int64_t line = 0;     // 1-based line number in the file
  int64_t ordinal = 0;  // 0-based index among the file's prompts (what --shard splits)
  std::string prompt;
  std::optional<std::string> negative_prompt;
  std::optional<uint64_t> seed;
  std::optional<int64_t> steps;
  std::optional<double> cfg_scale;
  std::optional<int64_t> width, height;
  std::optional<std::string> output;
  std::optional<std::string> sampler, schedule;  // --sampler / --schedule for this line
  std::optional<std::string> init_image, mask;   // relative to the prompt file's folder
  std::optional<double> strength;
  std::optional<int64_t> clip_skip;              // --clip-skip for this line
  // The hires fix for this line (--hires-*): checked when the line runs.
  std::optional<double> hires_scale, hires_strength;
  std::optional<int64_t> hires_width, hires_height, hires_steps;
  std::optional<std::string> hires_upscaler, hires_sampler;
};

struct PromptLineError {
  int64_t line = 0;
  int64_t ordinal = 0;
  std::string message;  // "<file>:<line>: ..."
};

struct PromptFile {
  std::vector<PromptJob> jobs;
  std::vector<PromptLineError> errors;  // malformed lines: reported, the rest still runs
};

// Plain text: a prompt a line; blank lines and lines starting with '#' skipped. JSONL (the file ends
// in .jsonl, or every prompt line starts with '{'): per line an object with "prompt" and optionally
// negative_prompt, seed, steps, cfg_scale, width, height, output, sampler, schedule, init_image,
// strength, mask, clip_skip, hires_scale, hires_width, hires_height, hires_upscaler, hires_steps,
// hires_strength, hires_sampler. Error when the file is unreadable.
// Error when the file is over kMaxPromptFile; a line over kMaxPromptLine is that line's error. Memory:
// a few times the file's size.
PromptFile read_prompt_file(const std::filesystem::path& path);
// The same rules over a file's content (`name` for messages); `jsonl` forces JSONL (a .jsonl name).
PromptFile parse_prompt_file(std::string_view content, const std::string& name, bool jsonl);
constexpr size_t kMaxPromptFile = 256u << 20;
constexpr size_t kMaxPromptLine = 1u << 20;

struct Shard {
  int64_t index = 0;  // 0-based
  int64_t count = 1;
  bool contains(int64_t ordinal) const { return ordinal % count == index; }
};
// "i/n" with 0 <= i < n; Error otherwise.
Shard parse_shard(const std::string& text);

// Expands {seed}, {image}, {line}, {index} in a name template; {name:0N} pads with zeros to N digits.
// Error on an unknown placeholder.
struct NameFields {
  uint64_t seed = 0;
  int64_t image = 0;  // image number within its prompt, 0-based
  int64_t line = 0;   // line in the prompt file (0 for a prompt given on the command line)
  int64_t index = 0;  // image number within the run, 0-based
};
std::string expand_name_template(const std::string& name_template, const NameFields& fields);

// The output path template for a run: `output` is what -o says ("" when absent), `images_per_prompt`
// and `from_file` describe the run. Rules (documented in the README):
//   a template (contains '{')           -> used as is;
//   a folder (exists, or ends with '/') -> folder/{line:05}-{image}.png (prompt file) or
//                                          folder/{seed}.png (one prompt);
//   a file name                         -> used as is for a single image, else name-{line:05}-{image}.png
//                                          / name-{seed}.png before the extension;
//   absent                              -> outputs/ as a folder.
std::string output_template(const std::string& output, bool from_file, int64_t images_per_prompt);

}  // namespace taiyi
