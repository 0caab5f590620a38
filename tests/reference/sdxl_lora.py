"""SDXL LoRAs for tiny-sdxl, as trainers write them, loaded with diffusers 0.37.1's
StableDiffusionXLPipeline.load_lora_weights and fused with fuse_lora(lora_scale=s):

    sdxl_kohya_ldm          kohya's sd-scripts (sdxl_train_network.py, networks/lora.py with conv_dim): the SDXL
                            UNet's LDM / SGM names (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q,
                            ..._in_layers_2, middle_block_1_..., output_blocks_2_2_conv), lora_te1_ / lora_te2_;
                            every Linear and 1x1 conv of the transformers and resnets at network_dim 4 /
                            network_alpha 2, every 3x3 conv (resnets, samplers) at conv_dim 2 / conv_alpha 1.
    sdxl_kohya_diffusers    diffusers' own kohya output (convert_state_dict_to_kohya, as its SDXL training
                            scripts write with --output_kohya_format): lora_unet_down_blocks_1_attentions_0_...,
                            lora_te1_, lora_te2_, alphas 2 (linear) and 1.5 (3x3 convs, rank 2) set apart from
                            the ranks.
    sdxl_peft               StableDiffusionXLPipeline.save_lora_weights: unet.* / text_encoder.* /
                            text_encoder_2.* lora_A / lora_B, alphas in lora_adapter_metadata (lora_alpha 8 at
                            r 4, an alpha_pattern and a rank_pattern).
    sdxl_diffusers_old      diffusers' older names (LoRACompatibleLinear's unet.<module>.lora.down.weight, the
                            text encoders' <module>.lora_linear_layer.down.weight), no alphas.
    sdxl_attn_procs         diffusers' 2023 LoRAAttnProcessor files: unet.<attention>.processor.to_q_lora.down.weight
                            (attention projections only), text_encoder(_2).<self_attn>.to_q_lora.down.weight and
                            <mlp>.fc1.lora_linear_layer.down.weight, no alphas.

Both kohya files keep one alpha for every Linear (the most common one): diffusers 0.37.1 loses the alpha of
attention modules (_get_alpha_name keeps "to_q_lora.down.weight" in its name) and gives them the file's most
common one, which here is their own, so diffusers and the web UI (its own alpha per module) agree. Each fused
weight is checked here against W + s * alpha / rank * up @ down computed from the file on the module each key
names, and the modules diffusers changed must be exactly those the file names (no key left unused).

loras/<name>.safetensors       the files
ref/sdxl_lora.json             {"files": {name: {"scale": s, "changed": ["<component>.<param>", ...]}},
                                "ldm_names": {UNet module: LDM name (web UI rule, '_')}, "sample": SAMPLE}
ref/sdxl_lora.safetensors      "<name>.<component>.<param>": the fused weight flattened, every stride-th value
                               (stride = ceil(numel / SAMPLE)), for every weight diffusers changed
"""
import copy
import json
import logging
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import sdxl  # noqa: E402
from lora import random_peft_state_dict  # noqa: E402
from lora_ldm import ldm_names, random_pair  # noqa: E402

SAMPLE = 256
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
SCALES = {"sdxl_kohya_ldm": 0.8, "sdxl_kohya_diffusers": 1.0, "sdxl_peft": 0.6, "sdxl_diffusers_old": 0.7,
          "sdxl_attn_procs": 0.9}
# peft target names for the diffusers-made files: attention, feed-forward, projections, resnets, samplers.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "time_emb_proj", "conv_shortcut", "conv"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def kohya_modules(pipe):
    """sd-scripts' LoRA modules: (component, module path, module) of every Linear / Conv2d inside a
    Transformer2DModel, ResnetBlock2D, Downsample2D or Upsample2D of the UNet, and inside CLIPAttention /
    CLIPMLP of each text encoder (networks/lora.py's target classes)."""
    unet_classes = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
    te_classes = ("CLIPAttention", "CLIPMLP")
    found = []
    for component, classes in (("unet", unet_classes), ("text_encoder", te_classes), ("text_encoder_2", te_classes)):
        for name, parent in getattr(pipe, component).named_modules():
            if type(parent).__name__ not in classes:
                continue
            for child_name, child in parent.named_modules():
                if child_name and isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    found.append((component, f"{name}.{child_name}", child))
    return found


def is_3x3(module):
    return isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1)


