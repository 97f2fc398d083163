"""The README's "From nothing to the paper's ponder map", in the browser:

    ponderscope pretrained get sact-imagenet-resnet101
    ponderscope serve
    (upload a photo)

The real 160 MB of weights cannot be fetched here (no internet), so the archive is a fixture of
the published one's layout (tests/test_pretrained.py: the authors' ImageNet SACT ResNet-101
variable names, 3-4-23-3 bottleneck units, 1001 classes, widths / 8, random weights), served by a
loopback HTTP server and fetched with `--url`; the commands are the README's, run as processes.
The photo is a 640x480 scene drawn here. With PONDERSCOPE_SCREENSHOTS=1 (see test_browser.py)
the page is saved as docs/screenshots/pretrained-ponder-map.png, the README's picture.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser_support import ROOT, ServerProcess, browser_missing_reason, cleanup, make_driver, tmpdir

_missing = browser_missing_reason()
if _missing:
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402

from test_browser import Page  # noqa: E402  (the suite's page helper and its screenshots)
from tests.test_pretrained import Mirror, sact_imagenet101_archive, sact_imagenet101_variables  # noqa: E402

NAME = "sact-imagenet-resnet101"


def draw_photo(path: Path) -> Path:
    """A 640x480 'photo' (the size their README asks for): sky, sun, hills, grass, a house, a
    tree of leaves, a road; flat regions beside edges and texture."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    width, height = 640, 480
    t = np.linspace(0, 1, height)[:, None]
    sky = np.zeros((height, width, 3), np.float32)
    sky[..., 0], sky[..., 1], sky[..., 2] = 90 + 110 * t, 150 + 70 * t, 235 - 20 * t
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([500, 50, 580, 130], fill=(255, 236, 150))
    draw.polygon([(0, 330), (160, 250), (330, 320), (480, 240), (640, 310), (640, 480), (0, 480)], fill=(70, 130, 60))
    pixels = np.asarray(image, np.float32).copy()
    pixels[300:] += rng.normal(0, 18, (height - 300, width, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([120, 250, 300, 380], fill=(200, 80, 60))
    draw.polygon([(105, 255), (210, 175), (315, 255)], fill=(110, 50, 40))
    draw.rectangle([185, 310, 230, 380], fill=(80, 50, 30))
    for x in (140, 250):
        draw.rectangle([x, 275, x + 35, 305], fill=(200, 230, 255))
    draw.rectangle([440, 260, 460, 380], fill=(90, 60, 30))
    for _ in range(500):
        x, y, r = rng.normal(450, 45), rng.normal(225, 40), rng.uniform(4, 10)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(30, int(rng.uniform(70, 150)), 40))
    draw.polygon([(330, 480), (370, 330), (390, 330), (470, 480)], fill=(120, 120, 120))
    image.save(path)
    return path


def test_from_nothing_to_the_papers_ponder_map():
    work = Path(tmpdir("ponderscope-pretrained-"))
    mirror = Mirror()
    server = driver = None
    try:
        mirror.files["/imagenet_101_sact_5e-3.tar.gz"] = sact_imagenet101_archive(sact_imagenet101_variables(), work / "build")
        env = dict(os.environ, PONDERSCOPE_MODELS=str(work / "models"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # 1. ponderscope pretrained get sact-imagenet-resnet101 (from the fixture's mirror)
        fetched = subprocess.run([sys.executable, "-m", "ponderscope", "pretrained", "get", NAME, "--url",
                                  mirror.url("/imagenet_101_sact_5e-3.tar.gz")], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr
        folder = work / "models" / NAME
        assert fetched.stdout.splitlines() == [f"wrote {folder}/model.safetensors and {folder}/card.json", "`ponderscope serve` lists it"]
        assert "100%" in fetched.stderr  # the progress bar
        # 2. ponderscope serve
        # `ponderscope serve` as the README runs it (the per-user folder from $PONDERSCOPE_MODELS);
        # masked execution: nothing timed at start-up
        server = ServerProcess([], str(work / "cache"), str(work / "serve.log"), env=env, serve_args=["--execution", "masked", "--device", "cpu"])
        server.wait_ready(timeout=120)
        with urllib.request.urlopen(server.url + "/api/models", timeout=10) as response:
            listed = [m["id"] for m in json.loads(response.read())]
        assert NAME in listed and "fmnist_sact_resnet32" in listed  # beside the bundled ones
        # 3. upload a photo
        photo = draw_photo(work / "my-photo.png")
        (work / "downloads").mkdir()
        driver = make_driver(str(work / "downloads"), str(work / "chrome-profile"))
        page = Page({"url": server.url, "ids": {}, "driver": driver, "downloads": work / "downloads", "work": work, "server": server})
        page.open(f"?view=image&model={NAME}&res=native")
        page.d.find_element(By.ID, "file-input").send_keys(str(photo))
        data = page.wait_plot("heatmap", what="the ponder map of the photo")
        z = data[0]["z"]
        response = page.js("return window.ponderscope.results.image")
        assert z == response["ponder"]["total"]
        # their ResNet's first block runs at 1/4 of the input (stride-2 conv, stride-2 pool): 120 x 160 for 480 x 640
        assert (len(z), len(z[0])) == (120, 160)
        # the same numbers as the notebook API on the same file and checkpoint
        from ponderscope import notebook as ps

        expected = ps.analyze_image(ps.load(folder, execution="masked"), str(photo), "native")
        np.testing.assert_allclose(np.array(z, dtype=float), np.array(expected.ponder.total, dtype=float), rtol=1e-4, atol=1e-4)
        values = [v for row in z for v in row]
        assert all(math.isfinite(v) for v in values) and max(values) - min(values) > 0.5, (min(values), max(values))
        blocks = page.wait_plot("block-maps")
        assert [(len(t["z"]), len(t["z"][0])) for t in blocks] == [(120, 160), (60, 80), (30, 40), (15, 20)]
        classes = [li.text for li in page.d.find_elements(By.CSS_SELECTOR, "#prediction li")]
        card_classes = ps.load(folder, execution="masked").card.data["classes"]
        assert len(classes) == 5 and all(any(name in text for name in card_classes) for text in classes), classes
        chip = page.wait("const c = document.querySelector('#image-card .chip.imported'); return c && c.innerText", what="the provenance chip")
        assert "sact-tf" in chip and "imagenet_101_sact_5e-3.tar.gz" in chip, chip
        page.no_error()
        page.screenshot("pretrained-ponder-map")
    finally:
        if driver is not None:
            driver.quit()
        if server is not None:
            server.stop()
        mirror.close()
        cleanup(work)
