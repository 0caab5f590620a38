// The shared parts of diffusers 0.37.1's schedulers; see scheduling_utils.h.
#include "schedulers/scheduling_utils.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

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

Tensor make_betas(const Config& config, int64_t num_train_timesteps, double default_start, double default_end,
                  const std::string& default_schedule) {
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
  const std::string schedule = config.get_string("beta_schedule", default_schedule);
  const double beta_start = config.get_double("beta_start", default_start);
  const double beta_end = config.get_double("beta_end", default_end);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  if (schedule == "linear") return torch::linspace(beta_start, beta_end, num_train_timesteps, f32);
  // linspace of the square roots (Python's x ** 0.5 is libm pow), squared in float32.
  if (schedule == "scaled_linear")
    return torch::linspace(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), num_train_timesteps, f32).pow(2);
  if (schedule == "squaredcos_cap_v2") return cosine_betas(num_train_timesteps);
  config.unsupported("beta_schedule", "linear, scaled_linear or squaredcos_cap_v2");
}

// ---- timesteps ----

Spacing read_spacing(const Config& config, const std::string& default_spacing) {
  const std::string spacing = config.get_string("timestep_spacing", default_spacing);
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

namespace taiyi::schedulers {

// ---- numpy ----

// numpy/_core/src/umath/loops_exponent_log.dispatch.c.src, simd_log_FLOAT (AVX512F/AVX2 lane): the
// mantissa m in [0.5, 1) and exponent, m doubled below sqrt(1/2), then log1p(m - 1) as a P5/Q5
// rational in fused multiply-adds, plus exponent * ln 2.
float numpy_logf(float x_in) {
  if (std::isnan(x_in)) return std::numeric_limits<float>::quiet_NaN();
  if (x_in < 0) return -std::numeric_limits<float>::quiet_NaN();
  if (x_in == 0) return -std::numeric_limits<float>::infinity();
  if (std::isinf(x_in)) return std::numeric_limits<float>::infinity();
  int e = 0;
  float x = std::frexp(x_in, &e);  // getmant(x, [0.5, 1)), getexp(x) + 1
  float exponent = static_cast<float>(e);
  if (x <= 0.707106781186547524400844362104849039f) {
    x = x + x;
    exponent = exponent - 1.0f;
  }
  x = x - 1.0f;
  float num = std::fma(2.589979117907922693523e-02f, x, 3.808837741388407920751e-01f);
  num = std::fma(num, x, 1.480000633576506585156e+00f);
  num = std::fma(num, x, 2.112677543073053063722e+00f);
  num = std::fma(num, x, 9.999999999999998702752e-01f);
  num = std::fma(num, x, 0.0f);
  float den = std::fma(5.875095403124574342950e-03f, x, 1.546476374983906719538e-01f);
  den = std::fma(den, x, 9.864942958519418960339e-01f);
  den = std::fma(den, x, 2.453006071784736363091e+00f);
  den = std::fma(den, x, 2.612677543073109236779e+00f);
  den = std::fma(den, x, 1.0f);
  return std::fma(exponent, 0.693147180559945309417232121458176568f, num / den);
}

// numpy's arr_interp (compiled_base.c) with xp = 0, 1, ..., n - 1.
double numpy_interp(double x, const std::vector<float>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (std::isnan(x)) return x;
  if (x < 0) return fp.front();
  if (x >= static_cast<double>(n - 1)) return fp.back();
  const auto j = static_cast<int64_t>(std::floor(x));
  if (static_cast<double>(j) == x) return fp[static_cast<size_t>(j)];
  const double slope = (static_cast<double>(fp[static_cast<size_t>(j + 1)]) - static_cast<double>(fp[static_cast<size_t>(j)])) /
                       (static_cast<double>(j + 1) - static_cast<double>(j));
  return slope * (x - static_cast<double>(j)) + static_cast<double>(fp[static_cast<size_t>(j)]);
}

std::vector<double> numpy_linspace(double start, double stop, int64_t n) {
  std::vector<double> out;
  const double step = n > 1 ? (stop - start) / static_cast<double>(n - 1) : 0.0;
  for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<double>(i) * step + start);
  if (n > 1) out.back() = stop;
  return out;
}

std::vector<float> train_sigmas(const Tensor& alphas_cumprod) {
  Tensor sigmas = at::div(at::rsub(alphas_cumprod, 1), alphas_cumprod).pow(0.5).contiguous();
  const float* data = sigmas.data_ptr<float>();
  return std::vector<float>(data, data + sigmas.numel());
}

std::vector<float> numpy_log(const std::vector<float>& values) {
  std::vector<float> out;
  out.reserve(values.size());
  for (float v : values) out.push_back(numpy_logf(v));
  return out;
}

// diffusers' _sigma_to_t: the last index whose log-sigma is <= log(sigma) (cumsum(...).argmax()),
// clipped below the end, and linear interpolation to the next.
template <typename Real>
static int64_t low_index(Real log_sigma, const std::vector<float>& log_sigmas) {
  int64_t low = 0;
  for (size_t i = 0; i < log_sigmas.size(); ++i)
    if (log_sigma - static_cast<Real>(log_sigmas[i]) >= 0) low = static_cast<int64_t>(i);
  return std::min<int64_t>(low, static_cast<int64_t>(log_sigmas.size()) - 2);
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const int64_t low_idx = low_index(log_sigma, log_sigmas);
  const float low = log_sigmas[static_cast<size_t>(low_idx)], high = log_sigmas[static_cast<size_t>(low_idx + 1)];
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low - high);
  w = std::min(std::max(w, 0.0), 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(low_idx + 1);
}

float sigma_to_t_f32(float sigma, const std::vector<float>& log_sigmas) {
  const float log_sigma = numpy_logf(std::max(sigma, static_cast<float>(1e-10)));
  const int64_t low_idx = low_index(log_sigma, log_sigmas);
  const float low = log_sigmas[static_cast<size_t>(low_idx)], high = log_sigmas[static_cast<size_t>(low_idx + 1)];
  float w = (low - log_sigma) / (low - high);
  w = std::min(std::max(w, 0.0f), 1.0f);
  return (1 - w) * static_cast<float>(low_idx) + w * static_cast<float>(low_idx + 1);
}

// The regularised incomplete beta I_x(a, b) by its continued fraction (Lentz), in long double.
static long double incomplete_beta(long double x, long double a, long double b) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  if (x > (a + 1) / (a + b + 2)) return 1 - incomplete_beta(1 - x, b, a);
  const long double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  const long double tiny = 1e-300L;
  long double f = 1, c = 1, d = 1 - (a + b) * x / (a + 1);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1 / d;
  f = d;
  for (int m = 1; m < 500; ++m) {
    for (int half = 0; half < 2; ++half) {
      long double numerator;
      if (half == 0) {
        numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
      } else {
        numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
      }
      d = 1 + numerator * d;
      if (std::fabs(d) < tiny) d = tiny;
      c = 1 + numerator / c;
      if (std::fabs(c) < tiny) c = tiny;
      d = 1 / d;
      f *= c * d;
    }
    if (std::fabs(c * d - 1) < 1e-19L) break;
  }
  return std::exp(log_front) * f / a;
}

