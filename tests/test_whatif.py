"""What-if changes (models/whatif.py): each is the same model with one documented change, the
same in sparse and masked execution, and equal to an independent construction of that change
(a network built smaller, weights edited so a branch is zero or a gate shifted)."""
import copy

import pytest
import torch

from ponderscope import models
from ponderscope.models.whatif import WhatIf, WhatIfError, applied, downsampling_units, knobs, unit_names

X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def build(name: str, seed: int = 0, halting_bias: float = -0.5, **kwargs):
    torch.manual_seed(seed)
    model = models.create_model(name, widths=(8, 16, 32), num_classes=5, **kwargs).eval()
    for module in model.modules():  # trained-like BN statistics, and halting that varies
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    for block in getattr(model, "gated_blocks", []):  # gates near their decision: a bias moves some
        torch.nn.init.normal_(block.gate.fc2.weight, std=0.3)
        block.gate.fc2.bias.data = torch.tensor([0.0, 0.1])
    for block in getattr(model, "blocks", []):
        for branch in block.halting or []:
            for p in branch.parameters():
                if p.dim() == 1 and p.numel() == 1:
                    p.data.fill_(halting_bias)
    return model


def traces(model, whatif):
    out = {}
    for execution in ("sparse", "masked"):
        model.execution = execution
        with torch.no_grad(), applied(model, whatif):
            out[execution] = model.trace(X)
    model.execution = "sparse"
    return out["sparse"], out["masked"]


def assert_same(a, b, atol=1e-5):
    assert torch.allclose(a.logits, b.logits, atol=atol)
    assert torch.allclose(a.flops, b.flops, rtol=1e-6)
    assert (a.blocks is None) == (b.blocks is None)
    for p, q in zip(a.blocks or [], b.blocks or []):
        assert torch.allclose(p.ponder_cost, q.ponder_cost, atol=atol) and torch.equal(p.units, q.units)
    if a.executed is not None:
        assert torch.equal(a.executed, b.executed)


FAMILIES = [("resnet", {"depth": 20}), ("act_resnet", {"depth": 20}), ("sact_resnet", {"depth": 20}), ("aig_resnet", {"depth": 20})]


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_every_change_is_the_same_in_sparse_and_masked_execution(name, kwargs):
    model = build(name, **kwargs)
    can = knobs(model)
    plain = traces(model, None)[0]
    units = can["units"] if plain.executed is None else [n for n, ran in zip(can["units"], plain.executed.any(0)) if ran]  # (open gates)
    changes = [WhatIf(lesion=(units[0],)), WhatIf(lesion=(units[1],)), WhatIf(lesion=(units[-2], units[-1]))]
    changes += [WhatIf(threshold=0.6), WhatIf(cap=1), WhatIf(cap=2, threshold=0.8, lesion=(units[1],))] if "threshold" in can else []
    changes += [WhatIf(gate_bias=-0.5), WhatIf(gate_bias=0.5, lesion=(units[-1],))] if "gate_bias" in can else []
    for change in changes:
        sparse, masked = traces(model, change)
        assert_same(sparse, masked)
        assert not torch.allclose(sparse.logits, plain.logits, atol=1e-4) or not torch.equal(sparse.flops, plain.flops), change
    assert_same(traces(model, WhatIf())[0], plain)  # no change: the trained model
    if "cap" in can:
        assert_same(traces(model, WhatIf(cap=can["cap"]))[0], plain)  # a cap at the block's length changes nothing


def test_removing_a_dense_unit_is_zeroing_its_last_convolution():
    """x_l = x_{l-1}: the same as a residual branch whose last convolution is zero."""
    model = build("resnet", depth=20)
    edited = copy.deepcopy(model)
    torch.nn.init.zeros_(edited.blocks[1].units[2].conv2.weight)
    sparse, _ = traces(model, WhatIf(lesion=("block2.unit3",)))
    reference = traces(edited, None)[0]
    assert torch.allclose(sparse.logits, reference.logits, atol=1e-6)
    unit_cost = models.resnet.unit_flops(model.blocks[1].units[2], 64.0, 64.0)  # 8x8 map in block 2
    assert float(reference.flops[0] - sparse.flops[0]) == pytest.approx(float(unit_cost))


