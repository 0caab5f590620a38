// Parity of src/schedulers/ (pndm.cpp, ddim.cpp) with diffusers' PNDMScheduler and DDIMScheduler, against the goldens of
// tests/reference/scheduler.py: for every case the timesteps (exact), each step replayed from the
// reference's own inputs (1e-6) and the free-running trajectory with the same stand-in model (1e-5);
// set_timesteps for many step counts; the errors for bad kinds, options and step counts.
#include "taiyi/schedulers/scheduler.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "taiyi/utils/error.h"
#include "test_util.h"

namespace {

using taiyi::test::expect_error_naming;

using taiyi::test::expect_close;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;
using Json = nlohmann::json;

// taiyi runs the same ATen ops in the same order as diffusers, so it matches to the bit (the
// measured difference is 0); the bounds leave room for a reordered float32 product, no more.
constexpr double kStepTolerance = 1e-6;
constexpr double kTrajectoryTolerance = 1e-5;
// float16 too: one half-precision ulp (up to 4e-3 here) is a real deviation from diffusers, e.g.
// scaling by a scalar rounded to half first (libtorch's mul_(Scalar) on the CPU).
constexpr double kHalfTolerance = 1e-6;

// The cases of tests/reference/scheduler.py (CASES); EveryReferenceCaseIsTested checks the lists agree.
const std::vector<std::string> kCaseNames = {
    "pndm_50", "pndm_20", "pndm_30", "pndm_7", "pndm_1", "ddim_50", "ddim_20", "ddim_30", "ddim_7", "ddim_1",
    "ddim_eta_20", "ddim_eta1_7", "ddim_trailing_30", "ddim_linspace_7", "ddim_trailing_61", "ddim_clip_20",
    "ddim_alpha_one_20", "ddim_old_config_20", "pndm_old_config_20", "ddim_native_20", "pndm_trailing_20",
    "pndm_linspace_7", "pndm_trailing_61", "pndm_prk_50", "pndm_prk_4", "pndm_prk_trailing_9", "pndm_vpred_20",
    "ddim_vpred_20", "ddim_sample_20", "pndm_linear_20", "ddim_cosine_20", "pndm_trained_20",
    "ddim_threshold_20", "ddim_zero_snr_20", "pndm_fp16_20", "ddim_eta_fp16_20", "pndm_prk_fp16_7",
    "ddim_threshold_fp16_20", "ddim_vpred_clip_fp16_20"};

Json reference_cases() { return taiyi::read_json_file(fixture("ref/scheduler_cases.json")); }

std::filesystem::path reference_file() { return fixture("ref/scheduler.safetensors"); }

// Taiyi's scheduler_config.json (PNDMScheduler, scaled_linear, steps_offset 1, clip_sample false).
taiyi::Config taiyi_config() { return taiyi::Config::load(fixture("tiny-clip/scheduler/scheduler_config.json")); }

taiyi::Config config_with(const Json& overrides) {
  taiyi::Config base = taiyi_config();
  Json json = base.json();
  for (const auto& [key, value] : overrides.items()) json[key] = value;
  return taiyi::Config(json, base.path());
}

struct Case {
  std::string name;
  Json json;
  torch::Dtype dtype = torch::kFloat;
  std::vector<double> timesteps;

  std::unique_ptr<taiyi::Scheduler> make() const {
    taiyi::SchedulerOptions options;
    options.eta = json.at("eta").get<double>();
    return taiyi::make_scheduler(taiyi::Config::load(fixture(json.at("file").get<std::string>())),
                                 json.at("kind").get<std::string>(), options);
  }
  // A fresh CPU generator seeded as the reference's torch.Generator().manual_seed(seed).
  std::vector<torch::Generator> generator() const {
    if (json.at("seed").is_null()) return {};
    return {at::detail::createCPUGenerator(json.at("seed").get<uint64_t>())};
  }
  double step_tolerance() const { return dtype == torch::kHalf ? kHalfTolerance : kStepTolerance; }
  double trajectory_tolerance() const { return dtype == torch::kHalf ? kHalfTolerance : kTrajectoryTolerance; }
};

Case find_case(const std::string& name) {
  Case c;
  c.name = name;
  const Json cases = reference_cases();
  for (const auto& entry : cases.at("cases")) {
    if (entry.at("name") == name) c.json = entry;
  }
  if (c.json.is_null()) {
    ADD_FAILURE() << "no case '" << name << "' in ref/scheduler_cases.json: regenerate the fixtures";
    return c;
  }
  c.dtype = c.json.at("dtype") == "float16" ? torch::kHalf : torch::kFloat;
  c.timesteps = c.json.at("timesteps").get<std::vector<double>>();
  return c;
}

class SchedulerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedulerParity, Timesteps) {
  const Case c = find_case(GetParam());
  ASSERT_FALSE(c.json.is_null());
  auto scheduler = c.make();
  scheduler->set_timesteps(c.json.at("steps").get<int64_t>());
  EXPECT_EQ(scheduler->timesteps(), c.timesteps) << c.name;
  const bool pndm = c.json.at("effective_config").at("_class_name") == "PNDMScheduler";
  EXPECT_EQ(scheduler->name(), pndm ? "PNDM" : "DDIM");
}

