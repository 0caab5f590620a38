"""Goldens for the samplers of src/schedulers/ beyond PNDM/DDIM (scheduler.py has those): diffusers'
Euler, Euler a, DPM-Solver++ (2M, 2M SDE, 3M), Heun, DPM2, DPM2 a, LMS, UniPC, LCM and DDPM, each built
as a user builds it, Class.from_config(pndm.config, **overrides) from Taiyi's PNDM config. Float32 CPU.

ref/sampler_cases.json     {"cases": [...], "sweeps": [...]}
    cases: name, kind, schedule, overrides, steps, seeds (one CPU generator per image), timesteps,
           sigmas (or null), init_noise_sigma
    sweeps: kind, schedule, overrides, steps, timesteps, sigmas: set_timesteps(n) for many n and configs
            (combinations diffusers itself rejects are left out)
ref/samplers.safetensors
    latents [2,4,8,6], noise [MAX_CALLS,2,4,8,6]
    <case>.model_input / .model_output / .sample_in / .sample_out  [calls,2,4,8,6]

The model is the stand-in of scheduler.py on the scaled input: model_output = 0.1 * scale_model_input(x)
+ sin(t / 100) * noise[k] at call k; the loop is StableDiffusionPipeline's: init_noise_sigma, then
scale_model_input / step with the list of generators (so per-image noise is exercised).
"""
import inspect
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

LATENT_SHAPE = (2, 4, 8, 6)
MAX_CALLS = 120
TAIYI_FILE = "tiny-clip/scheduler/scheduler_config.json"

# kind (make_scheduler's) -> (class name, overrides)
KINDS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
SCHEDULES = {"default": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
             "beta": {"use_beta_sigmas": True}}
WITH_SCHEDULES = ["euler", "dpmsolver++", "sde-dpmsolver++", "heun", "dpm2", "dpm2_a", "lms", "unipc"]

# name, kind, schedule, overrides, steps
CASES = [
    ("euler_20", "euler", "default", {}, 20),
    ("euler_karras_15", "euler", "karras", {}, 15),
    ("euler_exponential_10", "euler", "exponential", {}, 10),
    ("euler_beta_10", "euler", "beta", {}, 10),
    ("euler_leading_12", "euler", "default", {"timestep_spacing": "leading"}, 12),
    ("euler_trailing_9", "euler", "default", {"timestep_spacing": "trailing"}, 9),
    ("euler_vpred_10", "euler", "default", {"prediction_type": "v_prediction"}, 10),
    ("euler_sigma_min_final_8", "euler", "karras", {"final_sigmas_type": "sigma_min"}, 8),
    ("euler_a_20", "euler_a", "default", {}, 20),
    ("euler_a_leading_7", "euler_a", "default", {"timestep_spacing": "leading"}, 7),
    ("euler_a_vpred_8", "euler_a", "default", {"prediction_type": "v_prediction"}, 8),
    ("dpmpp_2m_20", "dpmsolver++", "default", {}, 20),
    ("dpmpp_2m_karras_25", "dpmsolver++", "karras", {}, 25),
    ("dpmpp_2m_karras_8", "dpmsolver++", "karras", {}, 8),
    ("dpmpp_2m_exponential_12", "dpmsolver++", "exponential", {}, 12),
    ("dpmpp_2m_beta_12", "dpmsolver++", "beta", {}, 12),
    ("dpmpp_2m_heun_10", "dpmsolver++", "default", {"solver_type": "heun"}, 10),
    ("dpmpp_2m_euler_final_16", "dpmsolver++", "default", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}, 16),
    ("dpmpp_2m_no_lower_final_9", "dpmsolver++", "karras", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}, 9),
    ("dpmpp_3m_12", "dpmsolver++", "default", {"solver_order": 3}, 12),
    ("dpmpp_2m_vpred_10", "dpmsolver++", "default", {"prediction_type": "v_prediction"}, 10),
    ("dpmpp_2m_trailing_10", "dpmsolver++", "default", {"timestep_spacing": "trailing"}, 10),
    ("dpmpp_2m_leading_10", "dpmsolver++", "default", {"timestep_spacing": "leading"}, 10),
    ("dpmpp_2m_sde_15", "sde-dpmsolver++", "default", {}, 15),
    ("dpmpp_2m_sde_karras_20", "sde-dpmsolver++", "karras", {}, 20),
    ("dpmpp_2m_sde_heun_10", "sde-dpmsolver++", "karras", {"solver_type": "heun"}, 10),
    ("heun_10", "heun", "default", {}, 10),
    ("heun_karras_8", "heun", "karras", {}, 8),
    ("heun_vpred_6", "heun", "default", {"prediction_type": "v_prediction"}, 6),
    ("dpm2_10", "dpm2", "default", {}, 10),
    ("dpm2_karras_8", "dpm2", "karras", {}, 8),
    ("dpm2_exponential_6", "dpm2", "exponential", {}, 6),
    ("dpm2_a_10", "dpm2_a", "default", {}, 10),
    ("dpm2_a_karras_8", "dpm2_a", "karras", {}, 8),
    ("lms_20", "lms", "default", {}, 20),
    ("lms_karras_12", "lms", "karras", {}, 12),
    ("unipc_20", "unipc", "default", {}, 20),
    ("unipc_karras_10", "unipc", "karras", {}, 10),
    ("unipc_3_12", "unipc", "default", {"solver_order": 3}, 12),
    # bh1 divides by h, infinite at a zero final sigma (NaN in diffusers too): sigma_min there
    ("unipc_bh1_10", "unipc", "default", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, 10),
    ("lcm_4", "lcm", "default", {}, 4),
    ("lcm_8", "lcm", "default", {}, 8),
    ("ddpm_25", "ddpm", "default", {}, 25),
    ("ddpm_linspace_10", "ddpm", "default", {"timestep_spacing": "linspace"}, 10),
]
SWEEP_STEPS = [1, 2, 3, 10, 25, 50]
SPACINGS = ["linspace", "leading", "trailing"]
SEEDS = [11, 12]


