// DPMSolverMultistepScheduler of diffusers 0.37.1 (schedulers/scheduling_dpmsolver_multistep.py):
// DPM-Solver++ (algorithm_type "dpmsolver++", the web UI's "DPM++ 2M" at solver_order 2) and its SDE
// variant ("sde-dpmsolver++", "DPM++ 2M SDE"), orders 1-3 (3: dpmsolver++ only), midpoint or heun
// second-order terms, lower_order_final / euler_at_final / final_sigmas_type as diffusers. Every
// expression keeps diffusers' operation order on 0-dim float32 CPU tensors (Python's `1 / x` is
// x.reciprocal() * 1).
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {


}  // namespace

// Shared with unipc_multistep.cpp: the multistep samplers' timesteps and sigmas (int64 timesteps).
void multistep_schedule(const Config& config, const Tensor& alphas_cumprod, int64_t num_train_timesteps, int64_t n,
                        SigmaSchedule schedule, bool round_karras_always, bool last_sigma_from_schedule,
                        std::vector<double>* timesteps_out, Tensor* sigmas_out) {
  const Spacing spacing = read_spacing(config, "linspace");
  const int64_t steps_offset = config.get_int("steps_offset", 0);
  std::vector<double> timesteps;
  if (spacing == Spacing::Trailing) {
    for (int64_t t : spaced_timesteps(spacing, num_train_timesteps, n, steps_offset)) timesteps.push_back(static_cast<double>(t));
    std::reverse(timesteps.begin(), timesteps.end());
  } else {
    // linspace(0, T - 1, n + 1).round() / arange(n + 1) * (T // (n + 1)) + offset, reversed, without the last
    std::vector<int64_t> base = spaced_timesteps(spacing, num_train_timesteps, n + 1, 0);
    std::reverse(base.begin(), base.end());
    base.pop_back();
    for (int64_t t : base) timesteps.push_back(static_cast<double>(spacing == Spacing::Leading ? t + steps_offset : t));
  }
  const std::vector<float> train = train_sigmas(alphas_cumprod);
  const std::vector<float> log_sigmas = numpy_log(train);
  std::vector<double> sigmas;
  if (schedule == SigmaSchedule::Default) {
    for (double t : timesteps) sigmas.push_back(numpy_interp(t, train));
  } else {
    // np.flip(sigmas): in_sigmas[-1] is the smallest training sigma, in_sigmas[0] the largest
    double sigma_min = train.front(), sigma_max = train.back();
    if (config.has("sigma_min")) sigma_min = config.get_double("sigma_min");
    if (config.has("sigma_max")) sigma_max = config.get_double("sigma_max");
    sigmas = convert_sigmas(schedule, sigma_min, sigma_max, n);
    timesteps.clear();
    const bool round = schedule == SigmaSchedule::Karras &&
                       (round_karras_always || config.get_string("beta_schedule", "linear") != "squaredcos_cap_v2");
    for (double sigma : sigmas) {
      const double t = sigma_to_t(sigma, log_sigmas);
      timesteps.push_back(round ? std::nearbyint(t) : t);
    }
  }
  const std::string final_type = config.get_string("final_sigmas_type", "zero");
  double last = 0.0;
  if (final_type == "sigma_min") {
    last = last_sigma_from_schedule && schedule != SigmaSchedule::Default
               ? sigmas.back()
               : at::div(at::rsub(alphas_cumprod[0], 1), alphas_cumprod[0]).pow(0.5).item<double>();
  } else if (final_type != "zero") {
    config.unsupported("final_sigmas_type", "zero or sigma_min");
  }
  std::vector<float> values;
  for (double s : sigmas) values.push_back(static_cast<float>(s));
  values.push_back(static_cast<float>(last));
  *sigmas_out = torch::tensor(values, torch::kFloat);
  timesteps_out->clear();
  for (double t : timesteps) timesteps_out->push_back(static_cast<double>(static_cast<int64_t>(t)));  // .to(int64)
}

