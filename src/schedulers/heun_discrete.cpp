// HeunDiscreteScheduler of diffusers 0.37.1 (schedulers/scheduling_heun_discrete.py): Heun's method,
// two UNet calls per step (order 2): an Euler step, then the average of both slopes.
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class HeunDiscreteScheduler final : public SigmaSchedulerBase {
 public:
  explicit HeunDiscreteScheduler(const Config& config)
      : SigmaSchedulerBase(config, make_betas(config, config.get_int("num_train_timesteps", 1000), 0.00085, 0.012),
                           "HeunDiscreteScheduler"),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        schedule_(read_sigma_schedule(config)),
        clip_sample_(config.get_bool("clip_sample", false)),
        clip_sample_range_(config.get_double("clip_sample_range", 1.0)) {}

  int64_t order() const override { return 2; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    SigmaPlan plan = plan_sigmas(num_inference_steps, schedule_, /*config_sigma_limits=*/true);
    sigmas_ = repeat_inner(sigmas_tensor(plan.sigmas, 0.0), /*keep_last_single=*/true);
    timesteps_.clear();
    for (size_t i = 0; i < plan.timesteps.size(); ++i) {
      const double t = static_cast<float>(plan.timesteps[i]);
      timesteps_.push_back(t);
      if (i > 0) timesteps_.push_back(t);
    }
    prev_derivative_ = dt_ = first_sample_ = Tensor();
    set_init_noise_sigma();
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample_in,
              const std::vector<torch::Generator>& /*generators: deterministic*/) override {
    check_step_inputs(model_output, sample_in, index);
    const bool first_order = !dt_.defined();
    const Tensor sigma = first_order ? sigmas_[index] : sigmas_[index - 1];
    const Tensor sigma_next = first_order ? sigmas_[index + 1] : sigmas_[index];
    const Tensor sigma_hat = at::mul(sigma, 1);  // sigma * (gamma + 1), gamma = 0
    Tensor pred_original_sample =
        predict_original(prediction_type_, model_output, sample_in, first_order ? sigma_hat : sigma_next);
    if (clip_sample_) pred_original_sample = pred_original_sample.clamp(-clip_sample_range_, clip_sample_range_);
    Tensor sample = sample_in, derivative, dt;
    if (first_order) {
      derivative = at::div(at::sub(sample, pred_original_sample), sigma_hat);
      dt = at::sub(sigma_next, sigma_hat);
      prev_derivative_ = derivative;
      dt_ = dt;
      first_sample_ = sample;
    } else {
      derivative = at::div(at::sub(sample, pred_original_sample), sigma_next);
      derivative = at::div(at::add(prev_derivative_, derivative), 2);
      dt = dt_;
      sample = first_sample_;
      prev_derivative_ = dt_ = first_sample_ = Tensor();
    }
    return at::add(sample, at::mul(derivative, dt));
  }

 private:
  PredictionType prediction_type_;
  SigmaSchedule schedule_;
  bool clip_sample_;
  double clip_sample_range_;
  Tensor prev_derivative_, dt_, first_sample_;  // between the two calls of a step
};

}  // namespace

std::unique_ptr<Scheduler> make_heun_discrete(const Config& config) {
  return std::make_unique<HeunDiscreteScheduler>(config);
}

}  // namespace taiyi::schedulers
