// The taiyi command line: parses arguments, calls the library, prints and writes files. Nothing else.
//   taiyi "小桥流水人家，Van Gogh style" -o out.png
//   taiyi --prompts prompts.txt -o outputs/ --resume --shard 0/4
//   taiyi tokenize --model DIR "prompt"        taiyi info --model DIR        taiyi bench --model DIR
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <new>
#include <optional>
#include <random>
#include <set>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "taiyi/jobs/prompt_file.h"
#include "taiyi/cli/bench.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "taiyi/cli/info.h"
#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/loaders/lora_weights.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/pipelines/prompt_parser.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// Ctrl-C: the first stops the run after the current batch (its images are written); the second
// abandons the current batch at the next denoising step. Files are only ever renamed into place
// whole, so nothing partial is left either way.
std::atomic<int> interrupts{0};
extern "C" void on_sigint(int) { interrupts.fetch_add(1); }

struct Interrupted : std::exception {};

struct GenerateArgs {
  std::string prompt, prompt_option, negative_prompt, prompts_file, output, model, shard, init_image, mask;
  int64_t steps = 50, width = 0, height = 0, num_images = 1, batch_size = 1, clip_skip = 1;
  double cfg_scale = 7.5, strength = 0.75;
  std::optional<uint64_t> seed;
  taiyi::PipelineOptions pipeline;
  std::vector<std::string> loras;  // --lora FILE[:SCALE]
  bool overwrite = false, resume = false, json = false, quiet = false, sidecar = false;
};