MultistepSchedulerBase::MultistepSchedulerBase(const Config& config, const std::string& class_name,
                                               bool round_karras_always, bool last_sigma_from_schedule)
    : SchedulerBase(config, make_betas_for(config), class_name),
      solver_order_(config.get_int("solver_order", 2)),
      prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
      thresholding_(config.get_bool("thresholding", false)),
      dynamic_thresholding_ratio_(config.get_double("dynamic_thresholding_ratio", 0.995)),
      sample_max_value_(config.get_double("sample_max_value", 1.0)),
      schedule_(read_sigma_schedule(config)),
      round_karras_always_(round_karras_always),
      last_sigma_from_schedule_(last_sigma_from_schedule) {
  for (const char* key : {"use_flow_sigmas", "use_dynamic_shifting"})
    if (config.get_bool(key, false)) config.unsupported(key, "false");
  if (config.get_bool("rescale_betas_zero_snr", false)) zero_snr_last_cumprod();
  sigmas_ = scalar_f32(0).unsqueeze(0);
}

void MultistepSchedulerBase::set_timesteps(int64_t num_inference_steps) {
  check_num_inference_steps(num_inference_steps);
  multistep_schedule(config_, alphas_cumprod_, num_train_timesteps_, num_inference_steps, schedule_, round_karras_always_,
                     last_sigma_from_schedule_, &timesteps_, &sigmas_);
  num_inference_steps_ = static_cast<int64_t>(timesteps_.size());
  model_outputs_.assign(static_cast<size_t>(solver_order_), Tensor());
  lower_order_nums_ = 0;
  reset_state();
}

Tensor MultistepSchedulerBase::add_noise(const Tensor& original, const Tensor& noise, int64_t index) const {
  check_index(index);
  return add_noise_vp(sigmas_, original, noise, index);
}

Tensor MultistepSchedulerBase::data_prediction(const Tensor& model_output, int64_t index, const Tensor& sample) const {
  Tensor x0_pred;
  if (prediction_type_ == PredictionType::Sample) {
    x0_pred = model_output;
  } else {
    const auto [alpha_t, sigma_t] = alpha_sigma_of(sigmas_[index]);
    x0_pred = prediction_type_ == PredictionType::Epsilon
                  ? at::div(at::sub(sample, at::mul(sigma_t, model_output)), alpha_t)
                  : at::sub(at::mul(alpha_t, sample), at::mul(sigma_t, model_output));
  }
  return thresholding_ ? threshold_sample(x0_pred, dynamic_thresholding_ratio_, sample_max_value_) : x0_pred;
}

void MultistepSchedulerBase::push_model_output(const Tensor& x0) {
  for (size_t i = 0; i + 1 < model_outputs_.size(); ++i) model_outputs_[i] = model_outputs_[i + 1];
  model_outputs_.back() = x0;
}

namespace {

class DpmSolverMultistepScheduler final : public MultistepSchedulerBase {
 public:
  explicit DpmSolverMultistepScheduler(const Config& config)
      : MultistepSchedulerBase(config, "DPMSolverMultistepScheduler", /*round_karras_always=*/false,
                               /*last_sigma_from_schedule=*/false),
        algorithm_(config.get_string("algorithm_type", "dpmsolver++")),
        solver_type_(config.get_string("solver_type", "midpoint")),
        lower_order_final_(config.get_bool("lower_order_final", true)),
        euler_at_final_(config.get_bool("euler_at_final", false)),
        final_sigmas_zero_(config.get_string("final_sigmas_type", "zero") == "zero") {
    if (algorithm_ == "deis") algorithm_ = "dpmsolver++";  // as diffusers registers it
    if (algorithm_ != "dpmsolver++" && algorithm_ != "sde-dpmsolver++")
      config.unsupported("algorithm_type", "dpmsolver++ or sde-dpmsolver++");
    if (solver_type_ == "logrho" || solver_type_ == "bh1" || solver_type_ == "bh2") solver_type_ = "midpoint";
    if (solver_type_ != "midpoint" && solver_type_ != "heun") config.unsupported("solver_type", "midpoint or heun");
    if (solver_order_ < 1 || solver_order_ > 3 || (solver_order_ == 3 && algorithm_ != "dpmsolver++"))
      config.unsupported("solver_order", "1, 2 or 3 (3 with dpmsolver++)");
    if (config.get_bool("use_lu_lambdas", false)) config.unsupported("use_lu_lambdas", "false");
    if (config.has("variance_type")) config.unsupported("variance_type", "null");
    if (config.has("lambda_min_clipped") && config.json().at("lambda_min_clipped").is_number() &&
        std::isfinite(config.get_double("lambda_min_clipped")))
      config.unsupported("lambda_min_clipped", "-inf");
  }

