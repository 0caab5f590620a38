// Whole jobs: planning (names, resume, per-line errors, LoRA grouping) and running (batching, isolation
// and retry, writing); see include/taiyi/jobs/job_runner.h.
#include "taiyi/jobs/job_runner.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <new>
#include <random>
#include <set>
#include <utility>

#include "taiyi/jobs/infotext.h"
#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/sha256.h"
#include "taiyi/utils/image.h"

namespace taiyi {

namespace fs = std::filesystem;

std::string JobItem::where() const { return line ? "line " + std::to_string(line) : std::string("prompt"); }

namespace {

void check_output_folder(const fs::path& file) {
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) throw Error(dir.string() + ": cannot create the output folder: " + ec.message());
  if (access(dir.c_str(), W_OK) != 0) throw Error(dir.string() + ": output folder is not writable");
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

}  // namespace

// Each error names the command-line option.
void check_job_spec(const JobSpec& spec) {
  const bool from_file = !spec.prompts_file.empty();
  const GenerationRequest& d = spec.defaults;
  if (from_file && !spec.prompt.empty()) throw Error("give either a prompt or --prompts FILE, not both");
  if (!from_file && spec.prompt.empty()) throw Error("no prompt: taiyi \"a prompt\" -o out.png, or --prompts FILE (see --help)");
  if (spec.num_images < 1) throw Error("--num-images " + std::to_string(spec.num_images) + ": must be at least 1");
  if (spec.batch_size < 1) throw Error("--batch-size " + std::to_string(spec.batch_size) + ": must be at least 1");
  if (d.cfg_scale < 0) throw Error("--cfg-scale " + format_number(d.cfg_scale) + ": must not be negative");
  if (!(d.strength > 0 && d.strength <= 1))
    throw Error("--strength " + format_number(d.strength) + ": must be greater than 0 and at most 1");
  if (d.clip_skip < 1)
    throw Error("--clip-skip " + std::to_string(d.clip_skip) + ": must be at least 1 (1: the last layer, as the web UI counts)");
  if (!d.init_image.empty() && !from_file) image_size(d.init_image);  // a bad file fails before the model loads
  if (!d.mask.empty() && !from_file) {
    if (d.init_image.empty()) throw Error("--mask needs an init image to inpaint (-i FILE)");
    image_size(d.mask);
  }
  if (d.steps < 1) throw Error("--steps " + std::to_string(d.steps) + ": must be at least 1");
  for (auto [name, v] : {std::pair<const char*, int64_t>{"-W/--width", d.width}, {"-H/--height", d.height}})
    if (v != 0 && (v < 8 || v % 8 != 0))
      throw Error(std::string(name) + " " + std::to_string(v) + ": must be a positive multiple of 8");
  if (!spec.shard.empty() && !from_file) throw Error("--shard splits a prompt file: use it with --prompts");
}

namespace {

// Which LoRA set a request asks for, as text (its --lora options and its prompts' tags, unresolved);
// "" plus a unique suffix when the tags do not parse, so that the line runs (and fails) alone.
std::string lora_set_key(const GenerationRequest& r, size_t unique) {
  std::string key;
  for (const auto& lora : r.loras)
    key += lora.file + "\x1f" + format_number(lora.te_multiplier) + "\x1f" + format_number(lora.unet_multiplier) + "\x1e";
  try {
    for (const std::string* text : {&r.prompt, &r.negative_prompt})
      for (const auto& tag : parse_extra_networks(*text).loras)
        key += "<" + tag.name + "\x1f" + format_number(tag.te_multiplier) + "\x1f" + format_number(tag.unet_multiplier) + "\x1e";
  } catch (const Error&) {
    return "\x1d" + std::to_string(unique);
  }
  return key;
}

// A prompt-file line (or the single prompt) as a request: the line's fields over the spec's defaults.
GenerationRequest request_of(const JobSpec& spec, const PromptJob& p, uint64_t base_seed) {
  const bool from_file = !spec.prompts_file.empty();
  const GenerationRequest& d = spec.defaults;
  const fs::path file_folder = fs::path(spec.prompts_file).parent_path();
  GenerationRequest r = d;
  r.prompt = p.prompt;
  r.negative_prompt = p.negative_prompt.value_or(d.negative_prompt);
  // Each line's seeds depend only on its place in the file, so shards and resumed runs agree.
  r.seed = p.seed ? *p.seed : base_seed + static_cast<uint64_t>(from_file ? p.ordinal * spec.num_images : 0);
  r.steps = p.steps.value_or(d.steps);
  r.cfg_scale = p.cfg_scale.value_or(d.cfg_scale);
  r.width = p.width.value_or(d.width);
  r.height = p.height.value_or(d.height);
  r.count = spec.num_images;
  r.sampler = p.sampler.value_or("");
  r.schedule = p.schedule.value_or("");
  // A line's init_image is relative to the prompt file's folder; -i applies to lines without one.
  r.init_image = p.init_image ? (file_folder / *p.init_image).string() : d.init_image;
  r.strength = p.strength.value_or(d.strength);
  r.clip_skip = p.clip_skip.value_or(d.clip_skip);
  r.mask = p.mask ? (file_folder / *p.mask).string() : d.mask;
  r.hires_scale = p.hires_scale.value_or(d.hires_scale);
  r.hires_width = p.hires_width.value_or(d.hires_width);
  r.hires_height = p.hires_height.value_or(d.hires_height);
  r.hires_upscaler = p.hires_upscaler.value_or(d.hires_upscaler);
  r.hires_steps = p.hires_steps.value_or(d.hires_steps);
  r.hires_strength = p.hires_strength.value_or(d.hires_strength);
  r.hires_sampler = p.hires_sampler.value_or(d.hires_sampler);
  return r;
}

// Outputs that exist: the item is skipped with --resume (true), an error without --overwrite.
bool already_done(const JobSpec& spec, const JobItem& item) {
  bool all_exist = true, any_exist = false;
  for (const auto& out : item.outputs) {
    std::error_code ignored;  // a name the file system refuses (too long) is that line's write error, later
    bool exists = fs::exists(out, ignored);
    all_exist = all_exist && exists;
    any_exist = any_exist || exists;
  }
  if (spec.resume && all_exist) return true;
  if (any_exist && !spec.overwrite && !spec.resume) {
    for (const auto& out : item.outputs)
      if (std::error_code ignored; fs::exists(out, ignored))
        throw Error(out + ": already exists (use --overwrite to replace it, or --resume to skip done images)");
  }
  return false;
}

// Items grouped by LoRA set, in the order each set first appears (a stable sort), so that each set is
// merged once: merging and un-merging cost a pass over the touched weights.
void group_by_lora_set(std::vector<JobItem>& items) {
  std::map<std::string, size_t> first_seen;
  std::vector<std::pair<size_t, size_t>> order;  // (set rank, position)
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].lora_set = lora_set_key(items[i].request, i);
    auto it = first_seen.emplace(items[i].lora_set, first_seen.size()).first;
    order.emplace_back(it->second, i);
  }
  std::stable_sort(order.begin(), order.end());
  std::vector<JobItem> grouped;
  for (const auto& [rank, i] : order) grouped.push_back(std::move(items[i]));
  items = std::move(grouped);
}

