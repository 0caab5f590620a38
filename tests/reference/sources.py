"""Models as users download them, end to end: diffusers' images from each form of the tiny pipelines, for
tests/loaders/test_single_file.cpp. Runs after single_file.py (name order), whose LDM single files it uses.

Folders written here (beside tiny-clip/ and tiny-bert/):
    tiny-clip-bin/, tiny-bert-bin/   save_pretrained(safe_serialization=False): .bin (pickle) weights only
    tiny-clip-fp16/                  save_pretrained(variant="fp16") of the pipeline in float16 (*.fp16.safetensors)
    tiny-clip-vae2022/               tiny-clip with the VAE's attention under its 2022 names (query/key/value/proj_attn)

ref/sources_cases.json lists the cases: "model" (relative to the fixtures), taiyi's options for it
("variant", "vae", "config_dir", "extract_ema", relative paths) and the generation settings; their uint8
images (as float32, [N, H, W, 3]) are ref/sources.safetensors "<case>.images". Each is diffusers 0.37.1 on
that input, fp32 CPU: from_pretrained(folder[, variant]) or from_single_file(file, config=folder), with
vae=AutoencoderKL.from_single_file(...) for a separate VAE file.
"""
import json
import shutil
from pathlib import Path

import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from single_file import ModelCheckpoint  # noqa: E402  (single_file.py puts this folder on sys.path too)

SETTINGS = dict(prompt="小桥流水人家，Van Gogh style", negative_prompt="模糊", steps=4, cfg_scale=7.5, seed=11,
                width=64, height=64, count=1)
LEGACY_VAE_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def case(name, model, loader, **options):
    """`model` and the options are taiyi's input; `loader` and `reference` (default: `model`) say how diffusers
    reads the same thing."""
    return dict(SETTINGS, name=name, model=model, loader=loader, reference=options.get("reference", model),
                variant=options.get("variant", ""), vae=options.get("vae", ""), config_dir=options.get("config_dir", ""),
                extract_ema=options.get("extract_ema", False))


def inpaint(c):
    """A 9-channel UNet's case: StableDiffusionInpaintPipeline with an init image and a mask."""
    return dict(c, init_image="images/rgb_64.png", mask="images/mask_64.png", strength=1.0)


def folder_cases():
    return [
        case("bin_clip", "tiny-clip-bin", "folder"),
        case("bin_bert", "tiny-bert-bin", "folder"),
        case("fp16_variant", "tiny-clip-fp16", "folder", variant="fp16"),
        case("vae_2022_names", "tiny-clip-vae2022", "folder"),
    ]


def single_file_cases(out: Path):
    """The files of single_file.py. diffusers reads a BERT text encoder from the config folder, not from the
    file (single_file.py proves the file's BERT weights are the folder's), so the BERT cases' reference is the
    folder's pipeline, as issue 26 says ("the folder that tools/convert.py makes")."""
    sf = "single_file"
    return [
        case("single_clip_safetensors", f"{sf}/clip.safetensors", "single_file", config_dir="tiny-clip"),
        case("single_clip_ckpt_lightning", f"{sf}/clip-ema.ckpt", "single_file", config_dir="tiny-clip"),
        case("single_clip_ckpt_extract_ema", f"{sf}/clip-ema.ckpt", "single_file", config_dir="tiny-clip", extract_ema=True),
        case("single_bert_safetensors", f"{sf}/bert.safetensors", "folder", config_dir="tiny-bert", reference="tiny-bert"),
        case("single_bert_ckpt", f"{sf}/bert-ema.ckpt", "folder", config_dir="tiny-bert", reference="tiny-bert"),
        inpaint(case("single_inpaint_safetensors", f"{sf}/clip-inpaint.safetensors", "single_file",
                     config_dir="tiny-clip-inpaint")),
        inpaint(case("single_inpaint_ckpt", f"{sf}/clip-inpaint.ckpt", "single_file", config_dir="tiny-clip-inpaint")),
        case("vae_file_safetensors", "tiny-clip", "folder", vae=f"{sf}/vae.safetensors"),
        case("vae_file_ckpt", "tiny-clip", "folder", vae=f"{sf}/vae.ckpt"),
        case("vae_folder_2022", "tiny-clip", "folder", vae=f"{sf}/vae-2022"),
    ]


def make_folders(out: Path):
    from diffusers import StableDiffusionPipeline

    for name in ("clip", "bert"):
        target = out / f"tiny-{name}-bin"
        shutil.rmtree(target, ignore_errors=True)
        StableDiffusionPipeline.from_pretrained(out / f"tiny-{name}").save_pretrained(target, safe_serialization=False)
        assert not list(target.rglob("*.safetensors")), "the .bin folder must hold no safetensors"
    target = out / "tiny-clip-fp16"
    shutil.rmtree(target, ignore_errors=True)
    pipe = StableDiffusionPipeline.from_pretrained(out / "tiny-clip", torch_dtype=torch.float16)
    pipe.save_pretrained(target, variant="fp16")
    assert list(target.rglob("*.fp16.safetensors")), "save_pretrained(variant=) wrote no variant files"
    make_vae_2022_folder(out)


