"""kohya LoRAs whose UNet keys use the original LDM block names (lora_unet_input_blocks_4_1_proj_in,
middle_block_…, output_blocks_…; resnet in_layers_2 / out_layers_3 / emb_layers_1 / skip_connection,
downsampler op, upsampler conv), for tiny-clip, against diffusers 0.37.1 and the web UI's rule.

What diffusers 0.37.1 does with them (checked here, each an assert):
- StableDiffusionPipeline.load_lora_weights(file) renumbers the blocks only when given unet_config (SDXL's
  loader passes it, SD's does not): without it the keys keep LDM numbers on diffusers words
  (down_blocks.4.1.proj_in) and peft refuses the file (ValueError "Target modules ... not found").
- With unet_config=pipe.unet.config (_maybe_map_sgm_blocks_to_diffusers): right, except
  (1) attention alphas: _get_alpha_name keeps ".to_q_lora.down.weight" in the alpha's name, so no module
      matches it and attention modules get the file's most common alpha instead of their own;
  (2) output_blocks_N_1_conv, the upsampler of an up block without attentions (SD1's up_blocks.0), is sent
      to attentions.N.conv, which does not exist: peft drops it with an "unexpected keys" warning;
  (3) a file mixing LDM and diffusers block names loses its LDM keys.
The web UI (extensions-builtin/Lora/networks.py, v1.10.1) names modules after the LDM model itself
("lora_unet" -> "diffusion_model"), so it places all of these, each with its own alpha. taiyi follows the web
UI; the expected weights are W + multiplier * alpha / rank * up @ down computed here on the module the web
UI's name denotes, and diffusers' weights are kept beside them, with the list of modules where they differ.

loras/ldm_clip.safetensors         random LDM-named LoRA, ranks 2-4, per-module alphas (2 the most common)
loras/kohya_clip_ldm.safetensors   lora.py's kohya_clip with every UNet key renamed to its LDM name
loras/ldm_mixed.safetensors        LDM and diffusers block names for different modules
ref/lora_ldm.json                  {"names": {diffusers module: LDM name} for tiny-clip's UNet (web UI rule),
                                    "cases": [...], "diffusers_differs": {case: {param: why}},
                                    "without_unet_config": diffusers' error for ldm_clip}
ref/lora_ldm.safetensors           "<case>.webui.<component>.<param>" and "<case>.diffusers.<component>.<param>":
                                   the first HEAD values of every parameter either changed; "<case>.images"
                                   (diffusers' pipeline with the web UI's merged weights)
"""
import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from lora import HEAD, load_pipeline, run  # noqa: E402

RESNET_PARTS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                "conv_shortcut": "skip_connection"}


def ldm_names(unet):
    """Every Linear / Conv2d of a diffusers UNet by the LDM model's name (openaimodel.py's numbering:
    input_blocks[0] = conv_in, per down block lpb [ResBlock, SpatialTransformer] entries and a Downsample,
    middle_block [ResBlock, SpatialTransformer, ResBlock], per up block lpb + 1 entries [ResBlock,
    SpatialTransformer?, Upsample?]), '.' written '_' as the web UI's network_layer_mapping does."""
    lpb = unet.config.layers_per_block
    up_attention = [hasattr(b, "attentions") for b in unet.up_blocks]
    top = {"conv_in": "input_blocks_0_0", "conv_out": "out_2", "time_embedding.linear_1": "time_embed_0",
           "time_embedding.linear_2": "time_embed_2"}
    names = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        p = name.split(".")
        if name in top:
            names[name] = top[name]
            continue
        if p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), p[3:]
            index = 1 if kind == "attentions" else 2 * j
            entry = f"middle_block_{index}"
        elif p[0] in ("down_blocks", "up_blocks"):
            b, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
            if kind == "downsamplers":
                names[name] = f"input_blocks_{(b + 1) * (lpb + 1)}_0_op"
                continue
            if kind == "upsamplers":
                names[name] = f"output_blocks_{b * (lpb + 1) + lpb}_{2 if up_attention[b] else 1}_conv"
                continue
            index = 1 + b * (lpb + 1) + j if p[0] == "down_blocks" else b * (lpb + 1) + j
            blocks = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
            entry = f"{blocks}_{index}_{0 if kind == 'resnets' else 1}"
        else:
            continue
        tail = RESNET_PARTS[rest[0]] if kind == "resnets" else "_".join(rest)
        names[name] = f"{entry}_{tail}"
    return names


