// KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler of diffusers 0.37.1
// (schedulers/scheduling_k_dpm_2_discrete.py, scheduling_k_dpm_2_ancestral_discrete.py): k-diffusion's
// DPM-Solver-2, two UNet calls per step, the second at the log-midpoint sigma ("DPM2" and "DPM2 a").
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class KDpm2Scheduler final : public SigmaSchedulerBase {
 public:
  KDpm2Scheduler(const Config& config, bool ancestral)
      : SigmaSchedulerBase(config, make_betas(config, config.get_int("num_train_timesteps", 1000), 0.00085, 0.012),
                           ancestral ? "KDPM2AncestralDiscreteScheduler" : "KDPM2DiscreteScheduler"),
        ancestral_(ancestral),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/false)),
        schedule_(read_sigma_schedule(config)) {}

  int64_t order() const override { return 2; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    SigmaPlan plan = plan_sigmas(num_inference_steps, schedule_, /*config_sigma_limits=*/true);
    // Karras timesteps are rounded; timesteps stay float32 for the default schedule, float64 otherwise.
    std::vector<double> timesteps;
    for (double t : plan.timesteps) {
      if (schedule_ == SigmaSchedule::Default) timesteps.push_back(static_cast<float>(t));
      else timesteps.push_back(schedule_ == SigmaSchedule::Karras ? std::nearbyint(t) : t);
    }
    const Tensor sigmas = sigmas_tensor(plan.sigmas, 0.0);
    Tensor sigmas_interpol;
    if (!ancestral_) {
      sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp();
    } else {
      Tensor sigmas_next = sigmas.roll(-1);
      sigmas_next[-1] = 0.0;
      const Tensor sigmas_up =
          at::div(at::mul(sigmas_next.pow(2), at::sub(sigmas.pow(2), sigmas_next.pow(2))), sigmas.pow(2)).pow(0.5);
      Tensor sigmas_down = at::sub(sigmas_next.pow(2), sigmas_up.pow(2)).pow(0.5);
      sigmas_down[-1] = 0.0;
      sigmas_interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp();
      sigmas_interpol.slice(0, -2).fill_(0.0);
      sigmas_up_ = repeat_inner(sigmas_up, false);
      sigmas_down_ = repeat_inner(sigmas_down, false);
    }
    sigmas_ = repeat_inner(sigmas, false);
    sigmas_interpol_ = repeat_inner(sigmas_interpol, false);
    // Each step's second call runs at the interpolated sigma's timestep (torch float32 arithmetic).
    const Tensor interpol = sigmas_interpol.contiguous();
    std::vector<double> timesteps_interpol;
    for (int64_t i = 0; i < interpol.numel(); ++i) {
      const double t = sigma_to_t_f32(interpol.data_ptr<float>()[i], plan.log_sigmas);
      timesteps_interpol.push_back(schedule_ == SigmaSchedule::Default ? static_cast<double>(static_cast<float>(t)) : t);
    }
    // DPM2: stack(interpol[1:-1], timesteps[1:]); DPM2 a: stack(interpol[:-2], timesteps[1:])
    timesteps_.assign(1, timesteps.front());
    for (size_t i = 1; i < timesteps.size(); ++i) {
      timesteps_.push_back(timesteps_interpol[ancestral_ ? i - 1 : i]);
      timesteps_.push_back(timesteps[i]);
    }
    first_sample_ = Tensor();
    set_init_noise_sigma();
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output, sample, index);
    const bool first_order = !first_sample_.defined();
    if (ancestral_) return step_ancestral(model_output, index, sample, generators, first_order);
    const Tensor sigma = first_order ? sigmas_[index] : sigmas_[index - 1];
    const Tensor sigma_interpol = first_order ? sigmas_interpol_[index + 1] : sigmas_interpol_[index];
    const Tensor sigma_next = first_order ? sigmas_[index + 1] : sigmas_[index];
    const Tensor sigma_hat = at::mul(sigma, 1);
    const Tensor pred_original_sample =
        predict_original(prediction_type_, model_output, sample, first_order ? sigma_hat : sigma_interpol);
    Tensor derivative, dt, from = sample;
    if (first_order) {
      derivative = at::div(at::sub(sample, pred_original_sample), sigma_hat);
      dt = at::sub(sigma_interpol, sigma_hat);
      first_sample_ = sample;
    } else {
      derivative = at::div(at::sub(sample, pred_original_sample), sigma_interpol);
      dt = at::sub(sigma_next, sigma_hat);
      from = first_sample_;
      first_sample_ = Tensor();
    }
    return at::add(from, at::mul(derivative, dt));
  }

 protected:
  Tensor input_sigma(int64_t index) const override {
    if (!first_sample_.defined()) return sigmas_[index];
    return ancestral_ ? sigmas_interpol_[index - 1] : sigmas_interpol_[index];
  }

 private:
  Tensor step_ancestral(const Tensor& model_output, int64_t index, const Tensor& sample,
                        const std::vector<torch::Generator>& generators, bool first_order) {
    const int64_t position = first_order ? index : index - 1;
    const Tensor sigma = sigmas_[position];
    const Tensor sigma_interpol = sigmas_interpol_[position];
    const Tensor sigma_up = sigmas_up_[position];
    const Tensor sigma_down = sigmas_down_[index - 1 < 0 ? sigmas_down_.size(0) - 1 : index - 1];
    const Tensor sigma_hat = at::mul(sigma, 1);
    const Tensor pred_original_sample =
        predict_original(prediction_type_, model_output, sample, first_order ? sigma_hat : sigma_interpol);
    if (first_order) {
      const Tensor derivative = at::div(at::sub(sample, pred_original_sample), sigma_hat);
      first_sample_ = sample;
      return at::add(sample, at::mul(derivative, at::sub(sigma_interpol, sigma_hat)));
    }
    const Tensor derivative = at::div(at::sub(sample, pred_original_sample), sigma_interpol);
    const Tensor dt = at::sub(sigma_down, sigma_hat);
    Tensor prev_sample = at::add(first_sample_, at::mul(derivative, dt));
    first_sample_ = Tensor();
    const Tensor noise = randn_tensor(model_output.sizes(), model_output.scalar_type(), model_output.device(), generators);
    return at::add(prev_sample, at::mul(noise, sigma_up));
  }

  bool ancestral_;
  PredictionType prediction_type_;
  SigmaSchedule schedule_;
  Tensor sigmas_interpol_, sigmas_up_, sigmas_down_;
  Tensor first_sample_;  // the sample before the first call of a step (undefined: first order next)
};

}  // namespace

std::unique_ptr<Scheduler> make_k_dpm_2_discrete(const Config& config) {
  return std::make_unique<KDpm2Scheduler>(config, /*ancestral=*/false);
}
std::unique_ptr<Scheduler> make_k_dpm_2_ancestral_discrete(const Config& config) {
  return std::make_unique<KDpm2Scheduler>(config, /*ancestral=*/true);
}

}  // namespace taiyi::schedulers
