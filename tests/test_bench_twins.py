"""bench/twins.py (issue 24 item 5, `python -m bench --only avit,early-exit`): the FLOPs ratios its
table reports are the traces' (the adaptive model's recorded FLOPs / its dense twin's on the same
images, the same for sparse and masked and at both batch sizes), a stand-in for a checkpoint not
trained yet is built as its config says and calibrated, and a run of its keys alone replaces only
its section of results.md."""
from __future__ import annotations

import json
import re

import pytest
import torch

from bench import byte_twins, twins
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


# ----------------------------------------------------------------------------- byte LMs (issue 25 item 5)

BYTE_LM = dict(dim=32, heads=2, mlp_ratio=2.0, context=32)
BYTE_LM_CARD = {"task": {"name": "bytes-lm"}, "dataset": "jargon"}


def small_byte_lms() -> dict:
    """Untrained small models under the bundled checkpoints' names: ut_act with a halting unit
    scaled up (its bytes halt after 1 to 4 steps), mod routing by its predictor, and their twins."""
    torch.manual_seed(0)
    ut_act = create_model("ut_act", **BYTE_LM, max_steps=4, halting_bias=1.0)
    with torch.no_grad():
        ut_act.halting_unit.weight.mul_(20.0)
    return {"jargon_ut_act": ut_act, "jargon_ut": create_model("ut", **BYTE_LM, max_steps=4),
            "jargon_mod": create_model("mod", **BYTE_LM, depth=4, capacity=0.25), "jargon_transformer": create_model("transformer_lm", **BYTE_LM, depth=4)}


def saved_byte_lms(directory):
    from ponderscope.models import save_checkpoint

    made = small_byte_lms()
    for name, model in made.items():
        save_checkpoint(model.eval(), directory / name, BYTE_LM_CARD)
    return made


def byte_windows(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, byte_twins.SEQ_LEN), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("pair", byte_twins.TWINS, ids=byte_twins.KEYS)
def test_byte_twins_report_the_traces_flops_ratio(tmp_path, pair):
    """The checkpoints are taken by name; the FLOPs ratio of both rows is the adaptive model's
    recorded FLOPs, window by window, over its twin's (= its own dense_flops), the same at batch 1
    and 64 and for sparse and masked; bytes per second are the bytes over the median times."""
    made = saved_byte_lms(tmp_path)
    adaptive, dense, stand_ins = byte_twins.load_byte_twins(pair, checkpoints=tmp_path)
    assert stand_ins == {}
    assert adaptive.checkpoint_path == str(tmp_path / pair.adaptive) and dense.checkpoint_path == str(tmp_path / pair.dense)
    assert all(torch.equal(v, made[pair.adaptive].state_dict()[k]) for k, v in adaptive.state_dict().items())
    windows = byte_windows()
    with torch.no_grad():
        alone = {execution: [] for execution in ("sparse", "masked")}
        for execution in alone:
            adaptive.execution = execution
            alone[execution] = [adaptive.trace(w[None]) for w in windows]
        adaptive.execution = "sparse"
        twin = [dense.trace(w[None]) for w in windows]
    dense_flops = adaptive.dense_flops(byte_twins.SEQ_LEN)
    assert all(float(t.flops) == dense_flops for t in twin)  # the twin costs what the adaptive model calls dense
    expected = sum(float(t.flops) for t in alone["sparse"]) / (len(windows) * dense_flops)
    assert expected == sum(float(t.flops) for t in alone["masked"]) / (len(windows) * dense_flops)
    assert 0.3 < expected < 0.95  # something halts / is routed past, not everything
    steps = float(torch.cat([t.steps.float() for t in alone["sparse"]]).mean())

    report = Report()
    figures = byte_twins.byte_twin_rows(report, pair, adaptive, dense, windows, {1: 1, 64: 1}, ("adaptive", "dense"))
    assert [f["batch"] for f in figures] == [1, 64]
    rows = [line for line in report.lines if line.startswith("| adaptive |")]
    assert len(rows) == 2 and [row.split(" | ")[3] for row in rows] == ["64 x 1", "1 x 64"]
    layers = 4
    for figure, line in zip(figures, rows):
        assert figure["flops ratio"] == pytest.approx(expected, rel=1e-12)
        assert figure["masked flops ratio"] == pytest.approx(expected, rel=1e-12)
        assert figure["twin matches"] and figure["bytes"] == 64 * byte_twins.SEQ_LEN
        assert figure["per byte"] == pytest.approx(steps, rel=1e-6)
        cells = line.split(" | ")
        assert cells[2] == "128 bytes" and cells[4] == f"{expected:.3f}"
        assert cells[5] == f"**{figure['sparse ratio']:.3f}**" and cells[6] == f"{figure['masked ratio']:.3f}"
        assert cells[7] == f"{figure['sparse ratio'] - expected:+.3f}"
        assert cells[8] == f"{steps:.2f} of {layers}"
        for name, cell in zip(("dense", "sparse", "masked"), (cells[9], cells[10].strip("*"), cells[11].rstrip(" |"))):
            assert figure[f"{name} bytes/s"] == pytest.approx(64 * byte_twins.SEQ_LEN / figure[name])
            assert cell == f"{figure[f'{name} bytes/s']:.0f}"
        assert figure["sparse ratio"] > 0 and figure["masked ratio"] > 0
    assert adaptive.execution == "sparse"


