// Prompt files, shards, output names, PNG text chunks and atomic writes.
#include <fstream>

#include "taiyi/jobs/prompt_file.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {
fs::path write(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
  return p;
}
}  // namespace

TEST(PromptFile, PlainText) {
  fs::path dir = taiyi::test::temp_dir("prompts");
  auto file = taiyi::read_prompt_file(write(dir / "p.txt", "\xEF\xBB\xBF# comment\n小桥流水人家\n\n  a cat  \r\n#x\nlast"));
  ASSERT_EQ(file.jobs.size(), 3u);
  EXPECT_TRUE(file.errors.empty());
  EXPECT_EQ(file.jobs[0].prompt, "小桥流水人家");
  EXPECT_EQ(file.jobs[0].line, 2);
  EXPECT_EQ(file.jobs[1].prompt, "a cat");
  EXPECT_EQ(file.jobs[1].line, 4);
  EXPECT_EQ(file.jobs[2].ordinal, 2);
  fs::remove_all(dir);
}

TEST(PromptFile, JsonlWithBadLines) {
  fs::path dir = taiyi::test::temp_dir("jsonl");
  auto file = taiyi::read_prompt_file(write(dir / "p.jsonl",
                                            "{\"prompt\": \"a\", \"seed\": 5, \"steps\": 3, \"cfg_scale\": 2.5, \"width\": 64, "
                                            "\"height\": 32, \"negative_prompt\": \"n\", \"output\": \"x.png\"}\n"
                                            "{\"prompt\": \"b\"\n"
                                            "{\"seed\": 1}\n"
                                            "{\"prompt\": \"c\", \"colour\": 1}\n"
                                            "{\"prompt\": \"d\", \"steps\": \"many\"}\n"
                                            "{\"prompt\": \"e\"}\n"));
  ASSERT_EQ(file.jobs.size(), 2u);
  EXPECT_EQ(file.jobs[0].seed.value(), 5u);
  EXPECT_EQ(file.jobs[0].steps.value(), 3);
  EXPECT_DOUBLE_EQ(file.jobs[0].cfg_scale.value(), 2.5);
  EXPECT_EQ(file.jobs[0].output.value(), "x.png");
  EXPECT_EQ(file.jobs[1].prompt, "e");
  EXPECT_EQ(file.jobs[1].line, 6);
  EXPECT_EQ(file.jobs[1].ordinal, 5);
  ASSERT_EQ(file.errors.size(), 4u);
  EXPECT_NE(file.errors[0].message.find("p.jsonl:2: malformed JSON"), std::string::npos) << file.errors[0].message;
  EXPECT_NE(file.errors[1].message.find(":3: missing \"prompt\""), std::string::npos) << file.errors[1].message;
  EXPECT_NE(file.errors[2].message.find(":4: unknown key \"colour\""), std::string::npos) << file.errors[2].message;
  EXPECT_NE(file.errors[3].message.find(":5: \"steps\" must be an integer"), std::string::npos) << file.errors[3].message;
  EXPECT_THROW(taiyi::read_prompt_file(dir / "absent.txt"), taiyi::Error);
  EXPECT_THROW(taiyi::read_prompt_file(dir), taiyi::Error);
  fs::remove_all(dir);
}

TEST(Shard, CoversEveryLineOnce) {
  const int64_t n = 3;
  std::vector<int> hits(10, 0);
  for (int64_t i = 0; i < n; ++i) {
    taiyi::Shard s = taiyi::parse_shard(std::to_string(i) + "/" + std::to_string(n));
    for (int64_t ordinal = 0; ordinal < 10; ++ordinal) hits[ordinal] += s.contains(ordinal);
  }
  for (int h : hits) EXPECT_EQ(h, 1);
  for (const char* bad : {"3/3", "-1/2", "1", "a/b", "1/0", "1/2x"}) EXPECT_THROW(taiyi::parse_shard(bad), taiyi::Error) << bad;
}

TEST(OutputNames, TemplatesAndDefaults) {
  taiyi::NameFields f{42, 1, 7, 9};
  EXPECT_EQ(taiyi::expand_name_template("out/{line:05}-{image}-{seed}-{index}.png", f), "out/00007-1-42-9.png");
  EXPECT_THROW(taiyi::expand_name_template("{prompt}.png", f), taiyi::Error);
  EXPECT_THROW(taiyi::expand_name_template("{seed", f), taiyi::Error);
  EXPECT_EQ(taiyi::output_template("a.png", false, 1), "a.png");
  EXPECT_EQ(taiyi::output_template("a.png", false, 3), "a-{seed}.png");
  EXPECT_EQ(taiyi::output_template("dir/", true, 1), "dir/{line:05}-{image}.png");
  EXPECT_EQ(taiyi::output_template("", false, 1), "outputs/{seed}.png");
  EXPECT_EQ(taiyi::output_template("x/{seed}.png", true, 2), "x/{seed}.png");
}

TEST(Png, TextChunksRoundTripAndWritesAtomically) {
  fs::path dir = taiyi::test::temp_dir("png");
  std::vector<uint8_t> rgb(4 * 3 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i * 7);
  std::string latin = "a cat\nSteps: 20, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 4x3, Model: m";
  std::string chinese = "小桥流水人家\nNegative prompt: 水印\nSteps: 20";
  taiyi::write_file_atomically(dir / "a.png", taiyi::encode_png(rgb.data(), 4, 3, {{"parameters", latin}}));
  taiyi::write_file_atomically(dir / "b.png", taiyi::encode_png(rgb.data(), 4, 3, {{"parameters", chinese}}));
  auto a = taiyi::read_png_text(dir / "a.png");
  auto b = taiyi::read_png_text(dir / "b.png");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].first, "parameters");
  EXPECT_EQ(a[0].second, latin);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].second, chinese);
  // Only the two PNGs: no temporary files left behind.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
  EXPECT_THROW(taiyi::write_file_atomically(dir / "missing-folder" / "c.png", std::string("x")), taiyi::Error);
  fs::remove_all(dir);
}
