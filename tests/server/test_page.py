#!/usr/bin/env python3
"""The web page of `taiyi serve` (src/server/data/index.html) in a real browser, against the real server:

    TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/server/test_page.py

Starts `taiyi serve -m $TAIYI_FIXTURES/tiny-clip` on a free port and drives Debian's chromium (headless,
through Playwright: scripts/setup.sh installs both) as a user would:
  - the page comes up in Chinese for a zh browser, the sampler list filled from the server (Euler chosen);
  - an example prompt clicked, 3 steps, 64x64, seed 42, Generate: the result is a 64x64 PNG whose bytes
    equal what the command line writes for the same request (`taiyi PROMPT --steps 3 -W 64 -H 64 -s 42
    --sampler Euler -g 7`: the server's defaults are the web UI's), its infotext under it equals that PNG's
    "parameters" text, and the download link gives the same bytes under the name taiyi-42.png; a
    screenshot is kept ($TAIYI_TEST_OUT, else $TAIYI_FIXTURES/server/page.png);
  - an init image uploaded: the page posts /sdapi/v1/img2img with the file as a data URL, and the result
    equals the command line's `-i FILE --strength 0.6`; a mask goes as a data URL beside it;
  - English at one click; a broken init image is refused by the server and its error shown in the message
    line, no result;
  - a 1000-step run shows its progress, ETA and live preview, and Interrupt stops it before its progress
    reaches one half.
Missing fixtures, binary or browser fail the test.
"""
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
PROMPT = "吃过桥米线的猫。"  # one of the model card's examples, as the page offers them
READY = "serving on http://"
READY_TIMEOUT_S = 120
RUN_TIMEOUT_MS = 600_000  # a tiny-model run on a busy 2-core machine takes seconds; this only bounds a hang

# Records every value the progress bar and the ETA line take, and whether a live preview was shown,
# from the page's own changes (a poll from here could miss a short run).
RECORDER = """() => {
  window.seen = {progress: [], eta: [], preview: 0};
  new MutationObserver(() => window.seen.progress.push(Number(document.getElementById('progress').value)))
    .observe(document.getElementById('progress'), {attributes: true, attributeFilter: ['value']});
  new MutationObserver(() => window.seen.eta.push(document.getElementById('eta').textContent))
    .observe(document.getElementById('eta'), {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => { if (!document.getElementById('preview').hidden) window.seen.preview++; })
    .observe(document.getElementById('preview'), {attributes: true});
}"""