// Each step from the reference's sample and model output, in order (the PNDM history builds up
// from the same inputs as in diffusers; the DDIM generator is drawn once per step as there).
TEST_P(SchedulerParity, EveryStepReplayed) {
  const Case c = find_case(GetParam());
  ASSERT_FALSE(c.json.is_null());
  const auto file = reference_file();
  const torch::Tensor sample_in = reference_tensor(file, c.name + ".sample_in");
  const torch::Tensor model_output = reference_tensor(file, c.name + ".model_output");
  const torch::Tensor expected = reference_tensor(file, c.name + ".sample_out");
  ASSERT_EQ(sample_in.size(0), static_cast<int64_t>(c.timesteps.size()));

  auto scheduler = c.make();
  scheduler->set_timesteps(c.json.at("steps").get<int64_t>());
  ASSERT_EQ(scheduler->timesteps(), c.timesteps);
  auto generator = c.generator();
  std::vector<torch::Tensor> outputs;
  for (size_t k = 0; k < c.timesteps.size(); ++k) {
    const auto i = static_cast<int64_t>(k);
    torch::Tensor out = scheduler->step(model_output[i].to(c.dtype), i, sample_in[i].to(c.dtype), generator);
    ASSERT_EQ(out.scalar_type(), c.dtype);
    outputs.push_back(out.to(torch::kFloat));
  }
  expect_close(c.name + " steps", torch::stack(outputs), expected, c.step_tolerance());
}