def test_a_downsampling_unit_keeps_its_projection_shortcut():
    model = build("sact_resnet", depth=20)
    assert downsampling_units(model) == ["block2.unit1", "block3.unit1"]
    edited = copy.deepcopy(model)
    unit = edited.blocks[2].units[0]
    torch.nn.init.zeros_(unit.conv2.weight)  # the residual branch adds nothing; the projection stays
    for execution in ("sparse", "masked"):
        model.execution = edited.execution = execution
        with torch.no_grad(), applied(model, WhatIf(lesion=("block3.unit1",))):
            lesioned = model.trace(X)
        with torch.no_grad():
            reference = edited.trace(X)
        assert torch.allclose(lesioned.logits, reference.logits, atol=1e-5)
        assert torch.allclose(lesioned.blocks[2].ponder_cost, reference.blocks[2].ponder_cost, atol=1e-5)


@pytest.mark.parametrize("name", ["act_resnet", "sact_resnet"])
def test_a_cap_is_a_network_built_with_that_many_units(name):
    """cap c: unit c halts everything with its remainder, as the last unit of a c-unit block does."""
    model = build(name, depth=20)  # 3 units per block
    small = models.create_model(name, depth=14, widths=(8, 16, 32), num_classes=5).eval()
    state = model.state_dict()
    small.load_state_dict({k: state[k] for k in small.state_dict()})
    capped = traces(model, WhatIf(cap=2))[0]
    reference = traces(small, None)[0]
    assert_same(capped, reference, atol=1e-6)


@pytest.mark.parametrize("name", ["act_resnet", "sact_resnet"])
def test_a_threshold_is_the_network_built_with_that_eps(name):
    model = build(name, depth=20)
    other = models.create_model(name, depth=20, widths=(8, 16, 32), num_classes=5, eps=0.35).eval()
    other.load_state_dict(model.state_dict())
    assert_same(traces(model, WhatIf(threshold=0.65))[0], traces(other, None)[0], atol=1e-6)


def test_aig_gate_bias_and_closed_gates_are_shifted_gate_logits():
    """run iff logit_run - logit_skip > theta: the same as lowering the run logit's bias by theta;
    a removed block: a gate that never runs."""
    model = build("aig_resnet", depth=20)
    for theta in (-0.3, 0.2):
        edited = copy.deepcopy(model)
        for block in edited.gated_blocks:
            block.gate.fc2.bias.data[1] -= theta
        sparse, _ = traces(model, WhatIf(gate_bias=theta))
        reference = traces(edited, None)[0]
        assert torch.equal(sparse.executed, reference.executed) and torch.allclose(sparse.logits, reference.logits, atol=1e-6)
    edited = copy.deepcopy(model)
    edited.gated_blocks[4].gate.fc2.bias.data[1] = -1e4
    sparse, _ = traces(model, WhatIf(lesion=(unit_names(model)[4],)))
    reference = traces(edited, None)[0]
    assert not sparse.executed[:, 4].any() and torch.allclose(sparse.logits, reference.logits, atol=1e-6)
    assert torch.allclose(sparse.flops, reference.flops)


