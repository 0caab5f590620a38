"""SDXL single-file checkpoints in the original LDM / SGM layout (what Taiyi-XL's taiyi_diffusion_xl.safetensors
and the model sites' SDXL fine-tunes are), made from the tiny-sdxl and tiny-taiyi-xl pipelines of sdxl.py, for
tests/loaders/test_single_file_sdxl.cpp; and what diffusers / transformers make of taiyi's built-in SDXL configs.

The layout (the inverse of diffusers 0.37.1's loaders/single_file_utils.py, written here):
    model.diffusion_model.*            the UNet (ldm_layout.unet_to_original), with add_embedding.linear_1/_2 as
                                       label_emb.0.0 / label_emb.0.2
    first_stage_model.*                the VAE (ldm_layout.vae_to_original)
    conditioner.embedders.0.transformer.*   text_encoder (CLIPTextModel) under its own names
    conditioner.embedders.1.model.*    text_encoder_2 as OpenCLIP holds it: positional_embedding, token_embedding,
                                       ln_final, text_projection [hidden, projection] (the Linear weight
                                       transposed), transformer.resblocks.N.{ln_1, ln_2, attn.in_proj_weight /
                                       in_proj_bias (q, k, v stacked), attn.out_proj, mlp.c_fc, mlp.c_proj},
                                       and logit_scale, which no component reads

The harness proves each file: StableDiffusionXLPipeline.from_single_file(file, config=<the folder>,
local_files_only=True) gives back the folder's UNet, VAE and both text encoders exactly (asserted).

sdxl_single_file/sdxl.safetensors           tiny-sdxl, fp32
sdxl_single_file/sdxl.ckpt                  the same as {"state_dict": ..., "global_step"} (torch.save)
sdxl_single_file/taiyi-xl.safetensors       tiny-taiyi-xl (both encoders 57475 tokens, 512 positions), fp32
sdxl_single_file/sdxl-refiner.safetensors   keys only (zeros): an SDXL refiner's first keys (OpenCLIP as embedders.0)
sdxl_single_file/<file>.json                per file: "config" (the folder), "model_type" (diffusers'
                                       infer_diffusers_model_type: "v1" for the tiny files, whose OpenCLIP has
                                       no 10th layer; see single_file_utils.cpp), "keys" [[name, shape], ...]
ref/sdxl_single_file_configs.json      {"<name>": {"file": the built-in JSON of src/loaders/single_file_configs.cpp,
                                       "differences": {key: [from the built-in file, from sdxl.py's *_FULL]}}},
                                       names sdxl_unet, sdxl_vae, sdxl_scheduler, sdxl_text_encoder_2
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sdxl  # noqa: E402
from ldm_layout import unet_to_original, vae_to_original  # noqa: E402
from single_file_configs import builtin_files, differences  # noqa: E402

OPEN_CLIP = "conditioner.embedders.1.model."
CLIP_L = "conditioner.embedders.0.transformer."
# CLIPTextModelWithProjection's layer names -> OpenCLIP's (the inverse of DIFFUSERS_TO_LDM_MAPPING["openclip"]).
OPEN_CLIP_LAYER_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                         "self_attn.out_proj": "attn.out_proj"}


def open_clip_original(state):
    """text_encoder_2's weights as OpenCLIP's text tower names them."""
    original = {"positional_embedding": state["text_model.embeddings.position_embedding.weight"],
                "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
                "ln_final.weight": state["text_model.final_layer_norm.weight"],
                "ln_final.bias": state["text_model.final_layer_norm.bias"],
                "text_projection": state["text_projection.weight"].T.contiguous(),
                "logit_scale": torch.tensor(4.6052)}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for n in layers:
        ours, theirs = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for leaf in ("weight", "bias"):
            original[f"{theirs}attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{ours}self_attn.{p}_proj.{leaf}"] for p in ("q", "k", "v")])
            for part, their_part in OPEN_CLIP_LAYER_PARTS.items():
                original[f"{theirs}{their_part}.{leaf}"] = state[f"{ours}{part}.{leaf}"]
    mapped = {"text_model.embeddings.position_embedding.weight", "text_model.embeddings.token_embedding.weight",
              "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "text_projection.weight"}
    for n in layers:
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", *OPEN_CLIP_LAYER_PARTS):
            mapped |= {f"text_model.encoder.layers.{n}.{part}.{leaf}" for leaf in ("weight", "bias")}
    assert mapped == set(state), f"text_encoder_2 keys not written: {sorted(set(state) - mapped)[:5]}"
    return {OPEN_CLIP + k: v for k, v in original.items()}


def sgm_checkpoint(folder):
    """A diffusers SDXL folder's tensors in the SGM single-file layout, each with storage of its own."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    original = unet_to_original({k: v for k, v in unet.items() if not k.startswith("add_embedding.")}, unet_config)
    for diffusers, ldm in (("linear_1", "label_emb.0.0"), ("linear_2", "label_emb.0.2")):
        for leaf in ("weight", "bias"):
            original[f"model.diffusion_model.{ldm}.{leaf}"] = unet[f"add_embedding.{diffusers}.{leaf}"]
    original.update(vae_to_original(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), vae_config))
    for key, tensor in load_file(folder / "text_encoder" / "model.safetensors").items():
        original[CLIP_L + key] = tensor
    original.update(open_clip_original(load_file(folder / "text_encoder_2" / "model.safetensors")))
    return {k: v.clone().contiguous().float() for k, v in original.items()}