double beta_ppf(double q, double a, double b) {
  if (q <= 0) return 0.0;
  if (q >= 1) return 1.0;
  long double lo = 0, hi = 1;
  for (int i = 0; i < 200 && hi - lo > 1e-21L; ++i) {
    const long double mid = (lo + hi) / 2;
    (incomplete_beta(mid, a, b) < q ? lo : hi) = mid;
  }
  return static_cast<double>((lo + hi) / 2);
}

std::vector<double> convert_sigmas(SigmaSchedule schedule, double sigma_min, double sigma_max, int64_t n) {
  std::vector<double> sigmas;
  switch (schedule) {
    case SigmaSchedule::Default:
      break;
    case SigmaSchedule::Karras: {  // Karras et al. (2022), rho 7
      const double rho = 7.0;
      const double min_inv_rho = std::pow(sigma_min, 1 / rho), max_inv_rho = std::pow(sigma_max, 1 / rho);
      for (double r : numpy_linspace(0, 1, n)) sigmas.push_back(std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho));
      break;
    }
    case SigmaSchedule::Exponential:
      for (double l : numpy_linspace(std::log(sigma_max), std::log(sigma_min), n)) sigmas.push_back(std::exp(l));
      break;
    case SigmaSchedule::Beta:  // "Beta Sampling is All You Need" (arXiv 2407.12173), alpha = beta = 0.6
      for (double r : numpy_linspace(0, 1, n)) sigmas.push_back(sigma_min + beta_ppf(1 - r, 0.6, 0.6) * (sigma_max - sigma_min));
      break;
  }
  return sigmas;
}

