"""img2img and inpainting references: init images of every kind PIL reads, PIL's Lanczos resize, and diffusers'
StableDiffusionImg2ImgPipeline on the tiny pipelines (fp32, CPU), the init image opened as users do,
Image.open(path).convert("RGB").

images/<name>.png                      the init images (RGB, a size needing resize, L, RGBA, P, 16-bit L)
ref/images.safetensors                 "<name>.rgb" / "<name>.l": PIL's convert("RGB") / convert("L") pixels;
                                       "<name>.resize_<W>x<H>": PIL's resize((W, H), LANCZOS) of the RGB one
ref/img2img_cases.json, ref/img2img.safetensors   "<case>.images" [N, H, W, 3] uint8 values as float32
ref/inpaint_cases.json, ref/inpaint.safetensors   StableDiffusionInpaintPipeline, the mask opened as
                                       Image.open(path).convert("L"), height/width given as taiyi's
                                       defaults (the image's size rounded down to a multiple of 8)
tiny-clip-inpaint/                     tiny-clip with a 9-channel (inpainting) UNet
"""
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

RESIZES = [(96, 64), (64, 96), (40, 24), (130, 90), (64, 64)]


def sampler_case(name, model, sampler, schedule, strength, steps, count, image, seed=31):
    return dict(name=name, model=model, sampler=sampler, schedule=schedule, strength=strength, steps=steps,
                count=count, image=f"images/{image}.png", seed=seed, cfg_scale=7.5,
                prompt="一只猫坐在窗台上，油画" if model == "tiny-bert" else "a cat on a windowsill, 油画",
                negative_prompt="模糊")


CASES = [
    sampler_case("clip_plms_075", "tiny-clip", "", "", 0.75, 10, 1, "rgb_64"),
    sampler_case("clip_ddim_03", "tiny-clip", "DDIM", "", 0.3, 10, 2, "rgb_100x70"),
    sampler_case("clip_plms_10", "tiny-clip", "", "", 1.0, 6, 1, "rgb_64"),
    sampler_case("bert_euler_a_10", "tiny-bert", "Euler a", "", 1.0, 8, 2, "gray_72x64"),
    sampler_case("clip_dpmpp_2m_karras_075", "tiny-clip", "DPM++ 2M", "karras", 0.75, 12, 1, "rgba_64"),
    sampler_case("bert_heun_05", "tiny-bert", "Heun", "", 0.5, 6, 1, "palette_64"),
    sampler_case("clip_dpm2_a_06", "tiny-clip", "DPM2 a", "", 0.6, 6, 2, "rgb_64"),
    sampler_case("clip_unipc_03", "tiny-clip", "UniPC", "", 0.3, 10, 1, "gray16_64"),
    sampler_case("bert_ddpm_05", "tiny-bert", "DDPM", "", 0.5, 10, 2, "rgb_100x70"),
    sampler_case("clip_lcm_05", "tiny-clip", "LCM", "", 0.5, 4, 1, "rgb_64"),
    sampler_case("clip_euler_exponential_075", "tiny-clip", "Euler", "exponential", 0.75, 8, 1, "rgb_64"),
]


def inpaint_case(name, model, sampler, schedule, strength, steps, count, image, mask, width, height, seed=41):
    return dict(name=name, model=model, sampler=sampler, schedule=schedule, strength=strength, steps=steps,
                count=count, image=f"images/{image}.png", mask=f"images/{mask}.png", width=width, height=height,
                seed=seed, cfg_scale=7.5, prompt="一只狗，水彩" if model == "tiny-bert" else "a dog, watercolor",
                negative_prompt="")


INPAINT_CASES = [
    inpaint_case("clip_plms_10", "tiny-clip", "", "", 1.0, 8, 1, "rgb_64", "mask_64", 64, 64),
    inpaint_case("clip_ddim_075", "tiny-clip", "DDIM", "", 0.75, 10, 2, "rgb_64", "mask_64", 64, 64),
    inpaint_case("bert_euler_a_06", "tiny-bert", "Euler a", "", 0.6, 8, 2, "rgb_100x70", "mask_rgb_100x70", 96, 64),
    inpaint_case("clip_dpmpp_karras_05", "tiny-clip", "DPM++ 2M", "karras", 0.5, 10, 1, "rgba_64", "mask_64", 64, 64),
    inpaint_case("clip_heun_08", "tiny-clip", "Heun", "", 0.8, 5, 1, "rgb_64", "mask_64", 64, 64),
    inpaint_case("unet9_plms_10", "tiny-clip-inpaint", "", "", 1.0, 8, 2, "rgb_64", "mask_64", 64, 64),
    inpaint_case("unet9_euler_a_075", "tiny-clip-inpaint", "Euler a", "", 0.75, 8, 2, "rgb_100x70", "mask_rgb_100x70", 96, 64),
    inpaint_case("unet9_dpmpp_10", "tiny-clip-inpaint", "DPM++ 2M", "", 1.0, 6, 1, "gray_72x64", "mask_64", 72, 64),
]


def make_inpaint_unet_folder(out: Path):
    """tiny-clip whose UNet takes 9 channels (latents, mask, masked-image latents), as SD 1.5 inpainting."""
    import shutil

    from diffusers import UNet2DConditionModel

    folder = out / "tiny-clip-inpaint"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for item in (out / "tiny-clip").iterdir():
        if item.name != "unet":
            (folder / item.name).symlink_to(Path("..") / "tiny-clip" / item.name)
    config = dict(UNet2DConditionModel.load_config(out / "tiny-clip" / "unet"))
    config["in_channels"] = 9
    torch.manual_seed(9)
    unet = UNet2DConditionModel.from_config(config)
    gen = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    unet.save_pretrained(folder / "unet")


