"""Helpers for the browser tests (tests/test_browser.py): small untrained checkpoints of every
family, a real server in a subprocess on a free loopback port, and a headless Chromium.

The tiny checkpoints make the suite independent of the bundled (trained) ones and fast on two
cores; their halting branches are re-scaled so the ponder maps and per-character step counts
vary (an untrained SACT with halting bias -3 runs every unit everywhere: a flat map).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PONDERSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PONDERSCOPE_CHROMEDRIVER", "/usr/bin/chromedriver")

FMNIST_PREPROCESS = {"input_size": [28, 28], "channels": 1, "mean": [0.2860], "std": [0.3530]}
TINY_NOTE = "untrained throwaway model made by tests/browser_support.py for the browser tests"


def browser_missing_reason() -> str | None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if not (Path(CHROMEDRIVER).is_file() and os.access(CHROMEDRIVER, os.X_OK)):
        return f"chromedriver not found at {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium==4.52.0)"
    return None


def fashion_mnist_missing_reason() -> str | None:
    try:
        from ponderscope.core import data

        data.load_fashion_mnist("test")
    except Exception as error:  # noqa: BLE001 - any failure means: no test images to show
        return f"Fashion-MNIST is not available ({error}); apt-get install dataset-fashion-mnist"
    return None


def make_tiny_checkpoints(root: str | os.PathLike) -> dict[str, str]:
    """Write five tiny checkpoints under `root`; returns {role: model id}."""
    import torch

    from ponderscope import models
    from ponderscope.core.data import FASHION_MNIST_CLASSES

    root = Path(root)
    generator = torch.Generator().manual_seed(0)
    classes = list(FASHION_MNIST_CLASSES)
    image_card = {"task": {"name": "classify"}, "dataset": "fashion-mnist", "classes": classes,
                  "preprocess": FMNIST_PREPROCESS, "note": TINY_NOTE}

    def randomize_bn(model):
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    c = module.num_features
                    module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)

    torch.manual_seed(0)
    ids = {}

    sact = models.create_model("sact_resnet20", num_classes=10, in_channels=1, widths=[4, 8, 16])
    randomize_bn(sact)
    with torch.no_grad():  # halting near 0.5 with a spatially varying local term
        for module in sact.modules():
            if module.__class__.__name__ == "SACTHalting":
                module.local_conv.weight.mul_(4.0)
                module.local_conv.bias.fill_(-0.3)
    models.save_checkpoint(sact.eval(), root / "tiny-sact", dict(image_card))
    ids["sact"] = "tiny-sact"

    act = models.create_model("act_resnet20", num_classes=10, in_channels=1, widths=[4, 8, 16])
    randomize_bn(act)
    with torch.no_grad():
        for module in act.modules():
            if module.__class__.__name__ == "ACTHalting":
                module.linear.bias.fill_(-0.5)
    models.save_checkpoint(act.eval(), root / "tiny-act", dict(image_card))
    ids["act"] = "tiny-act"

    dense = models.create_model("resnet20", num_classes=10, in_channels=1, widths=[4, 8, 16])
    randomize_bn(dense)
    models.save_checkpoint(dense.eval(), root / "tiny-dense", dict(image_card))
    ids["dense"] = "tiny-dense"

    aig = models.create_model("aig_resnet20", num_classes=10, in_channels=1, widths=[4, 8, 16])
    randomize_bn(aig)
    with torch.no_grad():  # gates that differ between layers and images, some closed
        for module in aig.modules():
            if module.__class__.__name__ == "Gate":
                module.fc2.weight.normal_(0.0, 1.0, generator=generator)
                module.fc2.bias.copy_(torch.randn(2, generator=generator))
    models.save_checkpoint(aig.eval(), root / "tiny-aig", dict(image_card))
    ids["aig"] = "tiny-aig"

    lstm = models.create_model("act_lstm", input_kind="bytes", input_size=16, hidden_size=32, output_size=256,
                               output="sequence", max_steps=6, halting_bias=0.0)
    with torch.no_grad():
        lstm.halting_unit.weight.mul_(8.0)
    models.save_checkpoint(lstm.eval(), root / "tiny-text", {
        "task": {"name": "bytes-lm", "seq_len": 100}, "dataset": "jargon", "classes": None, "preprocess": None, "note": TINY_NOTE})
    ids["text"] = "tiny-text"

    parity = models.create_model("act_rnn", input_kind="features", input_size=16, hidden_size=32, output_size=2,
                                 output="last", max_steps=20, halting_bias=0.0)
    models.save_checkpoint(parity.eval(), root / "tiny-parity", {
        "task": {"name": "parity", "bits": 16}, "dataset": "parity-16 (generated, Graves 2016)", "classes": ["even", "odd"],
        "preprocess": None, "note": TINY_NOTE})
    ids["parity"] = "tiny-parity"
    return ids


CLUTTERED_PREPROCESS = {"input_size": [60, 60], "channels": 1, "mean": [0.0728], "std": [0.2400]}
EXIT_THRESHOLD = 0.5  # with the exits' heads scaled x60 (below): 4 in 10 images leave at the first exit, the rest at the others


def make_tiny_exit_and_token_checkpoints(root: str | os.PathLike) -> dict[str, str]:
    """Four tiny untrained checkpoints of the families beyond the three papers under `root`, each
    with its reference twin: an early-exit ResNet-8 and the dense ResNet-8 (Fashion-MNIST), an
    A-ViT on a 6x6 patch grid (60x60 cluttered MNIST in 10x10 patches, two layer groups) and its
    ViT; returns {role: model id} ("exit", "exit_reference", "avit", "vit")."""
    import torch

    from ponderscope import models
    from ponderscope.core.data import FASHION_MNIST_CLASSES

    root = Path(root)
    fmnist = {"task": {"name": "classify"}, "dataset": "fashion-mnist", "classes": list(FASHION_MNIST_CLASSES),
              "preprocess": FMNIST_PREPROCESS, "note": TINY_NOTE}
    cluttered = {"task": {"name": "classify"}, "dataset": "cluttered-mnist", "classes": [str(d) for d in range(10)],
                 "preprocess": CLUTTERED_PREPROCESS, "note": TINY_NOTE}
    torch.manual_seed(0)
    resnet = dict(depth=8, widths=[4, 8, 16], num_classes=10, in_channels=1)
    exits = models.create_model("early_exit_resnet", threshold=EXIT_THRESHOLD, **resnet).eval()
    with torch.no_grad():  # an untrained head says ~0.1 to everything: spread the exits' confidences
        for head in exits.exits:
            head.classifier.weight.mul_(60.0)
    models.save_checkpoint(exits, root / "tiny-exit", dict(fmnist))
    torch.manual_seed(0)
    models.save_checkpoint(models.create_model("resnet", depth=8, num_classes=10, in_channels=1, widths=[4, 8, 16]).eval(), root / "tiny-exit-reference", dict(fmnist))
    vit = dict(num_classes=10, in_channels=1, image_size=60, patch=10, dim=32, depth=4, heads=2)
    torch.manual_seed(0)
    models.save_checkpoint(models.create_model("avit", gate_scale=8.0, gate_center=3.0, **vit).eval(), root / "tiny-avit", dict(cluttered))
    torch.manual_seed(0)
    models.save_checkpoint(models.create_model("vit", **vit).eval(), root / "tiny-vit", dict(cluttered))
    return {"exit": "tiny-exit", "exit_reference": "tiny-exit-reference", "avit": "tiny-avit", "vit": "tiny-vit"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_SCRIPT = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from ponderscope.plugins import load_plugins
load_plugins({plugins!r})  # as serve --plugin does
from ponderscope.server.access import AccessPolicy
from ponderscope.server.app import create_app
app = create_app(checkpoint_dirs={dirs!r}, device="cpu", cache_dir={cache!r}, access=AccessPolicy({token!r}))
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


class ServerProcess:
    """The real app (ponderscope.server.app.create_app) under uvicorn in a child process."""

    def __init__(self, checkpoint_dirs: list[str], cache_dir: str, log_path: str, env: dict | None = None, plugins: list[str] | None = None,
                 token: str | None = None, serve_args: list[str] | None = None):
        """token: the access token it asks for, as `serve` beyond loopback does (None: none).
        serve_args: run `python -m ponderscope serve --port PORT --cache CACHE_DIR` with these
        arguments instead (the command line as a user types it; checkpoint_dirs, plugins and token
        are then the arguments' business)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        if serve_args is not None:
            command = [sys.executable, "-m", "ponderscope", "serve", "--port", str(self.port), "--cache", str(cache_dir), *serve_args]
        else:
            command = [sys.executable, "-c", SERVER_SCRIPT.format(root=str(ROOT), dirs=[str(d) for d in checkpoint_dirs], cache=str(cache_dir),
                                                                  port=self.port, plugins=[str(p) for p in plugins or []], token=token)]
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=str(ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        return Path(self.log_path).read_bytes()[-n:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def make_driver(download_dir: str, user_data_dir: str, width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-default-apps", "--disable-extensions", "--mute-audio",
                f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": download_dir,
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": False,
    })
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console: CSP violations are checked
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir})
    driver.set_script_timeout(30)
    return driver