  Tensor step(const Tensor& model_output_in, int64_t index, const Tensor& sample_in,
              const std::vector<torch::Generator>& generators) override {
    check_step_inputs(model_output_in, sample_in, index);
    const auto n = static_cast<int64_t>(timesteps_.size());
    const bool lower_order_final =
        index == n - 1 && (euler_at_final_ || (lower_order_final_ && n < 15) || final_sigmas_zero_);
    const bool lower_order_second = index == n - 2 && lower_order_final_ && n < 15;
    const Tensor model_output = data_prediction(model_output_in, index, sample_in);
    push_model_output(model_output);
    const Tensor sample = sample_in.to(torch::kFloat);
    Tensor noise;
    if (algorithm_ == "sde-dpmsolver++")
      noise = randn_tensor(model_output.sizes(), torch::kFloat, model_output.device(), generators);
    Tensor prev_sample;
    if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final) {
      prev_sample = first_order_update(model_output, index, sample, noise);
    } else if (solver_order_ == 2 || lower_order_nums_ < 2 || lower_order_second) {
      prev_sample = second_order_update(index, sample, noise);
    } else {
      prev_sample = third_order_update(index, sample);
    }
    count_order();
    return prev_sample.to(model_output.scalar_type());
  }

 private:
  Tensor first_order_update(const Tensor& model_output, int64_t index, const Tensor& sample, const Tensor& noise) const {
    const auto t = alpha_sigma_of(sigmas_[index + 1]);
    const auto s = alpha_sigma_of(sigmas_[index]);
    const Tensor h = at::sub(lambda_of(t), lambda_of(s));
    const Tensor& alpha_t = t.first;
    const Tensor& sigma_t = t.second;
    if (algorithm_ == "dpmsolver++") {
      // sigma_t / sigma_s * sample - alpha_t * (exp(-h) - 1.0) * model_output
      return at::sub(at::mul(at::div(sigma_t, s.second), sample),
                     at::mul(at::mul(alpha_t, at::sub(at::exp(at::neg(h)), 1.0)), model_output));
    }
    // sigma_t / sigma_s * exp(-h) * sample + alpha_t * (1 - exp(-2.0 * h)) * model_output
    //   + sigma_t * sqrt(1.0 - exp(-2 * h)) * noise
    return at::add(at::add(at::mul(at::mul(at::div(sigma_t, s.second), at::exp(at::neg(h))), sample),
                           at::mul(at::mul(alpha_t, at::rsub(at::exp(at::mul(h, -2.0)), 1)), model_output)),
                   at::mul(at::mul(sigma_t, at::sqrt(at::rsub(at::exp(at::mul(h, -2)), 1.0))), noise));
  }

