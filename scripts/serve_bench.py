#!/usr/bin/env python3
"""Driver of scripts/serve_bench.sh: the overhead of `taiyi serve` per image against the CLI on the same
model, and the cost of live previews per step (issue 27's note).

Overhead: N rounds, each one CLI run and one server request of the same image (alternating, so both see
the same machine load). The CLI's own summary line gives its load time and its in-process generation time
(text + denoise + decode, 10 ms resolution); the server's figure is the client's wall time per request
(HTTP, JSON, base64 and PNG included). Printed: medians of each, and
  overhead = server request - CLI generation,   and   server request - (CLI wall - CLI load).
Previews: two servers on the same model, --preview-every 1 and --preview-every 0 (none), N alternating
requests of K steps each; cost per step = (median with - median without) / K.
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))
import serve_util as su  # noqa: E402

SUMMARY = re.compile(r"load ([0-9.]+)s, text ([0-9.]+)s, denoise ([0-9.]+)s.*decode ([0-9.]+)s")


def cli_once(args, out):
    cmd = [str(su.binary()), args.prompt, "-m", args.model, "--steps", str(args.steps), "-g", "7",
           "-W", str(args.size), "-H", str(args.size), "-s", "1", "--sampler", "Euler", "--device", args.device,
           "-o", str(out), "--overwrite"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=su.child_env())
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"CLI failed: {done.stderr.decode(errors='replace')}")
    m = SUMMARY.search(done.stderr.decode(errors="replace"))
    if not m:
        sys.exit(f"no timing summary in the CLI's stderr: {done.stderr.decode(errors='replace')[-500:]}")
    load, text, denoise, decode = map(float, m.groups())
    return wall, load, text + denoise + decode


def request_once(session, server, args, steps=None):
    body = {"prompt": args.prompt, "steps": steps or args.steps, "cfg_scale": 7, "width": args.size,
            "height": args.size, "seed": 1, "sampler_name": "Euler"}
    t0 = time.perf_counter()
    r = session.post(server.url(su.API + "/txt2img"), json=body, timeout=600)
    wall = time.perf_counter() - t0
    if r.status_code != 200:
        sys.exit(f"server answered {r.status_code}: {r.text[:500]}")
    return wall


def overhead(args, tmp):
    with su.Server("-m", args.model, "--device", args.device, workdir=tmp) as server:
        session = requests.Session()
        request_once(session, server, args)  # warm-up: first-call allocations
        cli_wall, cli_load, cli_gen, srv = [], [], [], []
        for _ in range(args.runs):
            w, load, gen = cli_once(args, Path(tmp) / "cli.png")
            cli_wall.append(w)
            cli_load.append(load)
            cli_gen.append(gen)
            srv.append(request_once(session, server, args))
    med = statistics.median
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, Euler, {args.runs} rounds (medians):")
    print(f"  CLI wall {med(cli_wall) * 1e3:.0f} ms, CLI load {med(cli_load) * 1e3:.0f} ms, "
          f"CLI generation (text+denoise+decode) {med(cli_gen) * 1e3:.0f} ms")
    print(f"  server request {med(srv) * 1e3:.0f} ms")
    print(f"  overhead per image: server - CLI generation = {(med(srv) - med(cli_gen)) * 1e3:+.0f} ms; "
          f"server - (CLI wall - load) = {(med(srv) - (med(cli_wall) - med(cli_load))) * 1e3:+.0f} ms")


def alternate(args, tmp, steps, with_args):
    """Medians of N alternating requests to a server started with `with_args` and one without previews."""
    with su.Server("-m", args.model, "--device", args.device, *with_args, workdir=tmp) as on, \
            su.Server("-m", args.model, "--device", args.device, "--preview-every", "0", workdir=tmp) as off:
        s_on, s_off = requests.Session(), requests.Session()
        request_once(s_on, on, args, steps)  # warm-up
        request_once(s_off, off, args, steps)
        with_p, without = [], []
        for _ in range(args.runs):
            with_p.append(request_once(s_on, on, args, steps))
            without.append(request_once(s_off, off, args, steps))
    return statistics.median(with_p), statistics.median(without)


def preview_cost(args, tmp):
    steps = args.preview_steps
    on, off = alternate(args, tmp, steps, ["--preview-every", "1"])
    print(f"previews, {steps}-step requests, {args.runs} rounds (medians): every step {on * 1e3:.0f} ms, "
          f"none {off * 1e3:.0f} ms -> {(on - off) / steps * 1e3:+.2f} ms per step")
    if args.taesd:  # TAESD's full-size decode every step, against none
        on, off = alternate(args, tmp, steps, ["--preview-every", "1", "--taesd", args.taesd])
        print(f"TAESD previews ({args.taesd}): every step {on * 1e3:.0f} ms, none {off * 1e3:.0f} ms "
              f"-> {(on - off) / steps * 1e3:+.2f} ms per step")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--preview-steps", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", default="a photo of a cat")
    p.add_argument("--taesd", default="", help="TAESD weights: also time previews decoded by TAESD")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="taiyi-serve-bench-") as tmp:
        overhead(args, tmp)
        preview_cost(args, tmp)


if __name__ == "__main__":
    main()
