#!/usr/bin/env python3
"""taiyi against diffusers' StableDiffusionPipeline, in one run on one machine, same settings.

For each precision: the same model folder, prompt, seed, steps, size, CFG scale and scheduler (the
folder's: PNDM for the Taiyi configs). Measured per tool:
  generate_s      one generation, load excluded (text encoding + denoising + VAE decode + to image):
                  mean of --repeat timed runs after --warmup untimed ones, in one process.
                  diffusers: pipe(...) in eager mode with SDPA attention (its default);
                  taiyi: `taiyi bench` (its run_s; the bench prompt differs, the compute does not).
  first_image_s   process start to PNG written, load included: a fresh process that imports, loads
                  and generates one image (diffusers: a Python subprocess; taiyi: the CLI).
  peak_gpu_mb     CUDA: torch.cuda.max_memory_allocated() after loading (weights + generation) for
                  diffusers; taiyi bench's peak_gpu_mb (the same allocator statistic).
  peak_rss_mb     the first-image process's peak resident memory (wait4 rusage).
  *_cpu_s         the same spans in user + system CPU time of the process: steadier than wall time
                  on a shared machine (both tools use torch's intra-op thread pool).
and the two first-image PNGs compared: fraction of pixels whose channels all lie within 1/255,
the largest difference, PSNR. Ratios are taiyi / diffusers. Results go to OUT/vs_diffusers.json,
rewritten whole (atomically) as each measurement of each precision ends, so that a run killed by a time
limit keeps what it measured; a precision still being measured there carries "incomplete": true.

    bench_vs_diffusers.py --cpu                      # CPU, fp32, tiny random pipeline, 256x256, 4 steps
    bench_vs_diffusers.py --cpu --full --size 256    # CPU, the real configs (random weights)
    bench_vs_diffusers.py                            # CUDA: fp16 and fp32, full configs, 512x512, 50 steps

The model is --model DIR, else a random-weight pipeline made in --fixtures DIR (default
build/bench-fixtures): tiny-clip (tools/make_fixtures.py --pipelines-only) for --cpu, full-clip
(the real Taiyi-Chinese-EN configs, ~4 GB, built with tools/make_fixtures.py's own builder) otherwise.
Needs the project's Python environment (torch, diffusers, transformers 4.57) and a built taiyi.
"""
import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROMPT = "小桥流水人家，Van Gogh style"


# --- the diffusers side (runs in a subprocess of this script) ----------------------------------

def cpu_seconds():
    """User + system CPU time of this process: on a shared machine it varies less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def diffusers_worker(args):
    """Loads the pipeline and generates: once (--first-image), or warm-up + timed runs. Writes the
    PNG and a JSON result."""
    import torch
    from diffusers import StableDiffusionPipeline

    cuda = args.device.startswith("cuda")
    if cuda:
        # PyTorch's defaults, as taiyi's: no cuDNN autotuning, TF32 convolutions, IEEE matmuls unless --tf32.
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision, torch.float32)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0

    def generate():
        generator = torch.Generator("cpu").manual_seed(args.seed)
        return pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.cfg_scale, height=args.size,
                    width=args.size, generator=generator, output_type="pil").images[0]

    result = {"load_s": load_s, "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
              "transformers": __import__("transformers").__version__, "scheduler": type(pipe.scheduler).__name__,
              "attention": type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    if args.first_image or args.one_process:
        generate().save(args.image)
        # --one-process: the parent turns this wall-clock instant into "spawn to first PNG".
        result.update(first_image_at=time.time(), first_image_cpu_s=cpu_seconds(),
                      first_image_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if not args.first_image:
        # In one process the first image was the first warm-up.
        for _ in range(args.warmup - (1 if args.one_process else 0)):
            generate()
        runs = []
        cpu_before = cpu_seconds()
        for _ in range(args.repeat):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            image = generate()
            if cuda:
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        if not args.one_process:
            image.save(args.image)
        result.update(generate_s=sum(runs) / len(runs), generate_min_s=min(runs), generate_max_s=max(runs),
                      runs_s=runs, generate_cpu_s=(cpu_seconds() - cpu_before) / len(runs))
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(result, indent=1))


def make_full_clip(fixtures: Path):
    """fixtures/full-clip with the real Taiyi-Chinese-EN configs and random weights, built by
    tools/make_fixtures.py's own functions (only the CLIP family: the BERT one is not needed here)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tools" / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    clip_vocab = fixtures / "clip-vocab"
    if not (clip_vocab / "merges.txt").exists():
        mf.write_clip_vocab(mf.VOCAB_DATA / "bpe_simple_vocab_16e6.txt.gz", clip_vocab)
    folder = fixtures / "full-clip"
    tmp = fixtures / "full-clip.partial"
    pipe = mf.build_pipeline("clip", "full", clip_vocab)
    pipe.save_pretrained(tmp)
    # As make_fixtures.py does: the hub's scheduler config also carries clip_sample=false.
    sched = tmp / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), clip_sample=False), indent=2) + "\n")
    tmp.rename(folder)