def required_env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR python {__file__}")
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`taiyi serve` in the background; ready once its "serving on http://" line came on stderr."""

    def __init__(self, binary, model):
        self.port = free_port()
        self.lines = []
        self.ready = threading.Event()
        self.process = subprocess.Popen([binary, "serve", "-m", model, "--port", str(self.port), "--host", "127.0.0.1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + READY_TIMEOUT_S
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"taiyi serve did not print '{READY}' within {READY_TIMEOUT_S} s "
                                   f"(exit {self.process.returncode}):\n" + "".join(self.lines[-20:]))
        self.url = f"http://127.0.0.1:{self.port}/"

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if READY in line:
                self.ready.set()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def png_of_data_url(url):
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix):], validate=True)


class PageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.binary = required_env("TAIYI_BINARY")
        cls.fixtures = Path(required_env("TAIYI_FIXTURES"))
        cls.model = cls.fixtures / "tiny-clip"
        if not (cls.model / "model_index.json").is_file():
            raise RuntimeError(f"no tiny-clip pipeline in {cls.fixtures}: make the fixtures with tools/make_fixtures.py")
        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(f"no {CHROMIUM}: scripts/setup.sh installs Debian's chromium")
        cls.out = Path(os.environ.get("TAIYI_TEST_OUT") or cls.fixtures / "server")
        cls.out.mkdir(parents=True, exist_ok=True)
        cls.tmp = tempfile.TemporaryDirectory(prefix="taiyi-page-")
        cls.server = Server(cls.binary, str(cls.model))
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, headless=True)

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.server.stop()
        cls.tmp.cleanup()

    def open_page(self, locale="zh-CN"):
        context = self.browser.new_context(locale=locale, accept_downloads=True, viewport={"width": 1200, "height": 900})
        self.addCleanup(context.close)
        page = context.new_page()
        page.goto(self.server.url)
        page.wait_for_function("document.getElementById('sampler').options.length > 0", timeout=30_000)
        page.evaluate(RECORDER)
        return page

    def set_request(self, page, steps, seed=42, size=64):
        page.fill("#steps", str(steps))
        page.fill("#width", str(size))
        page.fill("#height", str(size))
        page.fill("#seed", str(seed))

    def generate(self, page):
        page.click("#generate")
        page.wait_for_function("!document.getElementById('generate').disabled", timeout=RUN_TIMEOUT_MS)

    def cli_png(self, prompt, *extra):
        out = Path(tempfile.mkdtemp(dir=self.tmp.name)) / "cli.png"
        run = subprocess.run([self.binary, prompt, "-m", str(self.model), "--steps", "3", "-W", "64", "-H", "64", "-s", "42",
                              "--sampler", "Euler", "-g", "7", *extra, "-o", str(out)], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        return out.read_bytes()

    def result_png(self, page):
        results = page.locator("#gallery .result")
        self.assertEqual(results.count(), 1, page.text_content("#error"))
        return png_of_data_url(results.locator("img").get_attribute("src"))

    def test_generate_matches_the_command_line(self):
        page = self.open_page()
        self.assertEqual(page.text_content("#lang"), "English")  # Chinese for a zh browser
        self.assertEqual(page.text_content("#generate"), "生成")
        self.assertEqual(page.input_value("#sampler"), "Euler")
        self.assertEqual(page.input_value("#cfg"), "7")
        page.click(f".example:text-is('{PROMPT}')")
        self.assertEqual(page.input_value("#prompt"), PROMPT)
        self.set_request(page, steps=3)
        self.generate(page)
        self.assertEqual(page.text_content("#error"), "")
        results = page.locator("#gallery .result")
        png = self.result_png(page)
        image = Image.open(io.BytesIO(png))
        self.assertEqual((image.format, image.size), ("PNG", (64, 64)))
        expected = self.cli_png(PROMPT)
        self.assertTrue(png == expected, f"the server's PNG ({len(png)} bytes) differs from the CLI's ({len(expected)} bytes)")
        parameters = Image.open(io.BytesIO(expected)).info["parameters"]
        self.assertIn("Sampler: Euler", parameters)
        self.assertEqual(results.locator(".infotext").text_content(), parameters)

        # A 3-step run may end before the first poll sees it: the progress is checked on a long run below.
        seen = page.evaluate("window.seen")
        print(f"progress values shown: {seen['progress']}; previews: {seen['preview']}", file=sys.stderr)
        self.assertEqual(seen["progress"][-1], 1)

        link = results.locator("a.download")
        with page.expect_download() as info:
            link.click()
        download = info.value
        self.assertEqual(download.suggested_filename, "taiyi-42.png")
        self.assertTrue(Path(download.path()).read_bytes() == expected, "the downloaded file differs")
        page.screenshot(path=str(self.out / "page.png"), full_page=True)

    def test_img2img_sends_the_files_as_data_urls(self):
        images = self.fixtures / "images"
        init, mask = images / "rgb_64.png", images / "mask_64.png"
        page = self.open_page()
        bodies = []
        page.on("request", lambda r: bodies.append((r.url, r.post_data_json)) if r.url.endswith("/img2img") else None)
        page.fill("#prompt", PROMPT)
        self.set_request(page, steps=3)
        page.fill("#strength", "0.6")
        page.set_input_files("#init-image", str(init))
        self.generate(page)
        self.assertTrue(self.result_png(page) == self.cli_png(PROMPT, "-i", str(init), "--strength", "0.6"),
                        "the server's img2img PNG differs from the command line's")
        (url, body), = bodies
        self.assertEqual(png_of_data_url(body["init_images"][0]), init.read_bytes())
        self.assertEqual((body["denoising_strength"], body["steps"], body["seed"]), (0.6, 3, 42))
        self.assertNotIn("mask", body)
        # With a mask too: the mask goes as a data URL beside the image, and an image comes back.
        page.locator("#gallery").evaluate("g => g.replaceChildren()")
        page.set_input_files("#mask", str(mask))
        self.generate(page)
        image = Image.open(io.BytesIO(self.result_png(page)))
        self.assertEqual((image.format, image.size), ("PNG", (64, 64)))
        self.assertEqual(png_of_data_url(bodies[-1][1]["mask"]), mask.read_bytes())

    def test_english_and_errors(self):
        page = self.open_page(locale="en-US")
        self.assertEqual(page.text_content("#lang"), "中文")
        self.assertEqual(page.text_content("#generate"), "Generate")
        page.click("#lang")
        self.assertEqual(page.text_content("#generate"), "生成")
        page.click("#lang")
        self.assertEqual(page.text_content("label[for=steps]"), "Steps")
        # An init image that is no image: the server must refuse it, and the page show why.
        statuses = []
        page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/img2img") else None)
        page.set_input_files("#init-image", {"name": "broken.png", "mimeType": "image/png", "buffer": b"not a PNG at all"})
        page.fill("#prompt", "a cat")
        self.set_request(page, steps=2)
        self.generate(page)
        self.assertEqual(len(statuses), 1)
        self.assertGreaterEqual(statuses[0], 400)
        message = page.text_content("#error")
        self.assertTrue(message.startswith("request failed: ") and len(message) > len("request failed: ") + 5, message)
        self.assertEqual(page.locator("#gallery .result").count(), 0)
        print(f"error shown: {message}", file=sys.stderr)

    def test_progress_and_interrupt(self):
        page = self.open_page()
        page.fill("#prompt", PROMPT)
        self.set_request(page, steps=1000)
        page.click("#generate")
        # While it runs: the bar moves, and the ETA comes from the server's eta_relative.
        page.wait_for_function("window.seen.progress.some((v) => v > 0 && v < 1)", timeout=RUN_TIMEOUT_MS)
        page.wait_for_function("window.seen.eta.some((e) => /^剩余约 [0-9]+[.][0-9] 秒$/.test(e))", timeout=RUN_TIMEOUT_MS)
        # The live preview (current_image; the server sends one every few steps by default) as a PNG.
        page.wait_for_function("window.seen.preview > 0", timeout=RUN_TIMEOUT_MS)
        preview = Image.open(io.BytesIO(png_of_data_url(page.get_attribute("#preview", "src"))))
        self.assertEqual(preview.format, "PNG")
        print(f"preview {preview.size}, progress {page.evaluate('window.seen.progress')}", file=sys.stderr)
        page.click("#interrupt")
        page.wait_for_function("!document.getElementById('generate').disabled", timeout=RUN_TIMEOUT_MS)
        seen = page.evaluate("window.seen.progress")
        self.assertLess(max(seen), 0.5, f"the run went on after Interrupt: {seen}")
        self.assertEqual(page.text_content("#eta"), "已中断")


if __name__ == "__main__":
    unittest.main(verbosity=2)
