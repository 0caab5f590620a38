// The shared parts of diffusers 0.37.1's schedulers; see scheduling_utils.h.
#include "schedulers/scheduling_utils.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace taiyi::schedulers {

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// numpy's np.round: halves to even (the default FE_TONEAREST of nearbyint).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

PredictionType read_prediction_type(const Config& config, bool sample_allowed) {
  const std::string type = config.get_string("prediction_type", "epsilon");
  if (type == "epsilon") return PredictionType::Epsilon;
  if (type == "v_prediction") return PredictionType::VPrediction;
  if (type == "sample" && sample_allowed) return PredictionType::Sample;
  config.unsupported("prediction_type", sample_allowed ? "epsilon, v_prediction or sample" : "epsilon or v_prediction");
}

// ---- noise schedule: betas -> alphas_cumprod (the __init__ of both schedulers) ----

// betas_for_alpha_bar(num_diffusion_timesteps, max_beta=0.999, "cosine"), in Python floats (double,
// the same libm cos/pow), then torch.tensor(betas, dtype=float32).
Tensor cosine_betas(int64_t num_diffusion_timesteps) {
  const double max_beta = 0.999;
  constexpr double kPi = 3.141592653589793;  // math.pi
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * kPi / 2), 2.0); };
  std::vector<double> betas;
  for (int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(num_diffusion_timesteps);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(num_diffusion_timesteps);
    betas.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return torch::tensor(betas, torch::kDouble).to(torch::kFloat);
}

// scheduling_ddim.rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1), in float32 as diffusers.
Tensor rescale_zero_terminal_snr(const Tensor& betas) {
  Tensor alphas = at::rsub(betas, 1.0);
  Tensor alphas_bar_sqrt = at::cumprod(alphas, 0).sqrt();
  Tensor first = alphas_bar_sqrt[0].clone();
  Tensor last = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt.sub_(last);                      // shift: the last timestep has zero SNR
  alphas_bar_sqrt.mul_(first / (first - last));    // scale: the first keeps its value
  Tensor alphas_bar = alphas_bar_sqrt.pow(2);
  alphas = at::cat({alphas_bar.slice(0, 0, 1), alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1)});
  return at::rsub(alphas, 1);
}

Tensor make_betas(const Config& config, int64_t num_train_timesteps) {
  if (num_train_timesteps < 1) config.unsupported("num_train_timesteps", "a positive number");
  if (config.has("trained_betas")) {
    const nlohmann::json& list = config.json().at("trained_betas");
    if (!list.is_array() || list.size() != static_cast<size_t>(num_train_timesteps))
      config.unsupported("trained_betas", "a list of num_train_timesteps (" + std::to_string(num_train_timesteps) +
                                              ") numbers");
    std::vector<double> betas;
    for (const auto& b : list) {
      if (!b.is_number()) config.unsupported("trained_betas", "a list of numbers");
      betas.push_back(b.get<double>());
    }
    return torch::tensor(betas, torch::kDouble).to(torch::kFloat);  // torch.tensor(list, float32)
  }
  const std::string schedule = config.get_string("beta_schedule", "linear");
  const double beta_start = config.get_double("beta_start", 0.0001);
  const double beta_end = config.get_double("beta_end", 0.02);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  if (schedule == "linear") return torch::linspace(beta_start, beta_end, num_train_timesteps, f32);
  // linspace of the square roots (Python's x ** 0.5 is libm pow), squared in float32.
  if (schedule == "scaled_linear")
    return torch::linspace(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), num_train_timesteps, f32).pow(2);
  if (schedule == "squaredcos_cap_v2") return cosine_betas(num_train_timesteps);
  config.unsupported("beta_schedule", "linear, scaled_linear or squaredcos_cap_v2");
}

// ---- timesteps ----

Spacing read_spacing(const Config& config) {
  const std::string spacing = config.get_string("timestep_spacing", "leading");
  if (spacing == "leading") return Spacing::Leading;
  if (spacing == "trailing") return Spacing::Trailing;
  if (spacing == "linspace") return Spacing::Linspace;
  config.unsupported("timestep_spacing", "leading, trailing or linspace");
}

// The base timesteps of both schedulers in ascending order (DDIM walks them reversed), with numpy's
// float arithmetic where diffusers uses it.
std::vector<int64_t> spaced_timesteps(Spacing spacing, int64_t num_train_timesteps, int64_t num_inference_steps,
                                      int64_t steps_offset) {
  std::vector<int64_t> timesteps;
  const auto n = num_inference_steps;
  const auto train = static_cast<double>(num_train_timesteps);
  switch (spacing) {
    case Spacing::Leading: {  // np.arange(0, n) * (T // n) + steps_offset
      const int64_t step_ratio = num_train_timesteps / n;
      for (int64_t i = 0; i < n; ++i) timesteps.push_back(i * step_ratio + steps_offset);
      break;
    }
    case Spacing::Linspace: {  // np.linspace(0, T - 1, n).round(): i * step, the last exactly T - 1
      const double step = n > 1 ? (train - 1) / static_cast<double>(n - 1) : 0.0;
      for (int64_t i = 0; i < n; ++i) timesteps.push_back(round_half_even(static_cast<double>(i) * step));
      if (n > 1) timesteps.back() = num_train_timesteps - 1;
      break;
    }
    case Spacing::Trailing: {
      // np.round(np.arange(T, 0, -T / n)) - 1. numpy's arange has ceil(T / (T / n)) entries, which is
      // n + 1 for some n (61, 103, ...): diffusers then also runs a timestep -1. Its entries are
      // start + i * delta with delta = (start + step) - start.
      const double step = -train / static_cast<double>(n);
      const auto length = static_cast<int64_t>(std::ceil((0.0 - train) / step));
      const double delta = (train + step) - train;
      for (int64_t i = 0; i < length; ++i) {
        const double value = i == 0 ? train : i == 1 ? train + step : train + static_cast<double>(i) * delta;
        timesteps.push_back(round_half_even(value) - 1);
      }
      std::reverse(timesteps.begin(), timesteps.end());
      break;
    }
  }
  return timesteps;
}

}  // namespace taiyi::schedulers