// Every item's files, named from the -o template or the line's own "output". A line's own name with an
// unknown placeholder is that line's error (false); the run's -o is the job's error.
bool name_outputs(const JobSpec& spec, const PromptJob& p, const std::string& name_template, int64_t& index, JobItem& item,
                  const std::function<void(const std::string&)>& report) {
  const bool from_file = !spec.prompts_file.empty();
  try {
    for (int64_t i = 0; i < spec.num_images; ++i) {
      NameFields fields{item.request.seed + static_cast<uint64_t>(i), i, p.line, index++};
      std::string out = p.output ? (spec.num_images == 1 ? *p.output : output_template(*p.output, false, spec.num_images))
                                 : name_template;
      item.outputs.push_back(expand_name_template(out, fields));
    }
  } catch (const Error& e) {
    if (!from_file || !p.output) throw;
    report("line " + std::to_string(p.line) + ": " + e.what());
    return false;
  }
  return true;
}

}  // namespace

LoraSelection parse_lora_option(const std::string& value) {
  LoraSelection lora;
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
      throw Error("--lora " + value + ": scale '" + scale + "' is not a number (--lora FILE[:SCALE])");
    }
  }
  if (!fs::is_regular_file(lora.file)) throw Error("--lora " + lora.file + ": file not found");
  lora.name = fs::path(lora.file).stem().string();
  return lora;
}

