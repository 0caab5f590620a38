#!/usr/bin/env python3
"""`taiyi serve` under the request shapes of the clients that speak the web UI's API, recorded from their
sources (cited at each test), plus HTTP Basic auth and CORS:

- Open WebUI: open-webui/open-webui:backend/open_webui/routers/images.py (set_image_model, get_models,
  image_generations, get_automatic1111_api_auth: an empty `authorization` header when no auth is set).
- SillyTavern: SillyTavern/SillyTavern:src/endpoints/stable-diffusion.js (every call carries
  `Authorization: getBasicAuthHeader(request.body.auth)`, src/util.js: "Basic " + base64(auth), even for an
  empty auth; /generate forwards the browser's whole body, `url` and `auth` keys included, and POSTs
  /interrupt when the browser's socket closes) and public/scripts/extensions/stable-diffusion/index.js
  (generateAutoImage: the body's keys).
- LibreChat: danny-avila/LibreChat:api/app/clients/tools/structured/StableDiffusion.js (_call: the payload,
  JSON.parse(info), info.width/height/seed/infotexts[0]).

    TAIYI_BINARY=build/taiyi TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/server/test_clients.py
"""
import base64
import json
import socket
import sys
import tempfile
import time
import unittest
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_util as su  # noqa: E402

API = su.API


def basic(credentials):
    return "Basic " + base64.b64encode(credentials.encode()).decode()


