"""The plugin contract (docs/own-models.md): a family the project does not ship, registered by a
file the user names, is loaded, served and drawn; a checkpoint of an unloaded family is a load
error that says which plugin to load; the PonderNet example computes what the paper defines."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from ponderscope import models
from ponderscope.plugins import PluginError, load_plugins
from ponderscope.server.app import create_app

ROOT = Path(__file__).resolve().parents[1]
PONDERNET = ROOT / "docs" / "examples" / "pondernet"

TOY = '''
import torch, torch.nn as nn
from ponderscope.models import Trace, register_family, register_model

register_family("{family}", "Toy halting net")

class Toy(nn.Module):
    def __init__(self, input_size=4, output_size=2, **unused):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)
    def trace(self, x):
        steps = 1 + (x != 0).sum(1, keepdim=True)  # one step per nonzero entry, plus one
        return Trace(logits=self.linear(x), flops=steps[:, 0].float() * 16, dense_flops=16.0 * (x.shape[1] + 1),
                     ponder=steps.float() + 0.5, steps=steps, extras={{"toy_signal": x.sum(1, keepdim=True)}})
    def forward(self, x):
        return self.trace(x).logits

@register_model(family="{family}", tasks=("parity",))
def {name}(**kwargs):
    return Toy(**kwargs)
'''


def toy_plugin(tmp_path: Path) -> tuple[Path, str, str]:
    tag = uuid.uuid4().hex[:8]  # the registry is the process's: a fresh name per test
    family, name = f"toy-{tag}", f"toy_net_{tag}"
    path = tmp_path / f"toy_{tag}.py"
    path.write_text(TOY.format(family=family, name=name))
    return path, family, name


def save_toy(folder: Path, name: str) -> None:
    """A checkpoint of the toy model, written without the plugin's code (weights + card only)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"linear.weight": torch.randn(2, 4), "linear.bias": torch.zeros(2)}, str(folder / "model.safetensors"))
    models.write_card(folder, {"model": name, "model_kwargs": {"input_size": 4, "output_size": 2},
                               "task": {"name": "parity", "bits": 4}, "dataset": "parity-4", "classes": ["even", "odd"]})


def test_a_plugin_family_is_served_and_an_unloaded_one_says_which_plugin(tmp_path):
    plugin, family, name = toy_plugin(tmp_path)
    save_toy(tmp_path / "ckpts" / "toy", name)
    before = create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache")
    assert not before.state.store.models and "load the plugin that defines it" in before.state.store.errors[0]

    assert load_plugins([plugin]) == [str(plugin.resolve())]
    assert load_plugins([plugin]) == []  # once per process
    assert models.model_info(name).family == family and models.FAMILIES[family] == "Toy halting net"
    app = create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache2")
    with TestClient(app) as client:
        listed = client.get("/api/models").json()
        assert [(m["id"], m["family"], m["family_label"], m["kind"]) for m in listed] == [("toy", family, "Toy halting net", "parity")]
        answer = client.post("/api/models/toy/parity", json={"vector": [1, 0, -1, 1]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["steps"] == 4 and answer.json()["ponder"] == pytest.approx(4.5)  # 3 nonzero + 1
        assert answer.json()["unshown_signals"] == ["toy_signal"]  # served, with a note, not an error
        assert client.get("/").status_code == 200


def test_a_broken_plugin_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('this plugin is broken')\n")
    with pytest.raises(PluginError, match="bad.py: RuntimeError: this plugin is broken"):
        load_plugins([bad])
    with pytest.raises(PluginError, match="a plugin is a Python file"):
        load_plugins([tmp_path / "missing.txt"])


def test_pondernet_example_computes_the_papers_halting_distribution():
    """p_n = lambda_n prod_{j<n} (1 - lambda_j), recomputed here step by step in plain floats; the
    answer is read at the median step; ponder is the expected step."""
    load_plugins([PONDERNET / "pondernet.py"])
    model = models.load_checkpoint(PONDERNET / "parity8_pondernet")
    assert models.model_info(model.card.model).family == "pondernet"
    x = torch.tensor([[1, 0, -1, 1, 0, 0, 1, -1], [0, 0, 0, 0, 0, 0, 0, 1.0]])
    with torch.no_grad():
        trace = model.trace(x)
        for i in range(2):
            h, survive, p, logits = torch.zeros(1, model.cell.hidden_size), 1.0, [], []
            for n in range(model.max_steps):
                h = model.cell(x[i : i + 1], h)
                lam = 1.0 if n == model.max_steps - 1 else float(torch.sigmoid(model.halt(h)))
                p.append(lam * survive)
                survive *= 1.0 - lam
                logits.append(model.answer(h)[0])
            assert trace.extras["halting_distribution"][i, 0].tolist() == pytest.approx(p, abs=1e-6)
            assert sum(p) == pytest.approx(1.0, abs=1e-6)
            cumulative = torch.tensor(p).cumsum(0)
            median = int((cumulative < 0.5).sum())
            assert int(trace.steps[i, 0]) == median + 1
            assert trace.ponder[i, 0].item() == pytest.approx(sum((n + 1) * q for n, q in enumerate(p)), abs=1e-5)
            torch.testing.assert_close(trace.logits[i], logits[median])
    metrics = model.card.test_metrics
    assert metrics["examples"] == 10000 and metrics["accuracy"] > 0.95  # the card's, measured by ponderscope train


def test_pondernet_example_is_served_with_its_halting_distribution(tmp_path):
    load_plugins([PONDERNET / "pondernet.py"])
    app = create_app([PONDERNET], device="cpu", cache_dir=tmp_path)
    with TestClient(app) as client:
        listed = client.get("/api/models").json()
        assert [(m["id"], m["family"], m["kind"]) for m in listed] == [("parity8_pondernet", "pondernet", "parity")]
        answer = client.post("/api/models/parity8_pondernet/parity", json={"vector": [1, 0, -1, 1, 0, 0, 1, -1]}).json()
        distribution = answer["halting_distribution"]
        assert len(distribution) == 12 and sum(distribution) == pytest.approx(1.0, abs=1e-4)
        assert answer["figures"]["halting"]["data"][0]["y"] == distribution  # drawn by the Parity view
        assert answer["unshown_signals"] == []
        assert answer["answer"] == "odd" and 1 <= answer["steps"] <= 12  # three entries are +1: odd


def test_an_installed_package_is_loaded_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares a `ponderscope.models` entry point (here installed as a bare
    dist-info on sys.path, as pip would lay it out) is loaded without --plugin."""
    _, family, name = toy_plugin(tmp_path)
    module = f"toy_package_{name}"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{module}.py").write_text(TOY.format(family=family, name=name))
    info = tmp_path / "site" / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ponderscope.models]\ntoy = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    loaded = load_plugins([])
    assert any(module in item for item in loaded) and models.model_info(name).family == family
