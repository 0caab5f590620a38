// PNDMScheduler and DDIMScheduler of diffusers 0.37.1 (schedulers/scheduling_pndm.py and
// scheduling_ddim.py), bit for bit: every coefficient is computed with the same torch ops on the same
// float32 0-dim CPU tensors as diffusers (alphas_cumprod[t], 1 - a, a ** 0.5, ...), and step() applies
// them to the sample in diffusers' operand order. The coefficients are prepared in set_timesteps and
// stay 0-dim CPU tensors, which CUDA kernels read on the host as scalars: step() never syncs the
// device. Works for any floating dtype and device of the sample.
#include "taiyi/scheduler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <utility>

#include "taiyi/error.h"

namespace taiyi {

namespace {

using torch::Tensor;

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// numpy's np.round: halves to even (the default FE_TONEAREST of nearbyint).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

enum class PredictionType { Epsilon, VPrediction, Sample };

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

enum class Spacing { Leading, Trailing, Linspace };

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

// ---- the state both schedulers share ----

class SchedulerBase : public Scheduler {
 public:
  SchedulerBase(const Config& config, const Tensor& betas, bool set_alpha_to_one)
      : config_(config), num_train_timesteps_(config.get_int("num_train_timesteps", 1000)) {
    alphas_cumprod_ = at::cumprod(at::rsub(betas, 1.0), 0);  // float32, as torch.cumprod(1.0 - betas)
    final_alpha_cumprod_ = set_alpha_to_one ? torch::scalar_tensor(1.0, torch::kFloat) : alphas_cumprod_[0];
  }

  const std::vector<int64_t>& timesteps() const override { return timesteps_; }

 protected:
  // The checks diffusers leaves to a ZeroDivisionError or an IndexError in the middle of the loop.
  void check_num_inference_steps(int64_t num_inference_steps) const {
    if (num_inference_steps < 1 || num_inference_steps > num_train_timesteps_)
      throw Error(config_.path().string() + ": " + name() + " num_inference_steps = " +
                  std::to_string(num_inference_steps) + ": must be between 1 and num_train_timesteps (" +
                  std::to_string(num_train_timesteps_) + ")");
  }

  void check_timesteps_in_range() const {
    for (int64_t t : timesteps_) {
      if (t >= num_train_timesteps_)
        throw Error(config_.path().string() + ": " + name() + " with steps_offset " +
                    std::to_string(config_.get_int("steps_offset", 0)) + " and " +
                    std::to_string(num_inference_steps_) + " steps reaches timestep " + std::to_string(t) +
                    ", past num_train_timesteps - 1 (" + std::to_string(num_train_timesteps_ - 1) + ")");
    }
  }

  // alphas_cumprod[t] as a 0-dim float32 tensor, with Python's indexing: the timestep -1 that
  // trailing spacing can produce reads the last entry, as in diffusers.
  Tensor alpha_prod(int64_t t) const {
    if (t < -num_train_timesteps_ || t >= num_train_timesteps_)
      throw Error(config_.path().string() + ": " + name() + " timestep " + std::to_string(t) +
                  " is outside alphas_cumprod (" + std::to_string(num_train_timesteps_) + " entries)");
    return alphas_cumprod_[t];
  }
  // alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod.
  Tensor alpha_prod_prev(int64_t prev_t) const { return prev_t >= 0 ? alpha_prod(prev_t) : final_alpha_cumprod_; }

  void check_step_inputs(const Tensor& model_output, const Tensor& sample) const {
    if (num_inference_steps_ == 0)
      throw Error(name() + " scheduler (" + config_.path().string() + "): step() before set_timesteps()");
    if (model_output.sizes() != sample.sizes() || model_output.scalar_type() != sample.scalar_type() ||
        model_output.device() != sample.device())
      throw Error(name() + " scheduler: model_output " + describe(model_output) + " and sample " + describe(sample) +
                  " must have the same shape, dtype and device");
  }

