// make_scheduler: the scheduler a config names, or another class built from it as diffusers'
// from_config does (one file per scheduler beside this one, named as diffusers' scheduling_*.py), and
// the sampler names of the web UI and stable-diffusion.cpp.
#include "taiyi/schedulers/scheduler.h"

#include <map>

#include "schedulers/scheduling_utils.h"
#include "taiyi/utils/error.h"

namespace taiyi {

torch::Tensor Scheduler::scale_model_input(const torch::Tensor& sample, int64_t /*index*/) const { return sample; }
torch::Tensor Scheduler::init_noise_sigma() const { return schedulers::scalar_f32(1.0); }

namespace {

struct KindEntry {
  const char* kind;
  const char* class_name;
  const char* algorithm_type;  // DPM-Solver's algorithm, else ""
};
// Kinds (make_scheduler's names) and the diffusers classes they build.
constexpr KindEntry kKinds[] = {
    {"pndm", "PNDMScheduler", ""},
    {"ddim", "DDIMScheduler", ""},
    {"ddpm", "DDPMScheduler", ""},
    {"lcm", "LCMScheduler", ""},
    {"euler", "EulerDiscreteScheduler", ""},
    {"euler_a", "EulerAncestralDiscreteScheduler", ""},
    {"heun", "HeunDiscreteScheduler", ""},
    {"dpm2", "KDPM2DiscreteScheduler", ""},
    {"dpm2_a", "KDPM2AncestralDiscreteScheduler", ""},
    {"lms", "LMSDiscreteScheduler", ""},
    {"dpmsolver++", "DPMSolverMultistepScheduler", "dpmsolver++"},
    {"sde-dpmsolver++", "DPMSolverMultistepScheduler", "sde-dpmsolver++"},
    {"unipc", "UniPCMultistepScheduler", ""},
};

// A kind, or a class name (which takes the config's algorithm_type, not the kind's).
const KindEntry* find_kind(const std::string& lowered, bool* by_class = nullptr) {
  if (by_class) *by_class = false;
  for (const KindEntry& entry : kKinds) {
    if (lowered == entry.kind) return &entry;
  }
  if (by_class) *by_class = true;
  for (const KindEntry& entry : kKinds) {
    if (lowered == schedulers::lowercase(entry.class_name)) return &entry;
  }
  return nullptr;
}

std::string kind_list() {
  std::string list;
  for (const KindEntry& entry : kKinds) list += (list.empty() ? "" : ", ") + std::string(entry.kind);
  return list;
}

}  // namespace

std::string scheduler_class_for_kind(const std::string& kind) {
  if (kind.empty()) return "";
  const KindEntry* entry = find_kind(schedulers::lowercase(kind));
  if (!entry) throw Error("unknown scheduler '" + kind + "': expected one of " + kind_list());
  return entry->class_name;
}

std::unique_ptr<Scheduler> make_scheduler(const Config& file_config, const std::string& kind,
                                          const SchedulerOptions& options) {
  const KindEntry* entry = nullptr;
  bool by_class = false;
  if (kind.empty()) {
    const std::string class_name = file_config.get_string("_class_name");
    entry = find_kind(schedulers::lowercase(class_name), &by_class);
    if (!entry)
      throw Error(file_config.path().string() + ": scheduler class '" + class_name + "' is not supported (" +
                  kind_list() + "; choose one with --sampler)");
  } else {
    entry = find_kind(schedulers::lowercase(kind), &by_class);
    if (!entry)
      throw Error("unknown scheduler '" + kind + "' for " + file_config.path().string() + ": expected one of " + kind_list());
  }
  // from_config(config, **overrides): the overrides replace the file's keys.
  nlohmann::json json = file_config.json();
  if (*entry->algorithm_type && !by_class) json["algorithm_type"] = entry->algorithm_type;
  const std::string class_name = entry->class_name;
  const bool sigma_options = class_name != "PNDMScheduler" && class_name != "DDIMScheduler" &&
                             class_name != "DDPMScheduler" && class_name != "LCMScheduler" &&
                             class_name != "EulerAncestralDiscreteScheduler";
  if (options.schedule != SigmaSchedule::Default) {
    if (!sigma_options)
      throw Error("schedule '" + schedule_name(options.schedule) + "' is not available for " + class_name +
                  " (diffusers has no sigma schedule option for it): use --schedule default");
    json["use_karras_sigmas"] = options.schedule == SigmaSchedule::Karras;
    json["use_exponential_sigmas"] = options.schedule == SigmaSchedule::Exponential;
    json["use_beta_sigmas"] = options.schedule == SigmaSchedule::Beta;
  }
  const Config config(json, file_config.path());
  // Only the file's keys are read; absent ones take the chosen class's defaults, as diffusers'
  // from_config(other.config) does (it drops the other class's defaults via _use_default_values).
  if (class_name == "PNDMScheduler") return schedulers::make_pndm(config);
  if (class_name == "DDIMScheduler") return schedulers::make_ddim(config, options);
  if (class_name == "DDPMScheduler") return schedulers::make_ddpm(config);
  if (class_name == "LCMScheduler") return schedulers::make_lcm(config);
  if (class_name == "EulerDiscreteScheduler") return schedulers::make_euler_discrete(config);
  if (class_name == "EulerAncestralDiscreteScheduler") return schedulers::make_euler_ancestral_discrete(config);
  if (class_name == "HeunDiscreteScheduler") return schedulers::make_heun_discrete(config);
  if (class_name == "KDPM2DiscreteScheduler") return schedulers::make_k_dpm_2_discrete(config);
  if (class_name == "KDPM2AncestralDiscreteScheduler") return schedulers::make_k_dpm_2_ancestral_discrete(config);
  if (class_name == "LMSDiscreteScheduler") return schedulers::make_lms_discrete(config);
  if (class_name == "DPMSolverMultistepScheduler") return schedulers::make_dpmsolver_multistep(config);
  return schedulers::make_unipc_multistep(config);
}

// ---- sampler names ----

namespace {

struct SamplerName {
  const char* name;         // as the user types it (compared lowercased)
  const char* kind;
  const char* web_ui_name;
  int schedule;             // -1: none implied, else a SigmaSchedule
  bool trailing;
};
constexpr int kNone = -1;
constexpr int kKarras = static_cast<int>(SigmaSchedule::Karras);
// The web UI's names (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py), its pre-1.9 composite
// "... Karras" forms, and stable-diffusion.cpp's --sampling-method names.
constexpr SamplerName kSamplers[] = {
    {"Euler a", "euler_a", "Euler a", kNone, false},
    {"Euler", "euler", "Euler", kNone, false},
    {"DPM++ 2M", "dpmsolver++", "DPM++ 2M", kNone, false},
    {"DPM++ 2M SDE", "sde-dpmsolver++", "DPM++ 2M SDE", kNone, false},
    {"Heun", "heun", "Heun", kNone, false},
    {"DPM2", "dpm2", "DPM2", kNone, false},
    {"DPM2 a", "dpm2_a", "DPM2 a", kNone, false},
    {"LMS", "lms", "LMS", kNone, false},
    {"UniPC", "unipc", "UniPC", kNone, false},
    {"LCM", "lcm", "LCM", kNone, false},
    {"DDIM", "ddim", "DDIM", kNone, false},
    {"PLMS", "pndm", "PLMS", kNone, false},
    {"DDPM", "ddpm", "DDPM", kNone, false},
    {"DPM++ 2M Karras", "dpmsolver++", "DPM++ 2M", kKarras, false},
    {"DPM++ 2M SDE Karras", "sde-dpmsolver++", "DPM++ 2M SDE", kKarras, false},
    {"DPM2 Karras", "dpm2", "DPM2", kKarras, false},
    {"DPM2 a Karras", "dpm2_a", "DPM2 a", kKarras, false},
    {"LMS Karras", "lms", "LMS", kKarras, false},
    {"euler_a", "euler_a", "Euler a", kNone, false},
    {"euler", "euler", "Euler", kNone, false},
    {"heun", "heun", "Heun", kNone, false},
    {"dpm2", "dpm2", "DPM2", kNone, false},
    {"dpm2_a", "dpm2_a", "DPM2 a", kNone, false},
    {"dpm++2m", "dpmsolver++", "DPM++ 2M", kNone, false},
    {"dpm++2m_sde", "sde-dpmsolver++", "DPM++ 2M SDE", kNone, false},
    {"lms", "lms", "LMS", kNone, false},
    {"lcm", "lcm", "LCM", kNone, false},
    {"ddim", "ddim", "DDIM", kNone, false},
    {"ddim_trailing", "ddim", "DDIM", kNone, true},
    {"unipc", "unipc", "UniPC", kNone, false},
    {"plms", "pndm", "PLMS", kNone, false},
    {"pndm", "pndm", "PLMS", kNone, false},
    {"ddpm", "ddpm", "DDPM", kNone, false},
};

}  // namespace

std::vector<std::string> sampler_names() {
  std::vector<std::string> names;
  for (const SamplerName& s : kSamplers) names.push_back(s.name);
  return names;
}

SamplerChoice resolve_sampler(const std::string& name) {
  const std::string lowered = schedulers::lowercase(name);
  for (const SamplerName& s : kSamplers) {
    if (schedulers::lowercase(s.name) != lowered) continue;
    SamplerChoice choice;
    choice.kind = s.kind;
    choice.web_ui_name = s.web_ui_name;
    if (s.schedule != kNone) choice.schedule = static_cast<SigmaSchedule>(s.schedule);
    choice.trailing = s.trailing;
    return choice;
  }
  std::string list;
  for (const SamplerName& s : kSamplers) list += (list.empty() ? "" : ", ") + std::string("\"") + s.name + "\"";
  throw Error("unknown sampler '" + name + "': expected one of " + list + " (any case)");
}

SigmaSchedule parse_schedule(const std::string& name) {
  const std::string lowered = schedulers::lowercase(name);
  if (lowered == "default" || lowered == "automatic" || lowered.empty()) return SigmaSchedule::Default;
  if (lowered == "karras") return SigmaSchedule::Karras;
  if (lowered == "exponential") return SigmaSchedule::Exponential;
  if (lowered == "beta") return SigmaSchedule::Beta;
  throw Error("unknown schedule '" + name + "': expected default, karras, exponential or beta");
}

std::string schedule_name(SigmaSchedule schedule) {
  switch (schedule) {
    case SigmaSchedule::Karras: return "karras";
    case SigmaSchedule::Exponential: return "exponential";
    case SigmaSchedule::Beta: return "beta";
    case SigmaSchedule::Default: break;
  }
  return "default";
}

std::string schedule_web_ui_name(SigmaSchedule schedule) {
  switch (schedule) {
    case SigmaSchedule::Karras: return "Karras";
    case SigmaSchedule::Exponential: return "Exponential";
    case SigmaSchedule::Beta: return "Beta";
    case SigmaSchedule::Default: break;
  }
  return "Automatic";
}

std::string web_ui_sampler_name(const std::string& class_name, const std::string& algorithm_type) {
  static const std::map<std::string, std::string> names = {
      {"PNDMScheduler", "PLMS"}, {"DDIMScheduler", "DDIM"}, {"DDPMScheduler", "DDPM"}, {"LCMScheduler", "LCM"},
      {"EulerDiscreteScheduler", "Euler"}, {"EulerAncestralDiscreteScheduler", "Euler a"},
      {"HeunDiscreteScheduler", "Heun"}, {"KDPM2DiscreteScheduler", "DPM2"},
      {"KDPM2AncestralDiscreteScheduler", "DPM2 a"}, {"LMSDiscreteScheduler", "LMS"},
      {"UniPCMultistepScheduler", "UniPC"}};
  if (class_name == "DPMSolverMultistepScheduler") return algorithm_type == "sde-dpmsolver++" ? "DPM++ 2M SDE" : "DPM++ 2M";
  auto found = names.find(class_name);
  return found == names.end() ? class_name : found->second;
}

}  // namespace taiyi
