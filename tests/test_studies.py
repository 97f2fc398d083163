"""What-if studies over the bundled models' test sets (ponderscope.studies, the API and the CLI):
the trained point is the card's own, the curves move the way the change must move them, and a
lesion's accuracy equals the same network with that unit's branch zeroed, evaluated separately."""
import copy
import json
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import ponderscope as ps
from ponderscope import studies
from ponderscope.server.app import create_app

pytestmark = pytest.mark.usefixtures("fashion_mnist")  # (conftest: a skip here, a failure in CI)
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("name", ["fmnist_sact_resnet32", "fmnist_aig_resnet32"])
def test_the_trained_point_is_the_cards(name):
    """The sweep measures the trained point with the card's own evaluation: over the first 500
    test images it is metrics.slice exactly; every point of the sweep marked trained is that one."""
    model = ps.load(name)
    card = model.card["metrics"]["slice"]
    measured = studies.measure(model, None, 500)
    assert (measured["accuracy"], measured["flops_ratio"]) == (card["accuracy"], card["flops_ratio"])
    points = ps.sweep(model, limit=80)
    trained = studies.measure(model, None, 80)
    marked = [p for p in points if p["trained"]]
    assert marked and all((p["accuracy"], p["flops_ratio"]) == (trained["accuracy"], trained["flops_ratio"]) for p in marked)
    assert {p["parameter"] for p in points} == ({"threshold", "cap"} if "sact" in name else {"gate_bias"})
    assert len({(p["accuracy"], p["flops_ratio"]) for p in points}) > 3  # the settings change the answers


def test_act_flops_grow_with_the_threshold_and_the_cap():
    """Per image, ACT halts at the first unit whose summed h reaches the threshold: a higher
    threshold (or cap) never halts earlier, so mean FLOPs cannot fall."""
    points = ps.sweep(ps.load("fmnist_act_resnet32"), limit=100)
    for parameter in ("threshold", "cap"):
        curve = sorted((p for p in points if p["parameter"] == parameter), key=lambda p: p["setting"])
        flops = [p["flops_ratio"] for p in curve]
        assert flops == sorted(flops) and flops[0] < flops[-1], parameter
    cap_one = next(p for p in points if p["parameter"] == "cap" and p["setting"] == 1)
    assert cap_one["mean_ponder"] == pytest.approx(6.0)  # per block N = 1 and R = 1 - 0: 2, over 3 blocks


def test_a_lesion_is_the_network_with_that_branch_zeroed():
    model = ps.load("fmnist_resnet32")
    study = ps.lesion(model, limit=120, draws=2, ks=(1, 3))
    assert [u["name"] for u in study["single"]][:3] == ["block1.unit1", "block1.unit2", "block1.unit3"]
    assert [u["name"] for u in study["single"] if u["downsampling"]] == ["block2.unit1", "block3.unit1"]
    workload = model.test_set()
    # the trained point: the unedited network over the same 120 images, evaluated separately
    assert study["trained"]["examples"] == 120
    assert study["trained"]["accuracy"] == pytest.approx(workload.evaluate(model.module, 120)["accuracy"], abs=1e-9)
    for index, (b, u) in ((4, (0, 4)), (12, (2, 2))):
        edited = copy.deepcopy(model.module)
        torch.nn.init.zeros_(edited.blocks[b].units[u].conv2.weight)
        expected = workload.evaluate(edited, 120)["accuracy"]
        assert study["single"][index]["accuracy"] == pytest.approx(expected, abs=1e-9)
        assert study["single"][index]["flops_ratio"] < 1.0
    assert [p["k"] for p in study["random"]] == [0, 1, 3] and all(len(p["accuracies"]) == 2 for p in study["random"][1:])
    assert all(p["min"] <= p["mean"] <= p["max"] for p in study["random"])
    assert len(study["single"][0]["per_class_accuracy"]) == 10


