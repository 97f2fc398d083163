"""The Trace contract (docs/own-models.md, section 3; models/contract.py): every field checked for
shape, dtype and agreement with the others, when a checkpoint loads (a load error) and on every
answer (one 422 JSON error naming the field, the expected and the actual shape): never a 500,
never a silently renamed layer. Optional fields (a block's halting, probabilities) are optional."""
from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ponderscope import models
from ponderscope.models import BlockTrace, Trace, TraceContractError, check_trace
from ponderscope.models.contract import NAMED, declarations, token_layer_labels
from ponderscope.plugins import load_plugins
from ponderscope.server.app import create_app

B, H, W = 2, 4, 5


def good_trace(**change) -> Trace:
    """A trace that keeps the contract for a batch of B images (blocks and gates both)."""
    cost = torch.rand(B, H, W) + 1
    fields = dict(logits=torch.randn(B, 10), flops=torch.full((B,), 50.0), dense_flops=100.0,
                  blocks=[BlockTrace(ponder_cost=cost, units=cost.floor(), halting=torch.rand(B, 3, H, W), probabilities=torch.rand(B, 3, H, W))],
                  gates=torch.rand(B, 4), executed=torch.rand(B, 4) > 0.5, gate_values=torch.rand(B, 4))
    fields.update(change)
    return Trace(**fields)


def block(**change) -> BlockTrace:
    cost = torch.rand(B, H, W) + 1
    fields = dict(ponder_cost=cost, units=cost.floor())
    fields.update(change)
    return BlockTrace(**fields)


IMAGES = torch.zeros(B, 1, 8, 8)

# (case, trace, field, expected (a part of it), actual (a part of it))
BROKEN = [
    ("logits-1d", good_trace(logits=torch.randn(B)), "logits", "float [2, classes]", "float32 [2]"),
    ("logits-int", good_trace(logits=torch.zeros(B, 10, dtype=torch.long)), "logits", "float [2, classes]", "int64 [2, 10]"),
    ("flops-batch", good_trace(flops=torch.ones(B + 1)), "flops", "[2]", "float32 [3]"),
    ("flops-missing", good_trace(flops=None), "flops", "[2]", "None"),
    ("dense-zero", good_trace(dense_flops=0.0), "dense_flops", "a finite number > 0", "0.0"),
    ("blocks-not-a-list", good_trace(blocks=block()), "blocks", "a list of BlockTrace", "a BlockTrace"),
    ("ponder-cost-2d", good_trace(blocks=[block(ponder_cost=torch.rand(B, H), units=torch.rand(B, H))]),
     "blocks[0].ponder_cost", "float [2, H, W]", "float32 [2, 4]"),
    ("units-other-grid", good_trace(blocks=[block(units=torch.ones(B, H, W - 1))]),
     "blocks[0].units", "[2, 4, 5] (as blocks[0].ponder_cost: one grid)", "float32 [2, 4, 4]"),
    ("halting-other-grid", good_trace(blocks=[block(halting=torch.rand(B, 3, H, W + 1))]),
     "blocks[0].halting", "float [2, n_units, 4, 5]", "float32 [2, 3, 4, 6]"),
    ("probabilities-not-halting's", good_trace(blocks=[block(halting=torch.rand(B, 3, H, W), probabilities=torch.rand(B, 2, H, W))]),
     "blocks[0].probabilities", "[2, 3, 4, 5] (as blocks[0].halting)", "float32 [2, 2, 4, 5]"),
    ("gates-1d", good_trace(gates=torch.rand(B)), "gates", "float [2, L]", "float32 [2]"),
    ("executed-3-beside-gates-4", good_trace(executed=torch.ones(B, 3, dtype=torch.bool)),
     "executed", "bool [2, 4] (as gates: one entry per gated layer)", "bool [2, 3]"),
    ("executed-float", good_trace(executed=torch.ones(B, 4)), "executed", "bool [2, 4]", "float32 [2, 4]"),
    ("gates-without-executed", good_trace(executed=None), "executed", "bool [B, L] beside gates", "None"),
    ("gate-values-alone", good_trace(gates=None, executed=None), "gate_values", "None where gates and executed are None", "float32 [2, 4]"),
    ("ponder-without-steps", good_trace(ponder=torch.ones(B, 1)), "steps", "[B, T] beside ponder", "None"),
    ("exit-taken-alone", good_trace(exit_taken=torch.zeros(B, dtype=torch.long)), "exit_confidence", "float [B, E] beside exit_taken", "None"),
    ("exit-taken-float", good_trace(exit_confidence=torch.rand(B, 3), exit_taken=torch.zeros(B)), "exit_taken", "int [2]", "float32 [2]"),
]


