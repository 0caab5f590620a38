// `taiyi info` and `taiyi bench`: the report on the harness's tiny pipelines agrees with the
// safetensors headers (parsed here independently of SafetensorsFile); broken copies (a removed,
// an extra or a mis-shaped tensor, an unsupported config option, a missing vocabulary, a malformed
// model_index.json) are unusable with the problem named; the CLI exits 0 / 1. The benchmark runs
// the tiny pipeline on the CPU, with random weights and with the files, and its figures add up.
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "taiyi/cli/bench.h"
#include "taiyi/utils/error.h"
#include "taiyi/cli/info.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/loaders/safetensors.h"
#include "taiyi/schedulers/scheduler.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// The header of a safetensors file as written: tensor count, element count, file size.
struct HeaderCounts {
  int64_t tensors = 0, parameters = 0;
  uint64_t size_bytes = 0;
  std::set<std::string> names;
};

HeaderCounts read_header(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | length_bytes[i];
  std::string header(length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(length));
  HeaderCounts counts;
  const Json parsed = Json::parse(header);
  for (const auto& [name, entry] : parsed.items()) {
    if (name == "__metadata__") continue;
    ++counts.tensors;
    counts.names.insert(name);
    int64_t numel = 1;
    for (const auto& d : entry.at("shape")) numel *= d.get<int64_t>();
    counts.parameters += numel;
  }
  counts.size_bytes = fs::file_size(file);
  return counts;
}

// A writable copy of a harness pipeline.
fs::path copy_pipeline(const std::string& name, const std::string& tag) {
  fs::path dir = taiyi::test::temp_dir("info-" + tag) / name;
  fs::copy(taiyi::test::fixture(name), dir, fs::copy_options::recursive);
  return dir;
}

// Rewrites a safetensors file with `tensors` (float32), in the format's layout.
void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  Json header = Json::object();
  std::string data;
  for (const auto& [name, tensor] : tensors) {
    torch::Tensor t = tensor.to(torch::kFloat).contiguous();
    const size_t begin = data.size();
    data.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
    header[name] = {{"dtype", "F32"}, {"shape", t.sizes().vec()}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << text << data;
}

// Reads every tensor of a file, lets `edit` change the list, writes it back.
template <typename Edit>
void edit_safetensors(const fs::path& path, Edit&& edit) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    taiyi::SafetensorsFile file(path);
    for (const auto& info : file.tensors()) tensors.emplace_back(info.name, file.tensor(info.name).clone());
  }
  edit(tensors);
  write_safetensors(path, tensors);
}