  Tensor second_order_update(int64_t index, const Tensor& sample, const Tensor& noise) const {
    const auto t = alpha_sigma_of(sigmas_[index + 1]);
    const auto s0 = alpha_sigma_of(sigmas_[index]);
    const auto s1 = alpha_sigma_of(sigmas_[index - 1]);
    const Tensor lambda_s0 = lambda_of(s0);
    const Tensor& m0 = model_output_back(0);
    const Tensor& m1 = model_output_back(1);
    const Tensor h = at::sub(lambda_of(t), lambda_s0);
    const Tensor h_0 = at::sub(lambda_s0, lambda_of(s1));
    const Tensor r0 = at::div(h_0, h);
    const Tensor& d0 = m0;
    const Tensor d1 = at::mul(at::mul(at::reciprocal(r0), 1.0), at::sub(m0, m1));
    const Tensor& alpha_t = t.first;
    const Tensor& sigma_t = t.second;
    const bool midpoint = solver_type_ == "midpoint";
    if (algorithm_ == "dpmsolver++") {
      const Tensor exp_m1 = at::mul(alpha_t, at::sub(at::exp(at::neg(h)), 1.0));  // alpha_t * (exp(-h) - 1.0)
      Tensor x_t = at::sub(at::mul(at::div(sigma_t, s0.second), sample), at::mul(exp_m1, d0));
      if (midpoint) return at::sub(x_t, at::mul(at::mul(exp_m1, 0.5), d1));
      // + alpha_t * ((exp(-h) - 1.0) / h + 1.0) * D1
      return at::add(x_t, at::mul(at::mul(alpha_t, at::add(at::div(at::sub(at::exp(at::neg(h)), 1.0), h), 1.0)), d1));
    }
    const Tensor one_minus = at::rsub(at::exp(at::mul(h, -2.0)), 1);  // 1 - exp(-2.0 * h)
    Tensor x_t = at::add(at::mul(at::mul(at::div(sigma_t, s0.second), at::exp(at::neg(h))), sample),
                         at::mul(at::mul(alpha_t, one_minus), d0));
    if (midpoint) {
      x_t = at::add(x_t, at::mul(at::mul(at::mul(alpha_t, one_minus), 0.5), d1));
    } else {
      // alpha_t * ((1.0 - exp(-2.0 * h)) / (-2.0 * h) + 1.0) * D1
      const Tensor ratio = at::div(at::rsub(at::exp(at::mul(h, -2.0)), 1.0), at::mul(h, -2.0));
      x_t = at::add(x_t, at::mul(at::mul(alpha_t, at::add(ratio, 1.0)), d1));
    }
    return at::add(x_t, at::mul(at::mul(sigma_t, at::sqrt(at::rsub(at::exp(at::mul(h, -2)), 1.0))), noise));
  }

  Tensor third_order_update(int64_t index, const Tensor& sample) const {
    const auto t = alpha_sigma_of(sigmas_[index + 1]);
    const auto s0 = alpha_sigma_of(sigmas_[index]);
    const auto s1 = alpha_sigma_of(sigmas_[index - 1]);
    const auto s2 = alpha_sigma_of(sigmas_[index - 2]);
    const Tensor lambda_s0 = lambda_of(s0), lambda_s1 = lambda_of(s1);
    const Tensor &m0 = model_output_back(0), &m1 = model_output_back(1), &m2 = model_output_back(2);
    const Tensor h = at::sub(lambda_of(t), lambda_s0);
    const Tensor h_0 = at::sub(lambda_s0, lambda_s1), h_1 = at::sub(lambda_s1, lambda_of(s2));
    const Tensor r0 = at::div(h_0, h), r1 = at::div(h_1, h);
    const Tensor d1_0 = at::mul(at::mul(at::reciprocal(r0), 1.0), at::sub(m0, m1));
    const Tensor d1_1 = at::mul(at::mul(at::reciprocal(r1), 1.0), at::sub(m1, m2));
    const Tensor r_sum = at::add(r0, r1);
    const Tensor d1 = at::add(d1_0, at::mul(at::div(r0, r_sum), at::sub(d1_0, d1_1)));
    const Tensor d2 = at::mul(at::mul(at::reciprocal(r_sum), 1.0), at::sub(d1_0, d1_1));
    const Tensor& alpha_t = t.first;
    const Tensor e = at::sub(at::exp(at::neg(h)), 1.0);  // exp(-h) - 1.0
    Tensor x_t = at::sub(at::mul(at::div(t.second, s0.second), sample), at::mul(at::mul(alpha_t, e), m0));
    x_t = at::add(x_t, at::mul(at::mul(alpha_t, at::add(at::div(e, h), 1.0)), d1));
    // - alpha_t * ((exp(-h) - 1.0 + h) / h ** 2 - 0.5) * D2
    return at::sub(x_t, at::mul(at::mul(alpha_t, at::sub(at::div(at::add(e, h), h.pow(2)), 0.5)), d2));
  }

  std::string algorithm_, solver_type_;
  bool lower_order_final_, euler_at_final_, final_sigmas_zero_;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmsolver_multistep(const Config& config) {
  return std::make_unique<DpmSolverMultistepScheduler>(config);
}

}  // namespace taiyi::schedulers