def make_vae_2022_folder(out: Path):
    target = out / "tiny-clip-vae2022"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for item in (out / "tiny-clip").iterdir():
        if item.name != "vae":
            (target / item.name).symlink_to(Path("..") / "tiny-clip" / item.name)
    (target / "vae").mkdir()
    shutil.copy(out / "tiny-clip" / "vae" / "config.json", target / "vae" / "config.json")
    state = load_file(out / "tiny-clip" / "vae" / "diffusion_pytorch_model.safetensors")
    renamed = {}
    for key, tensor in state.items():
        for new, old in LEGACY_VAE_ATTENTION.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = tensor
    assert any(".query." in k for k in renamed), "no attention weights renamed"
    save_file(renamed, target / "vae" / "diffusion_pytorch_model.safetensors")
    from diffusers import AutoencoderKL  # diffusers renames them back on load: the same weights
    loaded = AutoencoderKL.from_pretrained(target / "vae").state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), "2022 names not read back"


def load_pipeline(out: Path, c: dict):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from diffusers import StableDiffusionInpaintPipeline

    pipeline_class = StableDiffusionInpaintPipeline if c.get("mask") else StableDiffusionPipeline
    kwargs = {}
    if c["vae"] and (out / c["vae"]).is_dir():
        kwargs["vae"] = AutoencoderKL.from_pretrained(out / c["vae"])
    elif c["vae"]:
        with torch.serialization.safe_globals([ModelCheckpoint]):
            kwargs["vae"] = AutoencoderKL.from_single_file(str(out / c["vae"]), config=str(out / c["reference"]),
                                                           subfolder="vae", local_files_only=True)
    if c["loader"] == "folder":
        if c["variant"]:
            kwargs["variant"] = c["variant"]
        pipe = pipeline_class.from_pretrained(out / c["reference"], torch_dtype=torch.float32, **kwargs)
    else:
        # diffusers reads a .ckpt with torch.load(weights_only=True): the harness allows single_file.py's
        # stand-in for Lightning's callback class, which taiyi's reader never needs to know.
        with torch.serialization.safe_globals([ModelCheckpoint]):
            pipe = pipeline_class.from_single_file(str(out / c["reference"]), config=str(out / c["config_dir"]),
                                                            local_files_only=True, torch_dtype=torch.float32,
                                                            extract_ema=c["extract_ema"], safety_checker=None, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, c: dict, out: Path):
    from PIL import Image

    generators = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
    extra = {}
    if c.get("mask"):
        extra = dict(image=Image.open(out / c["init_image"]).convert("RGB"), mask_image=Image.open(out / c["mask"]).convert("L"),
                     strength=c["strength"])
    result = pipe(c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                  guidance_scale=c["cfg_scale"], height=c["height"], width=c["width"], num_images_per_prompt=c["count"],
                  generator=generators, output_type="np", **extra)
    pixels = (result.images.astype(np.float32) * 255).round().astype("uint8")
    return torch.from_numpy(pixels.astype(np.float32)).contiguous()


def make_full(out: Path):
    """--full: the full-size random pipeline with the real Chinese-EN configs as one LDM .safetensors, and
    diffusers' image from it with config=full-clip; taiyi reads it with its built-in configs (no --config-dir),
    which are stable-diffusion-v1-5's, the real model's."""
    from ldm_layout import original_checkpoint

    file = out / "single_file" / "full-clip.safetensors"
    file.parent.mkdir(exist_ok=True)
    save_file(original_checkpoint(out / "full-clip"), file)
    c = case("full_single_clip_builtin", "single_file/full-clip.safetensors", "single_file", config_dir="full-clip")
    c.update(steps=3, width=64, height=64)
    save_file({f"{c['name']}.images": images(load_pipeline(out, c), c, out)}, out / "ref" / "sources_full.safetensors")
    c["config_dir"] = ""  # taiyi: the built-in configs
    (out / "ref" / "sources_full_cases.json").write_text(json.dumps([c], ensure_ascii=False, indent=1), "utf-8")


def make(out: Path, full: bool):
    make_folders(out)
    cases = folder_cases() + single_file_cases(out)
    save_file({f"{c['name']}.images": images(load_pipeline(out, c), c, out) for c in cases}, out / "ref" / "sources.safetensors")
    (out / "ref" / "sources_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1), "utf-8")
    if full:
        make_full(out)
