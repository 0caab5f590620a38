// The web UI's API requests and responses as data; see include/taiyi/server/a1111_api.h.
#include "taiyi/server/a1111_api.h"

#include <chrono>
#include <cmath>
#include <ctime>

#include "taiyi/jobs/infotext.h"
#include "taiyi/schedulers/scheduler.h"
#include "taiyi/utils/base64.h"
#include "taiyi/utils/error.h"

namespace taiyi {

using Json = nlohmann::json;

Json api_error_body(const ApiError& error) {
  Json detail = error.details.is_null() ? Json(error.what()) : error.details;
  return {{"error", error.kind}, {"detail", detail}, {"body", ""}, {"errors", error.what()}};
}

namespace {

// StableDiffusionProcessingTxt2Img's fields and the API's own, with their defaults (modules/processing.py,
// modules/api/models.py): the `parameters` echo starts from these.
Json txt2img_defaults() {
  return {{"prompt", ""}, {"negative_prompt", ""}, {"styles", nullptr}, {"seed", -1}, {"subseed", -1},
          {"subseed_strength", 0}, {"seed_resize_from_h", -1}, {"seed_resize_from_w", -1}, {"sampler_name", nullptr},
          {"scheduler", nullptr}, {"batch_size", 1}, {"n_iter", 1}, {"steps", 50}, {"cfg_scale", 7.0}, {"width", 512},
          {"height", 512}, {"restore_faces", nullptr}, {"tiling", nullptr}, {"do_not_save_samples", false},
          {"do_not_save_grid", false}, {"eta", nullptr}, {"denoising_strength", nullptr}, {"s_min_uncond", nullptr},
          {"s_churn", nullptr}, {"s_tmax", nullptr}, {"s_tmin", nullptr}, {"s_noise", nullptr},
          {"override_settings", nullptr}, {"override_settings_restore_afterwards", true},
          {"refiner_checkpoint", nullptr}, {"refiner_switch_at", nullptr}, {"disable_extra_networks", false},
          {"firstpass_image", nullptr}, {"comments", nullptr}, {"enable_hr", false}, {"firstphase_width", 0},
          {"firstphase_height", 0}, {"hr_scale", 2.0}, {"hr_upscaler", nullptr}, {"hr_second_pass_steps", 0},
          {"hr_resize_x", 0}, {"hr_resize_y", 0}, {"hr_checkpoint_name", nullptr}, {"hr_sampler_name", nullptr},
          {"hr_scheduler", nullptr}, {"hr_prompt", ""}, {"hr_negative_prompt", ""}, {"force_task_id", nullptr},
          {"sampler_index", "Euler"}, {"script_name", nullptr}, {"script_args", Json::array()},
          {"send_images", true}, {"save_images", false}, {"alwayson_scripts", Json::object()}, {"infotext", nullptr}};
}

Json img2img_defaults() {
  Json d = txt2img_defaults();
  for (const char* hires : {"enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
                            "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
                            "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "firstpass_image"})
    d.erase(hires);
  d.update({{"init_images", nullptr}, {"resize_mode", 0}, {"image_cfg_scale", nullptr}, {"mask", nullptr},
            {"mask_blur_x", 4}, {"mask_blur_y", 4}, {"mask_blur", nullptr}, {"mask_round", true},
            {"inpainting_fill", 0}, {"inpaint_full_res", true}, {"inpaint_full_res_padding", 0},
            {"inpainting_mask_invert", 0}, {"initial_noise_multiplier", nullptr}, {"latent_mask", nullptr},
            {"include_init_images", false}, {"denoising_strength", 0.75}});
  return d;
}

[[noreturn]] void type_error(const std::string& field, const std::string& msg, const std::string& type) {
  throw ApiError(422, "RequestValidationError", field + ": " + msg,
                 Json::array({{{"loc", Json::array({"body", field})}, {"msg", msg}, {"type", type}}}));
}

[[noreturn]] void value_error(const std::string& field, const std::string& msg) {
  type_error(field, msg, "value_error");
}

// pydantic v1's coercions: an int takes integers, integral floats and numeric strings; a float numbers
// and numeric strings; a str strings and numbers; a bool booleans, 0/1 and "true"/"false"-like strings.
int64_t as_int(const Json& v, const std::string& field) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && std::isfinite(v.get<double>()) && std::abs(v.get<double>()) < 9e18)
    return static_cast<int64_t>(v.get<double>());
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    size_t used = 0;
    try {
      const long long parsed = std::stoll(s, &used);
      if (used == s.size()) return parsed;
    } catch (const std::exception&) {
    }
  }
  type_error(field, "value is not a valid integer", "type_error.integer");
}

double as_float(const Json& v, const std::string& field) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    size_t used = 0;
    try {
      const double parsed = std::stod(s, &used);
      if (used == s.size()) return parsed;
    } catch (const std::exception&) {
    }
  }
  type_error(field, "value is not a valid float", "type_error.float");
}