std::string default_model() {
  if (const char* env = std::getenv("TAIYI_MODEL"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return (fs::path(home ? home : ".") / ".cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1").string();
}

std::string cache_folder(const std::string& name) {
  const char* home = std::getenv("HOME");
  return (fs::path(home ? home : ".") / ".cache/taiyi" / name).string();
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A value as the web UI's infotext writes it: quoted (JSON escapes) when it holds , : or ".
std::string quote_parameter(const std::string& value) {
  if (value.find_first_of(",:\"") == std::string::npos) return value;
  return Json(value).dump();
}

// The AUTOMATIC1111 "parameters" text, which web UIs parse back into their settings.
// `written` is the request as given (prompts with their <lora:...> tags), `r` the completed one.
std::string a1111_parameters(const taiyi::GenerationRequest& written, const taiyi::GenerationRequest& r,
                             const taiyi::Image& image, const taiyi::SamplerSetting& sampler, const std::string& model,
                             const std::function<std::string(const std::string&)>& lora_hash) {
  std::string text = written.prompt + "\n";
  if (!written.negative_prompt.empty()) text += "Negative prompt: " + written.negative_prompt + "\n";
  text += "Steps: " + std::to_string(r.steps) + ", Sampler: " + sampler.web_ui_name +
          (sampler.schedule_type.empty() ? "" : ", Schedule type: " + sampler.schedule_type) +
          ", CFG scale: " + format_number(r.cfg_scale) +
          ", Seed: " + std::to_string(image.seed) + ", Size: " + std::to_string(image.width) + "x" +
          std::to_string(image.height) + ", Model: " + model;
  if (!r.init_image.empty()) text += ", Denoising strength: " + format_number(r.strength);
  if (!r.mask.empty()) text += ", Mask: " + quote_parameter(fs::path(r.mask).filename().string());
  if (r.clip_skip > 1) text += ", Clip skip: " + std::to_string(r.clip_skip);
  // extra_networks_lora.py: {mentioned name without ':' ',' : shorthash}, a dict (a repeated name keeps
  // its first place), joined with ", ".
  std::vector<std::pair<std::string, std::string>> hashes;
  for (const taiyi::LoraSelection& lora : r.loras) {
    std::string name;
    for (char c : lora.name)
      if (c != ':' && c != ',') name += c;
    const std::string hash = lora_hash(lora.file);
    auto it = std::find_if(hashes.begin(), hashes.end(), [&](const auto& h) { return h.first == name; });
    if (it != hashes.end()) it->second = hash;
    else hashes.emplace_back(name, hash);
  }
  if (!hashes.empty()) {
    std::string joined;
    for (const auto& [name, hash] : hashes) joined += (joined.empty() ? "" : ", ") + name + ": " + hash;
    text += ", Lora hashes: " + quote_parameter(joined);
  }
  return text;
}

// --lora FILE[:SCALE]: the multiplier of both text encoder and UNet (1 when absent).
taiyi::LoraSelection parse_lora_option(const std::string& value) {
  taiyi::LoraSelection lora;
  lora.file = value;
  const size_t colon = value.rfind(':');
  if (colon != std::string::npos && colon + 1 < value.size()) {
    const std::string scale = value.substr(colon + 1);
    char* end = nullptr;
    const double v = std::strtod(scale.c_str(), &end);
    if (end == scale.c_str() + scale.size() && std::isfinite(v)) {
      lora.file = value.substr(0, colon);
      lora.te_multiplier = lora.unet_multiplier = v;
    } else if (!fs::exists(value)) {
      throw taiyi::Error("--lora " + value + ": scale '" + scale + "' is not a number (--lora FILE[:SCALE])");
    }
  }
  if (!fs::is_regular_file(lora.file)) throw taiyi::Error("--lora " + lora.file + ": file not found");
  lora.name = fs::path(lora.file).stem().string();
  return lora;
}

// Which LoRA set a request asks for, as text (its --lora options and its prompts' tags, unresolved);
// "" plus a unique suffix when the tags do not parse, so that the line runs (and fails) alone.
std::string lora_set_key(const taiyi::GenerationRequest& r, size_t unique) {
  std::string key;
  for (const auto& lora : r.loras)
    key += lora.file + "\x1f" + format_number(lora.te_multiplier) + "\x1f" + format_number(lora.unet_multiplier) + "\x1e";
  try {
    for (const std::string* text : {&r.prompt, &r.negative_prompt})
      for (const auto& tag : taiyi::parse_extra_networks(*text).loras)
        key += "<" + tag.name + "\x1f" + format_number(tag.te_multiplier) + "\x1f" + format_number(tag.unet_multiplier) + "\x1e";
  } catch (const taiyi::Error&) {
    return "\x1d" + std::to_string(unique);
  }
  return key;
}

// What changes the numbers, in the web UI's "Key: value" form (values with commas quoted, as it
// quotes them): the precision when not fp32, on CUDA TF32 and cuDNN autotuning, and an fp32 VAE under
// a half-precision model.
std::string numerics_parameters(const taiyi::Pipeline& pipe) {
  const taiyi::Numerics& n = pipe.numerics();
  std::string text;
  if (pipe.dtype() != torch::kFloat) text += ", Precision: " + taiyi::precision_name(pipe.dtype());
  if (n.cuda) {
    const std::string tf32 = n.tf32_matmul && n.tf32_conv ? "matmul+conv" : n.tf32_conv ? "conv" : n.tf32_matmul ? "matmul" : "off";
    text += ", TF32: " + tf32;
    if (n.cudnn_benchmark) text += ", cuDNN benchmark: on";
  }
  if (pipe.vae_dtype() != pipe.dtype()) text += ", VAE precision: " + taiyi::precision_name(pipe.vae_dtype());
  return text;
}

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label) : enabled_(enabled), label_(std::move(label)) {}
  void operator()(int64_t step, int64_t total) {
    if (interrupts.load() >= 2) throw Interrupted();
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (step == 1) first_ = now;
    double elapsed = std::chrono::duration<double>(now - first_).count();
    double rate = step > 1 ? (step - 1) / elapsed : 0.0;
    double eta = rate > 0 ? (total - step) / rate : 0.0;
    const int width = 30;
    int filled = static_cast<int>(width * step / total);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.2f it/s  ETA %.0fs ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), static_cast<long long>(step), static_cast<long long>(total),
                 rate, eta);
    if (step == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string label_;
  std::chrono::steady_clock::time_point first_;
};

Json lora_records(const taiyi::GenerationRequest& r, const std::function<std::string(const std::string&)>& lora_hash) {
  Json list = Json::array();
  for (const auto& lora : r.loras)
    list.push_back({{"name", lora.name}, {"file", lora.file}, {"te", lora.te_multiplier}, {"unet", lora.unet_multiplier},
                    {"hash", lora_hash(lora.file)}});
  return list;
}

struct Job {
  taiyi::GenerationRequest request;
  int64_t line = 0;  // 0: the command-line prompt
  std::vector<std::string> outputs;  // one per image
  std::string lora_set;  // lora_set_key of the request, set once when the jobs are grouped
  bool checked = false;  // validated (Pipeline::validate) before it joins a batch
  bool failed = false;   // its error is reported; it is not run
  bool alone = false;    // runs in a batch of its own (its batch failed: each member is retried alone)
};

void check_output_folder(const fs::path& file) {
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) throw taiyi::Error(dir.string() + ": cannot create the output folder: " + ec.message());
  if (access(dir.c_str(), W_OK) != 0) throw taiyi::Error(dir.string() + ": output folder is not writable");
}

// A failure's one-line message: taiyi's, libtorch's without its C++ backtrace, or what failed to allocate.
std::string describe_failure(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e)) return "out of memory: an allocation failed (try a smaller size or batch)";
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) {
    std::string message = torch_error->what_without_backtrace();
    if (size_t eol = message.find('\n'); eol != std::string::npos) message.resize(eol);
    return message;
  }
  return e.what();
}