Job plan_job(const JobSpec& spec, const std::function<void(const std::string&)>& on_error) {
  check_job_spec(spec);
  JobSpec resolved = spec;
  for (const std::string& value : spec.lora_options) resolved.defaults.loras.push_back(parse_lora_option(value));
  Job job;
  job.from_file = !spec.prompts_file.empty();
  job.batch_size = spec.batch_size;
  job.sidecar = spec.sidecar;
  const Shard shard = spec.shard.empty() ? Shard{} : parse_shard(spec.shard);
  job.base_seed = spec.seed ? *spec.seed : std::random_device{}() % 4294967295ull;
  auto report = [&](const std::string& message) {
    if (on_error) on_error(message);
    job.errors.push_back(message);
  };
  PromptFile file;
  if (job.from_file) {
    file = read_prompt_file(spec.prompts_file);
    for (const auto& e : file.errors)
      if (shard.contains(e.ordinal)) report(e.message);
  } else {
    PromptJob single;
    single.prompt = spec.prompt;
    file.jobs.push_back(single);
  }
  const std::string name_template = output_template(spec.output, job.from_file, spec.num_images);
  int64_t index = 0;
  std::vector<JobItem> planned;
  for (const PromptJob& p : file.jobs) {
    if (job.from_file && !shard.contains(p.ordinal)) continue;
    JobItem item;
    item.line = p.line;
    item.request = request_of(resolved, p, job.base_seed);
    if (name_outputs(spec, p, name_template, index, item, report)) planned.push_back(std::move(item));
  }
  std::set<fs::path> folders;  // every output's, done or not
  for (JobItem& item : planned) {
    for (const auto& out : item.outputs) folders.insert(fs::path(out).parent_path());
    if (already_done(spec, item)) ++job.skipped;
    else job.items.push_back(std::move(item));
  }
  if (!job.items.empty()) check_output_folder(job.items.front().outputs.front());
  // What a killed run was writing when it died: its temporary files go (each output is whole or absent).
  for (const fs::path& folder : folders) job.removed_temporaries += remove_stale_temporaries(folder);
  group_by_lora_set(job.items);
  return job;
}

std::optional<GenerationRequest> first_valid_request(const Pipeline& pipe, const Job& job) {
  for (const JobItem& item : job.items) {
    try {
      GenerationRequest first = pipe.complete(item.request);
      first.count = 1;
      return first;
    } catch (const std::exception&) {
    }
  }
  return std::nullopt;
}

// --- Running -------------------------------------------------------------------------------------

struct JobRunner::State {
  Job& job;
  const JobEvents& events;
  std::vector<char> checked, failed, alone;  // per item: validated; reported failed; runs in a batch of its own
  JobSummary summary;
  void fail(const std::string& message) {
    if (events.error) events.error(message);
    summary.failures.push_back(message);
  }
};

namespace {

// What the members of one UNet batch share (Pipeline::generate_batch's rule, on the requests as given).
bool batchable(const GenerationRequest& f, const GenerationRequest& r) {
  return r.steps == f.steps && r.cfg_scale == f.cfg_scale && r.width == f.width && r.height == f.height &&
         r.sampler == f.sampler && r.schedule == f.schedule && r.init_image.empty() == f.init_image.empty() &&
         r.strength == f.strength && r.mask.empty() == f.mask.empty() && r.hires_scale == f.hires_scale &&
         r.hires_width == f.hires_width && r.hires_height == f.hires_height && r.hires_upscaler == f.hires_upscaler &&
         r.hires_steps == f.hires_steps && r.hires_strength == f.hires_strength && r.hires_sampler == f.hires_sampler;
}

std::string batch_name(const std::vector<JobItem>& items, const std::vector<size_t>& members) {
  std::string where;
  for (size_t m : members) where += (where.empty() ? "" : ",") + items[m].where();
  return where;
}

}  // namespace