std::string joined(const Json& problems) {
  std::string s;
  for (const auto& p : problems) s += p.get<std::string>() + "\n";
  return s;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// Unusable, with one problem containing every needle.
void expect_problem(const Json& report, const std::vector<std::string>& needles) {
  EXPECT_FALSE(report.at("usable").get<bool>());
  bool found = false;
  for (const auto& p : report.at("problems")) {
    bool all = true;
    for (const auto& n : needles) all = all && contains(p.get<std::string>(), n);
    found = found || all;
  }
  std::string wanted;
  for (const auto& n : needles) wanted += "'" + n + "' ";
  EXPECT_TRUE(found) << "no problem containing " << wanted << "in:\n" << joined(report.at("problems"));
}

void expect_counts_match_headers(const std::string& name, const std::string& tokenizer, size_t max_length,
                                 const std::vector<std::string>& ignored_prefixes) {
  fs::path folder = taiyi::test::fixture(name);
  Json report = taiyi::inspect_model(folder);
  ASSERT_TRUE(report.at("usable").get<bool>()) << joined(report.at("problems"));
  EXPECT_TRUE(report.at("problems").empty());
  const Json& components = report.at("components");
  for (const std::string component : {"text_encoder", "unet", "vae"}) {
    SCOPED_TRACE(name + " " + component);
    const Json& c = components.at(component);
    ASSERT_EQ(c.at("files").size(), 1u);
    fs::path file = c.at("files")[0].at("path").get<std::string>();
    HeaderCounts expected = read_header(file);
    EXPECT_EQ(c.at("tensors").get<int64_t>(), expected.tensors);
    EXPECT_EQ(c.at("parameters").get<int64_t>(), expected.parameters);
    EXPECT_EQ(c.at("size_bytes").get<uint64_t>(), expected.size_bytes);
    EXPECT_EQ(c.at("dtypes").at("F32").get<int64_t>(), expected.tensors);  // the harness saves float32
    // The module holds every file tensor but the checkpoint keys it ignores (BERT's pooler).
    int64_t ignored = 0, ignored_parameters = 0;
    for (const auto& n : expected.names) {
      for (const auto& prefix : ignored_prefixes) {
        if (component == "text_encoder" && n.rfind(prefix, 0) == 0) {
          ++ignored;
          ignored_parameters += taiyi::SafetensorsFile(file).find(n)->numel();
          break;
        }
      }
    }
    EXPECT_EQ(c.at("model_tensors").get<int64_t>(), expected.tensors - ignored);
    EXPECT_EQ(c.at("model_parameters").get<int64_t>(), expected.parameters - ignored_parameters);
    EXPECT_TRUE(c.at("missing").empty() && c.at("unexpected").empty() && c.at("mis_shaped").empty());
  }
  EXPECT_EQ(components.at("tokenizer").at("kind").get<std::string>(), tokenizer);
  EXPECT_EQ(components.at("tokenizer").at("max_length").get<size_t>(), max_length);
  EXPECT_EQ(components.at("scheduler").at("name").get<std::string>(), "PNDM");
  EXPECT_EQ(components.at("unet").at("class").get<std::string>(), "UNet2DConditionModel");
  EXPECT_EQ(components.at("unet").at("config").at("sample_size").get<int64_t>(), 8);
  EXPECT_EQ(components.at("vae").at("scale_factor").get<int64_t>(), 8);

  std::string text = taiyi::format_model_report(report);
  EXPECT_TRUE(contains(text, "usable:       yes")) << text;
  EXPECT_TRUE(contains(text, tokenizer + ", max length " + std::to_string(max_length))) << text;
  EXPECT_TRUE(contains(text, "weights match")) << text;
}

}  // namespace

TEST(Info, TinyClipIsUsableAndCountsMatchHeaders) {
  expect_counts_match_headers("tiny-clip", "CLIPTokenizer", 77, {});
}

TEST(Info, TinyBertIsUsableAndCountsMatchHeaders) {
  expect_counts_match_headers("tiny-bert", "BertTokenizer", 512, {"pooler."});
}

// An SDXL single file (tests/reference/sdxl_single_file.py): the family, and both text encoders with the
// weights the folder's headers hold (whether the modules run is the pipeline's business, not checked here).
TEST(Info, SdxlSingleFileShowsBothTextEncoders) {
  taiyi::ModelSourceOptions options;
  options.config_dir = taiyi::test::fixture("tiny-sdxl");
  const Json report = taiyi::inspect_model(taiyi::test::fixture("sdxl_single_file/sdxl.safetensors"), options);
  EXPECT_TRUE(contains(report.at("layout").get<std::string>(), "SDXL, CLIP and OpenCLIP text encoders")) << report.at("layout");
  EXPECT_EQ(report.at("pipeline_class"), "StableDiffusionXLPipeline");
  const Json& components = report.at("components");
  for (const char* encoder : {"text_encoder", "text_encoder_2"}) {
    const HeaderCounts expected = read_header(taiyi::test::fixture(std::string("tiny-sdxl/") + encoder + "/model.safetensors"));
    EXPECT_EQ(components.at(encoder).at("tensors").get<int64_t>(), expected.tensors) << encoder;
    EXPECT_EQ(components.at(encoder).at("parameters").get<int64_t>(), expected.parameters) << encoder;
  }
  EXPECT_EQ(components.at("text_encoder_2").at("class"), "CLIPTextModelWithProjection");
  EXPECT_EQ(components.at("text_encoder_2").at("config").at("projection_dim"), 40);
  EXPECT_EQ(components.at("tokenizer_2").at("max_length").get<size_t>(), 77u);
  for (const Json& note : report.at("notes")) EXPECT_FALSE(contains(note.get<std::string>(), "_2")) << note;
  const std::string text = taiyi::format_model_report(report);
  EXPECT_TRUE(contains(text, "text_encoder_2: CLIPTextModelWithProjection")) << text;
  EXPECT_TRUE(contains(text, "tokenizer_2: CLIPTokenizer, max length 77")) << text;
  // Without --config-dir: SDXL base's configs.
  const Json builtin = taiyi::inspect_model(taiyi::test::fixture("sdxl_single_file/sdxl.safetensors"));
  EXPECT_EQ(builtin.at("components").at("text_encoder_2").at("config").at("hidden_size"), 1280);
  EXPECT_EQ(builtin.at("pipeline_class"), "StableDiffusionXLPipeline");
}

