"""LoRA and textual-inversion references: random LoRAs made with peft on the tiny pipelines' own modules,
saved in diffusers' PEFT layout (StableDiffusionPipeline.save_lora_weights, alpha in its adapter metadata)
and in the kohya / web UI layout (diffusers' convert_state_dict_to_kohya, alphas then set apart from the
rank), loaded back with load_lora_weights and fused with fuse_lora(lora_scale=s); textual-inversion files
in the web UI's (emb_params) and diffusers' (learned_embeds) layouts, loaded with load_textual_inversion.

loras/<name>.safetensors               the LoRA and embedding files (see LORAS, EMBEDDINGS)
ref/lora_hashes.json                   the web UI's short hash of each LoRA file (its "Lora hashes")
ref/lora_cases.json                    the cases: model, loras [[file, scale], ...], prompt, settings
ref/lora.safetensors                   "<case>.images" [N, H, W, 3] byte values as float32;
                                       "<case>.<component>.<param>": the first HEAD values of every fused
                                       parameter the LoRAs changed (the harness checks that the changed
                                       weights are exactly the modules the files name)
ref/embeddings_cases.json, ref/embeddings.safetensors
                                       "<case>.images", "<case>.prompt_embeds" / ".negative_prompt_embeds"
                                       (encode_prompt with the embeddings loaded)
With --full: loras/full-rank32.safetensors, a rank-32 kohya LoRA of every attention and feed-forward
linear and 1x1 projection of the full-size UNet, and ref/lora_full.safetensors with a slice of the fused
weights ("<param>.head": the first 4096 values) for the full-size parity test.
"""
import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HEAD = 512
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "time_emb_proj", "conv_shortcut", "conv"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

# name: (model, layout, rank, alpha, seed, unet targets, text-encoder targets)
LORAS = {
    "peft_clip": ("tiny-clip", "peft", 4, 8.0, 11, UNET_TARGETS, CLIP_TARGETS),
    "kohya_clip": ("tiny-clip", "kohya", 4, 2.0, 12, UNET_TARGETS, CLIP_TARGETS),
    "kohya_clip_attn": ("tiny-clip", "kohya", 2, 1.0, 13, ["to_q", "to_v", "proj_out"], ["q_proj", "out_proj"]),  # diffusers needs out_proj in a kohya TE LoRA
    "peft_bert": ("tiny-bert", "peft", 4, 4.0, 14, ["to_k", "to_out.0", "conv2"], BERT_TARGETS),
    # diffusers cannot place kohya keys of a BERT text encoder (its converter knows CLIP's names only):
    # UNet keys here; taiyi's BERT kohya keys are checked against peft_bert converted (test_lora.cpp).
    "kohya_bert": ("tiny-bert", "kohya", 3, 6.0, 15, ["attn2.to_q", "conv1"], []),
}


def case(name, model, loras, steps=6, sampler="", seed=51, count=1):
    return dict(name=name, model=model, loras=loras, steps=steps, sampler=sampler, seed=seed, count=count,
                cfg_scale=7.5, width=64, height=64,
                prompt="一只猫坐在窗台上，油画" if model == "tiny-bert" else "a cat on a windowsill, 油画",
                negative_prompt="模糊")


CASES = [
    case("peft_clip_08", "tiny-clip", [["peft_clip", 0.8]]),
    case("kohya_clip_10", "tiny-clip", [["kohya_clip", 1.0]], sampler="Euler a", count=2),
    case("stacked_clip", "tiny-clip", [["kohya_clip", 0.5], ["kohya_clip_attn", 0.7]], sampler="DPM++ 2M"),
    case("peft_bert_06", "tiny-bert", [["peft_bert", 0.6]]),
    case("kohya_bert_10", "tiny-bert", [["kohya_bert", 1.0]]),
]

# Textual inversion (tiny-clip): name -> (layout, vectors, seed); the web UI's file is <name>.safetensors
# holding "emb_params", diffusers' holds {token: vectors}.
EMBEDDINGS = {"tiny-style": ("webui", 3, 21), "bad-hands": ("diffusers", 1, 22)}
EMBEDDING_CASES = [
    dict(name="ti_clip", model="tiny-clip", embeddings=["tiny-style", "bad-hands"], steps=6, seed=61, count=1,
         cfg_scale=7.5, width=64, height=64, prompt="a cat on a windowsill, tiny-style, 油画",
         negative_prompt="<bad-hands>, 模糊"),
    dict(name="ti_clip_twice", model="tiny-clip", embeddings=["tiny-style", "bad-hands"], steps=6, seed=62, count=1,
         cfg_scale=7.5, width=64, height=64, prompt="tiny-style tiny-style, a lighthouse", negative_prompt=""),
]