SigmaSchedule read_sigma_schedule(const Config& config, bool exponential_and_beta) {
  const bool karras = config.get_bool("use_karras_sigmas", false);
  const bool exponential = config.get_bool("use_exponential_sigmas", false);
  const bool beta = config.get_bool("use_beta_sigmas", false);
  if (int(karras) + int(exponential) + int(beta) > 1)
    throw Error(config.path().string() + ": only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used");
  if (!exponential_and_beta && (exponential || beta))
    config.unsupported(exponential ? "use_exponential_sigmas" : "use_beta_sigmas", "false for this scheduler");
  if (karras) return SigmaSchedule::Karras;
  if (exponential) return SigmaSchedule::Exponential;
  if (beta) return SigmaSchedule::Beta;
  return SigmaSchedule::Default;
}

Tensor randn_tensor(at::IntArrayRef shape, torch::Dtype dtype, torch::Device device,
                    const std::vector<torch::Generator>& generators) {
  auto options = torch::TensorOptions().dtype(dtype).device(device);
  if (generators.empty()) return at::randn(shape, options);
  auto draw = [&](const torch::Generator& generator, at::IntArrayRef draw_shape) {
    auto draw_options = options;
    if (generator.device().type() != device.type()) {
      if (generator.device().type() != torch::kCPU)
        throw Error("cannot draw noise for a " + device.str() + " tensor from a " + generator.device().str() + " generator");
      draw_options = options.device(torch::kCPU);
    }
    return at::randn(draw_shape, generator, draw_options);
  };
  if (generators.size() == 1) return draw(generators.front(), shape).to(device);
  if (shape.empty() || static_cast<int64_t>(generators.size()) != shape[0])
    throw Error("noise for a batch of " + std::to_string(shape.empty() ? 0 : shape[0]) + " from " +
                std::to_string(generators.size()) + " generators: one per image expected");
  std::vector<int64_t> one(shape.begin(), shape.end());
  one[0] = 1;
  std::vector<Tensor> parts;
  for (const auto& generator : generators) parts.push_back(draw(generator, one));
  return at::cat(parts).to(device);
}

Tensor threshold_sample(Tensor sample, double ratio, double max_value) {
  const auto dtype = sample.scalar_type();
  const std::vector<int64_t> shape = sample.sizes().vec();
  if (dtype != torch::kFloat && dtype != torch::kDouble) sample = sample.to(torch::kFloat);
  sample = sample.reshape({shape[0], sample.numel() / shape[0]});
  Tensor s = at::quantile(sample.abs(), ratio, 1);
  s = at::clamp(s, 1, max_value).unsqueeze(1);
  sample = at::clamp(sample, -s, s) / s;
  return sample.reshape(shape).to(dtype);
}

Tensor scalar_f32(double value) { return torch::scalar_tensor(value, torch::kFloat); }

SampleClipping::SampleClipping(const Config& config, bool default_clip)
    : clip(config.get_bool("clip_sample", default_clip)),
      thresholding(config.get_bool("thresholding", false)),
      clip_range(config.get_double("clip_sample_range", 1.0)),
      ratio(config.get_double("dynamic_thresholding_ratio", 0.995)),
      max_value(config.get_double("sample_max_value", 1.0)) {}

Tensor SampleClipping::apply(const Tensor& x0) const {
  if (thresholding) return threshold_sample(x0, ratio, max_value);
  return clip ? x0.clamp(-clip_range, clip_range) : x0;
}

Tensor make_betas_for(const Config& config, double default_start, double default_end, const std::string& default_schedule) {
  Tensor betas = make_betas(config, config.get_int("num_train_timesteps", 1000), default_start, default_end, default_schedule);
  return config.get_bool("rescale_betas_zero_snr", false) ? rescale_zero_terminal_snr(betas) : betas;
}

std::pair<Tensor, Tensor> alpha_sigma_of(const Tensor& sigma) {
  const Tensor alpha = at::mul(at::reciprocal(at::add(sigma.pow(2), 1).pow(0.5)), 1);
  return {alpha, at::mul(sigma, alpha)};
}

Tensor lambda_of(const std::pair<Tensor, Tensor>& alpha_sigma) {
  return at::sub(at::log(alpha_sigma.first), at::log(alpha_sigma.second));
}

