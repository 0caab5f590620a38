// What diffusers' schedulers share (schedulers/scheduling_utils.py and the __init__/set_timesteps code
// every scheduler repeats): the beta schedule, timestep spacing, prediction types and the state on
// alphas_cumprod; and a constructor per scheduler for make_scheduler. Private to src/schedulers/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/schedulers/scheduler.h"

namespace taiyi::schedulers {

using torch::Tensor;

std::string lowercase(std::string s);
// numpy's np.round: halves to even.
int64_t round_half_even(double x);

enum class PredictionType { Epsilon, VPrediction, Sample };
PredictionType read_prediction_type(const Config& config, bool sample_allowed);

// diffusers' rescale_zero_terminal_snr (DDIM's rescale_betas_zero_snr).
Tensor rescale_zero_terminal_snr(const Tensor& betas);
// betas from the config's beta_schedule (linear, scaled_linear, squaredcos_cap_v2), rescaled when asked.
// (diffusers' defaults differ per class: linear 1e-4..0.02 for most, 0.00085..0.012 for Heun, DPM2, LCM.)
Tensor make_betas(const Config& config, int64_t num_train_timesteps, double default_start = 0.0001,
                  double default_end = 0.02, const std::string& default_schedule = "linear");

enum class Spacing { Leading, Trailing, Linspace };
Spacing read_spacing(const Config& config, const std::string& default_spacing = "leading");
// The base timesteps in ascending order, with numpy's float arithmetic where diffusers uses it.
std::vector<int64_t> spaced_timesteps(Spacing spacing, int64_t num_train_timesteps, int64_t num_inference_steps,
                                      int64_t steps_offset);

// ---- numpy's arithmetic where diffusers computes schedules with numpy ----

// np.log on a float32 array as numpy 2.x computes it on x86-64 with AVX-512F or AVX2+FMA (its own
// rational approximation, not libm's logf: they differ in about one value in six).
float numpy_logf(float x);
// np.interp(x, np.arange(len(fp)), fp) in double, as numpy computes it.
double numpy_interp(double x, const std::vector<float>& fp);
// np.linspace(start, stop, n) in float64.
std::vector<double> numpy_linspace(double start, double stop, int64_t n);

// sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32 torch ops, ascending in t (as np.array(...)).
std::vector<float> train_sigmas(const Tensor& alphas_cumprod);
std::vector<float> numpy_log(const std::vector<float>& values);

// _sigma_to_t(sigma, log_sigmas) for a float64 sigma (numpy: log_sigmas float32 promoted to float64).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
// The same for a float32 torch sigma and torch log_sigmas (KDPM2's interpolated sigmas): float32 throughout.
float sigma_to_t_f32(float sigma, const std::vector<float>& log_sigmas);

// _convert_to_karras / _exponential / _beta of an in_sigmas whose ends are sigma_max, sigma_min (or the
// config's sigma_min / sigma_max where the class has them), in float64.
std::vector<double> convert_sigmas(SigmaSchedule schedule, double sigma_min, double sigma_max, int64_t n);
// scipy.stats.beta.ppf(q, a, b) to double precision (bisection + Newton on the regularised incomplete beta).
double beta_ppf(double q, double a, double b);
SigmaSchedule read_sigma_schedule(const Config& config, bool exponential_and_beta = true);

// randn_tensor(shape, generator, device, dtype) of diffusers.utils.torch_utils, for a list of generators.
Tensor randn_tensor(at::IntArrayRef shape, torch::Dtype dtype, torch::Device device,
                    const std::vector<torch::Generator>& generators);

// dynamic thresholding (Imagen): DDIM, DDPM, LCM, DPM-Solver and UniPC share diffusers' _threshold_sample.
Tensor threshold_sample(Tensor sample, double ratio, double max_value);

// What DDIM, DDPM and LCM do to their x0 prediction: dynamic thresholding, else clip_sample (whose
// default differs per class).
struct SampleClipping {
  SampleClipping(const Config& config, bool default_clip);
  Tensor apply(const Tensor& x0) const;
  bool clip, thresholding;
  double clip_range, ratio, max_value;
};

// make_betas, then rescale_zero_terminal_snr when the config's rescale_betas_zero_snr is set.
Tensor make_betas_for(const Config& config, double default_start = 0.0001, double default_end = 0.02,
                      const std::string& default_schedule = "linear");

// DPM-Solver's and UniPC's variance-preserving view of a sigma: alpha_t = 1 / (sigma ** 2 + 1) ** 0.5,
// sigma_t = sigma * alpha_t (Python's `1 / x` being x.reciprocal() * 1), and lambda = log(alpha / sigma).
std::pair<Tensor, Tensor> alpha_sigma_of(const Tensor& sigma);
Tensor lambda_of(const std::pair<Tensor, Tensor>& alpha_sigma);
// Their add_noise: alpha_t * x + sigma_t * noise at sigmas[index], in the sample's dtype.
Tensor add_noise_vp(const Tensor& sigmas, const Tensor& original, const Tensor& noise, int64_t index);

// Heun's and DPM2's doubled schedules: cat([x[:1], x[1:end].repeat_interleave(2), x[-1:]]), end = -1
// (Heun's sigmas) or the whole tail (DPM2).
Tensor repeat_inner(const Tensor& x, bool keep_last_single);

// 0-dim float32 CPU scalar, as diffusers' tensor(1.0).
Tensor scalar_f32(double value);

// ---- the state every scheduler shares ----

class SchedulerBase : public Scheduler {
 public:
  SchedulerBase(const Config& config, const Tensor& betas, const std::string& class_name)
      : config_(config), class_name_(class_name), num_train_timesteps_(config.get_int("num_train_timesteps", 1000)) {
    alphas_cumprod_ = at::cumprod(at::rsub(betas, 1.0), 0);  // float32, as torch.cumprod(1.0 - betas)
  }