# --- the driver ----------------------------------------------------------------------------------

def log(*parts):
    print("bench_vs_diffusers:", *parts, file=sys.stderr, flush=True)


def run_timed(cmd, env=None):
    """Runs cmd; returns (seconds from spawn to exit, peak RSS MB, CPU seconds of the process, stdout)."""
    log("$", " ".join(shlex.quote(str(c)) for c in cmd))
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # wait4 gives this child's own rusage (its peak RSS), which communicate() would not.
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),
               threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    global LAST_USAGE
    LAST_USAGE = usage
    out = out_chunks[0].decode("utf-8", "replace") if out_chunks else ""
    err = err_chunks[0].decode("utf-8", "replace") if err_chunks else ""
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"bench_vs_diffusers: command failed ({proc.returncode}): {cmd[0]} ...")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, out


LAST_USAGE = None  # the rusage of the last run_timed child (page faults, user and system time)


def write_json_atomically(path: Path, document):
    """Writes document as JSON to path through a temporary file in the same folder and os.replace: a
    reader, or a run killed mid-write, finds the previous whole file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, path)


def alternating_first_images(pairs, d_cmd, t_cmd):
    """Whole-process runs, diffusers and taiyi alternating (so drift hits both), `pairs` times each:
    per tool the median and range of wall time, user and system CPU time and minor page faults."""
    samples = {"diffusers": [], "taiyi": []}
    for i in range(pairs):
        for tool, cmd in (("diffusers", d_cmd), ("taiyi", t_cmd)):
            seconds, _, _, _ = run_timed(cmd)
            u = LAST_USAGE
            samples[tool].append({"wall_s": seconds, "user_s": u.ru_utime, "sys_s": u.ru_stime, "minor_faults": u.ru_minflt})
            log(f"pair {i + 1}/{pairs} {tool}: {seconds:.2f} s wall, {u.ru_utime:.2f} user, {u.ru_stime:.2f} sys, "
                f"{u.ru_minflt} minor faults")
    median = lambda xs: sorted(xs)[len(xs) // 2]
    out = {}
    for tool, runs in samples.items():
        out[tool] = {k: median([r[k] for r in runs]) for k in runs[0]}
        out[tool]["wall_range_s"] = [min(r["wall_s"] for r in runs), max(r["wall_s"] for r in runs)]
        out[tool]["runs"] = runs
    out["wall_ratio_median"] = out["taiyi"]["wall_s"] / out["diffusers"]["wall_s"]
    return out


def warm_page_cache(model: Path):
    """Reads every weight file once, so that neither tool's start-up pays the disk."""
    for f in sorted(model.rglob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def compare_images(a_path: Path, b_path: Path):
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(b_path).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return {"error": f"sizes differ: {a.shape} vs {b.shape}"}
    diff = np.abs(a - b)
    mse = float((diff.astype(np.float64) ** 2).mean())
    return {"pixels_within_1": float((diff.max(axis=2) <= 1).mean()), "pixels_equal": float((diff.max(axis=2) == 0).mean()),
            "max_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)}


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def ensure_model(args) -> Path:
    if args.model:
        return Path(args.model)
    fixtures = Path(args.fixtures)
    fixtures.mkdir(parents=True, exist_ok=True)
    if args.cpu and not args.full:
        folder = fixtures / "tiny-clip"
        if not (folder / "model_index.json").exists():
            log("making the tiny random pipelines in", fixtures)
            subprocess.run([sys.executable, ROOT / "tools" / "make_fixtures.py", fixtures, "--pipelines-only"], check=True)
        return folder
    folder = fixtures / "full-clip"
    if not (folder / "model_index.json").exists():
        log("making", folder, "(real configs, random weights, ~4 GB)")
        subprocess.run([sys.executable, __file__, "--make-full-clip", fixtures], check=True)
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="CPU, fp32; defaults 256x256, 4 steps, the tiny pipeline")
    ap.add_argument("--full", action="store_true", help="with --cpu: the full-size random pipeline")
    ap.add_argument("--model", help="model folder (default: a random pipeline in --fixtures)")
    ap.add_argument("--fixtures", default=str(ROOT / "build" / "bench-fixtures"))
    ap.add_argument("--taiyi", default=str(ROOT / "build" / "taiyi"), help="the taiyi binary")
    ap.add_argument("--device", help="cuda or cpu (default: cuda, or cpu with --cpu)")
    ap.add_argument("--precisions", help="comma list (default: fp16,fp32 on CUDA, fp32 on CPU)")
    ap.add_argument("--size", type=int, help="square size in pixels (default 512; 256 with --cpu)")
    ap.add_argument("--steps", type=int, help="denoising steps (default 50; 4 with --cpu)")
    ap.add_argument("--cfg-scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--pairs", type=int, default=0,
                    help="also N alternating whole-process runs of each tool (medians, page faults, system time)")
    ap.add_argument("--one-process", action="store_true",
                    help="one diffusers process per precision: first image, then the warm-up and timed runs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 on CUDA (both tools)")
    ap.add_argument("--threads", type=int, help="CPU threads of both tools (OMP_NUM_THREADS; default: torch's, "
                    "the cores). On a shared machine --threads 1 makes the CPU times steadier.")
    ap.add_argument("--out", default=str(ROOT / "build" / "vs-diffusers"), help="folder for PNGs and JSON")
    ap.add_argument("--json", help="the report (default OUT/vs_diffusers.json), rewritten after each measurement")
    ap.add_argument("--append", action="store_true",
                    help="keep the other precisions' results of an existing --json (one run per precision, "
                         "as scripts/gpu_check.sh stages them)")
    # Internal: the diffusers subprocess, and the full-size fixture builder.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-image", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--make-full-clip", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_full_clip:
        return make_full_clip(Path(args.make_full_clip))
    if args.worker:
        return diffusers_worker(args)

    device = args.device or ("cpu" if args.cpu else "cuda")
    precisions = (args.precisions or ("fp32" if device == "cpu" else "fp16,fp32")).split(",")
    size = args.size or (256 if args.cpu else 512)
    steps = args.steps or (4 if args.cpu else 50)
    taiyi = Path(args.taiyi)
    if not taiyi.exists():
        raise SystemExit(f"bench_vs_diffusers: {taiyi}: no taiyi binary (build it, or pass --taiyi)")
    model = ensure_model(args).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm_page_cache(model)
    if args.threads:  # inherited by every subprocess: both tools size their thread pools from it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    import torch  # versions and the device name only; the measurements run in subprocesses

    settings = {"model": str(model), "device": device, "size": size, "steps": steps, "cfg_scale": args.cfg_scale,
                "seed": args.seed, "prompt": args.prompt, "warmup": args.warmup, "repeat": args.repeat,
                "tf32": args.tf32, "threads": args.threads, "scheduler": "the folder's (PNDM for Taiyi)"}
    environment = {"host": platform.node(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                   "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                   "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    common = ["--model", model, "--device", device, "--size", size, "--steps", steps, "--cfg-scale", args.cfg_scale,
              "--seed", args.seed, "--prompt", args.prompt]
    results = {}
    report = {"settings": settings, "environment": environment, "results": results}
    report_path = Path(args.json) if args.json else out / "vs_diffusers.json"
    if args.append and report_path.exists():
        try:  # the earlier runs' precisions stay, complete or not; this run's are measured again
            results.update({k: v for k, v in json.loads(report_path.read_text()).get("results", {}).items()
                            if k not in precisions})
        except ValueError:
            pass
    else:
        report_path.unlink(missing_ok=True)  # an earlier run's would pass for this one's if this one is cut short
    for precision in precisions:
        log(f"--- {precision}")
        r = {"incomplete": True, "diffusers": {}, "taiyi": {}}
        results[precision] = r
        # Start-up to first image, each in a fresh process (with --one-process, diffusers' steady-state runs
        # follow in that same process).
        d_png, d_json = out / f"diffusers_{precision}.png", out / f"diffusers_{precision}_first.json"
        worker = [sys.executable, __file__, "--worker", *common, "--precision", precision, "--image", d_png, "--result",
                  d_json] + (["--tf32"] if args.tf32 else [])
        spawned = time.time()
        if args.one_process:
            run_timed(worker + ["--one-process", "--warmup", max(1, args.warmup), "--repeat", args.repeat])
            d_first = d_runs = json.loads(d_json.read_text())
            seconds, rss, cpu = d_first["first_image_at"] - spawned, d_first["first_image_rss_mb"], d_first["first_image_cpu_s"]
        else:
            seconds, rss, cpu, _ = run_timed(worker + ["--first-image"])
            d_first = json.loads(d_json.read_text())
        r["diffusers"].update(first_image_s=seconds, first_image_cpu_s=cpu, peak_rss_mb=rss, load_s=d_first["load_s"],
                              versions={k: d_first[k] for k in ("torch", "diffusers", "transformers")},
                              scheduler=d_first["scheduler"], attention=d_first["attention"])
        t_png = out / f"taiyi_{precision}.png"
        cmd = [taiyi, args.prompt, "--model", model, "--device", device, "--precision", precision, "-W", size, "-H",
               size, "--steps", steps, "-g", args.cfg_scale, "-s", args.seed, "-o", t_png, "--overwrite", "--json", "-q"]
        seconds, rss, cpu, stdout = run_timed(cmd + (["--tf32"] if args.tf32 else []))
        record = json.loads(stdout.strip().splitlines()[-1])
        r["taiyi"].update(first_image_s=seconds, first_image_cpu_s=cpu, peak_rss_mb=rss, png=record["file"],
                          sampler=record["sampler"])
        r["image"] = compare_images(Path(record["file"]), d_png)
        write_json_atomically(report_path, report)
        if args.pairs:
            r["alternating"] = alternating_first_images(
                args.pairs,
                [sys.executable, __file__, "--worker", "--first-image", *common, "--precision", precision, "--image", d_png,
                 "--result", d_json] + (["--tf32"] if args.tf32 else []),
                cmd + (["--tf32"] if args.tf32 else []))
            a = r["alternating"]
            log(f"alternating whole-process runs ({args.pairs} pairs, medians): diffusers {a['diffusers']['wall_s']:.2f} s "
                f"(sys {a['diffusers']['sys_s']:.2f} s, {a['diffusers']['minor_faults']} faults), taiyi "
                f"{a['taiyi']['wall_s']:.2f} s (sys {a['taiyi']['sys_s']:.2f} s, {a['taiyi']['minor_faults']} faults): "
                f"taiyi/diffusers {a['wall_ratio_median']:.3f}")
            write_json_atomically(report_path, report)

        # Steady state: warm-up, then timed generations in one process.
        if not args.one_process:
            d_json = out / f"diffusers_{precision}_runs.json"
            run_timed([sys.executable, __file__, "--worker", *common, "--precision", precision, "--warmup", args.warmup,
                       "--repeat", args.repeat, "--image", out / f"diffusers_{precision}_runs.png", "--result", d_json]
                      + (["--tf32"] if args.tf32 else []))
            d_runs = json.loads(d_json.read_text())
        r["diffusers"].update(generate_s=d_runs["generate_s"], generate_min_s=d_runs["generate_min_s"],
                              generate_cpu_s=d_runs["generate_cpu_s"], peak_gpu_mb=d_runs.get("peak_gpu_mb"))
        write_json_atomically(report_path, report)
        bench_json = out / f"taiyi_bench_{precision}.json"
        run_timed([taiyi, "bench", "--model", model, "--device", device, "--precision", precision, "--resolution", size,
                   "--batch-size", 1, "--steps", steps, "-g", args.cfg_scale, "--warmup", args.warmup, "--repeat",
                   args.repeat, "--json", bench_json] + (["--tf32"] if args.tf32 else []))
        t_bench = json.loads(bench_json.read_text())["results"][0]
        r["taiyi"].update(generate_s=t_bench["run_s"], generate_min_s=t_bench["run_min_s"],
                          generate_cpu_s=t_bench["run_cpu_s"],
                          peak_gpu_mb=t_bench.get("peak_gpu_mb"), load_s=t_bench["load_s"], it_per_s=t_bench["it_per_s"],
                          unet_step_s=t_bench["unet_step_s"], encode_s=t_bench["encode_s"], decode_s=t_bench["decode_s"])
        r["ratios"] = {k: ratio(r["taiyi"].get(k), r["diffusers"].get(k))
                       for k in ("generate_s", "generate_min_s", "generate_cpu_s", "first_image_s", "first_image_cpu_s",
                                 "peak_gpu_mb", "peak_rss_mb")}
        del r["incomplete"]
        write_json_atomically(report_path, report)

    print_table(report)
    for precision, r in results.items():
        if "alternating" in r:
            a = r["alternating"]
            for tool in ("diffusers", "taiyi"):
                t = a[tool]
                print(f"[{precision}] whole process, {args.pairs} alternating runs, {tool}: median {t['wall_s']:.2f} s wall "
                      f"(range {t['wall_range_s'][0]:.2f}-{t['wall_range_s'][1]:.2f}), {t['user_s']:.2f} s user, "
                      f"{t['sys_s']:.2f} s sys, {t['minor_faults']} minor page faults")
            print(f"[{precision}] whole process taiyi/diffusers (median wall): {a['wall_ratio_median']:.3f}")
    log("wrote", report_path)


def print_table(report):
    s = report["settings"]
    threads = f", {s['threads']} thread(s)" if s.get("threads") else ""
    print(f"taiyi vs diffusers: {s['device']} ({report['environment']['gpu'] or 'CPU'}{threads}), {s['size']}x{s['size']}, "
          f"{s['steps']} steps, CFG {s['cfg_scale']}, seed {s['seed']}, warm-up {s['warmup']}, {s['repeat']} timed runs")
    print(f"model: {s['model']}")
    rows = [("", "diffusers", "taiyi", "taiyi/diffusers")]
    fmt = lambda v, p="%.3f": "-" if v is None else (p % v)
    for precision, r in report["results"].items():
        if r.get("incomplete"):  # an earlier run's (--append), cut short
            rows.append((f"[{precision}] incomplete (an earlier run was cut short)", "", "", ""))
            continue
        d, t, q = r["diffusers"], r["taiyi"], r["ratios"]
        rows.append((f"[{precision}] generate s, mean (load excluded)", fmt(d["generate_s"]), fmt(t["generate_s"]),
                     fmt(q["generate_s"])))
        rows.append((f"[{precision}] generate s, fastest run", fmt(d["generate_min_s"]), fmt(t["generate_min_s"]),
                     fmt(q["generate_min_s"])))
        rows.append((f"[{precision}] generate CPU s (user+sys)", fmt(d["generate_cpu_s"]), fmt(t["generate_cpu_s"]),
                     fmt(q["generate_cpu_s"])))
        rows.append((f"[{precision}] first image s (process start)", fmt(d["first_image_s"]), fmt(t["first_image_s"]),
                     fmt(q["first_image_s"])))
        rows.append((f"[{precision}] first image CPU s (user+sys)", fmt(d["first_image_cpu_s"]),
                     fmt(t["first_image_cpu_s"]), fmt(q["first_image_cpu_s"])))
        rows.append((f"[{precision}] peak GPU MB", fmt(d.get("peak_gpu_mb"), "%.0f"), fmt(t.get("peak_gpu_mb"), "%.0f"),
                     fmt(q["peak_gpu_mb"])))
        rows.append((f"[{precision}] peak RSS MB (first image)", fmt(d["peak_rss_mb"], "%.0f"), fmt(t["peak_rss_mb"], "%.0f"),
                     fmt(q["peak_rss_mb"])))
        rows.append((f"[{precision}] taiyi UNet step s / it/s", "", f"{t['unet_step_s']:.4f} / {t['it_per_s']:.2f}", ""))
        im = r["image"]
        if "error" in im:
            rows.append((f"[{precision}] images", im["error"], "", ""))
        else:
            rows.append((f"[{precision}] images: within 1/255, max diff, PSNR",
                         f"{100 * im['pixels_within_1']:.2f}%", f"max {im['max_diff']}", f"{im['psnr_db']:.1f} dB"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("-" * (sum(widths) + 6))


if __name__ == "__main__":
    main()
