#!/usr/bin/env python3
"""`taiyi serve` driven by a real client: the `webuiapi` package from PyPI (pinned in scripts/setup.sh),
mix1009/sdwebuiapi:webuiapi/webuiapi.py, as its users call it. One server on a --models-dir holding copies
of the tiny fixture models; every image it returns must equal, byte for byte, the PNG the CLI writes for
the same settings, and `info.infotexts[i]` must equal that PNG's `parameters` text.

    TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/server/test_webuiapi.py
"""
import base64
import io
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import requests
import webuiapi
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_util as su  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
SEED = 1234


class WebuiapiTest(su.ServerCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-webuiapi-"))
        names = ["tiny-clip", "tiny-bert", "tiny-sdxl", "tiny-taiyi-xl"]
        cls.has_inpaint9 = (su.fixtures() / "tiny-clip-inpaint" / "model_index.json").is_file()
        if cls.has_inpaint9:
            names.append("tiny-clip-inpaint")
        cls.models = su.make_models_dir(cls.tmp / "models", names)
        cls.server = su.Server("--models-dir", cls.models, "-m", cls.models / "tiny-clip", "--device", "cpu",
                               "--preview-every", "2", "--queue", "4", workdir=cls.tmp).start()
        # webuiapi's defaults are "Euler a" and 20 steps; the tests name what they use.
        cls.api = webuiapi.WebUIApi(host=cls.server.host, port=cls.server.port, sampler="Euler", steps=3)
        cls.images = su.fixtures() / "images"


    def setUp(self):
        self.assertTrue(self.server.alive(), "the server died before this test:\n" + self.server.stderr()[-3000:])

    def cli(self, name, **kw):
        return su.run_cli(self.tmp / f"cli-{name}-{time.monotonic_ns()}", **kw)

    def check_images(self, result, cli_pngs, what):
        """Raw PNGs of a webuiapi result equal the CLI's; infotexts equal the PNGs' parameters."""
        raw = [base64.b64decode(s) for s in result.json["images"]]
        self.assertEqual(len(raw), len(cli_pngs), f"{what}: image count")
        self.assertEqual(len(result.images), len(cli_pngs), f"{what}: webuiapi decoded image count")
        info = result.info
        self.assertIsInstance(info, dict, f"{what}: webuiapi could not json.loads(info): {info!r}")
        for i, (got, want) in enumerate(zip(raw, cli_pngs)):
            self.assert_same_png(got, want, f"{what} image {i}")
            self.assertEqual(info["infotexts"][i], su.png_text(want)["parameters"], f"{what}: infotexts[{i}]")
            self.assertEqual(su.png_text(got).get("parameters"), info["infotexts"][i],
                             f"{what}: the PNG's parameters chunk vs infotexts[{i}]")
        print(f"  {what}: {len(raw)} image(s) byte-identical to the CLI's, infotexts = PNG parameters")
        return info

    def test_01_ready_and_lists(self):
        t0 = time.monotonic()
        self.api.util_wait_for_ready(check_interval=0.2)
        self.assertLess(time.monotonic() - t0, 5, "util_wait_for_ready on an idle server")
        progress = self.api.get_progress()
        self.assertEqual(progress["progress"], 0, progress)
        self.assertEqual(progress["state"]["job_count"], 0, progress)
        titles = self.api.util_get_model_names()
        want = sorted(p.name for p in self.models.iterdir())
        self.assertEqual(titles, want, "sd-models titles are the folder names under --models-dir")
        for m in self.api.get_sd_models():
            self.assertEqual(m["title"], m["model_name"], m)
            for key in ("hash", "sha256", "filename", "config"):
                self.assertIn(key, m, f"sd-models entry lacks {key}: {m}")
        self.assertEqual(self.api.util_get_current_model(), "tiny-clip")
        self.assertIn("Euler", self.api.util_get_sampler_names())
        self.assertIn("Euler a", self.api.util_get_sampler_names())
        self.assertTrue(self.api.util_get_scheduler_names(), "schedulers list is empty")
        options = self.api.get_options()
        self.assertEqual(options.get("samples_format"), "png", options)
        self.assertEqual(options.get("CLIP_stop_at_last_layers"), 1, options)
        # webuiapi's constructor GETs /scripts; these are what its users call next.
        for call in (self.api.get_scripts, self.api.get_upscalers, self.api.get_sd_vae, self.api.get_loras,
                     self.api.get_embeddings, self.api.get_memory, self.api.get_latent_upscale_modes,
                     self.api.get_cmd_flags):
            self.assertIsNotNone(call(), call.__name__)
        print(f"  ready; models {titles}; {len(self.api.util_get_sampler_names())} samplers")

    def test_02_txt2img_batch(self):
        result = self.api.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=3, cfg_scale=7,
                                  width=64, height=64, batch_size=2, sampler_name="Euler")
        cli = self.cli("t2i", prompt=PROMPT, negative=NEGATIVE, model=self.models / "tiny-clip", steps=3,
                       seed=SEED, cfg=7, num_images=2)
        info = self.check_images(result, cli, "txt2img batch_size=2")
        expect = {"seed": SEED, "all_seeds": [SEED, SEED + 1], "width": 64, "height": 64, "sampler_name": "Euler",
                  "steps": 3, "cfg_scale": 7, "sd_model_name": "tiny-clip", "clip_skip": 1,
                  "index_of_first_image": 0, "prompt": PROMPT, "all_prompts": [PROMPT, PROMPT],
                  "negative_prompt": NEGATIVE, "batch_size": 2}
        for key, value in expect.items():
            self.assertEqual(info.get(key), value, f"info[{key!r}]")
        params = result.parameters
        for key, value in (("prompt", PROMPT), ("steps", 3), ("seed", SEED), ("batch_size", 2), ("width", 64)):
            self.assertEqual(params.get(key), value, f"parameters echo [{key!r}]")

    def test_03_txt2img_n_iter_and_random_seed(self):
        # n_iter=2 x batch_size=1: two batches of one, as in the web UI (processing.py runs n_iter batches,
        # batch n seeded seed + n * batch_size), so image i is the image a single run with seed + i gives,
        # which is what lets a user reproduce it from its infotext.
        result = self.api.txt2img(prompt=PROMPT, seed=-1, steps=2, cfg_scale=7, width=64, height=64, n_iter=2,
                                  sampler_name="Euler")
        info = result.info
        seed = info["seed"]
        self.assertTrue(0 <= seed < 2 ** 32, f"seed -1 must be replaced by a random seed, got {seed}")
        self.assertEqual(info["all_seeds"], [seed, seed + 1])
        cli = [self.cli(f"rand{i}", prompt=PROMPT, model=self.models / "tiny-clip", steps=2, seed=seed + i)[0]
               for i in range(2)]
        self.check_images(result, cli, f"txt2img n_iter=2 seed -1 -> {seed}")

    def test_04_img2img(self):
        init = self.images / "rgb_64.png"
        result = self.api.img2img(images=[Image.open(init)], prompt=PROMPT, seed=SEED, steps=4, cfg_scale=7,
                                  denoising_strength=0.6, width=64, height=64, sampler_name="Euler")
        cli = self.cli("i2i", prompt=PROMPT, model=self.models / "tiny-clip", steps=4, seed=SEED, init=init,
                       strength=0.6)
        info = self.check_images(result, cli, "img2img (data: URL init image)")
        self.assertEqual(info.get("denoising_strength"), 0.6, "info.denoising_strength")
        # The same request with raw base64 (no data: prefix) gives the same image.
        body = {"init_images": [su.b64_png(init.read_bytes())], "prompt": PROMPT, "seed": SEED, "steps": 4,
                "cfg_scale": 7, "denoising_strength": 0.6, "width": 64, "height": 64, "sampler_name": "Euler"}
        r = self.server.post(su.API + "/img2img", body)
        self.assertEqual(r.status_code, 200, r.text[:500])
        self.assert_same_png(base64.b64decode(r.json()["images"][0]), cli[0], "img2img raw base64 init image")

    def inpaint(self, model, what, invert=0):
        init = self.images / "rgb_64.png"
        mask = self.images / "mask_64.png"
        # The API carries no file name; the server's infotext calls the mask "mask.png", so the CLI gets the
        # same pixels under that name (its infotext records the mask's file name).
        mask_for_cli = self.tmp / f"mask-{model}-{invert}" / "mask.png"
        mask_for_cli.parent.mkdir(exist_ok=True)
        mask_for_cli.write_bytes(mask.read_bytes())
        if invert:
            inverted = Image.open(mask).convert("L").point(lambda v: 255 - v)
            inverted.save(mask_for_cli)
        # mask_blur=0, inpaint_full_res=False and inpainting_fill=1 ("original") are the web UI's settings
        # that mean what the CLI's --mask does (whole picture, sharp mask, masked area starts from the image).
        result = self.api.img2img(images=[Image.open(init)], mask_image=Image.open(mask), prompt=PROMPT, seed=SEED,
                                  steps=4, cfg_scale=7, denoising_strength=0.8, width=64, height=64,
                                  sampler_name="Euler", mask_blur=0, inpaint_full_res=False, inpainting_fill=1,
                                  inpainting_mask_invert=invert)
        cli = self.cli("inp", prompt=PROMPT, model=self.models / model, steps=4, seed=SEED, init=init,
                       strength=0.8, mask=mask_for_cli)
        self.check_images(result, cli, what)

    def test_05_inpaint_4channel(self):
        self.inpaint("tiny-clip", "inpainting, 4-channel model")
        self.inpaint("tiny-clip", "inpainting, inpainting_mask_invert=1", invert=1)

    def test_06_switch_model(self):
        self.api.util_set_model("tiny-bert")
        self.assertEqual(self.api.util_get_current_model(), "tiny-bert")
        prompt = "小桥流水人家，水彩。"
        result = self.api.txt2img(prompt=prompt, seed=7, steps=3, cfg_scale=7, width=64, height=64,
                                  sampler_name="Euler")
        cli = self.cli("bert", prompt=prompt, model=self.models / "tiny-bert", steps=3, seed=7)
        info = self.check_images(result, cli, "after util_set_model('tiny-bert')")
        self.assertEqual(info["sd_model_name"], "tiny-bert")
        # POST /options with the bare dict, as webuiapi's set_options sends it.
        self.api.set_options({"sd_model_checkpoint": "tiny-clip"})
        self.assertEqual(self.api.get_options()["sd_model_checkpoint"], "tiny-clip")
        result = self.api.txt2img(prompt=PROMPT, seed=7, steps=3, cfg_scale=7, width=64, height=64,
                                  sampler_name="Euler")
        cli = self.cli("clip", prompt=PROMPT, model=self.models / "tiny-clip", steps=3, seed=7)
        self.check_images(result, cli, "after switching back to tiny-clip")
        # An unknown model is refused and the current one stays.
        r = self.server.post(su.API + "/options", {"sd_model_checkpoint": "no-such-model"})
        self.assertGreaterEqual(r.status_code, 400, f"unknown sd_model_checkpoint accepted: {r.text[:300]}")
        self.assertEqual(self.api.util_get_current_model(), "tiny-clip")

    def test_07_inpaint_9channel(self):
        if not self.has_inpaint9:
            self.fail("fixture tiny-clip-inpaint (9-channel UNet) is missing")
        self.api.util_set_model("tiny-clip-inpaint")
        try:
            self.assertEqual(self.api.util_get_current_model(), "tiny-clip-inpaint")
            self.inpaint("tiny-clip-inpaint", "inpainting, 9-channel model")
        finally:
            self.api.util_set_model("tiny-clip")

    def test_07b_sdxl(self):
        # SDXL models through the same API: Taiyi-XL's shape (a Chinese prompt, 512-token context) and SDXL
        # base with no negative prompt (force_zeros_for_empty_prompt), txt2img with Euler a and img2img; the
        # bytes and infotexts are the CLI's.
        try:
            for name, prompt, negative in (("tiny-taiyi-xl", "小桥流水人家，水彩", "模糊"), ("tiny-sdxl", PROMPT, "")):
                self.api.util_set_model(name)
                self.assertEqual(self.api.util_get_current_model(), name)
                result = self.api.txt2img(prompt=prompt, negative_prompt=negative, seed=11, steps=3, cfg_scale=5,
                                          width=64, height=64, batch_size=2, sampler_name="Euler a")
                cli = self.cli(f"sdxl-{name}", prompt=prompt, negative=negative, model=self.models / name, steps=3,
                               seed=11, cfg=5, num_images=2, sampler="Euler a")
                info = self.check_images(result, cli, f"SDXL txt2img on {name}")
                self.assertEqual(info["sd_model_name"], name)
            init = self.images / "rgb_64.png"
            result = self.api.img2img(images=[Image.open(init)], prompt=PROMPT, seed=SEED, steps=4, cfg_scale=7,
                                      denoising_strength=0.6, width=64, height=64, sampler_name="Euler")
            cli = self.cli("sdxl-i2i", prompt=PROMPT, model=self.models / "tiny-sdxl", steps=4, seed=SEED, init=init,
                           strength=0.6)
            self.check_images(result, cli, "SDXL img2img")
        finally:
            self.api.util_set_model("tiny-clip")

    def run_in_thread(self, **kw):
        box = {}

        def go():
            t0 = time.monotonic()
            try:
                box["result"] = self.api.txt2img(**kw)
            except Exception as e:  # reported by the caller
                box["error"] = e
            box["seconds"] = time.monotonic() - t0
        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread, box

    def test_08_progress_and_preview(self):
        steps = 120
        thread, box = self.run_in_thread(prompt=PROMPT, seed=99, steps=steps, cfg_scale=7, width=64, height=64,
                                         sampler_name="Euler")
        seen, previews, skipped_ok = [], 0, None
        while thread.is_alive():
            p = self.api.get_progress()
            if p["state"]["job_count"] > 0 and p["progress"] > 0:
                seen.append(p)
                if p.get("current_image"):
                    preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
                    preview.load()
                    previews += 1
                if skipped_ok is None:
                    q = self.server.get(su.API + "/progress?skip_current_image=true").json()
                    skipped_ok = not q.get("current_image")
            time.sleep(0.02)
        thread.join()
        self.assertNotIn("error", box, f"txt2img failed: {box.get('error')}")
        self.assertTrue(seen, "no /progress answer showed the running job (progress > 0, job_count > 0)")
        for p in seen:
            self.assertTrue(0 < p["progress"] <= 1, p)
            self.assertGreaterEqual(p["eta_relative"], 0, p)
            # 0 before sampling starts (text encoding), as in the web UI's shared state
            self.assertIn(p["state"]["sampling_steps"], (0, steps), p["state"])
            self.assertTrue(0 <= p["state"]["sampling_step"] <= steps, p["state"])
        self.assertTrue(any(p["state"]["sampling_steps"] == steps for p in seen), "sampling_steps never set")
        self.assertGreater(max(p["state"]["sampling_step"] for p in seen), 0, "sampling_step never advanced")
        self.assertGreater(previews, 0, "no current_image preview during the run (--preview-every 2)")
        self.assertTrue(skipped_ok, "?skip_current_image=true still sent current_image")
        cli = self.cli("long", prompt=PROMPT, model=self.models / "tiny-clip", steps=steps, seed=99)
        self.check_images(box["result"], cli, f"{steps}-step run with previews")
        self.api.util_wait_for_ready(check_interval=0.1)
        print(f"  progress: {len(seen)} busy samples, {previews} previews, run {box['seconds']:.2f} s")

    def test_09_interrupt(self):
        self.assertEqual(self.api.interrupt(), {}, "POST /interrupt on an idle server")
        steps = 1000  # the most the CLI allows; at 192x192 about a minute: only an interrupt ends it in time
        thread, box = self.run_in_thread(prompt=PROMPT, seed=5, steps=steps, cfg_scale=7, width=192, height=192,
                                         sampler_name="Euler")
        deadline = time.monotonic() + 60
        step_at_interrupt = None
        while time.monotonic() < deadline and thread.is_alive():
            state = self.api.get_progress()["state"]
            if state["sampling_step"] >= 3:
                step_at_interrupt = state["sampling_step"]
                break
            time.sleep(0.02)
        self.assertIsNotNone(step_at_interrupt, "the long run never reached step 3 within 60 s")
        t0 = time.monotonic()
        self.assertEqual(self.api.interrupt(), {}, "POST /interrupt during a run")
        thread.join(10)
        stopped_after = time.monotonic() - t0
        self.assertFalse(thread.is_alive(), "the interrupted request had not returned 10 s after /interrupt")
        self.assertNotIn("error", box, f"an interrupted txt2img must answer as the web UI does: {box.get('error')}")
        self.assertLessEqual(len(box["result"].images), 1, "more images than requested")
        self.api.util_wait_for_ready(check_interval=0.1)
        # The server works normally afterwards, with the interrupt flag cleared.
        result = self.api.txt2img(prompt=PROMPT, seed=SEED, steps=3, cfg_scale=7, width=64, height=64,
                                  sampler_name="Euler")
        cli = self.cli("after-int", prompt=PROMPT, model=self.models / "tiny-clip", steps=3, seed=SEED)
        self.check_images(result, cli, "first run after an interrupt")
        self.assertEqual(self.api.skip(), {}, "POST /skip")
        print(f"  interrupt at step {step_at_interrupt}/{steps}: request returned {stopped_after:.3f} s later")

    def test_09b_hires_fix(self):
        # webuiapi's enable_hr fields, as its users set them; the CLI's --hires-* options for the same.
        result = self.api.txt2img(prompt=PROMPT, seed=SEED, steps=3, cfg_scale=7, width=64, height=48,
                                  sampler_name="Euler", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)",
                                  hr_second_pass_steps=2, denoising_strength=0.6)
        cli = self.cli("hires", prompt=PROMPT, model=self.models / "tiny-clip", steps=3, seed=SEED, width=64, height=48,
                       extra=["--hires-scale", "1.5", "--hires-upscaler", "Latent (bicubic)", "--hires-steps", "2",
                              "--hires-strength", "0.6"])
        info = self.check_images(result, cli, "txt2img with enable_hr (hires fix)")
        self.assertIn("Hires upscale: 1.5", info["infotexts"][0])
        self.assertEqual(Image.open(io.BytesIO(base64.b64decode(result.json["images"][0]))).size, (96, 72))

    def test_10_server_log_clean(self):
        self.assertTrue(self.server.alive())
        r = requests.get(self.server.url(su.API + "/progress"), timeout=10)
        self.assertEqual(r.status_code, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