  std::string class_name() const override { return class_name_; }
  std::string name() const override {
    return class_name_.size() > 9 ? class_name_.substr(0, class_name_.size() - 9) : class_name_;
  }

 protected:
  // The checks diffusers leaves to a ZeroDivisionError or an IndexError in the middle of the loop.
  void check_num_inference_steps(int64_t num_inference_steps, int64_t max_steps = 0) const {
    if (max_steps == 0) max_steps = num_train_timesteps_;
    if (num_inference_steps < 1 || num_inference_steps > max_steps)
      throw Error(config_.path().string() + ": " + name() + " num_inference_steps = " +
                  std::to_string(num_inference_steps) + ": must be between 1 and " +
                  (max_steps == num_train_timesteps_ ? "num_train_timesteps (" : "") + std::to_string(max_steps) +
                  (max_steps == num_train_timesteps_ ? ")" : ""));
  }

  void check_timesteps_in_range() const {
    for (double t : timesteps_) {
      if (t >= static_cast<double>(num_train_timesteps_))
        throw Error(config_.path().string() + ": " + name() + " with steps_offset " +
                    std::to_string(config_.get_int("steps_offset", 0)) + " and " +
                    std::to_string(num_inference_steps_) + " steps reaches timestep " +
                    std::to_string(static_cast<int64_t>(t)) + ", past num_train_timesteps - 1 (" +
                    std::to_string(num_train_timesteps_ - 1) + ")");
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

  void check_step_inputs(const Tensor& model_output, const Tensor& sample, int64_t index) const {
    if (num_inference_steps_ == 0)
      throw Error(name() + " scheduler (" + config_.path().string() + "): step() before set_timesteps()");
    if (index < 0 || index >= static_cast<int64_t>(timesteps_.size()))
      throw Error(name() + " scheduler: step index " + std::to_string(index) + " outside the " +
                  std::to_string(timesteps_.size()) + " timesteps");
    if (model_output.sizes() != sample.sizes() || model_output.scalar_type() != sample.scalar_type() ||
        model_output.device() != sample.device())
      throw Error(name() + " scheduler: model_output " + describe(model_output) + " and sample " + describe(sample) +
                  " must have the same shape, dtype and device");
  }

  void check_index(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(timesteps_.size()))
      throw Error(name() + " scheduler: index " + std::to_string(index) + " outside the " +
                  std::to_string(timesteps_.size()) + " timesteps (set_timesteps first)");
  }

  static std::string describe(const Tensor& t) {
    std::string shape;
    for (int64_t d : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    return "[" + shape + "] " + std::string(c10::toString(t.scalar_type())) + " on " + t.device().str();
  }

  // add_noise of the alphas_cumprod schedulers (DDPM, DDIM, PNDM, LCM): alphas_cumprod in the sample's
  // dtype, sqrt(a) * x + sqrt(1 - a) * noise.
  Tensor add_noise_alphas(const Tensor& original, const Tensor& noise, int64_t timestep) const {
    const Tensor a = alphas_cumprod_.to(original.scalar_type())[timestep];
    return at::add(at::mul(a.pow(0.5), original), at::mul(at::rsub(a, 1).pow(0.5), noise));
  }

  // rescale_betas_zero_snr of the sigma and multistep samplers: alphas_cumprod[-1] = 2**-24 so that the
  // last sigma stays finite.
  void zero_snr_last_cumprod() { alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24)); }

  // alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod (DDIM, PNDM, LCM; DDPM's is 1).
  Tensor alpha_prod_prev(int64_t prev_t) const { return prev_t >= 0 ? alpha_prod(prev_t) : final_alpha_cumprod_; }
  void set_alpha_to_one(bool one) { final_alpha_cumprod_ = one ? scalar_f32(1.0) : alphas_cumprod_[0]; }

  Config config_;
  std::string class_name_;
  int64_t num_train_timesteps_;
  Tensor alphas_cumprod_;        // [num_train_timesteps] float32 on the CPU
  Tensor final_alpha_cumprod_;   // 0-dim float32
  int64_t num_inference_steps_ = 0;
};

// The samplers on integer timesteps and alphas_cumprod (PNDM, DDIM, DDPM, LCM): their timesteps and
// add_noise.
class AlphasSchedulerBase : public SchedulerBase {
 public:
  using SchedulerBase::SchedulerBase;
  Tensor add_noise(const Tensor& original, const Tensor& noise, int64_t index) const override {
    check_index(index);
    return add_noise_alphas(original, noise, timestep_at(index));
  }

 protected:
  int64_t timestep_at(int64_t index) const { return int_timesteps_[static_cast<size_t>(index)]; }
  void set_integer_timesteps(std::vector<int64_t> timesteps) {
    int_timesteps_ = std::move(timesteps);
    timesteps_.assign(int_timesteps_.begin(), int_timesteps_.end());
  }
  // The spaced timesteps in descending order (DDIM, DDPM), checked against num_train_timesteps.
  void set_spaced_timesteps(Spacing spacing, int64_t num_inference_steps, int64_t steps_offset) {
    std::vector<int64_t> timesteps = spaced_timesteps(spacing, num_train_timesteps_, num_inference_steps, steps_offset);
    std::reverse(timesteps.begin(), timesteps.end());
    set_integer_timesteps(std::move(timesteps));
    check_timesteps_in_range();
  }
  // x0 from the model output (epsilon, sample or v) as DDPM and LCM compute it; `** 0.5` and `.sqrt()`
  // are the same kernel.
  static Tensor predict_original(PredictionType type, const Tensor& model_output, const Tensor& sample,
                                 const Tensor& alpha_prod_t, const Tensor& beta_prod_t) {
    switch (type) {
      case PredictionType::Epsilon:
        return at::div(at::sub(sample, at::mul(beta_prod_t.pow(0.5), model_output)), alpha_prod_t.pow(0.5));
      case PredictionType::VPrediction:
        return at::sub(at::mul(alpha_prod_t.pow(0.5), sample), at::mul(beta_prod_t.pow(0.5), model_output));
      case PredictionType::Sample:
        break;
    }
    return model_output;
  }

  std::vector<int64_t> int_timesteps_;
};

// The sigma-based samplers of k-diffusion's family (Euler, Euler a, Heun, DPM2, DPM2 a, LMS): their
// sigmas, timesteps, scale_model_input and add_noise.
class SigmaSchedulerBase : public SchedulerBase {
 public:
  SigmaSchedulerBase(const Config& config, const Tensor& betas, const std::string& class_name)
      : SchedulerBase(config, betas, class_name), sigmas_(sigmas_tensor({}, 0)) {
    read_spacing(config, "linspace");  // an unknown timestep_spacing fails here, not at set_timesteps
  }
  Tensor scale_model_input(const Tensor& sample, int64_t index) const override;
  Tensor init_noise_sigma() const override { return init_noise_sigma_; }
  Tensor sigmas() const override { return sigmas_; }
  Tensor add_noise(const Tensor& original, const Tensor& noise, int64_t index) const override;

