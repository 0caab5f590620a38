// The AUTOMATIC1111 web UI's HTTP API (/sdapi/v1/...) as data: its requests read into taiyi's
// GenerationRequest, field for field as modules/api/models.py defines them (every field optional, the
// web UI's defaults, unknown keys ignored, pydantic v1's coercions), and its responses' shapes
// (modules/api/api.py text2imgapi / img2imgapi, processing.py Processed.js). No HTTP and no model here:
// src/server/http_server.cpp serves these, src/server/generation_service.cpp runs them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "taiyi/pipelines/pipeline_stable_diffusion.h"

namespace taiyi {

// An error with its HTTP status, answered in the web UI's error shape
// ({"error": kind, "detail": ..., "body": ..., "errors": ...}, api.py api_middleware).
struct ApiError : std::runtime_error {
  ApiError(int status, std::string kind, const std::string& detail, nlohmann::json details = nullptr)
      : std::runtime_error(detail), status(status), kind(std::move(kind)), details(std::move(details)) {}
  int status;
  std::string kind;        // "RequestValidationError", "HTTPException", ...
  nlohmann::json details;  // FastAPI's [{"loc", "msg", "type"}] for a 422; null otherwise
};
nlohmann::json api_error_body(const ApiError& error);

// A txt2img or img2img request, read.
struct ApiGeneration {
  bool img2img = false;
  GenerationRequest request;       // prompt, negative prompt, steps, scale, size, seed, sampler, schedule,
                                   // strength, clip skip; count = batch_size; init_image/mask left empty
  int64_t batch_size = 1, n_iter = 1;
  bool send_images = true, save_images = false;
  std::string init_image;          // img2img: the first init image's bytes (PNG or JPEG), decoded from base64
  std::string mask;                // its mask's bytes ("" : none)
  bool mask_invert = false;        // inpainting_mask_invert = 1
  std::string model;               // override_settings.sd_model_checkpoint ("" : the current model)
  bool clip_skip_given = false;    // override_settings.CLIP_stop_at_last_layers was given
  nlohmann::json parameters;       // the echo: every field of the web UI's model, its default or the request's
};

// Reads a request body (a JSON object). `random_seed` replaces seed -1. Error 422 naming the field for a
// wrong type or an unsupported value; 404 "Init image not found" for img2img without init_images.
ApiGeneration parse_generation(const nlohmann::json& body, bool img2img, uint64_t random_seed);

// The sampler list (GET /sdapi/v1/samplers) and the schedule list (GET /sdapi/v1/schedulers) taiyi runs.
nlohmann::json api_samplers();
nlohmann::json api_schedulers();

// The `info` string's object (Processed.js): `infotexts` are the images' parameters texts, `seeds` their seeds.
struct ApiImagesInfo {
  std::vector<std::string> infotexts;
  std::vector<uint64_t> seeds;
  std::string sampler_name;  // as the web UI writes it ("Euler")
  std::string model_name, model_hash;
  int64_t width = 0, height = 0, clip_skip = 1;
  bool inpainting_conditioning = false;
  std::string job_timestamp;  // when the request started (the web UI's state.job_timestamp)
};
// The web UI's job timestamp of now: "%Y%m%d%H%M%S", local time.
std::string job_timestamp_now();
nlohmann::json api_info(const ApiGeneration& generation, const ApiImagesInfo& images);

// The web UI's infotext read back (modules/infotext_utils.py parse_generation_parameters, its common
// part): "Prompt", "Negative prompt", and each "Key: value" of the last line (numbers as numbers).
nlohmann::json parse_infotext(const std::string& text);

// A base64 image field as decode_base64_to_image takes it: raw base64 or a data: URL ("data:image/png;
// base64,..."). http(s) URLs are refused (taiyi fetches nothing). Error 422 naming `field`.
std::string decode_image_field(const std::string& value, const std::string& field);

}  // namespace taiyi
