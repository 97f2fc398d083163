"""Browser tests: the real server (ponderscope.server.app.create_app under uvicorn) driven by headless
Chromium through selenium. Each test reads what the page actually drew (Plotly's `gd.data`,
the DOM, the URL, downloaded files).

Screenshots are written only when asked: PONDERSCOPE_SCREENSHOTS=1 saves each test's picture to
docs/screenshots/<name>.png (the README's), PONDERSCOPE_SCREENSHOTS=<folder> to that folder;
unset (or 0) writes none, so a test run leaves the tracked pictures alone:

    PONDERSCOPE_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_browser.py

The server gets small untrained checkpoints of every family (tests/browser_support.py) and,
when there are any, the bundled ones in checkpoints/ (opened by the last test).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from browser_support import (
    BrowserPage,
    browser_missing_reason,
    cleanup,
    fashion_mnist_missing_reason,
    make_driver,
    make_test_png,
    make_tiny_checkpoints,
    make_tiny_exit_and_token_checkpoints,
    post_json,
    tmpdir,
    ServerProcess,
    ROOT,
)

_missing = browser_missing_reason()
if _missing:
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)
try:
    from ponderscope.server.app import create_app  # noqa: F401  (the server the tests start)
except ImportError as _error:  # pragma: no cover - only while the backend is missing
    pytest.skip(f"browser tests skipped: ponderscope.server.app is not importable ({_error})", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

# PONDERSCOPE_SCREENSHOTS=1: docs/screenshots/; =<folder>: there; unset, empty or 0: no screenshots.
_shots = os.environ.get("PONDERSCOPE_SCREENSHOTS", "")
SCREENSHOTS = None if _shots in ("", "0") else ROOT / "docs" / "screenshots" if _shots == "1" else Path(_shots)
BUNDLED = ROOT / "checkpoints"
FMNIST_MISSING = fashion_mnist_missing_reason()
needs_fmnist = pytest.mark.usefixtures("fashion_mnist")  # (conftest: a skip here, a failure in CI)
needs_mnist = pytest.mark.usefixtures("mnist")  # (cluttered MNIST's test set is made from its digits)


def bundled_checkpoints() -> list[Path]:
    if not BUNDLED.is_dir():
        return []
    return sorted(p for p in BUNDLED.iterdir() if (p / "card.json").is_file() and (p / "model.safetensors").is_file())


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def site():
    work = Path(tmpdir("ponderscope-browser-"))
    ids = make_tiny_checkpoints(work / "checkpoints")
    # one of the SACT authors' checkpoints (a tiny one their TF code wrote), imported
    from ponderscope.importers import import_checkpoint

    import_checkpoint("sact-tf", ROOT / "tests" / "fixtures" / "sact_tf" / "cifar_sact" / "model.ckpt-0",
                      work / "checkpoints" / "imported_cifar_sact", "sact_resnet14", command="ponderscope import ...")
    ids["imported"] = "imported_cifar_sact"
    dirs = [str(work / "checkpoints")]
    if bundled_checkpoints():
        dirs.append(str(BUNDLED))
    server = ServerProcess(dirs, str(work / "cache"), str(work / "server.log"))
    try:
        server.wait_ready(timeout=90)
        downloads = work / "downloads"
        downloads.mkdir()
        driver = make_driver(str(downloads), str(work / "chrome-profile"))
        try:
            yield {"url": server.url, "ids": ids, "driver": driver, "downloads": downloads, "work": work, "server": server}
        finally:
            driver.quit()
    finally:
        server.stop()
        cleanup(work)


@pytest.fixture
def page(site):
    """A helper bound to the module's browser; clears downloads and the error banner state."""
    for f in site["downloads"].iterdir():
        f.unlink()
    return Page(site)


