"""The two families beyond the three papers through the generic contract (issue 24): an early-exit
ResNet (Trace.exit_confidence / exit_taken) and an A-ViT (per-token ponder on a 6x6 patch grid,
one BlockTrace per layer group), each with its reference twin, served by the real app and drawn
by ponderscope.figures. Every number is checked against the models' own computation done here
independently: the exits by the plain rule over every exit's logits (EarlyExitResNet.every_exit),
the maps by the module's trace, the sweeps by running each setting over the same images.

The checkpoints are tiny and untrained (tests/browser_support.py), made in the test."""
from __future__ import annotations

import io
import math
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ponderscope import figures, models
from ponderscope.core.imaging import prepare
from ponderscope.core import statistics
from ponderscope.core.statistics import image_records, model_names, summarize
from ponderscope.models.contract import TraceContractError, check_trace, declarations
from ponderscope.models.whatif import WhatIf, applied
from ponderscope.server.app import create_app
from ponderscope.server.references import resolve
from tests.browser_support import EXIT_THRESHOLD, make_tiny_exit_and_token_checkpoints

pytestmark = pytest.mark.usefixtures("fashion_mnist", "mnist")

N = 300  # test images the dataset statistics are checked over


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit-token")
    ids = make_tiny_exit_and_token_checkpoints(root / "checkpoints")
    app = create_app([root / "checkpoints"], device="cpu", cache_dir=root / "cache")
    with TestClient(app) as client:
        client.ids = ids
        yield client


def entry(client, role: str):
    return client.app.state.store.get(client.ids[role])


def sample_input(model, index: int) -> torch.Tensor:
    """Test image `index` as the route prepares it (the card's preprocess, training size)."""
    image, _, _ = model.test_set().test_example(index)
    return prepare(image, model.card.preprocess)[0]


def plain_exits(module, x: torch.Tensor, threshold: float):
    """The exit rule written plainly over every exit's logits: per image the confidences of the
    exits it reached (None after the one it left at), the exit taken and its logits."""
    with torch.no_grad():
        every = [logits.softmax(-1) for logits in module.every_exit(x)]
    rows = []
    for i in range(x.shape[0]):
        confidence = [float(p[i].max()) for p in every]
        taken = next((s for s, c in enumerate(confidence[:-1]) if c >= threshold), len(every) - 1)
        rows.append({"confidence": [c if s <= taken else None for s, c in enumerate(confidence)], "taken": taken,
                     "pred": int(every[taken][i].argmax())})
    return rows