def wait(client, url, params, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        answer = client.get(url, params=params)
        if answer.status_code != 200 or answer.json()["status"] != "running":
            return answer
        time.sleep(0.5)
    raise TimeoutError(url)


def test_the_api_sweep_is_the_notebooks_with_the_dense_twin(tmp_path):
    app = create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path)
    client = TestClient(app)
    try:
        answer = wait(client, "/api/studies/sweep", {"models": ["fmnist_aig_resnet32"], "limit": 100})
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "done", body
        assert body["results"]["fmnist_aig_resnet32"] == [p.json_dict() for p in studies.sweep(ps.load("fmnist_aig_resnet32"), limit=100)]
        assert body["reference"]["label"] == "fmnist_resnet32" and body["reference"]["flops_ratio"] == pytest.approx(1.0)
        star = [t for t in body["figures"]["sweep"]["data"] if t.get("marker", {}).get("symbol") == "star"]
        trained = next(p for p in body["results"]["fmnist_aig_resnet32"] if p["trained"])
        assert star[0]["y"] == [trained["accuracy"]]
        # errors say what is wrong
        assert client.get("/api/studies/sweep", params={"models": ["nope"]}).status_code == 404
        text = client.get("/api/studies/lesion", params={"models": ["jargon_act_lstm"]})
        assert text.status_code == 400 and "image classifiers" in text.json()["detail"]
        assert client.get("/api/studies/other", params={"models": ["fmnist_resnet32"]}).status_code == 422
    finally:
        app.state.dataset_jobs.close()


def test_the_image_answer_with_a_change_is_the_changed_models(tmp_path):
    from ponderscope.models.whatif import WhatIf

    client = TestClient(create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path))
    body = {"sample": 3, "whatif": {"threshold": 0.6, "lesion": ["block3.unit2"]}}
    answer = client.post("/api/models/fmnist_sact_resnet32/image", json=body).json()
    expected = ps.analyze_image("fmnist_sact_resnet32", 3, whatif=WhatIf(threshold=0.6, lesion=("block3.unit2",))).json_dict()
    trained = client.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 3}).json()
    assert answer["flops"] == expected["flops"] and answer["ponder"]["total"] == expected["ponder"]["total"]
    assert answer["flops"]["ratio"] < trained["flops"]["ratio"] and answer["whatif"]["threshold"] == 0.6 and trained["whatif"] is None
    refused = client.post("/api/models/fmnist_resnet32/image", json={"sample": 0, "whatif": {"cap": 2}})
    assert refused.status_code == 400 and "cap does not apply" in refused.json()["detail"]
    unknown = client.post("/api/models/fmnist_aig_resnet32/image", json={"sample": 0, "whatif": {"lesion": ["block1.unit1"]}})
    assert unknown.status_code == 400 and "no unit block1.unit1" in unknown.json()["detail"]


def test_the_cli_writes_the_figure_and_its_numbers(tmp_path, capsys):
    """The file's numbers are the library's: each measured here over the same 40 test images."""
    from ponderscope.cli import main
    from ponderscope.models.whatif import WhatIf

    out = tmp_path / "sweep.json"
    main(["study", "sweep", "fmnist_aig_resnet32", "fmnist_resnet32", "--limit", "40", "--out", str(out)])
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"fmnist_aig_resnet32"} and data["reference"]["label"] == "fmnist_resnet32"
    dense = studies.measure(ps.load("fmnist_resnet32"), None, 40)
    assert data["reference"]["accuracy"] == dense["accuracy"] and data["reference"]["flops_ratio"] == pytest.approx(dense["flops_ratio"], rel=1e-12)
    diamond = [t for t in data["figure"]["data"] if t.get("marker", {}).get("symbol") == "diamond"]
    assert [(t["x"], t["y"]) for t in diamond] == [([data["reference"]["flops_ratio"]], [data["reference"]["accuracy"]])]
    aig = ps.load("fmnist_aig_resnet32")
    points = data["results"]["fmnist_aig_resnet32"]
    trained = studies.measure(aig, None, 40)
    assert [(p["accuracy"], p["flops_ratio"]) for p in points if p["trained"]] == [(trained["accuracy"], pytest.approx(trained["flops_ratio"], rel=1e-12))]
    most_closed = max(points, key=lambda p: p["setting"])  # the largest gate bias: a moved point
    moved = studies.measure(aig, WhatIf(gate_bias=most_closed["setting"]), 40)
    assert (most_closed["accuracy"], most_closed["flops_ratio"]) == (moved["accuracy"], pytest.approx(moved["flops_ratio"], rel=1e-12))
    assert moved["flops_ratio"] < trained["flops_ratio"] and all(p["examples"] == 40 for p in points)