# --- FLOPs of a lesioned network, counted by hand -------------------------------------------------
# From the layer shapes alone (a 16x16 input with 3 channels; blocks of 3 units, widths 8, 16, 32, the
# 2nd and 3rd at half the previous side; 5 classes) and from what ran (the units executed per image /
# position, the open gates), with the SACT paper's rule: a convolution costs 2 x output positions
# computed x Cout x k^2 x Cin, a linear layer 2 x in x out; biases, BN, ReLU and pooling are free.
# Nothing here calls the model's FLOP code.
SIDE, IN_CHANNELS, WIDTHS, UNITS, CLASSES, GATE_HIDDEN = 16, 3, (8, 16, 32), 3, 5, 16
# images whose channel means differ, so that halting and gates differ between images
XV = torch.randn(6, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
XV = XV + 2 * torch.randn(6, 3, 1, 1, generator=torch.Generator().manual_seed(2))


def conv_cost(positions, c_in: int, c_out: int, k: int) -> float:
    return 2.0 * float(positions) * c_out * k * k * c_in


def near(ran: torch.Tensor) -> torch.Tensor:
    """[H, W] bool -> the positions within one pixel (a 3x3 neighbourhood, inside the map) of a
    True one: where a unit's first 3x3 convolution must be computed for its second to run at `ran`."""
    height, width = ran.shape
    return torch.tensor([[bool(ran[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2].any()) for j in range(width)] for i in range(height)])


def resnet_flops_by_hand(trace, halting: str, removed=()) -> list[float]:
    """Per image. Unit 1 of a block runs everywhere (its 1x1 projection, where the width changes,
    even when removed); unit u > 1 runs where the position / image ran u or more units (conv1 on
    that set's neighbourhood, conv2 on the set); the halting branch after every unit but the last
    runs where that unit ran, removed or not (ACT: linear C -> 1 per image; SACT: a 3x3 conv C -> 1
    per position plus linear C -> 1 per image)."""
    totals = []
    for image in range(trace.logits.shape[0]):
        total = conv_cost(SIDE * SIDE, IN_CHANNELS, WIDTHS[0], 3)  # the stem
        c_in = WIDTHS[0]
        for b, width in enumerate(WIDTHS):
            side = SIDE // 2**b
            units = trace.blocks[b].units[image] if halting != "none" else torch.full((side, side), UNITS)
            for u in range(1, UNITS + 1):
                ran = units >= u
                if u == 1:
                    total += conv_cost(side * side, c_in, width, 1) if c_in != width else 0.0
                    if f"block{b + 1}.unit1" not in removed:
                        total += conv_cost(side * side, c_in, width, 3) + conv_cost(side * side, width, width, 3)
                elif f"block{b + 1}.unit{u}" not in removed:
                    total += conv_cost(near(ran).sum(), width, width, 3) + conv_cost(ran.sum(), width, width, 3)
                if halting != "none" and u < UNITS and ran.any():
                    total += 2.0 * width + (conv_cost(ran.sum(), width, 1, 3) if halting == "sact" else 0.0)
            c_in = width
        totals.append(total + 2.0 * WIDTHS[-1] * CLASSES)
    return totals


def aig_flops_by_hand(trace, removed_index=()) -> list[float]:
    """Per image. Every gate runs (GAP, 1x1 conv Cin -> 16, 1x1 conv 16 -> 2, at one position) and
    every 1x1 projection shortcut; a block's two 3x3 convolutions only where its gate opened."""
    totals = []
    for image in range(trace.logits.shape[0]):
        total = conv_cost(SIDE * SIDE, IN_CHANNELS, WIDTHS[0], 3)
        c_in, layer = WIDTHS[0], 0
        for stage, width in enumerate(WIDTHS):
            positions = (SIDE // 2**stage) ** 2
            for _ in range(UNITS):
                total += conv_cost(1, c_in, GATE_HIDDEN, 1) + conv_cost(1, GATE_HIDDEN, 2, 1)
                total += conv_cost(positions, c_in, width, 1) if c_in != width else 0.0
                if bool(trace.executed[image, layer]) or layer in removed_index:
                    total += conv_cost(positions, c_in, width, 3) + conv_cost(positions, width, width, 3)
                c_in, layer = width, layer + 1
        totals.append(total + 2.0 * WIDTHS[-1] * CLASSES)
    return totals


def flops_of(model, whatif=None):
    out = []
    for execution in ("sparse", "masked"):
        model.execution = execution
        with torch.no_grad(), applied(model, whatif):
            out.append(model.trace(XV))
    model.execution = "sparse"
    assert torch.equal(out[0].flops, out[1].flops)
    return out[0]


@pytest.mark.parametrize("name", ["resnet", "act_resnet", "sact_resnet"])
def test_a_lesioned_resnets_flops_are_what_still_runs_counted_by_hand(name):
    """The removed units' residual branches cost nothing; the first unit's projection, the halting
    branches after removed units and every unit still running are charged where they run."""
    halting = {"resnet": "none", "act_resnet": "act", "sact_resnet": "sact"}[name]
    model = build(name, depth=20, halting_bias=0.0)
    trained = flops_of(model)
    assert trained.flops.tolist() == pytest.approx(resnet_flops_by_hand(trained, halting), rel=1e-6)
    removed = ("block1.unit1", "block1.unit3", "block2.unit2", "block3.unit1")
    lesioned = flops_of(model, WhatIf(lesion=removed))
    by_hand = resnet_flops_by_hand(lesioned, halting, removed)
    assert lesioned.flops.tolist() == pytest.approx(by_hand, rel=1e-6)
    # The removed units 2.. were reached (block 1's third by some images / positions only), so
    # charging them would change the count: the comparison above can fail.
    if lesioned.blocks:
        assert (lesioned.blocks[0].units >= 3).any() and (lesioned.blocks[1].units >= 2).any()
    charged = resnet_flops_by_hand(lesioned, halting)  # had the removed units been charged
    assert all(c > h for c, h in zip(charged, by_hand))
    if halting == "sact":  # block 2's second unit ran partly: its neighbourhood is neither the set nor the map
        ran = lesioned.blocks[1].units >= 2
        dilated = sum(int(near(ran[image]).sum()) for image in range(ran.shape[0]))
        assert int(ran.sum()) < dilated < ran.numel()


def test_a_lesioned_aig_networks_flops_are_its_gates_projections_and_open_blocks_by_hand():
    model = build("aig_resnet", depth=20)
    trained = flops_of(model)
    assert trained.flops.tolist() == pytest.approx(aig_flops_by_hand(trained), rel=1e-6)
    names = unit_names(model)
    removed = ("layer1.1", "layer3.0", "layer3.1")  # layer3.0 downsamples: its projection stays
    index = [names.index(n) for n in removed]
    assert all(trained.executed[:, k].any() for k in index)  # open for some images when trained
    lesioned = flops_of(model, WhatIf(lesion=removed))
    assert not lesioned.executed[:, index].any()
    by_hand = aig_flops_by_hand(lesioned)
    assert lesioned.flops.tolist() == pytest.approx(by_hand, rel=1e-6)
    charged = aig_flops_by_hand(lesioned, removed_index=index)  # had the removed blocks been charged
    assert all(c > h for c, h in zip(charged, by_hand))


def test_changes_that_do_not_apply_are_refused():
    dense, aig = build("resnet", depth=20), build("aig_resnet", depth=20)
    with pytest.raises(WhatIfError, match="threshold"):
        with applied(dense, WhatIf(threshold=0.5)):
            pass
    with pytest.raises(WhatIfError, match="gate_bias"):
        with applied(build("sact_resnet", depth=20), WhatIf(gate_bias=1.0)):
            pass
    with pytest.raises(WhatIfError, match="no unit block9.unit1"):
        with applied(aig, WhatIf(lesion=("block9.unit1",))):
            pass
    with pytest.raises(WhatIfError, match="threshold must be"):
        with applied(build("act_resnet", depth=20), WhatIf(threshold=0.0)):
            pass
    assert knobs(models.create_model("act_rnn", input_kind="features", input_size=4, output_size=2)) == {}
