"""`ponderscope import convnet-aig`: files as the authors' train.py / train_img.py write them
(PyTorch 0.3 on a GPU), converted and checked against an independent functional reference of
their network (written here from their code's arithmetic, not from models/aig.py)."""
from __future__ import annotations

import hashlib
import pickle
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from ponderscope import importers
from ponderscope import models
from ponderscope.importers import ImportFailed, import_checkpoint
from ponderscope.importers.convnet_aig import CIFAR_PREPROCESS, IMAGENET_PREPROCESS
from ponderscope import cli

GATE_HIDDEN = 16

# --- the authors' checkpoints, built from their naming -------------------------------------------


def _bn(state, name, c, g):
    state[f"{name}.weight"] = torch.rand(c, generator=g) * 0.5 + 0.75
    state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
    state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
    state[f"{name}.running_var"] = torch.rand(c, generator=g) * 0.5 + 0.75


def _conv(state, name, c_out, c_in, k, g):
    state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (k * k * c_in)) ** 0.5


def official_state_dict(stem, blocks, widths, bottleneck, num_classes, seed=0):
    """Keys and shapes of their ResNet_cifar / ResNet_ImageNet under DataParallel ('module.')."""
    g = torch.Generator().manual_seed(seed)
    s = OrderedDict()
    planes = widths[0] if stem == "cifar" else 64
    _conv(s, "conv1", planes, 3, 3 if stem == "cifar" else 7, g)
    _bn(s, "bn1", planes, g)
    expansion = 4 if bottleneck else 1
    for stage, (n, width) in enumerate(zip(blocks, widths), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            out = width * expansion
            if bottleneck:
                _conv(s, f"{p}.conv1", width, planes, 1, g), _bn(s, f"{p}.bn1", width, g)
                _conv(s, f"{p}.conv2", width, width, 3, g), _bn(s, f"{p}.bn2", width, g)
                _conv(s, f"{p}.conv3", out, width, 1, g), _bn(s, f"{p}.bn3", out, g)
            else:
                _conv(s, f"{p}.conv1", width, planes, 3, g), _bn(s, f"{p}.bn1", width, g)
                _conv(s, f"{p}.conv2", width, width, 3, g), _bn(s, f"{p}.bn2", width, g)
            if stride != 1 or planes != out:
                _conv(s, f"{p}.shortcut.0", out, planes, 1, g), _bn(s, f"{p}.shortcut.1", out, g)
            s[f"{p}.fc1.weight"] = torch.randn(GATE_HIDDEN, planes, 1, 1, generator=g) / planes**0.5
            s[f"{p}.fc1.bias"] = torch.randn(GATE_HIDDEN, generator=g) * 0.1
            _bn(s, f"{p}.fc1bn", GATE_HIDDEN, g)
            s[f"{p}.fc2.weight"] = torch.randn(2, GATE_HIDDEN, 1, 1, generator=g)
            s[f"{p}.fc2.bias"] = torch.tensor([0.1, 0.2])
            planes = out
    s["linear.weight"] = torch.randn(num_classes, planes, generator=g) / planes**0.5
    s["linear.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return OrderedDict((f"module.{k}", v) for k, v in s.items())


def reference(state, x, stem, blocks, bottleneck, calibrate=False):
    """Their forward pass with torch.nn.functional, from the raw state dict, with the
    deterministic test-time gate (run iff logit_run > logit_skip) -> (logits, run [B, L], margin).
    calibrate: first set every BN's running statistics to this batch's (as a trained network's
    would be for its data), so that features stay normalised and gate decisions differ per image."""
    p = lambda name: state[f"module.{name}"]  # noqa: E731

    def bn(h, name):
        if calibrate:
            state[f"module.{name}.running_mean"] = h.mean((0, 2, 3)).detach().clone()
            state[f"module.{name}.running_var"] = h.var((0, 2, 3), unbiased=False).detach().clone()
        return F.batch_norm(h, p(f"{name}.running_mean"), p(f"{name}.running_var"), p(f"{name}.weight"), p(f"{name}.bias"), False, 0.0, 1e-5)

    if stem == "cifar":
        out = F.relu(bn(F.conv2d(x, p("conv1.weight"), padding=1), "bn1"))
    else:
        out = F.relu(bn(F.conv2d(x, p("conv1.weight"), stride=2, padding=3), "bn1"))
        out = F.max_pool2d(out, 3, 2, 1)
    runs, margins = [], []
    for stage, n in enumerate(blocks, start=1):
        for b in range(n):
            q = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            w = F.avg_pool2d(out, out.size(2))
            w = F.relu(bn(F.conv2d(w, p(f"{q}.fc1.weight"), p(f"{q}.fc1.bias")), f"{q}.fc1bn"))
            w = F.conv2d(w, p(f"{q}.fc2.weight"), p(f"{q}.fc2.bias")).flatten(1)
            run = w[:, 1] > w[:, 0]
            runs.append(run)
            margins.append((w[:, 1] - w[:, 0]).abs())
            if bottleneck:
                h = F.relu(bn(F.conv2d(out, p(f"{q}.conv1.weight")), f"{q}.bn1"))
                h = F.relu(bn(F.conv2d(h, p(f"{q}.conv2.weight"), stride=stride, padding=1), f"{q}.bn2"))
                h = bn(F.conv2d(h, p(f"{q}.conv3.weight")), f"{q}.bn3")
            else:
                h = F.relu(bn(F.conv2d(out, p(f"{q}.conv1.weight"), stride=stride, padding=1), f"{q}.bn1"))
                h = bn(F.conv2d(h, p(f"{q}.conv2.weight"), padding=1), f"{q}.bn2")
            shortcut = out
            if f"module.{q}.shortcut.0.weight" in state:
                shortcut = bn(F.conv2d(out, p(f"{q}.shortcut.0.weight"), stride=stride), f"{q}.shortcut.1")
            out = F.relu(shortcut + h * run.to(h.dtype)[:, None, None, None])
    out = F.avg_pool2d(out, 8) if stem == "cifar" else F.avg_pool2d(out, 7, stride=1)
    logits = F.linear(out.flatten(1), p("linear.weight"), p("linear.bias"))
    return logits, torch.stack(runs, 1), torch.stack(margins, 1)


def images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g) * 0.7 + torch.randn(n, 3, 1, 1, generator=g)


def wrapped(state):
    """What train_img.py saves (train.py leaves out the optimizer): 0.3's SGD state dict too."""
    ids = list(range(len(state)))
    optimizer = {
        "state": {i: {"momentum_buffer": torch.zeros_like(v)} for i, v in zip(ids, state.values()) if v.is_floating_point()},
        "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4, "nesterov": False, "params": ids}],
    }
    return {"epoch": 350, "state_dict": state, "best_prec1": 93.39, "optimizer": optimizer}


class _Storage:
    def __init__(self, key: str, tensor: torch.Tensor):
        self.key, self.tensor = key, tensor


def save_like_pytorch03_on_gpu(obj, path: Path) -> None:
    """The legacy format as PyTorch 0.3 wrote it from a GPU: magic number, protocol version and
    system info pickles, the object pickle whose tensors are `torch._utils._rebuild_tensor(storage,
    offset, size, stride)` with persistent ids ('storage', torch.cuda.FloatStorage, key, 'cuda:0',
    numel, None), the list of storage keys, then each storage as int64 numel + raw bytes."""
    storages: list[_Storage] = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", torch.cuda.FloatStorage, o.key, "cuda:0", o.tensor.numel(), None)
            return None

        def reducer_override(self, o):
            if isinstance(o, torch.Tensor):
                t = o.detach().to(torch.float32).contiguous()
                storage = _Storage(str(140_000_000 + len(storages)), t)
                storages.append(storage)
                return torch._utils._rebuild_tensor, (storage, 0, tuple(t.shape), t.stride())
            return NotImplemented

    with open(path, "wb") as f:
        sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}
        for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.tensor.numel()))
            f.write(s.tensor.numpy().tobytes())