 protected:
  // The timesteps of k-diffusion's ports before any sigma conversion: float32 values in descending order.
  std::vector<double> base_timesteps(int64_t n) const;
  // diffusers' init_noise_sigma: max sigma, or sqrt(max^2 + 1) for leading spacing.
  void set_init_noise_sigma();
  virtual Tensor input_sigma(int64_t index) const { return sigmas_[index]; }

  // set_timesteps' common part: the base timesteps, np.interp of the training sigmas at them and, for
  // a Karras/exponential/beta schedule, the converted sigmas and their timesteps (_sigma_to_t).
  // Both in float64 as numpy holds them; the classes round and concatenate as theirs do.
  struct SigmaPlan {
    std::vector<double> timesteps, sigmas;
    std::vector<float> log_sigmas;  // np.log of the training sigmas (float32)
  };
  SigmaPlan plan_sigmas(int64_t n, SigmaSchedule schedule, bool config_sigma_limits) const;
  // float32 CPU tensor of sigmas + [last], as np.concatenate([...]).astype(np.float32).
  static Tensor sigmas_tensor(const std::vector<double>& sigmas, double last);
  // pred_original_sample of the k-diffusion ports for sigma_input.
  static Tensor predict_original(PredictionType type, const Tensor& model_output, const Tensor& sample,
                                 const Tensor& sigma);
  Tensor sigmas_;  // float32 CPU, one per timestep plus the final one
  Tensor init_noise_sigma_ = scalar_f32(1.0);
};

// DPM-Solver's and UniPC's set_timesteps (dpmsolver_multistep.cpp): int64 timesteps (as doubles) and
// float32 sigmas with the final one; UniPC rounds Karras timesteps always and takes a sigma_min final
// sigma from the converted schedule.
void multistep_schedule(const Config& config, const Tensor& alphas_cumprod, int64_t num_train_timesteps, int64_t n,
                        SigmaSchedule schedule, bool round_karras_always, bool last_sigma_from_schedule,
                        std::vector<double>* timesteps, Tensor* sigmas);

// DPM-Solver's and UniPC's shared part (dpmsolver_multistep.cpp): the schedule above, the data
// prediction x0 of each model output (with dynamic thresholding), its history and the order counter.
class MultistepSchedulerBase : public SchedulerBase {
 public:
  MultistepSchedulerBase(const Config& config, const std::string& class_name, bool round_karras_always,
                         bool last_sigma_from_schedule);
  void set_timesteps(int64_t num_inference_steps) override;
  Tensor sigmas() const override { return sigmas_; }
  Tensor add_noise(const Tensor& original, const Tensor& noise, int64_t index) const override;

 protected:
  virtual void reset_state() {}
  // convert_model_output for data prediction (DPM-Solver++, UniPC's predict_x0).
  Tensor data_prediction(const Tensor& model_output, int64_t index, const Tensor& sample) const;
  // model_outputs[:-1] = model_outputs[1:]; model_outputs[-1] = x0
  void push_model_output(const Tensor& x0);
  const Tensor& model_output_back(size_t k) const { return model_outputs_[model_outputs_.size() - 1 - k]; }
  void count_order() {
    if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
  }

  int64_t solver_order_;
  PredictionType prediction_type_;
  bool thresholding_;
  double dynamic_thresholding_ratio_, sample_max_value_;
  SigmaSchedule schedule_;
  bool round_karras_always_, last_sigma_from_schedule_;
  Tensor sigmas_;
  std::vector<Tensor> model_outputs_;
  int64_t lower_order_nums_ = 0;
};

// One constructor per scheduler file.
std::unique_ptr<Scheduler> make_pndm(const Config& config);
std::unique_ptr<Scheduler> make_ddim(const Config& config, const SchedulerOptions& options);
std::unique_ptr<Scheduler> make_ddpm(const Config& config);
std::unique_ptr<Scheduler> make_lcm(const Config& config);
std::unique_ptr<Scheduler> make_euler_discrete(const Config& config);
std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const Config& config);
std::unique_ptr<Scheduler> make_heun_discrete(const Config& config);
std::unique_ptr<Scheduler> make_k_dpm_2_discrete(const Config& config);
std::unique_ptr<Scheduler> make_k_dpm_2_ancestral_discrete(const Config& config);
std::unique_ptr<Scheduler> make_lms_discrete(const Config& config);
std::unique_ptr<Scheduler> make_dpmsolver_multistep(const Config& config);
std::unique_ptr<Scheduler> make_unipc_multistep(const Config& config);

}  // namespace taiyi::schedulers
