"""Checkpoints (models/checkpoint.py): exact round trips, and refusal of anything untrustworthy."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ponderscope import models
from ponderscope.models import CheckpointError, create_model, load_checkpoint, read_card, save_checkpoint, write_card
from tests.conftest import randomize_batchnorm

# A card's task must fit its network (load_checkpoint runs it once on the input the task gives).
IMAGES = {"task": {"name": "classify"}, "preprocess": {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]}}
FAMILIES = [
    ("resnet", dict(depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10), (2, 1, 8, 8), IMAGES),
    ("sact_resnet", dict(depth=14, widths=(4, 8, 16), in_channels=1, num_classes=10), (2, 1, 8, 8), IMAGES),
    ("act_resnet", dict(depth=14, widths=(4, 8, 16), in_channels=1, num_classes=10), (2, 1, 8, 8), IMAGES),
    ("aig_resnet", dict(depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10), (2, 1, 8, 8), IMAGES),
    ("act_lstm", dict(input_kind="bytes", input_size=8, hidden_size=8, output_size=256, output="sequence",
                      max_steps=4), None, {"task": {"name": "bytes-lm"}}),
    ("gru", dict(input_kind="features", input_size=3, hidden_size=8, output_size=2), (2, 5, 3), {"task": {"name": "parity", "bits": 3}}),
]


def make_input(shape):
    return torch.randint(0, 256, (2, 6)) if shape is None else torch.randn(shape)


def trained_looking(name, kwargs, seed=0):
    """A model whose parameters and buffers all differ from a fresh one (so a load that silently
    kept the fresh values would be caught)."""
    torch.manual_seed(seed)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    randomize_batchnorm(model, seed)
    for key, buffer in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            buffer.fill_(123)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,shape,task", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_round_trip_is_bit_exact(tmp_path, name, kwargs, shape, task):
    model = trained_looking(name, kwargs)
    card = {**task, "metrics": {"test_accuracy": 0.9182, "epochs": 5}, "notes": "tau 0.01, ünïcode"}
    save_checkpoint(model, tmp_path / "ckpt", card)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["card.json", "model.safetensors"]
    torch.manual_seed(99)  # a different fresh init inside load_checkpoint
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert not loaded.training
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(original_state) == list(loaded_state)
    for key, value in original_state.items():
        assert loaded_state[key].dtype == value.dtype, key
        assert torch.equal(loaded_state[key], value), key
    x = make_input(shape)
    with torch.no_grad():
        a, b = model.trace(x), loaded.trace(x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.flops, b.flops)
    # The card keeps every field given, plus what rebuilds the model (JSON turns tuples into lists).
    expected_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    assert loaded.card.data == {"model": name, "model_kwargs": expected_kwargs, **card}
    assert read_card(tmp_path / "ckpt") == loaded.card.data
    assert loaded.registry_name == name
    assert loaded.checkpoint_path == str(tmp_path / "ckpt")
    # Saving the loaded model again gives the same bytes.
    save_checkpoint(loaded, tmp_path / "again", card)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "ckpt" / "model.safetensors").read_bytes()


def test_write_card_round_trip_and_no_leftovers(tmp_path):
    card = {"model": "act_rnn", "model_kwargs": {"hidden_size": 8}, "task": {"name": "parity", "bits": 4}, "history": [1, 2, 3]}
    write_card(tmp_path, card)
    assert read_card(tmp_path) == card
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def saved(tmp_path, name="resnet", **kwargs):
    kwargs = kwargs or dict(depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10)
    model = create_model(name, **kwargs)
    path = tmp_path / f"ckpt_{name}"
    save_checkpoint(model, path, {"task": {"name": "classify"}, "preprocess": {"channels": 1, "input_size": [8, 8], "mean": [0.5], "std": [0.5]}})
    return path


class _Exploit:
    """Unpickling this creates a file: what a hostile pickle could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_disguised_as_safetensors_is_refused_without_running(tmp_path):
    # The exploit is live: plain unpickling does create its file.
    probe = tmp_path / "probe_marker"
    pickle.loads(pickle.dumps(_Exploit(probe))).close()
    assert probe.exists()

    path = saved(tmp_path)
    marker = tmp_path / "pwned_marker"
    (path / "model.safetensors").write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()

    # The same with a torch.save zip (what a .pth / .pt file is), also carrying the exploit.
    torch.save({"weights": torch.zeros(3), "x": _Exploit(marker)}, path / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_model_is_refused_with_its_name(tmp_path):
    path = saved(tmp_path)
    write_card(path, {"model": "evil_net_9000", "model_kwargs": {}, "task": {"name": "parity"}})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "evil_net_9000" in str(info.value)


def test_unknown_model_refused_before_weights_are_read(tmp_path):
    path = saved(tmp_path)
    marker = tmp_path / "marker"
    (path / "model.safetensors").write_bytes(pickle.dumps(_Exploit(marker)))
    write_card(path, {"model": "os.system", "model_kwargs": {}, "task": {"name": "parity"}})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "os.system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"a string"'])
def test_garbage_card_is_refused(tmp_path, content):
    path = saved(tmp_path)
    (path / "card.json").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_card(path)


def test_card_missing_fields_is_refused(tmp_path):
    path = saved(tmp_path)
    for card in ({"model_kwargs": {}, "task": {"name": "parity"}}, {"model": "resnet", "task": {"name": "parity"}}, {"model": "resnet", "model_kwargs": {}}):
        write_card(path, card)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert "missing" in str(info.value)
    write_card(path, {"model": "resnet", "model_kwargs": [8], "task": {"name": "parity"}})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_bad_model_kwargs_are_refused(tmp_path):
    path = saved(tmp_path)
    write_card(path, {"model": "resnet", "model_kwargs": {"depth": 8, "no_such_option": 1}, "task": {"name": "parity"}})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    for name, kwargs in [
        ("resnet", {"depth": 7}),  # not 6n + 2: ValueError in the constructor
        ("resnet", {"depth": "20"}),  # TypeError
        ("act_lstm", {"hidden_size": -1}),  # RuntimeError from torch
        ("act_lstm", {"input_kind": "pixels"}),  # ValueError
    ]:
        write_card(path, {"model": name, "model_kwargs": kwargs, "task": {"name": "parity"}})
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert name in str(info.value)


def test_missing_weights_or_directory_is_refused(tmp_path):
    path = saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "does_not_exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "empty")


def test_truncated_or_empty_weights_are_refused(tmp_path):
    path = saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_mismatching_weights_are_refused(tmp_path):
    small = saved(tmp_path, "resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10)
    # Same keys, other shapes.
    card = read_card(small)
    card["model_kwargs"]["widths"] = [8, 16, 32]
    write_card(small, card)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small)
    assert "resnet" in str(info.value)
    # Missing keys (a deeper net), and extra keys (the halting branches of a SACT net).
    card["model_kwargs"] = {"depth": 14, "widths": [4, 8, 16], "in_channels": 1, "num_classes": 10}
    write_card(small, card)
    with pytest.raises(CheckpointError):
        load_checkpoint(small)
    sact = saved(tmp_path, "sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10)
    sact_14 = saved(tmp_path, "sact_resnet", depth=14, widths=(4, 8, 16), in_channels=1, num_classes=10)
    card = read_card(sact_14)
    card["model"] = "resnet"
    write_card(sact_14, card)
    with pytest.raises(CheckpointError):
        load_checkpoint(sact_14)
    # A safetensors file with one stray tensor.
    state = {k: v.contiguous() for k, v in create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1,
                                                        num_classes=10).state_dict().items()}
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(sact / "model.safetensors"))
    with pytest.raises(CheckpointError):
        load_checkpoint(sact)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert models.CheckpointError is CheckpointError


@pytest.mark.parametrize("task,extra,message", [
    ({}, {}, "task must be an object"),
    ("parity", {}, "task must be an object"),
    ({"name": "parity", "bits": "sixteen"}, {}, "task.name"),  # an image model: no parity (bits: tests/test_card_validation.py)
    ({"name": "classify"}, {"preprocess": None}, "preprocess"),
    ({"name": "classify"}, {"preprocess": {"channels": 3, "input_size": [32, 32]}, "classes": "cat"}, "classes"),
])
def test_cards_the_server_cannot_use_are_load_errors(tmp_path, task, extra, message):
    """One bad card is listed in load_errors; the server starts and serves the others."""
    from ponderscope.server.app import create_app

    good = trained_looking("aig_resnet", dict(depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10))
    good_card = {"task": {"name": "classify"}, "dataset": "fashion-mnist", "preprocess": {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]}}
    save_checkpoint(good, tmp_path / "ckpts" / "good", good_card)
    save_checkpoint(good, tmp_path / "ckpts" / "bad", {**good_card, "task": task, **extra})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpts" / "bad")
    app = create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache")
    store = app.state.store
    assert list(store.models) == ["good"] and len(store.errors) == 1 and message.split()[0] in store.errors[0]
