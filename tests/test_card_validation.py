"""Issue 11, "no 500 for anything a checkpoint can cause": every card field a request reads is
checked when the checkpoint loads (models/checkpoint.py). A bad card is one line in the server's
load_errors, naming the field; the other checkpoints are served; no request on the bad id is a 500."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import missing_data
from ponderscope import models
from ponderscope.server.app import create_app

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
GOOD = "fmnist_sact_resnet32"


DELETE = object()


def edit(**changes):
    """Edit the card: key=value sets a field (`__` separates nested keys), key=DELETE removes it."""
    def apply(folder: Path) -> None:
        card = models.read_card(folder)
        for key, value in changes.items():
            *parents, last = key.split("__")
            target = card
            for parent in parents:
                target = target[parent]
            if value is DELETE:
                target.pop(last, None)
            else:
                target[last] = value
        models.write_card(folder, card)
    return apply


def literal(key: str, text: str):
    """Set a field to JSON text that json.dumps does not write (NaN, 1e400, "\\ud800", deep nesting)."""
    def apply(folder: Path) -> None:
        edit(**{key: "@@literal@@"})(folder)
        path = folder / "card.json"
        path.write_text(path.read_text(encoding="utf-8").replace('"@@literal@@"', text), encoding="utf-8")
    return apply


def five_outputs(folder: Path) -> None:
    """A 5-class network whose card names Fashion-MNIST (10 classes) as its test set."""
    card = models.read_card(folder)
    model = models.create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=5)
    models.save_checkpoint(model, folder, {k: v for k, v in card.items() if k not in ("model", "model_kwargs", "classes")})


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


IMAGE, PARITY, TEXT = GOOD, "parity16_rnn", "jargon_lstm"
CASES = [
    # (id, checkpoint copied, edit, what the load error must name)
    ("channels-2", IMAGE, edit(preprocess__channels=2), "preprocess.channels"),
    ("channels-string", IMAGE, edit(preprocess__channels="1"), "preprocess.channels"),
    ("channels-not-the-model's", IMAGE, edit(preprocess__channels=3, preprocess__mean=[0.3] * 3, preprocess__std=[0.3] * 3), "preprocess.channels"),
    ("input_size-one-side", IMAGE, edit(preprocess__input_size=[28]), "preprocess.input_size"),
    ("input_size-zero", IMAGE, edit(preprocess__input_size=[0, 28]), "preprocess.input_size"),
    ("input_size-huge", IMAGE, edit(preprocess__input_size=[28, 100_000]), "preprocess.input_size"),
    ("input_size-float", IMAGE, edit(preprocess__input_size=[28.5, 28]), "preprocess.input_size"),
    ("resize-unknown", IMAGE, edit(preprocess__resize="bicubic"), "preprocess.resize"),
    ("crop_fraction-zero", IMAGE, edit(preprocess__resize="center_crop_fraction", preprocess__crop_fraction=0), "preprocess.crop_fraction"),
    ("crop_fraction-over-one", IMAGE, edit(preprocess__crop_fraction=1.5), "preprocess.crop_fraction"),
    ("crop_fraction-string", IMAGE, edit(preprocess__resize="center_crop_fraction", preprocess__crop_fraction="0.875"), "preprocess.crop_fraction"),
    ("resize_shorter-zero", IMAGE, edit(preprocess__resize="shorter_then_center_crop", preprocess__resize_shorter=0), "preprocess.resize_shorter"),
    ("resize_shorter-float", IMAGE, edit(preprocess__resize="shorter_then_center_crop", preprocess__resize_shorter=32.0), "preprocess.resize_shorter"),
    ("normalize-unknown", IMAGE, edit(preprocess__normalize="zscore"), "preprocess.normalize"),
    ("mean-missing", IMAGE, edit(preprocess__mean=DELETE), "preprocess.mean"),
    ("mean-per-channel", IMAGE, edit(preprocess__mean=[0.1, 0.2]), "preprocess.mean"),
    ("mean-strings", IMAGE, edit(preprocess__mean=["0.1"]), "preprocess.mean"),
    ("mean-infinite", IMAGE, literal("preprocess__mean", "[1e400]"), "preprocess.mean"),
    ("mean-huge-integer", IMAGE, literal("preprocess__mean", "[1" + "0" * 400 + "]"), "preprocess.mean"),
    ("std-zero", IMAGE, edit(preprocess__std=[0]), "preprocess.std"),
    ("std-negative", IMAGE, edit(preprocess__std=[-0.3]), "preprocess.std"),
    ("std-nan", IMAGE, literal("preprocess__std", "[NaN]"), "preprocess.std"),
    ("test-set-needs-mean-std", IMAGE, edit(preprocess__normalize="minus_one_to_one", preprocess__mean=DELETE, preprocess__std=DELETE), "preprocess.mean"),
    ("size_multiple-zero", IMAGE, edit(preprocess__size_multiple=0), "preprocess.size_multiple"),
    ("size_multiple-not-of-input", IMAGE, edit(preprocess__size_multiple=8), "preprocess.input_size"),
    ("native_max_side-zero", IMAGE, edit(preprocess__native_max_side=0), "preprocess.native_max_side"),
    ("native_max_side-bool", IMAGE, edit(preprocess__native_max_side=True), "preprocess.native_max_side"),
    ("preprocess-null", IMAGE, edit(preprocess=None), "preprocess"),
    ("preprocess-list", IMAGE, edit(preprocess=[28, 28]), "preprocess"),
    ("classes-too-few", IMAGE, edit(classes=["a", "b", "c", "d", "e"]), "classes"),
    ("classes-numbers", IMAGE, edit(classes=list(range(10))), "classes"),
    ("classes-string", IMAGE, edit(classes="T-shirt/top"), "classes"),
    ("classes-lone-surrogate", IMAGE, literal("classes", json.dumps(["T-shirt/top", "@"] + ["x"] * 8).replace("@", "Trou\\ud800ser")), "classes[1]"),
    ("dataset-number", IMAGE, edit(dataset=7), "dataset"),
    ("dataset-imagefolder-without-path", IMAGE, edit(dataset="imagefolder:"), "dataset"),
    ("dataset-classes-not-the-model's", IMAGE, five_outputs, "dataset"),
    ("metrics-list", IMAGE, edit(metrics=[0.9]), "metrics"),
    ("metrics-null", IMAGE, edit(metrics=None), "metrics"),
    ("metrics-test-string", IMAGE, edit(metrics__test="good"), "metrics.test"),
    ("source-string", IMAGE, edit(source="the authors"), "source"),
    ("config-list", IMAGE, edit(config=[]), "config"),
    ("config-null", IMAGE, edit(config=None), "config"),
    ("data_options-list", IMAGE, edit(config__data_options=[["pad", 2]]), "config.data_options"),
    ("data_options-pad-string", IMAGE, edit(config__data_options={"pad": "2"}), "config.data_options.pad"),
    ("data_options-val_fraction", IMAGE, edit(dataset="imagefolder:/nowhere", config__data_options={"val_fraction": 1.5}), "config.data_options.val_fraction"),
    ("data_options-workers", IMAGE, edit(dataset="imagefolder:/nowhere", config__data_options={"workers": -1}), "config.data_options.workers"),
    ("data_options-channels", IMAGE, edit(dataset="imagefolder:/nowhere", config__data_options={"channels": 3}), "config.data_options.channels"),
    ("nested-too-deep", IMAGE, edit(notes=nested(40)), "notes"),
    ("nested-beyond-the-parser", IMAGE, literal("notes", "[" * 50_000 + "]" * 50_000), "nested"),
    ("model-not-a-name", IMAGE, edit(model=["sact_resnet32"]), "model"),
    ("task-unknown", IMAGE, edit(task={"name": "segment"}), "task"),
    ("parity-bits-missing", PARITY, edit(task={"name": "parity"}), "task.bits"),
    ("parity-bits-not-the-model's", PARITY, edit(task={"name": "parity", "bits": 8}), "task.bits"),
    ("parity-bits-huge", PARITY, edit(task={"name": "parity", "bits": 5000}), "task.bits"),
    ("parity-bits-bool", PARITY, edit(task={"name": "parity", "bits": True}), "task.bits"),
    ("parity-classes", PARITY, edit(classes=["even"]), "classes"),
    ("parity-model-as-text", PARITY, edit(task={"name": "bytes-lm"}), "task"),
    ("text-model-as-parity", TEXT, edit(task={"name": "parity", "bits": 16}), "task"),
    ("text-model-as-images", TEXT, edit(task={"name": "classify"}, preprocess={"channels": 1, "input_size": [28, 28], "mean": [0.5], "std": [0.5]}), "task"),
    ("text-preprocess-string", TEXT, edit(preprocess="none"), "preprocess"),
    ("text-per_char_class-list", TEXT, edit(metrics__test__per_char_class=[]), "metrics.test.per_char_class"),
    ("text-seq_len-zero", TEXT, edit(config__data_options={"seq_len": 0}), "config.data_options.seq_len"),
]

REQUESTS = [
    ("get", "/api/models/bad", {}),
    ("post", "/api/models/bad/image", {"json": {"sample": 0}}),
    ("get", "/api/models/bad/samples", {}),
    ("get", "/api/models/bad/samples/0.png", {}),
    ("get", "/api/models/bad/dataset", {}),
    ("post", "/api/models/bad/text", {"json": {"text": "hello"}}),
    ("post", "/api/models/bad/parity", {"json": {"vector": [1, 0, -1] + [0] * 13}}),
]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), 200).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("base,change,field", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_card_is_one_load_error_and_never_a_500(tmp_path, base, change, field):
    root = tmp_path / "ckpts"
    root.mkdir()
    (root / "good").symlink_to(CHECKPOINTS / GOOD, target_is_directory=True)
    shutil.copytree(CHECKPOINTS / base, root / "bad")
    change(root / "bad")

    with pytest.raises(models.CheckpointError):
        models.load_checkpoint(root / "bad")
    client = TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache"), raise_server_exceptions=False)
    health = client.get("/api/health").json()
    assert health["models"] == 1, health
    [message] = health["load_errors"]
    assert "card.json: " in message and field in message and "\n" not in message, message
    assert "must be" in message or "does not fit" in message or "nested" in message, message

    assert [m["id"] for m in client.get("/api/models").json()] == ["good"]
    assert client.get("/").status_code == 200
    answer = client.post("/api/models/good/image", files={"file": ("grey.png", png(), "image/png")})
    assert answer.status_code == 200 and len(answer.json()["prediction"]) == 5, answer.text
    for method, path, kwargs in REQUESTS:
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == 404, (path, response.status_code, response.text)


def test_the_good_model_answers_a_test_sample(tmp_path):
    """Beside a bad card, the good model still answers a test-set sample (needs Fashion-MNIST)."""
    root = tmp_path / "ckpts"
    root.mkdir()
    (root / "good").symlink_to(CHECKPOINTS / GOOD, target_is_directory=True)
    shutil.copytree(CHECKPOINTS / PARITY, root / "bad")
    models.write_card(root / "bad", {**models.read_card(root / "bad"), "task": {"name": "parity"}})
    client = TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache"), raise_server_exceptions=False)
    assert len(client.get("/api/health").json()["load_errors"]) == 1
    answer = client.post("/api/models/good/image", json={"sample": 0})
    if answer.status_code == 503:  # the data set is not here
        missing_data(answer.json()["detail"])
    assert answer.status_code == 200 and answer.json()["input"]["label_class"] == "Ankle boot", answer.text


def test_every_bundled_card_passes():
    """Every bundled checkpoint loads with its card as written and exactly the weights of its file."""
    import torch
    from safetensors.torch import load_file

    folders = sorted(p for p in CHECKPOINTS.iterdir() if (p / "card.json").is_file())
    assert len(folders) >= 9
    for folder in folders:
        model = models.load_checkpoint(folder)
        assert model.card.data == json.loads((folder / "card.json").read_text(encoding="utf-8")), folder.name
        weights, state = load_file(str(folder / "model.safetensors")), model.state_dict()
        assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in weights), folder.name
        assert not model.training, folder.name
