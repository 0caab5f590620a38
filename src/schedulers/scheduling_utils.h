// What diffusers' schedulers share (schedulers/scheduling_utils.py and the __init__/set_timesteps code
// every scheduler repeats): the beta schedule, timestep spacing, prediction types and the state on
// alphas_cumprod; and a constructor per scheduler for make_scheduler. Private to src/schedulers/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/config.h"
#include "taiyi/error.h"
#include "taiyi/scheduler.h"

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
Tensor make_betas(const Config& config, int64_t num_train_timesteps);

enum class Spacing { Leading, Trailing, Linspace };
Spacing read_spacing(const Config& config);
// The base timesteps in ascending order, with numpy's float arithmetic where diffusers uses it.
std::vector<int64_t> spaced_timesteps(Spacing spacing, int64_t num_train_timesteps, int64_t num_inference_steps,
                                      int64_t steps_offset);

// ---- the state both schedulers share ----

class SchedulerBase : public Scheduler {
 public:
  SchedulerBase(const Config& config, const Tensor& betas, bool set_alpha_to_one)
      : config_(config), num_train_timesteps_(config.get_int("num_train_timesteps", 1000)) {
    alphas_cumprod_ = at::cumprod(at::rsub(betas, 1.0), 0);  // float32, as torch.cumprod(1.0 - betas)
    final_alpha_cumprod_ = set_alpha_to_one ? torch::scalar_tensor(1.0, torch::kFloat) : alphas_cumprod_[0];
  }

  const std::vector<int64_t>& timesteps() const override { return timesteps_; }

 protected:
  // The checks diffusers leaves to a ZeroDivisionError or an IndexError in the middle of the loop.
  void check_num_inference_steps(int64_t num_inference_steps) const {
    if (num_inference_steps < 1 || num_inference_steps > num_train_timesteps_)
      throw Error(config_.path().string() + ": " + name() + " num_inference_steps = " +
                  std::to_string(num_inference_steps) + ": must be between 1 and num_train_timesteps (" +
                  std::to_string(num_train_timesteps_) + ")");
  }

  void check_timesteps_in_range() const {
    for (int64_t t : timesteps_) {
      if (t >= num_train_timesteps_)
        throw Error(config_.path().string() + ": " + name() + " with steps_offset " +
                    std::to_string(config_.get_int("steps_offset", 0)) + " and " +
                    std::to_string(num_inference_steps_) + " steps reaches timestep " + std::to_string(t) +
                    ", past num_train_timesteps - 1 (" + std::to_string(num_train_timesteps_ - 1) + ")");
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
  // alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod.
  Tensor alpha_prod_prev(int64_t prev_t) const { return prev_t >= 0 ? alpha_prod(prev_t) : final_alpha_cumprod_; }

  void check_step_inputs(const Tensor& model_output, const Tensor& sample) const {
    if (num_inference_steps_ == 0)
      throw Error(name() + " scheduler (" + config_.path().string() + "): step() before set_timesteps()");
    if (model_output.sizes() != sample.sizes() || model_output.scalar_type() != sample.scalar_type() ||
        model_output.device() != sample.device())
      throw Error(name() + " scheduler: model_output " + describe(model_output) + " and sample " + describe(sample) +
                  " must have the same shape, dtype and device");
  }

  static std::string describe(const Tensor& t) {
    std::string shape;
    for (int64_t d : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    return "[" + shape + "] " + std::string(c10::toString(t.scalar_type())) + " on " + t.device().str();
  }

  Config config_;
  int64_t num_train_timesteps_;
  Tensor alphas_cumprod_;        // [num_train_timesteps] float32 on the CPU
  Tensor final_alpha_cumprod_;   // 0-dim float32
  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> timesteps_;
};

std::unique_ptr<Scheduler> make_pndm(const Config& config);                                   // pndm.cpp
std::unique_ptr<Scheduler> make_ddim(const Config& config, const SchedulerOptions& options);  // ddim.cpp

}  // namespace taiyi::schedulers