def kohya_ldm_file(pipe):
    """{key: tensor} and the updates [(component, module, down, up, alpha)] of sdxl_kohya_ldm."""
    names = ldm_names(pipe.unet)
    gen = torch.Generator().manual_seed(81)
    state, updates = {}, []
    for component, module_name, module in kohya_modules(pipe):
        rank, alpha = (2, 1.0) if is_3x3(module) else (4, 2.0)
        down, up = random_pair(module.weight, rank, gen)
        name = names[module_name] if component == "unet" else module_name.replace(".", "_")
        base = KOHYA_PREFIX[component] + name
        state.update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                      f"{base}.alpha": torch.tensor(alpha)})
        updates.append((component, module_name, down, up, alpha))
    return state, updates


def peft_states(pipe, seed, rank_pattern=None, alpha_pattern=None, unet_targets=UNET_TARGETS):
    """peft's state dicts of random LoRAs (r 4, lora_alpha 8) on the three components:
    {component: (state, LoraConfig)}."""
    from peft import LoraConfig

    out = {}
    for i, component in enumerate(COMPONENTS):
        targets = unet_targets if component == "unet" else CLIP_TARGETS
        config = LoraConfig(r=4, lora_alpha=8.0, target_modules=targets, init_lora_weights=False,
                            rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {})
        state, _ = random_peft_state_dict(getattr(pipe, component), targets, 4, 8.0, seed + i, config)
        out[component] = (state, config)
    return out


def peft_updates(pipe, states, alpha_of):
    """[(component, module, down, up, alpha)] of peft state dicts; alpha_of(component, module, rank)."""
    updates = []
    for component, (state, _) in states.items():
        for key, down in state.items():
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                up = state[f"{module}.lora_B.weight"]
                updates.append((component, module, down, up, alpha_of(component, module, down.shape[0])))
    return updates


def kohya_diffusers_file(pipe):
    from diffusers.utils import convert_state_dict_to_kohya

    states = peft_states(pipe, 91, rank_pattern={"conv1": 2, "conv2": 2, "conv": 2})
    modules = {c: dict(getattr(pipe, c).named_modules()) for c in COMPONENTS}
    alpha_of = lambda c, m, r: 1.5 if is_3x3(modules[c][m]) else 2.0  # noqa: E731
    flat = {f"{c}.{k}": v for c, (state, _) in states.items() for k, v in state.items()}
    kohya = convert_state_dict_to_kohya(flat)
    by_base = {}
    for c, m, *_ in peft_updates(pipe, states, lambda *a: 0):
        by_base[KOHYA_PREFIX[c] + m.replace(".", "_")] = alpha_of(c, m, 0)
    kohya = {k: (torch.tensor(by_base[k.removesuffix(".alpha")]) if k.endswith(".alpha") else v)
             for k, v in kohya.items()}
    return kohya, peft_updates(pipe, states, alpha_of)


def pattern_value(pattern, module, default):
    """peft's get_pattern_key: a key matches a module path ending with it at a dot boundary."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key):
            return value
    return default


def peft_file(out: Path, pipe):
    from diffusers import StableDiffusionXLPipeline

    rank_pattern, alpha_pattern = {"conv2": 2, "fc2": 3}, {"attn2.to_k": 3.0, "out_proj": 2.0}
    states = peft_states(pipe, 101, rank_pattern, alpha_pattern)
    path = out / "loras" / "sdxl_peft.safetensors"
    StableDiffusionXLPipeline.save_lora_weights(
        path.parent, weight_name=path.name, unet_lora_layers=states["unet"][0],
        text_encoder_lora_layers=states["text_encoder"][0], text_encoder_2_lora_layers=states["text_encoder_2"][0],
        unet_lora_adapter_metadata=states["unet"][1].to_dict(),
        text_encoder_lora_adapter_metadata=states["text_encoder"][1].to_dict(),
        text_encoder_2_lora_adapter_metadata=states["text_encoder_2"][1].to_dict())
    return path, peft_updates(pipe, states, lambda c, m, r: pattern_value(alpha_pattern, m, 8.0))


# The attention projections' names in diffusers' LoRAAttnProcessor files (DIFFUSERS_OLD in state_dict_utils.py).
PROCESSOR_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora",
                   "q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def old_key(component, key, processors):
    """A peft key in diffusers' older layouts: LoRACompatibleLinear's <module>.lora.down.weight (UNet) and
    <module>.lora_linear_layer.down.weight (text encoders); with `processors`, the attention projections as
    LoRAAttnProcessor saved them (<attention>.processor.to_q_lora.down.weight; <self_attn>.to_q_lora...)."""
    module, _, part = key.rpartition(".lora_")
    half = "down" if part.startswith("A") else "up"
    leaf = "to_out.0" if module.endswith(".to_out.0") else module.rpartition(".")[2]
    parent = module[:-len(leaf) - 1]
    if processors and leaf in PROCESSOR_NAMES:
        return f"{parent}{'.processor' if component == 'unet' else ''}.{PROCESSOR_NAMES[leaf]}.{half}.weight"
    return f"{module}.{'lora' if component == 'unet' else 'lora_linear_layer'}.{half}.weight"


def diffusers_old_file(pipe, processors):
    """A peft draw renamed to diffusers' older layouts; no alphas, so every module's alpha is its rank.
    LoRAAttnProcessor files patch the UNet's attention projections only."""
    unet_targets = ["to_q", "to_k", "to_v", "to_out.0"] if processors else UNET_TARGETS
    states = peft_states(pipe, 121 if processors else 111, unet_targets=unet_targets)
    state = {}
    for component, (s, _) in states.items():
        state.update({f"{component}.{old_key(component, k, processors)}": v for k, v in s.items()})
    return state, peft_updates(pipe, states, lambda c, m, r: float(r))