def assert_same(actual, expected, what):
    assert set(actual) == set(expected), f"{what}: keys differ: {sorted(set(actual) ^ set(expected))[:5]}"
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), f"{what}: {key} differs"


def prove(path, folder):
    """diffusers reads `path` back to exactly the folder's weights; returns its record."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        name = "model.safetensors" if component.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        expected = load_file(folder / component / name)
        actual = getattr(pipe, component).state_dict()
        # transformers' CLIP keeps position_ids as a buffer that its files do not hold.
        assert_same({k: v for k, v in actual.items() if k in expected or "position_ids" not in k}, expected,
                    f"{path.name} {component}")
    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    return {"config": folder.name, "model_type": infer_diffusers_model_type(checkpoint),
            "keys": [[k, list(v.shape)] for k, v in checkpoint.items() if torch.is_tensor(v)]}


def write_record(out_dir, name, record):
    (out_dir / f"{name}.json").write_text(json.dumps({"file": name, **record}, indent=0, ensure_ascii=False))


def refiner_keys(out_dir):
    """The refiner's telling keys (its OpenCLIP as embedders.0, with text_projection), small: no weights."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    shapes = {"model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3],
              "conditioner.embedders.0.model.text_projection": [8, 8],
              "conditioner.embedders.0.model.positional_embedding": [77, 8],
              "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": [8]}
    tensors = {k: torch.zeros(s) for k, s in shapes.items()}
    assert infer_diffusers_model_type(tensors) == "xl_refiner"
    save_file(tensors, out_dir / "sdxl-refiner.safetensors")


def record_builtin_configs(out):
    """What diffusers and transformers derive from the built-in SDXL files, against sdxl.py's full-size configs."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    files = builtin_files()
    record = {}

    def add(name, file_key, derived, reference):
        record[name] = {"file": files[file_key], "differences": differences(derived, reference)}

    with torch.device("meta"):
        add("sdxl_unet", "kSdxlUNetConfig", dict(UNet2DConditionModel.from_config(files["kSdxlUNetConfig"]).config),
            dict(UNet2DConditionModel(**sdxl.SDXL_UNET_FULL).config))
        add("sdxl_vae", "kSdxlVaeConfig", dict(AutoencoderKL.from_config(files["kSdxlVaeConfig"]).config),
            dict(AutoencoderKL(**sdxl.SDXL_VAE).config))
    add("sdxl_scheduler", "kSdxlSchedulerConfig",
        dict(EulerDiscreteScheduler.from_config(files["kSdxlSchedulerConfig"]).config),
        dict(EulerDiscreteScheduler(**sdxl.EULER).config))
    add("sdxl_text_encoder_2", "kSdxlTextConfig2", CLIPTextConfig(**files["kSdxlTextConfig2"]).to_dict(),
        CLIPTextConfig(**sdxl.CLIP_G_FULL).to_dict())
    (out / "ref" / "sdxl_single_file_configs.json").write_text(json.dumps(record, indent=1) + "\n")


def make(out: Path, full: bool):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out_dir = out / "sdxl_single_file"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, folder_name in (("sdxl", "tiny-sdxl"), ("taiyi-xl", "tiny-taiyi-xl")):
            folder = out / folder_name
            checkpoint = sgm_checkpoint(folder)
            save_file(checkpoint, out_dir / f"{name}.safetensors")
            write_record(out_dir, f"{name}.safetensors", prove(out_dir / f"{name}.safetensors", folder))
            if name == "sdxl":
                torch.save({"state_dict": checkpoint, "global_step": 1000}, out_dir / "sdxl.ckpt")
                write_record(out_dir, "sdxl.ckpt", prove(out_dir / "sdxl.ckpt", folder))
        refiner_keys(out_dir)
        record_builtin_configs(out)
    finally:
        torch.set_num_threads(threads)