def make_images(folder: Path):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)

    def pattern(w, h, channels):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256][:channels], -1)
        return np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)

    Image.fromarray(pattern(64, 64, 3), "RGB").save(folder / "rgb_64.png")
    Image.fromarray(pattern(100, 70, 3), "RGB").save(folder / "rgb_100x70.png")
    Image.fromarray(pattern(72, 64, 1)[..., 0], "L").save(folder / "gray_72x64.png")
    rgba = np.concatenate([pattern(64, 64, 3), rng.integers(0, 256, (64, 64, 1)).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba_64.png")
    Image.fromarray(pattern(64, 64, 3), "RGB").quantize(colors=37).save(folder / "palette_64.png")
    gray16 = (pattern(64, 64, 1)[..., 0].astype(np.uint16) * 3)  # values past 255: PIL clips them
    Image.fromarray(gray16).save(folder / "gray16_64.png")  # mode I;16, a 16-bit grayscale PNG
    Image.fromarray(pattern(64, 64, 3), "RGB").save(folder / "rgb_64.jpg", quality=90)  # 4:2:0, baseline
    # JPEG as users' files come: 4:2:2 progressive, grayscale, and CMYK (PIL writes an Adobe marker: inverted).
    Image.fromarray(pattern(100, 70, 3), "RGB").save(folder / "rgb_100x70.jpg", quality=80, subsampling=1,
                                                     progressive=True)
    Image.fromarray(pattern(72, 64, 1)[..., 0], "L").save(folder / "gray_72x64.jpg", quality=85)
    Image.fromarray(pattern(64, 64, 3), "RGB").convert("CMYK").save(folder / "cmyk_64.jpg", quality=90)
    mask = np.zeros((64, 64), np.uint8)
    mask[12:44, 20:56] = 255
    mask[30:34, 0:64] = 127  # below 0.5 after / 255: kept
    Image.fromarray(mask, "L").save(folder / "mask_64.png")
    mask_rgb = np.zeros((70, 100, 3), np.uint8)
    mask_rgb[10:50, 30:90] = (255, 240, 200)
    Image.fromarray(mask_rgb, "RGB").save(folder / "mask_rgb_100x70.png")


def load_pipeline(pipeline_class, out: Path, case: dict):
    """The case's model with the case's sampler, built as users switch: Class.from_config(pipe.scheduler.config)."""
    import diffusers

    from pipeline import SAMPLER_CLASSES, SCHEDULE_KEYS

    pipe = pipeline_class.from_pretrained(out / case["model"])
    if case["sampler"]:
        class_name, overrides = SAMPLER_CLASSES[case["sampler"].lower()]
        overrides = dict(overrides, **SCHEDULE_KEYS[case["schedule"]])
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make(out: Path, full: bool):
    import sys

    import diffusers
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))

    images = out / "images"
    make_images(images)
    pixels = {}
    for path in sorted(images.iterdir()):
        with Image.open(path) as im:
            rgb, gray = im.convert("RGB"), im.convert("L")
        name = path.stem + ("_jpg" if path.suffix == ".jpg" else "")
        pixels[f"{name}.rgb"] = torch.from_numpy(np.array(rgb).astype(np.float32))
        pixels[f"{name}.l"] = torch.from_numpy(np.array(gray).astype(np.float32))
        for w, h in RESIZES:
            pixels[f"{name}.resize_{w}x{h}"] = torch.from_numpy(
                np.array(rgb.resize((w, h), resample=Image.LANCZOS)).astype(np.float32))
            pixels[f"{name}.resize_l_{w}x{h}"] = torch.from_numpy(
                np.array(gray.resize((w, h), resample=Image.LANCZOS)).astype(np.float32))
    save_file(pixels, out / "ref" / "images.safetensors")

    results = {}
    for case in CASES:
        pipe = load_pipeline(diffusers.StableDiffusionImg2ImgPipeline, out, case)
        init = Image.open(out / case["image"]).convert("RGB")
        generators = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(case["count"])]
        result = pipe(case["prompt"], image=init, strength=case["strength"], negative_prompt=case["negative_prompt"],
                      num_inference_steps=case["steps"], guidance_scale=case["cfg_scale"],
                      num_images_per_prompt=case["count"], generator=generators, output_type="np")
        images_u8 = (result.images.astype(np.float32) * 255).round().astype("uint8")
        results[f"{case['name']}.images"] = torch.from_numpy(images_u8.astype(np.float32)).contiguous()
    save_file(results, out / "ref" / "img2img.safetensors")
    (out / "ref" / "img2img_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")

    make_inpaint_unet_folder(out)
    results = {}
    for case in INPAINT_CASES:
        pipe = load_pipeline(diffusers.StableDiffusionInpaintPipeline, out, case)
        init = Image.open(out / case["image"]).convert("RGB")
        mask = Image.open(out / case["mask"]).convert("L")
        generators = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(case["count"])]
        result = pipe(case["prompt"], image=init, mask_image=mask, strength=case["strength"],
                      negative_prompt=case["negative_prompt"], num_inference_steps=case["steps"],
                      guidance_scale=case["cfg_scale"], num_images_per_prompt=case["count"], generator=generators,
                      height=case["height"], width=case["width"], output_type="np")
        images_u8 = (result.images.astype(np.float32) * 255).round().astype("uint8")
        results[f"{case['name']}.images"] = torch.from_numpy(images_u8.astype(np.float32)).contiguous()
    save_file(results, out / "ref" / "inpaint.safetensors")
    (out / "ref" / "inpaint_cases.json").write_text(json.dumps(INPAINT_CASES, ensure_ascii=False, indent=1), "utf-8")
