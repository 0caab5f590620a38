// The worker behind `taiyi serve`; see include/taiyi/server/generation_service.h. The progress state
// mirrors the web UI's shared.state (modules/shared_state.py) and its /progress arithmetic (api.py
// progressapi).
#include "taiyi/server/generation_service.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "taiyi/jobs/job_runner.h"
#include "taiyi/pipelines/latent_preview.h"
#include "taiyi/utils/base64.h"
#include "taiyi/utils/device.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct GenerationService::Task {
  std::function<Json(Task&)> work;
  std::promise<Json> result;
  std::atomic<bool> cancelled{false};  // the client went away: dropped when queued, stopped when running
};

// shared.state: what /progress reports about the request running.
struct GenerationService::RunState {
  bool busy = false;
  int64_t job_count = 0, job_no = 0, sampling_step = 0, sampling_steps = 0;
  bool interrupted = false, skipped = false;
  std::string job_timestamp = "0";
  Clock::time_point started;
  std::vector<uint8_t> preview_png;  // the latest live preview
};

namespace {

bool is_model(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return fs::exists(path / "model_index.json", ec);
  const std::string ext = path.extension().string();
  return fs::is_regular_file(path, ec) && (ext == ".safetensors" || ext == ".ckpt" || ext == ".pt" || ext == ".pth");
}

std::string model_title(const fs::path& path) {
  fs::path p = path;
  if (p.filename().empty()) p = p.parent_path();  // "folder/"
  std::error_code ec;
  return fs::is_directory(p, ec) ? p.filename().string() : p.stem().string();
}

std::vector<ServeModel> list_models(const ServeOptions& options) {
  std::vector<ServeModel> models;
  if (!options.model.empty()) models.push_back({model_title(options.model), options.model});
  if (!options.models_dir.empty()) {
    std::error_code ec;
    if (!fs::is_directory(options.models_dir, ec)) throw Error(options.models_dir + ": --models-dir is not a folder");
    std::vector<fs::path> found;
    for (const auto& entry : fs::directory_iterator(options.models_dir, ec))
      if (is_model(entry.path())) found.push_back(entry.path());
    std::sort(found.begin(), found.end());
    for (const fs::path& p : found) {
      const std::string title = model_title(p);
      const bool listed = std::any_of(models.begin(), models.end(), [&](const ServeModel& m) { return m.title == title; });
      if (!listed) models.push_back({title, p});
    }
  }
  return models;
}

}  // namespace

GenerationService::GenerationService(ServeOptions options) : options_(std::move(options)), state_(new RunState) {
  models_ = list_models(options_);
  if (models_.empty()) throw Error("serve: no model: give -m MODEL or a --models-dir holding model folders or files");
  char scratch[] = "/tmp/taiyi-serve-XXXXXX";
  if (!mkdtemp(scratch)) throw Error("serve: cannot make a temporary folder in /tmp");
  scratch_ = scratch;
  settings_ = {{"sd_model_checkpoint", models_.front().title}, {"sd_checkpoint_hash", nullptr},
               {"CLIP_stop_at_last_layers", 1}, {"samples_format", "png"}, {"sd_vae", "Automatic"},
               {"show_progress_every_n_steps", options_.preview_every}, {"live_previews_enable", options_.preview_every > 0},
               {"eta_ddim", options_.pipeline.eta}, {"eta_ancestral", 1.0}, {"outdir_samples", options_.outdir},
               {"enable_pnginfo", true}};
  Pipeline& first = pipeline_for(models_.front().title);  // the first model loads now: its errors show at start
  previewer_ = std::make_unique<LatentPreviewer>(options_.taesd, first.device(), first.dtype());
  worker_ = std::thread([this] { worker_loop(); });
}

void GenerationService::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    state_->interrupted = true;
  }
  wake_.notify_all();
}

GenerationService::~GenerationService() {
  shutdown();
  if (worker_.joinable()) worker_.join();
  std::error_code ignored;
  fs::remove_all(scratch_, ignored);
}

const ServeModel* GenerationService::find_model(const std::string& name) const {
  // CheckpointInfo's aliases that taiyi has: the title (= model name), the file name, "title [hash]".
  for (const ServeModel& m : models_)
    if (m.title == name || m.path.filename().string() == name || name.rfind(m.title + " [", 0) == 0) return &m;
  return nullptr;
}

Pipeline& GenerationService::pipeline_for(const std::string& title) {
  if (pipe_ && loaded_ == title) return *pipe_;
  const ServeModel* model;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    model = find_model(title);
    if (!model) throw ApiError(422, "RuntimeError", "model '" + title + "' not found (GET /sdapi/v1/sd-models lists them)");
  }
  pipe_.reset();  // one model in memory at a time, as the web UI unloads before it loads
  loaded_.clear();
  pipe_ = std::make_unique<Pipeline>(Pipeline::load(model->path, options_.pipeline));
  loaded_ = model->title;
  std::lock_guard<std::mutex> lock(mutex_);
  device_ = pipe_->device();
  return *pipe_;
}

