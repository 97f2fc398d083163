"""The early-exit ResNet (models/early_exit.py): the exit rule against a plain per-image loop with
FLOPs counted by hooks, sparse = masked, the two extremes of the threshold, the summed loss, a
frozen backbone, and training's init_from."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponderscope.models import create_model, save_checkpoint
from ponderscope.training.train import ConfigError, _init_from
from ponderscope.training.distributed import Processes
from tests.test_sparse import traces

KWARGS = dict(depth=8, widths=[8, 16, 32], num_classes=10, in_channels=1)


def model(threshold=0.5, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = create_model("early_exit_resnet", threshold=threshold, **{**KWARGS, **kwargs}).eval()
    with torch.no_grad():  # spread the exits' confidences: an untrained head says ~0.1 to everything
        for head in m.exits:
            head.classifier.weight.mul_(40.0)
    return m


def counted_flops(module: torch.nn.Module, run) -> float:
    """2 x multiply-adds of every conv and linear that `run()` calls."""
    total = []

    def conv(mod, inputs, output):
        total.append(2 * output.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])

    def linear(mod, inputs, output):
        total.append(2 * output.numel() * mod.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
             for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return float(sum(total))


def reference(m, image):
    """One image by the rule written plainly: stage by stage, the exit's top probability against the threshold."""
    x = image[None]

    def run():
        out = m.stem(x)
        for s, block in enumerate(m.blocks):
            out = block(out)[0]
            last = s == len(m.blocks) - 1
            logits = m.classifier(m.head(out)) if last else m.exits[s](out)
            confidence = float(logits.softmax(-1).max())
            if last or confidence >= m.threshold:
                result.update(logits=logits[0], exit=s, confidence=confidence)
                return

    result = {}
    flops = counted_flops(m, run)
    return result, flops


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.6])
def test_exits_follow_the_rule_and_count_what_ran(threshold):
    m = model(threshold)
    x = torch.randn(6, 1, 28, 28)
    for execution in ("masked", "sparse"):
        m.execution = execution
        with torch.no_grad():
            trace = m.trace(x)
            for i in range(6):
                expected, flops = reference(m, x[i])
                assert int(trace.exit_taken[i]) == expected["exit"]
                torch.testing.assert_close(trace.logits[i], expected["logits"], atol=1e-5, rtol=0)
                assert float(trace.exit_confidence[i, expected["exit"]]) == pytest.approx(expected["confidence"], abs=1e-6)
                assert all(math.isnan(float(c)) for c in trace.exit_confidence[i, expected["exit"] + 1:])  # never reached
                assert float(trace.flops[i]) == pytest.approx(flops, rel=1e-9)


def test_sparse_equals_masked_and_exits_differ_per_image():
    m = model(0.45, seed=3)
    masked, sparse = traces(m, torch.randn(16, 1, 28, 28))
    assert torch.equal(masked.exit_taken, sparse.exit_taken)
    assert len(set(masked.exit_taken.tolist())) > 1, "every image left at one exit: the sub-batches were not exercised"
    torch.testing.assert_close(masked.logits, sparse.logits, atol=1e-5, rtol=0)
    assert torch.equal(masked.flops, sparse.flops)
    torch.testing.assert_close(masked.exit_confidence, sparse.exit_confidence, equal_nan=True, atol=1e-6, rtol=0)


def test_threshold_extremes():
    x = torch.randn(4, 1, 28, 28)
    never = model(threshold=2.0)   # no probability reaches it: everyone goes to the end
    with torch.no_grad():
        end = never.trace(x)
        assert end.exit_taken.tolist() == [2] * 4
        plain = create_model("resnet", depth=8, widths=[8, 16, 32], num_classes=10, in_channels=1).eval()
        plain.load_state_dict({k: v for k, v in never.state_dict().items() if not k.startswith("exits.")})
        torch.testing.assert_close(end.logits, plain.trace(x).logits, atol=0, rtol=0)
        assert end.dense_flops == plain.trace(x).dense_flops
        assert float(end.flops[0]) > end.dense_flops  # the side exits it evaluated on the way cost extra
        at_once = model(threshold=0.0)
        first = at_once.trace(x)
    assert first.exit_taken.tolist() == [0] * 4
    assert float(first.flops[0]) == pytest.approx(reference(at_once, x[0])[1], rel=1e-9) and float(first.flops[0]) < 0.7 * first.dense_flops


def test_summed_loss_and_frozen_backbone():
    m = model(0.9, freeze_backbone=True).train()
    norms = [module for module in m.blocks.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before = [n.running_mean.clone() for n in norms]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    trace = m.trace(x)
    loss = m.task_loss(trace, y)
    assert loss.item() == pytest.approx(sum(F.cross_entropy(l, y).item() for l in trace.extras["exit_logits"]), rel=1e-6)
    assert len(trace.extras["exit_logits"]) == 3
    loss.backward()
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("exits."))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.startswith("exits.") and n.endswith("weight"))
    assert not m.blocks[0].training and m.exits[0].training  # the backbone's BatchNorm keeps its statistics
    assert norms and all(torch.equal(a, n.running_mean) for a, n in zip(before, norms))


