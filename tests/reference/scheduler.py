"""Goldens for the schedulers (src/schedulers/pndm.cpp, ddim.cpp): diffusers' PNDMScheduler and DDIMScheduler, loaded
from scheduler_config.json files with from_pretrained, and DDIM built from a PNDM config with
DDIMScheduler.from_config(pndm.config) as users switch schedulers. Float32 (two cases float16) on the CPU.

ref/scheduler_cases.json          {"cases": [...], "sweeps": [...]}
    cases: name, file (relative to OUT), kind ("", "pndm", "ddim"), steps, eta, seed (of the CPU
           generator handed to DDIM's step), dtype, timesteps, effective_config (diffusers' config)
    sweeps: the timesteps of set_timesteps(n) for many n: class, config overrides, n, timesteps
ref/scheduler_configs/<case>/scheduler_config.json   the configs the cases vary (Taiyi's file + keys)
ref/scheduler.safetensors
    latents [1,4,8,6], noise [MAX_CALLS,1,4,8,6] float32 (fixed seeds)
    <case>.sample_in / .model_output / .sample_out  [calls,1,4,8,6]: every step of a full run

The model is a deterministic stand-in: model_output = 0.1 * sample + sin(t / 100) * noise[k] at
call k, so the C++ test can run the same trajectory free (and replay each step from these inputs).
"""
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

LATENT_SHAPE = (1, 4, 8, 6)
MAX_CALLS = 64
TAIYI_FILE = "tiny-clip/scheduler/scheduler_config.json"
# A PNDM config as diffusers 0.6.0 wrote it, without set_alpha_to_one / steps_offset / clip_sample:
# DDIM built from it takes DDIM's own defaults for those (True, 0, True).
OLD_PNDM_CONFIG = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                   "skip_prk_steps": True, "trained_betas": None}
TRAINED_BETAS = [1e-4 + (0.02 - 1e-4) * (i / 999) ** 1.1 for i in range(1000)]

F32, F16 = torch.float32, torch.float16
# name, config (None: Taiyi's file; a dict: keys set on Taiyi's file; "old": OLD_PNDM_CONFIG), kind,
# steps, eta, generator seed, dtype
CASES = [
    ("pndm_50", None, "", 50, 0.0, None, F32),
    ("pndm_20", None, "pndm", 20, 0.0, None, F32),
    ("pndm_30", None, "pndm", 30, 0.0, None, F32),
    ("pndm_7", None, "pndm", 7, 0.0, None, F32),
    ("pndm_1", None, "pndm", 1, 0.0, None, F32),
    ("ddim_50", None, "ddim", 50, 0.0, None, F32),
    ("ddim_20", None, "ddim", 20, 0.0, None, F32),
    ("ddim_30", None, "ddim", 30, 0.0, None, F32),
    ("ddim_7", None, "ddim", 7, 0.0, None, F32),
    ("ddim_1", None, "ddim", 1, 0.0, None, F32),
    ("ddim_eta_20", None, "ddim", 20, 0.5, 1234, F32),
    ("ddim_eta1_7", None, "ddim", 7, 1.0, 99, F32),
    ("ddim_trailing_30", {"timestep_spacing": "trailing"}, "ddim", 30, 0.0, None, F32),
    ("ddim_linspace_7", {"timestep_spacing": "linspace"}, "ddim", 7, 0.0, None, F32),
    # np.arange(1000, 0, -1000/61) has 62 entries: diffusers runs a 62nd step at t = -1.
    ("ddim_trailing_61", {"timestep_spacing": "trailing"}, "ddim", 61, 0.0, None, F32),
    ("ddim_clip_20", {"clip_sample": True, "clip_sample_range": 0.8}, "ddim", 20, 0.0, None, F32),
    ("ddim_alpha_one_20", {"set_alpha_to_one": True}, "ddim", 20, 0.0, None, F32),
    ("ddim_old_config_20", "old", "ddim", 20, 0.0, None, F32),
    ("pndm_old_config_20", "old", "", 20, 0.0, None, F32),
    ("ddim_native_20", {"_class_name": "DDIMScheduler"}, "", 20, 0.0, None, F32),
    ("pndm_trailing_20", {"timestep_spacing": "trailing"}, "pndm", 20, 0.0, None, F32),
    ("pndm_linspace_7", {"timestep_spacing": "linspace"}, "pndm", 7, 0.0, None, F32),
    ("pndm_trailing_61", {"timestep_spacing": "trailing"}, "pndm", 61, 0.0, None, F32),
    ("pndm_prk_50", {"skip_prk_steps": False}, "pndm", 50, 0.0, None, F32),
    ("pndm_prk_4", {"skip_prk_steps": False}, "pndm", 4, 0.0, None, F32),
    ("pndm_prk_trailing_9", {"skip_prk_steps": False, "timestep_spacing": "trailing"}, "pndm", 9, 0.0, None, F32),
    ("pndm_vpred_20", {"prediction_type": "v_prediction"}, "pndm", 20, 0.0, None, F32),
    ("ddim_vpred_20", {"prediction_type": "v_prediction"}, "ddim", 20, 0.0, None, F32),
    ("ddim_sample_20", {"prediction_type": "sample"}, "ddim", 20, 0.0, None, F32),
    ("pndm_linear_20", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, "pndm", 20, 0.0, None, F32),
    ("ddim_cosine_20", {"beta_schedule": "squaredcos_cap_v2"}, "ddim", 20, 0.0, None, F32),
    ("pndm_trained_20", {"trained_betas": TRAINED_BETAS}, "pndm", 20, 0.0, None, F32),
    ("ddim_threshold_20", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
     "ddim", 20, 0.0, None, F32),
    ("ddim_zero_snr_20", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                          "prediction_type": "v_prediction"}, "ddim", 20, 0.0, None, F32),
    ("pndm_fp16_20", None, "pndm", 20, 0.0, None, F16),
    ("ddim_eta_fp16_20", None, "ddim", 20, 0.5, 5, F16),
    ("pndm_prk_fp16_7", {"skip_prk_steps": False}, "pndm", 7, 0.0, None, F16),
    ("ddim_threshold_fp16_20", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
     "ddim", 20, 0.0, None, F16),
    ("ddim_vpred_clip_fp16_20", {"prediction_type": "v_prediction", "clip_sample": True}, "ddim", 20, 0.0, None, F16),
]
SWEEP_STEPS = list(range(1, 65)) + [97, 100, 103, 121, 333, 499, 999, 1000]


