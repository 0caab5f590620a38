// The job library without the command line (include/taiyi/jobs/job_runner.h) on the harness's tiny
// pipeline: a prompt file with bad lines, LoRA-set grouping, resume, and the PNG a job reports being the
// file it writes.
#include <fstream>

#include "taiyi/jobs/job_runner.h"
#include "taiyi/utils/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::fixture;

namespace {

taiyi::Pipeline tiny_pipeline(const std::string& lora_dir = "") {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.lora_dir = lora_dir;
  options.embeddings_dir = taiyi::test::temp_dir("job-no-embeddings").string();
  return taiyi::Pipeline::load(fixture("tiny-clip"), options);
}

// Quick settings: 64x64, 2 steps.
taiyi::JobSpec quick_spec(const fs::path& prompts, const fs::path& outdir) {
  taiyi::JobSpec spec;
  spec.prompts_file = prompts.string();
  spec.output = outdir.string() + "/";
  spec.defaults.steps = 2;
  spec.defaults.width = 64;
  spec.defaults.height = 64;
  spec.seed = 100;
  return spec;
}

struct Collected {
  std::vector<taiyi::JobImage> images;
  std::vector<std::string> errors, warnings;
  taiyi::JobEvents events() {
    taiyi::JobEvents e;
    e.image = [this](const taiyi::JobImage& i) { images.push_back(i); };
    e.error = [this](const std::string& m) { errors.push_back(m); };
    e.warning = [this](const std::string& m) { warnings.push_back(m); };
    return e;
  }
};

std::vector<uint8_t> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

TEST(JobRunner, PromptFileWithBadLinesRunsTheRest) {
  const fs::path dir = taiyi::test::temp_dir("job-bad-lines");
  std::ofstream(dir / "p.jsonl") << "{\"prompt\": \"山水\", \"seed\": 1}\n{\"prompt\": \"broken\"\n"
                                    "{\"prompt\": \"a boat\", \"steps\": 3}\n{\"prompt\": \"云\", \"width\": 500}\n"
                                    "{\"prompt\": \"(bad:1.2.3)\"}\n";
  taiyi::JobSpec spec = quick_spec(dir / "p.jsonl", dir / "out");
  spec.batch_size = 4;
  std::vector<std::string> reported;
  taiyi::Job job = taiyi::plan_job(spec, [&](const std::string& m) { reported.push_back(m); });
  ASSERT_EQ(job.errors.size(), 1u);  // the malformed line, found while planning
  EXPECT_EQ(reported, job.errors);
  EXPECT_TRUE(contains(job.errors[0], "p.jsonl:2: malformed JSON")) << job.errors[0];
  ASSERT_EQ(job.items.size(), 4u);
  EXPECT_EQ(job.items[1].line, 3);
  EXPECT_EQ(job.items[1].request.seed, 102u);  // ordinal 2 (the bad line keeps its place): 100 + 2
  EXPECT_EQ(job.items[1].outputs, std::vector<std::string>{(dir / "out" / "00003-0.png").string()});

  taiyi::Pipeline pipe = tiny_pipeline();
  Collected got;
  const taiyi::JobSummary summary = taiyi::JobRunner(pipe).run(job, got.events());
  EXPECT_EQ(summary.written, 2);
  EXPECT_FALSE(summary.interrupted);
  // Lines 4 (width 500) and 5 (prompt syntax) fail alone when validated; the failures list keeps the
  // planning error first.
  ASSERT_EQ(summary.failures.size(), 3u);
  EXPECT_EQ(summary.failures[0], job.errors[0]);
  ASSERT_EQ(got.errors.size(), 2u);
  EXPECT_TRUE(contains(got.errors[0], "line 4: ")) << got.errors[0];
  EXPECT_TRUE(contains(got.errors[0], "500: must be a multiple of 8")) << got.errors[0];
  EXPECT_TRUE(contains(got.errors[1], "line 5: prompt: the weight in '(bad:1.2.3)' is not a number")) << got.errors[1];
  ASSERT_EQ(got.images.size(), 2u);
  EXPECT_EQ(got.images[0].item->line, 1);
  EXPECT_EQ(got.images[0].image.seed, 1u);
  EXPECT_EQ(got.images[0].parameters,
            "山水\nSteps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-clip");
  EXPECT_EQ(got.images[1].record["line"], 3);
  EXPECT_EQ(got.images[1].record["steps"], 3);
  EXPECT_EQ(got.images[1].record["seed"], 102);
  // What a front end gets is the file, byte for byte.
  for (const taiyi::JobImage& image : got.images) EXPECT_EQ(file_bytes(image.file), image.png) << image.file;
  EXPECT_TRUE(got.warnings.empty());
  fs::remove_all(dir);
}

TEST(JobRunner, ResumeSkipsWhatIsDoneAndExistingFilesNeedAChoice) {
  const fs::path dir = taiyi::test::temp_dir("job-resume");
  std::ofstream(dir / "p.txt") << "one\ntwo\nthree\n";
  taiyi::JobSpec spec = quick_spec(dir / "p.txt", dir / "out");
  spec.defaults.steps = 1;
  taiyi::Pipeline pipe = tiny_pipeline();
  {
    taiyi::JobSpec first = spec;
    first.shard = "0/2";  // lines 1 and 3
    taiyi::Job job = taiyi::plan_job(first);
    ASSERT_EQ(job.items.size(), 2u);
    EXPECT_EQ(taiyi::JobRunner(pipe).run(job, {}).written, 2);
  }
  const auto done_at = fs::last_write_time(dir / "out" / "00001-0.png");
  taiyi::test::expect_error_naming([&] { taiyi::plan_job(spec); }, {"00001-0.png", "already exists", "--resume"});
  spec.resume = true;
  taiyi::Job rest = taiyi::plan_job(spec);
  EXPECT_EQ(rest.skipped, 2);
  ASSERT_EQ(rest.items.size(), 1u);
  EXPECT_EQ(rest.items[0].line, 2);
  EXPECT_EQ(rest.items[0].request.seed, 101u);  // its seed from its place in the file, as in one whole run
  Collected got;
  const taiyi::JobSummary summary = taiyi::JobRunner(pipe).run(rest, got.events());
  EXPECT_EQ(summary.written, 1);
  EXPECT_TRUE(summary.failures.empty());
  EXPECT_EQ(fs::last_write_time(dir / "out" / "00001-0.png"), done_at);
  for (int line = 1; line <= 3; ++line) EXPECT_TRUE(fs::exists(dir / "out" / ("0000" + std::to_string(line) + "-0.png")));
  // A killed run's temporary is removed when the job is planned again.
  const fs::path partial = dir / "out" / ".00002-0.png.taiyi-99999999-1.tmp";  // a pid above any pid_max: gone
  std::ofstream(partial) << "partial";
  taiyi::Job again = taiyi::plan_job(spec);
  EXPECT_TRUE(again.items.empty());
  EXPECT_EQ(again.skipped, 3);
  EXPECT_EQ(again.removed_temporaries, 1u);
  EXPECT_FALSE(fs::exists(partial));
  fs::remove_all(dir);
}

TEST(JobRunner, LoraSetsAreGroupedAndEachImageIsItsLineAlone) {
  const fs::path dir = taiyi::test::temp_dir("job-lora");
  std::ofstream(dir / "p.txt") << "a cat <lora:kohya_clip:0.8>\na dog\na cat <lora:kohya_clip:0.8>\n"
                                  "a bird <lora:peft_clip:1>\na dog <lora:missing:1>\n";
  // One line a batch, so that the images compare bit for bit with single runs (a batch of two may round
  // differently: one byte value of one pixel, seen with a LoRA merged).
  taiyi::JobSpec spec = quick_spec(dir / "p.txt", dir / "out");
  taiyi::Job job = taiyi::plan_job(spec);
  std::vector<int64_t> order;
  for (const taiyi::JobItem& item : job.items) order.push_back(item.line);
  // Grouped by set in order of first appearance: lines 1 and 3, then 2, then 4, then 5.
  EXPECT_EQ(order, (std::vector<int64_t>{1, 3, 2, 4, 5}));
  EXPECT_EQ(job.items[0].lora_set, job.items[1].lora_set);
  EXPECT_NE(job.items[0].lora_set, job.items[2].lora_set);

  taiyi::Pipeline pipe = tiny_pipeline(fixture("loras").string());
  Collected got;
  const taiyi::JobSummary summary = taiyi::JobRunner(pipe).run(job, got.events());
  EXPECT_EQ(summary.written, 4);
  ASSERT_EQ(summary.failures.size(), 1u);  // line 5's LoRA does not exist
  EXPECT_TRUE(contains(summary.failures[0], "line 5")) << summary.failures[0];
  EXPECT_TRUE(contains(summary.failures[0], "missing.safetensors")) << summary.failures[0];
  EXPECT_EQ(pipe.times().lora_merges, 3);  // {kohya_clip}, {}, {peft_clip}: each set merged once
  ASSERT_EQ(got.images.size(), 4u);
  EXPECT_TRUE(contains(got.images[0].parameters, "Lora hashes: \"kohya_clip: ")) << got.images[0].parameters;
  EXPECT_EQ(got.images[0].record["loras"].size(), 1u);
  // Line 3, made after line 1 with the set merged once, equals a job of line 3 alone, made after the
  // set was un-merged and another merged: merging, un-merging and re-merging leave no drift.
  taiyi::JobSpec alone;
  alone.prompt = "a cat <lora:kohya_clip:0.8>";
  alone.defaults = spec.defaults;
  alone.seed = 102;
  alone.output = (dir / "alone.png").string();
  taiyi::Job single = taiyi::plan_job(alone);
  Collected one;
  taiyi::JobRunner(pipe).run(single, one.events());
  ASSERT_EQ(one.images.size(), 1u);
  EXPECT_EQ(got.images[1].item->line, 3);
  EXPECT_EQ(one.images[0].image.rgb, got.images[1].image.rgb);
  fs::remove_all(dir);
}

TEST(JobRunner, ImagesWithoutFilesAreReportedNotWritten) {
  // A server's job: items made directly, no output files; the PNG is the one the CLI writes.
  const fs::path dir = taiyi::test::temp_dir("job-no-files");
  taiyi::Pipeline pipe = tiny_pipeline();
  taiyi::JobSpec spec;
  spec.prompt = "小桥流水人家";
  spec.defaults.steps = 2;
  spec.defaults.width = 64;
  spec.defaults.height = 64;
  spec.seed = 7;
  spec.num_images = 2;
  spec.output = (dir / "{seed}.png").string();
  taiyi::Job written = taiyi::plan_job(spec);
  taiyi::Job in_memory = written;
  for (taiyi::JobItem& item : in_memory.items) item.outputs.clear();
  Collected files, memory;
  taiyi::JobRunner(pipe).run(written, files.events());
  taiyi::JobRunner(pipe).run(in_memory, memory.events());
  ASSERT_EQ(memory.images.size(), 2u);
  ASSERT_EQ(files.images.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(memory.images[i].file, "");
    EXPECT_TRUE(memory.images[i].record["file"].is_null());
    EXPECT_EQ(memory.images[i].png, file_bytes(dir / (std::to_string(7 + i) + ".png")));
  }
  // A single prompt's failure is the job's: thrown, not reported.
  taiyi::JobSpec bad = spec;
  bad.prompt = "(bad:1.2.3)";
  bad.output = (dir / "bad.png").string();
  taiyi::Job failing = taiyi::plan_job(bad);
  taiyi::test::expect_error_naming([&] { taiyi::JobRunner(pipe).run(failing, {}); }, {"is not a number"});
  fs::remove_all(dir);
}
