"""End-to-end SDXL references: diffusers' StableDiffusionXLPipeline and its img2img / inpaint siblings on the
tiny SDXL pipelines of sdxl.py, fp32 CPU. Cases in ref/sdxl_pipeline_cases.json, uint8 images (as float32) in
ref/sdxl_pipeline.safetensors under "<case>.images". "negative_prompt": null is diffusers' negative_prompt=None
(zero embeddings with force_zeros_for_empty_prompt), which taiyi's empty negative prompt means for SDXL.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def case(name, model, kind, sampler, steps, count, prompt, negative_prompt, width=64, height=64, seed=11,
         cfg_scale=5.0, strength=1.0, image="", mask="", clip_skip=1, lora="", lora_scale=1.0):
    return dict(name=name, model=model, kind=kind, sampler=sampler, schedule="", steps=steps, count=count,
                prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, seed=seed,
                cfg_scale=cfg_scale, strength=strength, image=image, mask=mask, clip_skip=clip_skip, lora=lora,
                lora_scale=lora_scale)


CASES = [
    case("sdxl_euler", "tiny-sdxl", "txt2img", "", 8, 2, "a lighthouse at dusk, watercolor", "blurry", width=96),
    case("sdxl_euler_a_zero_negative", "tiny-sdxl", "txt2img", "Euler a", 8, 2, "小桥流水人家，Van Gogh style", None),
    case("sdxl_dpmpp_2m_karras", "tiny-sdxl", "txt2img", "DPM++ 2M Karras", 8, 1, "a red bicycle", "low quality",
         height=96),
    case("sdxl_nocfg_clip_skip", "tiny-sdxl", "txt2img", "", 6, 1, "an astronaut riding a horse", None, cfg_scale=1.0,
         clip_skip=2),
    case("taiyi_euler", "tiny-taiyi-xl", "txt2img", "", 8, 2, "飞流直下三千尺，疑是银河落九天，瀑布，插画",
         "广告, ，, ！, 。, ；, 资讯, 新闻, 水印"),
    case("taiyi_euler_a_mixed", "tiny-taiyi-xl", "txt2img", "Euler a", 8, 1, "一只穿着宇航服的哈士奇 in space, 油画", None,
         width=96, seed=3),
    case("sdxl_img2img_euler_a", "tiny-sdxl", "img2img", "Euler a", 10, 2, "a castle on a hill", "fog",
         strength=0.6, image="images/rgb_64.png", width=0, height=0),
    # img2img takes the image's size rounded down to a multiple of 8 (96x64 here), as VaeImageProcessor does.
    case("taiyi_img2img_dpmpp", "tiny-taiyi-xl", "img2img", "DPM++ 2M", 8, 1, "江南水乡，水彩画", None,
         strength=0.75, image="images/rgb_100x70.png", width=0, height=0),
    case("sdxl_inpaint_euler", "tiny-sdxl", "inpaint", "", 8, 2, "a cat on a chair", "blurry", strength=1.0,
         image="images/rgb_64.png", mask="images/mask_64.png"),
    # A kohya SDXL LoRA (LDM block names, lora_te1_ and lora_te2_; sdxl_lora.py) merged as load_lora_weights +
    # fuse_lora(lora_scale) merge it.
    case("sdxl_kohya_lora", "tiny-sdxl", "txt2img", "Euler a", 8, 1, "a lighthouse at dusk", "blurry",
         lora="loras/sdxl_kohya_ldm.safetensors", lora_scale=0.8),
    case("taiyi_inpaint_euler_a", "tiny-taiyi-xl", "inpaint", "Euler a", 8, 1, "一只猫坐在椅子上", None, strength=0.8,
         image="images/rgb_100x70.png", mask="images/mask_rgb_100x70.png", width=96),
]


def run_case(out: Path, c: dict):
    import diffusers
    from PIL import Image

    from pipeline import SAMPLER_CLASSES, SCHEDULE_KEYS

    cls = {"txt2img": diffusers.StableDiffusionXLPipeline, "img2img": diffusers.StableDiffusionXLImg2ImgPipeline,
           "inpaint": diffusers.StableDiffusionXLInpaintPipeline}[c["kind"]]
    pipe = cls.from_pretrained(out / c["model"])
    if c["sampler"]:
        class_name, overrides = SAMPLER_CLASSES[c["sampler"].lower()]
        overrides = dict(overrides, **SCHEDULE_KEYS[c["schedule"]])
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    if c["lora"]:
        pipe.load_lora_weights(str(out / c["lora"]))
        pipe.fuse_lora(lora_scale=c["lora_scale"])
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
    kwargs = dict(negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"], guidance_scale=c["cfg_scale"],
                  num_images_per_prompt=c["count"], generator=generators, output_type="np",
                  clip_skip=None if c["clip_skip"] == 1 else c["clip_skip"] - 1)
    if c["kind"] == "txt2img":
        kwargs.update(width=c["width"], height=c["height"])
    else:
        image = Image.open(out / c["image"]).convert("RGB")
        kwargs.update(image=image, strength=c["strength"])
        if c["kind"] == "inpaint":
            kwargs.update(mask_image=Image.open(out / c["mask"]).convert("L"), width=c["width"], height=c["height"])
    result = pipe(c["prompt"], **kwargs)
    images = (result.images.astype(np.float32) * 255).round().astype("uint8")
    return torch.from_numpy(images.astype(np.float32)).contiguous()


def make(out: Path, full: bool):
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {f"{c['name']}.images": run_case(out, c) for c in CASES}
    save_file(results, str(out / "ref" / "sdxl_pipeline.safetensors"))
    (out / "ref" / "sdxl_pipeline_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")