@pytest.mark.parametrize("trace,field,expected,actual", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_each_field_is_checked_and_the_message_names_field_expected_and_actual(trace, field, expected, actual):
    with pytest.raises(TraceContractError) as caught:
        check_trace(trace, "classify", IMAGES)
    error = caught.value
    assert (error.field, expected in error.expected, actual in error.actual) == (field, True, True), str(error)
    assert str(error).startswith(f"Trace.{field}: expected ") and ", got " in str(error)


def test_optional_fields_are_optional_and_good_traces_pass():
    check_trace(good_trace(), "classify", IMAGES)
    check_trace(good_trace(blocks=[block()], gates=None, executed=None, gate_values=None), "classify", IMAGES)  # halting None
    check_trace(good_trace(blocks=None, gates=None, executed=None, gate_values=None), "classify", IMAGES)  # every unit runs
    assert block().n_units is None and good_trace().blocks[0].n_units == 3


def test_gate_names_must_name_every_gated_layer():
    check_trace(good_trace(), "classify", IMAGES, gate_names=["a", "b", "c", "d"])
    with pytest.raises(TraceContractError, match=r"Trace.gates: expected \[B, L\] with L = 4, the length of the model's gate_names, got L = 3"):
        check_trace(good_trace(gates=torch.rand(B, 3), executed=torch.ones(B, 3, dtype=torch.bool), gate_values=None), "classify",
                    IMAGES, gate_names=["a", "b", "c", "d"])
    for wrong in ("abcd", 4, ["a", "b", "c", 4]):
        with pytest.raises(TraceContractError, match="a list of strings"):
            check_trace(good_trace(), "classify", IMAGES, gate_names=wrong)


def test_sequence_tasks_need_ponder_and_steps_per_input_step():
    text = torch.zeros(1, 7, dtype=torch.long)
    ok = Trace(logits=torch.randn(1, 7, 256), flops=torch.ones(1), dense_flops=2.0, ponder=torch.ones(1, 7), steps=torch.ones(1, 7, dtype=torch.long))
    check_trace(ok, "bytes-lm", text)
    with pytest.raises(TraceContractError, match=r"Trace.ponder: expected float \[1, 7\] \(a bytes-lm model's ponder per input step\), got None"):
        check_trace(Trace(logits=ok.logits, flops=ok.flops, dense_flops=2.0), "bytes-lm", text)
    with pytest.raises(TraceContractError, match=r"Trace.ponder: expected float \[1, 7\], got float32 \[1, 6\]"):
        check_trace(Trace(logits=ok.logits, flops=ok.flops, dense_flops=2.0, ponder=torch.ones(1, 6), steps=torch.ones(1, 6)), "bytes-lm", text)
    with pytest.raises(TraceContractError, match=r"Trace.logits: expected float \[1, 2\], got float32 \[1, 3\]"):
        check_trace(Trace(logits=torch.randn(1, 3), flops=ok.flops, dense_flops=2.0, ponder=torch.ones(1, 1), steps=torch.ones(1, 1)), "parity", torch.zeros(1, 4))
    with pytest.raises(TraceContractError, match=r"Trace.extras\['halting_distribution'\]: expected float \[1, 1, N_max\], got float32 \[1, 5\]"):
        check_trace(Trace(logits=torch.randn(1, 2), flops=ok.flops, dense_flops=2.0, ponder=torch.ones(1, 1), steps=torch.ones(1, 1),
                          extras={"halting_distribution": torch.rand(1, 5)}), "parity", torch.zeros(1, 4))



# ------------------------------------------------------------------ per input step x layer: token_layers
T, L = 5, 3
TEXT = torch.zeros(B, T, dtype=torch.long)


def token_trace(**change) -> Trace:
    """A byte LM's trace with token_layers [B, T, L] and their weights (0 where a layer did not run)."""
    ran = torch.rand(B, T, L) > 0.4
    fields = dict(logits=torch.randn(B, T, 256), flops=torch.ones(B), dense_flops=2.0, ponder=torch.ones(B, T), steps=torch.ones(B, T),
                  token_layers=ran, token_layer_weights=torch.rand(B, T, L) * ran)
    fields.update(change)
    return Trace(**fields)


TOKEN_BROKEN = [
    ("token-layers-2d", token_trace(token_layers=torch.ones(B, T, dtype=torch.bool), token_layer_weights=None),
     "token_layers", "bool [2, 5, L]", "bool [2, 5]"),
    ("token-layers-float", token_trace(token_layers=torch.ones(B, T, L), token_layer_weights=None), "token_layers", "bool [2, 5, L]", "float32 [2, 5, 3]"),
    ("token-layers-other-steps", token_trace(token_layers=torch.ones(B, T + 1, L, dtype=torch.bool), token_layer_weights=None),
     "token_layers", "bool [2, 5, L]", "bool [2, 6, 3]"),
    ("weights-alone", token_trace(token_layers=None), "token_layer_weights", "None where token_layers is None", "float32 [2, 5, 3]"),
    ("weights-other-layers", token_trace(token_layers=torch.ones(B, T, L, dtype=torch.bool), token_layer_weights=torch.rand(B, T, L + 1)),
     "token_layer_weights", "float [2, 5, 3] (as token_layers: one weight per input step and layer)", "float32 [2, 5, 4]"),
    ("weights-bool", token_trace(token_layers=torch.ones(B, T, L, dtype=torch.bool), token_layer_weights=torch.ones(B, T, L, dtype=torch.bool)),
     "token_layer_weights", "float [2, 5, 3]", "bool [2, 5, 3]"),
    ("weights-nan", token_trace(token_layers=torch.ones(B, T, L, dtype=torch.bool), token_layer_weights=torch.full((B, T, L), float("nan"))),
     "token_layer_weights", "finite numbers", "30 NaN or infinite value(s)"),
    ("weights-negative", token_trace(token_layers=torch.ones(B, T, L, dtype=torch.bool), token_layer_weights=-torch.ones(B, T, L)),
     "token_layer_weights", ">= 0", "30 negative weight(s), first at [0, 0, 0]: -1"),
]


@pytest.mark.parametrize("trace,field,expected,actual", [case[1:] for case in TOKEN_BROKEN], ids=[case[0] for case in TOKEN_BROKEN])
def test_token_layers_are_checked_and_the_message_names_the_field(trace, field, expected, actual):
    with pytest.raises(TraceContractError) as caught:
        check_trace(trace, "bytes-lm", TEXT)
    error = caught.value
    assert (error.field, expected in error.expected, actual in error.actual) == (field, True, True), str(error)
    assert str(error).startswith(f"Trace.{field}: expected ")


def test_token_layer_weights_are_zero_where_the_layer_did_not_run():
    ran = torch.ones(B, T, L, dtype=torch.bool)
    ran[1, 2, 0] = False  # byte 2 of text 1 skipped layer 0, and yet has a weight there
    weights = torch.full((B, T, L), 0.25)
    with pytest.raises(TraceContractError) as caught:
        check_trace(token_trace(token_layers=ran, token_layer_weights=weights), "bytes-lm", TEXT)
    assert str(caught.value) == ("Trace.token_layer_weights: expected 0 wherever token_layers is False (a layer that did not run gives no weight), "
                                 "got 1 nonzero weight(s) where the layer did not run, first at [1, 2, 0]: 0.25")
    weights[1, 2, 0] = 0.0
    check_trace(token_trace(token_layers=ran, token_layer_weights=weights), "bytes-lm", TEXT)


def test_token_layer_weights_are_not_negative():
    ran = torch.ones(B, T, L, dtype=torch.bool)
    weights = torch.full((B, T, L), 0.25)
    weights[1, 3, 2] = -0.5  # the first negative one in row-major order
    weights[1, 4, 0] = -0.125
    with pytest.raises(TraceContractError) as caught:
        check_trace(token_trace(token_layers=ran, token_layer_weights=weights), "bytes-lm", TEXT)
    assert str(caught.value) == ("Trace.token_layer_weights: expected >= 0 (ACT's halting weights and a router's sigmoid weights are), "
                                 "got 2 negative weight(s), first at [1, 3, 2]: -0.5")
    weights[1, 3, 2] = weights[1, 4, 0] = 0.0  # 0 is a weight (a layer that ran with no say in the output)
    check_trace(token_trace(token_layers=ran, token_layer_weights=weights), "bytes-lm", TEXT)


def test_token_layers_are_for_byte_lms_only_and_optional():
    check_trace(token_trace(), "bytes-lm", TEXT)
    check_trace(token_trace(token_layer_weights=None), "bytes-lm", TEXT)  # a dense twin: which layers ran, no weights
    check_trace(token_trace(token_layers=None, token_layer_weights=None), "bytes-lm", TEXT)  # the ACT-LSTM: neither
    parity = dict(logits=torch.randn(B, 2), ponder=torch.ones(B, 1), steps=torch.ones(B, 1))
    check_trace(token_trace(**parity, token_layers=None, token_layer_weights=None), "parity", torch.zeros(B, 4))
    for weights in (None, torch.ones(B, 1, L)):  # no view draws them for parity: with or without weights, an error
        one_step = token_trace(**parity, token_layers=torch.ones(B, 1, L, dtype=torch.bool), token_layer_weights=weights)
        with pytest.raises(TraceContractError, match=r"^Trace.token_layers: expected None for a parity model \(per input step and layer: "
                                                     r"bytes-lm models only\), got bool \[2, 1, 3\]$"):
            check_trace(one_step, "parity", torch.zeros(B, 4))
    with pytest.raises(TraceContractError, match=r"^Trace.token_layers: expected None for a classify model \(per input step and layer: "
                                                 r"bytes-lm models only\), got bool \[2, 5, 3\]$"):
        check_trace(good_trace(token_layers=torch.ones(B, T, L, dtype=torch.bool)), "classify", IMAGES)


def test_token_layer_names_must_name_every_layer():
    assert "token_layer_names" in NAMED
    check_trace(token_trace(), "bytes-lm", TEXT, token_layer_names=["step 1", "step 2", "step 3"])
    with pytest.raises(TraceContractError) as caught:
        check_trace(token_trace(), "bytes-lm", TEXT, token_layer_names=["step 1", "step 2"])
    assert str(caught.value) == ("Trace.token_layers: expected [B, T, L] with L = 2, the length of the model's token_layer_names, "
                                 "got L = 3 (token_layer_names: 2 names)")
    for wrong in ("abc", 3, ["a", "b", 3]):
        with pytest.raises(TraceContractError, match="^Trace.token_layers: expected the model's token_layer_names: a list of strings, one per token layer"):
            check_trace(token_trace(), "bytes-lm", TEXT, token_layer_names=wrong)
    assert token_layer_labels(None, 3) == ["layer 1", "layer 2", "layer 3"]
    assert token_layer_labels(("a", "b"), 2) == ["a", "b"]

    class Declares(torch.nn.Module):
        token_layer_names = ["step 1", "step 2", "step 3"]

    assert declarations(Declares())["token_layer_names"] == ["step 1", "step 2", "step 3"]
    assert declarations(torch.nn.Linear(1, 1))["token_layer_names"] is None


@pytest.mark.parametrize("name,names", [("ut_act", [f"step {n}" for n in range(1, 7)]),
                                        ("mod", ["layer 1", "layer 2 (routed)", "layer 3", "layer 4 (routed)", "layer 5", "layer 6 (routed)"]),
                                        ("ut", [f"step {n}" for n in range(1, 7)]), ("transformer_lm", [f"layer {n}" for n in range(1, 7)])])
def test_the_transformer_byte_lms_keep_the_contract(name, names):
    """The two families and their dense twins, on texts longer than their context (read in windows)."""
    model = models.create_model(name, dim=32, heads=2, context=32).eval()
    x = torch.randint(0, 256, (2, 70))
    with torch.no_grad():
        trace = model.trace(x)
    check_trace(trace, "bytes-lm", x, **declarations(model))
    assert tuple(trace.token_layers.shape) == (2, 70, 6) and model.token_layer_names == names
    assert (trace.token_layer_weights is None) == (name in ("ut", "transformer_lm"))

# ------------------------------------------------------------------ served: the load check and every answer
PLUGIN = '''
import torch, torch.nn as nn, torch.nn.functional as F
from ponderscope.models import BlockTrace, Trace, register_family, register_model

register_family("{family}", "Contract test net")


class Net(nn.Module):
    def __init__(self, breaks="none", always=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        self.breaks, self.always = breaks, always
        self.gate_names = ["a", "b", "c", "d"]

    def trace(self, x):
        h = F.relu(self.conv(x))
        batch = x.shape[0]
        cost = 1 + torch.sigmoid(h.mean(1))  # [B, H, W]
        units = torch.ones_like(cost)
        gates = torch.sigmoid(h.mean((2, 3)))  # [B, 4]
        executed = gates > 0.5
        kind = self.breaks if self.always or bool(x.abs().sum() > 0) else "none"  # the load probe is zeros
        blocks = [BlockTrace(ponder_cost=cost, units=units)]  # halting and probabilities left None
        if kind == "gates-1d":
            gates = gates[:, 0]
        elif kind == "executed-3":
            executed = executed[:, :3]
        elif kind == "gates-3-of-4-names":
            gates, executed = gates[:, :3], executed[:, :3]
        elif kind == "ponder-cost-2d":
            blocks = [BlockTrace(ponder_cost=cost[:, 0], units=units[:, 0])]
        return Trace(logits=self.fc(h.mean((2, 3))), flops=torch.full((batch,), 40.0), dense_flops=80.0, blocks=blocks,
                     gates=gates, executed=executed)

    def forward(self, x):
        return self.trace(x).logits


@register_model(family="{family}")
def {name}(**kwargs):
    """A per-position and per-layer model whose trace breaks the contract as told"""
    return Net(**kwargs)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path_factory.mktemp("plugin")
    path = folder / f"contract_{tag}.py"
    path.write_text(PLUGIN.format(family=f"contract-{tag}", name=f"contract_net_{tag}"))
    load_plugins([path])
    return f"contract_net_{tag}"


def save(folder: Path, name: str, **kwargs) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, **kwargs)
    models.save_checkpoint(model, folder, {"task": {"name": "classify"}, "dataset": None, "classes": [f"c{i}" for i in range(10)],
                                           "preprocess": {"channels": 1, "input_size": [8, 8], "mean": [0.5], "std": [0.5]}})


def png() -> bytes:
    image = Image.new("L", (8, 8), 0)
    image.putpixel((3, 3), 255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ANSWER_BREAKS = [
    ("gates-1d", "Trace.gates: expected float [1, L], got float32 [1]"),
    ("executed-3", "Trace.executed: expected bool [1, 4] (as gates: one entry per gated layer), got bool [1, 3]"),
    ("gates-3-of-4-names", "Trace.gates: expected [B, L] with L = 4, the length of the model's gate_names, got L = 3 (gate_names: 4 names)"),
    ("ponder-cost-2d", "Trace.blocks[0].ponder_cost: expected float [1, H, W], got float32 [1, 8]"),
]


def test_served_answers_check_the_trace(plugin, tmp_path):
    root = tmp_path / "ckpts"
    save(root / "fine", plugin)
    for kind, _ in ANSWER_BREAKS:
        save(root / kind, plugin, breaks=kind)
    save(root / "broken-at-load", plugin, breaks="executed-3", always=True)
    client = TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache"), raise_server_exceptions=False)

    [load_error] = client.get("/api/health").json()["load_errors"]
    assert "broken-at-load/card.json: " in load_error and "does not fit the Trace contract" in load_error
    assert load_error.endswith("on a 1-channel image (preprocess.channels) of 8x9: "
                               "Trace.executed: expected bool [1, 4] (as gates: one entry per gated layer), got bool [1, 3]")

    fine = client.post("/api/models/fine/image", files={"file": ("dot.png", png(), "image/png")})
    assert fine.status_code == 200, fine.text  # halting None: served, its block's unit count unknown
    answer = fine.json()
    [only] = answer["ponder"]["blocks"]
    assert only["n_units"] is None and answer["gates"]["layers"] == ["a", "b", "c", "d"]
    assert answer["figures"]["blocks"]["layout"]["annotations"][0]["text"].endswith(f"N {only['mean_units']:.2f}")  # no "/None"
    for kind, message in ANSWER_BREAKS:
        response = client.post(f"/api/models/{kind}/image", files={"file": ("dot.png", png(), "image/png")})
        assert response.status_code == 422, (kind, response.status_code, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(f"model '{kind}' ({plugin}) broke the Trace contract") and detail.endswith(message), detail


@pytest.mark.usefixtures("fashion_mnist")
def test_a_dataset_job_on_a_broken_trace_fails_once_with_the_reason(plugin, tmp_path):
    """The dataset view's job runs the model over its test set: a trace that breaks the contract
    ends the job with the reason, and asking again gives the same answer without running again."""
    root = tmp_path / "ckpts"
    torch.manual_seed(0)
    model = models.create_model(plugin, breaks="executed-3")
    models.save_checkpoint(model, root / "broken", {"task": {"name": "classify"}, "dataset": "fashion-mnist", "classes": None,
                                                    "preprocess": {"channels": 1, "input_size": [28, 28], "mean": [0.286], "std": [0.353]}})
    with TestClient(create_app([root], device="cpu", cache_dir=tmp_path / "cache")) as client:
        status = client.get("/api/models/broken/dataset").json()
        for _ in range(600):
            if status["status"] != "running":
                break
            time.sleep(0.05)
            status = client.get("/api/models/broken/dataset").json()
        assert status["status"] == "error", status
        assert status["message"] == (f"model 'broken' ({plugin}) broke the Trace contract (docs/own-models.md, section 3) on this input: "
                                     "Trace.executed: expected bool [250, 4] (as gates: one entry per gated layer), got bool [250, 3]")
        job = next(iter(client.app.state.dataset_jobs.jobs.values()))
        assert client.get("/api/models/broken/dataset").json() == status and next(iter(client.app.state.dataset_jobs.jobs.values())) is job