# LDM name -> (rank, alpha). 2.0 is the most common alpha; the attention modules with another alpha are the
# ones diffusers gets wrong (their alpha is lost), proj_in / resnets with another alpha it gets right.
LDM_CLIP = {
    "input_blocks_1_1_transformer_blocks_0_attn1_to_q": (2, 2.0),
    "input_blocks_1_1_transformer_blocks_0_attn1_to_k": (4, 5.0),
    "input_blocks_2_1_transformer_blocks_0_attn2_to_v": (2, 2.0),
    "input_blocks_4_1_proj_in": (3, 3.0),
    "input_blocks_4_1_transformer_blocks_0_attn2_to_out_0": (2, 2.0),
    "input_blocks_5_1_transformer_blocks_0_ff_net_0_proj": (2, 2.0),
    "input_blocks_5_1_transformer_blocks_0_ff_net_2": (4, 2.0),
    "input_blocks_5_1_proj_out": (2, 2.0),
    "input_blocks_1_0_in_layers_2": (2, 1.0),
    "input_blocks_4_0_skip_connection": (2, 2.0),
    "input_blocks_7_0_emb_layers_1": (3, 2.0),
    "input_blocks_8_0_out_layers_3": (2, 2.0),
    "input_blocks_3_0_op": (2, 2.0),
    "middle_block_0_in_layers_2": (2, 2.0),
    "middle_block_1_transformer_blocks_0_attn1_to_v": (2, 4.0),
    "middle_block_1_proj_out": (2, 2.0),
    "middle_block_2_emb_layers_1": (2, 2.0),
    "output_blocks_0_0_skip_connection": (2, 2.0),
    "output_blocks_2_1_conv": (2, 2.0),
    "output_blocks_5_2_conv": (3, 2.0),
    "output_blocks_4_1_transformer_blocks_0_attn2_to_k": (2, 2.0),
    "output_blocks_7_0_out_layers_3": (2, 2.0),
    "output_blocks_8_1_proj_in": (2, 2.0),
}
# The text encoder's names are transformers' in both layouts. out_proj is there because diffusers converts a
# kohya text-encoder file's attention keys only when it holds an out_proj one (as in lora.py).
LDM_CLIP_TE = {"text_model_encoder_layers_0_self_attn_q_proj": (2, 2.0),
               "text_model_encoder_layers_0_self_attn_out_proj": (3, 2.0),
               "text_model_encoder_layers_1_mlp_fc1": (2, 2.0)}
MIXED = ["input_blocks_1_1_proj_in", "output_blocks_3_0_in_layers_2",  # LDM names
         "down_blocks_1_attentions_0_proj_out", "up_blocks_2_resnets_0_conv2"]  # diffusers names

CASES = [dict(name="ldm_clip_07", file="ldm_clip", multiplier=0.7, steps=6, sampler="", seed=71, count=1,
              cfg_scale=7.5, width=64, height=64, prompt="a cat on a windowsill, 油画", negative_prompt="模糊"),
         dict(name="ldm_mixed_10", file="ldm_mixed", multiplier=1.0),
         dict(name="kohya_clip_ldm_10", file="kohya_clip_ldm", multiplier=1.0)]


