// EulerAncestralDiscreteScheduler of diffusers 0.37.1 (schedulers/scheduling_euler_ancestral_discrete.py):
// Euler to sigma_down, then fresh noise of sigma_up, drawn per image from its generator.
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class EulerAncestralDiscreteScheduler final : public SigmaSchedulerBase {
 public:
  explicit EulerAncestralDiscreteScheduler(const Config& config)
      : SigmaSchedulerBase(config, make_betas_for(config), "EulerAncestralDiscreteScheduler"),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/false)) {
    if (config.get_bool("rescale_betas_zero_snr", false)) zero_snr_last_cumprod();
  }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    SigmaPlan plan = plan_sigmas(num_inference_steps, SigmaSchedule::Default, false);
    sigmas_ = sigmas_tensor(plan.sigmas, 0.0);
    timesteps_ = plan.timesteps;  // already float32 values
    set_init_noise_sigma();
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample_in,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output, sample_in, index);
    const Tensor sigma = sigmas_[index];
    const Tensor sample = sample_in.to(torch::kFloat);
    const Tensor pred_original_sample = predict_original(prediction_type_, model_output, sample, sigma);
    const Tensor sigma_from = sigmas_[index], sigma_to = sigmas_[index + 1];
    // sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    const Tensor sigma_up =
        at::div(at::mul(sigma_to.pow(2), at::sub(sigma_from.pow(2), sigma_to.pow(2))), sigma_from.pow(2)).pow(0.5);
    const Tensor sigma_down = at::sub(sigma_to.pow(2), sigma_up.pow(2)).pow(0.5);
    const Tensor derivative = at::div(at::sub(sample, pred_original_sample), sigma);
    const Tensor dt = at::sub(sigma_down, sigma);
    Tensor prev_sample = at::add(sample, at::mul(derivative, dt));
    const Tensor noise = randn_tensor(model_output.sizes(), model_output.scalar_type(), model_output.device(), generators);
    prev_sample = at::add(prev_sample, at::mul(noise, sigma_up));
    return prev_sample.to(model_output.scalar_type());
  }

 private:
  PredictionType prediction_type_;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const Config& config) {
  return std::make_unique<EulerAncestralDiscreteScheduler>(config);
}

}  // namespace taiyi::schedulers
