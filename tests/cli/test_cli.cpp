// The real taiyi binary on the harness's tiny pipeline: outputs, metadata, batches, resume, shards,
// and a clear message with a non-zero exit for each kind of bad input.
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "taiyi/utils/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::run_taiyi;

namespace {

std::string model() { return taiyi::test::fixture("tiny-clip").string(); }

// Small, quick settings first; the test's own arguments come after and win (the last one counts).
std::vector<std::string> fast(const std::vector<std::string>& args) {
  std::vector<std::string> all{"--steps", "3", "-W", "64", "-H", "64", "--device", "cpu", "-q", "--model", model()};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

std::string parameters_of(const fs::path& png) { return taiyi::test::png_parameters(png); }

void expect_failure(const std::vector<std::string>& args, const std::string& needle) {
  auto r = run_taiyi(args);
  EXPECT_NE(r.exit_code, 0) << "expected failure for: " << needle;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err << "\nexpected to contain: " << needle;
}

}  // namespace

TEST(Cli, WritesPngWithParametersAndNeverOverwrites) {
  fs::path dir = taiyi::test::temp_dir("cli");
  fs::path out = dir / "out.png";
  auto r = run_taiyi(fast({"小桥流水人家，Van Gogh style", "-n", "水印", "--seed", "42", "-o", out.string(), "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out));
  std::string params = parameters_of(out);
  EXPECT_EQ(params, "小桥流水人家，Van Gogh style\nNegative prompt: 水印\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 42, "
                    "Size: 64x64, Model: tiny-clip");
  auto record = nlohmann::json::parse(r.out);
  EXPECT_EQ(record["seed"], 42);
  EXPECT_EQ(record["file"], out.string());
  EXPECT_EQ(record["precision"], "fp32");
  EXPECT_EQ(record["device"], "cpu");
  EXPECT_EQ(record["tf32"], false);
  auto again = run_taiyi(fast({"x", "--seed", "42", "-o", out.string()}));
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  auto forced = run_taiyi(fast({"x", "--seed", "42", "-o", out.string(), "--overwrite"}));
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_NE(parameters_of(out).find("x\nSteps: 3"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Cli, Bf16AndVaePrecisionAreRecorded) {
  fs::path dir = taiyi::test::temp_dir("cli-bf16");
  fs::path out = dir / "out.png";
  auto r = run_taiyi(fast({"山水", "--seed", "1", "-o", out.string(), "--json", "--precision", "bf16", "--vae-precision", "fp32"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parameters_of(out), "山水\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-clip, "
                                "Precision: bf16, VAE precision: fp32");
  auto record = nlohmann::json::parse(r.out);
  EXPECT_EQ(record["precision"], "bf16");
  EXPECT_EQ(record["vae_precision"], "fp32");
  EXPECT_FALSE(record.contains("numerics"));  // CPU: no TF32 to record
  auto both = run_taiyi(fast({"x", "-o", (dir / "b.png").string(), "--tf32", "--no-tf32"}));
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.err.find("--no-tf32"), std::string::npos) << both.err;
  fs::remove_all(dir);
}

TEST(Cli, RandomSeedIsPrintedAndRecorded) {
  fs::path dir = taiyi::test::temp_dir("cli-seed");
  auto r = run_taiyi(fast({"a", "-o", (dir / "{seed}.png").string(), "--json", "--num-images", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  std::vector<uint64_t> seeds;
  while (std::getline(lines, line)) seeds.push_back(nlohmann::json::parse(line)["seed"].get<uint64_t>());
  ASSERT_EQ(seeds.size(), 2u);
  EXPECT_EQ(seeds[1], seeds[0] + 1);
  for (uint64_t s : seeds) {
    fs::path png = dir / (std::to_string(s) + ".png");
    ASSERT_TRUE(fs::exists(png));
    EXPECT_NE(parameters_of(png).find("Seed: " + std::to_string(s)), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(Cli, PromptFileBadLineResumeAndShards) {
  fs::path dir = taiyi::test::temp_dir("cli-batch");
  fs::path prompts = dir / "p.jsonl";
  std::ofstream(prompts) << "{\"prompt\": \"山水\", \"seed\": 1}\n{\"prompt\": \"broken\"\n# comment\n"
                            "{\"prompt\": \"a boat\", \"steps\": 2}\n{\"prompt\": \"云\", \"width\": 500}\n";
  fs::path outdir = dir / "out";
  auto r = run_taiyi(fast({"--prompts", prompts.string(), "-o", outdir.string() + "/", "--seed", "100", "--batch-size", "2"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;  // two bad lines, the rest written
  EXPECT_NE(r.err.find("p.jsonl:2: malformed JSON"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("line 5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("2 failed"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(outdir / "00001-0.png"));
  EXPECT_TRUE(fs::exists(outdir / "00004-0.png"));
  EXPECT_FALSE(fs::exists(outdir / "00005-0.png"));
  EXPECT_NE(parameters_of(outdir / "00001-0.png").find("Seed: 1,"), std::string::npos);
  // Line 4 is the third prompt (ordinal 2: the bad line 2 keeps its place, the comment has none): seed 100 + 2.
  EXPECT_NE(parameters_of(outdir / "00004-0.png").find("Steps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 102,"),
            std::string::npos);
  auto before = fs::last_write_time(outdir / "00001-0.png");
  auto resumed = run_taiyi(fast({"--prompts", prompts.string(), "-o", outdir.string() + "/", "--resume", "--json"}));
  EXPECT_EQ(resumed.exit_code, 1);  // the bad lines still fail
  EXPECT_EQ(resumed.out, "");        // nothing new written
  EXPECT_EQ(fs::last_write_time(outdir / "00001-0.png"), before);

  fs::path plain = dir / "p.txt";
  std::ofstream(plain) << "one\ntwo\nthree\nfour\nfive\n";
  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) {
    auto s = run_taiyi(fast({"--prompts", plain.string(), "-o", (dir / "s" / "{line}.png").string(), "--shard",
                             std::to_string(i) + "/2", "--steps", "1"}));
    EXPECT_EQ(s.exit_code, 0) << s.err;
  }
  for (int line = 1; line <= 5; ++line) EXPECT_TRUE(fs::exists(dir / "s" / (std::to_string(line) + ".png"))) << line;
  fs::remove_all(dir);
}

TEST(Cli, BadInputGetsClearErrors) {
  fs::path dir = taiyi::test::temp_dir("cli-bad");
  expect_failure({"x", "--model", (dir / "nope").string()}, "model not found");
  expect_failure(fast({"x", "-W", "500", "-o", (dir / "a.png").string()}), "500");
  expect_failure(fast({"x", "--steps", "0", "-o", (dir / "a.png").string()}), "--steps 0");
  expect_failure(fast({"x", "-g", "-2", "-o", (dir / "a.png").string()}), "--cfg-scale");
  expect_failure(fast({"x", "--scheduler", "euler", "-o", (dir / "a.png").string()}), "euler");
  expect_failure(fast({"--prompts", (dir / "missing.txt").string()}), "prompt file not found");
  std::ofstream(dir / "file") << "x";
  expect_failure(fast({"x", "-o", (dir / "file" / "a.png").string()}), "output folder");
  expect_failure(fast({"-o", (dir / "a.png").string()}), "no prompt");
  if (!torch::cuda::is_available()) expect_failure(fast({"x", "--device", "cuda", "-o", (dir / "a.png").string()}), "no CUDA GPU");
  // Nothing was written by any of the failed runs.
  EXPECT_FALSE(fs::exists(dir / "a.png"));
  fs::remove_all(dir);
}

TEST(Cli, TokenizeShowsChunksAndWeights) {
  auto r = run_taiyi({"tokenize", "--model", model(), "--json", "小桥流水人家"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["chunks"].size(), 1u);
  EXPECT_EQ(j["chunks"][0]["ids"].size(), 77u);
  EXPECT_EQ(j["chunks"][0]["ids"][0], 49406);
  EXPECT_EQ(j["chunks"][0]["cut"], "end");
  EXPECT_EQ(j["weighted"], false);
  EXPECT_EQ(j["context_tokens"], 77);
  // The issue's 99-token prompt: two chunks, the first cut after a full-width comma; nothing truncated.
  const std::string long_prompt = "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k";
  auto t = run_taiyi({"tokenize", "--model", model(), "--json", long_prompt});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  auto lj = nlohmann::json::parse(t.out);
  EXPECT_EQ(lj["content_tokens"], 99);
  ASSERT_EQ(lj["chunks"].size(), 2u);
  EXPECT_EQ(lj["chunks"][0]["cut"], "comma");
  EXPECT_EQ(lj["context_tokens"], 154);
  auto text = run_taiyi({"tokenize", "--model", model(), "(猫:1.5) BREAK 狗"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("2 chunk(s) of 75"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("ended by BREAK"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("\t1.5\n"), std::string::npos) << text.out;
  EXPECT_NE(text.err.find("2 chunks"), std::string::npos) << text.err;
  EXPECT_EQ(text.err.find("truncated"), std::string::npos) << text.err;
  expect_failure({"tokenize", "--model", model(), "(猫:1.2.3)"}, "not a number");
}

// SDXL: both tokenizers' ids, as transformers gives them (ref/sdxl.safetensors); SDXL base's tokenizer_2 pads
// with "!", so its ids are shown in full, Taiyi-XL's are the first's and said to be the same.
TEST(Cli, TokenizeShowsBothSdxlTokenizers) {
  const fs::path ref = taiyi::test::fixture("ref/sdxl.safetensors");
  auto ids = [](const nlohmann::json& chunk) { return chunk["ids"].get<std::vector<int64_t>>(); };
  auto expected = [&](const std::string& name) {
    const torch::Tensor t = taiyi::test::reference_tensor(ref, name);
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  auto r = run_taiyi({"tokenize", "--model", taiyi::test::fixture("tiny-sdxl").string(), "--json",
                      "a lighthouse at dusk, watercolor"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["chunks"].size(), 1u);
  ASSERT_TRUE(j.contains("tokenizer_2")) << r.out;
  ASSERT_EQ(j["tokenizer_2"]["chunks"].size(), 1u);
  EXPECT_EQ(ids(j["chunks"][0]), expected("sdxl_en.ids_1"));
  EXPECT_EQ(ids(j["tokenizer_2"]["chunks"][0]), expected("sdxl_en.ids_2"));
  EXPECT_NE(ids(j["chunks"][0]), ids(j["tokenizer_2"]["chunks"][0]));
  auto text = run_taiyi({"tokenize", "--model", taiyi::test::fixture("tiny-sdxl").string(), "a lighthouse"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("tokenizer_2: CLIP"), std::string::npos) << text.out;
  EXPECT_EQ(text.out.find("the same ids"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("padded to 77 with 49407 <|endoftext|>"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("padded to 77 with 0 !"), std::string::npos) << text.out;  // tokenizer_2's pad_token
  const std::string taiyi_prompt = "飞流直下三千尺，疑是银河落九天，瀑布，插画";
  auto t = run_taiyi({"tokenize", "--model", taiyi::test::fixture("tiny-taiyi-xl").string(), "--json", taiyi_prompt});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  auto tj = nlohmann::json::parse(t.out);
  EXPECT_EQ(tj["max_length"], 512);
  EXPECT_EQ(ids(tj["chunks"][0]), expected("taiyi_zh.ids_1"));
  EXPECT_EQ(ids(tj["tokenizer_2"]["chunks"][0]), expected("taiyi_zh.ids_2"));
  auto same = run_taiyi({"tokenize", "--model", taiyi::test::fixture("tiny-taiyi-xl").string(), taiyi_prompt});
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_NE(same.out.find("tokenizer_2: CLIP"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("the same ids"), std::string::npos) << same.out;
}

// --clip-skip: recorded as the web UI records it; a prompt file with long and short prompts batches
// them apart (their context lengths differ) and each image equals the one made alone.
TEST(Cli, ClipSkipAndLongPromptsInBatches) {
  fs::path dir = taiyi::test::temp_dir("cli-prompts");
  auto r = run_taiyi(fast({"(山水:1.2), 古画", "--seed", "5", "-o", (dir / "a.png").string(), "--clip-skip", "2", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parameters_of(dir / "a.png"),
            "(山水:1.2), 古画\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: tiny-clip, Clip skip: 2");
  EXPECT_EQ(nlohmann::json::parse(r.out)["clip_skip"], 2);
  expect_failure(fast({"x", "--clip-skip", "0", "-o", (dir / "b.png").string()}), "--clip-skip 0");
  expect_failure(fast({"x", "--clip-skip", "9", "-o", (dir / "b.png").string()}), "clip skip 9");

  const std::string long_prompt = "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k";
  fs::path prompts = dir / "p.jsonl";
  std::ofstream(prompts) << "{\"prompt\": \"小桥\"}\n{\"prompt\": \"" << long_prompt << "\"}\n"
                         << "{\"prompt\": \"流水\", \"clip_skip\": 2}\n{\"prompt\": \"(bad:1.2.3)\"}\n"
                         << "{\"prompt\": \"x\", \"clip_skip\": 0}\n";
  auto batch = run_taiyi(fast({"--prompts", prompts.string(), "-o", (dir / "{line}.png").string(), "--seed", "7",
                               "--batch-size", "4"}));
  EXPECT_EQ(batch.exit_code, 1) << batch.err;  // lines 4 and 5 fail, alone
  EXPECT_NE(batch.err.find("line 4: prompt: the weight in '(bad:1.2.3)' is not a number"), std::string::npos) << batch.err;
  EXPECT_NE(batch.err.find("\"clip_skip\" 0"), std::string::npos) << batch.err;
  for (int line : {1, 2, 3}) EXPECT_TRUE(fs::exists(dir / (std::to_string(line) + ".png"))) << line;
  EXPECT_NE(parameters_of(dir / "3.png").find("Clip skip: 2"), std::string::npos);
  auto alone = run_taiyi(fast({long_prompt, "--seed", "8", "-o", (dir / "alone.png").string()}));
  ASSERT_EQ(alone.exit_code, 0) << alone.err;
  EXPECT_EQ(taiyi::read_image((dir / "alone.png").string(), 3).pixels, taiyi::read_image((dir / "2.png").string(), 3).pixels);
  fs::remove_all(dir);
}

// --sampler / --schedule, their record in the PNG and the JSON, and a prompt-file line choosing its own.
TEST(Cli, SamplerAndScheduleAreUsedAndRecorded) {
  fs::path dir = taiyi::test::temp_dir("cli-sampler");
  auto r = run_taiyi(fast({"山水", "--seed", "3", "-o", (dir / "a.png").string(), "--json", "--sampler", "dpm++ 2m",
                           "--schedule", "Karras"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parameters_of(dir / "a.png"),
            "山水\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3, Size: 64x64, Model: tiny-clip");
  auto record = nlohmann::json::parse(r.out);
  EXPECT_EQ(record["sampler"], "DPM++ 2M");
  EXPECT_EQ(record["schedule"], "karras");
  // The composite web-UI name gives the same image as sampler + schedule.
  auto composite = run_taiyi(fast({"山水", "--seed", "3", "-o", (dir / "b.png").string(), "--sampler", "DPM++ 2M Karras"}));
  ASSERT_EQ(composite.exit_code, 0) << composite.err;
  auto bytes = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(bytes(dir / "a.png"), bytes(dir / "b.png"));  // same pixels, same parameters
  auto euler_a = run_taiyi(fast({"山水", "--seed", "3", "-o", (dir / "c.png").string(), "--sampler", "euler_a"}));
  ASSERT_EQ(euler_a.exit_code, 0) << euler_a.err;
  EXPECT_NE(parameters_of(dir / "c.png").find("Sampler: Euler a, Schedule type: Uniform, "), std::string::npos);
  // Prompt-file lines with their own sampler; a bad name fails that line only.
  std::ofstream(dir / "p.jsonl") << R"({"prompt": "a", "sampler": "Heun", "output": ")" << (dir / "h.png").string()
                                 << "\"}\n"
                                 << R"({"prompt": "b", "sampler": "Euler b", "output": ")" << (dir / "x.png").string()
                                 << "\"}\n"
                                 << R"({"prompt": "c", "sampler": "LMS", "schedule": "karras", "output": ")"
                                 << (dir / "l.png").string() << "\"}\n";
  auto file = run_taiyi(fast({"--prompts", (dir / "p.jsonl").string()}));
  EXPECT_EQ(file.exit_code, 1);
  EXPECT_NE(file.err.find("Euler b"), std::string::npos) << file.err;
  EXPECT_NE(parameters_of(dir / "h.png").find("Sampler: Heun, Schedule type: Uniform"), std::string::npos);
  EXPECT_NE(parameters_of(dir / "l.png").find("Sampler: LMS, Schedule type: Karras"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "x.png"));
  expect_failure(fast({"x", "--sampler", "nosuch", "-o", (dir / "z.png").string()}), "\"DPM++ 2M\"");
  expect_failure(fast({"x", "--sampler", "Euler a", "--schedule", "karras", "-o", (dir / "z.png").string()}),
                 "EulerAncestralDiscreteScheduler");
  expect_failure(fast({"x", "--sampler", "DPM++ 2M Karras", "--schedule", "beta", "-o", (dir / "z.png").string()}),
                 "implies the karras schedule");
  EXPECT_FALSE(fs::exists(dir / "z.png"));
  fs::remove_all(dir);
}

// -i / --strength and per-line init_image (relative to the prompt file) and strength, recorded.
TEST(Cli, Img2ImgRecordsStrengthAndInitImage) {
  fs::path dir = taiyi::test::temp_dir("cli-img2img");
  const std::string init = taiyi::test::fixture("images/rgb_100x70.png").string();
  auto r = run_taiyi(fast({"山水", "--seed", "4", "-o", (dir / "a.png").string(), "--json", "-i", init, "--strength", "0.5",
                           "-W", "0", "-H", "0"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parameters_of(dir / "a.png"),
            "山水\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 4, Size: 96x64, Model: tiny-clip, Denoising strength: 0.5");
  auto record = nlohmann::json::parse(r.out);
  EXPECT_EQ(record["init_image"], init);
  EXPECT_EQ(record["strength"], 0.5);
  fs::copy_file(taiyi::test::fixture("images/rgb_64.png"), dir / "init.png");
  std::ofstream(dir / "p.jsonl") << R"({"prompt": "a", "init_image": "init.png", "strength": 0.6, "output": ")"
                                 << (dir / "b.png").string() << "\"}\n"
                                 << R"({"prompt": "b", "init_image": "nope.png", "output": ")" << (dir / "c.png").string()
                                 << "\"}\n"
                                 << R"({"prompt": "c", "strength": 2, "output": ")" << (dir / "d.png").string() << "\"}\n";
  auto file = run_taiyi(fast({"--prompts", (dir / "p.jsonl").string(), "-W", "0", "-H", "0"}));
  EXPECT_EQ(file.exit_code, 1);
  EXPECT_NE(parameters_of(dir / "b.png").find("Size: 64x64, Model: tiny-clip, Denoising strength: 0.6"), std::string::npos)
      << parameters_of(dir / "b.png");
  EXPECT_NE(file.err.find("nope.png"), std::string::npos) << file.err;
  EXPECT_NE(file.err.find("\"strength\" 2"), std::string::npos) << file.err;
  EXPECT_FALSE(fs::exists(dir / "c.png"));
  EXPECT_FALSE(fs::exists(dir / "d.png"));
  expect_failure(fast({"x", "-i", (dir / "missing.png").string(), "-o", (dir / "z.png").string()}), "missing.png");
  expect_failure(fast({"x", "-i", init, "--strength", "0", "-o", (dir / "z.png").string()}), "--strength 0");
  EXPECT_FALSE(fs::exists(dir / "z.png"));
  fs::remove_all(dir);
}

TEST(Cli, InpaintingWithMask) {
  fs::path dir = taiyi::test::temp_dir("cli-inpaint");
  const std::string init = taiyi::test::fixture("images/rgb_64.png").string();
  const std::string mask = taiyi::test::fixture("images/mask_64.png").string();
  auto r = run_taiyi(fast({"山水", "--seed", "4", "-o", (dir / "a.png").string(), "--json", "-i", init, "--mask", mask,
                           "--strength", "0.8"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parameters_of(dir / "a.png"), "山水\nSteps: 3, Sampler: PLMS, CFG scale: 7.5, Seed: 4, Size: 64x64, "
                                          "Model: tiny-clip, Denoising strength: 0.8, Mask: mask_64.png");
  EXPECT_EQ(nlohmann::json::parse(r.out)["mask"], mask);
  expect_failure(fast({"x", "--mask", mask, "-o", (dir / "z.png").string()}), "--mask needs an init image");
  auto inpainting_model = fast({"x", "-o", (dir / "z.png").string()});
  inpainting_model.push_back("--model");
  inpainting_model.push_back(taiyi::test::fixture("tiny-clip-inpaint").string());
  expect_failure(inpainting_model, "in_channels 9");
  EXPECT_FALSE(fs::exists(dir / "z.png"));
  fs::remove_all(dir);
}

// --preview: the web UI's cheap preview of the running batch (latent resolution), the same pixels as the
// live preview function gives for the final latents' image, written whole.
TEST(Cli, LivePreviewFileIsWrittenEveryNSteps) {
  fs::path dir = taiyi::test::temp_dir("cli-preview");
  const fs::path preview = dir / "preview.png";
  auto r = run_taiyi(fast({"a cat", "--seed", "3", "--sampler", "Euler", "--steps", "4", "--preview", preview.string(),
                           "--preview-every", "2", "-o", (dir / "out.png").string()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const taiyi::PixelImage image = taiyi::read_image(preview, 3);
  EXPECT_EQ(image.width, 64 / 8);  // the tiny VAE's scale factor is 8, as SD's
  EXPECT_EQ(image.height, 64 / 8);
  expect_failure(fast({"a cat", "--preview", preview.string(), "--preview-every", "0", "-o", (dir / "o2.png").string()}),
                 "--preview-every 0");
  fs::remove_all(dir);
}
