#!/usr/bin/env python3
"""`taiyi serve` under hostile and heavy use (issue 27, "Safe by default" and "Concurrency and load"):
malformed and wrongly typed bodies, oversized bodies (answered before they are read), broken and
oversized base64 images, absurd sizes, slow clients, 200 concurrent requests against --queue 16 (all
answered, 200 or 503 + Retry-After, none lost, FIFO kept), 1,000 sequential requests with the RSS flat.
After every check the server must still be alive and answering.

    TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/server/test_hostile.py
"""
import base64
import json
import selectors
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import zlib
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_util as su  # noqa: E402

API = su.API
QUEUE = 16
SMALL = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 1}


def png(width, height, color_type, idat, bit_depth=8):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_png(side):
    """A grey PNG side x side, all zeros: a few hundred KB that decode to side^2 bytes."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    return png(side, side, 0, b"".join(z.compress(row) for _ in range(side)) + z.flush())


class HostileTest(su.ServerCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-hostile-"))
        cls.server = su.Server("-m", su.fixtures() / "tiny-clip", "--device", "cpu", "--queue", str(QUEUE),
                               workdir=cls.tmp).start()
        cls.init_png = (su.fixtures() / "images" / "rgb_64.png").read_bytes()


    def setUp(self):
        self.assertTrue(self.server.alive(), "the server died before this test:\n" + self.server.stderr()[-3000:])

    def tearDown(self):
        self.assert_still_serving()

    def assert_still_serving(self):
        self.assertTrue(self.server.alive(), "the server died:\n" + self.server.stderr()[-3000:])
        r = self.server.get(API + "/progress?skip_current_image=true", timeout=30)
        self.assertEqual(r.status_code, 200, r.text[:300])

    def post_raw(self, route, data, timeout=30):
        return requests.post(self.server.url(API + route), data=data, timeout=timeout,
                             headers={"Content-Type": "application/json"})

    def test_malformed_json(self):
        for data in (b'{"prompt":', b"{prompt: 1}", b"\xff\xfe\x00", b"", b"[1, 2]", b'"text"', b"null",
                     b'{"prompt": "a", "steps": NaN}', b'{"a":' * 100000,
                     b"[" * 100000 + b"]" * 100000):
            r = self.post_raw("/txt2img", data)
            self.assertIn(r.status_code, (400, 422), f"body {data[:40]!r}: {r.status_code} {r.text[:300]}")
            self.assert_error_body(r, r.status_code, f"body {data[:40]!r}")
        print("  10 malformed bodies (incl. 100,000 levels of nesting) -> 400/422 with the error JSON")

    def test_wrong_types(self):
        cases = [{"steps": "many"}, {"width": {"a": 1}}, {"height": [64]}, {"seed": "abc"}, {"cfg_scale": "x"},
                 {"batch_size": [1]}, {"prompt": {"text": "a"}}, {"override_settings": "x"},
                 {"styles": "x"}]  # styles: List[str] in the web UI, so a string is a 422 there
        for case in cases:  # subTest: every wrong case is reported, not only the first
            with self.subTest(route="txt2img", case=case):
                r = self.server.post(API + "/txt2img", {**SMALL, **case})
                self.assert_error_body(r, 422, f"txt2img {case}")
        for case in ({"init_images": "notalist"}, {"init_images": [5]}, {"denoising_strength": "lots"},
                     {"mask": 12}, {"inpainting_mask_invert": "yes"}):
            with self.subTest(route="img2img", case=case):
                body = {**SMALL, "init_images": [su.b64_png(self.init_png)], **case}
                self.assert_error_body(self.server.post(API + "/img2img", body), 422, f"img2img {case}")
        r = self.server.post(API + "/options", ["sd_model_checkpoint"])
        self.assertIn(r.status_code, (400, 422), f"POST /options with a list: {r.status_code}")
        # Unknown keys are ignored (the web UI's pydantic models do).
        r = self.server.post(API + "/txt2img", {**SMALL, "bogus": {"a": [1, None]}, "alwayson_scripts": {}})
        self.assertEqual(r.status_code, 200, r.text[:300])
        print(f"  {len(cases) + 5} wrongly typed fields -> 422; unknown keys ignored")

    def huge_body(self, head, send_more, limit_bytes):
        """Sends the head, then send_more(i) pieces until the server answers or limit_bytes went out.
        Returns (status or None, bytes sent)."""
        sock = socket.create_connection((self.server.host, self.server.port), timeout=30)
        sent = 0
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        try:
            sock.sendall(head)
            i = 0
            while sent < limit_bytes:
                if sel.select(timeout=0.5 if i == 0 else 0):
                    break
                piece = send_more(i)
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(piece)
                i += 1
            try:
                status, _, body = su.read_response(sock, timeout=10)
            except (ConnectionError, socket.timeout, OSError) as e:
                self.fail(f"no response to an oversized body after {sent} bytes: {e!r}")
            return status, sent, body
        finally:
            sock.close()

    def test_huge_content_length(self):
        declared = 8 << 30
        rss0 = self.server.rss_kib()
        head = (f"POST {API}/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\n\r\n").encode()
        mib = b"[" * (1 << 20)
        status, sent, body = self.huge_body(head, lambda i: mib, 1 << 30)
        self.assertEqual(status, 413, f"Content-Length 8 GiB: {status} {body[:200]!r}")
        self.assertLess(sent, declared, "the server read the whole body before refusing it")
        grew = (self.server.rss_kib() - rss0) / 1024
        print(f"  Content-Length 8 GiB: 413 after {sent / 2**20:.0f} MiB sent, RSS +{grew:.0f} MiB")
        self.assertLess(grew, 512, "RSS grew by more than 512 MiB")

    def test_huge_chunked(self):
        rss0 = self.server.rss_kib()
        head = (f"POST {API}/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n").encode()
        piece = b"100000\r\n" + b" " * (1 << 20) + b"\r\n"
        status, sent, body = self.huge_body(head, lambda i: piece, 2 << 30)
        # 411 (chunked uploads refused outright) or 413 (refused at the size limit): either way not read.
        self.assertIn(status, (411, 413), f"endless chunked body: {status} {body[:200]!r}")
        self.assertLess(sent, 2 << 30, "the server took 2 GiB of chunked body without refusing it")
        grew = (self.server.rss_kib() - rss0) / 1024
        print(f"  chunked body: {status} after {sent / 2**20:.0f} MiB sent, RSS +{grew:.0f} MiB")
        self.assertLess(grew, 512, "RSS grew by more than 512 MiB")

    def test_broken_images(self):
        good = su.b64_png(self.init_png)
        bomb = bomb_png(20000)  # 400 MB of pixels
        cases = {
            "not base64": "@@@@!!!!",
            "bad padding": good[:-3] + "=A",
            "not an image": base64.b64encode(b"hello, this is not an image" * 10).decode(),
            "truncated PNG": base64.b64encode(self.init_png[:200]).decode(),
            "PNG with a lying 100000x100000 header": base64.b64encode(
                png(100000, 100000, 2, zlib.compress(b"\0" * 4096))).decode(),
            "decompression bomb 20000x20000": base64.b64encode(bomb).decode(),
            "empty string": "",
            "data URL without data": "data:image/png;base64,",
            "an http URL": "http://127.0.0.1:1/x.png",
            "a file path": "/etc/passwd",
        }
        rss0 = self.server.rss_kib()
        for what, image in cases.items():
            for field in ("init_images", "mask"):
                if field == "mask" and what == "empty string":
                    continue  # the web UI reads an empty mask as no mask
                body = {**SMALL, "init_images": [good]}
                body[field] = [image] if field == "init_images" else image
                t0 = time.monotonic()
                r = self.server.post(API + "/img2img", body)
                took = time.monotonic() - t0
                self.assertTrue(400 <= r.status_code < 500, f"{field} {what}: {r.status_code} {r.text[:300]}")
                self.assert_error_body(r, r.status_code, f"{field} {what}")
                self.assertLess(took, 10, f"{field} {what}: took {took:.1f} s")
        huge = base64.b64encode(bytes(range(256)) * (120 << 10)).decode()  # 30 MiB of bytes, 40 MiB base64
        r = self.server.post(API + "/img2img", {**SMALL, "init_images": [huge]})
        self.assertTrue(400 <= r.status_code < 500, f"40 MiB base64 non-image: {r.status_code} {r.text[:300]}")
        grew = (self.server.rss_kib() - rss0) / 1024
        print(f"  {2 * len(cases)} broken/huge images -> 4xx; RSS +{grew:.0f} MiB")
        self.assertLess(grew, 512, "RSS grew by more than 512 MiB (a decoded bomb?)")

    def test_absurd_settings(self):
        cases = [{"width": 100000, "height": 100000}, {"width": 0}, {"width": -64}, {"height": 10 ** 12},
                 {"steps": 10 ** 9}, {"steps": -5}, {"batch_size": 10 ** 6}, {"n_iter": 10 ** 6},
                 {"batch_size": -1}, {"n_iter": 0}, {"seed": 2 ** 70}, {"width": 2 ** 63}]
        for case in cases:
            t0 = time.monotonic()
            r = self.server.post(API + "/txt2img", {**SMALL, **case})
            took = time.monotonic() - t0
            self.assertTrue(400 <= r.status_code < 500, f"{case}: {r.status_code} {r.text[:300]}")
            self.assert_error_body(r, r.status_code, f"{case}")
            self.assertLess(took, 5, f"{case}: answered after {took:.1f} s")
        print(f"  {len(cases)} absurd sizes/steps/batches -> 4xx at once")

    def test_slow_clients(self):
        stalled = []
        for i in range(16):
            s = socket.create_connection((self.server.host, self.server.port), timeout=30)
            if i % 2:  # whole head of a POST, then no body
                s.sendall(f"POST {API}/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            else:  # half a request head
                s.sendall(f"GET {API}/progress HTTP/1.1\r\nHost: x\r\n".encode())
            stalled.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = self.server.get(API + "/progress", timeout=30)
        progress_s = time.monotonic() - t0
        self.assertEqual(r.status_code, 200)
        t0 = time.monotonic()
        r = self.server.post(API + "/txt2img", SMALL, timeout=60)
        txt2img_s = time.monotonic() - t0
        self.assertEqual(r.status_code, 200, r.text[:300])
        print(f"  16 stalled clients: /progress in {progress_s:.3f} s, txt2img in {txt2img_s:.3f} s")
        self.assertLess(progress_s, 3, "a stalled client blocked /progress")
        self.assertLess(txt2img_s, 10, "a stalled client blocked txt2img")
        # The server drops stalled clients after its time limit (their requests are never completed).
        deadline = time.monotonic() + 30
        open_ones = list(stalled)
        while open_ones and time.monotonic() < deadline:
            for s in list(open_ones):
                s.settimeout(0.1)
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 4"):
                    open_ones.remove(s)
        for s in stalled:
            s.close()
        self.assertEqual(len(open_ones), 0, f"{len(open_ones)} of 16 stalled connections still open after 30 s")

    def test_reset_storm(self):
        # Clients that vanish: 300 connections reset (RST) at once, or right after half a request. The
        # accept loop must go on (an accept() error such as ECONNABORTED must not end it).
        for i in range(300):
            s = socket.create_connection((self.server.host, self.server.port), timeout=30)
            if i % 2:
                s.sendall(f"POST {API}/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        for _ in range(20):
            self.assertEqual(self.server.get(API + "/progress", timeout=10).status_code, 200)
        r = self.server.post(API + "/txt2img", SMALL, timeout=60)
        self.assertEqual(r.status_code, 200, r.text[:300])
        print("  300 connections reset by their clients; still serving")

    def test_z1_concurrent_200(self):
        n = 200
        sel = selectors.DefaultSelector()
        bufs = [b""] * n
        first_byte = [None] * n
        done = [False] * n
        socks = []

        def complete(data):
            head, sep, body = data.partition(b"\r\n\r\n")
            if not sep:
                return False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    return len(body) >= int(v)
            return False

        def reader():
            deadline = time.monotonic() + 600
            while not all(done) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    i, now = key.data, time.monotonic()
                    try:
                        chunk = key.fileobj.recv(1 << 16)
                    except OSError:
                        chunk = b""
                    if first_byte[i] is None:
                        first_byte[i] = now
                    bufs[i] += chunk
                    if not chunk or complete(bufs[i]):
                        done[i] = True
                        sel.unregister(key.fileobj)
        thread = threading.Thread(target=reader)
        thread.start()
        sent_at = []
        t_start = time.monotonic()
        # Each client sends its request as soon as it is connected, as clients do (the server closes a
        # connection that stays silent for its keep-alive time, 5 s).
        for i in range(n):
            s = socket.create_connection((self.server.host, self.server.port), timeout=60)
            body = json.dumps({**SMALL, "prompt": f"request {i}", "seed": 1000 + i, "steps": 2}).encode()
            s.sendall(su.raw_request("POST", API + "/txt2img", body))
            sent_at.append(time.monotonic())
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
            time.sleep(0.003)
        thread.join()
        wall = time.monotonic() - t_start
        for s in socks:
            s.close()
        statuses, accepted = {}, []
        for i in range(n):
            head, _, body = bufs[i].partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 "), f"request {i}: no HTTP answer ({bufs[i][:100]!r})")
            status = int(head.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(b":") for line in head.split(b"\r\n")[1:])}
            self.assertIn(status, (200, 503), f"request {i}: status {status} {body[:200]!r}")
            if status == 503:
                self.assertTrue(headers.get(b"retry-after", b"").isdigit(), f"request {i}: 503 without Retry-After")
                json.loads(body)
                continue
            info = su.json_info(json.loads(body))
            self.assertEqual((info["seed"], info["prompt"]), (1000 + i, f"request {i}"),
                             f"request {i} got another request's image")
            accepted.append(i)
        # FIFO: among accepted requests, one sent 50 ms (a scheduling slack) before another finishes first.
        inversions = [(a, b) for a in accepted for b in accepted
                      if sent_at[a] + 0.05 < sent_at[b] and first_byte[a] > first_byte[b]]
        print(f"  200 concurrent txt2img vs --queue {QUEUE}: {statuses}, {wall:.1f} s, "
              f"{len(inversions)} FIFO inversions")
        self.assertGreaterEqual(len(accepted), QUEUE, "fewer accepted than the queue holds")
        self.assertGreater(statuses.get(503, 0), 0, "200 requests in 0.6 s never filled a queue of 16")
        self.assertFalse(inversions, f"completed out of order (sent first, answered later): {inversions[:10]}")
        self.server.wait_idle(timeout=30)

    def test_z2_sequential_1000(self):
        session = requests.Session()
        samples, progress_s = [], []
        t0 = time.monotonic()
        for i in range(1000):
            t_request = time.monotonic()
            try:
                if i % 4 == 0:
                    r = session.post(self.server.url(API + "/txt2img"), json={**SMALL, "seed": i}, timeout=60)
                else:
                    r = session.get(self.server.url(API + "/progress"), timeout=60)
            except requests.RequestException as e:
                self.fail(f"request {i} of 1000 (keep-alive session) failed: {e!r}")
            self.assertEqual(r.status_code, 200, f"request {i}: {r.text[:200]}")
            if i % 4:
                progress_s.append(time.monotonic() - t_request)
            if i % 50 == 49:
                samples.append((i + 1, self.server.rss_kib()))
        took = time.monotonic() - t0
        rss = [kib / 1024 for _, kib in samples]
        after_warmup = max(kib for count, kib in samples if 200 <= count <= 300) / 1024
        progress_ms = sorted(progress_s)[len(progress_s) // 2] * 1e3
        print(f"  1000 sequential requests (250 txt2img): {1000 / took:.0f} req/s, GET /progress median "
              f"{progress_ms:.1f} ms; RSS MiB first {rss[0]:.1f}, after 300 {after_warmup:.1f}, last {rss[-1]:.1f}, "
              f"max {max(rss):.1f}")
        self.assertLess(rss[-1] - after_warmup, 16, f"RSS grew {rss[-1] - after_warmup:.1f} MiB over 700 requests: "
                                                    f"{[round(x, 1) for x in rss]}")
        # A keep-alive /progress is a few hundred bytes: tens of ms mean small writes held back (Nagle's
        # algorithm against the client's delayed ACK), which every polling client pays.
        self.assertLess(progress_ms, 20, f"GET /progress on a keep-alive connection takes {progress_ms:.1f} ms")


if __name__ == "__main__":
    unittest.main(verbosity=2)