std::shared_ptr<GenerationService::Task> GenerationService::submit(std::function<Json(Task&)> work) {
  auto task = std::make_shared<Task>();
  task->work = std::move(work);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw ApiError(503, "HTTPException", "the server is stopping");
    if (queue_.size() >= options_.queue)
      throw ApiError(503, "HTTPException", "the queue is full (" + std::to_string(options_.queue) + " requests waiting): retry later");
    queue_.push_back(task);
  }
  wake_.notify_all();
  return task;
}

Json GenerationService::wait(const std::shared_ptr<Task>& task, const std::function<bool()>& client_gone) {
  std::future<Json> result = task->result.get_future();
  while (result.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready)
    if (!task->cancelled && client_gone && client_gone()) task->cancelled = true;
  return result.get();
}

void GenerationService::worker_loop() {
  for (;;) {
    std::shared_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) {
        for (auto& t : queue_) t->result.set_exception(std::make_exception_ptr(ApiError(503, "HTTPException", "the server is stopping")));
        queue_.clear();
        return;
      }
      task = queue_.front();
      queue_.pop_front();
    }
    if (task->cancelled) {  // its client left while it waited
      task->result.set_exception(std::make_exception_ptr(ApiError(499, "ClientClosedRequest", "the client went away")));
      continue;
    }
    try {
      c10::InferenceMode inference;
      task->result.set_value(task->work(*task));
    } catch (...) {
      task->result.set_exception(std::current_exception());
    }
    std::lock_guard<std::mutex> lock(mutex_);
    *state_ = RunState{};
  }
}

ProgressCallback GenerationService::step_callback(Task& task) {
  return [this, &task](int64_t step, int64_t total) {
    std::lock_guard<std::mutex> lock(mutex_);
    state_->sampling_step = step;
    state_->sampling_steps = total;
    if (state_->interrupted || state_->skipped || task.cancelled || stopping_) throw JobCancelled();
  };
}

Json GenerationService::generate(ApiGeneration generation, const std::function<bool()>& client_gone) {
  auto shared = std::make_shared<ApiGeneration>(std::move(generation));
  return wait(submit([this, shared](Task& task) { return run_generation(task, *shared); }), client_gone);
}

namespace {

// An uploaded image written where the job library reads images from: a file of its own, checked first
// (a bad image is the request's 422, named by its field). The mask inverted when asked.
fs::path write_upload(const fs::path& folder, uint64_t number, const std::string& bytes, const std::string& field,
                      bool invert) {
  PixelImage image;
  try {
    image = decode_image(bytes, field, invert ? 1 : 3);
  } catch (const Error& e) {
    throw ApiError(422, "RequestValidationError", e.what());
  }
  // The file's name shows in the parameters ("Mask: mask.png"): a request's own folder keeps it plain.
  const fs::path dir = folder / std::to_string(number);
  fs::create_directories(dir);
  const bool jpeg = !bytes.empty() && static_cast<unsigned char>(bytes[0]) == 0xFF;
  const fs::path file = dir / ((field == "mask" ? "mask" : "init") + std::string(jpeg && !invert ? ".jpg" : ".png"));
  if (invert) {
    std::vector<uint8_t> rgb(image.pixels.size() * 3);
    for (size_t i = 0; i < image.pixels.size(); ++i)
      rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = static_cast<uint8_t>(255 - image.pixels[i]);
    write_file_atomically(file, encode_png(rgb.data(), static_cast<int>(image.width), static_cast<int>(image.height), {}));
  } else {
    write_file_atomically(file, bytes);
  }
  return file;
}

struct RemoveOnExit {
  std::vector<fs::path> files;
  ~RemoveOnExit() {
    std::error_code ignored;
    for (const fs::path& f : files) fs::remove(f, ignored);
    if (!files.empty()) fs::remove(files.front().parent_path(), ignored);
  }
};

// The request's init image and mask as files of their own, for the job library to read.
void add_uploads(const ApiGeneration& g, const fs::path& scratch, uint64_t number, GenerationRequest& request,
                 RemoveOnExit& uploads) {
  uploads.files.push_back(write_upload(scratch, number, g.init_image, "init_images", false));
  request.init_image = uploads.files.back().string();
  if (!g.mask.empty()) {
    uploads.files.push_back(write_upload(scratch, number, g.mask, "mask", g.mask_invert));
    request.mask = uploads.files.back().string();
  }
}

// save_images' file under --outdir: a running number and the seed, as the web UI names its samples.
std::string saved_name(const std::string& outdir, uint64_t number, uint64_t seed) {
  char name[64];
  std::snprintf(name, sizeof name, "%05llu-%llu.png", static_cast<unsigned long long>(number), static_cast<unsigned long long>(seed));
  return (fs::path(outdir) / name).string();
}

}  // namespace

