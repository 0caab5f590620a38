"""End-to-end references: diffusers' StableDiffusionPipeline on the tiny random pipelines, fp32 CPU.

Each case's settings go to ref/pipeline_cases.json and its uint8 images (stored as float32) to
ref/pipeline.safetensors under "<case>.images" ([N, H, W, 3]), and the same pipeline in fp16 and bf16 on the
CPU under "<case>.images_float16" / "<case>.images_bfloat16": random tiny models amplify rounding (taiyi fp16
against diffusers fp32 is about 13 dB), so half precision is compared with diffusers' half precision.
Seeds: image i of a case uses its own torch.Generator("cpu").manual_seed(seed + i), which is what taiyi's
--seed means.

    python tests/reference/pipeline.py FIXTURES --device cuda

writes ref/pipeline_cuda.safetensors: the same three precisions on the GPU (scripts/gpu_check.sh runs it
there, for the cuda-labelled tests).
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

CASES = [
    dict(name="clip_pndm", model="tiny-clip", scheduler="pndm", prompt="小桥流水人家，Van Gogh style",
         negative_prompt="", steps=12, cfg_scale=7.5, seed=42, width=96, height=64, count=1, eta=0.0),
    dict(name="clip_ddim", model="tiny-clip", scheduler="ddim", prompt="a cat sitting on a red chair, oil painting",
         negative_prompt="模糊，低质量", steps=10, cfg_scale=5.0, seed=7, width=64, height=96, count=1, eta=0.0),
    dict(name="clip_nocfg", model="tiny-clip", scheduler="pndm", prompt="星空下的城市",
         negative_prompt="", steps=10, cfg_scale=1.0, seed=3, width=64, height=64, count=1, eta=0.0),
    dict(name="bert_pndm", model="tiny-bert", scheduler="pndm", prompt="飞流直下三千尺，疑是银河落九天",
         negative_prompt="广告, ，, ！, 。, ；, 资讯, 新闻, 水印", steps=10, cfg_scale=7.5, seed=1234, width=96,
         height=64, count=1, eta=0.0),
    # An outdated scheduler config (no steps_offset, no clip_sample), which the pipeline rewrites.
    dict(name="old_scheduler_ddim", model="tiny-clip-old-scheduler", scheduler="ddim", prompt="古道西风瘦马",
         negative_prompt="", steps=10, cfg_scale=7.5, seed=9, width=64, height=64, count=1, eta=0.0),
    dict(name="old_scheduler_pndm", model="tiny-clip-old-scheduler", scheduler="pndm", prompt="古道西风瘦马",
         negative_prompt="", steps=10, cfg_scale=7.5, seed=9, width=64, height=64, count=1, eta=0.0),
    dict(name="bert_ddim_eta", model="tiny-bert", scheduler="ddim", prompt="江南水乡，水彩画",
         negative_prompt="", steps=11, cfg_scale=7.5, seed=5, width=64, height=64, count=2, eta=0.3),
]


# The samplers of the samplers issue, end to end (fp32 only): ref/pipeline_sampler_cases.json. "sampler"
# is taiyi's --sampler name, "schedule" its --schedule; count 2 where the sampler draws noise.
def sampler_case(name, model, sampler, schedule, steps, count, cfg_scale=7.5, seed=21, width=64, height=64):
    return dict(name=name, model=model, scheduler="", sampler=sampler, schedule=schedule, steps=steps, count=count,
                cfg_scale=cfg_scale, seed=seed, width=width, height=height, eta=0.0,
                prompt="一只穿着宇航服的哈士奇，油画" if model == "tiny-bert" else "a lighthouse at dusk, 水彩",
                negative_prompt="模糊")


SAMPLER_CASES = [
    sampler_case("clip_euler_a", "tiny-clip", "Euler a", "", 10, 2),
    sampler_case("clip_euler", "tiny-clip", "Euler", "", 8, 1, width=96),
    sampler_case("clip_euler_exponential", "tiny-clip", "euler", "exponential", 8, 1),
    sampler_case("bert_euler_beta", "tiny-bert", "Euler", "beta", 8, 1),
    sampler_case("clip_dpmpp_2m_karras", "tiny-clip", "DPM++ 2M Karras", "", 12, 2),
    sampler_case("bert_dpmpp_2m", "tiny-bert", "dpm++2m", "", 10, 1, height=96),
    sampler_case("clip_dpmpp_2m_sde_karras", "tiny-clip", "DPM++ 2M SDE", "karras", 8, 2),
    sampler_case("bert_dpmpp_2m_sde", "tiny-bert", "dpm++2m_sde", "", 8, 2),
    sampler_case("clip_heun", "tiny-clip", "Heun", "", 6, 1),
    sampler_case("clip_dpm2_karras", "tiny-clip", "DPM2", "karras", 6, 1),
    sampler_case("bert_dpm2_a", "tiny-bert", "DPM2 a", "", 6, 2),
    sampler_case("clip_lms", "tiny-clip", "LMS", "", 10, 1),
    sampler_case("bert_lms_karras", "tiny-bert", "LMS Karras", "", 8, 1),
    sampler_case("bert_unipc", "tiny-bert", "UniPC", "", 10, 2),
    sampler_case("clip_lcm", "tiny-clip", "LCM", "", 4, 2, cfg_scale=1.5),
    sampler_case("clip_ddpm", "tiny-clip", "DDPM", "", 10, 2),
    sampler_case("clip_ddim_trailing", "tiny-clip", "ddim_trailing", "", 8, 1),
]

# taiyi's --sampler names -> the diffusers class and from_config overrides (as in src/schedulers/scheduler.cpp).
SAMPLER_CLASSES = {
    "euler a": ("EulerAncestralDiscreteScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "dpm++ 2m": ("DPMSolverMultistepScheduler", {}), "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++ 2m karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++ 2m sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}), "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2 a": ("KDPM2AncestralDiscreteScheduler", {}), "lms": ("LMSDiscreteScheduler", {}),
    "lms karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}), "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}), "ddpm": ("DDPMScheduler", {}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}), "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {}),
}
SCHEDULE_KEYS = {"": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
                 "beta": {"use_beta_sigmas": True}}

DTYPES = {"": torch.float32, "_float16": torch.float16, "_bfloat16": torch.bfloat16}


def run_case(out: Path, case: dict, dtype=torch.float32, device="cpu"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / case["model"], torch_dtype=dtype).to(device)
    if case["scheduler"] == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if case.get("sampler"):
        import diffusers

        class_name, overrides = SAMPLER_CLASSES[case["sampler"].lower()]
        overrides = dict(overrides, **SCHEDULE_KEYS[case["schedule"]])
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(case["count"])]
    result = pipe(case["prompt"], negative_prompt=case["negative_prompt"], num_inference_steps=case["steps"],
                  guidance_scale=case["cfg_scale"], height=case["height"], width=case["width"],
                  num_images_per_prompt=case["count"], generator=generators, eta=case["eta"], output_type="np")
    # numpy_to_pil's conversion, i.e. the PNG diffusers would save.
    images = (result.images.astype(np.float32) * 255).round().astype("uint8")
    return torch.from_numpy(images.astype(np.float32))


def tiny_clip_variant(out: Path, name: str, replaced: str) -> Path:
    """A fresh folder `name` linking every component of tiny-clip but `replaced` (left for the caller)."""
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for item in (out / "tiny-clip").iterdir():
        if item.name != replaced:
            (folder / item.name).symlink_to(Path("..") / "tiny-clip" / item.name)
    return folder


def make_old_scheduler_folder(out: Path):
    folder = tiny_clip_variant(out, "tiny-clip-old-scheduler", "scheduler")
    config = json.loads((out / "tiny-clip" / "scheduler" / "scheduler_config.json").read_text())
    for key in ("steps_offset", "clip_sample"):
        config.pop(key, None)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def make_overflow_folder(out: Path):
    """tiny-clip whose CLIP text encoder overflows in fp16 but not in fp32: its first layer norm's scale
    times 1e5 puts values past fp16's 65504 (transformers' fp16 output is NaN there, fp32 finite), for
    taiyi's fp32 fallback of the text encoder."""
    from transformers import CLIPTextModel

    folder = tiny_clip_variant(out, "tiny-clip-overflow", "text_encoder")
    model = CLIPTextModel.from_pretrained(out / "tiny-clip" / "text_encoder")
    with torch.no_grad():
        model.text_model.encoder.layers[0].layer_norm1.weight.mul_(1e5)
    model.save_pretrained(folder / "text_encoder")


def make(out: Path, full: bool):
    make_old_scheduler_folder(out)
    make_overflow_folder(out)
    save_file(images_of_every_case(out, "cpu"), out / "ref" / "pipeline.safetensors")
    (out / "ref" / "pipeline_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")
    save_file({f"{case['name']}.images": run_case(out, case).contiguous() for case in SAMPLER_CASES},
              out / "ref" / "pipeline_samplers.safetensors")
    (out / "ref" / "pipeline_sampler_cases.json").write_text(json.dumps(SAMPLER_CASES, ensure_ascii=False, indent=1),
                                                             "utf-8")


def images_of_every_case(out: Path, device: str):
    return {f"{case['name']}.images{suffix}": run_case(out, case, dtype, device).contiguous()
            for case in CASES for suffix, dtype in DTYPES.items()}


def make_on_device(out: Path, device: str):
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as PyTorch's defaults: TF32 convolutions only
    save_file(images_of_every_case(out, device), out / "ref" / f"pipeline_{device}.safetensors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="diffusers' images on a device, for the cuda-labelled tests")
    ap.add_argument("fixtures", type=Path)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    make_on_device(args.fixtures, args.device)
