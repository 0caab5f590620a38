"""Shared helpers of the `taiyi serve` tests (issue 27): start and stop a real server on a free loopback
port, run the CLI for the reference PNG, read a PNG's text chunks, raw HTTP for what `requests` hides.

The tests run as plain scripts under CTest:

    TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/server/test_x.py

TAIYI_FIXTURES is the folder tools/make_fixtures.py writes (tiny random pipelines tiny-clip, tiny-bert,
tiny-clip-inpaint and the images/ inputs). A missing binary or fixture fails the test; nothing is skipped.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import zlib
from pathlib import Path

import requests

STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15
API = "/sdapi/v1"


def binary():
    value = os.environ.get("TAIYI_BINARY")
    if not value or not Path(value).is_file():
        raise RuntimeError(f"TAIYI_BINARY must name the taiyi executable (got {value!r})")
    return Path(value).resolve()


def fixtures():
    value = os.environ.get("TAIYI_FIXTURES")
    if not value or not (Path(value) / "tiny-clip" / "model_index.json").is_file():
        raise RuntimeError(f"TAIYI_FIXTURES must name the folder tools/make_fixtures.py wrote (got {value!r})")
    return Path(value).resolve()


def child_env():
    # The tiny models gain nothing from threads, and on a shared machine OpenMP spinning makes them ~30x
    # slower; the CLI and the server get the same setting, so their images are comparable.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models_dir(root, names):
    """A --models-dir holding copies of the named fixture models (copies, not links: the folder name is
    the model's title, and a server may rightly refuse links that lead out of its folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(fixtures() / name, root / name)
    return root


class Server:
    """A `taiyi serve` process on 127.0.0.1:<free port>; its stderr goes to a file (a pipe nobody reads
    would block it). Use as a context manager or call start()/stop()."""

    def __init__(self, *args, workdir=None):
        self.args = [str(a) for a in args]
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="taiyi-serve-"))
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc = None
        self.stderr_path = self.workdir / f"serve-{self.port}.stderr"

    @property
    def base(self):
        return f"http://{self.host}:{self.port}"

    def url(self, path):
        return self.base + path

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        # --rate-limit 0: the tests poll /progress and load the queue faster than the default per-client
        # rate allows; the rate limit is not what they check.
        cmd = [str(binary()), "serve", *self.args, "--host", self.host, "--port", str(self.port),
               "--rate-limit", "0"]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._stderr, env=child_env(),
                                     cwd=self.workdir)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if "serving on http://" in self.stderr():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"taiyi serve exited with {self.proc.returncode} before serving; "
                                     f"command {cmd}\nstderr:\n{self.stderr()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"taiyi serve printed no 'serving on http://' line within {STARTUP_TIMEOUT_S} s; "
                             f"stderr:\n{self.stderr()}")

    def stderr(self):
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/PID/status")

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, as the contract says stops it; returns its exit status. A server that needs SIGKILL is
        a failure (raised after it is killed)."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"taiyi serve did not stop within {STOP_TIMEOUT_S} s of SIGTERM; "
                                     f"stderr tail:\n{self.stderr()[-2000:]}")
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # HTTP shortcuts
    def get(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.get(self.url(path), **kw)

    def post(self, path, body=None, **kw):
        kw.setdefault("timeout", 120)
        if body is not None:
            kw["json"] = body
        return requests.post(self.url(path), **kw)

    def wait_idle(self, timeout=10.0, interval=0.05, **kw):
        """Polls GET /progress until the web UI's idle state (progress 0, job_count 0), as clients do;
        returns the seconds it took, raises if not idle in time."""
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            last = self.get(API + "/progress?skip_current_image=true", **kw).json()
            if last["progress"] == 0 and last["state"]["job_count"] == 0:
                return time.monotonic() - start
            time.sleep(interval)
        raise AssertionError(f"server not idle within {timeout} s; last /progress: {last}")


def run_cli(out_dir, prompt, model, steps, seed, width=64, height=64, cfg=7.0, negative="", sampler="Euler",
            num_images=1, init=None, strength=None, mask=None, clip_skip=None, extra=()):
    """The CLI's PNG bytes for these settings (one per image, image i with seed + i)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary()), prompt, "-m", str(model), "--steps", str(steps), "-g", fmt_number(cfg),
           "-W", str(width), "-H", str(height), "-s", str(seed), "--sampler", sampler, "--device", "cpu",
           "--num-images", str(num_images), "-o", str(out_dir / "cli-{seed}.png"), "--overwrite", "-q"]
    if negative:
        cmd += ["-n", negative]
    if init is not None:
        cmd += ["-i", str(init)]
    if strength is not None:
        cmd += ["--strength", fmt_number(strength)]
    if mask is not None:
        cmd += ["--mask", str(mask)]
    if clip_skip is not None:
        cmd += ["--clip-skip", str(clip_skip)]
    cmd += list(extra)
    done = subprocess.run(cmd, capture_output=True, env=child_env(), timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"CLI failed ({done.returncode}): {cmd}\n{done.stderr.decode(errors='replace')}")
    return [(out_dir / f"cli-{seed + i}.png").read_bytes() for i in range(num_images)]


def fmt_number(x):
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def png_chunks(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"not a PNG (starts {data[:8]!r})")
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind.decode("latin-1"), data[pos + 8:pos + 8 + length]
        pos += 12 + length


def png_text(data):
    """The PNG's text chunks (tEXt, zTXt, iTXt) as {keyword: text}."""
    out = {}
    for kind, body in png_chunks(data):
        if kind == "tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == "zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == "iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
    return out


def png_pixels(data):
    """(mode, size, raw pixel bytes), for a comparison that tells pixels apart from metadata."""
    import io
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


def b64_png(data, data_url=False):
    text = base64.b64encode(data).decode("ascii")
    return "data:image/png;base64," + text if data_url else text


class ServerCase(unittest.TestCase):
    """Assertions shared by the test files; a subclass sets cls.server and cls.tmp in setUpClass."""
    maxDiff = 4000

    @classmethod
    def tearDownClass(cls):
        """Stops the server (SIGTERM), shows the end of its log, removes the scratch folder (kept with
        TAIYI_SERVE_KEEP=1)."""
        try:
            cls.server.stop()
        finally:
            tail = cls.server.stderr().splitlines()[-15:]
            print(f"  [{cls.__name__}] server stderr, last {len(tail)} lines:\n    " + "\n    ".join(tail))
            if not os.environ.get("TAIYI_SERVE_KEEP"):
                shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_same_png(self, got, want, what):
        """The server's PNG equals the CLI's byte for byte; on a difference, says whether the pixels or only
        the metadata differ."""
        if got == want:
            return
        same_pixels = png_pixels(got) == png_pixels(want)
        self.fail(f"{what}: server PNG ({len(got)} bytes) differs from the CLI's ({len(want)} bytes); pixels "
                  f"{'equal' if same_pixels else 'DIFFER'}; server text {png_text(got)!r}, CLI text "
                  f"{png_text(want)!r}")

    def assert_error_body(self, response, status, what):
        self.assertEqual(response.status_code, status, f"{what}: status {response.status_code}, body "
                                                       f"{response.text[:500]!r}")
        try:
            body = response.json()
        except ValueError:
            self.fail(f"{what}: error body is not JSON: {response.text[:500]!r}")
        for key in ("error", "detail"):
            self.assertIn(key, body, f"{what}: error body lacks {key!r}: {body}")
        return body


def raw_request(method, path, body=b"", headers=None, host="x"):
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
        head.append("Content-Type: application/json")
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock, timeout=30.0):
    """Reads one HTTP/1.1 response from a socket (Content-Length or until close); returns
    (status, headers dict lower-case, body bytes)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full header: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    elif headers.get("transfer-encoding", "").lower() != "chunked":
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def json_info(response_json):
    """`info` is a JSON string in the web UI's response (clients JSON.parse it)."""
    info = response_json["info"]
    assert isinstance(info, str), f"info must be a JSON string, got {type(info).__name__}"
    return json.loads(info)
