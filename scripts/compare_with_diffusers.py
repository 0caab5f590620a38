#!/usr/bin/env python3
"""End-to-end parity on any model folder: diffusers' StableDiffusionPipeline and the taiyi binary with
the same prompt, seed and settings (fp32 on CPU by default); prints the pixel agreement.

    python scripts/compare_with_diffusers.py --model build/fixtures/full-clip --steps 3 --size 512
    (make the full-size random pipeline first: python tools/make_fixtures.py build/fixtures --full --pipelines-only)

Exit code 0 when every pixel is within 1/255 and at least 99.9% are identical (the issue's bar), else 1.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--taiyi", default="build/taiyi", help="the taiyi binary")
    ap.add_argument("--prompt", default="小桥流水人家，Van Gogh style")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cfg-scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--scheduler", choices=["pndm", "ddim"], default="pndm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = ap.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    t0 = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    if args.scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator("cpu").manual_seed(args.seed)]
    out = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
               guidance_scale=args.cfg_scale, height=args.size, width=args.size, generator=generator,
               output_type="np")
    reference = (out.images[0] * 255).round().astype("uint8")
    diffusers_s = time.time() - t0

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "taiyi.png"
        t0 = time.time()
        cmd = [args.taiyi, args.prompt, "-n", args.negative_prompt, "--model", str(args.model), "--steps",
               str(args.steps), "-g", str(args.cfg_scale), "--seed", str(args.seed), "-W", str(args.size), "-H",
               str(args.size), "--scheduler", args.scheduler, "--device", args.device, "--precision", args.precision,
               "-o", str(png), "--json"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        taiyi_s = time.time() - t0
        if run.returncode != 0:
            sys.exit(f"taiyi failed ({run.returncode}): {run.stderr}")
        ours = np.asarray(Image.open(png).convert("RGB"))
        params = Image.open(png).info.get("parameters", "")

    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    result = dict(model=str(args.model), steps=args.steps, size=args.size, scheduler=args.scheduler,
                  precision=args.precision, max_pixel_diff=int(diff.max()),
                  identical_fraction=float((diff == 0).mean()),
                  psnr_db=float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse)),
                  diffusers_s=round(diffusers_s, 1), taiyi_s=round(taiyi_s, 1), png_parameters=params)
    print(json.dumps(result, ensure_ascii=False, indent=1))
    ok = result["max_pixel_diff"] <= 1 and result["identical_fraction"] >= 0.999
    print("parity:", "OK" if ok else "NOT OK", "(every pixel within 1/255, >= 99.9% identical)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
