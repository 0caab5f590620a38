// DDIMScheduler of diffusers 0.37.1 (schedulers/scheduling_ddim.py), bit for bit: every coefficient
// is computed with the same torch ops on the same float32 0-dim CPU tensors as diffusers, prepared in
// set_timesteps (step() never syncs the device).
#include <cmath>
#include <map>
#include <utility>

#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

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

std::unique_ptr<Scheduler> make_ddim(const Config& config, const SchedulerOptions& options) {
  return std::make_unique<DdimScheduler>(config, options);
}

}  // namespace taiyi::schedulers
