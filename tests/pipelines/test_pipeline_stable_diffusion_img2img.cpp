// img2img against diffusers' StableDiffusionImg2ImgPipeline (tests/reference/img2img.py): image reading
// as PIL's convert("RGB") / convert("L"), PIL's Lanczos resize, and whole img2img runs with several
// samplers and strengths (100 % of pixels identical); the bad inputs' errors.
#include <fstream>

#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "taiyi/pipelines/pipeline_stable_diffusion.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;
using taiyi::test::reference_tensor;
using Json = nlohmann::json;

torch::Tensor as_tensor(const taiyi::PixelImage& image) {
  std::vector<int64_t> shape = {image.height, image.width};
  if (image.channels == 3) shape.push_back(3);
  return torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), shape, torch::kUInt8).to(torch::kFloat);
}

const char* kPngImages[] = {"rgb_64", "rgb_100x70", "gray_72x64", "rgba_64", "palette_64", "gray16_64"};

TEST(ImageInput, PngReadsAsPilConvertRgbAndL) {
  const auto golden = fixture("ref/images.safetensors");
  for (const char* name : kPngImages) {
    SCOPED_TRACE(name);
    const fs::path file = fixture(std::string("images/") + name + ".png");
    EXPECT_TRUE(torch::equal(as_tensor(taiyi::read_image(file, 3)), reference_tensor(golden, std::string(name) + ".rgb")));
    EXPECT_TRUE(torch::equal(as_tensor(taiyi::read_image(file, 1)), reference_tensor(golden, std::string(name) + ".l")));
  }
}

// libjpeg-turbo with PIL's settings: the same pixels as PIL, for baseline 4:2:0, progressive 4:2:2,
// grayscale and Adobe CMYK files, to RGB and to L, and resized.
const char* kJpegImages[] = {"rgb_64", "rgb_100x70", "gray_72x64", "cmyk_64"};

TEST(ImageInput, JpegReadsAsPil) {
  const auto golden = fixture("ref/images.safetensors");
  for (const char* name : kJpegImages) {
    SCOPED_TRACE(name);
    const fs::path file = fixture(std::string("images/") + name + ".jpg");
    const std::string key = std::string(name) + "_jpg";
    EXPECT_TRUE(torch::equal(as_tensor(taiyi::read_image(file, 3)), reference_tensor(golden, key + ".rgb")));
    EXPECT_TRUE(torch::equal(as_tensor(taiyi::read_image(file, 1)), reference_tensor(golden, key + ".l")));
    EXPECT_TRUE(torch::equal(as_tensor(taiyi::resize_lanczos(taiyi::read_image(file, 3), 96, 64)),
                             reference_tensor(golden, key + ".resize_96x64")));
  }
}

TEST(ImageInput, LanczosResizeEqualsPil) {
  const auto golden = fixture("ref/images.safetensors");
  for (const char* name : kPngImages) {
    for (const auto& [w, h] : std::vector<std::pair<int64_t, int64_t>>{{96, 64}, {64, 96}, {40, 24}, {130, 90}, {64, 64}}) {
      const std::string size = std::to_string(w) + "x" + std::to_string(h);
      SCOPED_TRACE(std::string(name) + " " + size);
      const fs::path file = fixture(std::string("images/") + name + ".png");
      EXPECT_TRUE(torch::equal(as_tensor(taiyi::resize_lanczos(taiyi::read_image(file, 3), w, h)),
                               reference_tensor(golden, std::string(name) + ".resize_" + size)));
      EXPECT_TRUE(torch::equal(as_tensor(taiyi::resize_lanczos(taiyi::read_image(file, 1), w, h)),
                               reference_tensor(golden, std::string(name) + ".resize_l_" + size)));
    }
  }
}