def random_peft_state_dict(model, targets, rank, alpha, seed, config=None):
    """peft's LoRA layers on a copy of `model` (add_adapter), their weights drawn from a fixed seed at a
    scale that changes the image without swamping it; get_peft_model_state_dict's keys. `config`, when
    given, is the LoraConfig instead of one made of targets, rank and alpha."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(model)
    config = config or LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 / p[0].numel() ** 0.5))
    state = get_peft_model_state_dict(model)
    return state, config


def save_lora(out: Path, pipe, name, spec):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya

    model, layout, rank, alpha, seed, unet_targets, te_targets = spec
    unet_state, unet_config = random_peft_state_dict(pipe.unet, unet_targets, rank, alpha, seed)
    te_state, te_config = (random_peft_state_dict(pipe.text_encoder, te_targets, rank, alpha, seed + 100)
                           if te_targets else ({}, None))
    folder = out / "loras"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.safetensors"
    if layout == "peft":
        config_dict = lambda c: c.to_dict()
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_state, text_encoder_lora_layers=te_state or None,
                                                  weight_name=path.name, unet_lora_adapter_metadata=config_dict(unet_config),
                                                  text_encoder_lora_adapter_metadata=config_dict(te_config))
    else:
        state = {f"unet.{k}": v for k, v in unet_state.items()}
        state.update({f"text_encoder.{k}": v for k, v in te_state.items()})
        kohya = convert_state_dict_to_kohya(state)
        # The web UI's files name the text encoder lora_te_ (diffusers writes SDXL's lora_te1_; both load).
        kohya = {k.replace("lora_te1_", "lora_te_"): v for k, v in kohya.items()}
        kohya = {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}
        save_file(kohya, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})
    return path


def load_pipeline(out: Path, model: str, sampler: str):
    import diffusers
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pipeline import SAMPLER_CLASSES

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out / model)
    if sampler:
        class_name, overrides = SAMPLER_CLASSES[sampler.lower()]
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, c):
    generators = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
    result = pipe(c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                  guidance_scale=c["cfg_scale"], num_images_per_prompt=c["count"], generator=generators,
                  width=c["width"], height=c["height"], output_type="np")
    images = (result.images.astype(np.float32) * 255).round().astype("uint8")
    return torch.from_numpy(images.astype(np.float32)).contiguous()


def fuse_bert(pipe, path, scale):
    """diffusers places no BERT text-encoder LoRA keys (its converters know CLIP's module names): the UNet
    part through load_lora_into_unet and fuse_lora, the text encoder's with peft itself, the way
    fuse_lora does it (scale_layer(scale), then merge)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    state = load_file(path)
    unet_state = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "lora_te_"))}
    pipe.load_lora_weights(unet_state, adapter_name="unet_part")
    pipe.set_adapters(["unet_part"], adapter_weights=[scale])
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    te_state = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    if not te_state:
        return
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    config = {k.removeprefix("text_encoder."): v for k, v in metadata.items() if k.startswith("text_encoder.")}
    model = get_peft_model(pipe.text_encoder, LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                                         target_modules=config["target_modules"]))
    result = set_peft_model_state_dict(model, {f"base_model.model.{k}": v for k, v in te_state.items()})
    assert not result.unexpected_keys, result.unexpected_keys[:3]
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(scale)
            module.merge()
    pipe.text_encoder = model.unload()


def fused_changes(pipe, before):
    changed = {}
    for component in ("unet", "text_encoder"):
        for name, p in getattr(pipe, component).state_dict().items():
            name = name.replace(".base_layer", "")
            if "lora_" in name:
                continue
            if not torch.equal(p, before[component][name]):
                changed[f"{component}.{name}"] = p.detach().flatten()[:HEAD].clone()
    return changed