Json GenerationService::run_generation(Task& task, const ApiGeneration& g) {
  std::string title;
  int64_t clip_skip;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    title = g.model.empty() ? settings_["sd_model_checkpoint"].get<std::string>() : g.model;
    clip_skip = settings_["CLIP_stop_at_last_layers"].get<int64_t>();
    *state_ = RunState{};
    state_->busy = true;
    state_->job_count = g.n_iter;
    state_->job_timestamp = job_timestamp_now();
    state_->started = Clock::now();
  }
  Pipeline& pipe = pipeline_for(title);
  GenerationRequest request = g.request;
  if (!g.clip_skip_given) request.clip_skip = clip_skip;
  RemoveOnExit uploads;
  if (g.img2img) add_uploads(g, scratch_, uploads_++, request, uploads);
  // Pipeline::validate's checks (sizes, steps, scale, strength, memory, prompt syntax); not the CLI's
  // check_job_spec, which refuses the empty prompt the web UI accepts.
  try {
    pipe.validate(request);
  } catch (const Error& e) {
    throw ApiError(422, "RequestValidationError", e.what());
  }
  std::vector<std::string> pngs, infotexts;
  std::vector<uint64_t> seeds;
  JobEvents events;
  events.image = [&](const JobImage& done) {
    pngs.push_back(std::string(done.png.begin(), done.png.end()));
    infotexts.push_back(done.parameters);
    seeds.push_back(done.image.seed);
  };
  events.batch_progress = [&](const std::string&) { return step_callback(task); };
  const int64_t every = options_.preview_every;
  ScopedLatentsObserver previews(every <= 0 ? LatentsObserver{} : LatentsObserver([this, every](const torch::Tensor& latents, int64_t step, int64_t) {
    if (step % every != 0) return;
    const PixelImage preview = previewer_->render(latents);
    std::vector<uint8_t> png = encode_png(preview.pixels.data(), static_cast<int>(preview.width), static_cast<int>(preview.height), {});
    std::lock_guard<std::mutex> lock(mutex_);
    state_->preview_png = std::move(png);
  }));
  JobRunner runner(pipe);
  ApiImagesInfo info;
  for (int64_t k = 0; k < g.n_iter; ++k) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_->interrupted || task.cancelled) break;
      state_->job_no = k;
      state_->skipped = false;
      state_->sampling_step = 0;
    }
    Job job;
    job.batch_size = g.batch_size;
    JobItem item;
    item.request = request;
    item.request.seed = request.seed + static_cast<uint64_t>(k * g.batch_size);
    item.request.count = g.batch_size;
    if (g.save_images && !options_.outdir.empty())
      for (int64_t i = 0; i < g.batch_size; ++i)
        item.outputs.push_back(saved_name(options_.outdir, saved_++, item.request.seed + static_cast<uint64_t>(i)));
    job.base_seed = item.request.seed;
    job.items.push_back(std::move(item));
    runner.run(job, events);  // a cancelled batch ends the job with what it made
  }
  const GenerationRequest completed = pipe.complete(request);
  info.infotexts = infotexts;
  info.seeds = seeds;
  info.sampler_name = pipe.sampler_setting(completed).web_ui_name;
  info.model_name = pipe.model_name();
  info.width = completed.width;
  info.height = completed.height;
  info.clip_skip = request.clip_skip;
  info.inpainting_conditioning = !request.mask.empty() && pipe.inpainting_unet();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    info.job_timestamp = state_->job_timestamp;
  }
  Json images = Json::array();
  if (g.send_images)
    for (const std::string& png : pngs) images.push_back(base64_encode(png));
  return {{"images", images}, {"parameters", g.parameters}, {"info", api_info(g, info).dump()}};
}

