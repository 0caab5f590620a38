#!/usr/bin/env python3
"""One UNet call, taiyi against diffusers, side by side on this machine: what a denoising step with guidance
gives the UNet ([2 x batch, 4, size/8, size/8] latents, a context of the tokenizer's max_length tokens, and for
SDXL text_embeds and time_ids), random values, the model's weights (or random ones).

Rounds alternate the two tools, each a fresh process that loads the UNet, makes --warmup untimed calls and then
--repeat timed ones; the figures are medians over every timed call of every round, wall and CPU (user + system)
seconds. taiyi's calls are `taiyi bench --unet-only` (with and without its cross-attention cache: the denoising
loop projects the context's keys and values once, diffusers on every call); diffusers' are
UNet2DConditionModel.__call__ under torch.inference_mode with its default attention (SDPA).

    scripts/unet_bench.py MODEL [--size 512] [--precision fp32] [--rounds 2] [--repeat 3] [--json OUT]

MODEL is a diffusers folder (e.g. build/fixtures/full-taiyi-xl, made by tools/make_fixtures.py --full).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def diffusers_worker(args):
    """Loads the UNet and times calls; prints one JSON line."""
    import torch
    from diffusers import UNet2DConditionModel

    dtype = getattr(torch, DTYPES[args.precision])
    model = Path(args.model)
    unet = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=dtype).eval()
    tokens = json.loads((model / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 77)
    cross = unet.config.cross_attention_dim
    cross = cross[-1] if isinstance(cross, (list, tuple)) else cross
    n, side = 2 * args.batch, args.size // 8
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(n, unet.config.in_channels, side, side, generator=g).to(dtype)
    context = torch.randn(n, tokens, cross, generator=g).to(dtype)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        time_ids = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * n, dtype=dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(n, pooled, generator=g).to(dtype), "time_ids": time_ids}
    walls, cpus = [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeat):
            c0, t0 = cpu_seconds(), time.perf_counter()
            unet(sample, torch.tensor(500.0), encoder_hidden_states=context, **kwargs)
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            print(f"diffusers: {'warm-up' if i < args.warmup else 'run'} {wall:.3f} s, {cpu:.3f} CPU s",
                  file=sys.stderr, flush=True)
            if i >= args.warmup:
                walls.append(wall)
                cpus.append(cpu)
    print(json.dumps({"walls": walls, "cpus": cpus, "context_tokens": tokens}))


def run_diffusers(args):
    cmd = [sys.executable, __file__, args.model, "--worker", "--size", str(args.size), "--precision", args.precision,
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--repeat", str(args.repeat)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_taiyi(args):
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        cmd = [args.taiyi, "bench", "--model", args.model, "--device", "cpu", "--precision", args.precision,
               "--unet-only", "--resolution", str(args.size), "--batch-size", str(args.batch),
               "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json", str(report)]
        if args.random_weights:
            cmd.append("--random-weights")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(report.read_text())["results"][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1, help="images (the UNet batch is twice this: guidance)")
    ap.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--taiyi", default=str(ROOT / "build" / "taiyi"))
    ap.add_argument("--random-weights", action="store_true", help="taiyi: random weights (diffusers loads the files)")
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return diffusers_worker(args)
    d_wall, d_cpu, t_wall, t_cpu, t_unc, t_unc_cpu = [], [], [], [], [], []
    tokens = None
    for r in range(args.rounds):
        d = run_diffusers(args)
        d_wall += d["walls"]
        d_cpu += d["cpus"]
        tokens = d["context_tokens"]
        # taiyi bench reports medians per process: one value per round and way.
        t = run_taiyi(args)
        t_wall.append(t["unet_call_s"])
        t_cpu.append(t["unet_call_cpu_s"])
        t_unc.append(t["unet_call_uncached_s"])
        t_unc_cpu.append(t["unet_call_uncached_cpu_s"])
        print(f"round {r + 1}: diffusers {statistics.median(d['walls']):.3f} s, taiyi {t['unet_call_s']:.3f} s "
              f"(uncached {t['unet_call_uncached_s']:.3f} s)", file=sys.stderr, flush=True)
    med = statistics.median
    result = {"model": args.model, "size": args.size, "unet_batch": 2 * args.batch, "precision": args.precision,
              "context_tokens": tokens, "rounds": args.rounds, "repeat": args.repeat,
              "diffusers_s": med(d_wall), "diffusers_cpu_s": med(d_cpu),
              "taiyi_s": med(t_wall), "taiyi_cpu_s": med(t_cpu),
              "taiyi_uncached_s": med(t_unc), "taiyi_uncached_cpu_s": med(t_unc_cpu)}
    result["ratio_wall"] = result["taiyi_s"] / result["diffusers_s"]
    result["ratio_uncached_wall"] = result["taiyi_uncached_s"] / result["diffusers_s"]
    print(f"UNet call, {args.size}x{args.size}, batch {2 * args.batch}, {tokens} tokens, {args.precision}: "
          f"diffusers {result['diffusers_s']:.3f} s ({result['diffusers_cpu_s']:.2f} CPU s); "
          f"taiyi {result['taiyi_s']:.3f} s ({result['taiyi_cpu_s']:.2f} CPU s) = {result['ratio_wall']:.2f}x; "
          f"taiyi without the key/value cache {result['taiyi_uncached_s']:.3f} s = {result['ratio_uncached_wall']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
