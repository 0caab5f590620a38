"""Single-file checkpoints in the original LDM / CompVis layout, made from the tiny pipelines, with diffusers'
own key conversion of each (diffusers/loaders/single_file_utils.py), for tests/loaders/test_single_file_utils.cpp
and the end-to-end tests of single files.

The harness proves that every file is what diffusers reads: StableDiffusionPipeline.from_single_file(file,
config=<folder>, local_files_only=True) (AutoencoderKL.from_single_file for the VAE files, from_pretrained for
the 2022 folder) gives back the folder's weights exactly (asserted; BERT text encoders, which diffusers takes
from the config folder, are proven through transformers' own key renaming). A .ckpt is read by diffusers with
torch.load(weights_only=True), so the harness allows its callback class there; a reader that does not know the
class must skip it.

single_file/clip.safetensors           tiny-clip (CLIP, 4 channels), no EMA
single_file/clip-ema.ckpt              tiny-clip as a Lightning checkpoint: {"state_dict": weights + model_ema.*
                                       (LitEma dotless names, the UNet's weights negated, so that using them
                                       shows; model_ema.decay, model_ema.num_updates), "global_step",
                                       "epoch", "optimizer_states" (Adam state with tensors), "callbacks"
                                       {"ModelCheckpoint": an object of pytorch_lightning's class name, defined
                                       here}, "hyper_parameters"}
single_file/clip-inpaint.safetensors   tiny-clip-inpaint (9-channel UNet, made by img2img.py), no EMA
single_file/clip-inpaint.ckpt          the same as a Lightning checkpoint, no EMA
single_file/bert.safetensors           tiny-bert (Taiyi-Chinese's BERT text encoder), no EMA
single_file/bert-ema.ckpt              tiny-bert as a Lightning checkpoint with EMA (as clip-ema.ckpt)
single_file/vae.safetensors            tiny-clip's VAE as the web UI's VAE files: no prefix (encoder.*, decoder.*,
                                       quant_conv.*, post_quant_conv.*), plus loss.* and model_ema.decay /
                                       model_ema.num_updates keys, which are never used
single_file/vae.ckpt                   the same as {"state_dict": ..., "global_step"}
single_file/vae-2022/                  tiny-clip's VAE as a diffusers folder of 2022 (config.json,
                                       diffusion_pytorch_model.safetensors) with the mid-block attention named
                                       query/key/value/proj_attn
single_file/<file>.json                per file: "file", "keys" [[name, shape], ...] (the state dict diffusers reads,
                                       in its order), "model_type" (infer_diffusers_model_type; null for the
                                       2022 folder), "text_encoder" ("clip" | "bert" | null), "config" (the
                                       folder whose configs apply), "layers_per_block", "vae_down_blocks",
                                       "vae_up_blocks", and diffusers' conversions as [[from, to, shape], ...]:
                                       "unet" (convert_ldm_unet_checkpoint), "unet_ema" (the same with
                                       extract_ema=True), "vae" (convert_ldm_vae_checkpoint), "text_encoder_keys"
                                       (convert_ldm_clip_checkpoint, or BertModel's key renaming); "deprecated"
                                       for the 2022 folder (ModelMixin._fix_state_dict_keys_on_load)
single_file/quirks-<name>.json         no file: the keys of clip.safetensors plus odd ones that exercise diffusers'
                                       corner cases (two keys for one name, the later winning; a fourth middle
                                       block; slots diffusers skips; a second upsampler slot; VAE keys kept
                                       under their own name by its substring matches and then sliced by
                                       conv_attn_to_linear; a 3-D attention weight; the "vae." prefix winning
                                       over "first_stage_model."; SDXL's CLIP prefix), with diffusers'
                                       conversions as above (see QUIRKS)
"""
import contextlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ldm_layout import LEGACY_VAE_ATTENTION, original_checkpoint  # noqa: E402

LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


class ModelCheckpoint:
    """Stands for Lightning's callback: an object of a class that a checkpoint reader cannot know."""

    def __init__(self, dirpath, monitor, save_top_k):
        self.dirpath, self.monitor, self.save_top_k = dirpath, monitor, save_top_k
        self.best_model_score = torch.tensor(0.125)


ModelCheckpoint.__module__ = LIGHTNING_MODULE