Json GenerationService::progress(bool skip_current_image) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const RunState& s = *state_;
  Json state = {{"skipped", s.skipped}, {"interrupted", s.interrupted}, {"stopping_generation", false}, {"job", ""},
                {"job_count", s.busy ? s.job_count : 0}, {"job_timestamp", s.job_timestamp}, {"job_no", s.job_no},
                {"sampling_step", s.sampling_step}, {"sampling_steps", s.sampling_steps}};
  if (!s.busy) return {{"progress", 0}, {"eta_relative", 0}, {"state", state}, {"current_image", nullptr}, {"textinfo", nullptr},
                       {"current_task", nullptr}};
  // progressapi: 0.01 + job_no / job_count + (1 / job_count) * sampling_step / sampling_steps, at most 1.
  double progress = 0.01 + static_cast<double>(s.job_no) / static_cast<double>(s.job_count);
  if (s.sampling_steps > 0)
    progress += 1.0 / static_cast<double>(s.job_count) * static_cast<double>(s.sampling_step) / static_cast<double>(s.sampling_steps);
  progress = std::min(progress, 1.0);
  const double elapsed = std::chrono::duration<double>(Clock::now() - s.started).count();
  const double eta = elapsed / progress - elapsed;
  Json image = nullptr;
  if (!skip_current_image && !s.preview_png.empty())
    image = base64_encode(std::string(s.preview_png.begin(), s.preview_png.end()));
  return {{"progress", progress}, {"eta_relative", eta}, {"state", state}, {"current_image", image},
          {"textinfo", nullptr}, {"current_task", nullptr}};
}

void GenerationService::interrupt() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_->busy) state_->interrupted = true;
}

void GenerationService::skip() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_->busy) state_->skipped = true;
}

Json GenerationService::options() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return settings_;
}

void GenerationService::set_options(const Json& body, const std::function<bool()>& client_gone) {
  if (!body.is_object()) throw ApiError(422, "RequestValidationError", "the body must be a JSON object of settings");
  if (body.size() > 2000) throw ApiError(422, "RequestValidationError", "at most 2000 settings at once");
  if (body.contains("CLIP_stop_at_last_layers")) {
    const Json& v = body["CLIP_stop_at_last_layers"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 12)
      throw ApiError(422, "RequestValidationError", "CLIP_stop_at_last_layers: an integer from 1 to 12");
  }
  std::string model;
  if (body.contains("sd_model_checkpoint") && body["sd_model_checkpoint"].is_string()) {
    std::lock_guard<std::mutex> lock(mutex_);
    const ServeModel* m = find_model(body["sd_model_checkpoint"].get<std::string>());
    if (!m) throw ApiError(422, "RuntimeError", "model '" + body["sd_model_checkpoint"].get<std::string>() + "' not found");
    model = m->title;
  }
  if (!model.empty()) {  // loaded in turn, under the queue, as the web UI reloads under its queue lock
    wait(submit([this, model](Task&) {
           pipeline_for(model);
           return Json();
         }),
         client_gone);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [key, value] : body.items()) settings_[key] = value;
  if (!model.empty()) settings_["sd_model_checkpoint"] = model;
}

Json GenerationService::models() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Json list = Json::array();
  for (const ServeModel& m : models_)
    list.push_back({{"title", m.title}, {"model_name", m.title}, {"hash", nullptr}, {"sha256", nullptr},
                    {"filename", m.path.filename().string()}, {"config", nullptr}});
  return list;
}

void GenerationService::refresh_models() {
  std::vector<ServeModel> models = list_models(options_);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!models.empty()) models_ = std::move(models);
}

Json GenerationService::loras() const {
  Json list = Json::array();
  const std::string& dir = options_.pipeline.lora_dir;
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return list;
  size_t seen = 0;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator() && seen < 10000; it.increment(ec), ++seen) {
    if (ec) break;
    if (it->path().extension() != ".safetensors") continue;
    const std::string name = it->path().stem().string();
    list.push_back({{"name", name}, {"alias", name}, {"path", fs::relative(it->path(), dir, ec).string()}, {"metadata", Json::object()}});
  }
  return list;
}

Json GenerationService::embeddings() const {
  Json loaded = Json::object();
  const std::string& dir = options_.pipeline.embeddings_dir;
  std::error_code ec;
  if (!dir.empty() && fs::is_directory(dir, ec))
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".safetensors")
        loaded[entry.path().stem().string()] = {{"step", nullptr}, {"sd_checkpoint", nullptr}, {"sd_checkpoint_name", nullptr},
                                               {"shape", nullptr}, {"vectors", nullptr}};
  return {{"loaded", loaded}, {"skipped", Json::object()}};
}

Json GenerationService::memory() const {
  Json ram = Json::object();
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  uint64_t total = 0, available = 0;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemTotal:") total = value * 1024;
    if (key == "MemAvailable:") available = value * 1024;
  }
  ram = {{"free", available}, {"used", total - available}, {"total", total}};
  Json cuda = {{"error", "unavailable"}};
  torch::Device device = torch::kCPU;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    device = device_;
  }
  if (device.is_cuda())
    if (const auto free = available_memory(device)) cuda = {{"system", {{"free", *free}}}};
  return {{"ram", ram}, {"cuda", cuda}};
}

size_t GenerationService::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queue_.size();
}

}  // namespace taiyi