def until_done(client, url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["status"] != "running":
            assert body["status"] == "done", body
            return body
        time.sleep(0.2)
    pytest.fail(f"{url} did not finish")


# ------------------------------------------------------------------ early exits: the image answer
@pytest.mark.parametrize("whatif", [None, 0.3, 0.9])
def test_the_exits_of_an_image_are_the_plain_rules(client, whatif):
    model = entry(client, "exit")
    threshold = EXIT_THRESHOLD if whatif is None else whatif
    taken_seen = set()
    for index in range(6):
        body = {"sample": index, **({"whatif": {"threshold": whatif}} if whatif is not None else {})}
        answer = resolve(client.post(f"/api/models/{model.id}/image", json=body).json())
        expected = plain_exits(model.module, sample_input(model, index), threshold)[0]
        exits = answer["exits"]
        assert exits["names"] == model.module.exit_names == ["after stage 1", "after stage 2", "after stage 3"]
        assert exits["taken"] == expected["taken"] and exits["threshold"] == pytest.approx(threshold)
        assert [c is None for c in exits["confidence"]] == [c is None for c in expected["confidence"]]
        assert [c for c in exits["confidence"] if c is not None] == pytest.approx([c for c in expected["confidence"] if c is not None], abs=1e-5)
        assert answer["prediction"][0]["index"] == expected["pred"]
        costs, dense = model.module.exit_costs(sample_input(model, index))
        assert answer["flops"]["ratio"] == pytest.approx(costs[expected["taken"]] / dense, rel=1e-6)  # the FLOPs spent: stages and heads up to the exit
        assert answer["ponder"] is None and answer["gates"] is None
        taken_seen.add(exits["taken"])

        # the figure: the exit taken in its own colour, the others reached in grey, the rest marked not reached, the threshold a line
        drawn = {t["name"]: t for t in answer["figures"]["exits"]["data"]}
        names = exits["names"]
        assert drawn["exit taken"]["x"] == [names[expected["taken"]]] and drawn["exit taken"]["y"] == [exits["confidence"][expected["taken"]]]
        assert drawn["passed by"]["x"] == names[: expected["taken"]]
        assert drawn.get("not reached", {"x": []})["x"] == names[expected["taken"] + 1:]
        line = answer["figures"]["exits"]["layout"]["shapes"][0]
        assert line["y0"] == line["y1"] == pytest.approx(threshold)
        assert answer["figures"]["exits"]["layout"]["title"]["text"].startswith(f"Exit confidence: left at exit {expected['taken'] + 1} of 3 ({names[expected['taken']]})")
        assert answer["figures"]["map"]["data"] == []  # no map: the input alone
    if whatif is None:
        assert len(taken_seen) > 1, "the tiny model should send these images to different exits"


def test_the_exit_threshold_is_described_in_the_models_words(client):
    summary = client.get(f"/api/models/{client.ids['exit']}").json()
    assert summary["whatif"]["threshold"] == EXIT_THRESHOLD and "cap" not in summary["whatif"]
    assert summary["whatif"]["about"]["threshold"]["label"] == "exit confidence threshold"
    assert summary["family"] == "early-exit" and summary["reference"] is False
    reference = client.get(f"/api/models/{client.ids['exit_reference']}").json()
    assert reference["reference"] is True and "about" not in (reference["whatif"] or {})  # units only: nothing to describe


# ------------------------------------------------------------------ early exits: the dataset view, the card's metrics
def test_the_exit_distribution_per_class_is_the_traces(client):
    model = entry(client, "exit")
    workload = model.test_set()
    records = image_records(lambda images: model.trace(images, background=True)[0], workload.test_batches(100, limit=N))
    result = summarize(records, model.card.classes, workload.thumbnail, model_names(model.module), model.id)

    rows, labels = [], []
    for _, images, targets in workload.test_batches(100, limit=N):
        rows += plain_exits(model.module, images, EXIT_THRESHOLD)
        labels += targets.tolist()
    taken, labels = torch.tensor([r["taken"] for r in rows]), torch.tensor(labels)
    correct = torch.tensor([r["pred"] for r in rows]) == labels
    exits = 3
    assert result.exits == ["after stage 1", "after stage 2", "after stage 3"]
    assert result.exit_rates == pytest.approx([float((taken == e).float().mean()) for e in range(exits)], abs=1e-7)
    for c in range(10):
        mine = taken[labels == c]
        assert result.class_exit_rates[c] == pytest.approx([float((mine == e).float().mean()) for e in range(exits)], abs=1e-7)
    for e in range(exits):
        leaving = taken == e
        assert result.exit_accuracy[e] == (None if not leaving.any() else pytest.approx(float(correct[leaving].float().mean()), abs=1e-7))
    assert sum(result.exit_rates) == pytest.approx(1.0) and len({tuple(r) for r in result.class_exit_rates}) > 1  # classes leave differently

    drawn = figures.dataset_dicts(result)
    heat = drawn["class_exit"]["data"][0]
    assert heat["z"] == result.class_exit_rates and heat["y"] == model.card.classes and heat["x"] == result.exits
    assert drawn["class_exit"]["layout"]["yaxis"]["tickvals"] == model.card.classes  # every class named
    bars, accuracy = drawn["exits"]["data"]
    assert bars["y"] == result.exit_rates and bars["x"] == result.exits and accuracy["y"] == result.exit_accuracy
    assert "class_layer" not in drawn and "ponder" not in drawn

    # the cards' vocabulary (what `ponderscope eval` writes): the same numbers
    metrics = statistics.test_metrics(records, 10)
    assert metrics["exit_rates"] == result.exit_rates and metrics["class_exit_rates"] == result.class_exit_rates
    assert metrics["mean_exit"] == pytest.approx(float(taken.float().mean()) + 1.0)


def test_ponderscope_eval_writes_the_exit_rates_into_the_card(client):
    from ponderscope.training.evaluate import evaluate_model

    model = entry(client, "exit")
    metrics = evaluate_model(str(model.path), slice_only=True, write=False)["slice"]
    rows = []
    for _, images, _ in model.test_set().test_batches(250, limit=500):
        rows += plain_exits(model.module, images, EXIT_THRESHOLD)
    taken = torch.tensor([r["taken"] for r in rows])
    assert metrics["examples"] == 500
    assert metrics["exit_rates"] == pytest.approx([float((taken == e).float().mean()) for e in range(3)], abs=1e-7)
    assert len(metrics["class_exit_rates"]) == 10 and all(len(row) == 3 for row in metrics["class_exit_rates"])


def test_the_dataset_job_answers_the_exit_distribution(client):
    model = entry(client, "exit")
    result = until_done(client, f"/api/models/{model.id}/dataset")["result"]
    assert result["exits"] == model.module.exit_names and len(result["class_exit_rates"]) == 10
    assert sum(result["exit_rates"]) == pytest.approx(1.0)
    assert set(result["figures"]) >= {"exits", "class_exit", "class", "flops_histogram"}
    assert result["figures"]["class_exit"]["data"][0]["z"] == result["class_exit_rates"]


# ------------------------------------------------------------------ A-ViT: the map over the image
def test_the_avit_map_lies_on_its_patch_grid_named_by_layer_group(client):
    model = entry(client, "avit")
    assert model.module.block_names == ["layers 1–2", "layers 3–4"]
    x = sample_input(model, 3)
    answer = resolve(client.post(f"/api/models/{model.id}/image", json={"sample": 3}).json())
    with torch.no_grad():
        trace = model.module.trace(x)
    ponder = answer["ponder"]
    assert [b["name"] for b in ponder["blocks"]] == model.module.block_names
    for block, own in zip(ponder["blocks"], trace.blocks):
        assert block["grid"] == {"height": 6, "width": 6, "x0": 5.0, "dx": 10.0, "y0": 5.0, "dy": 10.0}  # a 10x10 patch a cell
        assert torch.tensor(block["ponder_cost"]) == pytest.approx(own.ponder_cost[0], abs=1e-4)
        assert block["units"] == own.units[0].round().long().tolist() and block["n_units"] == 2  # two layers a group
    assert torch.tensor(ponder["total"]) == pytest.approx(trace.ponder_map()[0], abs=1e-4)
    assert ponder["grid"]["dx"] == 10.0 and len(ponder["total"]) == 6
    assert max(map(max, ponder["total"])) > min(map(min, ponder["total"])), "the tiny model's map is flat"

    drawn = answer["figures"]
    total = drawn["map"]["data"][0]
    assert total["z"] == ponder["total"] and (total["x0"], total["dx"], total["y0"], total["dy"]) == (5.0, 10.0, 5.0, 10.0)
    assert drawn["map"]["layout"]["title"]["text"] == f"{model.id}: ponder cost N+R, summed over layers 1–2 + layers 3–4"
    assert drawn["map"]["layout"]["images"][0]["sizex"] == 60 == drawn["map"]["layout"]["images"][0]["sizey"]
    panels = [a["text"] for a in drawn["blocks"]["layout"]["annotations"]]
    assert [p.split("<br>")[0] for p in panels] == ["layers 1–2 (6×6)", "layers 3–4 (6×6)"]
    assert "block" not in " ".join(panels) + drawn["map"]["layout"]["title"]["text"]
    assert [(t["x0"], t["dx"]) for t in drawn["blocks"]["data"]] == [(5.0, 10.0), (5.0, 10.0)]


def test_a_model_of_one_input_size_answers_a_native_request_at_its_training_size(client, tmp_path):
    model = entry(client, "avit")
    image = Image.new("L", (93, 71), 0)
    image.paste(255, (30, 20, 60, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    answer = client.post(f"/api/models/{model.id}/image", files={"file": ("odd.png", buffer.getvalue(), "image/png")},
                         data={"resolution": "native"})
    assert answer.status_code == 200, answer.text
    shown = answer.json()["input"]
    assert (shown["width"], shown["height"], shown["resolution"]) == (60, 60, "train")
    assert "60×60 images only" in shown["resolution_note"] and "resolution=train" in shown["image"]
    x = prepare(image, model.card.preprocess, "train")[0]
    with torch.no_grad():
        assert answer.json()["flops"]["executed"] == pytest.approx(float(model.module.trace(x).flops[0]), rel=1e-6)
    png = client.get(f"/api/models/{model.id}/input/{shown['hash']}.png?resolution=native")  # the image URL asked for native: the same 60x60
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (60, 60)
    # a model of any size runs at the image's own
    exits = client.post(f"/api/models/{client.ids['exit']}/image", json={"image": shown["hash"], "resolution": "native"}).json()["input"]
    assert (exits["width"], exits["height"], exits["resolution"], exits["resolution_note"]) == (93, 71, "native", None)


def test_a_card_whose_input_size_is_not_the_models_fixed_one_is_a_load_error(tmp_path):
    torch.manual_seed(0)
    vit = models.create_model("vit", num_classes=10, in_channels=1, image_size=60, patch=10, dim=16, depth=2, heads=2)
    models.save_checkpoint(vit.eval(), tmp_path / "wrong", {"task": {"name": "classify"}, "dataset": None, "classes": None,
                                                             "preprocess": {"input_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5]}})
    with pytest.raises(models.CheckpointError, match=r"preprocess.input_size must be \[60, 60\], the one input size model 'vit' takes"):
        models.load_checkpoint(tmp_path / "wrong")


# ------------------------------------------------------------------ the contract's names and exits
def exit_trace(b=2, exits=3, taken=None):
    from ponderscope.models import Trace

    return Trace(logits=torch.randn(b, 10), flops=torch.ones(b), dense_flops=2.0, exit_confidence=torch.rand(b, exits),
                 exit_taken=torch.zeros(b, dtype=torch.long) if taken is None else taken)


def test_the_contract_checks_the_exits_names_and_the_blocks_names():
    x = torch.zeros(2, 1, 8, 8)
    check_trace(exit_trace(), "classify", x, exit_names=["a", "b", "c"])
    with pytest.raises(TraceContractError, match=r"Trace.exit_confidence: expected \[B, E\] with E = 2, the length of the model's exit_names, "
                                                 r"got E = 3 \(exit_names: 2 names\)"):
        check_trace(exit_trace(), "classify", x, exit_names=["a", "b"])
    with pytest.raises(TraceContractError, match=r"Trace.exit_taken: expected int \[B\], each an exit 0..2 .* got exits 3"):
        check_trace(exit_trace(taken=torch.tensor([0, 3])), "classify", x)
    with pytest.raises(TraceContractError, match="exit_names: a list of strings"):
        check_trace(exit_trace(), "classify", x, exit_names="abc")
    avit = models.create_model("avit", num_classes=10, in_channels=1, image_size=24, patch=4, dim=16, depth=4, heads=2).eval()
    with torch.no_grad():
        trace = avit.trace(torch.zeros(1, 1, 24, 24))
    check_trace(trace, "classify", torch.zeros(1, 1, 24, 24), **declarations(avit))
    with pytest.raises(TraceContractError, match=r"Trace.blocks: expected a list of n BlockTrace with n = 3, the length of the model's block_names"):
        check_trace(trace, "classify", torch.zeros(1, 1, 24, 24), block_names=["a", "b", "c"])


def test_an_exit_threshold_out_of_range_is_a_422_not_a_500(client):
    model = entry(client, "exit")
    module = model.module
    saved = module.threshold
    module.threshold = 1.5  # what exit_threshold reads when no what-if is in force
    try:
        answer = client.post(f"/api/models/{model.id}/image", json={"sample": 0})
    finally:
        module.threshold = saved
    assert answer.status_code == 422 and "exit_threshold: a number in [0, 1]" in answer.json()["detail"]


# ------------------------------------------------------------------ what-if sweeps, each against its reference
def test_the_exit_threshold_sweep_is_the_rule_over_the_same_images(client):
    model, reference = entry(client, "exit"), entry(client, "exit_reference")
    status = until_done(client, f"/api/studies/sweep?models={model.id}&limit=100")
    points = status["results"][model.id]
    assert {p["parameter"] for p in points} == {"threshold"} and {p["label"] for p in points} == {"exit confidence threshold"}
    images, labels = next(iter(model.test_set().test_batches(100, limit=100)))[1:]
    costs, dense = model.module.exit_costs(images[:1])
    for point in points:
        rows = plain_exits(model.module, images, point["setting"])
        assert point["accuracy"] == pytest.approx(float((torch.tensor([r["pred"] for r in rows]) == labels).float().mean()), abs=1e-7)
        assert point["flops_ratio"] == pytest.approx(sum(costs[r["taken"]] for r in rows) / len(rows) / dense, rel=1e-5)
        assert point["trained"] == (point["setting"] == EXIT_THRESHOLD)
    assert len({p["flops_ratio"] for p in points}) > 2  # the threshold moves the FLOPs
    assert status["reference"]["label"] == reference.id and status["reference"]["flops_ratio"] == pytest.approx(1.0)
    names = [t["name"] for t in status["figures"]["sweep"]["data"]]
    assert names == [f"{model.id}: exit confidence threshold", f"{model.id}: trained", f"{reference.id} (reference)"]


def test_the_avit_halting_threshold_sweep_against_its_vit(client):
    model, vit = entry(client, "avit"), entry(client, "vit")
    status = until_done(client, f"/api/studies/sweep?models={model.id}&limit=100")
    points = status["results"][model.id]
    labels = {p["parameter"]: p["label"] for p in points}
    assert labels == {"threshold": "halting threshold 1 - eps", "cap": "layers per token, at most"}
    images, targets = next(iter(model.test_set().test_batches(100, limit=100)))[1:]
    for point in [p for p in points if p["parameter"] == "threshold" and p["setting"] in (0.5, 0.9)] + [p for p in points if p["parameter"] == "cap"][:1]:
        with applied(model.module, WhatIf(**{point["parameter"]: point["setting"]})), torch.no_grad():
            trace = model.module.trace(images)
        assert point["accuracy"] == pytest.approx(float((trace.logits.argmax(-1) == targets).float().mean()), abs=1e-7)
        assert point["flops_ratio"] == pytest.approx(float(trace.flops.mean()) / trace.dense_flops, rel=1e-5)
    assert status["reference"]["label"] == vit.id and status["reference"]["flops_ratio"] == pytest.approx(1.0)
    names = [t["name"] for t in status["figures"]["sweep"]["data"]]
    assert names == [f"{model.id}: halting threshold 1 - eps", f"{model.id}: layers per token, at most", f"{model.id}: trained", f"{vit.id} (reference)"]
    # no units to remove: a lesion study says so at once
    lesion = client.get(f"/api/studies/lesion?models={model.id}&limit=100")
    assert lesion.status_code == 400 and "has no removable units" in lesion.json()["detail"]
    # the Image view's what-if: a cap of one layer per token, every token's N is 1 in the first group and 0 after
    capped = client.post(f"/api/models/{model.id}/image", json={"sample": 0, "whatif": {"cap": 1}}).json()
    assert [b["units"] for b in capped["ponder"]["blocks"]] == [[[1] * 6] * 6, [[0] * 6] * 6]
    assert capped["whatif"]["cap"] == 1 and math.isclose(capped["ponder"]["mean_units"], 1.0)


def test_the_avit_dataset_view_has_its_per_class_ponder(client):
    """The Dataset view of the A-ViT (any per-position model's): the mean ponder per class over the
    test set, against its own traces of the same images."""
    model = entry(client, "avit")
    result = until_done(client, f"/api/models/{model.id}/dataset")["result"]
    ponder, labels = [], []
    for _, images, targets in model.test_set().test_batches(500):
        with torch.no_grad():
            ponder.append(model.module.trace(images).mean_ponder())
        labels.append(targets)
    ponder, labels = torch.cat(ponder), torch.cat(labels)
    assert result["examples"] == len(labels) == 2000 and result["exits"] is None and "class_exit" not in result["figures"]
    assert [c["mean_ponder"] for c in result["per_class"]] == pytest.approx([float(ponder[labels == c].mean()) for c in range(10)], rel=1e-5)
    assert result["mean_ponder"] == pytest.approx(float(ponder.mean()), rel=1e-5)
    assert result["figures"]["ponder"]["data"][0]["y"] == [c["mean_ponder"] for c in result["per_class"]]
