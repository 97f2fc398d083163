"""The notebook API (`import ponderscope as ps`) and `ponderscope render` on the bundled
checkpoints: the analyses are the API's, the figures draw them, the README's example runs, and
every output format is what it says (offline HTML, plotly JSON, PNG, SVG)."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from PIL import Image

import ponderscope as ps
from ponderscope import cli, figures
from browser_support import fashion_mnist_missing_reason

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
FMNIST_MISSING = fashion_mnist_missing_reason()
needs_fmnist = pytest.mark.usefixtures("fashion_mnist")  # (conftest: a skip here, a failure in CI)
HTTP_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I)


def shirt(path: Path) -> Path:
    image = Image.new("L", (56, 56), 0)
    image.paste(200, (14, 10, 42, 46))
    image.paste(120, (4, 10, 14, 30))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def models():
    return {name: ps.load(name) for name in ("fmnist_sact_resnet32", "fmnist_aig_resnet32", "jargon_act_lstm", "parity16_act_rnn")}


@pytest.fixture(scope="module")
def shirt_png(tmp_path_factory):
    return shirt(tmp_path_factory.mktemp("images") / "shirt.png")


def test_importing_ponderscope_stays_light():
    code = "import sys, ponderscope, ponderscope.cli; print(sorted(m for m in ('torch', 'plotly', 'server', 'fastapi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "load" in dir(ps) and ps.figures is figures


def test_load_by_id_or_folder(models):
    sact = models["fmnist_sact_resnet32"]
    assert sact.id == "fmnist_sact_resnet32" and sact.kind == "image" and sact.family == "sact" and sact.device == "cpu"
    assert repr(sact).startswith("<ponderscope.LoadedModel 'fmnist_sact_resnet32': sact_resnet32 (sact, image model) on fashion-mnist, test accuracy")
    assert ps.load(CHECKPOINTS / "parity16_act_rnn").card == models["parity16_act_rnn"].card
    assert "fmnist_sact_resnet32" in ps.bundled()
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        ps.load("no_such_model")
    with pytest.raises(ValueError, match="is a text model"):
        ps.analyze_image(models["jargon_act_lstm"], 0)


def test_analyze_image_is_the_api_answer(models, shirt_png, tmp_path):
    """The notebook's answer is the server's: the same numbers and figures (the server's figures
    point at its numbers; put back, they are the notebook's), the same image (the server's at its
    URL, the notebook's inline)."""
    from fastapi.testclient import TestClient

    from ponderscope.server.app import create_app
    from ponderscope.server.references import resolve

    app = create_app([CHECKPOINTS / "fmnist_sact_resnet32"], device="cpu", cache_dir=tmp_path)
    with TestClient(app) as client:
        answer = client.post("/api/models/fmnist_sact_resnet32/image", files={"file": ("shirt.png", shirt_png.read_bytes(), "image/png")})
        from_api = {"file": answer.json()}
        if FMNIST_MISSING is None:
            from_api[3] = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 3}).json()
        shown = {image: client.get(answer["input"]["image"]).content for image, answer in from_api.items()}
    sact = models["fmnist_sact_resnet32"]

    def pixels(source: str | bytes):
        data = source if isinstance(source, bytes) else base64.b64decode(source.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(data)))

    for image, expected in from_api.items():
        ours = ps.analyze_image(sact, shirt_png if image == "file" else image).json_dict()
        expected = resolve(expected)
        assert np.array_equal(pixels(ours["input"]["image"]), pixels(shown[image]))
        for answer in (ours, expected):
            answer["time_ms"] = None
            answer["input"]["image"] = None
            for figure in answer["figures"].values():
                for picture in figure["layout"].get("images", []):
                    picture["source"] = None
        assert ours == expected
    # a PIL image is analysed as if uploaded: the same pixels, the same hash
    assert ps.analyze_image(sact, Image.open(shirt_png)).input.hash == from_api["file"]["input"]["hash"]


def test_image_figures_of_sact_and_aig(models, shirt_png):
    sact = ps.analyze_image(models["fmnist_sact_resnet32"], shirt_png)
    fig = figures.image_figure(sact)
    assert np.asarray(fig.data[0].z).tolist() == sact["ponder"]["total"]
    assert fig.layout.images[0].source == sact["input"]["image"]
    units = ps.image_figure(models["fmnist_sact_resnet32"], shirt_png, measure="units", block=2)
    assert isinstance(fig, go.Figure) and isinstance(units, go.Figure)  # the notebook gets plotly Figures (the server, plain dicts)
    assert np.asarray(units.data[0].z).tolist() == sact["ponder"]["blocks"][2]["units"]
    aig = ps.analyze_image(models["fmnist_aig_resnet32"], str(shirt_png))
    gates = ps.image_figure(models["fmnist_aig_resnet32"], shirt_png)
    assert [list(t.y) for t in gates.data] == [[p for p, e in zip(aig["gates"]["probability"], aig["gates"]["executed"]) if e == run] for run in (True, False)]
    both = figures.compare_figure([sact, aig])
    values = [v for row in sact["ponder"]["total"] for v in row]
    assert isinstance(gates, go.Figure) and isinstance(both, go.Figure)
    assert len(both.data) == 1 and (both.layout.coloraxis.cmin, both.layout.coloraxis.cmax) == (min(values), max(values))


@needs_fmnist
def test_a_test_sample_by_index(models):
    analysis = ps.analyze_image(models["fmnist_sact_resnet32"], 0)
    assert analysis["input"]["sample"] == 0 and analysis["input"]["label_class"] == "Ankle boot"
    with pytest.raises(IndexError, match="out of range"):
        ps.analyze_image(models["fmnist_sact_resnet32"], 10_000)