class ClientShapesTest(su.ServerCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-clients-"))
        cls.models = su.make_models_dir(cls.tmp / "models", ["tiny-clip", "tiny-bert"])
        cls.server = su.Server("--models-dir", cls.models, "-m", cls.models / "tiny-clip", "--device", "cpu",
                               "--outdir", cls.tmp / "outputs", workdir=cls.tmp).start()


    def setUp(self):
        self.assertTrue(self.server.alive(), "the server died before this test:\n" + self.server.stderr()[-3000:])

    def cli(self, **kw):
        return su.run_cli(self.tmp / f"cli-{time.monotonic_ns()}", **kw)

    # Open WebUI --------------------------------------------------------------------------------------
    def test_open_webui_models_and_switch(self):
        h = {"authorization": ""}  # get_automatic1111_api_auth() with no auth configured
        r = self.server.get(API + "/options", headers=h)
        r.raise_for_status()  # verify_url
        models = [{"id": m["title"], "name": m["model_name"]} for m in self.server.get(API + "/sd-models",
                                                                                        headers=h).json()]
        self.assertEqual(sorted(m["id"] for m in models), ["tiny-bert", "tiny-clip"], models)
        # set_image_model: GET the whole options dict, change sd_model_checkpoint, POST all of it back.
        options = self.server.get(API + "/options", headers=h).json()
        self.assertEqual(options["sd_model_checkpoint"], "tiny-clip")
        options["sd_model_checkpoint"] = "tiny-bert"
        r = self.server.post(API + "/options", options, headers=h)
        self.assertEqual(r.status_code, 200, f"POST of the whole options dict: {r.text[:500]}")
        r.json()  # clients call .json() on it: it must be JSON
        self.assertEqual(self.server.get(API + "/options", headers=h).json()["sd_model_checkpoint"], "tiny-bert")
        options = self.server.get(API + "/options", headers=h).json()
        options["sd_model_checkpoint"] = "tiny-clip"
        self.assertEqual(self.server.post(API + "/options", options, headers=h).status_code, 200)
        self.assertEqual(self.server.get(API + "/options", headers=h).json()["sd_model_checkpoint"], "tiny-clip")
        print("  Open WebUI: options round trip switched tiny-clip -> tiny-bert -> tiny-clip")

    def test_open_webui_txt2img(self):
        h = {"authorization": ""}
        # image_generations(): {prompt, batch_size: n, width, height} (+ steps / negative_prompt when set).
        # No steps here: the web UI's defaults apply (50 steps, CFG 7, Euler, random seed).
        r = self.server.post(API + "/txt2img", {"prompt": "a red fox", "batch_size": 1, "width": 64, "height": 64},
                             headers=h)
        self.assertEqual(r.status_code, 200, r.text[:500])
        body = r.json()
        self.assertNotIn(",", body["images"][0], "images[] must be raw base64 (Open WebUI: no comma = PNG)")
        info = su.json_info(body)
        self.assertEqual((info["steps"], info["cfg_scale"], info["sampler_name"]), (50, 7, "Euler"),
                         "web UI defaults: 50 steps, CFG 7, Euler")
        cli = self.cli(prompt="a red fox", model=self.models / "tiny-clip", steps=50, cfg=7, seed=info["seed"])
        self.assert_same_png(base64.b64decode(body["images"][0]), cli[0], "Open WebUI default request")
        self.assertEqual(info["infotexts"][0], su.png_text(cli[0])["parameters"])
        r = self.server.post(API + "/txt2img", {"prompt": "a red fox", "batch_size": 2, "width": 64, "height": 64,
                                                "steps": 2, "negative_prompt": "dark"}, headers=h)
        self.assertEqual(r.status_code, 200, r.text[:500])
        info = su.json_info(r.json())
        cli = self.cli(prompt="a red fox", negative="dark", model=self.models / "tiny-clip", steps=2,
                       seed=info["seed"], num_images=2)
        self.assertEqual(len(r.json()["images"]), 2, "batch_size 2 without save_images: two images, no grid")
        for i in range(2):
            self.assert_same_png(base64.b64decode(r.json()["images"][i]), cli[i], f"Open WebUI n=2 image {i}")
        print(f"  Open WebUI: default-settings image (seed {info['seed']}) and a batch equal the CLI's")

    # SillyTavern ------------------------------------------------------------------------------------
    ST_AUTH = ""  # extension_settings.sd.auto_auth: empty unless the user set one

    def st_headers(self):
        return {"Authorization": basic(self.ST_AUTH)}  # "Basic " with nothing after it

    def st_body(self, **over):
        body = {"url": self.server.base, "auth": self.ST_AUTH,  # getSdRequestBody(): the browser's own keys
                "prompt": "1girl, masterpiece", "negative_prompt": "lowres, bad anatomy",
                "sampler_name": "Euler", "scheduler": "Automatic", "steps": 3, "cfg_scale": 7, "width": 64,
                "height": 64, "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2,
                "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 4242,
                "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
                "override_settings_restore_afterwards": True, "clip_skip": 2,
                "save_images": True, "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False}
        body.update(over)
        return body

    def test_sillytavern_startup_calls(self):
        h = self.st_headers()
        self.assertEqual(self.server.get(API + "/options", headers=h).status_code, 200, "ping")
        for route in ("/samplers", "/schedulers", "/sd-models", "/upscalers", "/latent-upscale-modes", "/sd-vae"):
            r = self.server.get(API + route, headers=h)
            self.assertEqual(r.status_code, 200, f"GET {route}: {r.text[:300]}")
            self.assertIsInstance(r.json(), list, f"GET {route} must be a list")
        names = [x["name"] for x in self.server.get(API + "/samplers", headers=h).json()]
        self.assertIn("Euler", names)
        # set-model: POST {sd_model_checkpoint}, then poll /progress (<= 10 x 2 s) until idle.
        for title in ("tiny-bert", "tiny-clip"):
            r = requests.post(self.server.url(API + "/options"), json={"sd_model_checkpoint": title},
                              headers={**h, "Content-Type": "application/json"}, timeout=120)
            self.assertTrue(r.ok, r.text[:300])
            self.server.wait_idle(timeout=20, interval=0.1, headers=h)
            self.assertEqual(self.server.get(API + "/options", headers=h).json()["sd_model_checkpoint"], title)
        print("  SillyTavern: start-up lists, set-model with an empty Basic header")

    def test_sillytavern_generate(self):
        h = self.st_headers()
        options = self.server.get(API + "/options", headers=h).json()
        self.assertNotIn("forge_preset", options)
        r = self.server.post(API + "/txt2img", self.st_body(), headers=h)
        self.assertEqual(r.status_code, 200, r.text[:500])
        body = r.json()
        info = su.json_info(body)
        self.assertEqual(info["clip_skip"], 2, "override_settings.CLIP_stop_at_last_layers / clip_skip")
        self.assertEqual(info["index_of_first_image"], 0, "one image: no grid even with save_images")
        cli = self.cli(prompt="1girl, masterpiece", negative="lowres, bad anatomy", model=self.models / "tiny-clip",
                       steps=3, seed=4242, clip_skip=2)
        self.assert_same_png(base64.b64decode(body["images"][0]), cli[0], "SillyTavern body (clip skip 2)")
        self.assertEqual(info["infotexts"][0], su.png_text(cli[0])["parameters"])
        # override_settings_restore_afterwards: the next plain request is back at clip skip 1.
        self.assertEqual(self.server.get(API + "/options", headers=h).json()["CLIP_stop_at_last_layers"], 1)
        print("  SillyTavern: generate body with url/auth keys and an empty Basic header equals the CLI")

    def start_long_request(self, steps=1000):
        # 1000 steps (the most allowed) at 192x192: about a minute, so an early idle server means a cancel.
        sock = socket.create_connection((self.server.host, self.server.port), timeout=30)
        body = json.dumps(self.st_body(steps=steps, width=192, height=192)).encode()
        sock.sendall(su.raw_request("POST", API + "/txt2img", body, self.st_headers()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.server.get(API + "/progress?skip_current_image=true").json()["state"]
            if state["sampling_step"] >= 2:
                return sock
            time.sleep(0.02)
        sock.close()
        self.fail("the long request never reached step 2 within 60 s")

    def test_sillytavern_cancel(self):
        # The browser goes away: SillyTavern's socket closes, it POSTs /interrupt.
        sock = self.start_long_request()
        sock.close()
        r = requests.post(self.server.url(API + "/interrupt"), headers=self.st_headers(), timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json(), {})
        took = self.server.wait_idle(timeout=5)
        print(f"  SillyTavern cancel: idle {took:.3f} s after close + /interrupt")

    def test_disconnect_cancels(self):
        # A client that disconnects, with no /interrupt, has its running job cancelled.
        sock = self.start_long_request()
        sock.close()
        took = self.server.wait_idle(timeout=10)
        print(f"  disconnect alone: idle {took:.3f} s after the client closed")

    # LibreChat --------------------------------------------------------------------------------------
    def test_librechat(self):
        # _call()'s payload with its size 1024x1024 cut to 64x64 (the tiny model on CI's CPU would take
        # minutes); every other key and value as sent.
        payload = {"prompt": "photo of a man in black clothes, half body", "negative_prompt": "cgi, 3d, render",
                   "cfg_scale": 4.5, "steps": 22, "width": 64, "height": 64}
        r = requests.post(self.server.url(API + "/txt2img"), json=payload, timeout=120)  # axios, no auth header
        self.assertEqual(r.status_code, 200, r.text[:500])
        data = r.json()
        info = su.json_info(data)
        for key in ("width", "height", "seed", "infotexts"):
            self.assertIn(key, info)
        self.assertEqual((info["width"], info["height"]), (64, 64))
        generation_info = info["infotexts"][0].split("\n").pop()
        self.assertIn(f"Seed: {info['seed']}", generation_info)
        cli = self.cli(prompt=payload["prompt"], negative=payload["negative_prompt"], model=self.models / "tiny-clip",
                       steps=22, cfg=4.5, seed=info["seed"])
        self.assert_same_png(base64.b64decode(data["images"][0]), cli[0], "LibreChat payload")
        print(f"  LibreChat: info parsed, seed {info['seed']}, image equals the CLI's")

    # Plain HTTP facts -------------------------------------------------------------------------------
    def test_unknown_route_and_cors_off(self):
        r = self.server.get(API + "/no-such-route")
        self.assert_error_body(r, 404, "unknown route")
        r = self.server.get(API + "/options", headers={"Origin": "http://evil.example"})
        self.assertEqual(r.status_code, 200)
        self.assertNotIn("Access-Control-Allow-Origin", r.headers, "CORS must be off by default")
        r = requests.options(self.server.url(API + "/txt2img"), timeout=10,
                             headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        self.assertNotIn("Access-Control-Allow-Origin", r.headers, "preflight allowed with CORS off")
        print("  404 JSON body; no CORS headers by default")


class AuthTest(su.ServerCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-auth-"))
        cls.server = su.Server("-m", su.fixtures() / "tiny-clip", "--device", "cpu",
                               "--api-auth", "u:p,alice:s3cret", workdir=cls.tmp).start()


    def assert_401(self, headers, what, path=API + "/options", method="GET"):
        r = requests.request(method, self.server.url(path), headers=headers, timeout=30,
                             json={"prompt": "x", "steps": 1, "width": 64, "height": 64} if method == "POST" else None)
        self.assert_error_body(r, 401, what)
        self.assertTrue(r.headers.get("WWW-Authenticate", "").startswith("Basic"),
                        f"{what}: WWW-Authenticate {r.headers.get('WWW-Authenticate')!r}")

    def test_auth(self):
        self.assert_401({}, "no credentials")
        self.assert_401({"Authorization": basic("u:wrong")}, "wrong password")
        self.assert_401({"Authorization": basic("nobody:p")}, "wrong user")
        self.assert_401({"Authorization": basic("")}, "SillyTavern's empty Basic header")
        self.assert_401({"Authorization": "Bearer u:p"}, "not Basic")
        self.assert_401({"Authorization": "Basic !!!"}, "broken base64")
        self.assert_401({"Authorization": basic("u:p:")}, "password with a trailing colon")
        self.assert_401({}, "txt2img without credentials", API + "/txt2img", "POST")
        self.assert_401({}, "/progress without credentials", API + "/progress")
        self.assert_401({}, "the page without credentials", "/")
        for cred in ("u:p", "alice:s3cret"):
            r = self.server.get(API + "/options", auth=tuple(cred.split(":")))
            self.assertEqual(r.status_code, 200, f"{cred}: {r.text[:300]}")
        r = self.server.post(API + "/txt2img", {"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 3},
                             auth=("u", "p"))
        self.assertEqual(r.status_code, 200, r.text[:300])
        print("  auth: 7 wrong/missing credentials -> 401 + WWW-Authenticate, 2 users -> 200")


class CorsTest(su.ServerCase):
    ALLOWED = "http://localhost:3000"

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-cors-"))
        cls.server = su.Server("-m", su.fixtures() / "tiny-clip", "--device", "cpu",
                               "--cors-allow-origins", f"{cls.ALLOWED},http://a.example", workdir=cls.tmp).start()


    def test_cors(self):
        r = self.server.get(API + "/options", headers={"Origin": self.ALLOWED})
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), self.ALLOWED, dict(r.headers))
        r = requests.options(self.server.url(API + "/txt2img"), timeout=10,
                             headers={"Origin": self.ALLOWED, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "content-type"})
        self.assertLess(r.status_code, 300, f"preflight: {r.status_code} {r.text[:300]}")
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), self.ALLOWED, dict(r.headers))
        self.assertIn("POST", r.headers.get("Access-Control-Allow-Methods", "").upper().replace("*", "POST"))
        r = self.server.get(API + "/options", headers={"Origin": "http://a.example"})
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), "http://a.example")
        r = self.server.get(API + "/options", headers={"Origin": "http://evil.example"})
        self.assertNotIn("Access-Control-Allow-Origin", r.headers, "an origin not in the list was allowed")
        print("  CORS: listed origins allowed (GET and preflight), others not")


if __name__ == "__main__":
    unittest.main(verbosity=2)