// The model's names and hashes for the parameters. A 4 GB checkpoint's SHA-256 takes over 10 s, so the
// hashes are kept in ~/.cache/taiyi/hashes.json (or $TAIYI_HASH_CACHE) by path, size and time, as the web UI
// keeps them in its cache.json.
const ModelInfotext& JobRunner::model_infotext() {
  if (model_infotext_) return *model_infotext_;
  ModelInfotext info;
  info.name = pipe_.model_name();
  const ModelSource& source = pipe_.source();
  const char* cache_env = std::getenv("TAIYI_HASH_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path cache = cache_env && *cache_env ? fs::path(cache_env) : fs::path(home ? home : ".") / ".cache/taiyi/hashes.json";
  if (source.single_file()) info.hash = cached_sha256_file(source.folder().root(), cache).substr(0, 10);
  const fs::path& vae = source.vae_path();
  if (!vae.empty()) {
    std::error_code ec;
    info.vae_name = vae.filename().string();
    if (info.vae_name.empty()) info.vae_name = vae.parent_path().filename().string();
    if (fs::is_regular_file(vae, ec)) info.vae_hash = cached_sha256_file(vae, cache).substr(0, 10);
  }
  model_infotext_ = info;
  return *model_infotext_;
}

std::string JobRunner::lora_hash(const std::string& file) {
  auto it = lora_hashes_.find(file);
  if (it == lora_hashes_.end()) it = lora_hashes_.emplace(file, lora_short_hash(file)).first;
  return it->second;
}

// Each item is validated before it joins a batch (sizes, steps, counts, memory, prompt syntax): one that
// fails is that item's error, reported once, and never allocates anything.
bool JobRunner::usable(State& s, size_t i) {
  if (s.failed[i]) return false;
  if (s.checked[i]) return true;
  const JobItem& item = s.job.items[i];
  try {
    pipe_.validate(pipe_.complete(item.request));
    s.checked[i] = true;
    return true;
  } catch (const Error& e) {
    if (!s.job.from_file) throw;
    s.failed[i] = true;
    s.fail(item.where() + ": " + e.what());
    return false;
  }
}

// A batch from item `next` (usable): the consecutive items that share steps, scale, size, sampler, mode,
// LoRA set and context length (prompt chunks), up to batch_size images, while all its images still fit
// in memory. Returns the position after it.
size_t JobRunner::collect_batch(State& s, size_t next, std::vector<size_t>& members) {
  const std::vector<JobItem>& items = s.job.items;
  auto context_chunks = [&](const GenerationRequest& r) -> int64_t {
    try {
      return pipe_.context_chunks(r);
    } catch (const std::exception&) {
      return -1;
    }
  };
  std::optional<GenerationRequest> first_completed;  // the batch's first item, completed once
  auto fits_in_memory = [&](int64_t total_images) {
    try {
      if (!first_completed) first_completed = pipe_.complete(items[next].request);
      GenerationRequest combined = *first_completed;
      combined.count = total_images;
      pipe_.check_memory(combined);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  };
  members = {next};
  int64_t images = items[next].request.count;
  const int64_t first_chunks = s.job.batch_size > images && !s.alone[next] ? context_chunks(items[next].request) : 0;
  size_t scan = next + 1;
  while (!s.alone[next] && scan < items.size() && images + items[scan].request.count <= s.job.batch_size) {
    const GenerationRequest& r = items[scan].request;
    if (s.alone[scan] || !batchable(items[next].request, r) || first_chunks < 0 || context_chunks(r) != first_chunks ||
        items[scan].lora_set != items[next].lora_set || !usable(s, scan) || !fits_in_memory(images + r.count))
      break;
    members.push_back(scan);
    images += r.count;
    ++scan;
  }
  return scan;
}

JobImage JobRunner::finish_image(const JobItem& item, size_t index, Image image, const SamplerSetting& sampler,
                                 const GenerationRequest& r, bool sidecar) {
  const LoraHashFn hash = [this](const std::string& file) { return lora_hash(file); };
  JobImage done;
  done.item = &item;
  done.index = index;
  done.image = std::move(image);
  done.file = index < item.outputs.size() ? item.outputs[index] : std::string();
  done.parameters = a1111_parameters(item.request, r, done.image, sampler, model_infotext(), hash);
  // The numerics in force change results: say so wherever the settings are recorded.
  done.parameters += numerics_parameters(pipe_);
  done.png = encode_png(done.image.rgb.data(), static_cast<int>(done.image.width), static_cast<int>(done.image.height),
                        {{"parameters", done.parameters}});
  done.record = image_record(pipe_, r, done.image, sampler, item.line, done.file, hash);
  if (done.file.empty()) return done;
  const fs::path out = done.file;
  check_output_folder(out);
  // The sidecar first, the image last: resume counts an item done by its images, so a run killed between
  // the two writes redoes the item rather than leave an image without its sidecar.
  fs::path side = out;
  side.replace_extension(".json");
  if (sidecar) write_file_atomically(side, done.record.dump(2) + "\n");
  try {
    write_file_atomically(out, done.png);
  } catch (const Error&) {
    std::error_code ignored;
    if (sidecar) fs::remove(side, ignored);  // no sidecar of an image that is not there
    throw;
  }
  return done;
}

void JobRunner::run_batch(State& s, const std::vector<size_t>& members, int64_t& written_in_batch) {
  std::vector<GenerationRequest> requests;
  for (size_t m : members) requests.push_back(s.job.items[m].request);
  const std::string where = batch_name(s.job.items, members);
  const ProgressCallback progress = s.events.batch_progress ? s.events.batch_progress(where) : ProgressCallback{};
  std::vector<Image> results = pipe_.generate_batch(requests, progress);
  size_t k = 0;
  for (size_t m : members) {
    const JobItem& item = s.job.items[m];
    const GenerationRequest r = pipe_.complete(item.request);
    const SamplerSetting sampler = pipe_.sampler_setting(r);
    for (size_t i = 0; i < static_cast<size_t>(item.request.count); ++i, ++k) {
      const JobImage done = finish_image(item, i, std::move(results[k]), sampler, r, s.job.sidecar);
      ++s.summary.written;
      ++written_in_batch;
      if (s.events.image) s.events.image(done);
    }
  }
}

JobSummary JobRunner::run(Job& job, const JobEvents& events) {
  const size_t n = job.items.size();
  State s{job, events, std::vector<char>(n, 0), std::vector<char>(n, 0), std::vector<char>(n, 0), JobSummary{}};
  s.summary.failures = job.errors;
  size_t next = 0;
  while (next < n) {
    if (events.stop_requested && events.stop_requested()) {
      s.summary.interrupted = true;
      break;
    }
    if (!usable(s, next)) {
      ++next;
      continue;
    }
    std::vector<size_t> members;
    next = collect_batch(s, next, members);
    int64_t written_in_batch = 0;
    try {
      run_batch(s, members, written_in_batch);
    } catch (const JobCancelled&) {
      s.summary.interrupted = true;
      break;
    } catch (const std::exception& e) {
      // Any failure (an Error, a libtorch error, an allocation that failed) is the failure of this batch
      // alone: the job goes on. A single prompt's error is the job's error.
      if (!job.from_file) throw;
      const std::string message = describe_failure(e);
      const std::string where = batch_name(job.items, members);
      release_gpu_cache(pipe_.device());  // what a failed batch left cached goes back (nothing on the CPU)
      if (members.size() > 1 && written_in_batch == 0) {
        // Which item failed is not known: each member runs again alone, so that only it fails.
        if (events.warning) events.warning("the batch of " + where + " failed (" + message + "); running them one at a time");
        for (size_t m : members) s.alone[m] = 1;
        next = members.front();
        continue;
      }
      s.fail(where + ": " + message);
    }
  }
  return s.summary;
}

}  // namespace taiyi