def random_pair(weight, rank, gen):
    down = torch.randn((rank,) + tuple(weight.shape[1:]), generator=gen) * (0.3 / weight[0].numel() ** 0.5)
    up_shape = (weight.shape[0], rank) + ((1, 1) if weight.dim() == 4 else ())
    return down, torch.randn(up_shape, generator=gen) * (0.3 / rank ** 0.5)


def write_files(out: Path, pipe, names):
    """The three LoRA files; returns {file: {key: tensor}}."""
    modules = {**{f"unet|{v}": dict(pipe.unet.named_modules())[k] for k, v in names.items()},
               **{f"text_encoder|{k.replace('.', '_')}": m for k, m in pipe.text_encoder.named_modules()}}
    modules.update({f"unet|{k.replace('.', '_')}": m for k, m in pipe.unet.named_modules()})
    gen = torch.Generator().manual_seed(41)
    files = {"ldm_clip": {}, "ldm_mixed": {}}
    for component, table, prefix in (("unet", LDM_CLIP, "lora_unet_"), ("text_encoder", LDM_CLIP_TE, "lora_te_")):
        for name, (rank, alpha) in table.items():
            down, up = random_pair(modules[f"{component}|{name}"].weight, rank, gen)
            files["ldm_clip"].update({f"{prefix}{name}.lora_down.weight": down, f"{prefix}{name}.lora_up.weight": up,
                                      f"{prefix}{name}.alpha": torch.tensor(alpha)})
    for name in MIXED:
        down, up = random_pair(modules[f"unet|{name}"].weight, 2, gen)
        files["ldm_mixed"].update({f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up,
                                   f"lora_unet_{name}.alpha": torch.tensor(1.0)})
    by_underscored = {k.replace(".", "_"): v for k, v in names.items()}
    renamed = {}
    for key, value in load_file(out / "loras" / "kohya_clip.safetensors").items():
        module, _, part = key.partition(".")
        if module.startswith("lora_unet_"):
            module = "lora_unet_" + by_underscored[module.removeprefix("lora_unet_")]
        renamed[f"{module}.{part}"] = value
    files["kohya_clip_ldm"] = renamed
    for name, state in files.items():
        save_file({k: v.contiguous() for k, v in state.items()}, out / "loras" / f"{name}.safetensors",
                  metadata={"ss_network_module": "networks.lora"})
    return files


def webui_merge(pipe, state, names, multiplier):
    """networks.py's rule on the module each key names: W + multiplier * alpha / rank * up @ down (the
    web UI's rebuild_conventional for a kxk conv: up and down flattened, multiplied, reshaped)."""
    by_ldm = {v: k for k, v in names.items()}
    by_underscored = {k.replace(".", "_"): k for k in names}
    te = {k.replace(".", "_"): k for k, _ in pipe.text_encoder.named_modules()}
    for key, down in state.items():
        if not key.endswith(".lora_down.weight"):
            continue
        base = key.removesuffix(".lora_down.weight")
        if base.startswith("lora_te_"):
            module = pipe.text_encoder.get_submodule(te[base.removeprefix("lora_te_")])
        else:
            name = base.removeprefix("lora_unet_")
            module = pipe.unet.get_submodule(by_ldm.get(name) or by_underscored[name])
        up = state[base + ".lora_up.weight"]
        rank = down.shape[0]
        alpha = float(state[base + ".alpha"]) if base + ".alpha" in state else rank
        delta = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(module.weight.shape)
        with torch.no_grad():
            module.weight += multiplier * alpha / rank * delta


def changed_heads(pipe, before, prefix):
    out = {}
    for component in ("unet", "text_encoder"):
        for name, p in getattr(pipe, component).state_dict().items():
            name = name.replace(".base_layer", "")
            if "lora_" not in name and not torch.equal(p, before[component][name]):
                out[f"{prefix}.{component}.{name}"] = p.detach().flatten()[:HEAD].clone()
    return out


