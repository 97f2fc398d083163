"""Clear messages (issue 22, item 3): a model without a test set or held-out text says so once,
with its name and the reason (no job that fails and retries, no "None" where a name should be);
an unknown model name or id gets the closest registered names or loaded ids, not all of them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from ponderscope import models
from ponderscope.core.workloads import no_test_set
from ponderscope.server.app import create_app

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
NO_CORPUS = 'its card names no text corpus ("dataset": null) and carries no held-out statistics'
NO_DATA_SET = 'its card names no data set ("dataset": null)'


def without_data(root: Path) -> None:
    """Copies of a bundled byte LM and a dense image model whose cards name no data set (and
    carry no test metrics), as a new user's own checkpoints may."""
    for source, target in (("jargon_act_lstm", "text-no-corpus"), ("parity16_act_rnn", "parity-own")):
        shutil.copytree(CHECKPOINTS / source, root / target)
    card = models.read_card(root / "text-no-corpus")
    models.write_card(root / "text-no-corpus", {**card, "dataset": None, "metrics": {}})
    torch.manual_seed(0)
    image = models.create_model("resnet", depth=8, num_classes=3, in_channels=1, widths=[4, 8, 16])
    models.save_checkpoint(image, root / "image-no-data", {"task": {"name": "classify"}, "dataset": None, "classes": ["a", "b", "c"],
                                                           "preprocess": {"channels": 1, "input_size": [8, 8], "mean": [0.5], "std": [0.5]}})


def test_the_reasons_name_what_is_missing():
    text = json.loads((CHECKPOINTS / "jargon_act_lstm" / "card.json").read_text())
    assert no_test_set(text) is None  # the jargon corpus is known
    assert no_test_set({**text, "dataset": None}) is None  # its card carries the held-out statistics
    assert no_test_set({**text, "dataset": None, "metrics": {}}).startswith(NO_CORPUS)
    assert no_test_set({**text, "dataset": "wiki", "metrics": {}}) == "no text corpus 'wiki' here (known: jargon) and no held-out statistics in its card"
    image = {"task": {"name": "classify"}, "dataset": None}
    assert no_test_set(image) == NO_DATA_SET and "None" not in no_test_set(image)
    assert no_test_set({"task": {"name": "parity", "bits": 4}, "dataset": None}) is None  # parity vectors are drawn


def test_a_model_without_a_test_set_says_so_once_with_its_name(tmp_path):
    root = tmp_path / "ckpts"
    root.mkdir()
    without_data(root)
    with TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache")) as client:
        listed = {m["id"]: m for m in client.get("/api/models").json()}
        assert (listed["text-no-corpus"]["test_set"], listed["text-no-corpus"]["no_test_set"].startswith(NO_CORPUS)) == (False, True)
        assert (listed["image-no-data"]["test_set"], listed["image-no-data"]["no_test_set"]) == (False, NO_DATA_SET)
        assert (listed["parity-own"]["test_set"], listed["parity-own"]["no_test_set"]) == (True, None)
        for _ in range(2):  # the same answer every time: no job is started, none fails and retries
            corpus = client.get("/api/models/text-no-corpus/dataset")
            assert corpus.status_code == 404
            assert corpus.json()["detail"].startswith(f"model 'text-no-corpus' comes without a test set here: {NO_CORPUS}")
            assert corpus.json()["detail"].endswith("; type your own text in the Text view")
        assert not client.app.state.dataset_jobs.jobs
        samples = client.get("/api/models/image-no-data/samples")
        assert samples.status_code == 404
        assert samples.json()["detail"] == f"model 'image-no-data' comes without a test set here: {NO_DATA_SET}; analyse your own images (upload one)"
        answer = client.post("/api/models/text-no-corpus/text", json={"text": "hi there"})  # the model itself answers
        assert answer.status_code == 200 and len(answer.json()["chars"]) == 8


def test_an_unknown_model_name_gets_the_closest_registered_names():
    with pytest.raises(models.UnknownModelError) as caught:
        models.model_info("sact_resnet33")
    message = str(caught.value)
    close = message.split("the closest registered: ")[1].split(" (")[0].split(", ")
    assert close[0] == "sact_resnet32" and 1 <= len(close) <= 5 and set(close) <= set(models.list_models())
    assert f"({len(models.list_models())} registered: models.list_models() lists them)" in message
    assert "resnet110" not in message and "act_lstm" not in message  # not every name
    with pytest.raises(models.UnknownModelError, match="unknown model 'mamba'; no registered name is close"):
        models.create_model("mamba")


def test_an_unknown_model_id_gets_the_closest_loaded_ids(tmp_path):
    root = tmp_path / "ckpts"
    root.mkdir()
    without_data(root)
    with TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache")) as client:
        answer = client.post("/api/models/text-no-corpse/text", json={"text": "hi"})
        assert answer.status_code == 404
        assert answer.json()["detail"] == "unknown model id 'text-no-corpse'; the closest loaded: text-no-corpus (GET /api/models lists all 3)"
        study = client.get("/api/studies/sweep", params={"models": ["zzz"]})
        assert study.status_code == 404 and "no loaded id is close" in study.json()["detail"]