class Page(BrowserPage):
    def __init__(self, site):
        super().__init__(site)
        self.ids = site["ids"]

    def open(self, query: str = "") -> None:
        self.d.get(f"{self.url}/{query}")
        self.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")

    def error_text(self) -> str:
        return self.js("const e = document.getElementById('error'); return e.hidden ? '' : e.innerText")

    def no_error(self) -> None:
        text = self.error_text()
        if FMNIST_MISSING is not None:  # the sample grid cannot load; that error is expected
            text = "\n".join(line for line in text.splitlines() if "/samples" not in line and line.strip() != "Error")
        assert text == "", f"unexpected error banner: {text}"
        # the server's Content-Security-Policy blocked nothing the page needs
        blocked = [e["message"] for e in self.d.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not blocked, f"blocked by the Content-Security-Policy: {blocked[:3]}"

    def query(self) -> dict:
        return {k: v[0] for k, v in parse_qs(urlparse(self.d.current_url).query).items()}

    def screenshot(self, name: str) -> None:
        """The whole page (not only the viewport), as a PNG in SCREENSHOTS (if asked for: see above)."""
        if SCREENSHOTS is None:
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        time.sleep(0.2)  # let Plotly finish drawing
        width = self.js("return document.documentElement.clientWidth")
        height = min(3000, self.js("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"))
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def wait_download(self, name: str, timeout: float = 15) -> Path:
        path = self.site["downloads"] / name
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.is_file() and not any(p.suffix == ".crdownload" for p in self.site["downloads"].iterdir()):
                return path
            time.sleep(0.1)
        pytest.fail(f"{name} was not downloaded; the folder has {[p.name for p in self.site['downloads'].iterdir()]}")


def flat(z):
    return [v for row in z for v in row]


# A late answer made to order: the next `count` requests whose URL matches `pattern` (a RegExp)
# answer `delay_ms` late, with `fake` as their JSON body instead of the server's when it is given.
# For the tests that check that the page drops an answer it no longer wants.
SLOW_FETCH = """
const [pattern, count, delayMs, fake] = arguments;
const real = window.fetch.bind(window);
const match = new RegExp(pattern);
window.__slow = { left: count, done: 0 };
window.fetch = async (input, init) => {
  const url = typeof input === 'string' ? input : input.url;
  if (!match.test(url) || window.__slow.left <= 0) return real(input, init);
  window.__slow.left--;
  const response = fake === null ? await real(input, init)
    : new Response(JSON.stringify(fake), { status: 200, headers: { 'Content-Type': 'application/json' } });
  await new Promise((resolve) => setTimeout(resolve, delayMs));
  window.__slow.done++;
  return response;
};
"""
# The `arguments[0]` late answers are back and nothing is in flight: the page has handled them,
# and finished any request that handling started.
LATE_ANSWERS_HANDLED = "return window.__slow.done === arguments[0] && document.body.getAttribute('aria-busy') !== 'true'"


def stored_hash(upload: Path | str) -> str:
    """The hash the server names an upload by (a file, or its bytes in base64): of its decoded
    pixels as PNG (ponderscope.server.image_store), computed here with the server's decode and encode."""
    from ponderscope.core.imaging import decode, encode_png

    data = upload.read_bytes() if isinstance(upload, Path) else base64.b64decode(upload)
    return hashlib.sha256(encode_png(decode(data))).hexdigest()


def drop_or_paste(page, how: str, shade: int) -> str:
    """Drop or paste a PNG made in the page -> the hash the server will name it by."""
    return stored_hash(page.js("return (async () => {" + DROP_AND_PASTE + "})()", how, shade))


# ---------------------------------------------------------------------------------- tests
def test_upload_draws_ponder_map_over_the_image(page, tmp_path):
    sact = page.ids["sact"]
    png = make_test_png(tmp_path / "shape.png", size=40)
    digest = stored_hash(png)
    page.open(f"?view=image&model={sact}")
    page.d.find_element(By.ID, "file-input").send_keys(str(png))
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", digest, what="the upload's analysis")
    data = page.wait_plot("heatmap")
    z = data[0]["z"]
    # resolution "train": the 40x40 upload is resized to the model's 28x28 input
    assert data[0]["type"] == "heatmap"
    assert len(z) == 28 and all(len(row) == 28 for row in z)
    values = flat(z)
    assert all(math.isfinite(v) for v in values)
    assert max(values) > min(values), "the ponder map is flat"
    # the map is the sum over 3 blocks of N+R, each between 1 and the block's 3 units (+R < 1)
    assert 3.0 <= min(values) and max(values) <= 3 * 4.0
    response = page.js("return window.ponderscope.results.image")
    assert z == response["ponder"]["total"]
    assert data[0]["zmin"] == pytest.approx(response["ponder"]["min"]) and data[0]["zmax"] == pytest.approx(response["ponder"]["max"])
    layout_image = page.js("return document.getElementById('heatmap').layout.images[0]")
    # the image under the map is the answer's own URL (fetched once, cacheable), and it loaded in the page
    assert layout_image["source"] == response["input"]["image"] and layout_image["sizex"] == 28 and layout_image["layer"] == "below"
    assert layout_image["source"].startswith(f"/api/models/{sact}/input/") and page.js(
        "return [...document.querySelectorAll('#heatmap image')].some((i) => (i.getAttribute('href') || '').includes('/input/'))")
    # small multiples: one map per block at the block's own resolution (one figure, one colour axis)
    blocks = page.wait_plot("block-maps")
    assert [(len(t["z"]), len(t["z"][0])) for t in blocks] == [(28, 28), (14, 14), (7, 7)]
    # top-5 prediction, FLOPs, URL state
    assert len(page.d.find_elements(By.CSS_SELECTOR, "#prediction li")) == 5
    assert "MFLOPs" in page.d.find_element(By.ID, "flops").text
    assert page.query()["image"] == digest and page.query()["model"] == sact
    page.no_error()
    page.screenshot("image-upload")


def test_imported_model_shows_its_source_and_analyses_an_upload(page, tmp_path):
    imported = page.ids["imported"]
    png = make_test_png(tmp_path / "photo.png", size=50)
    page.open(f"?view=image&model={imported}")
    chip = page.wait("const c = document.querySelector('#image-card .chip.imported'); return c && c.innerText", what="the provenance chip")
    assert "imported from" in chip and "sact-tf" in chip and "model.ckpt-0.index" in chip
    note = page.wait("const g = document.getElementById('samples'); return g && g.innerText", what="the samples note")
    assert "No test set" in note and "upload an image" in note
    page.d.find_element(By.ID, "file-input").send_keys(str(png))
    data = page.wait_plot("heatmap", what="the imported model's ponder map")
    z = data[0]["z"]
    assert len(z) == 32 and len(z[0]) == 32  # their CIFAR input size
    response = page.js("return window.ponderscope.results.image")
    assert z == response["ponder"]["total"]
    classes = [li.text for li in page.d.find_elements(By.CSS_SELECTOR, "#prediction li")]
    assert len(classes) == 5 and any(name in " ".join(classes) for name in ("airplane", "cat", "truck", "ship", "frog", "dog", "horse", "deer", "bird", "automobile"))
    # the dataset view offers only models with a test set
    options = page.js("return [...document.getElementById('dataset-model').options].map((o) => o.value)")
    assert imported not in options
    page.no_error()
    page.screenshot("image-imported")
    page.open("?view=models")
    card = page.wait("const a = document.querySelector(`article[data-model='${arguments[0]}']`); return a && a.innerText", imported, what="the model card")
    assert "imported from" in card and "sact-tf" in card and "source sha256" in card


DROP_AND_PASTE = """
const [how, shade] = arguments;
const canvas = document.createElement('canvas');
canvas.width = 32; canvas.height = 24;
const ctx = canvas.getContext('2d');
ctx.fillStyle = '#000'; ctx.fillRect(0, 0, 32, 24);
ctx.fillStyle = `rgb(${shade},${shade},${shade})`; ctx.fillRect(8, 4, 16, 16);
const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
const buffer = await blob.arrayBuffer();
const bytes = btoa(String.fromCharCode(...new Uint8Array(buffer)));  // the file, for the hash the server will give it
const data = new DataTransfer();
data.items.add(new File([blob], `made-${shade}.png`, { type: 'image/png' }));
if (how === 'drop') {
  const zone = document.getElementById('drop-zone');
  zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: data, bubbles: true, cancelable: true }));
  zone.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
} else {
  document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
}
return bytes;
"""


def test_drop_and_paste_upload(page):
    page.open(f"?view=image&model={page.ids['sact']}")
    dropped = drop_or_paste(page, "drop", 200)
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", dropped, what="the dropped image")
    assert page.query()["image"] == dropped
    pasted = drop_or_paste(page, "paste", 120)
    assert pasted != dropped
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", pasted, what="the pasted image")
    assert page.query()["image"] == pasted
    assert len(page.wait_plot("heatmap")[0]["z"]) == 28
    page.no_error()


def test_a_late_upload_does_not_replace_a_newer_one(page):
    page.open(f"?view=image&model={page.ids['sact']}")
    page.js(SLOW_FETCH, r"/api/images$", 1, 2000, None)
    dropped = drop_or_paste(page, "drop", 200)  # its upload answers 2 s late
    pasted = drop_or_paste(page, "paste", 120)
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", pasted, what="the pasted image")
    page.wait(LATE_ANSWERS_HANDLED, 1, what="the dropped image's late upload")
    assert page.js("return window.ponderscope.results.imageRequest.body.image") == pasted != dropped
    assert page.query()["image"] == pasted
    page.no_error()


@needs_fmnist
def test_a_late_sample_list_does_not_replace_the_current_one(page):
    sact, aig = page.ids["sact"], page.ids["aig"]
    page.open(f"?view=image&model={sact}")
    page.wait("return document.getElementById('samples').dataset.key === arguments[0]", f"{sact}@0", what="the sample grid")
    page.js(SLOW_FETCH, r"/samples\?", 1, 2000, None)
    picker = Select(page.d.find_element(By.ID, "image-model"))
    picker.select_by_value(aig)  # aig's list answers 2 s late
    picker.select_by_value(sact)  # back to the list on screen
    page.wait(LATE_ANSWERS_HANDLED, 1, what="aig's late sample list")
    assert page.js("return document.getElementById('samples').dataset.key") == f"{sact}@0"
    page.no_error()


@needs_fmnist
def test_opacity_colormap_and_measure_restyle_the_maps(page):
    page.open(f"?view=image&model={page.ids['sact']}&sample=0")
    before = page.wait_plot("heatmap")[0]
    page.wait_plot("block-maps")
    assert before["opacity"] == pytest.approx(0.6)
    slider = page.d.find_element(By.ID, "opacity")
    page.js("arguments[0].focus()", slider)
    for _ in range(4):  # four steps of 0.05, as a keyboard user moves it
        slider.send_keys(Keys.ARROW_LEFT)
    value = float(slider.get_attribute("value"))
    assert value == pytest.approx(0.4)
    after = page.plot_data("heatmap")[0]
    assert after["opacity"] == pytest.approx(value)
    assert page.plot_data("block-maps")[2]["opacity"] == pytest.approx(value)
    assert page.d.find_element(By.ID, "opacity-value").text == f"{value:.2f}"

    Select(page.d.find_element(By.ID, "colormap")).select_by_value("Hot")
    hot = page.plot_data("heatmap")[0]["colorscale"]
    assert hot != before["colorscale"]
    assert hot[0] == [0, "#000000"] and hot[-1] == [1, "#ffffff"]
    assert page.js("return document.getElementById('block-maps').layout.coloraxis.colorscale") == hot

    # N instead of N+R: whole numbers, colour bar in "units executed"
    Select(page.d.find_element(By.ID, "map-measure")).select_by_value("units")
    page.wait("return document.getElementById('heatmap').data[0].colorbar.title.text.includes('units executed')", what="units map")
    units = page.plot_data("heatmap")[0]
    assert all(float(v).is_integer() and 3 <= v <= 9 for v in flat(units["z"]))
    assert units["opacity"] == pytest.approx(value) and units["colorscale"] == hot
    q = page.query()
    assert q["cmap"] == "Hot" and float(q["opacity"]) == pytest.approx(value) and q["map"] == "units" and q["sample"] == "0"
    page.no_error()
    page.screenshot("image-settings")


@needs_fmnist
def test_aig_gate_chart(page):
    page.open(f"?view=image&model={page.ids['aig']}&sample=0")
    data = page.wait_plot("gates-chart")
    response = page.js("return window.ponderscope.results.image")
    gates = response["gates"]
    by_name = {t["name"]: t for t in data}
    executed = by_name["executed"]["x"]
    skipped = by_name["skipped"]["x"]
    assert sorted(executed + skipped) == sorted(gates["layers"]) and len(gates["layers"]) == 9
    assert executed == [l for l, e in zip(gates["layers"], gates["executed"]) if e]
    assert all(0 <= p <= 1 for p in by_name["executed"]["y"] + by_name["skipped"]["y"])
    # no spatial map: the image alone, and a note that says why
    assert page.plot_data("heatmap") == []
    assert "per image" in page.d.find_element(By.ID, "no-ponder").text
    page.no_error()
    page.screenshot("image-aig-gates")


@needs_fmnist
def test_compare_uses_one_colour_scale(page):
    ids = page.ids
    page.open(f"?view=compare&compare={ids['sact']},{ids['act']},{ids['dense']}&sample=1")
    page.wait("return document.querySelectorAll('#compare-grid article').length === 3", what="three compare panels")
    a = page.wait_plot("compare-plot-0")[0]
    b = page.wait_plot("compare-plot-1")[0]
    assert a["zmin"] == b["zmin"] and a["zmax"] == b["zmax"]
    both = flat(a["z"]) + flat(b["z"])
    assert a["zmin"] == pytest.approx(min(both)) and a["zmax"] == pytest.approx(max(both))
    assert flat(a["z"]) != flat(b["z"])  # two different models, two different maps
    # the dense model draws the image without a map, and every panel shows its prediction and FLOPs
    assert page.plot_data("compare-plot-2") == []
    panels = page.d.find_elements(By.CSS_SELECTOR, "#compare-grid article")
    for panel in panels:
        assert len(panel.find_elements(By.CSS_SELECTOR, ".prediction li")) == 3
        assert "of the dense network" in panel.text
    assert "100.0% of the dense network" in panels[2].text
    page.no_error()
    page.screenshot("compare")


@needs_fmnist
def test_compare_drops_a_late_answer_once_fewer_than_two_models_are_ticked(page):
    sact, act = page.ids["sact"], page.ids["act"]
    page.open(f"?view=compare&compare={sact},{act}&sample=1")
    page.wait("return document.querySelectorAll('#compare-grid article').length === 2", what="two compare panels")
    page.js(SLOW_FETCH, r"/image$", 2, 1500, None)
    page.js("document.getElementById('invert').click()")  # both models again, inverted: answers 1.5 s late
    page.js("document.querySelector(`#compare-models input[value=\"${arguments[0]}\"]`).click()", act)  # one model left
    page.wait(LATE_ANSWERS_HANDLED, 2, what="the late compare answers")
    assert page.js("return window.ponderscope.results.compare") is None
    assert page.d.find_elements(By.CSS_SELECTOR, "#compare-grid article") == []
    assert "busy" not in page.d.find_element(By.ID, "compare-grid").get_attribute("class")
    assert "two or more" in page.d.find_element(By.ID, "compare-empty").text
    page.no_error()


def test_text_view_colours_each_character(page):
    page.open(f"?view=text&tmodel={page.ids['text']}")
    text = "Hello, world. The fox: 42!"
    box = page.d.find_element(By.ID, "text-input")
    page.js("window.__typed = []; document.getElementById('text-input').addEventListener('input', () => window.__typed.push(performance.now()))")
    box.send_keys(text)
    page.wait("return document.querySelectorAll('#text-output .ch').length === arguments[0]", len(text), what="one span per character")
    spans = page.js("return [...document.querySelectorAll('#text-output .ch')].map(s => [s.textContent, s.title, getComputedStyle(s).backgroundColor])")
    assert "".join(s[0] for s in spans) == text
    assert "steps N =" in spans[1][1] and "ponder N+R =" in spans[1][1] and "bits =" in spans[1][1]
    # Typing is debounced: a request only after a pause of the debounce time, however slow the
    # machine types (a count of pauses, not a time limit): at most one per pause, plus the last.
    posts = page.js("return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/text')).length")
    typed = page.js("return window.__typed")
    debounce_ms = int(re.search(r"TEXT_DEBOUNCE_MS = (\d+)", (ROOT / "static" / "views" / "text.js").read_text()).group(1))
    assert debounce_ms >= 100  # a debounce at all
    pauses = sum(1 for a, b in zip(typed, typed[1:]) if b - a >= debounce_ms - 10)  # (10 ms: the listeners' own lag)
    assert len(typed) == len(text) and 1 <= posts <= pauses + 1, f"{posts} text requests for {len(typed)} keystrokes with {pauses} pauses"
    # default: colour by what varies in this text (the server says which); the colours follow it
    response = page.js("return window.ponderscope.results.text")
    assert Select(page.d.find_element(By.ID, "ponder-measure")).first_selected_option.get_attribute("value") == "auto"
    varies = len({c["steps"] for c in response["chars"]}) > 1
    assert response["measure"] == ("steps" if varies else "ponder")
    assert page.plot_data("text-chart")[0]["y"] == [c[response["measure"]] for c in response["chars"]]
    # one line per character class present, with the server's numbers
    chips = page.js("return [...document.querySelectorAll('#text-classes .class-chip')].map(c => [c.dataset.class, c.innerText])")
    from ponderscope.core.workloads import CHAR_CLASSES

    assert [name for name, _ in chips] == [n for n in CHAR_CLASSES if n in response["classes"]]
    assert {"space", "punctuation", "digit"} <= set(response["classes"])
    space = response["classes"]["space"]
    assert f"N {space['steps']:.2f}" in chips[[n for n, _ in chips].index("space")][1]
    # switch to N+R, which varies from character to character
    Select(page.d.find_element(By.ID, "ponder-measure")).select_by_value("ponder")
    colours = page.js("return [...document.querySelectorAll('#text-output .ch')].map(s => getComputedStyle(s).backgroundColor)")
    assert len(set(colours)) > 1, "all characters have the same colour"
    assert len(response["chars"]) == len(text) and response["chars"][0]["bits"] is None
    chart = page.wait_plot("text-chart")
    assert len(chart[0]["x"]) == len(text)
    assert chart[0]["y"] == [c["ponder"] for c in response["chars"]]
    bits = [t for t in chart if t.get("yaxis") == "y2"][0]
    assert bits["y"][0] is None and all(v > 0 for v in bits["y"][1:])
    q = page.query()
    assert q["text"] == text and q["measure"] == "ponder" and q["tmodel"] == page.ids["text"]
    page.d.find_element(By.ID, "text-csv").click()
    rows = list(csv.reader(io.StringIO(page.wait_download(f"ponderscope-text-{page.ids['text']}.csv").read_text(encoding="utf-8"))))
    assert rows[0] == ["index", "char", "codepoint", "steps", "ponder", "bits"] and len(rows) == 1 + len(text)
    assert "".join(r[1] for r in rows[1:]) == text and float(rows[3][4]) == pytest.approx(response["chars"][2]["ponder"], abs=1e-6)
    # the corpus panel: the model's held-out statistics per class, as the server measured them
    corpus = page.wait_plot("corpus-chart", what="the corpus panel")
    stats = page.wait("const c = window.ponderscope.results.corpus; return c && c.per_char_class ? c : null", what="corpus statistics")
    names = [n for n in CHAR_CLASSES if n in stats["per_char_class"]]
    assert corpus[0]["y"] == [stats["per_char_class"][n]["steps"] for n in names]
    assert corpus[1]["y"] == [stats["per_char_class"][n]["ponder"] for n in names]
    assert corpus[0]["error_y"]["array"] == [stats["per_char_class"][n]["steps_std"] for n in names]
    assert "corr(N+R, bits)" in page.d.find_element(By.ID, "corpus-stats").text
    page.no_error()
    page.screenshot("text")


@needs_fmnist
def test_dataset_view_charts_and_thumbnails(page):
    aig = page.ids["aig"]
    page.open(f"?view=dataset&dmodel={aig}")
    # the first request starts the job, so the page shows a progress bar and polls
    page.wait("return !document.getElementById('dataset-status').hidden && document.getElementById('dataset-message').textContent.startsWith('running')",
              what="the progress bar")
    page.wait("return !document.getElementById('dataset-result').hidden", timeout=60, what="the dataset statistics")
    assert page.d.find_element(By.ID, "dataset-progress").get_attribute("value") in ("1", "1.0")
    assert page.d.find_element(By.ID, "dataset-status").get_attribute("hidden") is not None
    result = page.js("return window.ponderscope.results.dataset")
    assert result["examples"] == 10000
    heat = page.wait_plot("dataset-class-layer")[0]
    assert len(heat["z"]) == 10 and len(heat["z"][0]) == 9 and heat["zmin"] == 0 and heat["zmax"] == 1
    classes = page.wait_plot("dataset-class-chart")
    assert classes[0]["y"] == [c["flops_ratio"] for c in result["per_class"]]
    layers = page.wait_plot("dataset-layers-hist")[0]
    assert sum(layers["y"]) == 10000
    assert sum(page.wait_plot("dataset-flops-hist")[0]["y"]) == 10000
    least = page.d.find_elements(By.CSS_SELECTOR, "#dataset-least .thumb")
    most = page.d.find_elements(By.CSS_SELECTOR, "#dataset-most .thumb")
    assert len(least) == len(result["least"]) > 0 and len(most) == len(result["most"]) > 0
    # every class named on the class axes (plotly.js would thin ten crowded labels out to two)
    for chart in ("dataset-class-chart", "dataset-class-layer"):
        assert page.js(f"return document.querySelectorAll('#{chart} .xtick text, #{chart} .ytick text').length") >= 10, chart
    assert sorted(page.js("return [...document.querySelectorAll('#dataset-class-chart .xtick text')].map((t) => t.textContent)")) == sorted(result["classes"])
    # no title under the mode bar (the plot's buttons, top right)
    overlaps = page.js("""return [...document.querySelectorAll('#view-dataset .js-plotly-plot')].filter((plot) => {
        const title = plot.querySelector('.gtitle'), bar = plot.querySelector('.modebar');
        if (!title || !bar) return false;
        const t = title.getBoundingClientRect(), b = bar.getBoundingClientRect();
        return t.right > b.left && t.left < b.right && t.bottom > b.top && t.top < b.bottom;
    }).map((plot) => plot.id)""")
    assert overlaps == []
    page.no_error()
    page.screenshot("dataset")
    # a thumbnail opens that test image in the Image view
    index = int(least[0].get_attribute("data-index"))
    least[0].click()
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.sample === arguments[0]", index, what="the sample in the Image view")
    assert page.query()["view"] == "image" and page.query()["sample"] == str(index) and page.query()["model"] == aig
    assert not page.d.find_element(By.ID, "view-image").get_attribute("hidden")


@needs_fmnist
def test_a_late_dataset_answer_for_a_model_left_is_dropped(page):
    aig, sact = page.ids["aig"], page.ids["sact"]
    page.open(f"?view=dataset&dmodel={aig}")
    page.wait("const d = window.ponderscope.results.dataset; return d && d.model === arguments[0]", aig, timeout=60, what="aig's statistics")
    # sact's answer is faked (no second 10000-image job) and comes 1.5 s late
    fake = {"status": "running", "progress": 0.5, "message": "a late answer for another model", "result": None}
    page.js(SLOW_FETCH, r"/dataset$", 1, 1500, fake)
    picker = Select(page.d.find_element(By.ID, "dataset-model"))
    picker.select_by_value(sact)
    picker.select_by_value(aig)  # back to the statistics on hand
    page.wait(LATE_ANSWERS_HANDLED, 1, what="sact's late answer")
    assert page.d.find_element(By.ID, "dataset-status").get_attribute("hidden") is not None
    assert "late answer" not in page.js("return document.getElementById('dataset-message').textContent")
    assert page.js("return window.ponderscope.results.dataset.model") == aig
    assert not page.d.find_element(By.ID, "dataset-result").get_attribute("hidden")
    page.no_error()


@needs_fmnist
def test_download_json_and_csv(page):
    sact = page.ids["sact"]
    page.open(f"?view=image&model={sact}&sample=2")
    page.wait_plot("heatmap")
    page.d.find_element(By.ID, "image-json").click()
    saved = json.loads(page.wait_download(f"ponderscope-image-{sact}.json").read_text())
    shown = page.js("return window.ponderscope.results.image")
    assert saved["model"] == sact and saved["request"]["sample"] == 2
    assert saved["response"]["ponder"]["total"] == shown["ponder"]["total"]
    assert saved["response"]["prediction"] == shown["prediction"]
    page.d.find_element(By.ID, "image-csv").click()
    rows = list(csv.reader(io.StringIO(page.wait_download(f"ponderscope-image-{sact}.csv").read_text())))
    assert rows[0][:4] == ["y", "x", "ponder_total", "units_total"] and "block2_ponder" in rows[0]
    assert len(rows) == 1 + 28 * 28
    y, x = 5, 7
    row = rows[1 + y * 28 + x]
    assert (int(row[0]), int(row[1])) == (y, x)
    assert float(row[2]) == pytest.approx(shown["ponder"]["total"][y][x], abs=1e-5)
    # every plot exports itself: the mode bar's camera (PNG) and the added SVG button
    page.js("document.querySelector('#heatmap .modebar-btn[data-title=\"Download plot as SVG\"]').click()")
    svg = page.wait_download(f"ponder-map-{sact}.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "<image" in svg  # the heatmap and the photo are embedded images
    page.js("document.querySelector('#heatmap .modebar-btn[data-title^=\"Download plot\"]:not([data-title*=SVG])').click()")
    assert page.wait_download(f"ponder-map-{sact}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the Models view exports every card
    page.open("?view=models")
    page.d.find_element(By.ID, "models-json").click()
    cards = json.loads(page.wait_download("ponderscope-models.json").read_text())
    assert {m["id"] for m in cards} >= set(page.ids.values())


def test_link_reopens_the_same_view(page, tmp_path):
    act = page.ids["act"]
    png = make_test_png(tmp_path / "shape.png", size=40)
    digest = stored_hash(png)
    page.open("?view=image")
    Select(page.d.find_element(By.ID, "image-model")).select_by_value(act)
    Select(page.d.find_element(By.ID, "resolution")).select_by_value("native")
    Select(page.d.find_element(By.ID, "colormap")).select_by_value("Cividis")
    Select(page.d.find_element(By.ID, "map-measure")).select_by_value("units")
    page.d.find_element(By.ID, "file-input").send_keys(str(png))
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0] && r.model === arguments[1]", digest, act, what="the upload")
    slider = page.d.find_element(By.ID, "opacity")
    slider.send_keys(Keys.ARROW_RIGHT)
    slider.send_keys(Keys.ARROW_RIGHT)
    first = page.wait_plot("heatmap")[0]
    link = page.d.current_url
    q = page.query()
    assert q["image"] == digest and q["model"] == act and q["res"] == "native" and q["cmap"] == "Cividis" and q["map"] == "units"

    page.d.get("about:blank")
    page.open(link[len(page.url) + 1:])
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", digest, what="the reopened upload")
    again = page.wait_plot("heatmap")[0]
    assert page.d.find_element(By.ID, "image-model").get_attribute("value") == act
    assert page.d.find_element(By.ID, "resolution").get_attribute("value") == "native"
    assert page.d.find_element(By.ID, "colormap").get_attribute("value") == "Cividis"
    assert page.d.find_element(By.ID, "map-measure").get_attribute("value") == "units"
    assert float(page.d.find_element(By.ID, "opacity").get_attribute("value")) == pytest.approx(first["opacity"])
    # native resolution: the 40x40 upload runs at 40x40
    assert len(again["z"]) == 40 and len(again["z"][0]) == 40
    assert again["z"] == first["z"] and again["colorscale"] == first["colorscale"] and again["opacity"] == pytest.approx(first["opacity"])
    page.no_error()

    # the Text view's link carries the text and the measure
    page.open(f"?view=text&tmodel={page.ids['text']}&measure=ponder&text=" + "a%2C%20b.")
    page.wait("return document.querySelectorAll('#text-output .ch').length === 5", what="text from the link")
    assert page.d.find_element(By.ID, "text-input").get_attribute("value") == "a, b."
    assert page.d.find_element(By.ID, "ponder-measure").get_attribute("value") == "ponder"


def test_errors_are_shown(page, tmp_path):
    page.open(f"?view=image&model={page.ids['sact']}")
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image\n")
    page.d.find_element(By.ID, "file-input").send_keys(str(bad))
    # The upload's own message, with nothing left in flight: without Fashion-MNIST the sample
    # grid's failed request opens the banner too, maybe first, or after the close below.
    page.wait("return document.getElementById('error-list').innerText.includes('/api/images') && document.body.getAttribute('aria-busy') !== 'true'",
              what="the upload's error in the banner")
    message = page.error_text()
    assert "/api/images" in message and "failed (4" in message
    detail = page.js("return document.getElementById('error-list').innerText")
    assert len(detail.split(":", 2)[-1].strip()) > 5  # the server's own words, not just a status
    page.screenshot("error")
    page.d.find_element(By.ID, "error-close").click()
    assert page.error_text() == ""
    if FMNIST_MISSING is None:
        page.open(f"?view=image&model={page.ids['sact']}&sample=99999999")
        page.wait("return !document.getElementById('error').hidden", what="the out-of-range error")
        assert "99999999" in page.error_text()
        # no stale answer stays on screen under a failed request
        assert page.d.find_element(By.ID, "image-result").get_attribute("hidden") is not None
        assert "failed" in page.d.find_element(By.ID, "image-empty").text


def test_parity_view(page):
    page.open(f"?view=parity&pmodel={page.ids['parity']}&vec=" + "0" * 16)
    page.wait("return window.ponderscope.results.parity", what="the first parity answer")
    page.d.find_element(By.ID, "parity-cell-3").click()  # 0 -> +1
    page.d.find_element(By.ID, "parity-cell-5").click()  # 0 -> +1
    page.d.find_element(By.ID, "parity-cell-5").click()  # +1 -> -1
    # Wait for the answer to the final vector, not just any answer with two non-zero entries: on a
    # slow machine the clicks can be more than the debounce apart, and the answer to the
    # intermediate vector 000+0+... (also two non-zero entries) may land first.
    page.wait("const p = window.ponderscope.results.parity; return p && p.vector[3] === 1 && p.vector[5] === -1", what="the edited vector's answer")
    p = page.js("return window.ponderscope.results.parity")
    assert p["vector"][3] == 1 and p["vector"][5] == -1 and p["answer"] in ("even", "odd")
    assert 0.5 <= p["probability"] <= 1 and p["steps"] >= 1 and p["ponder"] >= 1
    text = page.d.find_element(By.ID, "parity-result").text
    assert "expected odd (1 × +1)" in text and f"steps N {p['steps']}" in text
    assert page.query()["vec"] == "000+0-0000000000"
    answered = page.js("return window.ponderscope.results.parityHistory.length")
    page.d.find_element(By.ID, "parity-random").click()
    page.wait("return window.ponderscope.results.parityHistory.length > arguments[0]", answered, what="the random vector's answer")
    # the vector that was answered, rather than `!=` the edited one (1 random vector in 7680 is it)
    assert page.query()["vec"] == page.js("return window.ponderscope.results.parityHistory.at(-1).vector")
    assert page.plot_data("parity-chart")
    page.no_error()
    page.screenshot("parity")


def test_models_view_lists_every_card(page):
    page.open("?view=models")
    cards = page.d.find_elements(By.CSS_SELECTOR, "#model-cards article")
    models = page.js("return JSON.parse(document.getElementById('models-data').textContent)")
    assert len(cards) == len(models) >= len(page.ids)
    text_card = page.d.find_element(By.CSS_SELECTOR, f"#model-cards article[data-model='{page.ids['text']}']")
    assert "next-byte prediction" in text_card.text and "jargon" in text_card.text
    text_card.find_element(By.XPATH, ".//button[contains(., 'Open in text')]").click()
    assert page.query()["view"] == "text" and page.query()["tmodel"] == page.ids["text"]
    page.open("?view=models")
    page.screenshot("models")


def test_bundled_models_open_without_errors(page):
    """Every bundled (trained) checkpoint opens in its view; their screenshots go in the README."""
    bundled = bundled_checkpoints()
    if not bundled:
        pytest.skip("no bundled checkpoints in checkpoints/ yet")
    page.open("?view=models")
    models = {m["id"]: m for m in page.js("return JSON.parse(document.getElementById('models-data').textContent)")}
    for path in bundled:
        model = models.get(path.name)
        assert model is not None, f"bundled checkpoint {path.name} was not loaded (see the server log)"
        if model["kind"] == "image":
            if FMNIST_MISSING is not None and model["dataset"] == "fashion-mnist":
                continue
            page.open(f"?view=image&model={model['id']}&sample=0")
            page.wait("const r = window.ponderscope.results.image; return r && r.model === arguments[0]", model["id"], what=f"{model['id']} on sample 0")
            if model["family"] in ("act", "sact"):
                assert page.wait_plot("heatmap")[0]["type"] == "heatmap"
                box = page.js("return window.ponderscope.results.image.input.box")
                if box:  # cluttered MNIST: the digit's box is drawn over the map
                    shape = page.js("return document.getElementById('heatmap').layout.shapes[0]")
                    assert [shape["y0"], shape["x0"], shape["y1"], shape["x1"]] == box
            # the "digit box" control is offered exactly when the image has a box
            box_control = page.js("return !document.querySelector('#settings [data-setting=box]').hidden")
            assert box_control == bool(page.js("return window.ponderscope.results.image.input.box")), model["id"]
            if model["family"] == "aig":
                page.wait_plot("gates-chart")
        elif model["kind"] == "text":
            page.open(f"?view=text&tmodel={model['id']}&text=" + "The%20Jargon%20File%2C%20version%204.4.7%3A%20a%20hacker%27s%20dictionary%20(1983)."
                      "%20Hackers%20say%20%22foo%22%20and%20%22bar%22%2C%20not%20%22baz%22.")
            page.wait("const t = window.ponderscope.results.text; return t && t.model === arguments[0]", model["id"], what=f"{model['id']} on text")
            page.wait_plot("text-chart")
            if page.js("return window.ponderscope.results.text.layers != null"):  # a model whose trace has token_layers
                assert page.wait_plot("text-layers-chart")[0]["type"] == "heatmap"
            page.wait("const c = window.ponderscope.results.corpus; return c && c.model === arguments[0]", model["id"], timeout=120,
                      what=f"{model['id']}'s corpus panel")
            page.wait_plot("corpus-chart")
        elif model["kind"] == "parity":
            page.open(f"?view=parity&pmodel={model['id']}")
            page.wait("const p = window.ponderscope.results.parity; return p && p.model === arguments[0]", model["id"], what=f"{model['id']} on a vector")
        else:
            continue
        page.no_error()
        page.screenshot(f"model-{model['id']}")
    # the trained Fashion-MNIST ResNets side by side on one colour scale
    fmnist = [m for m in models.values() if m["dataset"] == "fashion-mnist" and m["kind"] == "image"
              and Path(BUNDLED / m["id"]).is_dir()]
    spatial = [m for m in fmnist if m["family"] in ("act", "sact")]
    if FMNIST_MISSING is None and len(spatial) >= 2:
        order = {"sact": 0, "act": 1, "aig": 2, "dense": 3}
        chosen = sorted(fmnist, key=lambda m: order.get(m["family"], 9))[:4]
        page.open(f"?view=compare&sample=0&compare={','.join(m['id'] for m in chosen)}")
        page.wait("return document.querySelectorAll('#compare-grid article').length === arguments[0]", len(chosen), what="bundled compare panels")
        scales = set()
        for i, m in enumerate(chosen):
            if m["family"] in ("act", "sact"):
                trace = page.wait_plot(f"compare-plot-{i}")[0]
                scales.add((trace["zmin"], trace["zmax"]))
        assert len(scales) == 1
        page.no_error()
        page.screenshot("compare-bundled")


def server_without_fashion_mnist(tmp_path) -> ServerProcess:
    """The bundled SACT model served as after a plain `pip install`: Fashion-MNIST not installed."""
    if not (BUNDLED / "fmnist_sact_resnet32").is_dir():
        pytest.skip("the bundled checkpoints are not here")
    server = ServerProcess([str(BUNDLED / "fmnist_sact_resnet32")], str(tmp_path / "cache"), str(tmp_path / "server.log"),
                           env={"PONDERSCOPE_FASHION_MNIST": str(tmp_path / "no-data-here")})
    try:
        server.wait_ready(timeout=90)
    except Exception:
        server.stop()
        raise
    return server


def test_missing_data_set_is_said_where_the_samples_would_be_and_uploads_work(page, tmp_path):
    """Fashion-MNIST not installed (a plain pip install): the first page opens without an error
    banner, says in the sample grid what installs the data, and analyses an upload."""
    server = server_without_fashion_mnist(tmp_path)
    try:
        page.d.get(f"{server.url}/?view=image&model=fmnist_sact_resnet32")
        page.wait("return document.getElementById('samples').innerText.includes('bash scripts/setup.sh')", what="the install message")
        assert "dataset-fashion-mnist" in page.js("return document.getElementById('samples').innerText")
        assert page.error_text() == ""
        png = make_test_png(tmp_path / "shape.png", size=40)
        page.d.find_element(By.ID, "file-input").send_keys(str(png))
        page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", stored_hash(png),
                  what="the upload's analysis")
        z = page.wait_plot("heatmap")[0]["z"]
        assert len(z) == 28 and z == page.js("return window.ponderscope.results.image")["ponder"]["total"]
        assert page.error_text() == ""
    finally:
        server.stop()


@needs_fmnist
def test_first_screen_shows_the_default_models_first_sample(page):
    """Opening the dashboard with no URL state draws a result at once: the default image model
    (the first one with a test set) on test sample 0, and a link that reproduces it."""
    page.open("")
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.sample === 0", what="sample 0 of the default model")
    default = page.js("return window.ponderscope.state.model.image")
    models = {m["id"]: m for m in page.js("return JSON.parse(document.getElementById('models-data').textContent)")}
    assert models[default]["kind"] == "image" and models[default].get("test_set") is not False
    assert models[default]["family"] in ("sact", "act")  # the first in the picker's order
    assert page.js("return window.ponderscope.results.imageRequest.model") == default
    data = page.wait_plot("heatmap", what="the first screen's ponder map")
    assert data[0]["type"] == "heatmap"
    assert data[0]["z"] == page.js("return window.ponderscope.results.image")["ponder"]["total"]
    assert not page.d.find_element(By.ID, "view-image").get_attribute("hidden")
    assert page.d.find_element(By.ID, "image-empty").get_attribute("hidden") is not None
    page.wait("const b = document.querySelector('#samples .thumb[data-index=\"0\"]'); return b && b.getAttribute('aria-pressed') === 'true'",
              what="sample 0 marked in the grid")
    # the link names what is shown, and only that (settings at their defaults are left out)
    assert page.query() == {"view": "image", "model": default, "sample": "0"}
    page.no_error()


def test_first_screen_without_the_data_set_says_so_without_an_error(page, tmp_path):
    """No URL state and Fashion-MNIST not installed: no sample to show first; the sample grid and
    the result panel say so, uploads are offered, and there is no error banner."""
    server = server_without_fashion_mnist(tmp_path)
    try:
        page.d.get(f"{server.url}/")
        page.wait("return document.getElementById('samples').innerText.includes('bash scripts/setup.sh')", what="the install message")
        page.wait("return document.body.getAttribute('aria-busy') !== 'true'", what="nothing in flight")
        assert page.error_text() == ""
        empty = page.d.find_element(By.ID, "image-empty")
        assert empty.is_displayed() and "upload" in empty.text.lower() and "Test samples" in empty.text
        assert page.d.find_element(By.ID, "drop-zone").is_displayed()
        assert page.js("return window.ponderscope.results.image") is None
        assert page.query() == {"view": "image", "model": "fmnist_sact_resnet32"}
    finally:
        server.stop()


def test_the_page_draws_the_servers_figures(page, tmp_path):
    """One figure code: what the page draws is the figure the server sent beside the numbers
    (ponderscope.figures), restyled on the page only for the display settings; family names
    come from the server's registry."""
    sact = page.ids["sact"]
    png = make_test_png(tmp_path / "shape.png", size=40)
    page.open(f"?view=image&model={sact}")
    page.d.find_element(By.ID, "file-input").send_keys(str(png))
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", stored_hash(png), what="the upload's analysis")
    drawn = page.wait_plot("heatmap")
    served = page.js("return window.ponderscope.results.image.figures")
    assert drawn[0]["z"] == served["map"]["data"][0]["z"] == page.js("return document.getElementById('heatmap').data[0].z")
    assert (drawn[0]["zmin"], drawn[0]["zmax"]) == (served["map"]["data"][0]["zmin"], served["map"]["data"][0]["zmax"])
    layout = page.js("return document.getElementById('heatmap').layout")
    assert layout["title"]["text"] == served["map"]["layout"]["title"]["text"]
    assert layout["images"][0]["source"] == served["map"]["layout"]["images"][0]["source"]
    assert [t["z"] for t in page.wait_plot("block-maps")] == [t["z"] for t in served["blocks"]["data"]]
    # the stats are the server's numbers
    mean = page.js("return window.ponderscope.results.image.ponder.mean")
    assert f"mean N+R {mean:.3f}" in page.d.find_element(By.ID, "image-stats").text
    # the family's name as the registry gives it
    models = {m["id"]: m for m in page.js("return JSON.parse(document.getElementById('models-data').textContent)")}
    assert models[sact]["family_label"] == "SACT ResNet"
    assert page.js("return document.querySelector('#image-card .chip.family').innerText").startswith("SACT ResNet")

    page.open(f"?view=text&tmodel={page.ids['text']}&text=" + "Hello%2C%20world.")
    page.wait("const t = window.ponderscope.results.text; return t && t.chars && t.chars.length === 13", what="the text answer")
    drawn = page.wait_plot("text-chart")
    served = page.js("return window.ponderscope.results.text.figures.text")
    for mine, theirs in zip(drawn, served["data"]):  # auto measure, default colours: the server's figure as it is
        assert mine["y"] == theirs["y"] and mine.get("marker", {}).get("color") == theirs.get("marker", {}).get("color")
    assert page.js("return document.getElementById('text-chart').layout.title.text") == served["layout"]["title"]["text"]
    text_card = page.js("return document.querySelector('#text-card .chip.family').innerText")
    assert text_card.startswith(models[page.ids["text"]]["family_label"]) and models[page.ids["text"]]["family_label"] == "ACT RNN"
    page.no_error()


def test_a_plugin_family_is_served_and_drawn_with_its_halting_distribution(page, tmp_path):
    """The worked example of docs/own-models.md: PonderNet, a family the project does not ship,
    loaded as a plugin, drawn in the Parity view with its p(n) over steps."""
    example = ROOT / "docs" / "examples" / "pondernet"
    server = ServerProcess([str(example)], str(tmp_path / "cache"), str(tmp_path / "server.log"), plugins=[str(example / "pondernet.py")])
    try:
        server.wait_ready(timeout=90)
        page.d.get(f"{server.url}/?view=parity&pmodel=parity8_pondernet")
        page.wait("return document.querySelectorAll('#parity-vector button, #parity-vector [role=button]').length > 0 || "
                  "document.getElementById('parity-vector').children.length > 0", what="the vector editor")
        page.d.find_element(By.ID, "parity-random").click()
        page.wait("const p = window.ponderscope.results.parity; return p && p.halting_distribution && "
                  "!document.getElementById('parity-halting').hidden", what="the halting distribution")
        answer = page.js("return window.ponderscope.results.parity")
        bars = page.wait_plot("parity-halting")
        assert bars[0]["type"] == "bar" and bars[0]["y"] == answer["halting_distribution"] == answer["figures"]["halting"]["data"][0]["y"]
        assert len(bars[0]["y"]) == 12 and abs(sum(bars[0]["y"]) - 1) < 1e-3
        assert page.wait_plot("parity-chart")
        chips = page.js("return document.getElementById('parity-card').innerText")
        assert "PonderNet" in chips  # the family's label, as the plugin registered it
        assert page.js("return document.getElementById('parity-unshown').hidden") is True
        page.no_error()
    finally:
        server.stop()



def test_dataset_view_shows_an_analysis_picked_in_statistics_over_and_keeps_it_in_the_link(page, tmp_path):
    """A model with `ponderscope analyze` results kept in its checkpoint folder: the Dataset view's
    "Statistics over" lists its test set and each analysis; the analysis picked there is drawn
    with its own numbers and a line saying how it was computed, and a reload shows it again."""
    import shutil

    from PIL import Image

    from ponderscope.analyze import analyze

    folder = tmp_path / "shapes"
    for split, count in (("train", 5), ("val", 3)):
        for label, shade in (("Bag", 200), ("Trouser", 60)):  # named after two of the model's classes: their labels
            (folder / split / label).mkdir(parents=True)
            for i in range(count):
                image = Image.new("L", (28, 28), 0)
                image.paste(shade, (4 + i, 3, 22, 25 - i))
                image.save(folder / split / label / f"{i}.png")
    model = "shapes-aig"
    ckpt = tmp_path / "checkpoints" / model
    shutil.copytree(page.site["work"] / "checkpoints" / page.ids["aig"], ckpt)
    shutil.copytree(page.site["work"] / "checkpoints" / page.ids["dense"], tmp_path / "checkpoints" / "plain-dense")  # no analyses
    command = f"ponderscope analyze {ckpt} --data imagefolder:{folder} --split train --out {ckpt / 'shapes-train'}"
    for split in ("val", "train"):
        analyze(str(ckpt), str(ckpt / f"shapes-{split}"), data=f"imagefolder:{folder}", split=split, device="cpu", workers=0,
                progress=False, command=command if split == "train" else "")
    written = json.loads((ckpt / "shapes-train" / "analysis.json").read_text())
    assert written["examples"] == 10

    server = ServerProcess([str(tmp_path / "checkpoints")], str(tmp_path / "cache"), str(tmp_path / "server.log"))
    try:
        server.wait_ready(timeout=90)
        page.d.get(f"{server.url}/?view=dataset&dmodel={model}")
        page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")
        picker = page.d.find_element(By.ID, "dataset-source")
        assert page.d.find_element(By.ID, "dataset-source-picker").is_displayed()
        assert page.d.find_element(By.ID, "dataset-source-picker").text.startswith("Statistics over")
        options = [(o.get_attribute("value"), o.text) for o in Select(picker).options]
        data = {split: json.loads((ckpt / f"shapes-{split}" / "analysis.json").read_text())["source"]["data"] for split in ("val", "train")}
        assert options == [("", "test set (fashion-mnist)"), ("shapes-train", f"shapes-train: {data['train']}, 10 images"),
                           ("shapes-val", f"shapes-val: {data['val']}, 6 images")]
        assert picker.get_attribute("value") == ""  # the test set first

        # as a person would: open the list, click the analysis
        picker.click()
        Select(picker).select_by_visible_text(f"shapes-train: {data['train']}, 10 images")
        page.wait("const d = window.ponderscope.results.dataset; return d && d.analysis === 'shapes-train' && "
                  "!document.getElementById('dataset-result').hidden", what="the analysis's statistics")

        def shown() -> None:
            stats = page.d.find_element(By.ID, "dataset-stats").text
            assert "images 10" in stats and f"accuracy {100 * written['accuracy']:.2f}%" in stats and "test images" not in stats
            line = page.d.find_element(By.ID, "dataset-source-line")
            assert line.is_displayed()
            assert line.text == (f"ponderscope analyze over {data['train']}: 10 images, 1 process on cpu, {written['source']['seconds']:.1f} s "
                                 f"(command: {command})")
            assert page.js("return document.querySelector('#dataset-source-line code').textContent") == command
            assert page.js("return window.ponderscope.results.dataset.examples") == 10
            # the folders' images are counted under the model's own Trouser (1) and Bag (8)
            assert page.js("return window.ponderscope.results.dataset.per_class.map((c) => c.count)") == [0, 5, 0, 0, 0, 0, 0, 0, 5, 0]
            # the analysis's images are shown, not offered as test-set samples of the Image view
            thumbs = page.d.find_elements(By.CSS_SELECTOR, "#dataset-least .thumb")
            assert thumbs and all(t.tag_name == "div" for t in thumbs)
            assert not page.d.find_element(By.ID, "dataset-click-note").is_displayed()
            assert page.wait_plot("dataset-class-layer")

        shown()
        assert page.query() == {"view": "dataset", "dmodel": model, "source": "shapes-train"}
        link = page.d.current_url
        page.no_error()

        page.d.get("about:blank")
        page.d.get(link)
        page.wait("const d = window.ponderscope && window.ponderscope.results.dataset; return d && d.analysis === 'shapes-train' && "
                  "!document.getElementById('dataset-result').hidden", what="the analysis after a reload")
        assert page.d.find_element(By.ID, "dataset-source").get_attribute("value") == "shapes-train"
        shown()
        page.no_error()

        # back to the test set: its own statistics, no source line, and no `source` in the link
        Select(page.d.find_element(By.ID, "dataset-source")).select_by_value("")
        assert "source" not in page.query()
        # a model without analyses has no "Statistics over"; back to this one: its test set again
        models = Select(page.d.find_element(By.ID, "dataset-model"))
        assert sorted(o.get_attribute("value") for o in models.options) == ["plain-dense", model]
        models.select_by_value("plain-dense")
        assert not page.d.find_element(By.ID, "dataset-source-picker").is_displayed()
        assert page.query() == {"view": "dataset", "dmodel": "plain-dense"}
        models.select_by_value(model)
        assert page.d.find_element(By.ID, "dataset-source-picker").is_displayed()
        assert page.d.find_element(By.ID, "dataset-source").get_attribute("value") == "" and "source" not in page.query()
        if FMNIST_MISSING is not None:
            return
        page.wait("const d = window.ponderscope.results.dataset; return !!d && d.model === arguments[0] && d.analysis === null && "
                  "!document.getElementById('dataset-result').hidden", model, timeout=90, what="the test set's statistics")
        assert page.js("return window.ponderscope.results.dataset.examples") == 10000
        assert not page.d.find_element(By.ID, "dataset-source-line").is_displayed()
        assert "test images 10000" in page.d.find_element(By.ID, "dataset-stats").text
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- what if
# Move a range input as a person's drag ends: its value, then the input and change events.
MOVE_RANGE = """
const input = document.getElementById(arguments[0]);
input.value = arguments[1];
input.dispatchEvent(new Event('input', { bubbles: true }));
input.dispatchEvent(new Event('change', { bubbles: true }));
"""


def require_bundled(*names: str) -> None:
    missing = [n for n in names if not (BUNDLED / n / "card.json").is_file()]
    if missing:
        pytest.skip(f"the bundled checkpoints {missing} are not here")


def post_image(page, model: str, body: dict) -> dict:
    """POST /api/models/{model}/image from the test, as the page asks it (training resolution)."""
    import urllib.request

    request = urllib.request.Request(f"{page.url}/api/models/{model}/image", data=json.dumps({"resolution": "train", **body}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def shown_flops_percent(page) -> str:
    """The FLOPs percentage the Compute panel shows ("31.1" of "31.1% of the dense network")."""
    import re

    match = re.search(r"([\d.]+)% of the dense network", page.d.find_element(By.ID, "flops").text)
    assert match, page.d.find_element(By.ID, "flops").text
    return match.group(1)


@needs_fmnist
def test_image_view_what_if_threshold_lesion_and_reset(page):
    """The What-if panel of the Image view: a lower halting threshold for the image on screen
    shows fewer FLOPs, the server's number for that change; a removed unit changes them again;
    the badge says what is in force, and reset shows the trained model's numbers."""
    require_bundled("fmnist_sact_resnet32")
    model = "fmnist_sact_resnet32"
    # the answer on screen is for this what-if (None: the trained model), and nothing is in flight
    settled = ("const r = window.ponderscope.results; const sorted = (o) => o && JSON.stringify(Object.keys(o).sort().map((k) => [k, o[k]]));"
               "return !!r.image && r.imageRequest.model === arguments[0] && sorted(r.image.whatif) === sorted(arguments[1]) && "
               "document.body.getAttribute('aria-busy') !== 'true'")
    page.open(f"?view=image&model={model}&sample=0")
    page.wait(settled, model, None, what="the trained model on sample 0")
    trained = post_image(page, model, {"sample": 0})
    trained_shown = shown_flops_percent(page)
    assert trained_shown == f"{100 * trained['flops']['ratio']:.1f}"
    assert page.d.find_element(By.ID, "whatif-panel").is_displayed()
    assert not page.d.find_element(By.ID, "whatif-badge").is_displayed()
    slider = page.d.find_element(By.ID, "wi-threshold")
    assert float(slider.get_attribute("value")) == pytest.approx(0.99)  # starts at the trained 1 - eps
    assert not page.d.find_element(By.ID, "wi-bias-row").is_displayed()  # no gates on a SACT model
    cap_options = [o.get_attribute("value") for o in Select(page.d.find_element(By.ID, "wi-cap")).options]
    assert cap_options == ["", "1", "2", "3", "4"]

    # a lower threshold: blocks halt sooner, fewer FLOPs, exactly the server's answer for it
    page.js(MOVE_RANGE, "wi-threshold", "0.8")
    page.wait(settled, model, {"threshold": 0.8, "cap": None, "gate_bias": None, "lesion": []}, what="the image under threshold 0.8")
    lower = post_image(page, model, {"sample": 0, "whatif": {"threshold": 0.8}})
    lower_shown = shown_flops_percent(page)
    assert lower_shown == f"{100 * lower['flops']['ratio']:.1f}"
    assert float(lower_shown) < float(trained_shown)
    assert page.d.find_element(By.ID, "wi-threshold-value").text == "0.80"
    badge = page.d.find_element(By.ID, "whatif-badge")
    assert badge.is_displayed() and badge.text == "what-if: threshold 0.80"
    rows = {r.find_element(By.TAG_NAME, "th").text: [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in page.d.find_elements(By.CSS_SELECTOR, "#wi-compare-table tbody tr")}
    assert rows["FLOPs"] == [f"{trained_shown}%", f"{lower_shown}%"]  # the trained numbers beside the new ones
    assert page.query()["threshold"] == "0.8"
    page.wait_plot("heatmap")
    assert page.plot_data("heatmap")[0]["z"] == lower["ponder"]["total"]  # the map redrawn for the change

    # remove a unit as well: the badge says so, and the numbers change again
    Select(page.d.find_element(By.ID, "wi-lesion")).select_by_value("block2.unit1")
    page.wait(settled, model, {"threshold": 0.8, "cap": None, "gate_bias": None, "lesion": ["block2.unit1"]}, what="the image without block2.unit1")
    lesioned = post_image(page, model, {"sample": 0, "whatif": {"threshold": 0.8, "lesion": ["block2.unit1"]}})
    assert lesioned["flops"]["ratio"] != lower["flops"]["ratio"]
    assert shown_flops_percent(page) == f"{100 * lesioned['flops']['ratio']:.1f}" != lower_shown
    assert page.d.find_element(By.ID, "whatif-badge").text == "what-if: threshold 0.80, without block2.unit1"
    top = page.d.find_elements(By.CSS_SELECTOR, "#prediction li .name")[0].text
    assert top == lesioned["prediction"][0]["class"]
    assert page.query()["lesion"] == "block2.unit1"
    page.no_error()
    page.screenshot("image-whatif")

    # reset to trained: the trained numbers, no badge, the controls back, nothing in the link
    page.d.find_element(By.ID, "wi-reset").click()
    page.wait(settled, model, None, what="the trained model again")
    assert shown_flops_percent(page) == trained_shown
    assert not page.d.find_element(By.ID, "whatif-badge").is_displayed()
    assert float(slider.get_attribute("value")) == pytest.approx(0.99)
    assert page.d.find_element(By.ID, "wi-lesion").get_attribute("value") == ""
    assert not {"threshold", "lesion", "cap", "bias"} & set(page.query())
    page.no_error()


@needs_fmnist
def test_what_if_view_sweep_marks_the_trained_point_at_the_cards_accuracy(page):
    """The What-if view: a threshold sweep of the bundled SACT ResNet-32 with the dense one over
    the first 500 test images; the star (the trained setting) is the card's own metrics.slice."""
    require_bundled("fmnist_sact_resnet32", "fmnist_resnet32")
    wanted = {"fmnist_sact_resnet32", "fmnist_resnet32"}
    page.open("?view=whatif")
    for box in page.d.find_elements(By.CSS_SELECTOR, "#whatif-models input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in wanted):
            box.click()
    Select(page.d.find_element(By.ID, "whatif-limit")).select_by_value("500")
    page.d.find_element(By.ID, "whatif-run-sweep").click()
    # progress while the job runs (or the figure at once, when the server had it cached)
    page.wait("const s = document.getElementById('whatif-sweep-status'); const g = document.getElementById('whatif-sweep-chart');"
              "return (!s.hidden && document.getElementById('whatif-sweep-message').textContent.includes('fmnist_sact_resnet32')) || !!(g.data && g.data.length)",
              what="the sweep's progress")
    data = page.wait("const g = document.getElementById('whatif-sweep-chart'); return g.data && g.data.length && g._fullLayout ? JSON.parse(JSON.stringify(g.data)) : null",
                     timeout=300, what="the sweep figure")
    card = json.loads((BUNDLED / "fmnist_sact_resnet32" / "card.json").read_text())["metrics"]["slice"]

    def check(data):
        stars = [t for t in data if (t.get("marker") or {}).get("symbol") == "star"]
        assert [t["name"] for t in stars] == ["fmnist_sact_resnet32: trained"]
        assert stars[0]["y"][0] == pytest.approx(card["accuracy"], abs=1e-9)
        assert stars[0]["x"][0] == pytest.approx(card["flops_ratio"], rel=1e-6)
        diamonds = [t for t in data if (t.get("marker") or {}).get("symbol") == "diamond"]
        assert [t["name"] for t in diamonds] == ["fmnist_resnet32 (reference)"] and diamonds[0]["x"][0] == pytest.approx(1.0, abs=1e-6)
        threshold = next(t for t in data if "threshold" in t["name"])
        assert min(threshold["x"]) < card["flops_ratio"] < 1.0  # lower thresholds spend less
        assert "fmnist_sact_resnet32 trained: " in page.d.find_element(By.ID, "whatif-sweep-check").text
        assert "= card metrics.slice" in page.d.find_element(By.ID, "whatif-sweep-check").text

    check(data)
    assert page.d.find_element(By.ID, "whatif-sweep-status").get_attribute("hidden") is not None
    q = page.query()
    assert set(q["wmodels"].split(",")) == wanted and q["wlimit"] == "500" and q["wrun"] == "sweep"
    page.no_error()
    page.screenshot("whatif-sweep")

    # the link again: the same figure, from the server's cache
    link = page.d.current_url
    page.d.get("about:blank")
    page.d.get(link)
    check(page.wait("const g = document.getElementById('whatif-sweep-chart'); return g && g.data && g.data.length ? JSON.parse(JSON.stringify(g.data)) : null",
                    timeout=60, what="the sweep after a reload"))
    assert page.d.find_element(By.ID, "whatif-lesion-empty").is_displayed()  # the lesion study was not asked for
    page.no_error()


def test_models_view_shows_each_models_execution_plan(page):
    """The server plans every model's execution at start-up (auto): each card of the Models view
    says, in a line, which execution runs at which batch size, and where a model has one path."""
    page.open("?view=models")
    models = {m["id"]: m for m in page.js("return JSON.parse(document.getElementById('models-data').textContent)")}

    def execution_row(model_id):
        return page.js("const a = document.querySelector(`#model-cards article[data-model='${arguments[0]}']`); "
                       "const th = a && [...a.querySelectorAll('th')].find((t) => t.innerText === 'execution'); "
                       "return th ? th.nextElementSibling.innerText : null", model_id)

    for key in ("sact", "aig", "text", "parity"):
        plan = models[page.ids[key]]["execution"]
        assert plan["mode"] == "auto" and set(plan["plan"]) == {"1", "64"}, (key, plan)
        line = execution_row(page.ids[key])
        assert line is not None, f"no execution line on the card of {page.ids[key]}"
        assert line.startswith("auto: ") and f"batch 1 → {plan['plan']['1']}" in line and f"batch 64 → {plan['plan']['64']}" in line
        timed = plan["timings_ms"]["1"]  # every path timed (masked, sparse, and tiles where the model has them), as listed
        assert {"sparse", "masked"} <= set(timed)
        assert " / ".join(f"{path} {ms:.1f}" for path, ms in timed.items()) + " ms at batch 1" in line
    dense = [m for m in models.values() if m["execution"]["source"] == "one path"]
    assert page.ids["dense"] in {m["id"] for m in dense}
    for model in dense:
        assert execution_row(model["id"]).startswith(f"auto: {model['execution']['default']} always (")
    page.no_error()


def test_access_token_cookie_flow(page, tmp_path):
    """A server asking for its token (as `serve --host 0.0.0.0` does): the page without it shows
    how to get in; the printed link (?token=) opens the dashboard, leaves no token in the address
    bar, and the HttpOnly cookie then carries every request the page makes (an upload, its
    analysis, the input image under the map)."""
    token = "browser-cookie-flow-token-0123456789"
    server = ServerProcess([str(page.site["work"] / "checkpoints")], str(tmp_path / "cache"), str(tmp_path / "server.log"), token=token)
    sact = page.ids["sact"]
    try:
        server.wait_ready(timeout=90)
        page.d.get(f"{server.url}/?view=image&model={sact}")
        message = page.d.find_element(By.ID, "access-message").text
        assert "access token" in message and "Authorization: Bearer TOKEN" in message
        assert not page.d.find_elements(By.ID, "models-data")
        page.d.get(f"{server.url}/?view=image&token=not-{token}")
        assert "not this server's" in page.d.find_element(By.ID, "access-message").text

        page.d.get(f"{server.url}/?view=image&model={sact}&token={token}")
        page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start after the login link")
        assert "token" not in page.d.current_url and page.query() == {"view": "image", "model": sact}
        cookies = [c for c in page.d.get_cookies() if c["name"].startswith("ponderscope_token")]
        assert [(c["name"], c["value"], c["httpOnly"], c["sameSite"]) for c in cookies] == [(f"ponderscope_token_{server.port}", token, True, "Strict")]
        assert page.js("return document.cookie") == ""   # HttpOnly: no script of the page's can read it

        png = make_test_png(tmp_path / "shape.png", size=40)
        page.d.find_element(By.ID, "file-input").send_keys(str(png))
        page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0]", stored_hash(png),
                  what="the upload's analysis through the cookie")
        z = page.wait_plot("heatmap")[0]["z"]
        assert z == page.js("return window.ponderscope.results.image")["ponder"]["total"] and len(z) == 28
        source = page.js("return document.getElementById('heatmap').layout.images[0].source")
        assert page.d.execute_async_script("fetch(arguments[0]).then((r) => arguments[1](r.status))", source) == 200
        assert page.error_text() == ""
        assert token not in server.tail(100_000)
    finally:
        page.d.delete_all_cookies()
        server.stop()


def test_models_without_test_data_say_so_once_with_their_name_and_reason(page, tmp_path):
    """A byte LM whose card names no corpus and an image model whose card names no data set
    (tests/test_clear_messages.py makes them): the Text view's corpus panel says why there are no
    held-out statistics, once, without asking the server; the Image view's samples say why there
    are none; the Dataset view names the model it leaves out, with the reason. No error banner."""
    from test_clear_messages import NO_CORPUS, NO_DATA_SET, without_data

    root = tmp_path / "checkpoints"
    root.mkdir()
    without_data(root)
    server = ServerProcess([str(root)], str(tmp_path / "cache"), str(tmp_path / "server.log"))
    try:
        server.wait_ready(timeout=90)
        page.d.get(f"{server.url}/?view=text&tmodel=text-no-corpus")
        said = f"No held-out statistics for text-no-corpus: {NO_CORPUS}"
        page.wait("return document.getElementById('corpus-source').textContent.startsWith(arguments[0])", said, what="the corpus note")
        time.sleep(1.5)  # a retry, were there one, would have come by now
        asked = page.js("return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/api/') && n.includes('/dataset'))")
        assert asked == [] and page.js("return document.getElementById('corpus-source').textContent").startswith(said)
        assert page.error_text() == ""

        page.d.get(f"{server.url}/?view=image&model=image-no-data")
        note = page.wait("const g = document.getElementById('samples'); return g && g.innerText", what="the samples note")
        assert note == f"No test set comes with image-no-data: {NO_DATA_SET}; upload an image to analyse it."
        assert "None" not in note and page.error_text() == ""

        page.d.get(f"{server.url}/?view=dataset")
        left_out = page.wait("const p = document.getElementById('dataset-left-out'); return p && !p.hidden && p.textContent", what="the left-out note")
        assert left_out == f"Not listed: image-no-data ({NO_DATA_SET})."
        assert page.error_text() == ""
    finally:
        server.stop()


def test_the_worked_examples_are_drawn_with_their_familys_own_words(page, tmp_path):
    """docs/own-models.md's gated CNN and per-position exit CNN, served as plugins: the gated one's
    Image view draws the gate chart and says why there is no map in the words its family was
    registered with (not a built-in family's); the per-position one draws its ponder map."""
    examples = ROOT / "docs" / "examples"
    server = ServerProcess([str(examples / "gated_cnn"), str(examples / "position_exit")], str(tmp_path / "cache"), str(tmp_path / "server.log"),
                           plugins=[str(examples / "gated_cnn" / "gated_cnn.py"), str(examples / "position_exit" / "position_exit.py")])
    try:
        server.wait_ready(timeout=90)
        png = make_test_png(tmp_path / "shape.png", size=40)
        page.d.get(f"{server.url}/?view=image&model=fmnist_gated_cnn")
        page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")
        page.d.find_element(By.ID, "file-input").send_keys(str(png))
        bars = {t["name"]: t for t in page.wait_plot("gates-chart", what="the gate chart")}
        answer = page.js("return window.ponderscope.results.image")
        assert sorted(bars["executed"]["x"] + bars["skipped"]["x"]) == sorted(answer["gates"]["layers"]) == sorted(
            f"stage{s}.{b}" for s in (1, 2) for b in range(3))
        note = page.d.find_element(By.ID, "no-ponder").text
        assert note == ("gated CNN (per-image gates): this model decides per image: a gate on each residual block runs it or skips it "
                        "whole for this image (the gate chart shows which).")
        assert page.plot_data("heatmap") == []

        page.d.get(f"{server.url}/?view=image&model=fmnist_position_exit")
        page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")
        page.d.find_element(By.ID, "file-input").send_keys(str(png))
        z = page.wait_plot("heatmap", what="the ponder map")[0]["z"]
        answer = page.js("return window.ponderscope.results.image")
        assert z == answer["ponder"]["total"] and len(z) == 14
        assert page.d.find_element(By.ID, "no-ponder").get_attribute("hidden") is not None
        page.no_error()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- early exits and halting tokens
@pytest.fixture(scope="module")
def exit_token_server():
    """The families beyond the three papers, tiny and untrained, each with its reference twin
    (tests/browser_support.py): an early-exit ResNet-8 and a dense ResNet-8 on Fashion-MNIST, an
    A-ViT on a 6x6 patch grid and its ViT on cluttered MNIST; served on their own."""
    work = Path(tmpdir("ponderscope-exit-token-"))
    ids = make_tiny_exit_and_token_checkpoints(work / "checkpoints")
    server = ServerProcess([str(work / "checkpoints")], str(work / "cache"), str(work / "server.log"))
    try:
        server.wait_ready(timeout=90)
        yield {"url": server.url, "ids": ids, "server": server}
    finally:
        server.stop()
        cleanup(work)


def post_to(url: str, model: str, body: dict) -> dict:
    """POST /api/models/{model}/image on the server at `url`, as the page asks it (training resolution)."""
    return post_json(f"{url}/api/models/{model}/image", {"resolution": "train", **body})


# the answer on screen is for this model and what-if (None: the trained model), and nothing is in flight
SETTLED = ("const r = window.ponderscope.results; const sorted = (o) => o && JSON.stringify(Object.keys(o).sort().map((k) => [k, o[k]]));"
           "return !!r.image && r.imageRequest.model === arguments[0] && sorted(r.image.whatif) === sorted(arguments[1]) && "
           "document.body.getAttribute('aria-busy') !== 'true'")


def exit_bars(page) -> dict:
    return {t["name"]: t for t in page.wait_plot("exits-chart", what="the exit chart")}


@needs_fmnist
def test_early_exit_chart_marks_the_exit_taken_and_the_threshold(page, exit_token_server):
    """The Image view of a model with exits: each exit's confidence as a bar, the exit taken in
    its colour, the threshold in force as a line; the FLOPs it spent; the what-if panel's threshold
    named as the model names it, and a lower threshold redraws the chart from the server's answer."""
    url, model = exit_token_server["url"], exit_token_server["ids"]["exit"]
    page.d.get(f"{url}/?view=image&model={model}&sample=1")
    page.wait(SETTLED, model, None, what="the trained model on sample 1")
    answer = post_to(url, model, {"sample": 1})
    exits = answer["exits"]
    bars = exit_bars(page)
    taken = exits["names"][exits["taken"]]
    assert bars["exit taken"]["x"] == [taken] and bars["exit taken"]["y"] == [exits["confidence"][exits["taken"]]]
    assert bars["passed by"]["x"] == exits["names"][: exits["taken"]]
    assert bars["passed by"]["y"] == exits["confidence"][: exits["taken"]]
    assert (bars.get("not reached") or {"x": []})["x"] == exits["names"][exits["taken"] + 1:]
    layout = page.js("return document.getElementById('exits-chart').layout")
    assert layout["shapes"][0]["y0"] == pytest.approx(0.5) and exits["threshold"] == pytest.approx(0.5)
    assert page.js("return [...document.querySelectorAll('#exits-chart .xtick text')].map((t) => t.textContent)") == exits["names"]
    assert page.d.find_element(By.ID, "result-title").text == "Exits"
    assert shown_flops_percent(page) == f"{100 * answer['flops']['ratio']:.1f}"
    assert f"{taken} ({exits['taken'] + 1} of 3)" in page.d.find_element(By.ID, "image-stats").text
    assert "leaves at the first exit" in page.d.find_element(By.ID, "no-ponder").text  # the family's own description
    # the what-if panel: the threshold in the model's words, no cap, no gate bias
    assert page.d.find_element(By.ID, "wi-threshold-label").text == "Exit confidence threshold"
    assert "top class probability" in page.d.find_element(By.ID, "wi-threshold-row").get_attribute("title")
    assert not page.d.find_element(By.ID, "wi-cap-row").is_displayed() and not page.d.find_element(By.ID, "wi-bias-row").is_displayed()
    page.no_error()
    page.screenshot("image-early-exit")

    page.js(MOVE_RANGE, "wi-threshold", "0.3")
    page.wait(SETTLED, model, {"threshold": 0.3, "cap": None, "gate_bias": None, "lesion": []}, what="the image under threshold 0.3")
    lower = post_to(url, model, {"sample": 1, "whatif": {"threshold": 0.3}})
    assert lower["exits"]["threshold"] == pytest.approx(0.3) and lower["exits"]["taken"] <= exits["taken"]
    bars = exit_bars(page)
    assert bars["exit taken"]["x"] == [lower["exits"]["names"][lower["exits"]["taken"]]]
    assert page.js("return document.getElementById('exits-chart').layout.shapes[0].y0") == pytest.approx(0.3)
    assert page.d.find_element(By.ID, "whatif-badge").text == "what-if: threshold 0.30"
    rows = {r.find_element(By.TAG_NAME, "th").text: [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in page.d.find_elements(By.CSS_SELECTOR, "#wi-compare-table tbody tr")}
    assert rows["exit"] == [taken, lower["exits"]["names"][lower["exits"]["taken"]]]
    assert shown_flops_percent(page) == f"{100 * lower['flops']['ratio']:.1f}"
    page.no_error()


@needs_fmnist
def test_dataset_view_draws_the_exit_distribution_per_class(page, exit_token_server):
    url, model = exit_token_server["url"], exit_token_server["ids"]["exit"]
    page.d.get(f"{url}/?view=dataset&dmodel={model}")
    page.wait("return !document.getElementById('dataset-result').hidden", timeout=120, what="the dataset statistics")
    result = page.js("return window.ponderscope.results.dataset")
    heat = page.wait_plot("dataset-class-exit", what="the class x exit figure")[0]
    assert heat["z"] == result["class_exit_rates"] and heat["x"] == result["exits"] == ["after stage 1", "after stage 2", "after stage 3"]
    assert heat["y"] == result["classes"] and len(heat["z"]) == 10 and all(sum(row) == pytest.approx(1.0) for row in heat["z"])
    # every class named on its axis (plotly.js would thin ten crowded labels out)
    assert sorted(page.js("return [...document.querySelectorAll('#dataset-class-exit .ytick text')].map((t) => t.textContent)")) == sorted(result["classes"])
    bars = page.wait_plot("dataset-exits", what="the exit rates")
    assert bars[0]["y"] == result["exit_rates"] and sum(result["exit_rates"]) == pytest.approx(1.0)
    assert bars[1]["y"] == result["exit_accuracy"]
    shown = "leaving at each exit " + " / ".join(f"{round(100 * r)}%" for r in result["exit_rates"])
    assert shown in page.d.find_element(By.ID, "dataset-stats").text.replace("\n", " ")
    assert page.d.find_element(By.ID, "dataset-class-layer").get_attribute("hidden") is not None  # no gates: that figure is hidden
    page.no_error()
    page.screenshot("dataset-early-exit")


@needs_mnist
def test_avit_map_lies_over_the_image_per_layer_group(page, exit_token_server, tmp_path):
    """A-ViT's per-patch ponder map: 6x6 cells of 10x10 pixels over the 60x60 image, total and per
    layer group (titled as the model names its groups); a native-resolution upload runs at its
    training size and says so; its what-if cap is in its own words."""
    url, model = exit_token_server["url"], exit_token_server["ids"]["avit"]
    png = make_test_png(tmp_path / "shape.png", size=90)
    page.d.get(f"{url}/?view=image&model={model}&res=native")
    page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")
    page.d.find_element(By.ID, "file-input").send_keys(str(png))
    page.wait("const r = window.ponderscope.results.imageRequest; return r && r.body.image === arguments[0] && !!window.ponderscope.results.image",
              stored_hash(png), timeout=60, what="the upload's analysis")
    data = page.wait_plot("heatmap", what="the A-ViT map")
    answer = page.js("return window.ponderscope.results.image")
    heat = data[0]
    assert heat["z"] == answer["ponder"]["total"] and len(heat["z"]) == 6 and all(len(row) == 6 for row in heat["z"])
    assert (heat["x0"], heat["dx"], heat["y0"], heat["dy"]) == (5, 10, 5, 10)  # each cell over its 10x10 patch
    image = page.js("return document.getElementById('heatmap').layout.images[0]")
    assert image["sizex"] == 60 and image["sizey"] == 60
    title = page.js("return document.getElementById('heatmap').layout.title.text")
    assert title == f"{model}: ponder cost N+R, summed over layers 1–2 + layers 3–4"
    blocks = page.wait_plot("block-maps", what="the maps per layer group")
    assert [t["z"] for t in blocks] == [b["ponder_cost"] for b in answer["ponder"]["blocks"]] and [(t["x0"], t["dx"]) for t in blocks] == [(5, 10)] * 2
    panels = page.js("return document.getElementById('block-maps').layout.annotations.map((a) => a.text)")
    assert [p.split("<br>")[0] for p in panels] == ["layers 1–2 (6×6)", "layers 3–4 (6×6)"]
    # asked for its native resolution: the model takes 60x60 only, and the page says it ran at that size
    assert answer["input"]["resolution"] == "train" and (answer["input"]["width"], answer["input"]["height"]) == (60, 60)
    assert "60×60 images only" in page.d.find_element(By.ID, "resolution-note").text
    # the what-if panel in the model's words: a cap on the layers per token
    assert page.d.find_element(By.ID, "wi-cap-label").text == "Layers per token, at most"
    assert [o.get_attribute("value") for o in Select(page.d.find_element(By.ID, "wi-cap")).options] == ["", "1", "2", "3"]
    page.no_error()
    page.screenshot("image-avit")


def run_sweep(page, url: str, wanted: set[str]) -> list[dict]:
    """The What if view at `url`: tick `wanted`, the first 500 test images, Sweep -> the figure's traces."""
    page.d.get(f"{url}/?view=whatif")
    page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page to start")
    for box in page.d.find_elements(By.CSS_SELECTOR, "#whatif-models input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in wanted):
            box.click()
    Select(page.d.find_element(By.ID, "whatif-limit")).select_by_value("500")
    page.d.find_element(By.ID, "whatif-run-sweep").click()
    return page.wait("const g = document.getElementById('whatif-sweep-chart'); return g.data && g.data.length && g._fullLayout && "
                     "window.ponderscope.results.whatif.sweep ? JSON.parse(JSON.stringify(g.data)) : null", timeout=300, what="the sweep figure")


@needs_fmnist
@needs_mnist
def test_what_if_sweeps_the_exit_threshold_and_the_halting_threshold_against_their_twins(page, exit_token_server):
    url, ids = exit_token_server["url"], exit_token_server["ids"]
    data = run_sweep(page, url, {ids["exit"]})
    answer = page.js("return window.ponderscope.results.whatif.sweep.answer")
    points = answer["results"][ids["exit"]]
    curve = next(t for t in data if t["name"] == f"{ids['exit']}: exit confidence threshold")
    by_flops = sorted((p for p in points if p["parameter"] == "threshold"), key=lambda p: p["flops_ratio"])
    assert curve["x"] == [p["flops_ratio"] for p in by_flops] and curve["y"] == [p["accuracy"] for p in by_flops]
    assert min(curve["x"]) < max(curve["x"])  # the threshold moves the FLOPs (past 1 here: every exit head of a tiny untrained net costs)
    star = next(t for t in data if (t.get("marker") or {}).get("symbol") == "star")
    trained = next(p for p in points if p["trained"])
    assert star["name"] == f"{ids['exit']}: trained" and star["x"] == [trained["flops_ratio"]] and trained["setting"] == pytest.approx(0.5)
    diamond = next(t for t in data if (t.get("marker") or {}).get("symbol") == "diamond")
    assert diamond["name"] == f"{ids['exit_reference']} (reference)" and diamond["x"][0] == pytest.approx(1.0)
    page.no_error()
    page.screenshot("whatif-sweep-early-exit")

    # the A-ViT's: its halting threshold and its cap on layers per token, against the ViT (not listed itself: nothing to change)
    assert ids["vit"] not in page.js("return [...document.querySelectorAll('#whatif-models input')].map((i) => i.value)")
    data = run_sweep(page, url, {ids["avit"]})
    answer = page.js("return window.ponderscope.results.whatif.sweep.answer")
    names = [t["name"] for t in data]
    assert names == [f"{ids['avit']}: halting threshold 1 - eps", f"{ids['avit']}: layers per token, at most", f"{ids['avit']}: trained",
                     f"{ids['vit']} (reference)"]
    threshold = data[0]
    points = sorted((p for p in answer["results"][ids["avit"]] if p["parameter"] == "threshold"), key=lambda p: p["flops_ratio"])
    assert threshold["x"] == [p["flops_ratio"] for p in points] and threshold["y"] == [p["accuracy"] for p in points]
    assert answer["reference"]["label"] == ids["vit"] and answer["reference"]["flops_ratio"] == pytest.approx(1.0)
    assert f"{ids['vit']} (reference, 100% of the FLOPs)" in page.d.find_element(By.ID, "whatif-sweep-check").text
    page.no_error()