std::string as_string(const Json& v, const std::string& field) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_float()) return format_number(v.get<double>());
  type_error(field, "str type expected", "type_error.str");
}

bool as_bool(const Json& v, const std::string& field) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)) return v.get<int64_t>() == 1;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    for (const char* yes : {"1", "on", "t", "true", "y", "yes"})
      if (s == yes) return true;
    for (const char* no : {"0", "off", "f", "false", "n", "no"})
      if (s == no) return false;
  }
  type_error(field, "value could not be parsed to a boolean", "type_error.bool");
}

// The web UI's sampler names taiyi runs: those --sampler accepts that are their own web UI name.
std::vector<std::string> web_ui_samplers() {
  std::vector<std::string> names;
  for (const std::string& name : sampler_names())
    if (resolve_sampler(name).web_ui_name == name) names.push_back(name);
  return names;
}

// get_sampler_and_scheduler: the name (or sampler_index), a trailing schedule label split off; an unknown
// name falls back to the web UI's first sampler, as all_samplers_map.get(name, default_sampler) does.
void read_sampler(const Json& body, GenerationRequest& r) {
  std::string name;
  if (body.contains("sampler_name") && !body["sampler_name"].is_null()) name = as_string(body["sampler_name"], "sampler_name");
  else if (body.contains("sampler_index") && !body["sampler_index"].is_null()) name = as_string(body["sampler_index"], "sampler_index");
  else name = "Euler";
  std::string schedule;
  if (body.contains("scheduler") && !body["scheduler"].is_null()) schedule = as_string(body["scheduler"], "scheduler");
  try {
    const SamplerChoice choice = resolve_sampler(name);
    r.sampler = choice.web_ui_name;
    if (choice.schedule && (schedule.empty() || schedule == "automatic" || schedule == "Automatic"))
      schedule = schedule_name(*choice.schedule);
  } catch (const Error&) {
    r.sampler = "DPM++ 2M";
  }
  if (schedule.empty() || schedule == "automatic" || schedule == "Automatic") {
    r.schedule = "";
    return;
  }
  try {
    r.schedule = schedule_name(parse_schedule(schedule));
  } catch (const Error&) {
    value_error("scheduler", "'" + schedule + "' is not a schedule taiyi runs (automatic, karras, exponential, beta)");
  }
}

void read_override_settings(const Json& body, ApiGeneration& g) {
  if (!body.contains("override_settings") || body["override_settings"].is_null()) return;
  const Json& o = body["override_settings"];
  if (!o.is_object()) type_error("override_settings", "value is not a valid dict", "type_error.dict");
  if (o.contains("sd_model_checkpoint") && !o["sd_model_checkpoint"].is_null())
    g.model = as_string(o["sd_model_checkpoint"], "override_settings.sd_model_checkpoint");
  if (o.contains("CLIP_stop_at_last_layers") && !o["CLIP_stop_at_last_layers"].is_null()) {
    g.request.clip_skip = as_int(o["CLIP_stop_at_last_layers"], "override_settings.CLIP_stop_at_last_layers");
    g.clip_skip_given = true;
  }
}

