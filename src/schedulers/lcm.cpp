// LCMScheduler of diffusers 0.37.1 (schedulers/scheduling_lcm.py): latent consistency models' multistep
// sampling: a boundary-condition denoised estimate, then fresh noise to the next timestep (drawn per
// image from its generator), except after the last.
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class LcmScheduler final : public AlphasSchedulerBase {
 public:
  explicit LcmScheduler(const Config& config)
      : AlphasSchedulerBase(config, make_betas_for(config, 0.00085, 0.012, "scaled_linear"), "LCMScheduler"),
        original_inference_steps_(config.get_int("original_inference_steps", 50)),
        clipping_(config, /*default_clip=*/false),
        timestep_scaling_(config.get_double("timestep_scaling", 10.0)),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)) {
    set_alpha_to_one(config.get_bool("set_alpha_to_one", true));
  }

  void set_timesteps(int64_t num_inference_steps) override {
    const int64_t original_steps = original_inference_steps_;
    if (original_steps < 1 || original_steps > num_train_timesteps_)
      config_.unsupported("original_inference_steps", "between 1 and num_train_timesteps");
    // LCM samples from the original_inference_steps timesteps it was distilled on.
    check_num_inference_steps(num_inference_steps, original_steps);
    num_inference_steps_ = num_inference_steps;
    const int64_t k = num_train_timesteps_ / original_steps;
    std::vector<int64_t> origin;  // range(1, original_steps + 1) * k - 1, reversed
    for (int64_t i = original_steps; i >= 1; --i) origin.push_back(i * k - 1);
    std::vector<int64_t> timesteps;
    const double step = static_cast<double>(origin.size()) / static_cast<double>(num_inference_steps);
    for (int64_t i = 0; i < num_inference_steps; ++i)  // np.floor(np.linspace(0, len, n, endpoint=False))
      timesteps.push_back(origin[static_cast<size_t>(std::floor(static_cast<double>(i) * step))]);
    set_integer_timesteps(std::move(timesteps));
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output, sample, index);
    const int64_t timestep = timestep_at(index);
    const int64_t prev_timestep = index + 1 < static_cast<int64_t>(timesteps_.size()) ? timestep_at(index + 1) : timestep;
    const Tensor alpha_prod_t = alpha_prod(timestep);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(prev_timestep);
    const Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
    const Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
    // get_scalings_for_boundary_condition_discrete, on the int64 timestep tensor as diffusers
    const Tensor scaled_timestep = at::mul(torch::scalar_tensor(timestep, torch::kLong), timestep_scaling_);
    const Tensor denominator = at::add(scaled_timestep.pow(2), 0.25);
    const Tensor c_skip = at::mul(at::reciprocal(denominator), 0.25);  // sigma_data ** 2 / (...)
    const Tensor c_out = at::div(scaled_timestep, denominator.pow(0.5));
    const Tensor predicted_original_sample =
        clipping_.apply(predict_original(prediction_type_, model_output, sample, alpha_prod_t, beta_prod_t));
    const Tensor denoised = at::add(at::mul(c_out, predicted_original_sample), at::mul(c_skip, sample));
    if (index == num_inference_steps_ - 1) return denoised;
    const Tensor noise = randn_tensor(model_output.sizes(), denoised.scalar_type(), model_output.device(), generators);
    return at::add(at::mul(alpha_prod_t_prev.sqrt(), denoised), at::mul(beta_prod_t_prev.sqrt(), noise));
  }

 private:
  int64_t original_inference_steps_;
  SampleClipping clipping_;
  double timestep_scaling_;
  PredictionType prediction_type_;
};

}  // namespace

std::unique_ptr<Scheduler> make_lcm(const Config& config) { return std::make_unique<LcmScheduler>(config); }

}  // namespace taiyi::schedulers
