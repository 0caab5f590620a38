"""VAE tiling references (src/models/autoencoder_kl.cpp tiled_decode / tiled_encode): diffusers' AutoencoderKL
with enable_tiling() and its tile attributes shrunk so that a small input has several rows and columns of
tiles and ragged edge tiles, fp32 CPU.

ref/vae_tiling.safetensors
    decode.latents [2, 4, 10, 13]                tiles of 4 latents / 32 pixels, overlap 0.25: rows 4,4,4,1
    decode.images  [2, 3, 80, 104]               latents, columns 4,4,4,4,1 (vae.decode(z).sample)
    decode_half_overlap.images                   the same latents with tile_overlap_factor 0.5
    decode_untiled.images                        the same latents, tiling on but the tile larger than them
    encode.images  [2, 3, 80, 104] in [-1, 1]    -> encode.mean / encode.std [2, 4, 10, 13]
                                                 (vae.encode(x).latent_dist: _tiled_encode's moments)
    txt2img.images [1, 64, 96, 3]                StableDiffusionPipeline (tiny-clip) with pipe.vae.enable_tiling()
                                                 and tiles of 32 pixels: 3 steps; uint8 values as float32
    img2img.images [2, 64, 96, 3]                StableDiffusionImg2ImgPipeline the same way (the init image's
                                                 encode is tiled too), images/rgb_100x70.png, strength 0.75
ref/vae_tiling_cases.json                        the two pipeline cases' settings
ref/vae_tiling_full.safetensors (--full only)
    decode.latents [1, 4, 128, 128]              -> decode.images [1, 3, 1024, 1024]: full-clip/vae, its own
                                                 tiles (512 pixels, 64 latents)
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

TILE_SAMPLE, TILE_LATENT = 32, 4  # pixels, latents (the tiny VAE's scale factor is 8)

CASES = [
    dict(name="txt2img", model="tiny-clip", prompt="a lighthouse at dusk, 水彩", negative_prompt="模糊", steps=3,
         cfg_scale=7.5, seed=11, width=96, height=64, count=1, vae_tile_size=TILE_SAMPLE),
    dict(name="img2img", model="tiny-clip", prompt="a cat on a windowsill, 油画", negative_prompt="", steps=4,
         cfg_scale=7.5, seed=12, width=0, height=0, count=2, strength=0.75, image="images/rgb_100x70.png",
         vae_tile_size=TILE_SAMPLE),
]


def shrink_tiles(vae, sample=TILE_SAMPLE, latent=TILE_LATENT, overlap=0.25):
    vae.enable_tiling()
    vae.tile_sample_min_size = sample
    vae.tile_latent_min_size = latent
    vae.tile_overlap_factor = overlap


def to_bytes(images):
    """numpy_to_pil's conversion of output_type="np" images, i.e. the PNG diffusers would save."""
    return torch.from_numpy((images.astype(np.float32) * 255).round().astype("uint8").astype(np.float32))


def run_case(out: Path, case: dict):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    img2img = "image" in case
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls.from_pretrained(out / case["model"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    shrink_tiles(pipe.vae, case["vae_tile_size"], case["vae_tile_size"] // 8)
    generators = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(case["count"])]
    kwargs = dict(negative_prompt=case["negative_prompt"], num_inference_steps=case["steps"],
                  guidance_scale=case["cfg_scale"], num_images_per_prompt=case["count"], generator=generators,
                  output_type="np")
    if img2img:
        # Its size (width, height 0) rounded down to a multiple of 8 (96x64), Lanczos-resized by VaeImageProcessor.
        image = Image.open(out / case["image"]).convert("RGB")
        result = pipe(case["prompt"], image=image, strength=case["strength"], **kwargs)
    else:
        result = pipe(case["prompt"], height=case["height"], width=case["width"], **kwargs)
    return to_bytes(result.images)


@torch.inference_mode()
def make(out: Path, full: bool):
    from diffusers import AutoencoderKL

    generator = torch.Generator().manual_seed(2026)
    latents = torch.randn(2, 4, 10, 13, generator=generator)
    images = torch.rand(2, 3, 80, 104, generator=generator) * 2 - 1
    vae = AutoencoderKL.from_pretrained(out / "tiny-clip", subfolder="vae", torch_dtype=torch.float32).eval()
    tensors = {"decode.latents": latents, "encode.images": images}
    shrink_tiles(vae)
    tensors["decode.images"] = vae.decode(latents).sample
    posterior = vae.encode(images).latent_dist
    tensors["encode.mean"], tensors["encode.std"] = posterior.mean, posterior.std
    shrink_tiles(vae, overlap=0.5)
    tensors["decode_half_overlap.images"] = vae.decode(latents).sample
    shrink_tiles(vae, sample=128, latent=16)
    tensors["decode_untiled.images"] = vae.decode(latents).sample
    for case in CASES:
        tensors[f"{case['name']}.images"] = run_case(out, case)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "ref" / "vae_tiling.safetensors")
    (out / "ref" / "vae_tiling_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1))

    if full:
        vae = AutoencoderKL.from_pretrained(out / "full-clip", subfolder="vae", torch_dtype=torch.float32).eval()
        vae.enable_tiling()
        latents = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(8))
        save_file({"decode.latents": latents, "decode.images": vae.decode(latents).sample.contiguous()},
                  out / "ref" / "vae_tiling_full.safetensors")
