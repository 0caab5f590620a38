"""The original LDM / CompVis single-file layout of a diffusers folder: the inverse of diffusers' single-file
mapping (diffusers/loaders/single_file_utils.py: convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
convert_ldm_clip_checkpoint), written from the configs so that it fits the tiny models too. Shared by
tests/test_convert.py and tests/reference/single_file.py (no make(): make_fixtures.py skips it)."""
import json

from safetensors.torch import load_file


UNET_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                     "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def rename_by_prefix(key, prefixes):
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            return prefixes[prefix], key[len(prefix):]
    return "", key


def unet_to_original(state, config):
    n = config["layers_per_block"]
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                "mid_block.attentions.0.": "middle_block.1."}
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(n):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(n + 1) * i + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(n + 1) * i + j + 1}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(n + 1) * (i + 1)}.0.op."
        for j in range(n + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(n + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(n + 1) * i + j}.1."
        upsampler_slot = 2 if up_type.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(n + 1) * i + n}.{upsampler_slot}."
    original = {}
    for key, tensor in state.items():
        prefix, rest = rename_by_prefix(key, prefixes)
        if ".resnets." in key:
            part, _, leaf = rest.partition(".")
            rest = f"{UNET_RESNET_PARTS[part]}.{leaf}"
        original["model.diffusion_model." + prefix + rest] = tensor
    return original


def vae_to_original(state, config):
    levels = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        for j in range(2):
            prefixes[f"{side}.mid_block.resnets.{j}."] = f"{side}.mid.block_{j + 1}."
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    original = {}
    for key, tensor in state.items():
        prefix, rest = rename_by_prefix(key, prefixes)
        if ".attentions." in key:
            part, leaf = rest.rsplit(".", 1)
            rest = f"{VAE_ATTENTION_PARTS[part]}.{leaf}"
            if tensor.dim() == 2:  # the original attention is made of 1x1 convolutions
                tensor = tensor[:, :, None, None]
        elif ".resnets." in key:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        original["first_stage_model." + prefix + rest] = tensor.contiguous()
    return original


def original_checkpoint(folder):
    """The tensors of a diffusers folder in the original (CompVis/webui) single-file layout."""
    original = {}
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    original.update(unet_to_original(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), unet_config))
    original.update(vae_to_original(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), vae_config))
    for key, tensor in load_file(folder / "text_encoder" / "model.safetensors").items():
        original["cond_stage_model.transformer." + key] = tensor
    return original


LEGACY_VAE_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
