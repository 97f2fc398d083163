"""What an image answer carries on the wire (issue 21, item 1): every map on the grid the model
computed it on, with the geometry that places it on the input; no array twice; the input image
at its own URL; the page's choice of numbers, figures or both; gzip for browsers."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ponderscope.core.imaging import decode, prepare
from ponderscope.server.app import create_app

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
FIXTURE = ROOT / "tests" / "fixtures" / "sact_tf" / "imagenet_sact"  # the SACT authors' ImageNet layout (strides 4..32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("wire")
    (work / "ckpt").mkdir()
    subprocess.run([sys.executable, "-m", "ponderscope", "import", "sact-tf", str(FIXTURE), "--model", "sact_resnet20",
                    "--out", str(work / "ckpt" / "imagenet_sact")], check=True, capture_output=True)
    (work / "ckpt" / "fmnist_sact_resnet32").symlink_to(CHECKPOINTS / "fmnist_sact_resnet32")
    app = create_app([work / "ckpt"], device="cpu", cache_dir=work / "cache")
    with TestClient(app) as client:
        yield client, app


def photo(width=200, height=120) -> bytes:
    rng = np.random.default_rng(1)
    array = np.clip(rng.normal(128, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def arrays(node, path=""):
    """Every list of numbers (or of lists) in a JSON value, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from arrays(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list) and node and not isinstance(node[0], dict):
        yield path, node
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from arrays(value, f"{path}.{index}")


def lookup(answer: dict, path: str):
    for key in path.split("."):
        answer = answer[int(key)] if isinstance(answer, list) else answer[key]
    return answer


def test_native_maps_stay_on_the_models_grids_with_their_geometry(served):
    client, app = served
    digest = client.post("/api/images", files={"file": ("p.png", photo(), "image/png")}).json()["hash"]
    answer = client.post("/api/models/imagenet_sact/image", json={"image": digest, "resolution": "native"}).json()
    width, height = answer["input"]["width"], answer["input"]["height"]
    assert (width, height) == (200, 120)
    ponder = answer["ponder"]
    # the model's own grids: strides 4, 8, 16, 32 ('SAME' padding: ceil), the total on the finest
    expected = [(-(-height // s), -(-width // s)) for s in (4, 8, 16, 32)]
    assert [(b["grid"]["height"], b["grid"]["width"]) for b in ponder["blocks"]] == expected
    assert [(len(b["ponder_cost"]), len(b["ponder_cost"][0])) for b in ponder["blocks"]] == expected
    assert (len(ponder["total"]), len(ponder["total"][0])) == expected[0] == (ponder["grid"]["height"], ponder["grid"]["width"])
    for block in ponder["blocks"]:  # cell (i, j) centred at (x0 + j dx, y0 + i dy): the grid spans the image
        grid = block["grid"]
        assert grid["dx"] * grid["width"] == pytest.approx(width) and grid["dy"] * grid["height"] == pytest.approx(height)
        assert grid["x0"] == pytest.approx(grid["dx"] / 2) and grid["y0"] == pytest.approx(grid["dy"] / 2)
    # the numbers are the model's: the total is Trace.ponder_map on the finest grid, computed here apart
    model = app.state.store.get("imagenet_sact")
    x, _ = prepare(decode(app.state.images.get(digest)), model.card.preprocess, "native")
    with torch.no_grad():
        trace = model.module.trace(x)
    assert np.allclose(ponder["total"], trace.ponder_map(expected[0])[0].numpy(), atol=1e-4)
    assert ponder["units_total"] == trace.ponder_map(expected[0], "units")[0].round().long().tolist()
    # maps="input": the totals on every pixel, for exports
    full = client.post("/api/models/imagenet_sact/image", json={"image": digest, "resolution": "native", "maps": "input"}).json()["ponder"]
    assert (len(full["total"]), len(full["total"][0])) == (height, width) and full["grid"]["dx"] == 1.0
    assert np.allclose(full["total"], trace.ponder_map((height, width))[0].numpy(), atol=1e-4)
    assert full["blocks"][0]["ponder_cost"] == ponder["blocks"][0]["ponder_cost"]  # blocks are always on their own grids


def test_no_array_twice_and_the_figures_point_at_the_numbers(served):
    client, _ = served
    answer = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0}).json()
    refs = [node for _, node in arrays(answer["figures"])]
    text = json.dumps(answer["figures"])
    assert '"$ref": "ponder.total"' in text and '"$ref": "ponder.blocks.0.ponder_cost"' in text
    for path in [part.split('"')[0] for part in text.split('"$ref": "')[1:]]:
        assert isinstance(lookup(answer, path), list)  # every reference names one of the answer's arrays
    seen = {}
    numeric = lambda node: all(isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(w, (int, float)) for w in v)) for v in node)  # noqa: E731
    for path, node in arrays(answer):
        if len(node) >= 7 and numeric(node):  # a map, a row of one: numbers are never sent twice (colour scales are no numbers)
            key = json.dumps(node)
            assert key not in seen, f"{path} repeats {seen.get(key)}"
            seen[key] = path
    assert refs and answer["input"]["image"] == "/api/models/fmnist_sact_resnet32/input/sample-0.png?resolution=train&invert=false"


