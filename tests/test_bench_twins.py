"""bench/twins.py (issue 24 item 5, `python -m bench --only avit,early-exit`): the FLOPs ratios its
table reports are the traces' (the adaptive model's recorded FLOPs / its dense twin's on the same
images, the same for sparse and masked and at both batch sizes), a stand-in for a checkpoint not
trained yet is built as its config says and calibrated, and a run of its keys alone replaces only
its section of results.md."""
from __future__ import annotations

import re

import pytest
import torch

from bench import twins
from bench.__main__ import AUTO_MARKERS, write_marked_section
from bench.common import Report
from ponderscope.models import create_model

VIT = dict(image_size=24, patch=4, dim=32, depth=4, heads=4, mlp_ratio=2.0, num_classes=10, in_channels=1)
RESNET = dict(depth=8, widths=[8, 16, 32], num_classes=10, in_channels=1)


def small_avit():
    torch.manual_seed(0)
    adaptive, dense = create_model("avit", **VIT).eval(), create_model("vit", **VIT).eval()
    images = torch.randn(32, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    twins.calibrate(adaptive, "gate_center", (-20.0, 20.0), [images], 0.6)
    return twins.TWINS[0], adaptive, dense, images


def small_early_exit():
    torch.manual_seed(0)
    dense = create_model("resnet", **RESNET).eval()
    adaptive = create_model("early_exit_resnet", **RESNET).eval()
    adaptive.load_state_dict(dense.state_dict(), strict=False)  # the dense network is its backbone and last exit
    with torch.no_grad():
        for head in adaptive.exits:  # spread the random exits' confidences
            head.classifier.weight.mul_(40.0)
    images = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    twins.calibrate(adaptive, "threshold", (0.0, 1.0), [images], 0.6)
    return twins.TWINS[1], adaptive, dense, images


@pytest.mark.parametrize("make", [small_avit, small_early_exit], ids=["avit", "early-exit"])
def test_reported_flops_ratio_is_the_traces(make):
    pair, adaptive, dense, images = make()
    with torch.no_grad():
        spent = {}
        for execution in ("sparse", "masked"):
            adaptive.execution = execution
            spent[execution] = [adaptive.trace(x[None]) for x in images]
        adaptive.execution = "sparse"
        twin = [dense.trace(x[None]) for x in images]
    expected = sum(float(t.flops.sum()) for t in spent["sparse"]) / sum(float(t.flops.sum()) for t in twin)
    assert expected == pytest.approx(sum(float(t.flops.sum()) for t in spent["masked"]) / sum(float(t.flops.sum()) for t in twin))
    # the twin's FLOPs are what the adaptive model counts as its dense network's
    assert all(float(t.flops) == pytest.approx(s.dense_flops) for t, s in zip(twin, spent["sparse"]))
    assert 0.3 < expected < 0.95  # something halts / exits, not everything

    report = Report()
    figures = twins.twin_rows(report, pair, adaptive, dense, images, {1: 1, 32: 1}, ("adaptive", "dense"))
    assert [f["batch"] for f in figures] == [1, 32]
    rows = [line for line in report.lines if line.startswith("| adaptive |")]
    assert len(rows) == 2 and [row.split(" | ")[3] for row in rows] == ["32 x 1", "1 x 32"]
    for figure, line in zip(figures, rows):
        assert figure["flops ratio"] == pytest.approx(expected, rel=1e-6)
        assert figure["masked flops ratio"] == pytest.approx(expected, rel=1e-6)
        cells = line.split(" | ")
        assert cells[4] == f"{expected:.3f}"  # the FLOPs ratio column
        assert cells[5] == f"**{figure['sparse ratio']:.3f}**" and cells[6] == f"{figure['masked ratio']:.3f}"
        assert figure["sparse ratio"] > 0 and figure["masked ratio"] > 0
        assert cells[7] == f"{figure['sparse ratio'] - expected:+.3f}"
    assert adaptive.execution == "sparse"


def test_calibrate_reaches_the_target():
    _, adaptive, _, images = small_avit()
    assert twins.own_flops_ratio(adaptive, [images]) == pytest.approx(0.6, abs=0.02)
    _, early, _, images = small_early_exit()
    reached = twins.own_flops_ratio(early, [images])
    assert 0.6 <= reached < 0.7  # a step function: the first step at or above
    with torch.no_grad():  # the threshold in the middle of its step, away from every image's confidence
        confidence = torch.stack([logits.softmax(-1).amax(-1) for logits in early.every_exit(images)[:-1]])
    assert float((confidence - early.threshold).abs().min()) > 1e-4


def test_stand_in_for_an_untrained_early_exit_model(tmp_path):
    """Only the dense twin trained: the early-exit model is its config's, on the twin's weights
    (the config's init_from), with random exits; the test images come from the twin's card."""
    if not twins.trained("fmnist_resnet32"):
        pytest.skip("checkpoints/fmnist_resnet32 is not here")
    (tmp_path / "fmnist_resnet32").symlink_to(twins.CHECKPOINTS / "fmnist_resnet32")
    adaptive, dense, card, stand_ins = twins.load_twins(twins.TWINS[1], checkpoints=tmp_path)
    assert list(stand_ins) == ["fmnist_early_exit_resnet32"] and "init_from" in stand_ins["fmnist_early_exit_resnet32"]
    assert card.dataset == "fashion-mnist"
    backbone = {k: v for k, v in adaptive.state_dict().items() if not k.startswith("exits.")}
    assert backbone.keys() == dense.state_dict().keys()
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in backbone.items())


def test_a_run_of_its_keys_replaces_only_its_section(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Sparse execution benchmark\n\nfull run\n\n" + "\n".join([AUTO_MARKERS[0], "auto rows", AUTO_MARKERS[1]]) + "\n",
                       encoding="utf-8")
    lines = ["# title", twins.MARKERS[0], "| new |", twins.MARKERS[1], "", "(total 1 s)"]
    write_marked_section(lines, twins.MARKERS, "(stamp 1)", results)  # not there yet: appended
    first = results.read_text(encoding="utf-8")
    assert first.endswith("\n".join([twins.MARKERS[0], "(stamp 1)", "| new |", twins.MARKERS[1]]) + "\n")
    assert "full run" in first and "auto rows" in first
    lines[2] = "| newer |"
    write_marked_section(lines, twins.MARKERS, "(stamp 2)", results)  # there: replaced in place
    second = results.read_text(encoding="utf-8")
    assert second == first.replace("(stamp 1)", "(stamp 2)").replace("| new |", "| newer |")
    assert len(re.findall(re.escape(twins.MARKERS[0]), second)) == 1
