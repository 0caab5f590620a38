"""The web UI's "Approx cheap" live preview (src/pipelines/latent_preview.cpp) against its own code:
modules/sd_vae_approx.py cheap_approximation (SD 1.x coefficients) and sd_samplers_common.py
single_sample_to_image, restated here line for line on random latents.

ref/latent_preview.safetensors   latents [2, 4, 12, 10] (values around the range the loop holds) and
                                 preview_<i> [12, 10, 3] uint8 for image i of them
"""
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

COEFFS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


def cheap_approximation(sample):
    coefs = torch.tensor(COEFFS).to(sample.device)
    return torch.einsum("...lxy,lr -> ...rxy", sample, coefs)


def single_sample_to_image(sample):
    x_sample = cheap_approximation(sample.unsqueeze(0))[0] * 0.5 + 0.5
    x_sample = torch.clamp(x_sample, min=0.0, max=1.0)
    x_sample = 255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)
    return x_sample.astype(np.uint8)


def make(out: Path, full: bool):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(2, 4, 12, 10, generator=generator) * 2.5
    tensors = {"latents": latents}
    for i in range(latents.shape[0]):
        tensors[f"preview_{i}"] = torch.from_numpy(np.ascontiguousarray(single_sample_to_image(latents[i])))
    (out / "ref").mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "ref" / "latent_preview.safetensors")
