"""The worked examples of docs/own-models.md beside PonderNet (tests/test_plugins.py): a per-image
gated CNN and a per-position exit CNN, each loaded from its plugin file and its committed
checkpoint, served (an upload through the API) and drawn (the answer's figures, the dataset
view's figures), the numbers compared with what the model's own Trace says, computed here
independently of ponderscope/core/answers.py. And the doc's checkpoint snippet, run as written."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from ponderscope import figures, models
from ponderscope.core.imaging import prepare
from ponderscope.core.statistics import image_records, model_names, summarize
from ponderscope.plugins import load_plugins
from ponderscope.server.app import create_app
from ponderscope.server.references import resolve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
GATED, POSITION = EXAMPLES / "gated_cnn", EXAMPLES / "position_exit"
GATED_ID, POSITION_ID = "fmnist_gated_cnn", "fmnist_position_exit"
DOC = ROOT / "docs" / "own-models.md"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    load_plugins([GATED / "gated_cnn.py", POSITION / "position_exit.py"])
    app = create_app([GATED, POSITION], device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(app) as c:
        yield c


def trouser_png() -> bytes:
    """A light trouser-like shape on black, 40x40 (the server resizes it to the card's 28x28)."""
    image = Image.new("L", (40, 40), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle([12, 4, 27, 12], fill=210)
    draw.rectangle([12, 12, 18, 36], fill=190)
    draw.rectangle([21, 12, 27, 36], fill=190)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def served(client, model_id: str) -> tuple[dict, object, torch.Tensor]:
    """The server's answer for the upload, and the model's own trace of the same prepared input."""
    response = client.post(f"/api/models/{model_id}/image", files={"file": ("trousers.png", trouser_png(), "image/png")})
    assert response.status_code == 200, response.text
    entry = client.app.state.store.get(model_id)
    x, _ = prepare(Image.open(io.BytesIO(trouser_png())), entry.card.preprocess)
    with torch.no_grad():
        trace = entry.module.trace(x)
    return resolve(response.json()), trace, x


def test_both_examples_are_listed_with_their_declared_families(client):
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert client.get("/api/health").json()["load_errors"] == []
    gated, position = listed[GATED_ID], listed[POSITION_ID]
    assert (gated["family"], gated["family_label"], gated["reference"]) == ("gated-cnn", "gated CNN (per-image gates)", False)
    assert gated["family_description"].startswith("decides per image")
    assert (position["family"], position["family_label"]) == ("position-exit", "per-position exit CNN")
    for card in (gated, position):  # trained by ponderscope train on Fashion-MNIST, measured on its 10,000 test images
        test = card["metrics"]["test"]
        assert test["examples"] == 10000 and test["accuracy"] > 0.8 and 0.3 < test["flops_ratio"] < 0.95, card["id"]
    assert position["metrics"]["test"]["mean_ponder"] < 4  # E N below the 4 units it has


def test_the_gated_example_is_served_and_drawn_with_its_traces_numbers(client):
    answer, trace, x = served(client, GATED_ID)
    p = trace.gates[0].tolist()
    names = [f"stage{s}.{b}" for s in (1, 2) for b in range(3)]
    gates = answer["gates"]
    assert gates["layers"] == names  # the model's gate_names, not renumbered
    assert gates["probability"] == [round(v, 4) for v in p]
    assert gates["executed"] == [v > 0.5 for v in p]  # the example's rule: a block runs iff p > 1/2
    assert answer["ponder"] is None
    # FLOPs from the layers' shapes: stem at 14x14, three 16-channel blocks, the stride-2 conv to 7x7, three 32-channel blocks
    block = [2 * 2 * 14 * 14 * 16 * 16 * 9] * 3 + [2 * 2 * 7 * 7 * 32 * 32 * 9] * 3
    gate = [2 * 16] * 3 + [2 * 32] * 3
    fixed = 2 * 14 * 14 * 16 * 9 + 2 * 7 * 7 * 32 * 16 * 9 + 2 * 32 * 10
    executed = fixed + sum(b for b, run in zip(block, gates["executed"]) if run) + sum(gate)
    assert answer["flops"]["executed"] == pytest.approx(executed, rel=1e-6)
    assert answer["flops"]["dense"] == pytest.approx(fixed + sum(block) + sum(gate), rel=1e-9)
    assert answer["prediction"][0]["index"] == int(trace.logits[0].argmax())
    # drawn: the gate chart's bars are the trace's probabilities, split by executed; no map, the input alone
    bars = {t["name"]: t for t in answer["figures"]["gates"]["data"]}
    assert bars["executed"]["x"] == [n for n, v in zip(names, p) if v > 0.5]
    assert bars["executed"]["y"] == [round(v, 4) for v in p if v > 0.5]
    assert bars["skipped"]["x"] == [n for n, v in zip(names, p) if v <= 0.5]
    assert answer["figures"]["map"]["data"] == [] and "blocks" not in answer["figures"]
    assert f"{sum(v > 0.5 for v in p)} of 6 gated blocks executed" in answer["figures"]["gates"]["layout"]["title"]["text"]


def test_the_position_exit_example_is_served_and_drawn_with_its_traces_numbers(client):
    answer, trace, x = served(client, POSITION_ID)
    [block] = trace.blocks
    cost, units = block.ponder_cost[0], block.units[0]
    assert block.halting is None and block.probabilities is None  # the contract's optional fields, left out
    assert units.min() >= 1 and units.max() <= 4 and len(set(units.flatten().tolist())) > 1  # positions exit at different units
    ponder = answer["ponder"]
    [shown] = ponder["blocks"]
    assert shown["n_units"] is None  # the trace does not say how many units the block has
    assert shown["ponder_cost"] == [[round(v, 4) for v in row] for row in cost.tolist()]
    assert shown["units"] == units.tolist()
    # one block: the totals are its own maps on its own 14x14 grid, each cell 2 input pixels wide
    assert ponder["total"] == shown["ponder_cost"] and ponder["units_total"] == shown["units"]
    assert ponder["grid"] == shown["grid"] == {"height": 14, "width": 14, "x0": 1.0, "dx": 2.0, "y0": 1.0, "dy": 2.0}
    assert ponder["mean"] == pytest.approx(float(cost.double().mean()), rel=1e-5)
    assert ponder["mean_units"] == pytest.approx(units.double().mean().item(), rel=1e-6)  # (averaged in float32)
    assert (ponder["min"], ponder["max"]) == (min(map(min, ponder["total"])), max(map(max, ponder["total"])))
    # FLOPs: the stem and the classifier, then every unit each position ran (two 3x3 convolutions and the 1x1 exit)
    per_position = 2 * (16 * 16 * 9) * 2 + 2 * 16
    fixed = 2 * 14 * 14 * 16 * 9 + 2 * 16 * 10
    assert answer["flops"]["executed"] == pytest.approx(fixed + int(units.sum()) * per_position, rel=1e-6)
    assert answer["flops"]["dense"] == pytest.approx(fixed + 4 * 196 * per_position, rel=1e-9)
    # drawn: the map is the trace's E N over the input, on its own colour range; the block's title has no unit count
    [heat] = answer["figures"]["map"]["data"]
    assert heat["z"] == ponder["total"] and (heat["x0"], heat["dx"], heat["zmin"], heat["zmax"]) == (1.0, 2.0, ponder["min"], ponder["max"])
    title = answer["figures"]["blocks"]["layout"]["annotations"][0]["text"]
    assert title == f"block 1 (14×14)<br>N+R {float(cost.mean()):.2f}, N {units.double().mean().item():.2f}"
    units_answer = client.post(f"/api/models/{POSITION_ID}/image", json={"image": answer["input"]["hash"], "maps": "input"}).json()
    assert len(units_answer["ponder"]["total"]) == 28  # the totals on the input's pixels: each cell over 2 x 2 pixels
    assert units_answer["ponder"]["total"][5][9] == shown["ponder_cost"][2][4]


@pytest.mark.usefixtures("fashion_mnist")
@pytest.mark.parametrize("model_id", [GATED_ID, POSITION_ID])
def test_the_dataset_views_figures_are_the_traces_numbers(client, model_id):
    """The dataset view's statistics and figures (what the server's dataset job computes) over the
    first 200 test images, against the model's own traces of the same images."""
    entry = client.app.state.store.get(model_id)
    workload = entry.test_set()
    records = image_records(lambda images: entry.trace(images, background=True)[0], workload.test_batches(100, limit=200))
    result = summarize(records, entry.card.classes, workload.thumbnail, model_names(entry.module), model_id)
    drawn = figures.dataset_dicts(result)
    labels, traces = [], []
    for _, images, targets in workload.test_batches(100, limit=200):
        with torch.no_grad():
            traces.append(entry.module.trace(images))
        labels += targets.tolist()
    labels = torch.tensor(labels)
    flops = torch.cat([t.flops for t in traces]).double() / traces[0].dense_flops
    assert result.examples == 200 and result.flops_ratio == pytest.approx(float(flops.mean()), rel=1e-5)
    present = [c for c in range(10) if (labels == c).any()]
    if model_id == GATED_ID:
        executed = torch.cat([t.executed for t in traces]).double()
        rates = drawn["class_layer"]["data"][0]
        assert rates["x"] == entry.module.gate_names and "gated layer" in drawn["class_layer"]["layout"]["title"]["text"]
        for c in present:
            assert rates["z"][c] == pytest.approx(executed[labels == c].mean(0).tolist(), abs=1e-6)
        assert "ponder" not in drawn
    else:
        ponder = torch.cat([t.blocks[0].ponder_cost.double().mean((1, 2)) for t in traces])
        bars = drawn["ponder"]["data"][0]
        for c in present:
            assert bars["y"][c] == pytest.approx(float(ponder[labels == c].mean()), rel=1e-5)
        assert sum(drawn["ponder_histogram"]["data"][0]["y"]) == 200 and "class_layer" not in drawn


def doc_snippet() -> str:
    """The Python block of docs/own-models.md that writes a checkpoint (after its marker)."""
    text = DOC.read_text(encoding="utf-8")
    after = text.split("<!-- own-models:checkpoint-snippet -->", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_docs_checkpoint_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # the snippet names the example plugin by its path in a checkout
    namespace: dict = {}
    exec(compile(doc_snippet(), str(DOC), "exec"), namespace)
    folder = tmp_path / "my_checkpoints" / "gated"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]
    card = models.read_card(folder)
    assert (card["model"], card["model_kwargs"], card["task"]) == ("gated_cnn", {"widths": [8, 16], "blocks": 2}, {"name": "classify"})
    loaded = namespace["loaded"]
    assert (loaded.family, loaded.kind, loaded.card.dataset) == ("gated-cnn", "image", "fashion-mnist")
    assert capsys.readouterr().out == "gated-cnn image Task(name='classify', bits=None)\n"
    x, _ = prepare(Image.open(io.BytesIO(trouser_png())), loaded.card.preprocess)
    trace, _ = loaded.trace(x)  # the saved weights answer as the model in memory did
    with torch.no_grad():
        assert torch.equal(trace.logits, namespace["model"].trace(x).logits)
    assert math.isclose(trace.dense_flops, loaded.module.trace(x).dense_flops)