// The fields whose type is a list or a dict in the web UI's models: a value of another type is a 422
// there too, though taiyi does not use them.
void check_structured_fields(const Json& p) {
  for (const char* list : {"styles", "script_args", "init_images"}) {
    if (!p.contains(list) || p[list].is_null()) continue;
    if (!p[list].is_array()) type_error(list, "value is not a valid list", "type_error.list");
  }
  if (p.contains("styles") && p["styles"].is_array())
    for (const Json& style : p["styles"]) as_string(style, "styles");
  for (const char* dict : {"alwayson_scripts", "comments"})
    if (p.contains(dict) && !p[dict].is_null() && !p[dict].is_object())
      type_error(dict, "value is not a valid dict", "type_error.dict");
}

// txt2img's hires fix (enable_hr): hr_scale 2, hr_upscaler "Latent" (latent_upscale_default_mode), the
// model's denoising_strength 0.75, hr_second_pass_steps 0 (= steps), hr_sampler_name (the first pass's).
void read_hires(const Json& p, GenerationRequest& r) {
  if (!p.contains("enable_hr") || p["enable_hr"].is_null() || !as_bool(p["enable_hr"], "enable_hr")) return;
  auto present = [&](const char* key) { return p.contains(key) && !p[key].is_null(); };
  r.hires_scale = present("hr_scale") ? as_float(p["hr_scale"], "hr_scale") : 2.0;
  r.hires_width = present("hr_resize_x") ? as_int(p["hr_resize_x"], "hr_resize_x") : 0;
  r.hires_height = present("hr_resize_y") ? as_int(p["hr_resize_y"], "hr_resize_y") : 0;
  r.hires_upscaler = present("hr_upscaler") ? as_string(p["hr_upscaler"], "hr_upscaler") : "Latent";
  r.hires_steps = present("hr_second_pass_steps") ? as_int(p["hr_second_pass_steps"], "hr_second_pass_steps") : 0;
  r.hires_strength = present("denoising_strength") ? as_float(p["denoising_strength"], "denoising_strength") : 0.75;
  if (present("hr_sampler_name")) {
    const std::string name = as_string(p["hr_sampler_name"], "hr_sampler_name");
    if (name != "Use same sampler") r.hires_sampler = name;
  }
  // The web UI turns the fix off when the target is the first pass's size.
  const bool same = r.hires_width == 0 && r.hires_height == 0 ? r.hires_scale == 1.0
                                                             : r.hires_width == r.width && r.hires_height == r.height;
  if (same) r.hires_scale = 0, r.hires_width = r.hires_height = 0;
}

void read_img2img(const Json& body, ApiGeneration& g) {
  if (!body.contains("init_images") || body["init_images"].is_null() || body["init_images"].empty())
    throw ApiError(404, "HTTPException", "Init image not found");
  g.init_image = decode_image_field(as_string(body["init_images"][0], "init_images"), "init_images");
  if (body.contains("mask") && !body["mask"].is_null()) g.mask = decode_image_field(as_string(body["mask"], "mask"), "mask");
  if (body.contains("inpainting_mask_invert") && !body["inpainting_mask_invert"].is_null())
    g.mask_invert = as_int(body["inpainting_mask_invert"], "inpainting_mask_invert") != 0;
  if (body.contains("denoising_strength") && !body["denoising_strength"].is_null())
    g.request.strength = as_float(body["denoising_strength"], "denoising_strength");
}

}  // namespace

