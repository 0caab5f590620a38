"""Goldens for UNet2DConditionModel (src/models/unet_2d_condition.cpp): diffusers' UNet2DConditionModel loaded with
from_pretrained(subfolder="unet"), float32 on the CPU, default attention processor (AttnProcessor2_0).

ref/unet.safetensors (tiny-clip/unet; encoder_hidden_states [2, 77, 32] throughout)
    square.sample [2, 4, 8, 8], square.timestep [1] (used as a 0-d tensor: 981)    -> square.output
    nonsquare.sample [2, 4, 8, 6], nonsquare.timestep [2] (981, 1 per batch item)  -> nonsquare.output
        8x6 is not divisible by the UNet's up factor 4: the upsamplers follow the skips' sizes.
    encoder_hidden_states
    square.output_float16                       the same run with the UNet and inputs in float16 (CPU)
    variant.<name>.output for each model in VARIANTS (saved to unet-variants/<name>/), run on
        nonsquare.sample with variant.timestep [2] (float: 999.5, 3.25) and encoder_hidden_states
ref/unet_full.safetensors (--full only; full-clip/unet at the real config)
    sample [2, 4, 64, 64], timestep [1] (981, 0-d), encoder_hidden_states [2, 77, 768] -> output
Timesteps are stored as float32 (taiyi's safetensors reader takes float tensors); the tests
convert the integer ones back to int64.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Tiny UNets (the tiny-clip config with one option changed) so that each config option diffusers
# honours takes its own code path in the C++ tests.
VARIANTS = {
    "linear_projection": dict(use_linear_projection=True),
    "upcast_attention": dict(upcast_attention=True),
    "only_cross_attention": dict(only_cross_attention=True),
    "only_cross_attention_list": dict(only_cross_attention=[True, False, False]),
    "attention_head_dim_list": dict(attention_head_dim=[2, 4, 8]),
    "layers_per_block_1": dict(layers_per_block=1),
    "layers_per_block_list": dict(layers_per_block=[1, 2, 1]),
    "norm_eps": dict(norm_eps=1e-3),
    "transformer_layers_2": dict(transformer_layers_per_block=2),
    "time_embedding_options": dict(flip_sin_to_cos=False, freq_shift=1, time_embedding_dim=48),
    "center_input_mid_scale": dict(center_input_sample=True, mid_block_scale_factor=1.5),
    "downsample_padding_0": dict(downsample_padding=0),
    "act_fn_mish": dict(act_fn="mish"),
    "conv_kernels": dict(conv_in_kernel=1, conv_out_kernel=5),
}


def jitter_constant_parameters(module, generator):
    """As make_fixtures.py: random norm weights and biases, so that a mis-wired one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)


def make(out: Path, full: bool):
    from diffusers import UNet2DConditionModel

    generator = torch.Generator().manual_seed(4321)
    square = torch.randn(2, 4, 8, 8, generator=generator)
    nonsquare = torch.randn(2, 4, 8, 6, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    square_timestep = torch.tensor(981)  # 0-d, as the pipeline passes it
    nonsquare_timestep = torch.tensor([981, 1])
    variant_timestep = torch.tensor([999.5, 3.25])

    unet = UNet2DConditionModel.from_pretrained(out / "tiny-clip", subfolder="unet", torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        tensors = {
            "square.sample": square,
            "square.timestep": square_timestep.reshape(1).float(),
            "square.output": unet(square, square_timestep, context).sample,
            "nonsquare.sample": nonsquare,
            "nonsquare.timestep": nonsquare_timestep.float(),
            "nonsquare.output": unet(nonsquare, nonsquare_timestep, context).sample,
            "encoder_hidden_states": context,
            "variant.timestep": variant_timestep,
        }
        # float16 on the CPU: the timestep embedding is computed in float32 and then cast.
        unet_half = unet.half()
        tensors["square.output_float16"] = unet_half(square.half(), square_timestep, context.half()).sample.float()

    base_config = json.loads((out / "tiny-clip" / "unet" / "config.json").read_text())
    base_config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    for index, (name, options) in enumerate(VARIANTS.items()):
        torch.manual_seed(100 + index)
        variant = UNet2DConditionModel.from_config(dict(base_config, **options)).eval()
        jitter_constant_parameters(variant, torch.Generator().manual_seed(200 + index))
        variant.save_pretrained(out / "unet-variants" / name)
        with torch.inference_mode():
            tensors[f"variant.{name}.output"] = variant(nonsquare, variant_timestep, context).sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "ref" / "unet.safetensors")

    if full:
        unet = UNet2DConditionModel.from_pretrained(out / "full-clip", subfolder="unet",
                                                    torch_dtype=torch.float32).eval()
        generator = torch.Generator().manual_seed(8765)
        sample = torch.randn(2, 4, 64, 64, generator=generator)
        context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
        with torch.inference_mode():
            output = unet(sample, torch.tensor(981), context).sample
        save_file({"sample": sample, "timestep": torch.tensor([981.0]), "encoder_hidden_states": context,
                   "output": output.contiguous()}, out / "ref" / "unet_full.safetensors")
