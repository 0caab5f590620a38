// make_scheduler: the scheduler a config names, or another class built from it as diffusers'
// from_config does (one file per scheduler beside this one, named as diffusers' scheduling_*.py).
#include "taiyi/scheduler.h"

#include "schedulers/scheduling_utils.h"
#include "taiyi/error.h"

namespace taiyi {

std::unique_ptr<Scheduler> make_scheduler(const Config& config, const std::string& kind,
                                          const SchedulerOptions& options) {
  std::string chosen = schedulers::lowercase(kind);
  if (chosen.empty()) {
    const std::string class_name = config.get_string("_class_name");
    chosen = schedulers::lowercase(class_name);
    if (chosen != "pndmscheduler" && chosen != "ddimscheduler")
      throw Error(config.path().string() + ": scheduler class '" + class_name +
                  "' is not supported (PNDMScheduler or DDIMScheduler; choose one with the scheduler option)");
  }
  // Only the file's keys are read; absent ones take the chosen class's defaults, as diffusers'
  // from_config(other.config) does (it drops the other class's defaults via _use_default_values).
  if (chosen == "pndm" || chosen == "pndmscheduler") return schedulers::make_pndm(config);
  if (chosen == "ddim" || chosen == "ddimscheduler") return schedulers::make_ddim(config, options);
  throw Error("unknown scheduler '" + kind + "' for " + config.path().string() + ": expected pndm or ddim");
}

}  // namespace taiyi