// The whole loop on taiyi's own samples, with the reference's stand-in model
// model_output = 0.1 * sample + sin(t / 100) * noise[k]. Two runs of one scheduler: the second
// set_timesteps must reset the state of the first; the second runs under InferenceMode, as the
// pipeline does.
TEST_P(SchedulerParity, FreeRunningTrajectory) {
  const Case c = find_case(GetParam());
  ASSERT_FALSE(c.json.is_null());
  const auto file = reference_file();
  const torch::Tensor noise = reference_tensor(file, "noise").to(c.dtype);
  const torch::Tensor expected = reference_tensor(file, c.name + ".sample_out");

  auto scheduler = c.make();
  const auto steps = c.json.at("steps").get<int64_t>();
  for (const bool inference_mode : {false, true}) {
    c10::InferenceMode guard(inference_mode);
    scheduler->set_timesteps(steps);
    auto generator = c.generator();
    torch::Tensor sample = reference_tensor(file, "latents").to(c.dtype);
    std::vector<torch::Tensor> outputs;
    for (size_t k = 0; k < scheduler->timesteps().size(); ++k) {
      const double t = scheduler->timesteps()[k];
      torch::Tensor model_output = sample * 0.1 + noise[static_cast<int64_t>(k)] * std::sin(t / 100.0);
      sample = scheduler->step(model_output, static_cast<int64_t>(k), sample, generator);
      outputs.push_back(sample.to(torch::kFloat));
    }
    expect_close(c.name + (inference_mode ? " trajectory (InferenceMode)" : " trajectory"), torch::stack(outputs),
                 expected, c.trajectory_tolerance());
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, SchedulerParity, ::testing::ValuesIn(kCaseNames),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(Scheduler, EveryReferenceCaseIsTested) {
  std::set<std::string> reference_names;
  const Json cases = reference_cases();
  for (const auto& entry : cases.at("cases")) reference_names.insert(entry.at("name").get<std::string>());
  EXPECT_EQ(reference_names, std::set<std::string>(kCaseNames.begin(), kCaseNames.end()));
}

// set_timesteps(n) for n = 1..64 and some large n, each spacing, PLMS, PRK and DDIM.
TEST(Scheduler, TimestepsForManyStepCounts) {
  const Json sweeps = reference_cases().at("sweeps");
  ASSERT_GT(sweeps.size(), 600u);
  int mismatches = 0;
  for (const auto& sweep : sweeps) {
    auto scheduler = taiyi::make_scheduler(config_with(sweep.at("overrides")), sweep.at("class").get<std::string>());
    scheduler->set_timesteps(sweep.at("steps").get<int64_t>());
    const auto expected = sweep.at("timesteps").get<std::vector<double>>();
    if (scheduler->timesteps() != expected && ++mismatches <= 5) {
      ADD_FAILURE() << sweep.at("class") << " " << sweep.at("overrides").dump() << " steps " << sweep.at("steps")
                    << ": " << scheduler->timesteps().size() << " timesteps, expected " << expected.size();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Scheduler, KindIsCaseInsensitive) {
  const taiyi::Config config = taiyi_config();
  EXPECT_EQ(taiyi::make_scheduler(config, "")->name(), "PNDM");  // the file's _class_name
  EXPECT_EQ(taiyi::make_scheduler(config, "PNDM")->name(), "PNDM");
  EXPECT_EQ(taiyi::make_scheduler(config, "Ddim")->name(), "DDIM");
  EXPECT_EQ(taiyi::make_scheduler(config, "DDIMScheduler")->name(), "DDIM");
}

TEST(Scheduler, UnknownKindOrClassIsAnError) {
  const taiyi::Config config = taiyi_config();
  const std::string file = config.path().string();
  expect_error_naming([&] { taiyi::make_scheduler(config, "eulerx"); }, {"eulerx", file, "euler_a"});
  expect_error_naming([&] { taiyi::make_scheduler(config_with({{"_class_name", "DEISMultistepScheduler"}}), ""); },
               {"DEISMultistepScheduler", file});
}

TEST(Scheduler, UnsupportedOptionsAreErrors) {
  const std::string file = taiyi_config().path().string();
  for (const std::string kind : {"pndm", "ddim"}) {
    expect_error_naming([&] { taiyi::make_scheduler(config_with({{"beta_schedule", "sigmoid"}}), kind); },
                 {"beta_schedule", "sigmoid", file});
    expect_error_naming([&] { taiyi::make_scheduler(config_with({{"timestep_spacing", "uniform"}}), kind); },
                 {"timestep_spacing", "uniform", file});
    expect_error_naming([&] { taiyi::make_scheduler(config_with({{"trained_betas", {0.1, 0.2}}}), kind); },
                 {"trained_betas", file});
  }
  // diffusers' PNDM has no "sample" prediction; DDIM does.
  expect_error_naming([&] { taiyi::make_scheduler(config_with({{"prediction_type", "sample"}}), "pndm"); },
               {"prediction_type", "sample", file});
}

TEST(Scheduler, BadStepCountsAreErrors) {
  const std::string file = taiyi_config().path().string();
  for (const std::string kind : {"pndm", "ddim"}) {
    auto scheduler = taiyi::make_scheduler(taiyi_config(), kind);
    expect_error_naming([&] { scheduler->set_timesteps(0); }, {"num_inference_steps = 0", file});
    expect_error_naming([&] { scheduler->set_timesteps(1001); }, {"num_inference_steps = 1001", "1000", file});
    // leading spacing with steps_offset 1: 1000 steps reach timestep 1000 (diffusers: IndexError)
    expect_error_naming([&] { scheduler->set_timesteps(1000); }, {"steps_offset", "1000", file});
  }
  auto prk = taiyi::make_scheduler(config_with({{"skip_prk_steps", false}}), "pndm");
  expect_error_naming([&] { prk->set_timesteps(3); }, {"skip_prk_steps", file});
}

TEST(Scheduler, StepNeedsTimestepsAndMatchingTensors) {
  auto scheduler = taiyi::make_scheduler(taiyi_config(), "ddim");
  const torch::Tensor sample = torch::zeros({1, 4, 8, 6});
  expect_error_naming([&] { scheduler->step(sample, 0, sample); }, {"set_timesteps"});
  scheduler->set_timesteps(50);
  expect_error_naming([&] { scheduler->step(sample.to(torch::kHalf), 0, sample); }, {"model_output", "Half"});
}

// The same parity on a CUDA device (the coefficients stay on the CPU; the DDIM noise is drawn by
// the CPU generator and moved). CUDA divides by a scalar through its reciprocal, hence 1e-5.
// Cuda* suites run only under `ctest -L cuda` (scripts/gpu_check.sh); there a missing GPU is a failure.
TEST(CudaScheduler, MatchesReference) {
  ASSERT_TRUE(torch::cuda::is_available()) << "no CUDA device: run the cuda label on a GPU machine";
  const auto file = reference_file();
  for (const std::string name : {"pndm_50", "ddim_eta_20", "pndm_prk_50", "ddim_threshold_20"}) {
    const Case c = find_case(name);
    const torch::Tensor sample_in = reference_tensor(file, name + ".sample_in").to(torch::kCUDA);
    const torch::Tensor model_output = reference_tensor(file, name + ".model_output").to(torch::kCUDA);
    auto scheduler = c.make();
    scheduler->set_timesteps(c.json.at("steps").get<int64_t>());
    auto generator = c.generator();
    std::vector<torch::Tensor> outputs;
    for (size_t k = 0; k < c.timesteps.size(); ++k) {
      const auto i = static_cast<int64_t>(k);
      torch::Tensor out = scheduler->step(model_output[i], i, sample_in[i], generator);
      ASSERT_TRUE(out.is_cuda());
      outputs.push_back(out.cpu());
    }
    expect_close(name + " steps on CUDA", torch::stack(outputs), reference_tensor(file, name + ".sample_out"),
                 kTrajectoryTolerance);
  }
}

}  // namespace
