// Shared helpers of the C++ tests: where the reference fixtures are, reading reference tensors and
// comparing against them with a named tolerance (the failure message gives the measured difference).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "taiyi/utils/error.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"

namespace taiyi::test {

// $TAIYI_FIXTURES (made by tools/make_fixtures.py); fails the test, never skips, when it is absent
// or made by another fixture version.
std::filesystem::path fixtures_dir();
std::filesystem::path fixture(const std::string& relative);  // fixtures_dir() / relative, must exist

// Reads one tensor from a reference safetensors file (as float32 or its own integer type).
torch::Tensor reference_tensor(const std::filesystem::path& file, const std::string& name);

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);
double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected);

// EXPECT that shapes match and max |actual - expected| <= atol; prints "name: max abs diff X (tol Y)".
void expect_close(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected,
                  double atol);

// EXPECT that `action` throws taiyi::Error whose message contains every one of `needles`.
template <typename Action>
void expect_error_naming(Action&& action, const std::vector<std::string>& needles) {
  try {
    action();
    ADD_FAILURE() << "no taiyi::Error thrown (expected one naming '" << needles.front() << "')";
  } catch (const taiyi::Error& e) {
    const std::string message = e.what();
    for (const auto& needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nlacks: " << needle;
  }
}

// The end-to-end cases of tests/reference/pipeline.py (ref/pipeline_cases.json), and one case run
// through a pipeline loaded with `options` (its scheduler and eta come from the case).
nlohmann::json pipeline_cases();
std::vector<taiyi::Image> run_pipeline_case(const nlohmann::json& c, taiyi::PipelineOptions options);
// A case's request: prompt, negative_prompt (null: ""), steps, cfg_scale, seed, width, height, count, clip_skip
// (1 if absent).
taiyi::GenerationRequest request_of_case(const nlohmann::json& c);
// Images as one float tensor [N, H, W, 3] of byte values, the layout of the reference's "<case>.images".
torch::Tensor image_tensor(const std::vector<taiyi::Image>& images);
// Image agreement: the fraction of pixel values within `tolerance` byte values, and the PSNR in dB.
double fraction_within(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance);
double psnr_db(const torch::Tensor& actual, const torch::Tensor& expected);

// The taiyi binary and the source tree: $TAIYI_BINARY / $TAIYI_SOURCE_DIR when set (binaries built on one
// machine and run from another checkout, as scripts/gpu_check.sh does with carried binaries), else the
// absolute paths compiled in (TAIYI_BINARY, TAIYI_SOURCE_DIR of tests/CMakeLists.txt).
std::string taiyi_binary();
std::filesystem::path source_dir();

// Runs the taiyi binary with arguments (shell-quoted here); returns exit status, captures output.
struct CommandResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
CommandResult run_taiyi(const std::vector<std::string>& args);

// The "parameters" text of a PNG written by taiyi ("" when it has none).
std::string png_parameters(const std::filesystem::path& png);

// A fresh empty temporary folder for one test.
std::filesystem::path temp_dir(const std::string& name);

}  // namespace taiyi::test
