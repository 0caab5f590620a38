// diffusers 0.37.1's schedulers (the samplers), numerically as diffusers computes them, built from
// scheduler/scheduler_config.json as diffusers' from_config builds one class from another's config.
// Samplers see tensors, never the UNet. The loop is the pipeline's (StableDiffusionPipeline.__call__):
//
//   auto s = taiyi::make_scheduler(folder.config("scheduler"), "euler_a");
//   s->set_timesteps(25);
//   latents = latents * s->init_noise_sigma();
//   for (int64_t i = 0; i < (int64_t)s->timesteps().size(); ++i) {
//     auto eps = unet(s->scale_model_input(latents, i), s->timesteps()[i]);
//     latents = s->step(eps, i, latents, generators);
//   }
//
// Steps are addressed by their position in timesteps() (diffusers' step_index): img2img starts at a
// later position (first_index_for_strength) and add_noise uses that position's noise level.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"

namespace taiyi {

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Resets the state and computes the timesteps for a run of `num_inference_steps`
  // (1..num_train_timesteps, or what the sampler allows; else Error naming the config file).
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // diffusers' scheduler.timesteps: one UNet call each (Heun and DPM2 interleave their second
  // evaluation; PLMS repeats its second timestep). Values as diffusers holds them (integers, or
  // float32/float64 values for the sigma-based samplers); the UNet reads them as float32.
  const std::vector<double>& timesteps() const { return timesteps_; }
  // diffusers' scheduler.order: UNet calls per step (2 for Heun and DPM2); img2img cuts by it.
  virtual int64_t order() const { return 1; }
  // The model input at position `index` (the sigma-based samplers divide by sqrt(sigma^2 + 1)).
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, int64_t index) const;
  // One step at position `index` of timesteps(): model_output (the CFG-combined prediction) -> the
  // next sample. Positions are taken in order from the first one the run uses. Noise (DDIM eta,
  // ancestral and SDE samplers, LCM, DDPM) is drawn as diffusers' randn_tensor draws it: with one
  // generator per image, each image's noise from its own generator (a CPU generator draws on the
  // CPU, then the noise moves to the sample's device); with one generator, one draw of the whole
  // shape; with none, the device's default generator. model_output and sample must share shape,
  // dtype and device; the multistep samplers keep them (do not modify them in place afterwards).
  // No device sync: coefficients are 0-dim CPU tensors prepared from the schedule.
  virtual torch::Tensor step(const torch::Tensor& model_output, int64_t index, const torch::Tensor& sample,
                             const std::vector<torch::Generator>& generators = {}) = 0;
  // The scale of the initial noise (a 0-dim float32 CPU tensor): 1, or the largest sigma.
  virtual torch::Tensor init_noise_sigma() const;
  // diffusers' add_noise(original, noise, timesteps[index]) with the begin index set to `index`
  // (img2img): the noisy latents at that position.
  virtual torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise, int64_t index) const = 0;
  // diffusers' scheduler.sigmas (float32, CPU) for the sigma-based samplers; undefined for the others.
  virtual torch::Tensor sigmas() const { return {}; }
  // The diffusers class, e.g. "EulerAncestralDiscreteScheduler".
  virtual std::string class_name() const = 0;
  // "PNDM" or "DDIM" for those two (compatibility), else the class without "Scheduler".
  virtual std::string name() const = 0;

 protected:
  std::vector<double> timesteps_;
};

enum class SigmaSchedule { Default, Karras, Exponential, Beta };

struct SchedulerOptions {
  double eta = 0.0;  // DDIM only
  // use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas, as from_config(..., use_karras_sigmas=True);
  // an Error for a class that has no such option.
  SigmaSchedule schedule = SigmaSchedule::Default;
};

// kind: a scheduler ("pndm", "ddim", "euler", "euler_a", "dpmsolver++", "sde-dpmsolver++", "heun",
// "dpm2", "dpm2_a", "lms", "unipc", "lcm", "ddpm"; any case; also diffusers' class names) or "" (the
// class in the config's _class_name). Unknown kind or class, unsupported option -> Error naming it and
// the file. A config of one class builds another as diffusers' from_config does: only the file's keys
// are read, absent ones take the chosen class's defaults. Note: StableDiffusionPipeline.__init__
// itself rewrites steps_offset and clip_sample of outdated configs; Pipeline does that, this function
// does not (it is the scheduler alone).
std::unique_ptr<Scheduler> make_scheduler(const Config& config, const std::string& kind,
                                          const SchedulerOptions& options = {});

// The diffusers class a kind names ("" for "": the config's).
std::string scheduler_class_for_kind(const std::string& kind);

// --sampler: the web UI's and stable-diffusion.cpp's sampler names (case-insensitive), e.g. "Euler a",
// "DPM++ 2M", "DPM++ 2M Karras" (the older composite form), "euler_a", "dpm++2m".
struct SamplerChoice {
  std::string kind;              // for make_scheduler
  std::string web_ui_name;       // "DPM++ 2M" as the web UI writes it in "Sampler: "
  std::optional<SigmaSchedule> schedule;  // set by a composite name ("... Karras") or sd.cpp's ddim_trailing
  bool trailing = false;         // sd.cpp's ddim_trailing: DDIM with timestep_spacing "trailing"
};
// Error listing the valid names for an unknown one.
SamplerChoice resolve_sampler(const std::string& name);
// --schedule default|karras|exponential|beta (case-insensitive; the web UI's "Automatic" is default).
SigmaSchedule parse_schedule(const std::string& name);
std::string schedule_name(SigmaSchedule schedule);      // "default", "karras", ...
std::string schedule_web_ui_name(SigmaSchedule schedule);  // "Automatic", "Karras", "Exponential", "Beta"
// The web UI's sampler name for a diffusers class / kind ("PLMS" for PNDM, "Euler a", ...).
std::string web_ui_sampler_name(const std::string& class_name, const std::string& algorithm_type = "");
// Every name --sampler accepts, for help and errors.
std::vector<std::string> sampler_names();

}  // namespace taiyi