int run_generate(GenerateArgs& a) {
  const bool from_file = !a.prompts_file.empty();
  std::string prompt = a.prompt_option.empty() ? a.prompt : a.prompt_option;
  if (from_file && !prompt.empty()) throw taiyi::Error("give either a prompt or --prompts FILE, not both");
  if (!from_file && !a.prompt.empty() && !a.prompt_option.empty())
    throw taiyi::Error("give the prompt either as an argument or with -p, not both");
  if (!from_file && prompt.empty())
    throw taiyi::Error("no prompt: taiyi \"a prompt\" -o out.png, or --prompts FILE (see --help)");
  if (a.num_images < 1) throw taiyi::Error("--num-images " + std::to_string(a.num_images) + ": must be at least 1");
  if (a.batch_size < 1) throw taiyi::Error("--batch-size " + std::to_string(a.batch_size) + ": must be at least 1");
  if (a.cfg_scale < 0) throw taiyi::Error("--cfg-scale " + format_number(a.cfg_scale) + ": must not be negative");
  if (!(a.strength > 0 && a.strength <= 1))
    throw taiyi::Error("--strength " + format_number(a.strength) + ": must be greater than 0 and at most 1");
  if (a.clip_skip < 1)
    throw taiyi::Error("--clip-skip " + std::to_string(a.clip_skip) + ": must be at least 1 (1: the last layer, as the web UI counts)");
  if (!a.init_image.empty() && !from_file) taiyi::image_size(a.init_image);  // a bad file fails before the model loads
  if (!a.mask.empty() && !from_file) {
    if (a.init_image.empty()) throw taiyi::Error("--mask needs an init image to inpaint (-i FILE)");
    taiyi::image_size(a.mask);
  }
  if (a.steps < 1) throw taiyi::Error("--steps " + std::to_string(a.steps) + ": must be at least 1");
  for (auto [name, v] : {std::pair<const char*, int64_t>{"-W/--width", a.width}, {"-H/--height", a.height}})
    if (v != 0 && (v < 8 || v % 8 != 0))
      throw taiyi::Error(std::string(name) + " " + std::to_string(v) + ": must be a positive multiple of 8");
  if (a.pipeline.eta < 0) throw taiyi::Error("--eta " + format_number(a.pipeline.eta) + ": must not be negative");
  taiyi::Shard shard = a.shard.empty() ? taiyi::Shard{} : taiyi::parse_shard(a.shard);
  if (!a.shard.empty() && !from_file) throw taiyi::Error("--shard splits a prompt file: use it with --prompts");

  std::vector<taiyi::LoraSelection> loras;
  for (const std::string& value : a.loras) loras.push_back(parse_lora_option(value));
  const uint64_t base_seed = a.seed ? *a.seed : std::random_device{}() % 4294967295ull;
  std::vector<Job> jobs;
  std::vector<std::string> failures;  // "line N: message"
  taiyi::PromptFile file;
  if (from_file) {
    file = taiyi::read_prompt_file(a.prompts_file);
    for (const auto& e : file.errors) {
      if (!shard.contains(e.ordinal)) continue;
      std::cerr << "taiyi: error: " << e.message << "\n";
      failures.push_back(e.message);
    }
  } else {
    taiyi::PromptJob job;
    job.prompt = prompt;
    file.jobs.push_back(job);
  }
  const std::string name_template = taiyi::output_template(a.output, from_file, a.num_images);
  int64_t index = 0;
  for (const taiyi::PromptJob& p : file.jobs) {
    if (from_file && !shard.contains(p.ordinal)) continue;
    Job job;
    job.line = p.line;
    job.request.prompt = p.prompt;
    job.request.negative_prompt = p.negative_prompt.value_or(a.negative_prompt);
    // Each line's seeds depend only on its place in the file, so shards and resumed runs agree.
    job.request.seed = p.seed ? *p.seed : base_seed + static_cast<uint64_t>(from_file ? p.ordinal * a.num_images : 0);
    job.request.steps = p.steps.value_or(a.steps);
    job.request.cfg_scale = p.cfg_scale.value_or(a.cfg_scale);
    job.request.width = p.width.value_or(a.width);
    job.request.height = p.height.value_or(a.height);
    job.request.count = a.num_images;
    job.request.sampler = p.sampler.value_or("");
    job.request.schedule = p.schedule.value_or("");
    // A line's init_image is relative to the prompt file's folder; -i applies to lines without one.
    job.request.init_image = p.init_image ? (fs::path(a.prompts_file).parent_path() / *p.init_image).string() : a.init_image;
    job.request.strength = p.strength.value_or(a.strength);
    job.request.clip_skip = p.clip_skip.value_or(a.clip_skip);
    job.request.mask = p.mask ? (fs::path(a.prompts_file).parent_path() / *p.mask).string() : a.mask;
    job.request.loras = loras;
    try {
      for (int64_t i = 0; i < a.num_images; ++i) {
        taiyi::NameFields fields{job.request.seed + static_cast<uint64_t>(i), i, p.line, index++};
        std::string out = p.output ? (a.num_images == 1 ? *p.output : taiyi::output_template(*p.output, false, a.num_images))
                                   : name_template;
        job.outputs.push_back(taiyi::expand_name_template(out, fields));
      }
    } catch (const taiyi::Error& e) {
      // A line's own "output" with an unknown placeholder is that line's error.
      if (!from_file || !p.output) throw;
      const std::string message = "line " + std::to_string(p.line) + ": " + e.what();
      std::cerr << "taiyi: error: " << message << "\n";
      failures.push_back(message);
      continue;
    }
    jobs.push_back(std::move(job));
  }

  // Outputs that exist: skipped with --resume, an error without --overwrite, replaced with it.
  std::vector<Job> todo;
  int64_t skipped = 0;
  for (Job& job : jobs) {
    bool all_exist = true, any_exist = false;
    for (const auto& out : job.outputs) {
      std::error_code ignored;  // a name the file system refuses (too long) is that line's write error, later
      bool exists = fs::exists(out, ignored);
      all_exist = all_exist && exists;
      any_exist = any_exist || exists;
    }
    if (a.resume && all_exist) {
      ++skipped;
      continue;
    }
    if (any_exist && !a.overwrite && !a.resume) {
      for (const auto& out : job.outputs)
        if (std::error_code ignored; fs::exists(out, ignored))
          throw taiyi::Error(out + ": already exists (use --overwrite to replace it, or --resume to skip done images)");
    }
    todo.push_back(std::move(job));
  }
  if (!todo.empty()) check_output_folder(todo.front().outputs.front());
  {
    // What a killed run was writing when it died: its temporary files go (each output is whole or absent).
    std::set<fs::path> folders;
    for (const Job& job : jobs)
      for (const auto& out : job.outputs) folders.insert(fs::path(out).parent_path());
    size_t removed = 0;
    for (const fs::path& folder : folders) removed += taiyi::remove_stale_temporaries(folder);
    if (removed && !a.quiet) std::cerr << "taiyi: removed " << removed << " unfinished temporary file(s) of an interrupted run\n";
  }
  // Lines grouped by LoRA set, in the order each set first appears (a stable sort), so that each set
  // is merged once: merging and un-merging cost a pass over the touched weights.
  {
    std::map<std::string, size_t> first_seen;
    std::vector<std::pair<size_t, size_t>> order;  // (set rank, position)
    for (size_t i = 0; i < todo.size(); ++i) {
      todo[i].lora_set = lora_set_key(todo[i].request, i);
      auto it = first_seen.emplace(todo[i].lora_set, first_seen.size()).first;
      order.emplace_back(it->second, i);
    }
    std::stable_sort(order.begin(), order.end());
    std::vector<Job> grouped;
    for (const auto& [rank, i] : order) grouped.push_back(std::move(todo[i]));
    todo = std::move(grouped);
  }
  std::map<std::string, std::string> lora_hashes;  // file -> short hash, computed once
  auto lora_hash = [&](const std::string& file) {
    auto it = lora_hashes.find(file);
    if (it == lora_hashes.end()) it = lora_hashes.emplace(file, taiyi::lora_short_hash(file)).first;
    return it->second;
  };

  const bool progress_enabled = !a.quiet && isatty(STDERR_FILENO);
  if (!a.quiet)
    std::cerr << "taiyi: loading " << a.model << "\n";
  if (!a.quiet) a.pipeline.notice = [](const std::string& text) { std::cerr << "\ntaiyi: warning: " << text << "\n"; };
  taiyi::Pipeline pipe = taiyi::Pipeline::load(a.model, a.pipeline);
  const std::string precision_name = taiyi::precision_name(pipe.dtype());
  const taiyi::Numerics& numerics = pipe.numerics();
  const bool tf32_used = numerics.tf32_matmul && pipe.dtype() == torch::kFloat;
  const std::string model_name = pipe.model_name();
  if (!a.quiet) {
    std::cerr << "taiyi: " << (pipe.device().is_cuda() ? "CUDA" : "CPU") << " "
              << precision_name << (numerics.cuda ? " (" + numerics.describe() + ")" : "") << ", " << pipe.sampler_name() << ", "
              << pipe.tokenizer().kind() << "; " << todo.size() << " prompt(s) to run";
    if (skipped) std::cerr << ", " << skipped << " already done (--resume)";
    std::cerr << "\n";
    // The estimate that validation holds each batch to (scripts/memory_estimate.sh compares it with the peak),
    // for the first line that is valid (a bad one fails in its turn, below).
    for (const Job& job : todo) {
      taiyi::GenerationRequest first;
      try {
        first = pipe.complete(job.request);
      } catch (const std::exception&) {
        continue;
      }
      first.count = 1;
      const std::optional<uint64_t> available = taiyi::available_memory(pipe.device());
      std::fprintf(stderr, "taiyi: %lldx%lld needs about %.2f GB of working memory an image", static_cast<long long>(first.width),
                   static_cast<long long>(first.height), static_cast<double>(pipe.working_memory(first)) / 1e9);
      if (available) std::fprintf(stderr, " (%.1f GB available)", static_cast<double>(*available) / 1e9);
      std::fprintf(stderr, "\n");
      break;
    }
  }

  std::signal(SIGINT, on_sigint);
  int64_t written = 0;
  size_t next = 0;
  bool interrupted = false;
  while (next < todo.size()) {
    if (interrupts.load() > 0) {
      interrupted = true;
      break;
    }
    // Each line is validated before it joins a batch (sizes, steps, counts, memory, prompt syntax):
    // a line that fails is that line's error, reported once, and never allocates anything.
    auto line_name = [&](const Job& job) { return job.line ? "line " + std::to_string(job.line) : std::string("prompt"); };
    auto usable = [&](size_t i) {
      Job& job = todo[i];
      if (job.failed) return false;
      if (job.checked) return true;
      try {
        pipe.validate(pipe.complete(job.request));
        job.checked = true;
        return true;
      } catch (const taiyi::Error& e) {
        if (!from_file) throw;
        job.failed = true;
        std::cerr << "taiyi: error: " << line_name(job) << ": " << e.what() << "\n";
        failures.push_back(line_name(job) + ": " + e.what());
        return false;
      }
    };
    if (!usable(next)) {
      ++next;
      continue;
    }
    // A batch: consecutive jobs that share steps, scale, size, sampler and context length (prompt
    // chunks), up to --batch-size images.
    auto context_chunks = [&](const taiyi::GenerationRequest& r) -> int64_t {
      try {
        return pipe.context_chunks(r);
      } catch (const std::exception&) {
        return -1;
      }
    };
    // Each line fits alone (validate checked it); a batch grows only while all its images still fit.
    std::optional<taiyi::GenerationRequest> first_completed;  // the batch's first line, completed once
    auto fits_in_memory = [&](int64_t total_images) {
      try {
        if (!first_completed) first_completed = pipe.complete(todo[next].request);
        taiyi::GenerationRequest combined = *first_completed;
        combined.count = total_images;
        pipe.check_memory(combined);
        return true;
      } catch (const std::exception&) {
        return false;
      }
    };
    std::vector<size_t> members{next};
    int64_t images = todo[next].request.count;
    const int64_t first_chunks = a.batch_size > images && !todo[next].alone ? context_chunks(todo[next].request) : 0;
    size_t scan = next + 1;
    while (!todo[next].alone && scan < todo.size() && images + todo[scan].request.count <= a.batch_size) {
      const auto& f = todo[next].request;
      const auto& r = todo[scan].request;
      if (todo[scan].alone || r.steps != f.steps || r.cfg_scale != f.cfg_scale || r.width != f.width || r.height != f.height ||
          r.sampler != f.sampler || r.schedule != f.schedule || r.init_image.empty() != f.init_image.empty() ||
          r.strength != f.strength || r.mask.empty() != f.mask.empty() || first_chunks < 0 ||
          context_chunks(r) != first_chunks || todo[scan].lora_set != todo[next].lora_set || !usable(scan) ||
          !fits_in_memory(images + r.count))
        break;
      members.push_back(scan);
      images += r.count;
      ++scan;
    }
    next = scan;
    std::vector<taiyi::GenerationRequest> requests;
    std::string where;
    for (size_t m : members) {
      requests.push_back(todo[m].request);
      where += (where.empty() ? "" : ",") + (todo[m].line ? "line " + std::to_string(todo[m].line) : std::string("prompt"));
    }
    int64_t written_in_batch = 0;
    try {
      ProgressBar bar(progress_enabled, where);
      std::vector<taiyi::Image> results = pipe.generate_batch(requests, std::ref(bar));
      size_t k = 0;
      for (size_t m : members) {
        Job& job = todo[m];
        taiyi::GenerationRequest r = pipe.complete(job.request);
        const taiyi::SamplerSetting sampler = pipe.sampler_setting(r);
        for (size_t i = 0; i < job.outputs.size(); ++i, ++k) {
          const taiyi::Image& image = results[k];
          std::string params = a1111_parameters(job.request, r, image, sampler, model_name, lora_hash);
          // The numerics in force change results: say so wherever the settings are recorded.
          params += numerics_parameters(pipe);
          fs::path out = job.outputs[i];
          check_output_folder(out);
          Json record = {{"file", out.string()},       {"prompt", r.prompt},  {"negative_prompt", r.negative_prompt},
                         {"seed", image.seed},         {"steps", r.steps},    {"cfg_scale", r.cfg_scale},
                         {"width", image.width},       {"height", image.height}, {"sampler", sampler.web_ui_name},
                         {"schedule", taiyi::schedule_name(sampler.schedule)},
                         {"init_image", r.init_image.empty() ? Json() : Json(r.init_image)},
                         {"strength", r.init_image.empty() ? Json() : Json(r.strength)},
                         {"mask", r.mask.empty() ? Json() : Json(r.mask)},
                         {"clip_skip", r.clip_skip},
                         {"loras", lora_records(r, lora_hash)},
                         {"model", model_name},        {"line", job.line},
                         {"device", pipe.device().str()}, {"precision", precision_name}, {"tf32", tf32_used},
                         {"vae_precision", taiyi::precision_name(pipe.vae_dtype())}};
          if (numerics.cuda) record["numerics"] = numerics.to_json();
          // The sidecar first, the image last: --resume counts a line done by its images, so a run killed
          // between the two writes redoes the line rather than leave an image without its sidecar.
          fs::path side = out;
          side.replace_extension(".json");
          if (a.sidecar) taiyi::write_file_atomically(side, record.dump(2) + "\n");
          try {
            taiyi::write_file_atomically(out, taiyi::encode_png(image.rgb.data(), static_cast<int>(image.width),
                                                                static_cast<int>(image.height), {{"parameters", params}}));
          } catch (const taiyi::Error&) {
            std::error_code ignored;
            if (a.sidecar) fs::remove(side, ignored);  // no sidecar of an image that is not there
            throw;
          }
          if (a.json) std::cout << record.dump() << std::endl;
          else if (!a.quiet) std::cerr << "taiyi: wrote " << out.string() << " (seed " << image.seed << ")\n";
          ++written;
          ++written_in_batch;
        }
      }
    } catch (const Interrupted&) {
      interrupted = true;
      break;
    } catch (const std::exception& e) {
      // Any failure (an Error, a libtorch error, an allocation that failed) is the failure of this batch
      // alone: the run goes on. A single prompt's error is the run's error.
      if (!from_file) throw;
      const std::string message = describe_failure(e);
      taiyi::release_gpu_cache(pipe.device());  // what a failed batch left cached goes back (nothing on the CPU)
      if (members.size() > 1 && written_in_batch == 0) {
        // Which line failed is not known: each member runs again alone, so that only it fails.
        std::cerr << "taiyi: warning: the batch of " << where << " failed (" << message << "); running them one at a time\n";
        for (size_t m : members) todo[m].alone = true;
        next = members.front();
        continue;
      }
      std::cerr << "taiyi: error: " << where << ": " << message << "\n";
      failures.push_back(where + ": " + message);
    }
  }
  if (!a.quiet) {
    const taiyi::StageTimes& t = pipe.times();
    std::fprintf(stderr, "taiyi: %lld image(s) written; load %.2fs, text %.2fs, denoise %.2fs (%lld UNet calls, %.3fs each), decode %.2fs\n",
                 static_cast<long long>(written), t.load, t.encode, t.denoise, static_cast<long long>(t.unet_calls),
                 t.unet_calls ? t.denoise / t.unet_calls : 0.0, t.decode);
    if (t.lora_merges)
      std::fprintf(stderr, "taiyi: LoRA sets merged %lld time(s), %.2fs in all (un-merging included), %.1f MB kept for un-merging\n",
                   static_cast<long long>(t.lora_merges), t.lora, static_cast<double>(pipe.lora_kept_bytes()) / 1e6);
  }
  if (interrupted) {
    std::cerr << "taiyi: interrupted; " << written << " image(s) written, nothing partial left. Re-run with --resume to go on.\n";
    return 130;
  }
  if (!failures.empty()) {
    std::cerr << "taiyi: " << failures.size() << " failed:\n";
    for (const auto& f : failures) std::cerr << "  " << f << "\n";
    return 1;
  }
  return 0;
}