def test_text_and_parity_figures(models):
    text = "The hacker's jargon, (c) 1983."
    analysis = ps.analyze_text(models["jargon_act_lstm"], text)
    fig = ps.text_figure(models["jargon_act_lstm"], text)
    assert isinstance(fig, go.Figure)
    assert "".join(c["char"] for c in analysis["chars"]) == text
    assert list(fig.data[0].y) == [c[analysis["measure"]] for c in analysis["chars"]]
    assert list(fig.data[2].y) == [c["bits"] for c in analysis["chars"]]
    vectors = [[1.0] * 16, [0.0] * 15 + [-1.0]]
    fig = ps.parity_figure(models["parity16_act_rnn"], vectors)
    assert isinstance(fig, go.Figure)
    curve, points, current = fig.data
    card_curve = models["parity16_act_rnn"].card["metrics"]["test"]["ponder_by_nonzero"]
    assert list(curve.y) == [card_curve[k] for k in sorted(card_curve, key=int)]
    assert list(points.x) == [16, 1] and list(current.x) == [1]
    assert list(points.y) == [ps.analyze_parity(models["parity16_act_rnn"], v)["ponder"] for v in vectors]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Notebooks and figures", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shirt(tmp_path / "shirt.png")
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    fig, analysis = namespace["fig"], namespace["analysis"]
    assert np.asarray(fig.data[0].z).tolist() == analysis["ponder"]["units_total"]
    html = (tmp_path / "ponder-map.html").read_text(encoding="utf-8")
    assert "plotly.js v" in html and not HTTP_SCRIPT.search(html)
    assert namespace["text"].data[0].type == "bar" and len(namespace["blocks"].data) == 3


def render(*argv) -> None:
    cli.main(["render", *map(str, argv)])


def test_render_html_and_json(models, shirt_png, tmp_path, capsys):
    render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "map.html", "--colormap", "Inferno")
    html = (tmp_path / "map.html").read_text(encoding="utf-8")
    assert "<html" in html[:300] and "</html>" in html[-100:]
    assert "plotly.js v" in html and not HTTP_SCRIPT.search(html)
    render("jargon_act_lstm", "--text", "Hello, world", "--out", tmp_path / "text.json", "--measure", "ponder")
    fig = pio.from_json((tmp_path / "text.json").read_text(encoding="utf-8"))
    assert fig.data[0].type == "bar" and len(fig.data[0].y) == len("Hello, world")
    # the file's numbers are the library's: N+R per character, the ponder map of the image
    text = ps.analyze_text(models["jargon_act_lstm"], "Hello, world")
    assert list(fig.data[0].y) == pytest.approx([c["ponder"] for c in text["chars"]], abs=1e-6)
    render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "map.json")
    heatmap = pio.from_json((tmp_path / "map.json").read_text(encoding="utf-8")).data[0]
    expected = ps.analyze_image(models["fmnist_sact_resnet32"], shirt_png)["ponder"]["total"]
    assert np.asarray(heatmap.z).shape == (28, 28) and np.allclose(np.asarray(heatmap.z, dtype=float), np.asarray(expected), atol=1e-6)
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / name}" for name in ("map.html", "text.json", "map.json")]


def test_render_png_and_svg_with_kaleido(shirt_png, tmp_path, capsys):
    render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "map.png", "--width", 500, "--height", 400, "--scale", 2)
    if "with Pillow instead" in (err := capsys.readouterr().err):  # no kaleido or no Chromium here: the next test covers it
        pytest.skip(err.strip())
    image = Image.open(tmp_path / "map.png")
    assert image.format == "PNG" and image.size == (1000, 800)
    render("fmnist_aig_resnet32", shirt_png, "--out", tmp_path / "gates.svg")
    svg = ET.parse(tmp_path / "gates.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.get("width") == "700"


def test_render_without_a_browser_draws_maps_with_pillow(shirt_png, tmp_path, monkeypatch, capsys):
    def unavailable(*args, **kwargs):
        raise figures.StaticExportUnavailable("kaleido is not installed (test)")

    monkeypatch.setattr(figures, "to_image", unavailable)
    render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "map.png", "--width", 400, "--height", 300)
    assert Image.open(tmp_path / "map.png").size == (400, 300)
    render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "block.svg", "--block", 1, "--measure", "units")
    assert ET.parse(tmp_path / "block.svg").getroot().get("width") == "700"
    assert "drawing the map with Pillow instead" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no PNG here: kaleido is not installed"):
        render("fmnist_aig_resnet32", shirt_png, "--out", tmp_path / "gates.png")


def test_render_refuses_clearly(shirt_png, tmp_path):
    with pytest.raises(SystemExit, match=r"--out must end in \.html, \.json, \.png or \.svg"):
        render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "map.gif")
    with pytest.raises(SystemExit, match="is a text model: give the text with --text"):
        render("jargon_act_lstm", "--out", tmp_path / "t.html")
    with pytest.raises(SystemExit, match="neither a checkpoint folder"):
        render("nope", shirt_png, "--out", tmp_path / "t.html")
    with pytest.raises(SystemExit, match="unknown colour scale"):
        render("fmnist_sact_resnet32", shirt_png, "--out", tmp_path / "t.html", "--colormap", "Rainbow")
    with pytest.raises(SystemExit, match="is an image model: give an image file or a test-sample index, not --text"):
        render("fmnist_sact_resnet32", "--text", "hi", "--out", tmp_path / "t.html")
    with pytest.raises(SystemExit, match="--block is a block's index"):
        render("fmnist_sact_resnet32", shirt_png, "--block", "first", "--out", tmp_path / "t.html")
    with pytest.raises(SystemExit, match="exactly 16"):
        render("parity16_act_rnn", "+0-", "--out", tmp_path / "p.html")