TEST(Info, RemovedExtraAndMisShapedTensorsAreNamed) {
  fs::path dir = copy_pipeline("tiny-clip", "tensors");
  fs::path unet = dir / "unet" / "diffusion_pytorch_model.safetensors";
  edit_safetensors(unet, [](auto& tensors) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].first == "conv_in.bias") {
        tensors.erase(tensors.begin() + static_cast<long>(i));
        break;
      }
    }
    for (auto& [name, t] : tensors)
      if (name == "conv_out.weight") t = t.narrow(1, 0, t.size(1) - 1);  // one input channel short
    tensors.emplace_back("extra.weight", torch::zeros({2}));
  });
  Json report = taiyi::inspect_model(dir);
  expect_problem(report, {"unet", "1 missing", "conv_in.bias"});
  expect_problem(report, {"unet", "1 unexpected", "extra.weight"});
  expect_problem(report, {"unet", "1 mis-shaped", "conv_out.weight (file [4, 31, 3, 3], model [4, 32, 3, 3])"});
  const Json& c = report.at("components").at("unet");
  EXPECT_EQ(c.at("missing"), Json::array({"conv_in.bias"}));
  EXPECT_EQ(c.at("unexpected"), Json::array({"extra.weight"}));
  EXPECT_EQ(c.at("mis_shaped").size(), 1u);
  // The others are still fine.
  EXPECT_TRUE(report.at("components").at("vae").at("missing").empty());
  EXPECT_EQ(report.at("problems").size(), 1u) << joined(report.at("problems"));  // one line for the UNet
  fs::remove_all(dir.parent_path());
}

TEST(Info, UnsupportedConfigOptionIsNamed) {
  fs::path dir = copy_pipeline("tiny-clip", "config");
  fs::path config = dir / "unet" / "config.json";
  Json json = taiyi::read_json_file(config);
  json["down_block_types"][0] = "SimpleCrossAttnDownBlock2D";
  std::ofstream(config) << json.dump(2);
  Json report = taiyi::inspect_model(dir);
  expect_problem(report, {"unet", "down_block_types", "SimpleCrossAttnDownBlock2D"});
  // The weights are still counted from the headers even though the module could not be built.
  EXPECT_GT(report.at("components").at("unet").at("tensors").get<int64_t>(), 0);
  EXPECT_FALSE(report.at("components").at("unet").contains("model_tensors"));
  fs::remove_all(dir.parent_path());
}

TEST(Info, MissingVocabularyIsNamed) {
  for (const auto& [name, vocab] : {std::pair<std::string, std::string>{"tiny-clip", "vocab.json"}, {"tiny-bert", "vocab.txt"}}) {
    SCOPED_TRACE(name);
    fs::path dir = copy_pipeline(name, "vocab");
    fs::remove(dir / "tokenizer" / vocab);
    Json report = taiyi::inspect_model(dir);
    expect_problem(report, {"tokenizer: ", vocab});
    fs::remove_all(dir.parent_path());
  }
}

TEST(Info, MalformedModelIndexIsNamed) {
  fs::path dir = copy_pipeline("tiny-clip", "index");
  std::ofstream(dir / "model_index.json") << "{\"unet\": [\"diffusers\", ";
  Json report;
  ASSERT_NO_THROW(report = taiyi::inspect_model(dir));
  expect_problem(report, {"model_index.json", "malformed"});
  EXPECT_EQ(report.at("problems").size(), 1u) << joined(report.at("problems"));
  fs::remove_all(dir.parent_path());

  fs::path empty = taiyi::test::temp_dir("info-empty");
  Json missing = taiyi::inspect_model(empty);
  expect_problem(missing, {"model_index.json", "file not found"});
  fs::remove_all(empty);
}

