// The web UI's API requests read as its pydantic models read them (modules/api/models.py: every field
// optional with the web UI's defaults, unknown keys ignored, v1 coercions), and the infotext read back.
#include <gtest/gtest.h>

#include "taiyi/server/a1111_api.h"
#include "taiyi/utils/base64.h"
#include "test_util.h"

using nlohmann::json;

namespace {

// The ApiError a request raises: its status and message.
std::pair<int, std::string> api_error(const json& body, bool img2img = false) {
  try {
    taiyi::parse_generation(body, img2img, 1234);
  } catch (const taiyi::ApiError& e) {
    return {e.status, e.what()};
  }
  return {0, ""};
}

}  // namespace

TEST(A1111Api, EmptyRequestTakesTheWebUisDefaults) {
  const taiyi::ApiGeneration g = taiyi::parse_generation(json::object(), false, 1234);
  EXPECT_EQ(g.request.prompt, "");
  EXPECT_EQ(g.request.steps, 50);
  EXPECT_EQ(g.request.cfg_scale, 7.0);
  EXPECT_EQ(g.request.width, 512);
  EXPECT_EQ(g.request.height, 512);
  EXPECT_EQ(g.request.seed, 1234u);  // seed -1: the random one given
  EXPECT_EQ(g.request.sampler, "Euler");  // sampler_index's default
  EXPECT_EQ(g.request.schedule, "");
  EXPECT_EQ(g.batch_size, 1);
  EXPECT_EQ(g.n_iter, 1);
  EXPECT_TRUE(g.send_images);
  EXPECT_FALSE(g.save_images);
  EXPECT_EQ(g.parameters["sampler_index"], "Euler");
  EXPECT_EQ(g.parameters["seed"], -1);  // the echo is the request, not the resolved seed
  EXPECT_TRUE(g.parameters.contains("enable_hr"));
}

TEST(A1111Api, FieldsCoercedAsPydanticV1AndUnknownKeysIgnored) {
  const json body = {{"prompt", "小桥流水人家"}, {"steps", "20"}, {"cfg_scale", "4.5"}, {"width", 64.0}, {"height", 48},
                     {"seed", 42}, {"batch_size", 2}, {"n_iter", 3}, {"sampler_name", "DPM++ 2M Karras"},
                     {"send_images", "false"}, {"url", "http://x"}, {"auth", "u:p"}, {"eta", 1.0},
                     {"override_settings", {{"CLIP_stop_at_last_layers", 2}, {"sd_model_checkpoint", "tiny-bert"}}}};
  const taiyi::ApiGeneration g = taiyi::parse_generation(body, false, 1);
  EXPECT_EQ(g.request.prompt, "小桥流水人家");
  EXPECT_EQ(g.request.steps, 20);
  EXPECT_EQ(g.request.cfg_scale, 4.5);
  EXPECT_EQ(g.request.width, 64);
  EXPECT_EQ(g.request.seed, 42u);
  EXPECT_EQ(g.request.count, 2);
  EXPECT_EQ(g.n_iter, 3);
  EXPECT_EQ(g.request.sampler, "DPM++ 2M");
  EXPECT_EQ(g.request.schedule, "karras");  // the trailing label split off
  EXPECT_FALSE(g.send_images);
  EXPECT_EQ(g.request.clip_skip, 2);
  EXPECT_TRUE(g.clip_skip_given);
  EXPECT_EQ(g.model, "tiny-bert");
  EXPECT_FALSE(g.parameters.contains("url"));
  EXPECT_FALSE(g.parameters.contains("auth"));
}

TEST(A1111Api, SamplerAndScheduleAsTheWebUiResolvesThem) {
  auto sampler = [](const json& body) {
    const taiyi::ApiGeneration g = taiyi::parse_generation(body, false, 1);
    return g.request.sampler + "/" + g.request.schedule;
  };
  EXPECT_EQ(sampler({{"sampler_index", "Euler a"}}), "Euler a/");
  EXPECT_EQ(sampler({{"sampler_name", "DDIM"}, {"sampler_index", "Euler a"}}), "DDIM/");  // sampler_name first
  EXPECT_EQ(sampler({{"sampler_name", "DPM++ 2M"}, {"scheduler", "karras"}}), "DPM++ 2M/karras");
  EXPECT_EQ(sampler({{"sampler_name", "Euler"}, {"scheduler", "Automatic"}}), "Euler/");
  EXPECT_EQ(sampler({{"sampler_name", "no such sampler"}}), "DPM++ 2M/");  // samplers[0], as the web UI falls back
  EXPECT_EQ(api_error({{"scheduler", "sgm_uniform"}}).first, 422);
}