def diffusers_merge(out: Path, c, base):
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(out / "loras" / f"{c['file']}.safetensors", adapter_name="a", unet_config=pipe.unet.config)
    pipe.set_adapters(["a"], adapter_weights=[c["multiplier"]])
    pipe.fuse_lora(lora_scale=1.0)
    return pipe


def why_differs(param, c, state, names):
    """Which of diffusers' faults explains a parameter where it and the web UI disagree (else an assert)."""
    module = param.split(".", 1)[1].removesuffix(".weight")
    ldm = names.get(module, "")
    if c["file"] == "ldm_clip" and ldm == "output_blocks_2_1_conv":
        return "upsampler of an up block without attentions: diffusers sends it to attentions.2.conv and drops it"
    if c["file"] == "ldm_clip" and "transformer_blocks" in ldm and float(state[f"lora_unet_{ldm}.alpha"]) != 2.0:
        return "attention alpha lost: diffusers uses the file's most common alpha (2) for this module"
    if c["file"] == "ldm_mixed" and f"lora_unet_{ldm}.lora_down.weight" in state:
        return "mixed LDM and diffusers names: diffusers drops the LDM keys"
    if c["file"] == "kohya_clip_ldm" and ldm == "output_blocks_2_1_conv":
        return "upsampler of an up block without attentions: diffusers sends it to attentions.2.conv and drops it"
    raise AssertionError(f"{c['name']}: diffusers and the web UI differ on {param} for no known reason")


def make(out: Path, full: bool):
    base = load_pipeline(out, "tiny-clip", "")
    names = ldm_names(base.unet)
    files = write_files(out, base, names)
    before = {component: {k: v.clone() for k, v in getattr(base, component).state_dict().items()}
              for component in ("unet", "text_encoder")}
    # SD's own load_lora_weights (no unet_config) refuses every LDM-named file.
    try:
        copy.deepcopy(base).load_lora_weights(out / "loras" / "ldm_clip.safetensors")
        raise AssertionError("diffusers loaded LDM names without unet_config")
    except ValueError as e:
        without = str(e).splitlines()[0][:200]
        assert "not found in the base model" in str(e), e
    results, differs = {}, {}
    for c in CASES:
        state = files[c["file"]]
        webui = copy.deepcopy(base)
        webui_merge(webui, state, names, c["multiplier"])
        expected = changed_heads(webui, before, f"{c['name']}.webui")
        got = changed_heads(diffusers_merge(out, c, base), before, f"{c['name']}.diffusers")
        assert len(expected) == sum(k.endswith(".lora_down.weight") for k in state), (c["name"], len(expected))
        differs[c["name"]] = {}
        for key, value in expected.items():
            param = key.split(".webui.", 1)[1]
            theirs = got.get(f"{c['name']}.diffusers.{param}")
            if theirs is None or not torch.allclose(theirs, value, atol=1e-6, rtol=0):
                why = differs[c["name"]][param] = why_differs(param, c, state, names)
                component, name = param.split(".", 1)
                w = before[component][name].flatten()[:HEAD]
                if "drop" in why:
                    assert theirs is None, param  # left as it was
                else:  # the same update at the most common alpha, 2
                    own = float(state[f"lora_unet_{names[name.removesuffix('.weight')]}.alpha"])
                    assert torch.allclose((theirs - w) * own / 2.0, value - w, atol=1e-6, rtol=0), param
        results.update(expected)
        results.update(got)
        if "steps" in c:  # diffusers' pipeline with the web UI's weights
            results[f"{c['name']}.images"] = run(webui, c)
    assert len(differs["ldm_clip_07"]) == 3 and len(differs["kohya_clip_ldm_10"]) == 1, differs
    save_file(results, out / "ref" / "lora_ldm.safetensors")
    record = dict(names=names, cases=CASES, diffusers_differs=differs, without_unet_config=without)
    (out / "ref" / "lora_ldm.json").write_text(json.dumps(record, ensure_ascii=False, indent=1), "utf-8")