def test_the_input_image_has_its_own_url(served):
    client, app = served
    answer = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 3, "invert": True}).json()
    shown = client.get(answer["input"]["image"])
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png" and "max-age" in shown.headers["cache-control"]
    image = Image.open(io.BytesIO(shown.content))
    assert image.size == (answer["input"]["width"], answer["input"]["height"]) == (28, 28)
    sample = app.state.store.get("fmnist_sact_resnet32").test_set().test_example(3)[0]
    _, expected = prepare(sample, app.state.store.get("fmnist_sact_resnet32").card.preprocess, "train", True)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert client.get("/api/models/fmnist_sact_resnet32/input/sample-99999.png").status_code == 404
    assert client.get(f"/api/models/fmnist_sact_resnet32/input/{'0' * 64}.png").status_code == 404
    assert client.get("/api/models/fmnist_sact_resnet32/input/../samples.png").status_code in (404, 422)


def test_numbers_figures_or_both(served):
    client, _ = served
    numbers = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0, "include": ["numbers"]}).json()
    figures = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0, "include": ["figures"]}).json()
    both = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0}).json()
    assert numbers["figures"] is None and numbers["ponder"]["total"] == both["ponder"]["total"]
    assert figures["ponder"] is None and "$ref" not in json.dumps(figures["figures"])
    assert figures["figures"]["map"]["data"][0]["z"] == both["ponder"]["total"]  # inline when no numbers come along
    assert client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0, "include": []}).status_code == 422


def test_answers_are_compressed_for_browsers(served):
    client, _ = served
    answer = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0}, headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert len(gzip.compress(answer.content, 5)) < len(answer.content) / 2
    plain = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 0}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json()["ponder"] == answer.json()["ponder"]


def test_the_favicon_is_served(served):
    client, _ = served
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(icon.content)).size == (32, 32)
    assert 'rel="icon"' in client.get("/").text and client.get("/static/favicon.png").content == icon.content


def test_maps_are_rounded_as_pythons_round():
    """The maps' numbers (float32, as traces hold them) are rounded on the whole array at once
    (answers._grid): exactly what Python's round(v, digits) gives for each value, ties at the
    rounded decimal and negative values included."""
    from ponderscope.core.answers import _grid

    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.rand(60, 60, generator=generator) * 12 - 2,  # ponder-like, and negatives
                        (torch.arange(3600) / 20000.0).view(60, 60),  # many values near a tie of the 4th decimal
                        torch.arange(-1800, 1800).view(60, 60) * 2.0**-11,  # k / 2048: 28 of them exactly at a tie of the 4th decimal
                        torch.randn(60, 60, generator=generator) * 1e-3])
    assert values.dtype == torch.float32
    for digits in (3, 4, 5):
        expected = [[round(v, digits) for v in row] for row in values.tolist()]
        assert _grid(values, digits) == expected