  static std::string describe(const Tensor& t) {
    std::string shape;
    for (int64_t d : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    return "[" + shape + "] " + std::string(c10::toString(t.scalar_type())) + " on " + t.device().str();
  }

  Config config_;
  int64_t num_train_timesteps_;
  Tensor alphas_cumprod_;        // [num_train_timesteps] float32 on the CPU
  Tensor final_alpha_cumprod_;   // 0-dim float32
  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> timesteps_;
};

// ---- PNDM ----

class PndmScheduler final : public SchedulerBase {
 public:
  explicit PndmScheduler(const Config& config)
      : SchedulerBase(config, make_betas(config, config.get_int("num_train_timesteps", 1000)),
                      config.get_bool("set_alpha_to_one", false)),
        skip_prk_steps_(config.get_bool("skip_prk_steps", false)),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/false)),
        spacing_(read_spacing(config)),
        steps_offset_(config.get_int("steps_offset", 0)) {}

  std::string name() const override { return "PNDM"; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    const std::vector<int64_t> base =
        spaced_timesteps(spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
    prk_timesteps_.clear();
    timesteps_.clear();
    if (skip_prk_steps_) {
      // PLMS: base[:-1], base[-2:-1], base[-1:], reversed: the second timestep runs twice.
      timesteps_.assign(base.begin(), base.end() - 1);
      if (base.size() >= 2) timesteps_.push_back(base[base.size() - 2]);
      timesteps_.push_back(base.back());
      std::reverse(timesteps_.begin(), timesteps_.end());
    } else {
      // Runge-Kutta on the last four base timesteps (each with its midpoint, T // n // 2 above),
      // then PLMS on base[:-3] reversed.
      if (base.size() < static_cast<size_t>(kPndmOrder))
        throw Error(config_.path().string() + ": PNDM with skip_prk_steps = false needs at least " +
                    std::to_string(kPndmOrder) + " inference steps, got " + std::to_string(num_inference_steps));
      const int64_t half_step = num_train_timesteps_ / num_inference_steps / 2;
      std::vector<int64_t> with_midpoints;
      for (auto it = base.end() - kPndmOrder; it != base.end(); ++it) {
        with_midpoints.push_back(*it);
        with_midpoints.push_back(*it + half_step);
      }
      with_midpoints.pop_back();
      std::vector<int64_t> doubled;  // each repeated twice, then [1:-1]
      for (int64_t t : with_midpoints) doubled.insert(doubled.end(), {t, t});
      prk_timesteps_.assign(doubled.rbegin() + 1, doubled.rend() - 1);
      timesteps_ = prk_timesteps_;
      timesteps_.insert(timesteps_.end(), base.rbegin() + 3, base.rend());
    }
    check_timesteps_in_range();
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = Tensor();
    cur_sample_ = Tensor();
    // The (t, prev_t) pair of every call in order, so that step() only does tensor arithmetic.
    coefficients_.clear();
    for (size_t k = 0; k < timesteps_.size(); ++k) coefficients(step_timesteps(static_cast<int64_t>(k), timesteps_[k]));
  }

  Tensor step(const Tensor& model_output, int64_t timestep, const Tensor& sample,
              std::optional<torch::Generator> /*generator: PNDM is deterministic*/) override {
    check_step_inputs(model_output, sample);
    const auto [t, prev_t] = step_timesteps(counter_, timestep);
    const Coefficients& c = coefficients({t, prev_t});
    Tensor prev_sample = in_prk_phase() ? step_prk(model_output, sample, c) : step_plms(model_output, sample, c);
    ++counter_;
    return prev_sample;
  }

 private:
  static constexpr int64_t kPndmOrder = 4;

  // _get_prev_sample's factors for one (t, prev_t), 0-dim float32 CPU tensors.
  struct Coefficients {
    Tensor sqrt_alpha_prod_t, sqrt_beta_prod_t;  // v_prediction only
    Tensor sample_coeff, alpha_prod_difference, model_output_denom_coeff;
  };

  bool in_prk_phase() const { return !skip_prk_steps_ && counter_ < static_cast<int64_t>(prk_timesteps_.size()); }

  // The (timestep, prev_timestep) that step_prk / step_plms pass to _get_prev_sample at `counter`.
  std::pair<int64_t, int64_t> step_timesteps(int64_t counter, int64_t timestep) const {
    const int64_t step_ratio = num_train_timesteps_ / num_inference_steps_;
    if (!skip_prk_steps_ && counter < static_cast<int64_t>(prk_timesteps_.size())) {
      const int64_t diff_to_prev = counter % 2 ? 0 : step_ratio / 2;
      return {prk_timesteps_[static_cast<size_t>(counter / 4 * 4)], timestep - diff_to_prev};
    }
    // The repeated second timestep restarts the first step: from t + ratio to t.
    if (counter == 1) return {timestep + step_ratio, timestep};
    return {timestep, timestep - step_ratio};
  }

  const Coefficients& coefficients(std::pair<int64_t, int64_t> key) {
    auto found = coefficients_.find(key);
    if (found != coefficients_.end()) return found->second;
    // _get_prev_sample, formula (9) of the PNDM paper, on float32 0-dim tensors.
    const Tensor alpha_prod_t = alpha_prod(key.first);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(key.second);
    const Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
    const Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
    Coefficients c;
    c.sqrt_alpha_prod_t = alpha_prod_t.pow(0.5);
    c.sqrt_beta_prod_t = beta_prod_t.pow(0.5);
    c.sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    c.model_output_denom_coeff =
        alpha_prod_t * beta_prod_t_prev.pow(0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    c.alpha_prod_difference = alpha_prod_t_prev - alpha_prod_t;
    return coefficients_.emplace(key, std::move(c)).first->second;
  }

  // prev_sample = sample_coeff * sample - (a_prev - a_t) * model_output / model_output_denom_coeff
  Tensor get_prev_sample(const Tensor& sample, Tensor model_output, const Coefficients& c) const {
    if (prediction_type_ == PredictionType::VPrediction)
      model_output = at::mul(c.sqrt_alpha_prod_t, model_output) + at::mul(c.sqrt_beta_prod_t, sample);
    Tensor result = at::mul(c.sample_coeff, sample);
    Tensor scaled_output = at::mul(c.alpha_prod_difference, model_output);
    scaled_output.div_(c.model_output_denom_coeff);
    return result.sub_(scaled_output);
  }

  // Runge-Kutta: four calls per step; 1/6, 1/3, 1/3, 1/6 of their outputs make the step's epsilon.
  Tensor step_prk(const Tensor& model_output, const Tensor& sample, const Coefficients& c) {
    Tensor output = model_output;
    switch (counter_ % 4) {
      case 0:
        cur_model_output_ = model_output * (1.0 / 6);  // diffusers: 0 + 1/6 * model_output
        ets_.push_back(model_output);
        cur_sample_ = sample;
        break;
      case 1:
      case 2:
        cur_model_output_.add_(model_output * (1.0 / 3));
        break;
      default:
        output = cur_model_output_ + model_output * (1.0 / 6);
        cur_model_output_ = Tensor();
        break;
    }
    return get_prev_sample(cur_sample_.defined() ? cur_sample_ : sample, output, c);
  }

  // Linear multistep (Adams-Bashforth) on the last 1-4 epsilons. The history keeps the caller's
  // tensors, as diffusers' ets list does.
  Tensor step_plms(const Tensor& model_output, const Tensor& sample, const Coefficients& c) {
    if (!skip_prk_steps_ && ets_.size() < 3)
      throw Error(config_.path().string() + ": PNDM PLMS step before the 12 Runge-Kutta steps");
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    }
    const size_t n = ets_.size();
    const Tensor& e1 = ets_[n - 1];
    if (n == 1 && counter_ == 0) {
      cur_sample_ = sample;
      return get_prev_sample(sample, model_output, c);
    }
    if (n == 1 && counter_ == 1) {
      // The repeated timestep: average both epsilons and redo the first step from its sample.
      Tensor first_sample = std::move(cur_sample_);
      cur_sample_ = Tensor();
      return get_prev_sample(first_sample, (model_output + e1).div_(2), c);
    }
    Tensor combined;
    if (n == 2) {
      combined = e1.mul(3).sub_(ets_[0]).div_(2);  // (3 e1 - e2) / 2
    } else if (n == 3) {
      combined = e1.mul(23).sub_(ets_[1].mul(16)).add_(ets_[0].mul(5)).div_(12);  // (23 e1 - 16 e2 + 5 e3) / 12
    } else {
      // (1 / 24) * (55 e1 - 59 e2 + 37 e3 - 9 e4). Not mul_(1.0 / 24): libtorch's mul_(Scalar) puts
      // the scalar first, which on the CPU rounds it to half precision before multiplying half
      // tensors; Python's (1 / 24) * x multiplies by the unrounded scalar, as mul(Scalar) does.
      combined = e1.mul(55).sub_(ets_[2].mul(59)).add_(ets_[1].mul(37)).sub_(ets_[0].mul(9)).mul(1.0 / 24);
    }
    return get_prev_sample(sample, combined, c);
  }

  bool skip_prk_steps_;
  PredictionType prediction_type_;
  Spacing spacing_;
  int64_t steps_offset_;

  std::vector<int64_t> prk_timesteps_;
  int64_t counter_ = 0;
  std::vector<Tensor> ets_;   // the last epsilons, oldest first (at most 4)
  Tensor cur_sample_;         // the sample a restarted step begins from
  Tensor cur_model_output_;   // the Runge-Kutta weighted sum so far (undefined: 0)
  std::map<std::pair<int64_t, int64_t>, Coefficients> coefficients_;
};

// ---- DDIM ----

class DdimScheduler final : public SchedulerBase {
 public:
  DdimScheduler(const Config& config, const SchedulerOptions& options)
      : SchedulerBase(config, ddim_betas(config), config.get_bool("set_alpha_to_one", true)),
        clip_sample_(config.get_bool("clip_sample", true)),
        clip_sample_range_(config.get_double("clip_sample_range", 1.0)),
        thresholding_(config.get_bool("thresholding", false)),
        dynamic_thresholding_ratio_(config.get_double("dynamic_thresholding_ratio", 0.995)),
        sample_max_value_(config.get_double("sample_max_value", 1.0)),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        spacing_(read_spacing(config)),
        steps_offset_(config.get_int("steps_offset", 0)),
        eta_(options.eta) {}