class Unused(logging.Handler):
    """Collects diffusers' and peft's warnings about keys they could not place."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        text = record.getMessage()
        if "unexpected" in text.lower() or "not found" in text.lower() or "no lora keys" in text.lower():
            self.messages.append(text[:300])


def fused(folder: Path, path: Path, scale: float):
    """A fresh tiny-sdxl pipeline with the file loaded and fused at `scale`; the warnings about unused keys."""
    pipe = sdxl.load_sdxl(folder)
    handler = Unused()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        pipe.load_lora_weights(path, adapter_name="a")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    pipe.fuse_lora(lora_scale=scale)
    return pipe, handler.messages


def expected_weights(base, updates, scale):
    """W + scale * alpha / rank * up @ down on the module each update names (the web UI's rule)."""
    out = {}
    for component, module, down, up, alpha in updates:
        weight = getattr(base, component).get_submodule(module).weight.detach()
        rank = down.shape[0]
        delta = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(weight.shape)
        out[f"{component}.{module}.weight"] = weight + scale * alpha / rank * delta
    return out


def sampled(tensor):
    flat = tensor.detach().flatten()
    stride = max(1, math.ceil(flat.numel() / SAMPLE))
    return flat[::stride].clone().contiguous()


def check_and_record(name, base, before, pipe, updates, scale, unused, results):
    assert not unused, (name, unused[:3])
    changed = {}
    for component in COMPONENTS:
        for param, value in getattr(pipe, component).state_dict().items():
            param = param.replace(".base_layer", "")
            if "lora_" not in param and not torch.equal(value, before[f"{component}.{param}"]):
                changed[f"{component}.{param}"] = value
    expected = expected_weights(base, updates, scale)
    assert set(changed) == set(expected), (name, sorted(set(changed) ^ set(expected))[:6])
    for key, value in expected.items():
        assert torch.allclose(changed[key], value, atol=2e-6, rtol=0), (name, key, (changed[key] - value).abs().max())
    results.update({f"{name}.{k}": sampled(v) for k, v in changed.items()})
    return sorted(changed)


def make(out: Path, full: bool):
    folder = out / "tiny-sdxl"
    base = sdxl.load_sdxl(folder)
    before = {f"{c}.{k}": v.clone() for c in COMPONENTS for k, v in getattr(base, c).state_dict().items()}
    (out / "loras").mkdir(exist_ok=True)
    files = {}
    state, updates = kohya_ldm_file(base)
    files["sdxl_kohya_ldm"] = (state, updates)
    files["sdxl_kohya_diffusers"] = kohya_diffusers_file(base)
    peft_path, peft_upd = peft_file(out, base)
    files["sdxl_diffusers_old"] = diffusers_old_file(base, processors=False)
    files["sdxl_attn_procs"] = diffusers_old_file(base, processors=True)
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"}
    paths = {"sdxl_peft": peft_path}
    for name, (state, _) in files.items():
        paths[name] = out / "loras" / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, paths[name],
                  metadata=meta if name.startswith("sdxl_kohya") else None)
    files["sdxl_peft"] = (None, peft_upd)
    results, record = {}, {"files": {}, "ldm_names": ldm_names(base.unet), "sample": SAMPLE}
    for name in SCALES:
        pipe, unused = fused(folder, paths[name], SCALES[name])
        changed = check_and_record(name, base, before, pipe, files[name][1], SCALES[name], unused, results)
        record["files"][name] = {"scale": SCALES[name], "changed": changed}
    # Both kohya files name 3x3 convs (resnets and samplers) and linears of all three components.
    for name in ("sdxl_kohya_ldm", "sdxl_kohya_diffusers"):
        changed = record["files"][name]["changed"]
        assert any(k.endswith("upsamplers.0.conv.weight") for k in changed), name
        assert any(k.startswith("text_encoder_2.") for k in changed), name
    save_file(results, out / "ref" / "sdxl_lora.safetensors")
    (out / "ref" / "sdxl_lora.json").write_text(json.dumps(record, indent=1), "utf-8")
