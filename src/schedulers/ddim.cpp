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

class DdimScheduler final : public AlphasSchedulerBase {
 public:
  DdimScheduler(const Config& config, const SchedulerOptions& options)
      : AlphasSchedulerBase(config, make_betas_for(config), "DDIMScheduler"),
        clipping_(config, /*default_clip=*/true),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        spacing_(read_spacing(config)),
        steps_offset_(config.get_int("steps_offset", 0)),
        eta_(options.eta) {
    set_alpha_to_one(config.get_bool("set_alpha_to_one", true));
  }

  std::string name() const override { return "DDIM"; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    set_spaced_timesteps(spacing_, num_inference_steps, steps_offset_);
    coefficients_.clear();
    for (int64_t t : int_timesteps_) coefficients(t);
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output, sample, index);
    const Coefficients& c = coefficients(timestep_at(index));
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
    pred_original_sample = clipping_.apply(pred_original_sample);
    // a_prev ** 0.5 * x_0 + (1 - a_prev - std ** 2) ** 0.5 * epsilon (+ std * noise)
    Tensor prev_sample = at::mul(c.sqrt_alpha_prod_t_prev, pred_original_sample);
    prev_sample.add_(at::mul(c.direction_coeff, pred_epsilon));
    if (eta_ > 0)
      prev_sample.add_(at::mul(c.std_dev_t, randn_tensor(model_output.sizes(), model_output.scalar_type(),
                                                         model_output.device(), generators)));
    return prev_sample;
  }

 private:
  struct Coefficients {
    Tensor sqrt_alpha_prod_t, sqrt_beta_prod_t, sqrt_alpha_prod_t_prev, direction_coeff, std_dev_t;
  };

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

  SampleClipping clipping_;
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