Tensor add_noise_vp(const Tensor& sigmas, const Tensor& original, const Tensor& noise, int64_t index) {
  const auto [alpha_t, sigma_t] = alpha_sigma_of(sigmas.to(original.device(), original.scalar_type())[index]);
  return at::add(at::mul(alpha_t, original), at::mul(sigma_t, noise));
}

Tensor repeat_inner(const Tensor& x, bool keep_last_single) {
  return at::cat({x.slice(0, 0, 1), (keep_last_single ? x.slice(0, 1, -1) : x.slice(0, 1)).repeat_interleave(2), x.slice(0, -1)});
}

// ---- SigmaSchedulerBase ----

Tensor SigmaSchedulerBase::scale_model_input(const Tensor& sample, int64_t index) const {
  check_index(index);
  return at::div(sample, at::add(input_sigma(index).pow(2), 1).pow(0.5));
}

void SigmaSchedulerBase::set_init_noise_sigma() {
  const Tensor max_sigma = sigmas_.max();
  const std::string spacing = config_.get_string("timestep_spacing", "linspace");
  init_noise_sigma_ = spacing == "linspace" || spacing == "trailing" ? max_sigma : at::add(max_sigma.pow(2), 1).pow(0.5);
}

Tensor SigmaSchedulerBase::add_noise(const Tensor& original, const Tensor& noise, int64_t index) const {
  check_index(index);
  const Tensor sigma = sigmas_.to(original.device(), original.scalar_type())[index];
  return at::add(original, at::mul(noise, sigma));
}

std::vector<double> SigmaSchedulerBase::base_timesteps(int64_t n) const {
  const Spacing spacing = read_spacing(config_, "linspace");
  std::vector<double> out;
  if (spacing == Spacing::Linspace) {
    // np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
    for (double v : numpy_linspace(0, static_cast<double>(num_train_timesteps_ - 1), n)) out.push_back(static_cast<float>(v));
  } else {
    // leading: (arange(n) * (T // n)).round() + steps_offset; trailing: arange(T, 0, -T / n).round() - 1
    for (int64_t t : spaced_timesteps(spacing, num_train_timesteps_, n, config_.get_int("steps_offset", 0)))
      out.push_back(static_cast<double>(t));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace taiyi::schedulers

namespace taiyi::schedulers {

SigmaSchedulerBase::SigmaPlan SigmaSchedulerBase::plan_sigmas(int64_t n, SigmaSchedule schedule,
                                                              bool config_sigma_limits) const {
  SigmaPlan plan;
  plan.timesteps = base_timesteps(n);
  const std::vector<float> train = train_sigmas(alphas_cumprod_);
  plan.log_sigmas = numpy_log(train);
  for (double t : plan.timesteps) plan.sigmas.push_back(numpy_interp(t, train));
  if (schedule != SigmaSchedule::Default) {
    double sigma_min = plan.sigmas.back(), sigma_max = plan.sigmas.front();
    if (config_sigma_limits && config_.has("sigma_min")) sigma_min = config_.get_double("sigma_min");
    if (config_sigma_limits && config_.has("sigma_max")) sigma_max = config_.get_double("sigma_max");
    plan.sigmas = convert_sigmas(schedule, sigma_min, sigma_max, n);
    plan.timesteps.clear();
    for (double sigma : plan.sigmas) plan.timesteps.push_back(sigma_to_t(sigma, plan.log_sigmas));
  }
  return plan;
}

Tensor SigmaSchedulerBase::sigmas_tensor(const std::vector<double>& sigmas, double last) {
  std::vector<float> values;
  for (double s : sigmas) values.push_back(static_cast<float>(s));
  values.push_back(static_cast<float>(last));
  return torch::tensor(values, torch::kFloat);
}

Tensor SigmaSchedulerBase::predict_original(PredictionType type, const Tensor& model_output, const Tensor& sample,
                                            const Tensor& sigma) {
  switch (type) {
    case PredictionType::Epsilon:
      return at::sub(sample, at::mul(sigma, model_output));
    case PredictionType::VPrediction: {
      // model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
      const Tensor sigma2_plus_1 = at::add(sigma.pow(2), 1);
      return at::add(at::mul(model_output, at::div(at::neg(sigma), sigma2_plus_1.pow(0.5))), at::div(sample, sigma2_plus_1));
    }
    case PredictionType::Sample:
      return model_output;
  }
  return model_output;
}

}  // namespace taiyi::schedulers
