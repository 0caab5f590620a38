// Whole jobs, for every front end: requests in (one prompt or a prompt file, with the defaults a front end
// gives), each image out as PNG bytes with its infotext and JSON record (written to its file when it has
// one), or that request's error. The CLI (src/cli/generate.cpp) and a server are shells over this, so a
// job gives the same PNG, byte for byte, whichever ran it.
//
//   taiyi::JobSpec spec;                          // what the command line or a request asks for
//   spec.prompts_file = "prompts.txt";
//   spec.output = "outputs/";
//   taiyi::Job job = taiyi::plan_job(spec);      // no model needed: names, resume, per-line errors
//   auto pipe = taiyi::Pipeline::load(model, options);
//   taiyi::JobEvents events;
//   events.image = [](const taiyi::JobImage& i) { ... i.png, i.parameters, i.record ... };
//   taiyi::JobSummary done = taiyi::JobRunner(pipe).run(job, events);
//
// The rules (unchanged from the CLI's): a prompt file's line that fails (malformed, invalid, or failing
// when run) is that line's error and the rest runs; lines are grouped by LoRA set (each set merged
// once); consecutive lines that agree on size, steps, scale, sampler, mode and context length share a
// UNet batch up to batch_size images, as memory allows; a batch that fails runs again one line at a
// time so that only the failing line fails; files are written whole (sidecar first, image last) so a
// killed run resumes losing nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/jobs/prompt_file.h"
#include "taiyi/jobs/infotext.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"

namespace taiyi {

// What a front end asks for. The request fields of `defaults` (negative prompt, steps, scale, size,
// init image, strength, mask, clip skip, LoRAs) apply to every prompt; a JSONL line's fields override
// them. `defaults.prompt`, `seed` and `count` are not read: use `prompt`, `seed` and `num_images`.
struct JobSpec {
  std::string prompt;        // one prompt, or
  std::string prompts_file;  // a prompt file (read_prompt_file's rules); its relative paths are from its folder
  GenerationRequest defaults;
  // --lora FILE[:SCALE] for every prompt: plan_job parses them (parse_lora_option) after the checks and
  // appends them to defaults.loras.
  std::vector<std::string> lora_options;
  int64_t num_images = 1;         // images per prompt
  std::optional<uint64_t> seed;   // unset: random; a file's prompt k gets seed + k * num_images
  std::string output;             // -o: file, folder/ or name template ("" : outputs/)
  std::string shard;              // "i/n" (prompt files only)
  bool overwrite = false;         // replace existing files
  bool resume = false;            // skip prompts whose images all exist
  int64_t batch_size = 1;         // images per UNet batch
  bool sidecar = false;           // a .json beside each PNG
};

// One request of a job, with the files its images go to.
struct JobItem {
  GenerationRequest request;
  int64_t line = 0;                  // its prompt-file line; 0: a single prompt
  std::vector<std::string> outputs;  // one per image; empty: images are reported, not written
  std::string lora_set;              // which LoRA set it asks for (grouping key)
  std::string where() const;         // "line N" or "prompt", as messages name it
};

struct Job {
  std::vector<JobItem> items;       // to run, grouped by LoRA set (stable)
  std::vector<std::string> errors;  // requests that failed before running: "<file>:<line>: ..." or "line N: ..."
  bool from_file = false;           // a prompt file: a request's failure is its own, never the job's
  int64_t skipped = 0;              // prompts already done (resume)
  size_t removed_temporaries = 0;   // unfinished files of a killed run, removed
  uint64_t base_seed = 0;           // the seed the job started from (the random one when none was given)
  int64_t batch_size = 1;           // images per UNet batch
  bool sidecar = false;             // a .json beside each PNG
};

// Checks the spec (Error naming the option: "--steps 0: must be at least 1"), reads the prompt file,
// names every image's file, applies --resume / --overwrite (Error when a file exists and neither is
// set), checks the output folder, removes a killed run's temporaries, and groups the items by LoRA set.
// Needs no model. A single prompt's problems are Errors; a prompt file's bad lines go to Job::errors,
// each also to `on_error` as it is found.
// The spec's own values (prompt or file, counts, scale, strength, clip skip, size, steps, shard, and the
// init image and mask files of a single prompt), before anything else is read; plan_job checks them too.
void check_job_spec(const JobSpec& spec);
Job plan_job(const JobSpec& spec, const std::function<void(const std::string&)>& on_error = {});

// --lora FILE[:SCALE]: the multiplier of both text encoder and UNet (1 when absent); Error when the
// file is missing or SCALE is not a number.
LoraSelection parse_lora_option(const std::string& value);

// The first item that completes (Pipeline::complete) as one image, for a memory estimate before running.
std::optional<GenerationRequest> first_valid_request(const Pipeline& pipe, const Job& job);

// One image made: what a front end shows, sends or has written.
struct JobImage {
  const JobItem* item = nullptr;
  size_t index = 0;             // the image's number within its item
  Image image;                  // pixels and seed
  std::vector<uint8_t> png;     // the PNG with its "parameters" text chunk
  std::string parameters;       // the web UI's infotext
  nlohmann::json record;        // the JSON record (--json, --sidecar)
  std::string file;             // where it was written ("" : not written)
};

// Cancels the batch being made when a progress callback throws it (a second Ctrl-C, a server's
// interrupt): its images are not written; the job ends as interrupted.
struct JobCancelled : std::exception {
  const char* what() const noexcept override { return "cancelled"; }
};

struct JobEvents {
  std::function<void(const JobImage&)> image;           // after its files were written
  std::function<void(const std::string&)> error;        // "line N: message": that request failed
  std::function<void(const std::string&)> warning;      // a batch failed and runs again one line at a time
  // Called as each batch starts with its members' names ("line 1,line 2"); the callback returned gets
  // each denoising step (it may throw JobCancelled).
  std::function<ProgressCallback(const std::string&)> batch_progress;
  std::function<bool()> stop_requested;                 // checked between batches
};

struct JobSummary {
  int64_t written = 0;               // images made (and written where they have files)
  std::vector<std::string> failures; // Job::errors and the requests that failed when run, in order
  bool interrupted = false;          // stopped by stop_requested or JobCancelled
};

class JobRunner {
 public:
  explicit JobRunner(Pipeline& pipe) : pipe_(pipe) {}
  // Runs every item; a single prompt's failure is thrown (the job's), a prompt file's is reported.
  JobSummary run(Job& job, const JobEvents& events);

 private:
  struct State;
  size_t collect_batch(State& state, size_t next, std::vector<size_t>& members);
  bool usable(State& state, size_t i);
  void run_batch(State& state, const std::vector<size_t>& members, int64_t& written_in_batch);
  JobImage finish_image(const JobItem& item, size_t index, Image image, const SamplerSetting& sampler,
                        const GenerationRequest& completed, bool sidecar);
  std::string lora_hash(const std::string& file);
  Pipeline& pipe_;
  std::map<std::string, std::string> lora_hashes_;  // file -> short hash, computed once
  const ModelInfotext& model_infotext();
  std::optional<ModelInfotext> model_infotext_;
};

}  // namespace taiyi
