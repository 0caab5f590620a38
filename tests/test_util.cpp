#include "test_util.h"

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "taiyi/utils/image.h"
#include "taiyi/loaders/safetensors.h"

namespace taiyi::test {

namespace fs = std::filesystem;

// Must equal FIXTURE_VERSION in tools/make_fixtures.py.
constexpr int kFixtureVersion = 1;

fs::path fixtures_dir() {
  const char* env = std::getenv("TAIYI_FIXTURES");
  if (!env || !*env) {
    ADD_FAILURE() << "TAIYI_FIXTURES is not set: run the tests through ctest (the make_fixtures test "
                     "runs tools/make_fixtures.py first)";
    return {};
  }
  // Absolute, so that the tests' folder variants may link to fixtures whatever the working directory.
  const fs::path dir = fs::absolute(env);
  std::ifstream version_file(dir / "VERSION");
  int version = 0;
  if (!(version_file >> version) || version != kFixtureVersion) {
    ADD_FAILURE() << dir << ": fixtures missing or of version " << version << ", expected " << kFixtureVersion
                  << "; regenerate with: python tools/make_fixtures.py " << dir;
  }
  return dir;
}

nlohmann::json pipeline_cases() {
  std::ifstream in(fixture("ref/pipeline_cases.json"));
  return nlohmann::json::parse(in);
}

std::vector<taiyi::Image> run_pipeline_case(const nlohmann::json& c, taiyi::PipelineOptions options) {
  options.scheduler = c["scheduler"];
  options.sampler = c.value("sampler", "");
  options.schedule = c.value("schedule", "");
  options.eta = c["eta"].get<double>();
  auto pipe = taiyi::Pipeline::load(fixture(c["model"].get<std::string>()), options);
  return pipe.generate(request_of_case(c));
}

taiyi::GenerationRequest request_of_case(const nlohmann::json& c) {
  taiyi::GenerationRequest r;
  r.prompt = c["prompt"];
  // null: diffusers' negative_prompt=None (SDXL: zeros with force_zeros_for_empty_prompt), taiyi's empty one
  r.negative_prompt = c.at("negative_prompt").is_null() ? "" : c.at("negative_prompt").get<std::string>();
  r.steps = c["steps"];
  r.cfg_scale = c["cfg_scale"];
  r.seed = c["seed"];
  r.width = c["width"];
  r.height = c["height"];
  r.count = c["count"];
  r.clip_skip = c.value("clip_skip", 1);
  return r;
}

torch::Tensor image_tensor(const std::vector<taiyi::Image>& images) {
  std::vector<torch::Tensor> each;
  for (const auto& image : images)
    each.push_back(torch::from_blob(const_cast<uint8_t*>(image.rgb.data()), {image.height, image.width, 3}, torch::kUInt8)
                       .to(torch::kFloat));
  return torch::stack(each);
}

double fraction_within(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance) {
  return ((actual - expected).abs() <= tolerance).to(torch::kDouble).mean().item<double>();
}

double psnr_db(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double mse = (actual - expected).pow(2).to(torch::kDouble).mean().item<double>();
  return mse == 0 ? 1000.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

fs::path fixture(const std::string& relative) {
  fs::path p = fixtures_dir() / relative;
  if (!fs::exists(p)) ADD_FAILURE() << "fixture missing: " << p << " (regenerate with tools/make_fixtures.py)";
  return p;
}

torch::Tensor reference_tensor(const fs::path& file, const std::string& name) {
  SafetensorsFile st(file);
  if (!st.find(name)) {
    ADD_FAILURE() << file << ": no reference tensor '" << name << "'";
    return {};
  }
  torch::Tensor t = st.tensor(name);
  return t.is_floating_point() ? t.to(torch::kFloat).clone() : t.clone();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kDouble).cpu(), y = b.to(torch::kDouble).cpu();
  // Equal values differ by 0, infinities included: the random-weight full-size BERT's weighted prompt can
  // scale a token to inf in the reference and in taiyi alike (inf - inf would read as NaN, a failure).
  return torch::where(x == y, torch::zeros_like(x), (x - y).abs()).max().item<double>();
}

double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kDouble).cpu();
  auto e = expected.to(torch::kDouble).cpu();
  return ((a - e).norm() / e.norm()).item<double>();
}

void expect_close(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected,
                  double atol) {
  ASSERT_TRUE(actual.defined() && expected.defined()) << name << ": undefined tensor";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name << ": shape mismatch";
  double diff = max_abs_diff(actual, expected);
  std::printf("%s: max abs diff %.3g (tol %.3g)\n", name.c_str(), diff, atol);
  EXPECT_LE(diff, atol) << name << ": max abs diff " << diff << " over tolerance " << atol;
}

static std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  return q + "'";
}

static std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string taiyi_binary() {
  const char* env = std::getenv("TAIYI_BINARY");
  return env && *env ? env : TAIYI_BINARY;
}

fs::path source_dir() {
  const char* env = std::getenv("TAIYI_SOURCE_DIR");
  return env && *env ? env : TAIYI_SOURCE_DIR;
}

CommandResult run_taiyi(const std::vector<std::string>& args) {
  fs::path dir = temp_dir("run_taiyi");
  std::string cmd = shell_quote(taiyi_binary());
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + shell_quote((dir / "out").string()) + " 2>" + shell_quote((dir / "err").string()) + " </dev/null";
  int status = std::system(cmd.c_str());
  CommandResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(dir / "out"),
                  slurp(dir / "err")};
  fs::remove_all(dir);
  return r;
}

fs::path temp_dir(const std::string& name) {
  static std::mt19937_64 rng(std::random_device{}());
  fs::path dir = fs::temp_directory_path() / ("taiyi-test-" + name + "-" + std::to_string(rng()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string png_parameters(const std::filesystem::path& png) {
  for (const auto& [key, value] : taiyi::read_png_text(png))
    if (key == "parameters") return value;
  return "";
}

}  // namespace taiyi::test
