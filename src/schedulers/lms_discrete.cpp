// LMSDiscreteScheduler of diffusers 0.37.1 (schedulers/scheduling_lms_discrete.py): linear multistep
// on the sigmas, order 4, its coefficients the integrals of Lagrange polynomials that diffusers takes
// from scipy.integrate.quad; here QUADPACK's 21-point Gauss-Kronrod rule (quad's first and, for these
// cubic integrands, only evaluation), on the integrand diffusers evaluates in float32 torch arithmetic.
#include <array>

#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

// QUADPACK dqk21: nodes and weights.
constexpr std::array<double, 11> kXgk = {0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
                                         0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
                                         0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
                                         0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
                                         0.294392862701460198131126603103866, 0.148874338981631210884826001129720,
                                         0.000000000000000000000000000000000};
constexpr std::array<double, 11> kWgk = {0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
                                         0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
                                         0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
                                         0.123491976262065851077958109831074, 0.134709217311473325928054001771707,
                                         0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
                                         0.149445554002916905664936468389821};
constexpr std::array<double, 5> kWg = {0.066671344308688137593568809893332, 0.149451349150580593145776339657697,
                                       0.219086362515982043995534934228163, 0.269266719309996355091226921569469,
                                       0.295524224714752870173892994651338};

// dqk21's Kronrod sum of f over [a, b] (the result quad returns when its error estimate is met at once).
template <typename F>
double kronrod21(const F& f, double a, double b) {
  const double centr = 0.5 * (a + b);
  const double hlgth = 0.5 * (b - a);
  const double fc = f(centr);
  double resk = kWgk[10] * fc;
  for (int j = 0; j < 5; ++j) {
    const int jtw = 2 * j + 1;
    const double absc = hlgth * kXgk[jtw];
    resk += kWgk[jtw] * (f(centr - absc) + f(centr + absc));
  }
  for (int j = 0; j < 5; ++j) {
    const int jtwm1 = 2 * j;
    const double absc = hlgth * kXgk[jtwm1];
    resk += kWgk[jtwm1] * (f(centr - absc) + f(centr + absc));
  }
  return resk * hlgth;
}

class LmsDiscreteScheduler final : public SigmaSchedulerBase {
 public:
  explicit LmsDiscreteScheduler(const Config& config)
      : SigmaSchedulerBase(config, make_betas(config, config.get_int("num_train_timesteps", 1000)), "LMSDiscreteScheduler"),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/true)),
        schedule_(read_sigma_schedule(config)) {}

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    // LMS's _convert_to_karras takes the ends of the interpolated sigmas, never the config's.
    SigmaPlan plan = plan_sigmas(num_inference_steps, schedule_, /*config_sigma_limits=*/schedule_ != SigmaSchedule::Karras);
    sigmas_ = sigmas_tensor(plan.sigmas, 0.0);
    timesteps_.clear();
    for (double t : plan.timesteps) timesteps_.push_back(static_cast<float>(t));
    sigma_values_.assign(sigmas_.data_ptr<float>(), sigmas_.data_ptr<float>() + sigmas_.numel());
    derivatives_.clear();
    set_init_noise_sigma();
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& /*generators: deterministic*/) override {
    check_step_inputs(model_output, sample, index);
    constexpr int64_t kOrder = 4;
    const Tensor sigma = sigmas_[index];
    const Tensor pred_original_sample = predict_original(prediction_type_, model_output, sample, sigma);
    derivatives_.push_back(at::div(at::sub(sample, pred_original_sample), sigma));
    if (static_cast<int64_t>(derivatives_.size()) > kOrder) derivatives_.erase(derivatives_.begin());
    const int64_t order = std::min(index + 1, kOrder);
    // sample + sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives)))
    Tensor sum;
    for (int64_t k = 0; k < order; ++k) {
      const Tensor term = at::mul(derivatives_[derivatives_.size() - 1 - static_cast<size_t>(k)], lms_coefficient(order, index, k));
      sum = k == 0 ? at::add(term, 0) : at::add(sum, term);
    }
    return at::add(sample, sum);
  }

 private:
  // get_lms_coefficient: the integral over [sigma_t, sigma_t+1] of the Lagrange basis polynomial of
  // current_order, evaluated as diffusers does (tau rounded to float32, float32 products).
  double lms_coefficient(int64_t order, int64_t t, int64_t current_order) const {
    auto sigma = [&](int64_t i) { return sigma_values_[static_cast<size_t>(i)]; };
    auto lms_derivative = [&](double tau_in) {
      const float tau = static_cast<float>(tau_in);
      float prod = 1.0f;
      for (int64_t k = 0; k < order; ++k) {
        if (current_order == k) continue;
        prod *= (tau - sigma(t - k)) / (sigma(t - current_order) - sigma(t - k));
      }
      return static_cast<double>(prod);
    };
    return kronrod21(lms_derivative, sigma(t), sigma(t + 1));
  }

  PredictionType prediction_type_;
  SigmaSchedule schedule_;
  std::vector<float> sigma_values_;
  std::vector<Tensor> derivatives_;
};

}  // namespace

std::unique_ptr<Scheduler> make_lms_discrete(const Config& config) {
  return std::make_unique<LmsDiscreteScheduler>(config);
}

}  // namespace taiyi::schedulers