TEST(Info, MissingWeightFileIsNamed) {
  fs::path dir = copy_pipeline("tiny-clip", "weights");
  fs::remove(dir / "vae" / "diffusion_pytorch_model.safetensors");
  Json report = taiyi::inspect_model(dir);
  expect_problem(report, {"vae: ", "vae"});
  fs::remove_all(dir.parent_path());
}

TEST(Info, CommandLineExitCodes) {
  fs::path good = taiyi::test::fixture("tiny-clip");
  auto ok = taiyi::test::run_taiyi({"info", "--model", good.string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(contains(ok.out, "usable:       yes")) << ok.out;
  EXPECT_TRUE(contains(ok.out, "CLIPTokenizer")) << ok.out;

  auto json = taiyi::test::run_taiyi({"info", "--model", good.string(), "--json"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  Json report = Json::parse(json.out);
  EXPECT_TRUE(report.at("usable").get<bool>());
  EXPECT_EQ(report.at("components").at("unet").at("tensors").get<int64_t>(),
            read_header(good / "unet" / "diffusion_pytorch_model.safetensors").tensors);

  fs::path dir = copy_pipeline("tiny-clip", "cli");
  fs::remove(dir / "tokenizer" / "merges.txt");
  auto bad = taiyi::test::run_taiyi({"info", "--model", dir.string()});
  EXPECT_EQ(bad.exit_code, 1) << bad.out << bad.err;
  EXPECT_TRUE(contains(bad.out, "usable:       NO")) << bad.out;
  EXPECT_TRUE(contains(bad.out, "merges.txt")) << bad.out;
  fs::remove_all(dir.parent_path());
}

// --- bench ---------------------------------------------------------------------------------

namespace {

taiyi::BenchOptions tiny_bench_options() {
  taiyi::BenchOptions o;
  o.model = taiyi::test::fixture("tiny-clip").string();
  o.device = "cpu";
  o.precisions = {"fp32"};
  o.batch_sizes = {1, 2};
  o.resolutions = {64};
  o.steps = 2;
  o.warmup = 1;
  o.repeat = 2;
  return o;
}

int64_t unet_calls_for(const fs::path& folder, int64_t steps) {
  auto scheduler = taiyi::make_scheduler(taiyi::ModelFolder::open(folder).config("scheduler"), "");
  scheduler->set_timesteps(steps);
  return static_cast<int64_t>(scheduler->timesteps().size());
}

void expect_consistent(const Json& r, int64_t batch, int64_t unet_calls) {
  SCOPED_TRACE(r.dump());
  EXPECT_EQ(r.at("precision").get<std::string>(), "fp32");
  EXPECT_EQ(r.at("batch_size").get<int64_t>(), batch);
  EXPECT_EQ(r.at("width").get<int64_t>(), 64);
  EXPECT_EQ(r.at("height").get<int64_t>(), 64);
  EXPECT_EQ(r.at("unet_calls_per_run").get<int64_t>(), unet_calls);
  for (const char* key : {"load_s", "encode_s", "denoise_s", "unet_step_s", "decode_s", "run_s", "run_cpu_s", "peak_rss_mb"})
    EXPECT_GT(r.at(key).get<double>(), 0.0) << key;
  const double step = r.at("unet_step_s").get<double>();
  EXPECT_NEAR(r.at("it_per_s").get<double>() * step, 1.0, 1e-9);
  EXPECT_NEAR(step * unet_calls, r.at("denoise_s").get<double>(), 1e-9);
  const double run = r.at("run_s").get<double>();
  EXPECT_NEAR(r.at("s_per_image").get<double>() * batch, run, 1e-9);
  EXPECT_NEAR(r.at("images_per_s").get<double>() * run, static_cast<double>(batch), 1e-9);
  // The stages are inside the timed run (to_images adds a little).
  EXPECT_LE(r.at("encode_s").get<double>() + r.at("denoise_s").get<double>() + r.at("decode_s").get<double>(),
            run * 1.0001);
  EXPECT_LE(r.at("run_min_s").get<double>(), run);
  EXPECT_GE(r.at("run_max_s").get<double>(), run);
  EXPECT_FALSE(r.contains("peak_gpu_mb"));  // CPU
}

}  // namespace

TEST(Bench, RandomWeightsGridOnCpu) {
  taiyi::BenchOptions o = tiny_bench_options();
  o.random_weights = true;
  std::vector<std::string> log;
  std::vector<Json> saved;  // what `taiyi bench --json` writes after each configuration
  Json bench = taiyi::run_bench(
      o, [&](const std::string& line) { log.push_back(line); }, [&](const Json& partial) { saved.push_back(partial); });
  ASSERT_EQ(bench.at("results").size(), 2u) << bench.dump(2);
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[0].at("results").size(), 1u);
  EXPECT_EQ(saved[0].at("results")[0], bench.at("results")[0]);
  EXPECT_EQ(saved[1], bench);  // the last save is the whole document
  const int64_t calls = unet_calls_for(o.model, o.steps);
  expect_consistent(bench.at("results")[0], 1, calls);
  expect_consistent(bench.at("results")[1], 2, calls);
  EXPECT_TRUE(bench.at("random_weights").get<bool>());
  EXPECT_EQ(bench.at("scheduler").get<std::string>(), "PLMS");
  EXPECT_FALSE(log.empty());
  // What users of such benchmarks look for beside the warm times.
  for (const Json& r : bench.at("results")) {
    EXPECT_GT(r.at("first_run_s").get<double>(), 0.0) << r.dump();
    EXPECT_EQ(r.at("nonfinite_images"), 0) << r.dump();
    const std::string backend = r.at("attention_backend").get<std::string>();
    EXPECT_TRUE(backend == "flash" || backend == "math" || backend == "memory-efficient") << backend;
  }
  EXPECT_GT(bench.at("first_image_s").get<double>(), bench.at("results")[0].at("first_run_s").get<double>())
      << "the cold first image counts from process start";

  std::string table = taiyi::format_bench_table(bench);
  EXPECT_TRUE(contains(table, "it/s")) << table;
  EXPECT_TRUE(contains(table, "s/image")) << table;
  EXPECT_TRUE(contains(table, "random weights")) << table;
  EXPECT_TRUE(contains(table, "cold first image")) << table;
  int rows = 0;
  std::istringstream lines(table);
  for (std::string line; std::getline(lines, line);) rows += line.rfind("fp32", 0) == 0 && contains(line, "64x64");
  EXPECT_EQ(rows, 2) << table;
}

TEST(Bench, LoadedWeightsOnCpu) {
  taiyi::BenchOptions o = tiny_bench_options();
  o.batch_sizes = {1};
  o.precisions = {"auto"};  // fp32 on the CPU
  o.repeat = 1;
  Json bench = taiyi::run_bench(o);
  ASSERT_EQ(bench.at("results").size(), 1u);
  expect_consistent(bench.at("results")[0], 1, unet_calls_for(o.model, o.steps));
}

TEST(Bench, DefaultGridOnTheCpuIsFp32BesideBf16) {
  taiyi::BenchOptions o = tiny_bench_options();
  o.random_weights = true;
  o.precisions = {};
  o.batch_sizes = {1};
  o.warmup = 0;
  o.repeat = 1;
  Json bench = taiyi::run_bench(o);
  ASSERT_EQ(bench.at("results").size(), 2u);
  EXPECT_EQ(bench["results"][0]["precision"], "fp32");
  EXPECT_EQ(bench["results"][1]["precision"], "bf16");
  EXPECT_GT(bench["results"][1]["it_per_s"].get<double>(), 0.0);
  EXPECT_FALSE(bench.at("numerics").at("tf32_matmul").get<bool>());
}

TEST(Bench, OutOfMemoryIsARowAndTheGridGoesOn) {
  taiyi::BenchOptions o = tiny_bench_options();
  o.random_weights = true;
  o.batch_sizes = {1};
  o.warmup = 0;
  o.repeat = 1;
  o.resolutions = {16384, 64};  // 16384x16384 needs far more working memory than any CI machine has
  Json bench = taiyi::run_bench(o);
  ASSERT_EQ(bench.at("results").size(), 2u) << bench.dump(2);
  const Json& refused = bench["results"][0];
  EXPECT_EQ(refused.at("width"), 16384);
  EXPECT_EQ(refused.at("batch_size"), 1);
  EXPECT_TRUE(contains(refused.at("error").get<std::string>(), "out of memory")) << refused.dump();
  EXPECT_TRUE(contains(refused.at("error").get<std::string>(), "GB of working memory")) << refused.dump();
  EXPECT_EQ(bench["results"][1].at("width"), 64);
  EXPECT_GT(bench["results"][1].at("it_per_s").get<double>(), 0.0);
  EXPECT_TRUE(contains(taiyi::format_bench_table(bench), "out of memory"));
}

TEST(Bench, BadOptionsAreErrors) {
  auto expect_error = [](taiyi::BenchOptions o, const std::string& needle) {
    try {
      taiyi::run_bench(o);
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const taiyi::Error& e) {
      EXPECT_TRUE(contains(e.what(), needle)) << e.what();
    }
  };
  taiyi::BenchOptions o = tiny_bench_options();
  o.random_weights = true;
  o.repeat = 0;
  expect_error(o, "--repeat");
  o = tiny_bench_options();
  o.precisions = {"fp8"};
  expect_error(o, "--precision fp8");
  o = tiny_bench_options();
  o.random_weights = true;
  o.resolutions = {60};  // not a multiple of the VAE's 8
  expect_error(o, "width 60");
}

// Random weights need no weight file: only the configs and the tokenizer.
TEST(Bench, RandomPipelineNeedsNoWeightFiles) {
  fs::path dir = copy_pipeline("tiny-clip", "random");
  for (const char* component : {"text_encoder", "unet", "vae"})
    for (const auto& entry : fs::directory_iterator(dir / component))
      if (entry.path().extension() == ".safetensors") fs::remove(entry.path());
  taiyi::PipelineOptions options;
  options.device = "cpu";
  EXPECT_THROW(taiyi::Pipeline::load(dir, options), taiyi::Error);
  taiyi::Pipeline pipe = taiyi::Pipeline::load_random(dir, options);
  c10::InferenceMode inference;
  taiyi::GenerationRequest request;
  request.prompt = "a bridge";
  request.steps = 2;
  request = pipe.complete(request);
  std::vector<torch::Generator> generators;
  taiyi::Scheduler& scheduler = pipe.scheduler();
  scheduler.set_timesteps(request.steps);
  torch::Tensor latents = pipe.initial_latents(request, &generators) * scheduler.init_noise_sigma();
  torch::Tensor embeddings = torch::cat({pipe.encode_prompt(""), pipe.encode_prompt(request.prompt)});
  torch::Tensor images = pipe.decode(pipe.denoise(scheduler, latents, embeddings, request, generators));
  EXPECT_TRUE(torch::isfinite(images).all().item<bool>());
  // Not a constant image: the random weights are not all equal.
  EXPECT_GT(images.std().item<double>(), 1e-4);
  // The same seed gives the same weights: two random pipelines agree.
  taiyi::Pipeline again = taiyi::Pipeline::load_random(dir, options);
  EXPECT_TRUE(torch::equal(again.encode_prompt(request.prompt), pipe.encode_prompt(request.prompt)));
  fs::remove_all(dir.parent_path());
}

TEST(Bench, CommandLineWritesTableAndJson) {
  fs::path dir = taiyi::test::temp_dir("bench-cli");
  fs::path json_file = dir / "bench.json";
  auto r = taiyi::test::run_taiyi({"bench", "--model", taiyi::test::fixture("tiny-clip").string(), "--random-weights",
                                   "--device", "cpu", "--precision", "fp32", "--resolution", "64", "--steps", "2",
                                   "--warmup", "0", "--repeat", "1", "--json", json_file.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "it/s")) << r.out;
  Json bench = taiyi::read_json_file(json_file);
  ASSERT_EQ(bench.at("results").size(), 1u);
  EXPECT_EQ(bench.at("results")[0].at("width").get<int64_t>(), 64);
  fs::remove_all(dir);
}
