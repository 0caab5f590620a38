"""Goldens for AutoencoderKL (src/models/autoencoder_kl.cpp): diffusers' AutoencoderKL loaded with
from_pretrained(subfolder="vae"), float32 on the CPU, default attention processor (AttnProcessor2_0).

ref/vae.safetensors
    decode.latents [1, 4, 8, 6] (non-square)    -> decode.images [1, 3, 64, 48]     vae.decode(z).sample
    encode.images  [1, 3, 64, 48] in [-1, 1]    -> encode.mean   [1, 4, 8, 6]       vae.encode(x).latent_dist.mean
    decode.images_float16                       the same decode with the VAE and latents in float16 (CPU)
    variant.<name>.decode.images / variant.<name>.encode.mean for each VARIANTS model, same inputs
vae-variants/<name>/                           tiny AutoencoderKLs with other config options
ref/vae_full.safetensors (--full only)
    decode.latents [1, 4, 64, 64]               -> decode.images [1, 3, 512, 512]   full-clip/vae

    python tests/reference/vae.py FIXTURES --device cuda

writes ref/vae_cuda.safetensors: decode.images_float16, the same fp16 decode of decode.latents on the GPU
(scripts/gpu_check.sh runs it there, for CudaVAE: CPU fp16 is itself 7e-3 from fp32 on this decode, so the
CUDA fp16 decode is compared with diffusers' fp16 decode on the same GPU).
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Tiny VAEs that take the code paths the default config does not: no quant convs, no mid-block
# attention.
VARIANTS = {
    "no_quant_conv_no_mid_attention": dict(use_quant_conv=False, use_post_quant_conv=False,
                                           mid_block_add_attention=False),
}


def jitter_constant_parameters(module, generator):
    """As make_fixtures.py: random norm weights and biases, so that a mis-wired one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)


@torch.inference_mode()
def run(vae, latents, images):
    return vae.decode(latents).sample, vae.encode(images).latent_dist.mean


def make(out: Path, full: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2024)
    latents = torch.randn(1, 4, 8, 6, generator=generator)
    images = torch.rand(1, 3, 64, 48, generator=generator) * 2 - 1

    vae = AutoencoderKL.from_pretrained(out / "tiny-clip", subfolder="vae", torch_dtype=torch.float32).eval()
    decoded, mean = run(vae, latents, images)
    tensors = {"decode.latents": latents, "decode.images": decoded, "encode.images": images, "encode.mean": mean}
    with torch.inference_mode():
        tensors["decode.images_float16"] = vae.half().decode(latents.half()).sample.float()

    base_config = json.loads((out / "tiny-clip" / "vae" / "config.json").read_text())
    base_config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    for name, options in VARIANTS.items():
        torch.manual_seed(1)
        variant = AutoencoderKL.from_config(dict(base_config, **options)).eval()
        jitter_constant_parameters(variant, torch.Generator().manual_seed(3))
        variant.save_pretrained(out / "vae-variants" / name)
        decoded, mean = run(variant, latents, images)
        tensors[f"variant.{name}.decode.images"] = decoded
        tensors[f"variant.{name}.encode.mean"] = mean
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "ref" / "vae.safetensors")

    if full:
        vae = AutoencoderKL.from_pretrained(out / "full-clip", subfolder="vae", torch_dtype=torch.float32).eval()
        latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            decoded = vae.decode(latents).sample
        save_file({"decode.latents": latents, "decode.images": decoded.contiguous()},
                  out / "ref" / "vae_full.safetensors")


def make_on_device(out: Path, device: str):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    latents = load_file(out / "ref" / "vae.safetensors")["decode.latents"]
    vae = AutoencoderKL.from_pretrained(out / "tiny-clip", subfolder="vae", torch_dtype=torch.float16).to(device).eval()
    with torch.inference_mode():
        decoded = vae.decode(latents.to(device, torch.float16)).sample.float().cpu()
    save_file({"decode.images_float16": decoded.contiguous()}, out / "ref" / f"vae_{device}.safetensors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="diffusers' fp16 VAE decode on a device, for the cuda-labelled tests")
    ap.add_argument("fixtures", type=Path)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    make_on_device(args.fixtures, args.device)
