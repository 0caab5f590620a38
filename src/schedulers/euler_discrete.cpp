// EulerDiscreteScheduler of diffusers 0.37.1 (schedulers/scheduling_euler_discrete.py): k-diffusion's
// Euler method on the sigmas, with the default, Karras, exponential or beta schedule. s_churn is 0 as
// in the pipeline (no noise).
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class EulerDiscreteScheduler final : public SigmaSchedulerBase {
 public:
  explicit EulerDiscreteScheduler(const Config& config)
      : SigmaSchedulerBase(config, make_betas_for(config), "EulerDiscreteScheduler"),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        schedule_(read_sigma_schedule(config)) {
    if (config.get_string("interpolation_type", "linear") != "linear")
      config.unsupported("interpolation_type", "linear");
    if (config.get_string("timestep_type", "discrete") != "discrete") config.unsupported("timestep_type", "discrete");
    const std::string final_type = config.get_string("final_sigmas_type", "zero");
    if (final_type != "zero" && final_type != "sigma_min") config.unsupported("final_sigmas_type", "zero or sigma_min");
    final_sigma_min_ = final_type == "sigma_min";
    if (config.get_bool("rescale_betas_zero_snr", false)) zero_snr_last_cumprod();
  }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    SigmaPlan plan = plan_sigmas(num_inference_steps, schedule_, /*config_sigma_limits=*/true);
    // final_sigmas_type: 0, or the first training sigma ((1 - a0) / a0) ** 0.5 in float32
    const double last = final_sigma_min_ ? at::div(at::rsub(alphas_cumprod_[0], 1), alphas_cumprod_[0]).pow(0.5).item<double>() : 0.0;
    sigmas_ = sigmas_tensor(plan.sigmas, last);
    timesteps_.clear();
    for (double t : plan.timesteps) timesteps_.push_back(static_cast<float>(t));
    set_init_noise_sigma();
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample_in,
              const std::vector<torch::Generator>& /*generators: s_churn 0 draws none*/) override {
    check_step_inputs(model_output, sample_in, index);
    const Tensor sample = sample_in.to(torch::kFloat);
    const Tensor sigma = sigmas_[index];
    const Tensor sigma_hat = at::mul(sigma, 1.0);  // sigma * (gamma + 1), gamma = 0
    Tensor pred_original_sample;
    if (prediction_type_ == PredictionType::Epsilon) {
      pred_original_sample = at::sub(sample, at::mul(sigma_hat, model_output));
    } else {
      pred_original_sample = predict_original(prediction_type_, model_output, sample, sigma);
    }
    const Tensor derivative = at::div(at::sub(sample, pred_original_sample), sigma_hat);
    const Tensor dt = at::sub(sigmas_[index + 1], sigma_hat);
    return at::add(sample, at::mul(derivative, dt)).to(model_output.scalar_type());
  }

 private:
  PredictionType prediction_type_;
  SigmaSchedule schedule_;
  bool final_sigma_min_ = false;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_discrete(const Config& config) {
  return std::make_unique<EulerDiscreteScheduler>(config);
}

}  // namespace taiyi::schedulers
