// PNDMScheduler of diffusers 0.37.1 (schedulers/scheduling_pndm.py), bit for bit: every coefficient
// is computed with the same torch ops on the same float32 0-dim CPU tensors as diffusers, prepared in
// set_timesteps (step() never syncs the device).
#include <cmath>
#include <map>
#include <utility>

#include "schedulers/scheduling_utils.h"

namespace taiyi::schedulers {

namespace {

// ---- PNDM ----

class PndmScheduler final : public AlphasSchedulerBase {
 public:
  explicit PndmScheduler(const Config& config)
      : AlphasSchedulerBase(config, make_betas(config, config.get_int("num_train_timesteps", 1000)), "PNDMScheduler"),
        skip_prk_steps_(config.get_bool("skip_prk_steps", false)),
        prediction_type_(read_prediction_type(config, /*sample_allowed=*/false)),
        spacing_(read_spacing(config)),
        steps_offset_(config.get_int("steps_offset", 0)) {
    set_alpha_to_one(config.get_bool("set_alpha_to_one", false));
  }

  std::string name() const override { return "PNDM"; }

  void set_timesteps(int64_t num_inference_steps) override {
    check_num_inference_steps(num_inference_steps);
    num_inference_steps_ = num_inference_steps;
    const std::vector<int64_t> base =
        spaced_timesteps(spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
    prk_timesteps_.clear();
    std::vector<int64_t> ts;
    if (skip_prk_steps_) {
      // PLMS: base[:-1], base[-2:-1], base[-1:], reversed: the second timestep runs twice.
      ts.assign(base.begin(), base.end() - 1);
      if (base.size() >= 2) ts.push_back(base[base.size() - 2]);
      ts.push_back(base.back());
      std::reverse(ts.begin(), ts.end());
    } else {
      // Runge-Kutta on the last four base timesteps (each with its midpoint, T // n // 2 above),
      // then PLMS on base[:-3] reversed.
      if (base.size() < static_cast<size_t>(kPndmOrder))
        throw Error(config_.path().string() + ": PNDM with skip_prk_steps = false needs at least " +
                    std::to_string(kPndmOrder) + " inference steps, got " + std::to_string(num_inference_steps));
      const int64_t half_step = num_train_timesteps_ / num_inference_steps / 2;
      std::vector<int64_t> with_midpoints;
      for (auto it = base.end() - kPndmOrder; it != base.end(); ++it) {
        with_midpoints.push_back(*it);
        with_midpoints.push_back(*it + half_step);
      }
      with_midpoints.pop_back();
      std::vector<int64_t> doubled;  // each repeated twice, then [1:-1]
      for (int64_t t : with_midpoints) doubled.insert(doubled.end(), {t, t});
      prk_timesteps_.assign(doubled.rbegin() + 1, doubled.rend() - 1);
      ts = prk_timesteps_;
      ts.insert(ts.end(), base.rbegin() + 3, base.rend());
    }
    set_integer_timesteps(ts);
    check_timesteps_in_range();
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = Tensor();
    cur_sample_ = Tensor();
    // The (t, prev_t) pair of every call in order, so that step() only does tensor arithmetic.
    coefficients_.clear();
    for (size_t k = 0; k < ts.size(); ++k) coefficients(step_timesteps(static_cast<int64_t>(k), ts[k]));
  }

  Tensor step(const Tensor& model_output, int64_t index, const Tensor& sample,
              const std::vector<torch::Generator>& /*generators: PNDM is deterministic*/) override {
    check_step_inputs(model_output, sample, index);
    const auto [t, prev_t] = step_timesteps(counter_, timestep_at(index));
    const Coefficients& c = coefficients({t, prev_t});
    Tensor prev_sample = in_prk_phase() ? step_prk(model_output, sample, c) : step_plms(model_output, sample, c);
    ++counter_;
    return prev_sample;
  }

 private:
  static constexpr int64_t kPndmOrder = 4;

  // _get_prev_sample's factors for one (t, prev_t), 0-dim float32 CPU tensors.
  struct Coefficients {
    Tensor sqrt_alpha_prod_t, sqrt_beta_prod_t;  // v_prediction only
    Tensor sample_coeff, alpha_prod_difference, model_output_denom_coeff;
  };

  bool in_prk_phase() const { return !skip_prk_steps_ && counter_ < static_cast<int64_t>(prk_timesteps_.size()); }

  // The (timestep, prev_timestep) that step_prk / step_plms pass to _get_prev_sample at `counter`.
  std::pair<int64_t, int64_t> step_timesteps(int64_t counter, int64_t timestep) const {
    const int64_t step_ratio = num_train_timesteps_ / num_inference_steps_;
    if (!skip_prk_steps_ && counter < static_cast<int64_t>(prk_timesteps_.size())) {
      const int64_t diff_to_prev = counter % 2 ? 0 : step_ratio / 2;
      return {prk_timesteps_[static_cast<size_t>(counter / 4 * 4)], timestep - diff_to_prev};
    }
    // The repeated second timestep restarts the first step: from t + ratio to t.
    if (counter == 1) return {timestep + step_ratio, timestep};
    return {timestep, timestep - step_ratio};
  }

  const Coefficients& coefficients(std::pair<int64_t, int64_t> key) {
    auto found = coefficients_.find(key);
    if (found != coefficients_.end()) return found->second;
    // _get_prev_sample, formula (9) of the PNDM paper, on float32 0-dim tensors.
    const Tensor alpha_prod_t = alpha_prod(key.first);
    const Tensor alpha_prod_t_prev = alpha_prod_prev(key.second);
    const Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
    const Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
    Coefficients c;
    c.sqrt_alpha_prod_t = alpha_prod_t.pow(0.5);
    c.sqrt_beta_prod_t = beta_prod_t.pow(0.5);
    c.sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    c.model_output_denom_coeff =
        alpha_prod_t * beta_prod_t_prev.pow(0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    c.alpha_prod_difference = alpha_prod_t_prev - alpha_prod_t;
    return coefficients_.emplace(key, std::move(c)).first->second;
  }

  // prev_sample = sample_coeff * sample - (a_prev - a_t) * model_output / model_output_denom_coeff
  Tensor get_prev_sample(const Tensor& sample, Tensor model_output, const Coefficients& c) const {
    if (prediction_type_ == PredictionType::VPrediction)
      model_output = at::mul(c.sqrt_alpha_prod_t, model_output) + at::mul(c.sqrt_beta_prod_t, sample);
    Tensor result = at::mul(c.sample_coeff, sample);
    Tensor scaled_output = at::mul(c.alpha_prod_difference, model_output);
    scaled_output.div_(c.model_output_denom_coeff);
    return result.sub_(scaled_output);
  }

  // Runge-Kutta: four calls per step; 1/6, 1/3, 1/3, 1/6 of their outputs make the step's epsilon.
  Tensor step_prk(const Tensor& model_output, const Tensor& sample, const Coefficients& c) {
    Tensor output = model_output;
    switch (counter_ % 4) {
      case 0:
        cur_model_output_ = model_output * (1.0 / 6);  // diffusers: 0 + 1/6 * model_output
        ets_.push_back(model_output);
        cur_sample_ = sample;
        break;
      case 1:
      case 2:
        cur_model_output_.add_(model_output * (1.0 / 3));
        break;
      default:
        output = cur_model_output_ + model_output * (1.0 / 6);
        cur_model_output_ = Tensor();
        break;
    }
    return get_prev_sample(cur_sample_.defined() ? cur_sample_ : sample, output, c);
  }

  // Linear multistep (Adams-Bashforth) on the last 1-4 epsilons. The history keeps the caller's
  // tensors, as diffusers' ets list does.
  Tensor step_plms(const Tensor& model_output, const Tensor& sample, const Coefficients& c) {
    if (!skip_prk_steps_ && ets_.size() < 3)
      throw Error(config_.path().string() + ": PNDM PLMS step before the 12 Runge-Kutta steps");
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    }
    const size_t n = ets_.size();
    const Tensor& e1 = ets_[n - 1];
    if (n == 1 && counter_ == 0) {
      cur_sample_ = sample;
      return get_prev_sample(sample, model_output, c);
    }
    if (n == 1 && counter_ == 1) {
      // The repeated timestep: average both epsilons and redo the first step from its sample.
      Tensor first_sample = std::move(cur_sample_);
      cur_sample_ = Tensor();
      return get_prev_sample(first_sample, (model_output + e1).div_(2), c);
    }
    Tensor combined;
    if (n == 2) {
      combined = e1.mul(3).sub_(ets_[0]).div_(2);  // (3 e1 - e2) / 2
    } else if (n == 3) {
      combined = e1.mul(23).sub_(ets_[1].mul(16)).add_(ets_[0].mul(5)).div_(12);  // (23 e1 - 16 e2 + 5 e3) / 12
    } else {
      // (1 / 24) * (55 e1 - 59 e2 + 37 e3 - 9 e4). Not mul_(1.0 / 24): libtorch's mul_(Scalar) puts
      // the scalar first, which on the CPU rounds it to half precision before multiplying half
      // tensors; Python's (1 / 24) * x multiplies by the unrounded scalar, as mul(Scalar) does.
      combined = e1.mul(55).sub_(ets_[2].mul(59)).add_(ets_[1].mul(37)).sub_(ets_[0].mul(9)).mul(1.0 / 24);
    }
    return get_prev_sample(sample, combined, c);
  }

  bool skip_prk_steps_;
  PredictionType prediction_type_;
  Spacing spacing_;
  int64_t steps_offset_;

  std::vector<int64_t> prk_timesteps_;
  int64_t counter_ = 0;
  std::vector<Tensor> ets_;   // the last epsilons, oldest first (at most 4)
  Tensor cur_sample_;         // the sample a restarted step begins from
  Tensor cur_model_output_;   // the Runge-Kutta weighted sum so far (undefined: 0)
  std::map<std::pair<int64_t, int64_t>, Coefficients> coefficients_;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const Config& config) { return std::make_unique<PndmScheduler>(config); }

}  // namespace taiyi::schedulers