def classes():
    from diffusers import DDIMScheduler, PNDMScheduler

    return {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "PNDMScheduler": PNDMScheduler,
            "DDIMScheduler": DDIMScheduler}


def load(config_file: Path, kind: str):
    """As a user would: the file's class from_pretrained, then from_config into another class."""
    by_name = classes()
    file_class = by_name[json.loads(config_file.read_text())["_class_name"]]
    loaded = file_class.from_pretrained(config_file.parent)
    target = file_class if kind == "" else by_name[kind]
    return loaded if target is file_class else target.from_config(loaded.config)


def run(scheduler, steps, eta, seed, dtype, latents, noise):
    """A full sampling loop as StableDiffusionPipeline runs it, with the stand-in model."""
    from diffusers import DDIMScheduler

    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    # prepare_extra_step_kwargs: DDIM's step takes eta and generator, PNDM's neither.
    extra = {"eta": eta, "generator": generator} if isinstance(scheduler, DDIMScheduler) else {}
    sample = latents.to(dtype)
    record = {"sample_in": [], "model_output": [], "sample_out": []}
    for k, t in enumerate(scheduler.timesteps):  # t: a 0-dim int64 tensor, as in the pipeline
        model_output = 0.1 * sample + math.sin(int(t) / 100) * noise[k].to(dtype)
        out = scheduler.step(model_output, t, sample, **extra, return_dict=False)[0]
        assert out.dtype == dtype
        for key, value in (("sample_in", sample), ("model_output", model_output), ("sample_out", out)):
            record[key].append(value)
        sample = out
    return [int(t) for t in scheduler.timesteps], {k: torch.stack(v).to(F32) for k, v in record.items()}


def json_config(config):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}


def make(out: Path, full: bool):
    ref = out / "ref"
    taiyi = json.loads((out / TAIYI_FILE).read_text())
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((MAX_CALLS,) + LATENT_SHAPE, generator=torch.Generator().manual_seed(7))
    tensors = {"latents": latents, "noise": noise}
    cases = []
    for name, variant, kind, steps, eta, seed, dtype in CASES:
        if variant is None:
            file = TAIYI_FILE
        else:
            config = OLD_PNDM_CONFIG if variant == "old" else dict(taiyi, **variant)
            file = f"ref/scheduler_configs/{name}/scheduler_config.json"
            (out / file).parent.mkdir(parents=True, exist_ok=True)
            (out / file).write_text(json.dumps(config, indent=2) + "\n")
        scheduler = load(out / file, kind)
        timesteps, record = run(scheduler, steps, eta, seed, dtype, latents, noise)
        assert len(timesteps) <= MAX_CALLS
        for key, value in record.items():
            tensors[f"{name}.{key}"] = value.contiguous()
        cases.append({"name": name, "file": file, "kind": kind, "steps": steps, "eta": eta, "seed": seed,
                      "dtype": "float16" if dtype == F16 else "float32", "timesteps": timesteps,
                      "effective_config": json_config(scheduler.config)})

    sweeps = []
    for class_name, overrides in (("pndm", {}), ("pndm", {"skip_prk_steps": False}), ("ddim", {})):
        for spacing in ("leading", "trailing", "linspace"):
            config = dict(taiyi, timestep_spacing=spacing, **overrides)
            scheduler = classes()[class_name].from_config(config)
            for n in SWEEP_STEPS:
                if overrides and n < 4:
                    continue  # PRK needs 4 base timesteps (numpy fails on fewer)
                if spacing == "leading" and n == 1000:
                    continue  # steps_offset 1 reaches timestep 1000: diffusers' step fails (IndexError)
                scheduler.set_timesteps(n)
                sweeps.append({"class": class_name, "overrides": dict(overrides, timestep_spacing=spacing),
                               "steps": n, "timesteps": [int(t) for t in scheduler.timesteps]})

    save_file(tensors, str(ref / "scheduler.safetensors"))
    (ref / "scheduler_cases.json").write_text(json.dumps({"cases": cases, "sweeps": sweeps}) + "\n")