TEST(ImageInput, BadFilesAreErrorsNamingTheFile) {
  const fs::path dir = taiyi::test::temp_dir("image-input");
  expect_error_naming([&] { taiyi::read_image(dir / "missing.png", 3); }, {"missing.png", "not found"});
  std::ofstream(dir / "text.png") << "not an image at all";
  expect_error_naming([&] { taiyi::read_image(dir / "text.png", 3); }, {"text.png", "not a PNG or JPEG"});
  // A truncated PNG: the header is whole, the pixel data is not.
  std::ifstream in(fixture("images/rgb_64.png"), std::ios::binary);
  std::string png((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(dir / "cut.png", std::ios::binary) << png.substr(0, png.size() / 2);
  expect_error_naming([&] { taiyi::read_image(dir / "cut.png", 3); }, {"cut.png"});
  // A PNG header that claims 100000 x 100000 pixels: refused from the header, nothing allocated.
  std::string huge = png.substr(0, 33);
  for (int k : {16, 20}) {
    huge[k] = 0, huge[k + 1] = 1, huge[k + 2] = static_cast<char>(0x86), huge[k + 3] = static_cast<char>(0xA0);
  }
  std::ofstream(dir / "huge.png", std::ios::binary) << huge << png.substr(33);
  expect_error_naming([&] { taiyi::read_image(dir / "huge.png", 3); }, {"huge.png", "100000x100000", "4096"});
  expect_error_naming([&] { taiyi::read_image(dir, 3); }, {"folder"});
  // JPEG: truncated (PIL refuses it as "image file is truncated"; libjpeg alone would fill in gray), a
  // frame header claiming 65500 x 65500 pixels (refused before the scan is decoded), and garbage.
  std::ifstream jpeg_in(fixture("images/rgb_100x70.jpg"), std::ios::binary);
  const std::string jpeg((std::istreambuf_iterator<char>(jpeg_in)), {});
  std::ofstream(dir / "cut.jpg", std::ios::binary) << jpeg.substr(0, jpeg.size() * 2 / 3);
  expect_error_naming([&] { taiyi::read_image(dir / "cut.jpg", 3); }, {"cut.jpg", "corrupt JPEG", "Premature end"});
  std::string big = jpeg;
  const size_t frame = big.find("\xFF\xC2");  // progressive frame header: length(2) precision(1) height(2) width(2)
  ASSERT_NE(frame, std::string::npos);
  for (size_t at : {frame + 5, frame + 7}) big[at] = static_cast<char>(0xFF), big[at + 1] = static_cast<char>(0xDC);
  std::ofstream(dir / "big.jpg", std::ios::binary) << big;
  expect_error_naming([&] { taiyi::read_image(dir / "big.jpg", 3); }, {"big.jpg", "65500x65500", "4096 pixels a side"});
  std::ofstream(dir / "junk.jpg", std::ios::binary) << "\xFF\xD8\xFF\xE0 not a JPEG after all";
  expect_error_naming([&] { taiyi::read_image(dir / "junk.jpg", 3); }, {"junk.jpg", "corrupt JPEG"});
  fs::remove_all(dir);
}

// One reference case through taiyi's pipeline: the case's model, sampler, prompt, seeds, init image,
// mask and strength; returns the percentage of pixels equal to diffusers' (and prints the difference).
double run_reference_case(const Json& c, const fs::path& golden) {
  const std::string name = c.at("name");
  taiyi::PipelineOptions options;
  options.device = "cpu";
  options.precision = "fp32";
  options.sampler = c.at("sampler");
  options.schedule = c.at("schedule");
  auto pipe = taiyi::Pipeline::load(fixture(c.at("model").get<std::string>()), options);
  taiyi::GenerationRequest r;
  r.prompt = c.at("prompt");
  r.negative_prompt = c.at("negative_prompt");
  r.steps = c.at("steps");
  r.cfg_scale = c.at("cfg_scale");
  r.seed = c.at("seed");
  r.count = c.at("count");
  r.init_image = fixture(c.at("image").get<std::string>()).string();
  if (c.contains("mask")) r.mask = fixture(c.at("mask").get<std::string>()).string();
  r.strength = c.at("strength");
  const torch::Tensor images = taiyi::test::image_tensor(pipe.generate(r));
  const torch::Tensor expected = reference_tensor(golden, name + ".images");
  if (images.sizes() != expected.sizes()) {
    ADD_FAILURE() << name << ": images " << images.sizes() << ", expected " << expected.sizes();
    return 0;
  }
  const double equal = taiyi::test::fraction_within(images, expected, 0);
  std::cout << name << ": " << equal * 100 << " % of pixels equal, max difference "
            << (images - expected).abs().max().item<double>() << "\n";
  return equal;
}

TEST(Img2ImgParity, ImagesEqualDiffusersForEverySamplerAndStrength) {
  const Json cases = taiyi::read_json_file(fixture("ref/img2img_cases.json"));
  ASSERT_GE(cases.size(), 10u);
  for (const Json& c : cases) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    EXPECT_EQ(run_reference_case(c, fixture("ref/img2img.safetensors")), 1.0);
  }
}

TEST(Img2Img, StrengthAndSizeErrors) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  auto pipe = taiyi::Pipeline::load(fixture("tiny-clip"), options);
  taiyi::GenerationRequest r;
  r.prompt = "x";
  r.steps = 10;
  r.init_image = fixture("images/rgb_64.png").string();
  for (double bad : {0.0, -0.5, 1.5}) {
    r.strength = bad;
    expect_error_naming([&] { pipe.generate(r); }, {"strength"});
  }
  r.strength = 0.05;  // 10 steps x 0.05: nothing to denoise (PLMS still has its extra timestep; Euler none)
  r.sampler = "Euler";
  expect_error_naming([&] { pipe.generate(r); }, {"no denoising step"});
  r.sampler = "";
  // The size comes from the image, rounded down to a multiple of 8.
  r.strength = 0.5;
  r.init_image = fixture("images/rgb_100x70.png").string();
  const taiyi::GenerationRequest completed = pipe.complete(r);
  EXPECT_EQ(completed.width, 96);
  EXPECT_EQ(completed.height, 64);
  r.init_image = (fixture("images") / "missing.png").string();
  expect_error_naming([&] { pipe.complete(r); }, {"missing.png", "not found"});
}

}  // namespace