def test_init_from_loads_matching_weights_and_refuses_misfits(tmp_path):
    torch.manual_seed(1)
    dense = create_model("resnet", depth=8, widths=[8, 16, 32], num_classes=10, in_channels=1)
    card = {"task": {"name": "classify"}, "dataset": "fashion-mnist", "classes": [str(i) for i in range(10)]}
    save_checkpoint(dense, tmp_path / "dense", card)
    m = model(0.9)
    _init_from(m, tmp_path / "dense", Processes())
    for name, value in dense.state_dict().items():
        assert torch.equal(m.state_dict()[name], value), name
    wide = create_model("resnet", depth=8, widths=[8, 16, 64], num_classes=10, in_channels=1)
    save_checkpoint(wide, tmp_path / "wide", card)
    with pytest.raises(ConfigError, match="fit no part of the model"):
        _init_from(m, tmp_path / "wide", Processes())
    with pytest.raises(ConfigError, match="no model.safetensors"):
        _init_from(m, tmp_path / "nothing", Processes())


def test_calibrate_picks_the_best_threshold_within_the_budget():
    """Checked against a brute force over a grid of thresholds, each run through trace()."""
    m = model(0.9, seed=3)
    torch.manual_seed(5)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with torch.no_grad():
        _, dense = m.exit_costs(images)
        full = m.trace(images).flops.mean().item() / dense  # every image to the end, side exits included
    budget = 0.5 * (full + m.exit_costs(images)[0][0] / dense)
    info = m.calibrate([(images[:32], labels[:32]), (images[32:], labels[32:])], flops_budget=budget)
    assert m.threshold == info["threshold"] and m.registry_kwargs["threshold"] == info["threshold"]
    with torch.no_grad():
        chosen = m.trace(images)
    accuracy = float((chosen.logits.argmax(-1) == labels).float().mean())
    assert info["heldout_accuracy"] == pytest.approx(accuracy) and info["heldout_flops_ratio"] == pytest.approx(float(chosen.flops.mean()) / dense, rel=1e-6)
    assert info["heldout_flops_ratio"] <= budget and info["heldout_exits"] == torch.bincount(chosen.exit_taken, minlength=3).tolist()
    for threshold in torch.linspace(0.05, 1.0, 40).tolist():  # no threshold on the grid beats it within the budget
        m.threshold = threshold
        with torch.no_grad():
            trace = m.trace(images)
        if float(trace.flops.mean()) / dense <= budget:
            assert float((trace.logits.argmax(-1) == labels).float().mean()) <= info["heldout_accuracy"] + 1e-9
    with pytest.raises(ValueError, match="no threshold"):
        m.calibrate([(images, labels)], flops_budget=0.01)


def test_holdout_is_kept_out_of_training_and_ignored_for_test_data():
    """data option holdout: the last N training images leave the training set for holdout_batches;
    a checkpoint trained with it still opens its test data (which has no training images)."""
    from ponderscope.core.workloads import make_workload
    from tests.conftest import require_data

    full = require_data(make_workload, {"name": "classify"}, "fashion-mnist", torch.device("cpu"), {})
    held = make_workload({"name": "classify"}, "fashion-mnist", torch.device("cpu"), {"holdout": 500})
    assert len(held.train_y) == len(full.train_y) - 500 and len(held.holdout_y) == 500
    assert torch.equal(held.holdout_x, full.train_x[-500:]) and torch.equal(held.train_x, full.train_x[:-500])
    assert sum(len(y) for _, y in held.holdout_batches(200)) == 500
    options = {"holdout": 500, "preprocess": {"mean": held.mean, "std": held.std}}
    test_only = make_workload({"name": "classify"}, "fashion-mnist", torch.device("cpu"), options, test_only=True)
    assert test_only.n_test == full.n_test and len(test_only.holdout_y) == 0


def test_calibrate_settings_are_checked_before_training_and_a_failed_one_still_saves(tmp_path):
    from ponderscope.models import read_card
    from ponderscope.training.train import load_config, train
    from tests.conftest import require_data

    base = ["model=early_exit_resnet", "model_kwargs.depth=8", "model_kwargs.widths=[4,8,8]", "dataset=fashion-mnist", "steps=1",
            "batch_size=8", "data_options.holdout=200", "log_every=1"]
    from ponderscope.core import data

    require_data(data.load_fashion_mnist, "test")  # (conftest: a skip here, a failure in CI)
    with pytest.raises(ConfigError, match="flops_budgt"):
        train(load_config(None, base + ['calibrate={"flops_budgt": 0.5}']), str(tmp_path / "typo"), device="cpu", progress=False)
    assert not (tmp_path / "typo" / "model.safetensors").exists()
    out = train(load_config(None, base + ['calibrate={"flops_budget": 0.01}']), str(tmp_path / "impossible"), device="cpu", progress=False)
    card = read_card(out)
    assert "no threshold keeps the FLOPs within 0.01" in card["calibration"]["failed"]
    assert card["model_kwargs"].get("threshold", 0.9) == 0.9 and (out / "model.safetensors").is_file()


def test_a_removed_unit_spends_nothing():
    """A what-if lesion of a backbone unit: the FLOPs are those the hooks count with the unit gone, in both paths."""
    from ponderscope.models.whatif import WhatIf, applied

    m = model(0.45)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        whole = m.trace(x)
        with applied(m, WhatIf(lesion=("block1.unit1", "block2.unit1"))):
            for execution in ("masked", "sparse"):
                m.execution = execution
                trace = m.trace(x)
                for i in range(4):
                    expected, flops = reference(m, x[i])
                    assert int(trace.exit_taken[i]) == expected["exit"] and float(trace.flops[i]) == pytest.approx(flops, rel=1e-9)
    same = trace.exit_taken == whole.exit_taken
    assert bool(same.any()) and bool((trace.flops[same] < whole.flops[same]).all())