def test_byte_twin_stand_ins_are_the_size_of_their_twin(tmp_path):
    """Not trained yet: the model of its config if there is one, else its twin's model_kwargs
    (from the twin's checkpoint card or config), else the registry's defaults; said as such."""
    configs, checkpoints = tmp_path / "configs", tmp_path / "checkpoints"
    configs.mkdir()
    checkpoints.mkdir()
    (configs / "jargon_ut_act.json").write_text(json.dumps({"model": "ut_act", "model_kwargs": {**BYTE_LM, "max_steps": 3}}), encoding="utf-8")
    adaptive, dense, stand_ins = byte_twins.load_byte_twins(byte_twins.TWINS[0], checkpoints, configs)
    assert stand_ins == {"jargon_ut_act": "configs/jargon_ut_act.json's model, random weights (seed 0)",
                         "jargon_ut": "ut with jargon_ut_act's model_kwargs (no configs/jargon_ut.json), random weights (seed 0)"}
    assert (adaptive.registry_name, dense.registry_name) == ("ut_act", "ut") and adaptive.max_steps == dense.max_steps == 3
    x = byte_windows(2)
    with torch.no_grad():
        assert dense.trace(x).flops.tolist() == [adaptive.dense_flops(x.shape[1])] * 2
    # Only the dense twin trained: the adaptive model takes its card's model_kwargs.
    saved_byte_lms(checkpoints)
    (checkpoints / "jargon_mod" / "card.json").unlink()
    adaptive, dense, stand_ins = byte_twins.load_byte_twins(byte_twins.TWINS[1], checkpoints, configs)
    assert list(stand_ins) == ["jargon_mod"] and "jargon_transformer's model_kwargs" in stand_ins["jargon_mod"]
    assert dense.checkpoint_path == str(checkpoints / "jargon_transformer")
    assert adaptive.registry_name == "mod" and adaptive.depth == 4 and adaptive.context == 32 and any(adaptive.routed)
    with torch.no_grad():
        assert dense.trace(x).flops.tolist() == [adaptive.dense_flops(x.shape[1])] * 2
    # Nothing at all: the registry's defaults, for both.
    adaptive, dense, stand_ins = byte_twins.load_byte_twins(byte_twins.TWINS[1], tmp_path / "none", configs)
    assert sorted(stand_ins) == ["jargon_mod", "jargon_transformer"] and "registry's defaults" in stand_ins["jargon_mod"]
    assert adaptive.depth == dense.depth and adaptive.context == dense.context == byte_twins.SEQ_LEN


def test_held_out_windows_are_evaluations():
    from ponderscope.core import data

    try:
        _, held_out = data.split_text(data.load_text_corpus("jargon"))
    except data.DataSourceMissing:
        pytest.skip("the Jargon File is not installed")
    windows = byte_twins.held_out_windows(3)
    assert windows.shape == (3, 128) and windows.dtype == torch.long
    assert bytes(windows.flatten().tolist()) == held_out[: 3 * 128]


def test_only_ut_act_mod_runs_the_byte_section(tmp_path, monkeypatch, capsys):
    """`python -m bench --only ut-act,mod` runs this section alone, on the checkpoints by name, and
    its run replaces only its own marked section of results.md."""
    from bench import __main__ as bench_main

    saved_byte_lms(tmp_path)
    monkeypatch.setattr(byte_twins, "CHECKPOINTS", tmp_path)
    monkeypatch.setattr(byte_twins, "held_out_windows", lambda n=64: byte_windows(n)[:, :32])  # one window of the models' context: quicker
    assert set(byte_twins.KEYS) <= set(bench_main.ALL_SECTIONS.split(","))
    assert bench_main.MARKED_SECTIONS[byte_twins.MARKERS] == byte_twins.KEYS
    bench_main.main(["--quick", "--only", "ut-act,mod", "--out", "-"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| jargon_")]
    assert [r.split(" | ")[:4] for r in rows] == [["| jargon_ut_act", "jargon_ut", "32 bytes", "64 x 1"], ["| jargon_ut_act", "jargon_ut", "32 bytes", "1 x 64"],
                                                  ["| jargon_mod", "jargon_transformer", "32 bytes", "64 x 1"], ["| jargon_mod", "jargon_transformer", "32 bytes", "1 x 64"]]
    assert "(*stand-in*)" not in out and "A-ViT" not in out and byte_twins.MARKERS[0] in out and byte_twins.MARKERS[1] in out
    results = tmp_path / "results.md"
    results.write_text("# Sparse execution benchmark\n\n" + "\n".join([twins.MARKERS[0], "twin rows", twins.MARKERS[1]]) + "\n", encoding="utf-8")
    lines = out.splitlines()
    write_marked_section(lines, byte_twins.MARKERS, "(stamp)", results)
    text = results.read_text(encoding="utf-8")
    assert "twin rows" in text and text.count(byte_twins.MARKERS[0]) == 1 and all(r in text for r in rows)