def post_json(url: str, body: dict) -> dict:
    """POST `body` as JSON to `url` (the test's own request beside the page's) -> the answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class BrowserPage:
    """The dashboard in a test's browser (`site`: {"driver", "url", "server", ...}): run JavaScript,
    wait for a condition (failing with the page's error banner and the server's log), read a plot."""

    WAIT = 30  # seconds

    def __init__(self, site):
        self.site, self.d, self.url = site, site["driver"], site["url"]

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def wait(self, script: str, *args, timeout: float = WAIT, what: str = "condition"):
        """Wait until the JS expression returns something truthy; fail with the error banner."""
        import pytest
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script, *args))
        except Exception:
            banner = self.js("const e = document.getElementById('error'); return e && !e.hidden ? e.innerText : ''")
            pytest.fail(f"timed out waiting for {what}; error banner: {banner!r}; server log tail:\n{self.site['server'].tail(1500)}")

    def plot_data(self, div_id: str):
        return self.js("const g = document.getElementById(arguments[0]); return g && g.data ? JSON.parse(JSON.stringify(g.data)) : null", div_id)

    def wait_plot(self, div_id: str, what: str | None = None):
        self.wait("const g = document.getElementById(arguments[0]); return !!(g && g.data && g.data.length && g._fullLayout)", div_id,
                  what=what or f"plot #{div_id}")
        return self.plot_data(div_id)


def make_test_png(path: str | os.PathLike, size: int = 40) -> Path:
    """A small greyscale PNG with a bright shape on a dark background (like Fashion-MNIST)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse([size * 0.2, size * 0.15, size * 0.8, size * 0.85], fill=220)
    draw.rectangle([size * 0.4, size * 0.05, size * 0.6, size * 0.95], fill=120)
    path = Path(path)
    image.save(path)
    return path


def cleanup(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)