def make(out: Path, full: bool):
    results = {}
    files = {}
    pipes = {}
    for name, spec in LORAS.items():
        model = spec[0]
        if model not in pipes:
            pipes[model] = load_pipeline(out, model, "")
        files[name] = save_lora(out, pipes[model], name, spec)
    # The web UI's short hash of each file (networks.py, addnet_hash_safetensors), for "Lora hashes".
    hashes = {}
    for name, path in files.items():
        data = path.read_bytes()
        header = int.from_bytes(data[:8], "little")
        hashes[name] = hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    (out / "ref" / "lora_hashes.json").write_text(json.dumps(hashes, indent=1))
    for c in CASES:
        pipe = load_pipeline(out, c["model"], c["sampler"])
        before = {component: {k: v.clone() for k, v in getattr(pipe, component).state_dict().items()}
                  for component in ("unet", "text_encoder")}
        names = []
        for index, (lora, scale) in enumerate(c["loras"]):
            if c["model"] == "tiny-bert":
                fuse_bert(pipe, files[lora], scale)
            else:
                pipe.load_lora_weights(files[lora], adapter_name=f"a{index}")
                names.append(f"a{index}")
        if names:
            pipe.set_adapters(names, adapter_weights=[scale for _, scale in c["loras"]])
            pipe.fuse_lora(lora_scale=1.0)
        changed = fused_changes(pipe, before)
        # Every module a file names must have changed (diffusers drops keys it cannot place silently).
        expected = set()
        for lora, _ in c["loras"]:
            for key in load_file(files[lora]):
                if key.endswith((".lora_down.weight", ".lora_A.weight")):
                    expected.add(key.split(".lora")[0])
        assert len(changed) >= len(expected), (c["name"], len(changed), len(expected))
        weight_changes = {k for k in changed if k.endswith(".weight")}
        assert len(weight_changes) == len(expected), (c["name"], sorted(weight_changes)[:5], len(expected))
        results.update({f"{c['name']}.{k}": v for k, v in changed.items()})
        results[f"{c['name']}.images"] = run(pipe, c)
    save_file(results, out / "ref" / "lora.safetensors")
    (out / "ref" / "lora_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")

    make_embeddings(out)
    if full:
        make_full(out)


def make_embeddings(out: Path):
    folder = out / "loras"
    dim = load_pipeline(out, "tiny-clip", "").text_encoder.get_input_embeddings().weight.shape[1]
    paths = {}
    for name, (layout, vectors, seed) in EMBEDDINGS.items():
        vectors_tensor = torch.randn(vectors, dim, generator=torch.Generator().manual_seed(seed)) * 0.5
        if layout == "webui":
            paths[name] = folder / f"{name}.safetensors"
            save_file({"emb_params": vectors_tensor}, paths[name])
        else:
            paths[name] = folder / f"learned_embeds_{name}.safetensors"
            save_file({f"<{name}>": vectors_tensor[0]}, paths[name])
    results = {}
    for c in EMBEDDING_CASES:
        pipe = load_pipeline(out, c["model"], "")
        for name in c["embeddings"]:
            layout = EMBEDDINGS[name][0]
            if layout == "webui":
                pipe.load_textual_inversion(paths[name], token=name)
            else:
                pipe.load_textual_inversion(paths[name])
        with torch.no_grad():
            positive, negative = pipe.encode_prompt(c["prompt"], "cpu", 1, True, c["negative_prompt"])
        results[f"{c['name']}.prompt_embeds"] = positive.contiguous()
        results[f"{c['name']}.negative_prompt_embeds"] = negative.contiguous()
        results[f"{c['name']}.images"] = run(pipe, c)
    save_file(results, out / "ref" / "embeddings.safetensors")
    (out / "ref" / "embeddings_cases.json").write_text(json.dumps(EMBEDDING_CASES, ensure_ascii=False, indent=1),
                                                       "utf-8")


def make_full(out: Path):
    """A rank-32 kohya LoRA for the full-size UNet (attention, feed-forward, proj_in/out: the modules web UI
    LoRAs train), fused by diffusers; a head of each fused weight."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya

    unet = UNet2DConditionModel.from_pretrained(out / "full-clip" / "unet")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    state, _ = random_peft_state_dict(unet, targets, 32, 16.0, 31)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    kohya = {k: (torch.tensor(16.0) if k.endswith(".alpha") else v.half().contiguous()) for k, v in kohya.items()}
    path = out / "loras" / "full-rank32.safetensors"
    save_file(kohya, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "32"})
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out / "full-clip")
    before = {k: v[:1].clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(path)
    pipe.fuse_lora(lora_scale=0.9)
    heads = {}
    for name, p in pipe.unet.state_dict().items():
        name = name.replace(".base_layer", "")
        if "lora_" in name or not name.endswith(".weight"):
            continue
        if not torch.equal(p[:1], before[name]):
            heads[f"{name}.head"] = p.flatten()[:4096].clone().contiguous()
    assert len(heads) == sum(1 for k in kohya if k.endswith(".lora_down.weight")), len(heads)
    save_file(heads, out / "ref" / "lora_full.safetensors")
