// What `taiyi serve` does behind its HTTP routes: one worker thread owns the model and runs requests one
// at a time from a bounded FIFO queue (the web UI's queue_lock, with a length limit), through the job
// library, so that a request gives the CLI's PNG byte for byte; the state that /progress reports (with a
// live preview every few steps); interrupt and skip between steps; the models of --models-dir, loaded one
// at a time on demand; the options clients read and post back. Thread-safe: the HTTP threads call it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/pipelines/latent_preview.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "taiyi/server/a1111_api.h"

namespace taiyi {

struct ServeOptions {
  std::string model;        // -m: loaded at start ("" : the first of models_dir)
  std::string models_dir;   // --models-dir: diffusers folders and single files directly under it
  PipelineOptions pipeline; // device, precision, LoRA and embedding folders, model source options
  size_t queue = 16;        // requests waiting beyond the running one; more are answered 503
  std::string outdir;       // where save_images writes ("" : nowhere)
  int64_t preview_every = 5;  // a live preview every N steps (0: none)
  std::string taesd;          // TAESD weights for the previews ("" : the cheap approximation)
};

// A model a client can select (GET /sdapi/v1/sd-models).
struct ServeModel {
  std::string title;  // the folder's name or the file's stem, as sd-models lists it
  std::filesystem::path path;
};

class GenerationService {
 public:
  explicit GenerationService(ServeOptions options);  // loads the first model; Error when there is none
  ~GenerationService();
  GenerationService(const GenerationService&) = delete;
  GenerationService& operator=(const GenerationService&) = delete;

  // Runs a txt2img/img2img request and returns the web UI's response object. `client_gone` is polled
  // while the request waits or runs: true cancels it. ApiError 503 when the queue is full.
  nlohmann::json generate(ApiGeneration generation, const std::function<bool()>& client_gone);
  nlohmann::json progress(bool skip_current_image) const;
  void interrupt();
  void skip();
  nlohmann::json options() const;
  // POST /options: a changed sd_model_checkpoint is loaded (queued like a request); other keys are kept.
  void set_options(const nlohmann::json& body, const std::function<bool()>& client_gone);
  nlohmann::json models() const;
  void refresh_models();
  nlohmann::json loras() const;
  nlohmann::json embeddings() const;
  nlohmann::json memory() const;
  size_t queued() const;
  // Stops taking requests: those waiting get 503, the running one stops at its next step. The HTTP
  // threads waiting on them can then finish, and the server stop.
  void shutdown();

 private:
  struct Task;
  struct RunState;
  std::shared_ptr<Task> submit(std::function<nlohmann::json(Task&)> work);
  nlohmann::json wait(const std::shared_ptr<Task>& task, const std::function<bool()>& client_gone);
  void worker_loop();
  Pipeline& pipeline_for(const std::string& title);  // worker thread only
  const ServeModel* find_model(const std::string& name) const;
  nlohmann::json run_generation(Task& task, const ApiGeneration& generation);
  ProgressCallback step_callback(Task& task);

  ServeOptions options_;
  std::vector<ServeModel> models_;
  nlohmann::json settings_;              // GET /options
  std::unique_ptr<Pipeline> pipe_;       // the loaded model (worker thread)
  torch::Device device_{torch::kCPU};    // its device (for /memory)
  std::unique_ptr<LatentPreviewer> previewer_;  // on that device (worker thread)
  std::string loaded_;                   // its title
  std::filesystem::path scratch_;        // uploaded images, one file each while their request runs
  std::atomic<uint64_t> uploads_{0};
  std::atomic<uint64_t> saved_{0};

  mutable std::mutex mutex_;             // guards the queue, settings_, models_ and the run state
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Task>> queue_;
  std::unique_ptr<RunState> state_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace taiyi
