"""img2img references: init images of every kind PIL reads, PIL's Lanczos resize, and diffusers'
StableDiffusionImg2ImgPipeline on the tiny pipelines (fp32, CPU), the init image opened as users do,
Image.open(path).convert("RGB").

images/<name>.png                      the init images (RGB, a size needing resize, L, RGBA, P, 16-bit L)
ref/images.safetensors                 "<name>.rgb" / "<name>.l": PIL's convert("RGB") / convert("L") pixels;
                                       "<name>.resize_<W>x<H>": PIL's resize((W, H), LANCZOS) of the RGB one
ref/img2img_cases.json, ref/img2img.safetensors   "<case>.images" [N, H, W, 3] uint8 values as float32
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
    Image.fromarray(pattern(64, 64, 3), "RGB").save(folder / "rgb_64.jpg", quality=90)


def make(out: Path, full: bool):
    import sys

    import diffusers
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from pipeline import SAMPLER_CLASSES, SCHEDULE_KEYS

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
        pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(out / case["model"])
        if case["sampler"]:
            class_name, overrides = SAMPLER_CLASSES[case["sampler"].lower()]
            overrides = dict(overrides, **SCHEDULE_KEYS[case["schedule"]])
            pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
        pipe.set_progress_bar_config(disable=True)
        init = Image.open(out / case["image"]).convert("RGB")
        generators = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(case["count"])]
        result = pipe(case["prompt"], image=init, strength=case["strength"], negative_prompt=case["negative_prompt"],
                      num_inference_steps=case["steps"], guidance_scale=case["cfg_scale"],
                      num_images_per_prompt=case["count"], generator=generators, output_type="np")
        images_u8 = (result.images.astype(np.float32) * 255).round().astype("uint8")
        results[f"{case['name']}.images"] = torch.from_numpy(images_u8.astype(np.float32)).contiguous()
    save_file(results, out / "ref" / "img2img.safetensors")
    (out / "ref" / "img2img_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")
