"""TAESD, diffusers' AutoencoderTiny (src/models/autoencoder_tiny.cpp), against diffusers 0.37.1 itself:
a shrunk AutoencoderTiny with random weights, written in the three forms load_taesd reads, and what its
decoder makes of random latents.

taesd-tiny/                         save_pretrained: config.json + diffusion_pytorch_model.safetensors
taesd-files/autoencoder_tiny.safetensors   the same state dict (encoder.* and decoder.layers.*) as one file
taesd-files/taesd_decoder.safetensors      the decoder alone in madebyollin/taesd's layout (taesd.py Decoder:
taesd-files/taesd_decoder.pth              nn.Sequential(Clamp(), conv, ReLU, ...), so decoder.layers.N is N+1),
                                           as safetensors and as torch.save
taesd-files/bad_*.safetensors       files load_taesd must refuse: neither layout, a missing key, a mis-shaped key
taesd-variant/                      another config (silu, upsampling_scaling_factor 3, a stage without blocks,
                                    scaling_factor 0.5): no size of the default is assumed

ref/taesd.safetensors   latents [2, 4, 8, 8]; decoded = AutoencoderTiny.decode(latents).sample [2, 3, 64, 64];
                        preview_<i> [64, 64, 3] uint8: image i alone, decoded from latents[i:i+1] / scaling_factor
                        (pipeline_stable_diffusion.py's decode) and VaeImageProcessor.postprocess(..., "pil");
                        variant_latents [1, 4, 4, 4], variant_decoded, variant_preview_0 likewise
"""
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderTiny
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file

TINY = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
VARIANT = dict(encoder_block_out_channels=(8,), num_encoder_blocks=(1,), decoder_block_out_channels=(8, 8, 8),
               num_decoder_blocks=(2, 0, 1), act_fn="silu", upsampling_scaling_factor=3, scaling_factor=0.5)


def random_model(config, seed):
    torch.manual_seed(seed)
    model = AutoencoderTiny(**config).eval()
    # diffusers' default initialisation leaves an 8-channel decoder's output near a constant; wider weights
    # make images that cover [-1, 1] and beyond, so that the preview's clamp and rounding are exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def original_layout(model):
    """The decoder's state dict as madebyollin/taesd's taesd.py Decoder has it: an nn.Sequential whose index 0
    is Clamp() (no weights; nn.Identity stands for it here) followed by DecoderTiny's layers, so that
    state_dict() gives 1.weight, 3.conv.0.weight, ... (an OrderedDict with _metadata, as torch.save writes it)."""
    return torch.nn.Sequential(torch.nn.Identity(), *model.decoder.layers).state_dict()


def previews(model, latents):
    processor = VaeImageProcessor(vae_scale_factor=8)
    tensors = {}
    for i in range(latents.shape[0]):
        image = model.decode(latents[i:i + 1] / model.config.scaling_factor).sample
        pil = processor.postprocess(image, output_type="pil")[0]
        tensors[f"preview_{i}"] = torch.from_numpy(np.ascontiguousarray(np.array(pil)))
    return tensors


def write_files(model, files: Path):
    files.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, files / "autoencoder_tiny.safetensors")
    original = original_layout(model)
    save_file({k: v.contiguous() for k, v in original.items()}, files / "taesd_decoder.safetensors")
    torch.save(original, files / "taesd_decoder.pth")
    save_file({"conv_in.weight": torch.zeros(2, 2)}, files / "bad_layout.safetensors")
    missing = {k: v.contiguous() for k, v in original.items()}
    del missing["3.conv.2.bias"]
    save_file(missing, files / "bad_missing.safetensors")
    misshaped = {k: v for k, v in state.items() if k.startswith("decoder.")}
    misshaped["decoder.layers.2.conv.2.weight"] = torch.zeros(8, 8, 1, 1)
    save_file(misshaped, files / "bad_shape.safetensors")


@torch.no_grad()
def make(out: Path, full: bool):
    model = random_model(TINY, seed=11)
    model.save_pretrained(out / "taesd-tiny", safe_serialization=True)
    write_files(model, out / "taesd-files")
    generator = torch.Generator().manual_seed(12)
    latents = torch.randn(2, 4, 8, 8, generator=generator) * 2.5
    tensors = {"latents": latents, "decoded": model.decode(latents).sample}
    tensors.update(previews(model, latents))

    variant = random_model(VARIANT, seed=13)
    variant.save_pretrained(out / "taesd-variant", safe_serialization=True)
    variant_latents = torch.randn(1, 4, 4, 4, generator=generator) * 2.5
    tensors["variant_latents"] = variant_latents
    tensors["variant_decoded"] = variant.decode(variant_latents).sample
    tensors.update({f"variant_{k}": v for k, v in previews(variant, variant_latents).items()})
    (out / "ref").mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "ref" / "taesd.safetensors")
