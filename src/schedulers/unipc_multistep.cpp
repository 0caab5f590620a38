// UniPCMultistepScheduler of diffusers 0.37.1 (schedulers/scheduling_unipc_multistep.py): the UniPC
// predictor-corrector (bh1/bh2, data prediction), solver_order 1-3, lower_order_final and
// disable_corrector as diffusers. The small linear systems for the coefficients are solved on the CPU
// in float32 (diffusers solves them on the sample's device; on the CPU the two are the same).
#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

class UniPcMultistepScheduler final : public MultistepSchedulerBase {
 public:
  explicit UniPcMultistepScheduler(const Config& config)
      : MultistepSchedulerBase(config, "UniPCMultistepScheduler", /*round_karras_always=*/true,
                               /*last_sigma_from_schedule=*/true),
        predict_x0_(config.get_bool("predict_x0", true)),
        solver_type_(config.get_string("solver_type", "bh2")),
        lower_order_final_(config.get_bool("lower_order_final", true)) {
    if (solver_type_ == "midpoint" || solver_type_ == "heun" || solver_type_ == "logrho") solver_type_ = "bh2";
    if (solver_type_ != "bh1" && solver_type_ != "bh2") config.unsupported("solver_type", "bh1 or bh2");
    if (solver_order_ < 1 || solver_order_ > 3) config.unsupported("solver_order", "1, 2 or 3");
    if (!predict_x0_) config.unsupported("predict_x0", "true");
    if (config.has("solver_p")) config.unsupported("solver_p", "null");
    if (config.has("disable_corrector")) {
      const auto& list = config.json().at("disable_corrector");
      if (!list.is_array()) config.unsupported("disable_corrector", "a list of step indices");
      for (const auto& v : list) {
        if (!v.is_number_integer()) config.unsupported("disable_corrector", "a list of step indices");
        disable_corrector_.push_back(v.get<int64_t>());
      }
    }
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample_in,
              const std::vector<torch::Generator>& /*generators: deterministic*/) override {
    check_step_inputs(model_output, sample_in, index);
    const bool disabled = std::find(disable_corrector_.begin(), disable_corrector_.end(), index - 1) != disable_corrector_.end();
    const bool use_corrector = index > 0 && !disabled && last_sample_.defined();
    const Tensor converted = data_prediction(model_output, index, sample_in);
    Tensor sample = sample_in;
    if (use_corrector) sample = corrector_update(converted, index, last_sample_, sample_in, this_order_);
    push_model_output(converted);
    const auto n = static_cast<int64_t>(timesteps_.size());
    int64_t this_order = lower_order_final_ ? std::min(solver_order_, n - index) : solver_order_;
    this_order_ = std::min(this_order, lower_order_nums_ + 1);
    last_sample_ = sample;
    Tensor prev_sample = predictor_update(index, sample, this_order_);
    count_order();
    return prev_sample;
  }

 private:
  void reset_state() override {
    last_sample_ = Tensor();
    this_order_ = 0;
  }