  std::string name() const override { return "DDIM"; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    timesteps_ = spaced_timesteps(spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
    std::reverse(timesteps_.begin(), timesteps_.end());
    check_timesteps_in_range();
    coefficients_.clear();
    for (int64_t t : timesteps_) coefficients(t);
  }

  Tensor step(const Tensor& model_output, int64_t timestep, const Tensor& sample,
              std::optional<torch::Generator> generator) override {
    check_step_inputs(model_output, sample);
    const Coefficients& c = coefficients(timestep);
    // "predicted x_0" and epsilon, formula (12) of the DDIM paper
    Tensor pred_original_sample, pred_epsilon;
    switch (prediction_type_) {
      case PredictionType::Epsilon:
        pred_original_sample = at::sub(sample, at::mul(c.sqrt_beta_prod_t, model_output)).div_(c.sqrt_alpha_prod_t);
        pred_epsilon = model_output;
        break;
      case PredictionType::Sample:
        pred_original_sample = model_output;
        pred_epsilon = at::sub(sample, at::mul(c.sqrt_alpha_prod_t, model_output)).div_(c.sqrt_beta_prod_t);
        break;
      case PredictionType::VPrediction:
        pred_original_sample = at::mul(c.sqrt_alpha_prod_t, sample).sub_(at::mul(c.sqrt_beta_prod_t, model_output));
        pred_epsilon = at::mul(c.sqrt_alpha_prod_t, model_output).add_(at::mul(c.sqrt_beta_prod_t, sample));
        break;
    }
    if (thresholding_) {
      pred_original_sample = threshold_sample(pred_original_sample);
    } else if (clip_sample_) {
      pred_original_sample = pred_original_sample.clamp(-clip_sample_range_, clip_sample_range_);
    }
    // a_prev ** 0.5 * x_0 + (1 - a_prev - std ** 2) ** 0.5 * epsilon (+ std * noise)
    Tensor prev_sample = at::mul(c.sqrt_alpha_prod_t_prev, pred_original_sample);
    prev_sample.add_(at::mul(c.direction_coeff, pred_epsilon));
    if (eta_ > 0) prev_sample.add_(at::mul(c.std_dev_t, variance_noise(model_output, generator)));
    return prev_sample;
  }

 private:
  struct Coefficients {
    Tensor sqrt_alpha_prod_t, sqrt_beta_prod_t, sqrt_alpha_prod_t_prev, direction_coeff, std_dev_t;
  };

  static Tensor ddim_betas(const Config& config) {
    Tensor betas = make_betas(config, config.get_int("num_train_timesteps", 1000));
    return config.get_bool("rescale_betas_zero_snr", false) ? rescale_zero_terminal_snr(betas) : betas;
  }

  const Coefficients& coefficients(int64_t timestep) {
    auto found = coefficients_.find(timestep);
    if (found != coefficients_.end()) return found->second;
    const int64_t prev_timestep = timestep - num_train_timesteps_ / num_inference_steps_;
    const Tensor alpha_prod_t = alpha_prod(timestep);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(prev_timestep);
    const Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
    const Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
    // _get_variance: sigma_t(eta) of formula (16)
    const Tensor variance = (beta_prod_t_prev / beta_prod_t) * at::rsub(alpha_prod_t / alpha_prod_t_prev, 1);
    Coefficients c;
    c.sqrt_alpha_prod_t = alpha_prod_t.pow(0.5);
    c.sqrt_beta_prod_t = beta_prod_t.pow(0.5);
    c.sqrt_alpha_prod_t_prev = alpha_prod_t_prev.pow(0.5);
    c.std_dev_t = variance.pow(0.5).mul(eta_);  // eta * variance ** 0.5
    c.direction_coeff = (at::rsub(alpha_prod_t_prev, 1) - c.std_dev_t.pow(2)).pow(0.5);
    return coefficients_.emplace(timestep, std::move(c)).first->second;
  }

  // randn_tensor(model_output.shape, generator, device, dtype): a CPU generator draws on the CPU
  // (in the sample's dtype) and the noise is then moved; no generator uses the device's default.
  Tensor variance_noise(const Tensor& model_output, const std::optional<torch::Generator>& generator) const {
    auto options = model_output.options();
    if (generator && generator->device().type() != model_output.device().type()) {
      if (generator->device().type() != torch::kCPU)
        throw Error("DDIM scheduler: cannot draw noise for a " + model_output.device().str() +
                    " tensor from a " + generator->device().str() + " generator");
      options = options.device(torch::kCPU);
    }
    return at::randn(model_output.sizes(), generator, options).to(model_output.device());
  }

  // Dynamic thresholding (Imagen, arXiv 2205.11487): clamp x_0 per image to its
  // dynamic_thresholding_ratio quantile of |x_0| (at least 1, at most sample_max_value), rescale.
  Tensor threshold_sample(Tensor sample) const {
    const auto dtype = sample.scalar_type();
    const std::vector<int64_t> shape = sample.sizes().vec();
    if (dtype != torch::kFloat && dtype != torch::kDouble) sample = sample.to(torch::kFloat);
    sample = sample.reshape({shape[0], sample.numel() / shape[0]});
    Tensor s = at::quantile(sample.abs(), dynamic_thresholding_ratio_, 1);
    s = at::clamp(s, 1, sample_max_value_).unsqueeze(1);
    sample = at::clamp(sample, -s, s) / s;
    return sample.reshape(shape).to(dtype);
  }

  bool clip_sample_;
  double clip_sample_range_;
  bool thresholding_;
  double dynamic_thresholding_ratio_;
  double sample_max_value_;
  PredictionType prediction_type_;
  Spacing spacing_;
  int64_t steps_offset_;
  double eta_;
  std::map<int64_t, Coefficients> coefficients_;
};

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(const Config& config, const std::string& kind,
                                          const SchedulerOptions& options) {
  std::string chosen = lowercase(kind);
  if (chosen.empty()) {
    const std::string class_name = config.get_string("_class_name");
    chosen = lowercase(class_name);
    if (chosen != "pndmscheduler" && chosen != "ddimscheduler")
      throw Error(config.path().string() + ": scheduler class '" + class_name +
                  "' is not supported (PNDMScheduler or DDIMScheduler; choose one with the scheduler option)");
  }
  // Only the file's keys are read; absent ones take the chosen class's defaults, as diffusers'
  // from_config(other.config) does (it drops the other class's defaults via _use_default_values).
  if (chosen == "pndm" || chosen == "pndmscheduler") return std::make_unique<PndmScheduler>(config);
  if (chosen == "ddim" || chosen == "ddimscheduler") return std::make_unique<DdimScheduler>(config, options);
  throw Error("unknown scheduler '" + kind + "' for " + config.path().string() + ": expected pndm or ddim");
}

}  // namespace taiyi