@contextlib.contextmanager
def lightning_importable():
    """pickle writes a class by module name and checks that it imports: pose as pytorch_lightning meanwhile."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_MODULE]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[LIGHTNING_MODULE].ModelCheckpoint = ModelCheckpoint
    try:
        yield
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module


def lightning_checkpoint(state_dict, step):
    adam = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(3, 2), "exp_avg_sq": torch.ones(3, 2)}},
            "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]}
    return {"epoch": 3, "global_step": step, "pytorch-lightning_version": "1.4.2", "state_dict": state_dict,
            "optimizer_states": [adam], "lr_schedulers": [],
            "callbacks": {"ModelCheckpoint": ModelCheckpoint("logs/checkpoints", "val/loss", 3)},
            "hyper_parameters": {"base_learning_rate": 1e-4, "use_ema": True}}


def with_ema(original):
    """LitEma's names: "model_ema." + the name after "model." without dots; the values negated."""
    ema = {"model_ema." + k[len("model."):].replace(".", ""): -v for k, v in original.items()
           if k.startswith("model.diffusion_model.")}
    ema["model_ema.decay"] = torch.tensor(0.9999)
    ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int)
    return {**original, **ema}


def vae_file_state(folder):
    """The web UI's VAE file: the LDM VAE without prefix, with the training loss and EMA counters."""
    vae = {k[len("first_stage_model."):]: v for k, v in original_checkpoint(folder).items()
           if k.startswith("first_stage_model.")}
    gen = torch.Generator().manual_seed(31)
    vae["loss.logvar"] = torch.zeros(())
    vae["loss.perceptual_loss.scaling_layer.shift"] = torch.randn(1, 3, 1, 1, generator=gen)
    vae["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3, generator=gen)
    vae["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=gen)
    vae["model_ema.decay"] = torch.tensor(0.9999)
    vae["model_ema.num_updates"] = torch.tensor(840000, dtype=torch.int)
    return vae


def own_storage(state):
    """Every tensor with storage of its own, so that diffusers' outputs are traced back to their key by storage."""
    return {k: v.clone() for k, v in state.items()}


def traced(converted, source):
    """diffusers' converted dict as [[from, to, shape], ...]: each tensor found by the storage it shares."""
    by_storage = {}
    for key, tensor in source.items():
        if torch.is_tensor(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            assert ptr not in by_storage, f"{key} shares storage with {by_storage[ptr]}"
            by_storage[ptr] = key
    return [[by_storage[t.untyped_storage().data_ptr()], to, list(t.shape)] for to, t in converted.items()]


def assert_same(actual, expected, what):
    assert set(actual) == set(expected), f"{what}: keys differ: {sorted(set(actual) ^ set(expected))[:5]}"
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), f"{what}: {key} differs"


def folder_weights(folder, component):
    name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return load_file(folder / component / name)


def bert_key_mapping(checkpoint, folder):
    """Taiyi-Chinese's text encoder: cond_stage_model.transformer.* renamed by transformers' from_pretrained
    rules for a BertModel (tools/convert.py does the same), proven to give the folder's weights back."""
    from transformers import BertModel
    prefix = "cond_stage_model.transformer."
    names = [k[len(prefix):] for k in checkpoint if k.startswith(prefix)]
    model = BertModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    has_prefix = any(n.startswith(model.base_model_prefix) for n in names)
    renaming = model._get_key_renaming_mapping(
        names, loading_base_model_from_task_state_dict=has_prefix and not hasattr(model, model.base_model_prefix),
        loading_task_model_from_base_state_dict=not has_prefix and hasattr(model, model.base_model_prefix))
    converted = {new: checkpoint[prefix + old] for old, new in renaming.items()}
    expected = model.state_dict()
    assert_same({k: v for k, v in converted.items() if k in expected}, expected, "BERT text encoder")
    return converted


def record_pipeline_file(path, config_folder, family, has_ema):
    """Proves `path` with from_single_file and returns its JSON record."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, infer_diffusers_model_type,
                                                     load_single_file_checkpoint)
    # diffusers reads no BertModel from a single file (it would take it from the config folder's weights,
    # and refuses when asked to): it is passed in, and proven by bert_key_mapping.
    extra = {}
    if family == "bert":
        from transformers import BertModel
        extra["text_encoder"] = BertModel.from_pretrained(config_folder / "text_encoder", local_files_only=True)
    with torch.serialization.safe_globals([ModelCheckpoint]):
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        for extract_ema in ([False, True] if has_ema else [False]):
            pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_folder), local_files_only=True,
                                                            extract_ema=extract_ema, **extra)
            unet = folder_weights(config_folder, "unet")
            assert_same(pipe.unet.state_dict(), {k: -v for k, v in unet.items()} if extract_ema else unet, f"{path} UNet")
            assert_same(pipe.vae.state_dict(), folder_weights(config_folder, "vae"), f"{path} VAE")
            if family == "clip":
                expected = folder_weights(config_folder, "text_encoder")
                assert_same({k: v for k, v in pipe.text_encoder.state_dict().items() if k in expected}, expected,
                            f"{path} text encoder")
    unet_config = UNet2DConditionModel.load_config(config_folder / "unet")
    vae_config = AutoencoderKL.load_config(config_folder / "vae")
    text = convert_ldm_clip_checkpoint(checkpoint) if family == "clip" else bert_key_mapping(checkpoint, config_folder)
    return {"model_type": infer_diffusers_model_type(checkpoint), "text_encoder": family,
            "layers_per_block": unet_config["layers_per_block"], "vae_down_blocks": len(vae_config["down_block_types"]),
            "vae_up_blocks": len(vae_config["up_block_types"]), "keys": [[k, list(v.shape)] for k, v in checkpoint.items()
                                                                            if torch.is_tensor(v)],
            "unet": traced(convert_ldm_unet_checkpoint(checkpoint, unet_config), checkpoint),
            "unet_ema": traced(convert_ldm_unet_checkpoint(checkpoint, unet_config, extract_ema=True), checkpoint),
            "vae": traced(convert_ldm_vae_checkpoint(checkpoint, vae_config), checkpoint),
            "text_encoder_keys": traced(text, checkpoint)}


def record_vae_file(path, config_folder):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (convert_ldm_vae_checkpoint, infer_diffusers_model_type,
                                                     load_single_file_checkpoint)
    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    vae = AutoencoderKL.from_single_file(str(path), config=str(config_folder), subfolder="vae", local_files_only=True)
    assert_same(vae.state_dict(), folder_weights(config_folder, "vae"), f"{path} VAE")
    vae_config = AutoencoderKL.load_config(config_folder / "vae")
    return {"model_type": infer_diffusers_model_type(checkpoint), "text_encoder": None,
            "vae_down_blocks": len(vae_config["down_block_types"]), "vae_up_blocks": len(vae_config["up_block_types"]),
            "keys": [[k, list(v.shape)] for k, v in checkpoint.items()],
            "vae": traced(convert_ldm_vae_checkpoint(checkpoint, vae_config), checkpoint)}


def record_2022_folder(folder, config_folder):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    assert_same(vae.state_dict(), folder_weights(config_folder, "vae"), f"{folder}")
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    keys = [[k, list(v.shape)] for k, v in state.items()]
    renamed = vae._fix_state_dict_keys_on_load(dict(state))
    return {"model_type": None, "text_encoder": None, "keys": keys, "deprecated": traced(renamed, state)}


# name: (extra keys and their shapes, keys removed); each added after the keys of clip.safetensors.
QUIRKS = {
    "unet": ({"model.diffusion_model.input_blocks.1.0.norm1.weight": [32],       # = in_layers.0, later wins
              "model.diffusion_model.middle_block.3.proj.weight": [4],           # -> mid_block.attentions.2
              "model.diffusion_model.input_blocks.1.2.weight": [4],              # slot 2: skipped
              "model.diffusion_model.input_blocks.0.1.weight": [4],              # block 0 beyond conv_in: skipped
              "model.diffusion_model.output_blocks.0.0.op.weight": [4],          # an "op" in an output block: skipped
              "model.diffusion_model.output_blocks.2.2.conv.weight": [64, 64, 3, 3],  # wins over slot 1's
              "model.diffusion_model.output_blocks.2.2.conv.bias": [64],
              "model.diffusion_model.label_emb.0.0.weight": [4, 4]}, []),
    "vae": ({"first_stage_model.encoder.down.0.extra.weight": [3],               # kept as encoder.down.0.extra.weight
             "first_stage_model.encoder.down.1.attn.0.query.weight": [4, 4, 1, 1],  # kept, then sliced to [4, 4]
             "first_stage_model.decoder.up.0.attn.0.proj_attn.weight": [4, 4, 1],   # kept, then sliced to [4, 4]
             "first_stage_model.encoder.mid.block_1.nin_shortcut.weight": [16, 16, 1, 1],
             "first_stage_model.decoder.mid.attn_1.proj_out.weight": [16, 16, 1]},  # 3-D: sliced [:, :, 0]
            []),
    "vae-prefix": ({"vae." + k[len("first_stage_model."):]: None for k in ["first_stage_model.encoder.conv_in.weight",
                                                                          "first_stage_model.decoder.conv_out.bias"]},
                   []),
    "clip": ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [32]}, []),
}


def record_quirks(out_dir, clip_file, folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    base = {k: list(v.shape) for k, v in load_file(clip_file).items()}
    unet_config = UNet2DConditionModel.load_config(folder / "unet")
    vae_config = AutoencoderKL.load_config(folder / "vae")
    for name, (extra, removed) in QUIRKS.items():
        shapes = {k: s for k, s in base.items() if k not in removed}
        for key, shape in extra.items():
            shapes[key] = shape if shape is not None else base["first_stage_model." + key[len("vae."):]]
        checkpoint = {k: torch.zeros(s) for k, s in shapes.items()}
        record = {"model_type": None, "text_encoder": None, "keys": [[k, s] for k, s in shapes.items()],
                  "layers_per_block": unet_config["layers_per_block"], "vae_down_blocks": len(vae_config["down_block_types"]),
                  "vae_up_blocks": len(vae_config["up_block_types"])}
        if name == "unet":
            record["unet"] = traced(convert_ldm_unet_checkpoint(checkpoint, unet_config), checkpoint)
        elif name == "clip":
            record["text_encoder_keys"] = traced(convert_ldm_clip_checkpoint(checkpoint), checkpoint)
        else:
            record["vae"] = traced(convert_ldm_vae_checkpoint(checkpoint, vae_config), checkpoint)
        write_record(out_dir, f"quirks-{name}", record)


def inpaint_folder(out):
    folder = out / "tiny-clip-inpaint"
    if not (folder / "unet" / "config.json").exists():  # made by img2img.py, which runs first
        spec = importlib.util.spec_from_file_location("reference_img2img", Path(__file__).parent / "img2img.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.make_inpaint_unet_folder(out)
    return folder


def write_record(out_dir, name, record):
    record = {"file": name, **record}
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=0, ensure_ascii=False))


def make(out: Path, full: bool):
    # One thread while making the files; the thread count is restored for the modules after this one,
    # whose images must be computed as the C++ tests run (the default threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out_dir = out / "single_file"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        folders = {"clip": out / "tiny-clip", "clip-inpaint": inpaint_folder(out), "bert": out / "tiny-bert"}
        for name, folder in folders.items():
            family = "bert" if name == "bert" else "clip"
            original = own_storage(original_checkpoint(folder))
            save_file(original, out_dir / f"{name}.safetensors")
            write_record(out_dir, f"{name}.safetensors",
                         {"config": folder.name, **record_pipeline_file(out_dir / f"{name}.safetensors", folder, family, False)})
            has_ema = name != "clip-inpaint"
            ckpt = f"{name}-ema.ckpt" if has_ema else f"{name}.ckpt"
            with lightning_importable():
                torch.save(lightning_checkpoint(own_storage(with_ema(original) if has_ema else original), 1000), out_dir / ckpt)
            write_record(out_dir, ckpt, {"config": folder.name, **record_pipeline_file(out_dir / ckpt, folder, family, has_ema)})
        vae = own_storage(vae_file_state(folders["clip"]))
        save_file(vae, out_dir / "vae.safetensors")
        write_record(out_dir, "vae.safetensors", {"config": "tiny-clip", **record_vae_file(out_dir / "vae.safetensors", folders["clip"])})
        torch.save({"state_dict": vae, "global_step": 840000}, out_dir / "vae.ckpt")
        write_record(out_dir, "vae.ckpt", {"config": "tiny-clip", **record_vae_file(out_dir / "vae.ckpt", folders["clip"])})
        record_quirks(out_dir, out_dir / "clip.safetensors", folders["clip"])
        legacy = out_dir / "vae-2022"
        legacy.mkdir()
        shutil.copy(folders["clip"] / "vae" / "config.json", legacy / "config.json")
        state = {}
        for key, tensor in folder_weights(folders["clip"], "vae").items():
            for new, old in LEGACY_VAE_ATTENTION.items():
                if ".attentions." in key and f".{new}." in key:
                    key = key.replace(f".{new}.", f".{old}.")
            state[key] = tensor.clone()
        save_file(state, legacy / "diffusion_pytorch_model.safetensors")
        write_record(out_dir, "vae-2022", {"config": "tiny-clip", **record_2022_folder(legacy, folders["clip"])})
    finally:
        torch.set_num_threads(threads)