def save_torch_legacy(obj, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


WRITERS = {"pytorch-0.3-gpu": save_like_pytorch03_on_gpu, "torch-legacy": save_torch_legacy}

TINY_CIFAR = dict(stem="cifar", blocks=[1, 1, 1], widths=[16, 32, 64], bottleneck=False)  # their ResNet_cifar widths
TINY_IMAGENET = dict(stem="imagenet", blocks=[1, 1, 1, 1], widths=[64, 128, 256, 512], bottleneck=True)


def calibrated(net: dict, num_classes: int, size: int, seed: int = 0) -> OrderedDict:
    state = official_state_dict(net["stem"], net["blocks"], net["widths"], net["bottleneck"], num_classes, seed)
    with torch.no_grad():
        reference(state, images(16, size, seed + 100), net["stem"], net["blocks"], net["bottleneck"], calibrate=True)
    return state


def compare_with_reference(model, state, net, x):
    """Logits within 1e-5 relative and the same gate decisions per image, sparse and masked."""
    with torch.no_grad():
        ref_logits, ref_runs, margins = reference(state, x, net["stem"], net["blocks"], net["bottleneck"])
    assert float(margins.min()) > 1e-4, "a gate too close to its threshold to compare decisions"
    assert bool(ref_runs.any()) and not bool(ref_runs.all()), "want open and closed gates"
    assert any(0 < int(col.sum()) < len(col) for col in ref_runs.T), "want a gate that differs between images"
    for execution in ("sparse", "masked"):
        model.execution = execution
        with torch.no_grad():
            trace = model.trace(x)
        error = float((trace.logits - ref_logits).abs().max() / ref_logits.abs().max())
        assert error < 1e-5, f"{execution}: logits differ by {error:.2e} relative"
        assert torch.equal(trace.executed, ref_runs), execution


# --- converting ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cifar():
    return calibrated(TINY_CIFAR, 10, 32)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_cifar_checkpoint_matches_their_network(tmp_path, tiny_cifar, writer):
    source = tmp_path / "checkpoint.pth.tar"
    WRITERS[writer](wrapped(tiny_cifar), source)
    out = import_checkpoint("convnet-aig", source, tmp_path / "out", "aig_resnet8", command="test")
    model = models.load_checkpoint(out)
    compare_with_reference(model, tiny_cifar, TINY_CIFAR, images(12, 32, 1))

    card = model.card.data
    assert card["model"] == "aig_resnet" and card["model_kwargs"] == {"depth": 8, "num_classes": 10, "widths": [16, 32, 64]}
    assert card["dataset"] == "cifar-10" and card["classes"][:2] == ["airplane", "automobile"] and len(card["classes"]) == 10
    assert card["preprocess"] == CIFAR_PREPROCESS
    # The authors' train.py normalises with these constants (not the usual CIFAR std).
    assert card["preprocess"]["mean"] == [0.4914, 0.4822, 0.4465] and card["preprocess"]["std"] == [0.2023, 0.1994, 0.2010]
    source_card = card["source"]
    assert source_card["format"] == "convnet-aig"
    assert source_card["sha256"] == {source.name: hashlib.sha256(source.read_bytes()).hexdigest()}
    converted = source_card["converted"]
    assert converted["tensors_read"] == len(tiny_cifar)
    n_bn = sum(k.endswith(".running_mean") for k in tiny_cifar)
    assert converted["bn_counters_filled"] == n_bn
    assert converted["info"] == {"epoch": 350, "best_prec1": 93.39}
    assert any(d.startswith("optimizer") for d in converted["dropped"])
    assert converted["layout"]["blocks_per_stage"] == [1, 1, 1] and converted["layout"]["block"] == "basic"
    assert "module." in converted["key_mapping"]


def test_file_as_pytorch03_wrote_it_from_a_gpu(tmp_path, tiny_cifar):
    """The storages claim CUDA: weights_only=True reads them, map_location='cpu' puts them here."""
    source = tmp_path / "model_best.pth.tar"
    save_like_pytorch03_on_gpu(wrapped(tiny_cifar), source)
    data = source.read_bytes()
    assert b"torch.cuda\nFloatStorage" in data and b"cuda:0" in data and not data.startswith(b"PK")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(source, weights_only=True)
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    assert loaded["epoch"] == 350 and list(loaded["state_dict"]) == list(tiny_cifar)
    for key, value in tiny_cifar.items():
        assert loaded["state_dict"][key].device.type == "cpu" and torch.equal(loaded["state_dict"][key], value)


def test_imagenet_checkpoint_matches_their_network(tmp_path):
    state = calibrated(TINY_IMAGENET, 1000, 224, seed=3)
    source = tmp_path / "checkpoint.pth.tar"
    save_like_pytorch03_on_gpu(wrapped(state), source)
    out = import_checkpoint("convnet-aig", source, tmp_path / "out", "aig_resnet14", num_classes=1000)
    model = models.load_checkpoint(out)
    compare_with_reference(model, state, TINY_IMAGENET, images(8, 224, 4))
    card = model.card.data
    assert card["model"] == "aig_resnet"
    assert card["model_kwargs"] == {"blocks_per_stage": [1, 1, 1, 1], "widths": [64, 128, 256, 512], "bottleneck": True, "stem": "imagenet", "num_classes": 1000}
    assert card["dataset"] == "imagenet" and len(card["classes"]) == 1000
    assert card["preprocess"] == IMAGENET_PREPROCESS and card["preprocess"]["resize_shorter"] == 256


def test_resnet110_gets_its_registered_name(tmp_path):
    net = dict(stem="cifar", blocks=[18, 18, 18], widths=[16, 32, 64], bottleneck=False)
    state = calibrated(net, 10, 32, seed=5)
    source = tmp_path / "checkpoint.pth.tar"
    save_torch_legacy({"epoch": 1, "state_dict": state, "best_prec1": 10.0}, source)  # train.py: no optimizer
    out = import_checkpoint("convnet-aig", source, tmp_path / "out", "aig_resnet110")
    model = models.load_checkpoint(out)
    assert model.card.model == "aig_resnet110" and model.card.model_kwargs == {"num_classes": 10, "widths": [16, 32, 64]}
    assert model.card.source["converted"]["dropped"] == []
    with torch.no_grad():
        ref_logits, ref_runs, _ = reference(state, images(4, 32, 6), "cifar", net["blocks"], False)
        trace = model.trace(images(4, 32, 6))
    assert float((trace.logits - ref_logits).abs().max() / ref_logits.abs().max()) < 1e-5
    assert torch.equal(trace.executed, ref_runs)


def test_bare_state_dict_of_resnet50(tmp_path):
    """A state dict alone, without 'module.', in today's zip format -> the registered aig_resnet50."""
    state = official_state_dict("imagenet", [3, 4, 6, 3], [64, 128, 256, 512], True, 1000)
    source = tmp_path / "aig50.pth"
    torch.save({k[len("module."):]: v for k, v in state.items()}, source)
    imported, files = importers.read("convnet-aig", source, "aig_resnet50")
    assert files == [source]
    assert imported.model.registry_name == "aig_resnet50" and imported.model.registry_kwargs == {"num_classes": 1000}
    assert imported.converted["info"] == {} and imported.converted["dropped"] == []
    assert torch.equal(imported.model.layer3[5].gate.fc1bn.running_var, state["module.layer3.5.fc1bn.running_var"])


# --- what is refused -----------------------------------------------------------------------------


def _drop(key):
    def change(checkpoint):
        del checkpoint["state_dict"][key]
    return change


def _add(key, value):
    def change(checkpoint):
        checkpoint["state_dict"][key] = value
    return change


def _reshape(key, shape):
    def change(checkpoint):
        checkpoint["state_dict"][key] = torch.zeros(shape)
    return change


REFUSED = {
    "unknown-model-name": ("aig_densenet8", None, None, "unknown model name 'aig_densenet8'"),
    "other-family": ("sact_resnet8", None, None, "sact network"),
    "depth-mismatch": ("aig_resnet20", None, None, "ResNet-8 ([1, 1, 1] units per block), not the aig_resnet20"),
    "num-classes-mismatch": ("aig_resnet8", 100, None, "--num-classes 100 does not match the checkpoint: 'module.linear.weight'"),
    "missing-key": ("aig_resnet8", None, _drop("module.layer2.0.fc1bn.running_var"), "missing variable 'module.layer2.0.fc1bn.running_var'"),
    "missing-linear": ("aig_resnet8", None, _drop("module.linear.weight"), "missing variable 'module.linear.weight'"),
    "extra-key": ("aig_resnet8", None, _add("module.layer1.0.fc3.weight", torch.zeros(2)), "unexpected variable 'module.layer1.0.fc3.weight'"),
    "wrong-shape": ("aig_resnet8", None, _reshape("module.layer3.0.fc2.weight", (3, 16, 1, 1)), "variable 'module.layer3.0.fc2.weight' (ours: layer3.0.gate.fc2.weight) has shape [3, 16, 1, 1]"),
    "not-a-tensor": ("aig_resnet8", None, _add("module.layer1.0.fc2.scale", 2.0), "variable 'module.layer1.0.fc2.scale' is a float"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_one_line_and_nothing_written(tmp_path, tiny_cifar, case):
    name, num_classes, change, words = REFUSED[case]
    checkpoint = wrapped(OrderedDict(tiny_cifar))
    if change:
        change(checkpoint)
    source = tmp_path / "checkpoint.pth.tar"
    save_torch_legacy(checkpoint, source)
    out = tmp_path / "out"
    with pytest.raises(ImportFailed) as info:
        import_checkpoint("convnet-aig", source, out, name, num_classes)
    message = str(info.value)
    assert words in message and "\n" not in message, message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth.tar"]


def _pickle_calling_os_system(marker: Path) -> bytes:
    """A pickle that would run `touch MARKER` through os.system if it were unpickled freely:
    PROTO 2, GLOBAL 'os system', the argument, TUPLE1, REDUCE, STOP."""
    argument = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(argument)) + argument + b"\x85R."


@pytest.mark.parametrize(
    "kind, words",
    [
        ("code", "refused by torch.load(weights_only=True): it names 'os.system'"),
        ("text", "not a PyTorch checkpoint"),
        ("empty", "not a PyTorch checkpoint"),
        ("truncated", "not a PyTorch checkpoint"),
        ("list", "holds a list, not a checkpoint dict"),
        ("no-state-dict", "without 'state_dict' and without tensors"),
        ("state-dict-not-dict", "'state_dict' is a list"),
        ("missing-file", "no such file"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, tiny_cifar, kind, words):
    source = tmp_path / "checkpoint.pth.tar"
    marker = tmp_path / "ran"
    if kind == "code":
        source.write_bytes(_pickle_calling_os_system(marker))
    elif kind == "text":
        source.write_text("epoch 350, best_prec1 93.4\n")
    elif kind == "empty":
        source.write_bytes(b"")
    elif kind == "truncated":
        save_torch_legacy(wrapped(tiny_cifar), source)
        source.write_bytes(source.read_bytes()[:5000])
    elif kind == "list":
        save_torch_legacy([1, 2, 3], source)
    elif kind == "no-state-dict":
        save_torch_legacy({"epoch": 3, "best_prec1": 9.0}, source)
    elif kind == "state-dict-not-dict":
        save_torch_legacy({"epoch": 3, "state_dict": [1, 2]}, source)
    out = tmp_path / "out"
    with pytest.raises(ImportFailed) as info:
        import_checkpoint("convnet-aig", source, out, "aig_resnet8")
    message = str(info.value)
    assert words in message and "\n" not in message, message
    assert not marker.exists(), "the pickle's code ran"
    assert not out.exists()


def test_command_line(tmp_path, tiny_cifar, capsys, monkeypatch):
    source = tmp_path / "checkpoint.pth.tar"
    save_torch_legacy(wrapped(tiny_cifar), source)
    out = tmp_path / "aig8"
    argv = ["import", "convnet-aig", str(source), "--out", str(out), "--model", "aig_resnet20"]
    monkeypatch.setattr(sys, "argv", ["ponderscope", *argv])  # as the installed command runs it
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert str(info.value).startswith("ponderscope import: ") and "not the aig_resnet20" in str(info.value)
    assert not out.exists()
    argv = ["import", "convnet-aig", str(source), "--out", str(out), "--model", "aig_resnet8", "--num-classes", "10"]
    monkeypatch.setattr(sys, "argv", ["ponderscope", *argv])
    cli.main(argv)
    assert capsys.readouterr().out.splitlines() == [f"wrote {out}/model.safetensors and {out}/card.json"]
    assert "ponderscope import convnet-aig" in models.read_card(out)["import_command"]
    # the written checkpoint computes what their network computes, from the same file
    compare_with_reference(models.load_checkpoint(out), tiny_cifar, TINY_CIFAR, images(12, 32, 1))


def test_imported_checkpoint_is_served(tmp_path, tiny_cifar):
    source = tmp_path / "checkpoint.pth.tar"
    save_like_pytorch03_on_gpu(wrapped(tiny_cifar), source)
    out = import_checkpoint("convnet-aig", source, tmp_path / "cifar_aig8", "aig_resnet8")
    from ponderscope.server.app import create_app

    with TestClient(create_app([out], device="cpu", cache_dir=tmp_path / "cache")) as client:
        listed = {m["id"]: m for m in client.get("/api/models").json()}
        assert listed["cifar_aig8"]["family"] == "aig" and listed["cifar_aig8"]["kind"] == "image"
        card = listed["cifar_aig8"]["card"]
        assert card["source"]["format"] == "convnet-aig" and set(card["source"]["sha256"]) == {source.name}


# --- against the authors' own code ---------------------------------------------------------------
# tests/fixtures/convnet_aig/reference.npz holds what their convnet_aig.py computed (make_fixtures.py
# there: their code with BatchNorm1d -> BatchNorm2d and the test-time Gumbel noise set to zero) for
# weights and inputs that make_fixtures.seeded_* rebuild here bit for bit.

AIG_FIXTURES = Path(__file__).parent / "fixtures" / "convnet_aig"


@pytest.mark.parametrize("name,model_name", [("cifar_basic_2_2_2", "aig_resnet14"), ("imagenet_bottleneck_1_1_1_1", "aig_resnet14")])
@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_matches_the_authors_network(tmp_path, name, model_name, execution):
    import json

    import numpy as np

    from tests.fixtures.convnet_aig.make_fixtures import NETWORKS, seeded_inputs, seeded_state_dict

    manifest = json.loads((AIG_FIXTURES / "manifests.json").read_text())[name]
    reference = np.load(AIG_FIXTURES / "reference.npz")
    _, shape, seed = NETWORKS[name]
    state = seeded_state_dict(manifest, seed)
    prefix = f"{name}/override/"
    for key in reference.files:
        if key.startswith(prefix):
            state[key[len(prefix):]] = torch.from_numpy(reference[key])
    path = tmp_path / "model_best.pth.tar"  # as their train.py writes it (here from the CPU)
    torch.save({"epoch": 350, "state_dict": OrderedDict(("module." + k, v) for k, v in state.items()), "best_prec1": 93.4},
               path, _use_new_zipfile_serialization=False)
    model = models.load_checkpoint(import_checkpoint("convnet-aig", path, tmp_path / "ckpt", model_name))
    model.execution = execution
    with torch.no_grad():
        trace = model.trace(torch.from_numpy(seeded_inputs(shape, seed)))
    logits = reference[f"{name}/logits"]
    np.testing.assert_allclose(trace.logits.numpy(), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    gates = reference[f"{name}/gates"]
    np.testing.assert_array_equal(trace.executed.numpy().astype(np.float32), gates)
    assert 0 < gates.mean() < 1 and (gates.min(0) != gates.max(0)).any()  # decisions differ by image