  // The parts both updates share: h, rks / D1s from the history, R, b, h_phi_1 and B_h.
  struct Terms {
    Tensor h, h_phi_1, B_h, R, b, D1s;  // D1s undefined for order 1
    std::pair<Tensor, Tensor> t, s0;
  };
  Terms terms(int64_t t_index, int64_t s0_index, int64_t order, const Tensor& m0) const {
    Terms r;
    r.t = alpha_sigma_of(sigmas_[t_index]);
    r.s0 = alpha_sigma_of(sigmas_[s0_index]);
    const Tensor lambda_s0 = lambda_of(r.s0);
    r.h = at::sub(lambda_of(r.t), lambda_s0);
    std::vector<Tensor> rks, d1s;
    for (int64_t i = 1; i < order; ++i) {
      const int64_t si = s0_index - i;  // predictor: step_index - i; corrector: step_index - (i + 1)
      const Tensor& mi = model_output_back(static_cast<size_t>(i));
      const Tensor lambda_si = lambda_of(alpha_sigma_of(sigmas_[si]));
      const Tensor rk = at::div(at::sub(lambda_si, lambda_s0), r.h);
      rks.push_back(rk);
      d1s.push_back(at::div(at::sub(mi, m0), rk));
    }
    rks.push_back(scalar_f32(1.0));
    const Tensor rks_t = at::stack(rks);
    const Tensor hh = at::neg(r.h);  // predict_x0
    r.h_phi_1 = at::expm1(hh);
    Tensor h_phi_k = at::sub(at::div(r.h_phi_1, hh), 1);
    int64_t factorial_i = 1;
    r.B_h = solver_type_ == "bh1" ? hh : at::expm1(hh);
    std::vector<Tensor> R, b;
    for (int64_t i = 1; i <= order; ++i) {
      R.push_back(at::pow(rks_t, i - 1));
      b.push_back(at::div(at::mul(h_phi_k, factorial_i), r.B_h));
      factorial_i *= i + 1;
      h_phi_k = at::sub(at::div(h_phi_k, hh), 1.0 / static_cast<double>(factorial_i));
    }
    r.R = at::stack(R);
    r.b = at::stack(b);
    if (!d1s.empty()) r.D1s = at::stack(d1s, 1);
    return r;
  }

  Tensor predictor_update(int64_t index, const Tensor& x, int64_t order) const {
    const Tensor& m0 = model_outputs_.back();
    Terms r = terms(index + 1, index, order, m0);
    // x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
    const Tensor x_t_ = at::sub(at::mul(at::div(r.t.second, r.s0.second), x), at::mul(at::mul(r.t.first, r.h_phi_1), m0));
    Tensor pred_res;
    if (r.D1s.defined()) {
      const Tensor rhos_p = order == 2 ? torch::tensor({0.5}, torch::TensorOptions().dtype(x.scalar_type()))
                                       : at::linalg_solve(r.R.slice(0, 0, -1).slice(1, 0, -1), r.b.slice(0, 0, -1)).to(x.scalar_type());
      pred_res = at::einsum("k,bkc...->bc...", {rhos_p.to(x.device()), r.D1s});
    } else {
      pred_res = scalar_f32(0);
    }
    return at::sub(x_t_, at::mul(at::mul(r.t.first, r.B_h), pred_res)).to(x.scalar_type());
  }

  Tensor corrector_update(const Tensor& model_t, int64_t index, const Tensor& x, const Tensor& /*x_t*/, int64_t order) const {
    const Tensor& m0 = model_outputs_.back();
    Terms r = terms(index, index - 1, order, m0);
    const Tensor rhos_c = order == 1 ? torch::tensor({0.5}, torch::TensorOptions().dtype(x.scalar_type()))
                                     : at::linalg_solve(r.R, r.b).to(x.scalar_type());
    const Tensor x_t_ = at::sub(at::mul(at::div(r.t.second, r.s0.second), x), at::mul(at::mul(r.t.first, r.h_phi_1), m0));
    const Tensor D1_t = at::sub(model_t, m0);
    const Tensor last = at::mul(rhos_c[-1], D1_t);
    const Tensor correction = r.D1s.defined()
                                  ? at::add(at::einsum("k,bkc...->bc...", {rhos_c.slice(0, 0, -1).to(x.device()), r.D1s}), last)
                                  : at::add(last, 0);
    return at::sub(x_t_, at::mul(at::mul(r.t.first, r.B_h), correction)).to(x.scalar_type());
  }

  bool predict_x0_;
  std::string solver_type_;
  bool lower_order_final_;
  std::vector<int64_t> disable_corrector_;
  int64_t this_order_ = 0;
  Tensor last_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_unipc_multistep(const Config& config) {
  return std::make_unique<UniPcMultistepScheduler>(config);
}

}  // namespace taiyi::schedulers
