// PNDMScheduler (skip_prk_steps / PLMS) and DDIMScheduler, numerically as diffusers computes them
// (betas, alphas_cumprod in float32 torch ops), built from scheduler/scheduler_config.json.
// Samplers see tensors, never the UNet.
//
//   auto s = taiyi::make_scheduler(folder.config("scheduler"), "pndm");
//   s->set_timesteps(50);
//   for (int64_t t : s->timesteps()) latents = s->step(unet(latents, t), t, latents);
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/config.h"

namespace taiyi {

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Resets the state and computes the timesteps for a run of `num_inference_steps`
  // (1..num_train_timesteps, else Error naming the config file).
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // The timesteps of the loop, one UNet call each (PNDM/PLMS repeats the second one).
  virtual const std::vector<int64_t>& timesteps() const = 0;
  // One step: model_output (the CFG-combined epsilon) at timestep t -> the previous sample.
  // `generator` draws the DDIM eta noise (eta > 0), as diffusers' generator would: a CPU generator
  // draws on the CPU in the sample's dtype and the noise is moved to the sample's device.
  // model_output and sample must share shape, dtype and device. PNDM keeps both tensors (its
  // epsilon history and restart sample, as diffusers does): do not modify them in place afterwards.
  // No device sync: the coefficients are prepared by set_timesteps.
  virtual torch::Tensor step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                             std::optional<torch::Generator> generator = std::nullopt) = 0;
  virtual double init_noise_sigma() const { return 1.0; }
  virtual std::string name() const = 0;  // "PNDM" or "DDIM"
};

struct SchedulerOptions {
  double eta = 0.0;  // DDIM only
};

// kind: "pndm" or "ddim" (any case; also "PNDMScheduler"/"DDIMScheduler") or "" (the class in the
// config's _class_name). Unknown kind or class, unsupported option -> Error naming it and the file.
// A config of one class builds the other, as diffusers' from_config does (e.g. DDIM from Taiyi's
// PNDM config: clip_sample, set_alpha_to_one and steps_offset come from the file, the rest from
// DDIM's defaults). Note: StableDiffusionPipeline.__init__ itself forces steps_offset=1 and
// clip_sample=false into configs that differ; this function does not (it is the scheduler alone).
std::unique_ptr<Scheduler> make_scheduler(const Config& config, const std::string& kind,
                                          const SchedulerOptions& options = {});

}  // namespace taiyi