TEST(A1111Api, WrongTypesAre422NamingTheField) {
  for (const auto& [field, value] : std::vector<std::pair<std::string, json>>{
           {"steps", "twenty"}, {"cfg_scale", json::array()}, {"width", 1.5e300}, {"prompt", json::object()},
           {"send_images", "maybe"}, {"batch_size", 0}, {"n_iter", 5000}, {"seed", -2}, {"subseed_strength", 0.5}}) {
    SCOPED_TRACE(field);
    const auto [status, message] = api_error({{field, value}});
    EXPECT_EQ(status, 422);
    EXPECT_NE(message.find(field), std::string::npos) << message;
  }
  EXPECT_EQ(api_error(json::array()).first, 422);
  EXPECT_EQ(api_error({{"styles", "x"}}).first, 422);  // List[str] in the web UI's model
  EXPECT_EQ(api_error({{"alwayson_scripts", json::array()}}).first, 422);
  EXPECT_EQ(api_error({{"init_images", "notalist"}}, true).first, 422);
  try {
    taiyi::parse_generation({{"steps", "x"}}, false, 1);
    FAIL();
  } catch (const taiyi::ApiError& e) {
    const json body = taiyi::api_error_body(e);
    EXPECT_EQ(body["error"], "RequestValidationError");
    EXPECT_EQ(body["detail"][0]["loc"], json::array({"body", "steps"}));
    EXPECT_EQ(body["detail"][0]["type"], "type_error.integer");
  }
}

TEST(A1111Api, Img2ImgImagesWithOrWithoutDataPrefix) {
  const std::string bytes = "\x89PNG fake";
  const std::string b64 = taiyi::base64_encode(bytes);
  const taiyi::ApiGeneration raw = taiyi::parse_generation({{"init_images", {b64}}, {"denoising_strength", 0.5}}, true, 1);
  EXPECT_EQ(raw.init_image, bytes);
  EXPECT_EQ(raw.request.strength, 0.5);
  EXPECT_TRUE(raw.parameters["init_images"].is_null());  // not echoed, as the web UI
  const taiyi::ApiGeneration prefixed = taiyi::parse_generation(
      {{"init_images", {"data:image/png;base64," + b64}}, {"mask", "data:image/png;base64," + b64}, {"inpainting_mask_invert", 1}},
      true, 1);
  EXPECT_EQ(prefixed.init_image, bytes);
  EXPECT_EQ(prefixed.mask, bytes);
  EXPECT_TRUE(prefixed.mask_invert);
  EXPECT_EQ(prefixed.request.strength, 0.75);  // img2img's default
  EXPECT_EQ(api_error(json::object(), true), std::make_pair(404, std::string("Init image not found")));
  EXPECT_EQ(api_error({{"init_images", {"https://example.com/a.png"}}}, true).first, 422);
  EXPECT_EQ(api_error({{"init_images", {"QQ="}}}, true).first, 422);  // Incorrect padding
}

TEST(A1111Api, InfotextReadBack) {
  const json p = taiyi::parse_infotext(
      "小桥流水人家\nsecond line\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x48, "
      "Model: tiny-clip, Lora hashes: \"a: 1, b: 2\", Version: taiyi");
  EXPECT_EQ(p["Prompt"], "小桥流水人家\nsecond line");
  EXPECT_EQ(p["Negative prompt"], "blurry");
  EXPECT_EQ(p["Steps"], 20);
  EXPECT_EQ(p["Sampler"], "Euler a");
  EXPECT_EQ(p["CFG scale"], 7.5);
  EXPECT_EQ(p["Size"], "64x48");
  EXPECT_EQ(p["Lora hashes"], "a: 1, b: 2");
  EXPECT_EQ(p["Version"], "taiyi");
}

TEST(A1111Api, SamplerListIsTheWebUisNames) {
  const json samplers = taiyi::api_samplers();
  std::vector<std::string> names;
  for (const json& s : samplers) names.push_back(s["name"]);
  EXPECT_EQ(names.front(), "Euler a");
  EXPECT_NE(std::find(names.begin(), names.end(), "DPM++ 2M SDE"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "DPM++ 2M Karras"), names.end());  // a schedule, not a sampler
  EXPECT_EQ(taiyi::api_schedulers()[1]["name"], "karras");
}