ApiGeneration parse_generation(const Json& body, bool img2img, uint64_t random_seed) {
  if (!body.is_object()) throw ApiError(422, "RequestValidationError", "the body must be a JSON object");
  ApiGeneration g;
  g.img2img = img2img;
  g.parameters = img2img ? img2img_defaults() : txt2img_defaults();
  for (auto& [key, value] : g.parameters.items())
    if (body.contains(key)) value = body[key];
  const Json& p = g.parameters;
  GenerationRequest& r = g.request;
  auto present = [&](const char* key) { return !p[key].is_null(); };
  r.prompt = present("prompt") ? as_string(p["prompt"], "prompt") : "";
  r.negative_prompt = present("negative_prompt") ? as_string(p["negative_prompt"], "negative_prompt") : "";
  r.steps = present("steps") ? as_int(p["steps"], "steps") : 50;
  r.cfg_scale = present("cfg_scale") ? as_float(p["cfg_scale"], "cfg_scale") : 7.0;
  r.width = present("width") ? as_int(p["width"], "width") : 512;
  r.height = present("height") ? as_int(p["height"], "height") : 512;
  g.batch_size = present("batch_size") ? as_int(p["batch_size"], "batch_size") : 1;
  g.n_iter = present("n_iter") ? as_int(p["n_iter"], "n_iter") : 1;
  if (g.batch_size < 1 || g.batch_size > 64) value_error("batch_size", "must be between 1 and 64");
  if (g.n_iter < 1 || g.n_iter > 1024) value_error("n_iter", "must be between 1 and 1024");
  r.count = g.batch_size;
  // processing.get_fixed_seed: -1 (or none) is random.
  const int64_t seed = present("seed") ? as_int(p["seed"], "seed") : -1;
  if (seed < -1 || seed > 4294967295LL) value_error("seed", "must be -1 (random) or between 0 and 4294967295");
  r.seed = seed == -1 ? random_seed : static_cast<uint64_t>(seed);
  if (present("subseed_strength") && as_float(p["subseed_strength"], "subseed_strength") != 0.0)
    value_error("subseed_strength", "variation seeds are not supported by taiyi: must be 0");
  if (present("send_images")) g.send_images = as_bool(p["send_images"], "send_images");
  if (present("save_images")) g.save_images = as_bool(p["save_images"], "save_images");
  check_structured_fields(p);
  read_sampler(p, r);
  read_override_settings(p, g);
  if (img2img) read_img2img(p, g);
  else read_hires(p, r);
  // The echo as the web UI gives it: the images are not sent back (unless include_init_images).
  if (img2img) g.parameters["init_images"] = nullptr, g.parameters["mask"] = nullptr;
  return g;
}

Json api_samplers() {
  Json list = Json::array();
  for (const std::string& name : web_ui_samplers()) {
    Json aliases = Json::array();
    for (const std::string& alias : sampler_names()) {
      const SamplerChoice c = resolve_sampler(alias);
      if (alias != name && c.web_ui_name == name && !c.schedule && !c.trailing) aliases.push_back(alias);
    }
    list.push_back({{"name", name}, {"aliases", aliases}, {"options", Json::object()}});
  }
  return list;
}

Json api_schedulers() {
  Json list = Json::array();
  list.push_back({{"name", "automatic"}, {"label", "Automatic"}, {"aliases", nullptr}, {"default_rho", -1},
                  {"need_inner_model", false}});
  for (SigmaSchedule s : {SigmaSchedule::Karras, SigmaSchedule::Exponential, SigmaSchedule::Beta})
    list.push_back({{"name", schedule_name(s)}, {"label", schedule_web_ui_name(s)}, {"aliases", nullptr},
                    {"default_rho", s == SigmaSchedule::Karras ? 7.0 : -1.0}, {"need_inner_model", false}});
  return list;
}

std::string job_timestamp_now() {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", std::localtime(&now));
  return stamp;
}