def make_scheduler(config: dict, kind: str, schedule: str, overrides: dict):
    import diffusers

    class_name, kind_overrides = KINDS[kind]
    return getattr(diffusers, class_name).from_config(config, **kind_overrides, **SCHEDULES[schedule], **overrides)


def pipeline_config(out: Path):
    """The scheduler config as StableDiffusionPipeline holds it (its __init__ rewrites are no-ops for
    Taiyi's file), which from_config reads."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_pretrained((out / TAIYI_FILE).parent).config


def tensor_list(t):
    return None if t is None else [float(v) for v in t.flatten()]


def run(scheduler, steps, latents, noise):
    scheduler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    sample = latents * scheduler.init_noise_sigma
    record = {"model_input": [], "model_output": [], "sample_in": [], "sample_out": []}
    for k, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(sample, t)
        model_output = 0.1 * model_input + math.sin(float(t) / 100) * noise[k]
        kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        out = scheduler.step(model_output, t, sample, **kwargs, return_dict=False)[0]
        for key, value in (("model_input", model_input), ("model_output", model_output), ("sample_in", sample),
                           ("sample_out", out)):
            record[key].append(value)
        sample = out
    return {k: torch.stack(v).float().contiguous() for k, v in record.items()}


def make(out: Path, full: bool):
    ref = out / "ref"
    config = pipeline_config(out)
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((MAX_CALLS,) + LATENT_SHAPE, generator=torch.Generator().manual_seed(8))
    tensors = {"latents": latents, "noise": noise}
    cases = []
    for name, kind, schedule, overrides, steps in CASES:
        scheduler = make_scheduler(config, kind, schedule, overrides)
        record = run(scheduler, steps, latents, noise)
        assert record["sample_in"].shape[0] <= MAX_CALLS
        for key, value in record.items():
            tensors[f"{name}.{key}"] = value
        sigmas = getattr(scheduler, "sigmas", None) if KINDS[kind][0] not in ("LCMScheduler", "DDPMScheduler") else None
        cases.append({"name": name, "kind": kind, "schedule": schedule, "overrides": overrides, "steps": steps,
                      "seeds": SEEDS, "timesteps": [float(t) for t in scheduler.timesteps],
                      "sigmas": tensor_list(sigmas), "init_noise_sigma": float(scheduler.init_noise_sigma)})

    sweeps = []
    for kind in KINDS:
        for schedule in (SCHEDULES if kind in WITH_SCHEDULES else ["default"]):
            for spacing in SPACINGS:
                overrides = {} if kind == "lcm" else {"timestep_spacing": spacing}
                if kind == "lcm" and spacing != "linspace":
                    continue
                for n in SWEEP_STEPS + ([999] if schedule == "default" and spacing == "linspace" else []):
                    try:
                        scheduler = make_scheduler(config, kind, schedule, overrides)
                        scheduler.set_timesteps(n)
                    except Exception:  # noqa: BLE001 - what diffusers rejects is not a golden
                        continue
                    sigmas = getattr(scheduler, "sigmas", None) if kind not in ("lcm", "ddpm") else None
                    sweeps.append({"kind": kind, "schedule": schedule, "overrides": overrides, "steps": n,
                                   "timesteps": [float(t) for t in scheduler.timesteps], "sigmas": tensor_list(sigmas),
                                   "init_noise_sigma": float(scheduler.init_noise_sigma)})
    save_file(tensors, str(ref / "samplers.safetensors"))
    (ref / "sampler_cases.json").write_text(json.dumps({"cases": cases, "sweeps": sweeps}) + "\n")
