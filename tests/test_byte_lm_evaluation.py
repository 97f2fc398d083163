"""BytesLM.evaluate's numbers that issue 25 is judged on (what `ponderscope eval` writes into a byte
LM's card): "flops_ratio", the executed FLOPs over the dense twin's (Trace.dense_flops), and, for a
model whose trace has token_layers, "layer_names", "layer_rates" and each character class's
"layers" (the share of the class's held-out bytes that each layer computed).

Checked against a re-computation written here: the same held-out windows (BytesLM.eval_windows)
through model.trace in one batch, the FLOPs summed, the layers counted byte by byte in plain
Python with the byte classes of ponderscope.core.workloads.byte_class. The model is a small,
untrained Mixture-of-Depths (dim 32, 2 heads, context 16) with its default routing, the causal
predictor, in eval mode; its predictors route some bytes through a routed layer and not others.
"""
from __future__ import annotations

import pytest
import torch

from conftest import require_data
from ponderscope.core.workloads import CHAR_CLASSES, BytesLM, byte_class
from ponderscope.models import create_model

SEQ = 40  # held-out windows of 40 bytes (longer than the context: each runs as windows of 16)
LIMIT = 400  # -> 10 windows
BATCH = 4  # evaluate's batches of 4, 4 and 2 windows; the re-computation runs all 10 at once


@pytest.fixture(scope="module")
def workload():
    return require_data(BytesLM, "jargon", torch.device("cpu"), seq_len=SEQ)  # the Jargon File: skipped (locally) without it


def small(name: str):
    torch.manual_seed(0)
    return create_model(name, dim=32, heads=2, context=16).eval()


def windows_of(workload: BytesLM) -> tuple[torch.Tensor, int]:
    """The evaluated inputs, [windows, SEQ], cut from eval_windows here."""
    stream = workload.eval_windows(LIMIT)
    n_windows = (len(stream) - 1) // SEQ
    return torch.stack([stream[i * SEQ : (i + 1) * SEQ] for i in range(n_windows)]), n_windows


def test_mod_flops_ratio_and_per_class_layer_rates_are_those_of_its_trace(workload):
    model = small("mod")
    assert model.routing == "predictor" and not model.training
    stats = workload.evaluate(model, limit=LIMIT, batch_size=BATCH)

    windows, n_windows = windows_of(workload)
    assert n_windows == 10 and stats["bytes"] == n_windows * SEQ
    with torch.no_grad():
        trace = model.trace(windows)

    # FLOPs: everything the windows executed over what the dense twin would have, window by window
    flops_ratio = float(trace.flops.double().sum()) / (n_windows * float(trace.dense_flops))
    assert 0 < flops_ratio < 1, "test set-up: the routed layers should skip some bytes"
    assert stats["flops_ratio"] == pytest.approx(flops_ratio, rel=1e-9)

    # the layers per byte, counted by hand per character class
    ran = trace.token_layers.tolist()  # [windows][SEQ][L] of bool
    names = model.token_layer_names
    counts: dict[str, list[int]] = {}
    totals: dict[str, int] = {}
    for w in range(n_windows):
        row = windows[w].tolist()
        for t, byte in enumerate(row):
            name = byte_class(byte, row[t - 1] if t > 0 else None)  # each window starts afresh: no previous byte
            totals[name] = totals.get(name, 0) + 1
            counts.setdefault(name, [0] * len(names))
            for l, did in enumerate(ran[w][t]):
                counts[name][l] += int(did)
    assert stats["layer_names"] == names == ["layer 1", "layer 2 (routed)", "layer 3", "layer 4 (routed)", "layer 5", "layer 6 (routed)"]
    assert list(stats["per_char_class"]) == [c for c in CHAR_CLASSES if c in totals]
    assert len(totals) >= 3, "test set-up: several classes of bytes"
    for name, row in stats["per_char_class"].items():
        assert row["count"] == totals[name], name
        assert row["layers"] == pytest.approx([n / totals[name] for n in counts[name]], abs=1e-5), name
    overall = [sum(counts[c][l] for c in counts) / (n_windows * SEQ) for l in range(len(names))]
    assert stats["layer_rates"] == pytest.approx(overall, abs=1e-5)
    # the unrouted layers compute every byte; some routed layer some bytes and not others
    assert [stats["layer_rates"][l] for l in (0, 2, 4)] == [1.0, 1.0, 1.0]
    assert any(0 < stats["layer_rates"][l] < 1 for l in (1, 3, 5))


def test_the_dense_twin_costs_its_dense_flops(workload):
    """transformer_lm: every byte through every layer, flops_ratio 1 and every layer rate 1."""
    stats = workload.evaluate(small("transformer_lm"), limit=LIMIT, batch_size=BATCH)
    assert stats["flops_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert stats["layer_rates"] == [1.0] * 6
    assert all(row["layers"] == [1.0] * 6 for row in stats["per_char_class"].values())