Json api_info(const ApiGeneration& g, const ApiImagesInfo& images) {
  const GenerationRequest& r = g.request;
  const size_t n = images.seeds.size();
  const uint64_t first_seed = n ? images.seeds.front() : r.seed;
  Json seeds = Json::array();
  for (uint64_t s : images.seeds) seeds.push_back(s);
  return {{"prompt", r.prompt}, {"all_prompts", Json(std::vector<std::string>(n, r.prompt))},
          {"negative_prompt", r.negative_prompt},
          {"all_negative_prompts", Json(std::vector<std::string>(n, r.negative_prompt))}, {"seed", first_seed},
          {"all_seeds", seeds}, {"subseed", first_seed}, {"all_subseeds", seeds}, {"subseed_strength", 0},
          {"width", images.width}, {"height", images.height}, {"sampler_name", images.sampler_name},
          {"cfg_scale", r.cfg_scale}, {"steps", r.steps}, {"batch_size", g.batch_size}, {"restore_faces", false},
          {"face_restoration_model", nullptr}, {"sd_model_name", images.model_name},
          {"sd_model_hash", images.model_hash.empty() ? Json(nullptr) : Json(images.model_hash)},
          {"sd_vae_name", nullptr}, {"sd_vae_hash", nullptr}, {"seed_resize_from_w", -1}, {"seed_resize_from_h", -1},
          {"denoising_strength", g.img2img ? Json(r.strength) : g.parameters["denoising_strength"]},
          {"extra_generation_params", Json::object()}, {"index_of_first_image", 0}, {"infotexts", images.infotexts},
          {"styles", Json::array()}, {"job_timestamp", images.job_timestamp}, {"clip_skip", images.clip_skip},
          {"is_using_inpainting_conditioning", images.inpainting_conditioning}, {"version", "taiyi"}};
}

namespace {

// A value of the infotext's last line as the web UI's parser leaves it: numbers as numbers.
Json infotext_value(const std::string& text) {
  size_t used = 0;
  try {
    const long long i = std::stoll(text, &used);
    if (used == text.size()) return i;
    const double d = std::stod(text, &used);
    if (used == text.size()) return d;
  } catch (const std::exception&) {
  }
  return text;
}

// "Steps: 20, Sampler: Euler, Lora hashes: \"a: 1, b: 2\"": key-value pairs, quoted values kept whole.
void parse_settings_line(const std::string& line, Json& out) {
  size_t pos = 0;
  while (pos < line.size()) {
    while (pos < line.size() && line[pos] == ' ') ++pos;
    const size_t colon = line.find(": ", pos);
    if (colon == std::string::npos) break;
    const std::string key = line.substr(pos, colon - pos);
    size_t start = colon + 2, end;
    std::string value;
    if (start < line.size() && line[start] == '"') {
      end = line.find('"', start + 1);
      if (end == std::string::npos) end = line.size();
      value = line.substr(start + 1, end - start - 1);
      end = line.find(',', end);
    } else {
      end = line.find(", ", start);
      value = line.substr(start, end == std::string::npos ? std::string::npos : end - start);
    }
    out[key] = infotext_value(value);
    if (end == std::string::npos) break;
    pos = end + 1;
  }
}

}  // namespace

Json parse_infotext(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t nl = text.find('\n', start);
    lines.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  Json out = Json::object();
  std::string settings;
  if (lines.size() > 1 && lines.back().find("Steps: ") != std::string::npos) {
    settings = lines.back();
    lines.pop_back();
  }
  std::string prompt, negative;
  bool in_negative = false;
  for (const std::string& line : lines) {
    if (line.rfind("Negative prompt: ", 0) == 0) {
      in_negative = true;
      negative = line.substr(17);
    } else if (in_negative) {
      negative += "\n" + line;
    } else {
      prompt += (prompt.empty() ? "" : "\n") + line;
    }
  }
  out["Prompt"] = prompt;
  out["Negative prompt"] = negative;
  parse_settings_line(settings, out);
  return out;
}

std::string decode_image_field(const std::string& value, const std::string& field) {
  std::string data = value;
  if (data.rfind("http://", 0) == 0 || data.rfind("https://", 0) == 0)
    value_error(field, "taiyi does not fetch image URLs: send the image as base64");
  if (data.rfind("data:image/", 0) == 0) {
    // decode_base64_to_image: encoding.split(";")[1].split(",")[1]
    const size_t semicolon = data.find(';');
    const size_t comma = semicolon == std::string::npos ? std::string::npos : data.find(',', semicolon);
    if (comma == std::string::npos) value_error(field, "a data: URL without ';base64,'");
    data = data.substr(comma + 1);
  }
  try {
    return base64_decode(data);
  } catch (const Error& e) {
    value_error(field, std::string("Invalid encoded image: ") + e.what());
  }
}

}  // namespace taiyi