namespace {

// Inpainting against StableDiffusionInpaintPipeline: a 4-channel UNet (latents blended back each
// step) and a 9-channel inpainting UNet (mask and masked-image latents as input), several samplers,
// strengths and images per prompt, a mask of another size (resized like the image).
TEST(InpaintParity, ImagesEqualDiffusersFor4And9ChannelUNets) {
  const Json cases = taiyi::read_json_file(fixture("ref/inpaint_cases.json"));
  ASSERT_GE(cases.size(), 8u);
  for (const Json& c : cases) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    EXPECT_EQ(run_reference_case(c, fixture("ref/inpaint.safetensors")), 1.0);
  }
}

TEST(Inpaint, MaskAndUNetErrors) {
  taiyi::PipelineOptions options;
  options.device = "cpu";
  auto inpainting = taiyi::Pipeline::load(fixture("tiny-clip-inpaint"), options);
  taiyi::GenerationRequest r;
  r.prompt = "x";
  r.steps = 4;
  expect_error_naming([&] { inpainting.generate(r); }, {"in_channels 9", "--mask"});
  r.init_image = fixture("images/rgb_64.png").string();
  expect_error_naming([&] { inpainting.generate(r); }, {"in_channels 9", "--mask"});
  auto plain = taiyi::Pipeline::load(fixture("tiny-clip"), options);
  taiyi::GenerationRequest m;
  m.prompt = "x";
  m.steps = 4;
  m.mask = fixture("images/mask_64.png").string();
  expect_error_naming([&] { plain.generate(m); }, {"mask_64.png", "init image"});
  m.init_image = fixture("images/rgb_64.png").string();
  m.mask = (fixture("images") / "no-mask.png").string();
  expect_error_naming([&] { plain.generate(m); }, {"no-mask.png", "not found"});
}

}  // namespace