// --tf32 / --no-tf32 / --cudnn-benchmark; without them PyTorch's defaults (TF32 convolutions only).
void add_numerics_options(CLI::App* app, taiyi::Tf32Mode& tf32, bool& cudnn_benchmark) {
  auto* on = app->add_flag_callback("--tf32", [&tf32] { tf32 = taiyi::Tf32Mode::kOn; },
                                    "CUDA fp32: TF32 matmuls too (faster, not bit-exact; default: PyTorch's, TF32 convolutions only)");
  auto* off = app->add_flag_callback("--no-tf32", [&tf32] { tf32 = taiyi::Tf32Mode::kOff; },
                                     "CUDA fp32: no TF32 anywhere (strict IEEE fp32)");
  on->excludes(off);
  app->add_flag("--cudnn-benchmark", cudnn_benchmark, "CUDA: cuDNN autotuning (off by default, PyTorch's default)");
}

void add_model_option(CLI::App* app, std::string& model) {
  app->add_option("-m,--model", model, "model folder in the diffusers layout (default: $TAIYI_MODEL, else " +
                                           default_model() + ")");
}

// The chunks the model sees (include/taiyi/pipelines/prompt_parser.h): per chunk why it ended, per token its
// id, string and weight.
int run_tokenize(const std::string& model, const std::string& prompt, bool json) {
  taiyi::ModelFolder folder = taiyi::ModelFolder::open(model);
  auto tokenizer = taiyi::load_tokenizer(folder);
  const taiyi::TokenizedPrompt t = taiyi::tokenize_prompt(*tokenizer, prompt);
  const size_t chunk_length = tokenizer->max_length() - 2;
  auto token_strings = [&](const taiyi::PromptChunk& c) {
    std::vector<std::string> tokens;
    for (int64_t id : c.ids) tokens.push_back(tokenizer->token(id));
    return tokens;
  };
  if (json) {
    Json chunks = Json::array();
    for (const taiyi::PromptChunk& c : t.chunks)
      chunks.push_back({{"content_tokens", c.content_tokens}, {"cut", taiyi::chunk_cut_name(c.cut)},
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
  auto cut_reason = [](taiyi::ChunkCut cut) -> std::string {
    switch (cut) {
      case taiyi::ChunkCut::End: return "the prompt's end";
      case taiyi::ChunkCut::Break: return "BREAK";
      case taiyi::ChunkCut::Comma: return "full, cut after its last comma";
      case taiyi::ChunkCut::Full:
        return "full (no comma in its last " + std::to_string(taiyi::PromptChunkOptions{}.comma_backtrack) + " tokens)";
    }
    return "";
  };
  for (size_t k = 0; k < t.chunks.size(); ++k) {
    const taiyi::PromptChunk& c = t.chunks[k];
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

}  // namespace

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
  GenerateArgs a;
  a.model = default_model();
  app.add_option("prompt", a.prompt, "the prompt (or -p)");
  app.add_option("-p,--prompt", a.prompt_option, "the prompt");
  app.add_option("-n,--negative-prompt", a.negative_prompt, "negative prompt (default: empty)");
  app.add_option("--prompts", a.prompts_file, "prompt file: a prompt a line (# comments), or JSONL");
  app.add_option("-i,--init-img", a.init_image, "img2img: the image to rework (PNG or JPEG)");
  app.add_option("--strength", a.strength, "img2img: how much of the schedule reworks the image, 0 < S <= 1")
      ->capture_default_str();
  app.add_option("--mask", a.mask, "inpainting: the mask image, white = repaint (needs -i)");
  app.add_option("--clip-skip", a.clip_skip,
                 "stop the CLIP text encoder N-1 layers early, as the web UI counts (1: last layer; 2: penultimate)")
      ->capture_default_str();
  a.pipeline.lora_dir = cache_folder("loras");
  a.pipeline.embeddings_dir = cache_folder("embeddings");
  app.add_option("--lora", a.loras, "merge a LoRA file (kohya or diffusers layout), SCALE default 1; repeat to stack")
      ->type_name("FILE[:SCALE]")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--lora-dir", a.pipeline.lora_dir, "where a prompt's <lora:NAME:WEIGHT> finds NAME.safetensors")
      ->capture_default_str();
  app.add_option("--embedding", a.pipeline.embedding_files,
                 "a textual-inversion file (web UI emb_params or diffusers learned_embeds .safetensors); repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--embeddings-dir", a.pipeline.embeddings_dir,
                 "textual-inversion files used when their name (file stem) appears in a prompt")
      ->capture_default_str();
  app.add_option("--steps", a.steps, "denoising steps")->capture_default_str();
  app.add_option("-g,--cfg-scale", a.cfg_scale, "classifier-free guidance scale (<= 1: off)")->capture_default_str();
  app.add_option("-s,--seed", a.seed, "seed (default: random, printed and recorded); image i uses seed+i");
  app.add_option("-W,--width", a.width, "width in pixels, a multiple of 8 (default: the model's, 512)");
  app.add_option("-H,--height", a.height, "height in pixels, a multiple of 8 (default: the model's, 512)");
  app.add_option("--sampler", a.pipeline.sampler,
                 "sampler, the web UI's or stable-diffusion.cpp's name, any case: \"Euler a\", Euler, \"DPM++ 2M\", "
                 "\"DPM++ 2M SDE\", Heun, DPM2, \"DPM2 a\", LMS, UniPC, LCM, DDIM, PLMS, DDPM, \"DPM++ 2M Karras\", "
                 "euler_a, dpm++2m, dpm++2m_sde, ddim_trailing, ... (default: the model folder's scheduler, PLMS for Taiyi)");
  app.add_option("--schedule", a.pipeline.schedule,
                 "sigma schedule of the sampler: default, karras, exponential or beta (default: the sampler's)");
  app.add_option("--scheduler", a.pipeline.scheduler, "pndm or ddim: the older form of --sampler PLMS / DDIM")
      ->check(CLI::IsMember({"pndm", "ddim", "PNDM", "DDIM"}));
  app.add_option("--eta", a.pipeline.eta, "DDIM eta (0: deterministic)")->capture_default_str();
  app.add_option("--precision", a.pipeline.precision, "auto (fp16 on CUDA, fp32 on CPU), fp16, fp32 or bf16")
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--vae-precision", a.pipeline.vae_precision,
                 "auto (the model's; an fp16 decode with NaN/Inf is redone in fp32) or fp32")
      ->check(CLI::IsMember({"auto", "fp32"}))
      ->capture_default_str();
  app.add_option("--device", a.pipeline.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  add_numerics_options(&app, a.pipeline.tf32, a.pipeline.cudnn_benchmark);
  app.add_flag("--channels-last", a.pipeline.channels_last, "channels_last memory format on CUDA");
  app.add_option("--num-images", a.num_images, "images per prompt")->capture_default_str();
  app.add_option("--batch-size", a.batch_size, "images per UNet batch")->capture_default_str();
  add_model_option(&app, a.model);
  app.add_option("-o,--output", a.output,
                 "output file, folder (ends with /) or name template with {seed} {image} {line} {index} "
                 "(default: outputs/{seed}.png; with --prompts outputs/{line:05}-{image}.png)");
  app.add_flag("--overwrite", a.overwrite, "replace existing files (otherwise never)");
  app.add_flag("--resume", a.resume, "skip images whose output file exists");
  app.add_option("--shard", a.shard, "i/n: run only the prompts with index % n == i (0-based), for n processes");
  app.add_flag("--sidecar", a.sidecar, "write a JSON file next to each PNG with its settings");
  app.add_flag("--json", a.json, "print one JSON object per image on stdout");
  app.add_flag("-q,--quiet", a.quiet, "no progress or messages on stderr (errors still)");

  std::string tok_model = default_model(), tok_prompt;
  bool tok_json = false;
  CLI::App* tokenize = app.add_subcommand("tokenize", "print the chunks, token ids and weights the model sees for a prompt");
  add_model_option(tokenize, tok_model);
  tokenize->add_option("prompt", tok_prompt, "the prompt")->required();
  tokenize->add_flag("--json", tok_json, "JSON output");

  std::string info_model = default_model();
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "what taiyi sees in a model folder, and every problem found");
  std::string info_lora;
  add_model_option(info, info_model);
  info->add_option("--lora", info_lora, "list what this LoRA file would patch in the model, and every key it cannot place");
  info->add_flag("--json", info_json, "JSON output");

  taiyi::BenchOptions bench_options;
  bench_options.model = default_model();
  std::string bench_json;
  CLI::App* bench = app.add_subcommand("bench", "benchmark: load, text encoding, UNet step, VAE decode, memory");
  add_model_option(bench, bench_options.model);
  bench->add_flag("--random-weights", bench_options.random_weights, "random weights from the folder's configs");
  bench->add_option("--device", bench_options.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  bench->add_option("--precision", bench_options.precisions,
                    "fp16, fp32, bf16 (a list; default fp32,bf16 on the CPU, fp16,fp32,bf16 on CUDA)")
      ->delimiter(',');
  bench->add_option("--batch-size", bench_options.batch_sizes, "batch sizes (a list)")->delimiter(',');
  bench->add_option("--resolution", bench_options.resolutions, "square sizes in pixels (a list)")->delimiter(',');
  bench->add_option("--steps", bench_options.steps, "denoising steps")->capture_default_str();
  bench->add_option("--prompt", bench_options.prompts,
                    "a prompt to time (repeat the option for several: the runs alternate between them)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  bench->add_option("--sampler", bench_options.sampler, "sampler (as for generation; default: the folder's)");
  bench->add_option("--schedule", bench_options.schedule, "default, karras, exponential or beta");
  bench->add_option("--scheduler", bench_options.scheduler, "pndm or ddim (older form of --sampler)");
  bench->add_option("-g,--cfg-scale", bench_options.cfg_scale, "guidance scale")->capture_default_str();
  bench->add_option("--warmup", bench_options.warmup, "untimed runs per configuration")->capture_default_str();
  bench->add_option("--repeat", bench_options.repeat, "timed runs per configuration")->capture_default_str();
  add_numerics_options(bench, bench_options.tf32, bench_options.cudnn_benchmark);
  bench->add_flag("--channels-last", bench_options.channels_last, "channels_last memory format on CUDA");
  bench->add_option("--json", bench_json, "also write the results as JSON to this file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*tokenize) return run_tokenize(tok_model, tok_prompt, tok_json);
    if (*info && !info_lora.empty()) {
      Json report = taiyi::inspect_lora(info_model, info_lora);
      if (info_json) std::cout << report.dump(2) << "\n";
      else std::cout << taiyi::format_lora_report(report);
      return report.value("usable", false) ? 0 : 1;
    }
    if (*info) {
      Json report = taiyi::inspect_model(info_model);
      if (info_json) std::cout << report.dump(2) << "\n";
      else std::cout << taiyi::format_model_report(report);
      return report.value("usable", false) ? 0 : 1;
    }
    if (*bench) {
      Json results = taiyi::run_bench(bench_options, [](const std::string& line) { std::cerr << line << "\n"; });
      std::cout << taiyi::format_bench_table(results);
      if (!bench_json.empty()) taiyi::write_file_atomically(bench_json, results.dump(2) + "\n");
      return 0;
    }
    return run_generate(a);
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
