"""The web UI's hires fix (src/pipelines/pipeline_hires_fix.cpp) as an exact composition of diffusers' pieces,
on the tiny pipeline (fp32, CPU):

  1. StableDiffusionPipeline(..., output_type="latent"): the first pass's UNet-space latents;
  2. the web UI's upscale (modules/processing.py sample_hr_pass, calculate_target_resolution): torch's
     interpolate in a latent mode to (hr_upscale_to_y // 8, hr_upscale_to_x // 8), or for "Lanczos" the
     first pass decoded to uint8 as the pipeline's postprocess does, PIL's Lanczos resize to 8x the latent
     size, preprocess, and the VAE's latent_dist.sample from each image's fresh generator (as
     StableDiffusionImg2ImgPipeline._encode_vae_image); then the crop of hr_resize_x/y;
  3. StableDiffusionImg2ImgPipeline fed those latents (a 4-channel image passes through) with fresh
     generators from each image's seed (the web UI's new ImageRNG for the second pass), steps
     N = int(S / min(strength, 0.999)) and a strength s with int(N * s) == S: exactly S steps at the tail.

ref/hires_cases.json, ref/hires.safetensors   "<case>.images" [N, H, W, 3] uint8 values as float32
"""
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def case(name, upscaler, width=64, height=48, scale=1.5, resize=(0, 0), steps=3, hires_steps=2, strength=0.6,
         count=1, sampler="Euler", hires_sampler="", seed=17):
    return dict(name=name, upscaler=upscaler, width=width, height=height, scale=scale, resize_x=resize[0],
                resize_y=resize[1], steps=steps, hires_steps=hires_steps, strength=strength, count=count,
                sampler=sampler, hires_sampler=hires_sampler, seed=seed, cfg_scale=7.0,
                prompt="小桥流水人家，Van Gogh style", negative_prompt="模糊")


CASES = [
    case("latent_x2_two_images", "Latent", width=64, height=64, scale=2.0, count=2),
    case("latent_antialiased", "Latent (antialiased)"),
    case("latent_bicubic", "Latent (bicubic)"),
    case("latent_bicubic_antialiased", "Latent (bicubic antialiased)"),
    case("latent_nearest", "Latent (nearest)"),
    case("latent_nearest_exact", "Latent (nearest-exact)"),
    case("lanczos_two_images", "Lanczos", count=2),
    case("resize_96x96_cropped", "Latent (bicubic)", width=64, height=48, resize=(96, 96)),
    case("resize_width_only", "Latent", width=64, height=48, resize=(112, 0)),
    case("same_steps_other_sampler", "Latent", hires_steps=0, strength=0.7, hires_sampler="DPM++ 2M"),
]


def target(c):
    """calculate_target_resolution: (hr_upscale_to_x, hr_upscale_to_y, truncate_x, truncate_y)."""
    w, h, rx, ry = c["width"], c["height"], c["resize_x"], c["resize_y"]
    if rx == 0 and ry == 0:
        return int(w * c["scale"]), int(h * c["scale"]), 0, 0
    if ry == 0:
        return rx, rx * h // w, 0, 0
    if rx == 0:
        return ry * w // h, ry, 0, 0
    if w / h < rx / ry:
        ux, uy = rx, rx * h // w
    else:
        ux, uy = ry * w // h, ry
    return ux, uy, (ux - rx) // 8, (uy - ry) // 8


def scheduler_for(diffusers, config, sampler):
    from pipeline import SAMPLER_CLASSES
    class_name, overrides = SAMPLER_CLASSES[sampler.lower()]
    return getattr(diffusers, class_name).from_config(config, **overrides)


def upscale(pipe2, lat, c, generators):
    import torch.nn.functional as F
    from PIL import Image

    ux, uy, tx, ty = target(c)
    if c["upscaler"] in LATENT_MODES:
        mode, antialias = LATENT_MODES[c["upscaler"]]
        up = F.interpolate(lat, size=(uy // 8, ux // 8), mode=mode, antialias=antialias)
    else:
        decoded = pipe2.vae.decode(lat / pipe2.vae.config.scaling_factor, return_dict=False)[0]
        pils = pipe2.image_processor.postprocess(decoded, output_type="pil")
        pils = [p.resize((ux // 8 * 8, uy // 8 * 8), resample=Image.LANCZOS) for p in pils]
        image = pipe2.image_processor.preprocess(pils)
        # prepare_latents' encode of an image batch with a list of generators (image[i:i+1] from generator i).
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
        up = torch.cat([retrieve_latents(pipe2.vae.encode(image[i:i + 1]), generator=generators[i])
                        for i in range(image.shape[0])]) * pipe2.vae.config.scaling_factor
    return up[:, :, ty // 2:up.shape[2] - (ty + 1) // 2, tx // 2:up.shape[3] - (tx + 1) // 2]


def run(out: Path, c: dict):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out / "tiny-clip")
    pipe.scheduler = scheduler_for(diffusers, pipe.scheduler.config, c["sampler"])
    pipe.set_progress_bar_config(disable=True)
    first = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
    kwargs = dict(negative_prompt=c["negative_prompt"], guidance_scale=c["cfg_scale"])
    lat = pipe(c["prompt"], width=c["width"], height=c["height"], num_inference_steps=c["steps"],
               num_images_per_prompt=c["count"], generator=first, output_type="latent", **kwargs).images
    pipe2 = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    pipe2.scheduler = scheduler_for(diffusers, pipe.scheduler.config, c["hires_sampler"] or c["sampler"])
    pipe2.set_progress_bar_config(disable=True)
    second = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
    up = upscale(pipe2, lat, c, second)
    steps = c["hires_steps"] or c["steps"]
    total = int(steps / min(c["strength"], 0.999))
    strength = min(1.0, (steps + 0.5) / total)
    assert int(total * strength) == steps
    images = pipe2(c["prompt"], image=up, strength=strength, num_inference_steps=total, generator=second,
                   num_images_per_prompt=c["count"], output_type="np", **kwargs).images
    return (images * 255).round().astype(np.uint8)


def make(out: Path, full: bool):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    tensors = {}
    for c in CASES:
        with torch.no_grad():
            tensors[f"{c['name']}.images"] = torch.from_numpy(np.ascontiguousarray(run(out, c).astype(np.float32)))
    (out / "ref").mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "ref" / "hires.safetensors")
    (out / "ref" / "hires_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1))
