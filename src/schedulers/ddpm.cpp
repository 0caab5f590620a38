// DDPMScheduler of diffusers 0.37.1 (schedulers/scheduling_ddpm.py): ancestral sampling of the
// original DDPM on the spaced timesteps, variance_type fixed_small (default), fixed_small_log,
// fixed_large or fixed_large_log, the noise drawn per image from its generator.
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class DdpmScheduler final : public AlphasSchedulerBase {
 public:
  explicit DdpmScheduler(const Config& config)
      : AlphasSchedulerBase(config, make_betas_for(config), "DDPMScheduler"),
        variance_type_(config.get_string("variance_type", "fixed_small")),
        clipping_(config, /*default_clip=*/true),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        spacing_(read_spacing(config, "leading")),
        steps_offset_(config.get_int("steps_offset", 0)) {
    if (variance_type_ != "fixed_small" && variance_type_ != "fixed_small_log" && variance_type_ != "fixed_large" &&
        variance_type_ != "fixed_large_log")
      config.unsupported("variance_type", "fixed_small, fixed_small_log, fixed_large or fixed_large_log");
    set_alpha_to_one(true);  // DDPM's alphas_cumprod before the first timestep is its self.one
  }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    set_spaced_timesteps(spacing_, num_inference_steps, steps_offset_);
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output, sample, index);
    const int64_t t = timestep_at(index);
    const int64_t prev_t = previous_timestep(index);
    const Tensor alpha_prod_t = alpha_prod(t);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(prev_t);
    const Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
    const Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
    const Tensor current_alpha_t = at::div(alpha_prod_t, alpha_prod_t_prev);
    const Tensor current_beta_t = at::rsub(current_alpha_t, 1);
    const Tensor pred_original_sample =
        clipping_.apply(predict_original(prediction_type_, model_output, sample, alpha_prod_t, beta_prod_t));
    // formula (7) of the DDPM paper
    const Tensor pred_original_sample_coeff = at::div(at::mul(alpha_prod_t_prev.pow(0.5), current_beta_t), beta_prod_t);
    const Tensor current_sample_coeff = at::div(at::mul(current_alpha_t.pow(0.5), beta_prod_t_prev), beta_prod_t);
    Tensor pred_prev_sample = at::add(at::mul(pred_original_sample_coeff, pred_original_sample), at::mul(current_sample_coeff, sample));
    if (t > 0) {
      const Tensor variance_noise = randn_tensor(model_output.sizes(), model_output.scalar_type(), model_output.device(), generators);
      const Tensor variance = get_variance(t, prev_t);
      const Tensor scaled = variance_type_ == "fixed_small_log" ? at::mul(variance, variance_noise)
                                                                 : at::mul(variance.pow(0.5), variance_noise);
      pred_prev_sample = at::add(pred_prev_sample, scaled);
    } else {
      pred_prev_sample = at::add(pred_prev_sample, 0);
    }
    return pred_prev_sample;
  }

 private:
  int64_t previous_timestep(int64_t index) const {
    return index + 1 == static_cast<int64_t>(timesteps_.size()) ? -1 : timestep_at(index + 1);
  }

  // _get_variance: formula (6) and (7) of the DDPM paper.
  Tensor get_variance(int64_t t, int64_t prev_t) const {
    const Tensor alpha_prod_t = alpha_prod(t);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(prev_t);
    const Tensor current_beta_t = at::rsub(at::div(alpha_prod_t, alpha_prod_t_prev), 1);
    Tensor variance = at::mul(at::div(at::rsub(alpha_prod_t_prev, 1), at::rsub(alpha_prod_t, 1)), current_beta_t);
    variance = at::clamp(variance, 1e-20);
    if (variance_type_ == "fixed_small_log") return at::exp(at::mul(at::log(variance), 0.5));
    if (variance_type_ == "fixed_large") return current_beta_t;
    if (variance_type_ == "fixed_large_log") return at::log(current_beta_t);
    return variance;
  }

  std::string variance_type_;
  SampleClipping clipping_;
  PredictionType prediction_type_;
  Spacing spacing_;
  int64_t steps_offset_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(const Config& config) { return std::make_unique<DdpmScheduler>(config); }

}  // namespace taiyi::schedulers
