"""The model families (models/resnet.py, aig.py, act_rnn.py) against hand computations.

Tiny networks and inputs throughout; every expected number is derived in the test, from the
modules' own weights, not read back from the code under test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ponderscope import models
from ponderscope.models import act_weights, create_model
from ponderscope.models import sparse as sparse_ops
from ponderscope.models.aig import convert_official_state_dict
from ponderscope.models.resnet import dilate
from tests.conftest import hook_flops, randomize_batchnorm

SIG_P10 = torch.sigmoid(torch.tensor(10.0)).item()
SIG_M10 = torch.sigmoid(torch.tensor(-10.0)).item()


def tiny_resnet(name="sact_resnet", depth=14, widths=(4, 8, 16), seed=0, **kwargs):
    torch.manual_seed(seed)
    model = create_model(name, depth=depth, widths=widths, in_channels=1, num_classes=10, **kwargs)
    return randomize_batchnorm(model, seed).eval()


def set_halting(model, bias: float, zero_weights: bool = True):
    """Every halting branch outputs sigmoid(bias) (weights zeroed) or has its bias replaced."""
    with torch.no_grad():
        for block in model.blocks:
            for branch in block.halting:
                if hasattr(branch, "local_conv"):  # SACT
                    branch.local_conv.bias.fill_(bias)
                    if zero_weights:
                        branch.local_conv.weight.zero_()
                        branch.global_linear.weight.zero_()
                else:  # ACT
                    branch.linear.bias.fill_(bias)
                    if zero_weights:
                        branch.linear.weight.zero_()
    return model


def mixed_sact(depth=20, seed=0):
    """A SACT net whose positions halt after different numbers of units in every block."""
    model = tiny_resnet("sact_resnet", depth=depth, seed=seed)
    with torch.no_grad():
        for block in model.blocks:
            for branch in block.halting:
                branch.local_conv.weight.mul_(8.0)
                branch.local_conv.bias.zero_()
    return model


def first_unit_only_logits(model, x):
    """Stem, then only the first unit of every block, then the head (what halting at unit 1 gives)."""
    out = model.stem(x)
    for block in model.blocks:
        out = block.units[0](out)
    return model.classifier(F.relu(model.final_bn(out)).mean(dim=(2, 3)))


def reference_block(block, x):
    """A block by the book, with the all-at-once rule `act_weights`: unit l updates x only where
    N > l (mask from the halting probabilities seen so far), output = sum_l p_l x_l. Returns the
    output, the rule's result and the halting probabilities h [B, n_units(, H, W)] everywhere."""
    spatial = block.halting_kind == "sact"
    xs = [block.units[0](x)]
    hs = []
    n_units = len(block.units)
    for index in range(1, n_units):
        hs.append(block.halting[index - 1](xs[-1]))
        probe = torch.stack(hs + [torch.ones_like(hs[0])], -1)  # forced halt at step index + 1
        running = act_weights(probe, eps=block.eps).steps == index + 1
        mask = running[:, None] if spatial else running[:, None, None, None]
        xs.append(xs[-1] + mask.to(x.dtype) * block.units[index].residual(xs[-1]))
    batch = x.shape[0]
    hs.append(torch.ones(batch, *xs[0].shape[-2:]) if spatial else torch.ones(batch))
    result = act_weights(torch.stack(hs, -1), eps=block.eps)
    out = 0
    for index, x_l in enumerate(xs):
        w = result.weights[..., index]
        out = out + (w[:, None] if spatial else w[:, None, None, None]) * x_l
    return out, result, torch.stack(hs, 1)


def capture_blocks(model):
    captured = []
    handles = [b.register_forward_hook(lambda m, i, o: captured.append((i[0], o))) for b in model.blocks]
    return captured, handles


# =========================================================================== ResNets: shapes


@pytest.mark.parametrize("name", ["resnet", "act_resnet", "sact_resnet"])
def test_resnet_trace_shapes(name):
    model = tiny_resnet(name, depth=14)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        trace = model.trace(x)
        logits = model(x)
    assert trace.logits.shape == (2, 10)
    assert torch.equal(trace.logits, logits)
    assert trace.flops.shape == (2,)
    assert isinstance(trace.dense_flops, float) and trace.dense_flops > 0
    assert trace.gates is None and trace.executed is None and trace.ponder is None and trace.steps is None
    if name == "resnet":
        assert trace.blocks is None and trace.ponder_map() is None
        assert torch.equal(trace.flops, torch.full((2,), trace.dense_flops))
        return
    assert len(trace.blocks) == 3
    for block_trace, size in zip(trace.blocks, (16, 8, 4)):
        assert block_trace.ponder_cost.shape == (2, size, size)
        assert block_trace.units.shape == (2, size, size)
        assert block_trace.units.dtype == torch.int64
        assert block_trace.halting.shape == (2, 2, size, size)
        assert block_trace.probabilities.shape == (2, 2, size, size)
        assert ((block_trace.units >= 1) & (block_trace.units <= 2)).all()
        torch.testing.assert_close(block_trace.halting.sum(1), torch.ones(2, size, size))
        # h is recorded where its unit ran (the last unit's forced to 1), 0 where the position had halted
        ran = block_trace.units[:, None] > torch.arange(2)[None, :, None, None]
        assert ran[:, 0].all()
        assert (block_trace.probabilities[:, -1] == ran[:, -1].float()).all()
        assert (block_trace.probabilities[~ran] == 0).all()
        # The trace agrees with the halting rule applied to its own probabilities.
        redo = act_weights(block_trace.probabilities.movedim(1, -1), eps=0.01)
        assert torch.equal(redo.steps, block_trace.units)
        torch.testing.assert_close(redo.weights.movedim(-1, 1), block_trace.halting)
        torch.testing.assert_close(redo.ponder_cost, block_trace.ponder_cost)
    assert trace.ponder_map().shape == (2, 16, 16)


def test_default_halting_bias_is_minus_3():
    for name in ("act_resnet", "sact_resnet"):
        model = tiny_resnet(name, depth=14)
        for block in model.blocks:
            assert len(block.halting) == len(block.units) - 1 == 1
            bias = block.halting[0].local_conv.bias if name == "sact_resnet" else block.halting[0].linear.bias
            assert torch.equal(bias, torch.full_like(bias, -3.0))


@pytest.mark.parametrize("height,width", [(16, 16), (24, 20)])
def test_sact_fully_convolutional(height, width):
    model = mixed_sact(depth=14)
    with torch.no_grad():
        trace = model.trace(torch.randn(2, 1, height, width))
    assert trace.logits.shape == (2, 10)
    sizes = [(height, width), ((height + 1) // 2, (width + 1) // 2), ((height + 3) // 4, (width + 3) // 4)]
    assert [tuple(b.ponder_cost.shape[-2:]) for b in trace.blocks] == sizes
    assert [tuple(b.halting.shape[-2:]) for b in trace.blocks] == sizes
    # The ponder map: each block's cost nearest-upsampled (x1, x2, x4) and summed.
    expected = sum(
        b.ponder_cost.repeat_interleave(f, -2).repeat_interleave(f, -1) for b, f in zip(trace.blocks, (1, 2, 4))
    )
    assert trace.ponder_map().shape == (2, height, width)
    torch.testing.assert_close(trace.ponder_map(), expected)
    assert trace.ponder_map().min() >= 3 * 2.0 - 1e-5  # every block costs at least N + R >= 1 + R > 1
    if (height, width) == (16, 16):  # the other measure, another size, and the per-image mean, by hand
        units = sum(b.units.float().repeat_interleave(f, -2).repeat_interleave(f, -1) for b, f in zip(trace.blocks, (2, 4, 8)))
        torch.testing.assert_close(trace.ponder_map((32, 32), "units"), units)
        by_hand = [sum(float(b.ponder_cost[i].sum()) / b.ponder_cost[i].numel() for b in trace.blocks) for i in range(2)]
        torch.testing.assert_close(trace.mean_ponder(), torch.tensor(by_hand))
        torch.testing.assert_close(trace.block_means().sum(1), trace.mean_ponder())


def test_act_ponder_constant_over_positions():
    model = tiny_resnet("act_resnet", depth=20)
    with torch.no_grad():
        for block in model.blocks:
            for branch in block.halting:
                branch.linear.weight.mul_(5.0)
                branch.linear.bias.zero_()
        trace = model.trace(torch.randn(4, 1, 16, 16))
    for block_trace in trace.blocks:
        for field in (block_trace.ponder_cost, block_trace.units):
            assert torch.equal(field, field[:, :1, :1].expand_as(field))
        assert torch.equal(block_trace.halting, block_trace.halting[..., :1, :1].expand_as(block_trace.halting))
    # ...but not constant over images (otherwise the check above says little).
    assert any(len(set(b.ponder_cost[:, 0, 0].tolist())) > 1 for b in trace.blocks)


def test_halting_branches_by_hand():
    """SACT: sigmoid(conv3x3(BN(x)) + linear_nobias(BN(GAP(x)))) per position; ACT: sigmoid(linear(BN(GAP(x))))."""
    x = torch.randn(3, 4, 6, 5)
    sact = randomize_batchnorm(tiny_resnet("sact_resnet", depth=14), 3).blocks[0].halting[0]
    with torch.no_grad():
        sact.local_conv.weight.normal_()
        sact.global_linear.weight.normal_()
        local = F.conv2d(F.batch_norm(x, sact.local_bn.running_mean, sact.local_bn.running_var, sact.local_bn.weight,
                                      sact.local_bn.bias, eps=sact.local_bn.eps), sact.local_conv.weight,
                         sact.local_conv.bias, padding=1)[:, 0]
        pooled = x.mean(dim=(2, 3))
        g = (pooled - sact.global_bn.running_mean) / torch.sqrt(sact.global_bn.running_var + sact.global_bn.eps)
        g = g * sact.global_bn.weight + sact.global_bn.bias
        expected = torch.sigmoid(local + (g @ sact.global_linear.weight.T)[:, :, None])
        assert sact.global_linear.bias is None
        torch.testing.assert_close(sact(x), expected)
        # The folded route of sparse execution (one product for both terms, BNs folded in).
        rows = x.permute(0, 2, 3, 1).reshape(-1, 4)
        grid = sparse_ops.grid(3, 6, 5, x.device)
        torch.testing.assert_close(sact.at_rows(grid, rows, x.mean(dim=(2, 3))), expected)
        # ...at some rows only, multiplying only the rows near them
        some = torch.tensor([0, 7, 29, 31, 89])  # corners, edges, inside, three images
        near = grid.rows(dilate(grid.scatter(some, torch.ones(5, 1)).view(3, 6, 5) > 0))
        assert len(near) < 90
        torch.testing.assert_close(sact.at_rows(grid, rows, x.mean(dim=(2, 3)), some, near), expected.reshape(-1)[some])
        assert expected.flatten(1).std(1).min() > 0.01  # varies over positions
    act = randomize_batchnorm(tiny_resnet("act_resnet", depth=14), 3).blocks[0].halting[0]
    with torch.no_grad():
        act.linear.weight.normal_()
        g = (pooled - act.bn.running_mean) / torch.sqrt(act.bn.running_var + act.bn.eps) * act.bn.weight + act.bn.bias
        expected = torch.sigmoid(g @ act.linear.weight[0] + act.linear.bias[0])
        torch.testing.assert_close(act(x), expected)


# =========================================================================== ResNets: FLOPs


def test_dense_flops_hand_count():
    """resnet-8, widths (2, 4, 8), 1 input channel, 8x8: one basic unit per block."""
    model = tiny_resnet("resnet", depth=8, widths=(2, 4, 8))
    stem = 2 * 64 * 2 * 9 * 1  # 3x3, 1 -> 2, 8x8 positions
    block1 = 2 * 64 * 2 * 9 * 2 + 2 * 64 * 2 * 9 * 2  # two 3x3 2 -> 2 at 8x8, identity shortcut
    block2 = 2 * 16 * 4 * 9 * 2 + 2 * 16 * 4 * 9 * 4 + 2 * 16 * 4 * 1 * 2  # 3x3 s2 2->4, 3x3 4->4, 1x1 s2 proj, 4x4
    block3 = 2 * 4 * 8 * 9 * 4 + 2 * 4 * 8 * 9 * 8 + 2 * 4 * 8 * 1 * 4  # same at 2x2, 4 -> 8
    classifier = 2 * 8 * 10
    expected = stem + block1 + block2 + block3 + classifier
    assert expected == 26016
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
    assert trace.dense_flops == expected
    assert trace.flops.tolist() == [expected] * 3
    assert hook_flops(model, x) == expected


# Hand counts for depth 14 (two units per block), widths (2, 4, 8), 1 channel, 8x8 input.
STEM = 2 * 64 * 2 * 9 * 1
FIRST_UNITS = (2 * 64 * 2 * 9 * 2 * 2) + (2 * 16 * 4 * 9 * 2 + 2 * 16 * 4 * 9 * 4 + 2 * 16 * 4 * 2) + (
    2 * 4 * 8 * 9 * 4 + 2 * 4 * 8 * 9 * 8 + 2 * 4 * 8 * 4
)
SECOND_UNITS = (2 * 64 * 2 * 9 * 2 * 2) + (2 * 16 * 4 * 9 * 4 * 2) + (2 * 4 * 8 * 9 * 8 * 2)
# SACT branch: 3x3 conv C -> 1 at every position + linear C -> 1 (global term); ACT: linear C -> 1.
SACT_BRANCHES = (2 * 64 * 9 * 2 + 2 * 2) + (2 * 16 * 9 * 4 + 2 * 4) + (2 * 4 * 9 * 8 + 2 * 8)
ACT_BRANCHES = 2 * 2 + 2 * 4 + 2 * 8
HEAD = 2 * 8 * 10


@pytest.mark.parametrize("name,branches", [("sact_resnet", SACT_BRANCHES), ("act_resnet", ACT_BRANCHES)])
def test_halting_at_first_unit_everywhere(name, branches):
    model = set_halting(tiny_resnet(name, depth=14, widths=(2, 4, 8)), +10.0)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        expected_logits = first_unit_only_logits(model, x)
    for block_trace in trace.blocks:
        assert (block_trace.units == 1).all()
        # N = 1, R = 1 - (sum of nothing) = 1: the ponder cost is exactly 2, not 1.
        assert torch.equal(block_trace.ponder_cost, torch.full_like(block_trace.ponder_cost, 2.0))
        assert (block_trace.halting[:, 0] == 1).all() and (block_trace.halting[:, 1] == 0).all()
    torch.testing.assert_close(trace.logits, expected_logits, atol=1e-6, rtol=1e-6)
    assert STEM + FIRST_UNITS + SACT_BRANCHES + HEAD == 30076
    assert trace.flops.tolist() == [STEM + FIRST_UNITS + branches + HEAD] * 3
    assert trace.dense_flops == STEM + FIRST_UNITS + SECOND_UNITS + HEAD == 53664


@pytest.mark.parametrize("name,branches", [("sact_resnet", SACT_BRANCHES), ("act_resnet", ACT_BRANCHES)])
def test_never_halting_runs_every_unit_and_equals_dense(name, branches):
    model = set_halting(tiny_resnet(name, depth=14, widths=(2, 4, 8)), -10.0)
    dense = create_model("resnet", depth=14, widths=(2, 4, 8), in_channels=1, num_classes=10).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected and all(".halting." in key for key in unexpected)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        dense_logits = dense(x)
    for block_trace in trace.blocks:
        assert (block_trace.units == 2).all()
        torch.testing.assert_close(block_trace.ponder_cost, torch.full_like(block_trace.ponder_cost, 3.0 - SIG_M10))
        torch.testing.assert_close(block_trace.halting[:, 0], torch.full_like(block_trace.halting[:, 0], SIG_M10))
    # Output = h x_1 + (1 - h) x_2 with h = 4.5e-5: the dense output up to ~1e-4 relative.
    torch.testing.assert_close(trace.logits, dense_logits, atol=1e-3 * dense_logits.abs().max().item(), rtol=0)
    assert trace.flops.tolist() == [STEM + FIRST_UNITS + SECOND_UNITS + branches + HEAD] * 3
    assert trace.dense_flops == 53664
    # Every convolution ran at every position: the hook count agrees.
    assert hook_flops(model, x) == STEM + FIRST_UNITS + SECOND_UNITS + branches + HEAD


@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_sact_block_matches_reference_and_skips_halted_positions(execution):
    model = mixed_sact(depth=20)
    model.execution = execution
    x = torch.randn(2, 1, 16, 16)
    captured, handles = capture_blocks(model)
    branch_inputs = {}  # masked execution calls each halting branch as a module, on the whole map
    for b, block in enumerate(model.blocks):
        for l, branch in enumerate(block.halting):
            handles.append(branch.register_forward_hook(
                lambda m, i, o, key=(b, l): branch_inputs.__setitem__(key, i[0].clone())))
    with torch.no_grad():
        trace = model.trace(x)
        for handle in handles:
            handle.remove()
        for b, (block, (block_in, (block_out, block_trace, _))) in enumerate(zip(model.blocks, captured)):
            counts = torch.bincount(block_trace.units.flatten(), minlength=4)
            assert (counts[1:] > 0).sum() >= 2, "test set-up: the block must mix halting steps"
            out, result, probabilities = reference_block(block, block_in)
            torch.testing.assert_close(block_out, out, atol=1e-5, rtol=1e-5)
            assert torch.equal(block_trace.units, result.steps)
            torch.testing.assert_close(block_trace.ponder_cost, result.ponder_cost)
            torch.testing.assert_close(block_trace.halting, result.weights.movedim(-1, 1))
            # h is recorded where its unit ran, 0 where the position had halted before it
            ran = block_trace.units[:, None] > torch.arange(block_trace.probabilities.shape[1])[None, :, None, None]
            assert (~ran).any() and (block_trace.probabilities[~ran] == 0).all()
            torch.testing.assert_close(block_trace.probabilities[ran], probabilities[ran])
            if execution == "sparse":
                assert branch_inputs == {}  # sparse execution evaluates the branches at rows instead
                continue
            # A position that halted after unit 1 is not updated by unit 2 (masked update):
            x1, x2 = branch_inputs[(b, 0)], branch_inputs[(b, 1)]
            halted = (block_trace.units == 1)[:, None].expand_as(x1)
            assert torch.equal(x2[halted], x1[halted])
            assert (x2[~halted] != x1[~halted]).any()
            if b == 0:
                assert halted.any()


def _dilate_by_hand(mask: torch.Tensor) -> torch.Tensor:
    padded = F.pad(mask, (1, 1, 1, 1))
    height, width = mask.shape[-2:]
    out = torch.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy : dy + height, dx : dx + width]
    return out


def test_dilate_is_the_3x3_neighbourhood():
    """`dilate` (ORs of shifted maps) against the OR over the 9 offsets, on random and edge-case masks."""
    generator = torch.Generator().manual_seed(3)
    for shape in [(1, 56, 56), (32, 14, 14), (3, 7, 5), (2, 1, 1), (1, 1, 6)]:
        for density in (0.0, 0.02, 0.3, 1.0):
            mask = torch.rand(shape, generator=generator) < density
            assert torch.equal(dilate(mask), _dilate_by_hand(mask))
    ragged = torch.zeros(2, 4, 5, dtype=torch.bool)
    ragged[0, 0, 4] = ragged[1, 3, 0] = True
    assert dilate(ragged).sum(dim=(1, 2)).tolist() == [4, 4]  # corners: 2 x 2 each, nothing leaks across images


def test_tap_rows_read_the_zero_padded_tap_map():
    """`tap_rows` indexes the tap map with one zero row appended; it reads each position's 9
    neighbours at their own taps, as the zero-padded map's index (`sparse.tap_index`) does."""
    from ponderscope.models.resnet import tap_rows

    for batch, height, width in [(1, 7, 7), (2, 3, 5), (1, 1, 1)]:
        positions = batch * height * width
        taps = torch.randn(positions, 16)
        padded = sparse_ops.grid(batch, height, width, taps.device).pad(taps)
        expected = padded.view(-1)[sparse_ops.tap_index(batch, height, width, 16, taps.device)].view(-1, 9)
        appended = torch.cat([taps, torch.zeros(1, 16)])
        assert torch.equal(appended.view(-1)[tap_rows(batch, height, width, taps.device)].view(-1, 9), expected)


def test_sact_flops_follow_the_masks():
    """Per image: unit l >= 2 costs conv1 on the active set dilated by one pixel and conv2 on the
    active set; branch l runs where N >= l; the global term only for images with a running position."""
    model = mixed_sact(depth=20)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        trace = model.trace(x)
    expected = torch.full((2,), float(2 * 256 * 4 * 9 * 1 + 2 * 16 * 10))  # stem + classifier
    for block, block_trace in zip(model.blocks, trace.blocks):
        units = block_trace.units
        c_out = block.out_channels
        positions = units.shape[-1] * units.shape[-2]
        first = block.units[0]
        c_in = first.conv1.in_channels
        expected += 2 * positions * c_out * 9 * c_in + 2 * positions * c_out * 9 * c_out
        if first.shortcut is not None:
            expected += 2 * positions * c_out * c_in
        for l in range(1, len(block.units)):
            active = units > l  # unit l + 1 (1-based) runs where N >= l + 1
            n_active = active.flatten(1).sum(1).float()
            n_dilated = _dilate_by_hand(active).flatten(1).sum(1).float()
            expected += 2 * n_dilated * c_out * 9 * c_out + 2 * n_active * c_out * 9 * c_out
        for l in range(len(block.units) - 1):
            running = (units > l).flatten(1).sum(1).float()
            expected += 2 * running * 9 * c_out + 2 * c_out * (running > 0).float()
    torch.testing.assert_close(trace.flops, expected, atol=0, rtol=0)
    assert (trace.flops < trace.dense_flops + 1e5).all()


def test_sact_flops_of_an_image_do_not_depend_on_the_batch():
    """Image 0 halts everywhere after unit 1 of the first block, image 1 goes on: image 0 must not
    be charged for the halting branch of unit 2 (it computes nothing there)."""
    model = tiny_resnet("sact_resnet", depth=20)
    x = torch.randn(2, 1, 16, 16)
    branch = model.blocks[0].halting[0]
    seen = {}
    handle = branch.global_bn.register_forward_hook(lambda m, i, o: seen.__setitem__("g", o))
    with torch.no_grad():
        model.execution = "masked"  # calls global_bn as a module (sparse execution folds it)
        model.trace(x)
        model.execution = "sparse"
        handle.remove()
        g0, g1 = seen["g"][0], seen["g"][1]
        w = 20.0 * (g0 - g1) / (g0 - g1).pow(2).sum()
        branch.global_linear.weight.copy_(w[None])
        branch.local_conv.weight.zero_()
        branch.local_conv.bias.fill_(10.0 - float(w @ g0))  # h = sigmoid(10) for image 0, sigmoid(-10) for 1
        both = model.trace(x)
        alone = [model.trace(x[i : i + 1]) for i in range(2)]
    assert (both.blocks[0].units[0] == 1).all() and (both.blocks[0].units[1] >= 2).all()
    torch.testing.assert_close(both.logits, torch.cat([a.logits for a in alone]), atol=1e-5, rtol=1e-5)
    assert both.flops.tolist() == [alone[0].flops.item(), alone[1].flops.item()]


def test_adaptive_loss_and_ponder_gradient():
    model = mixed_sact(depth=14)
    model.train()
    trace = model.trace(torch.randn(4, 1, 8, 8))
    loss = model.adaptive_loss(trace, tau=0.01)
    expected = 0.01 * sum(b.ponder_cost.mean() for b in trace.blocks)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # The ponder cost reaches the halting branches through R (N is a constant).
    for block, block_trace in zip(model.blocks, trace.blocks):
        grad = block.halting[0].local_conv.bias.grad
        assert grad is not None and grad.item() < 0  # more halting probability -> lower cost
    dense = create_model("resnet", depth=8, widths=(2, 4, 8), in_channels=1)
    empty = models.Trace(logits=torch.zeros(1, 10), flops=torch.zeros(1), dense_flops=0.0)
    assert dense.adaptive_loss(empty).item() == 0.0


# =========================================================================== ImageNet ResNets


def test_imagenet_sact_resnet50_small_input():
    model = create_model("sact_resnet50", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trace = model.trace(x)
    assert trace.logits.shape == (1, 10)
    sizes = (16, 8, 4, 2)
    assert [tuple(b.units.shape) for b in trace.blocks] == [(1, s, s) for s in sizes]
    assert [b.halting.shape[1] for b in trace.blocks] == [3, 4, 6, 3]
    for block_trace, n in zip(trace.blocks, (3, 4, 6, 3)):
        assert ((block_trace.units >= 1) & (block_trace.units <= n)).all()
    assert trace.ponder_map().shape == (1, 16, 16)
    assert model.blocks[-1].out_channels == 2048


def test_imagenet_dense_resnet50_flops_equal_hook_count():
    model = create_model("resnet50", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trace = model.trace(x)
    assert trace.flops.item() == trace.dense_flops == hook_flops(model, x)


# =========================================================================== ConvNet-AIG


def tiny_aig(seed=0, depth=8, widths=(2, 4, 8), **kwargs):
    torch.manual_seed(seed)
    model = create_model("aig_resnet", depth=depth, widths=widths, in_channels=1, num_classes=10, **kwargs)
    return randomize_batchnorm(model, seed).eval()


def set_gates(model, bias):
    with torch.no_grad():
        for block in model.gated_blocks:
            block.gate.fc2.bias.copy_(torch.tensor(bias))
    return model


def aig_by_hand(model, x):
    """Post-activation ResNet with deterministic gates, written from the modules.
    Returns (logits, executed [B, L] bool)."""
    out = F.relu(model.bn1(model.conv1(x)))
    executed = []
    for block in model.gated_blocks:
        gate = block.gate
        pooled = out.mean(dim=(2, 3), keepdim=True)
        gate_logits = gate.fc2(F.relu(gate.fc1bn(gate.fc1(pooled)))).flatten(1)
        run = gate_logits[:, 1] > gate_logits[:, 0]
        executed.append(run)
        shortcut = block.shortcut[1](block.shortcut[0](out)) if len(block.shortcut) else out
        residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(out)))))
        out = F.relu(shortcut + run[:, None, None, None].to(out.dtype) * residual)
    return model.linear(out.mean(dim=(2, 3))), torch.stack(executed, 1)


# aig_resnet depth 8, widths (2, 4, 8), 1 channel, 8x8 input.
AIG_STEM = 2 * 64 * 2 * 9 * 1
AIG_GATES = (2 * 16 * 2 + 2 * 2 * 16) + (2 * 16 * 2 + 2 * 2 * 16) + (2 * 16 * 4 + 2 * 2 * 16)  # fc1 C->16, fc2 16->2
AIG_SHORTCUTS = 2 * 16 * 4 * 2 + 2 * 4 * 8 * 4  # projections of blocks 2 and 3
AIG_RESIDUALS = [2 * 64 * 2 * 9 * 2 * 2, 2 * 16 * 4 * 9 * 2 + 2 * 16 * 4 * 9 * 4, 2 * 4 * 8 * 9 * 4 + 2 * 4 * 8 * 9 * 8]
AIG_HEAD = 2 * 8 * 10


def test_aig_trace_shapes():
    model = tiny_aig()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        logits = model(x)
    assert torch.equal(trace.logits, logits) and logits.shape == (3, 10)
    assert trace.gates.shape == trace.executed.shape == trace.gate_values.shape == (3, 3)
    assert trace.executed.dtype == torch.bool
    assert trace.blocks is None and trace.ponder is None and trace.ponder_map() is None
    assert trace.flops.shape == (3,)
    # Initial gates: softmax([0.1, 2]) ~ 0.87 open with tiny fc2 weights.
    torch.testing.assert_close(trace.gates, torch.full((3, 3), 0.8699), atol=2e-3, rtol=0)


def test_aig_closed_gates_equal_shortcut_path():
    model = set_gates(tiny_aig(), [10.0, -10.0])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        out = F.relu(model.bn1(model.conv1(x)))
        for block in model.gated_blocks:
            shortcut = block.shortcut[1](block.shortcut[0](out)) if len(block.shortcut) else out
            out = F.relu(shortcut)
        expected = model.linear(out.mean(dim=(2, 3)))
    assert not trace.executed.any()
    assert (trace.gate_values == 0).all()
    assert (trace.gates < 1e-6).all()
    torch.testing.assert_close(trace.logits, expected, atol=1e-6, rtol=1e-6)
    assert AIG_STEM + AIG_GATES + AIG_SHORTCUTS + AIG_HEAD == 3424
    assert trace.flops.tolist() == [3424.0] * 3
    assert trace.dense_flops == AIG_STEM + sum(AIG_RESIDUALS) + AIG_SHORTCUTS + AIG_HEAD == 26016


def test_aig_open_gates_equal_plain_resnet():
    model = set_gates(tiny_aig(), [-10.0, 10.0])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        expected, executed = aig_by_hand(model, x)
    assert trace.executed.all() and executed.all()
    assert (trace.gate_values == 1).all()
    torch.testing.assert_close(trace.logits, expected, atol=1e-6, rtol=1e-6)
    total = AIG_STEM + AIG_GATES + AIG_SHORTCUTS + sum(AIG_RESIDUALS) + AIG_HEAD
    assert total == 26464
    assert trace.flops.tolist() == [total] * 3
    assert hook_flops(model, x) == total  # every conv ran


def test_aig_mixed_gates_per_image():
    model = tiny_aig()
    with torch.no_grad():
        for block in model.gated_blocks:
            block.gate.fc2.bias.zero_()
            block.gate.fc2.weight.normal_(0.0, 1.0)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        trace = model.trace(x)
        expected, executed = aig_by_hand(model, x)
    assert torch.equal(trace.executed, executed)
    assert 0 < executed.sum() < executed.numel(), "test set-up: gates must differ"
    assert torch.equal(trace.gate_values, executed.float())
    torch.testing.assert_close(trace.logits, expected, atol=1e-5, rtol=1e-5)
    residuals = torch.tensor(AIG_RESIDUALS, dtype=torch.float32)
    torch.testing.assert_close(trace.flops, AIG_STEM + AIG_GATES + AIG_SHORTCUTS + AIG_HEAD + executed.float() @ residuals)


def test_aig_deterministic_at_eval_and_sampling_in_train():
    model = set_gates(tiny_aig(), [0.0, 0.0])
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        a, b = model.trace(x), model.trace(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.executed, b.executed)
    model.train()
    torch.manual_seed(1)
    first = model.trace(x)
    second = model.trace(x)
    assert not torch.equal(first.executed, second.executed)
    assert set(first.gate_values.unique().tolist()) <= {0.0, 1.0}  # hard samples forward
    assert torch.equal(first.gate_values.detach() > 0.5, first.executed)
    # Straight-through: the task loss reaches the gate parameters.
    first.logits.sum().backward()
    grads = [block.gate.fc2.bias.grad for block in model.gated_blocks]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # gate_mode="sample" samples at eval too.
    sampler = set_gates(tiny_aig(gate_mode="sample"), [0.0, 0.0])
    with torch.no_grad():
        runs = [sampler.trace(x).executed for _ in range(3)]
    assert not (torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2]))


def test_aig_adaptive_loss_by_hand():
    model = tiny_aig()
    gate_values = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    trace = models.Trace(logits=torch.zeros(4, 10), flops=torch.zeros(4), dense_flops=0.0, gate_values=gate_values)
    rates = [0.75, 0.75, 0.75]
    expected = 2.0 * sum((0.6 - r) ** 2 for r in rates) / 3
    assert model.adaptive_loss(trace, target_rate=0.6, lam=2.0).item() == pytest.approx(expected, rel=1e-6)
    targets = [1.0, 0.7, 0.5]
    expected = 1.0 * sum((t - r) ** 2 for t, r in zip(targets, rates)) / 3
    assert model.adaptive_loss(trace, target_rate=targets, lam=1.0).item() == pytest.approx(expected, rel=1e-6)
    # On a real trace, the loss is differentiable through the straight-through gates.
    model.train()
    real = model.trace(torch.randn(4, 1, 8, 8))
    loss = model.adaptive_loss(real, target_rate=0.0, lam=2.0)
    assert loss.item() == pytest.approx(2.0 * (real.gate_values.mean(0) ** 2).mean().item(), rel=1e-6)
    loss.backward()
    assert any(block.gate.fc2.bias.grad.abs().sum() > 0 for block in model.gated_blocks)


def official_aig_keys(widths=(2, 4, 8)):
    """Key names and shapes of the authors' ResNet_cifar(BasicBlock, [1, 1, 1]) (convnet_aig.py),
    as saved from DataParallel by PyTorch 0.3: 'module.' prefix, no num_batches_tracked."""
    def bn(prefix, c):
        return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}

    keys = {"conv1.weight": (widths[0], 1, 3, 3), **bn("bn1", widths[0])}
    c_in = widths[0]
    for stage, c in enumerate(widths, start=1):
        p = f"layer{stage}.0"
        keys[f"{p}.conv1.weight"] = (c, c_in, 3, 3)
        keys.update(bn(f"{p}.bn1", c))
        keys[f"{p}.conv2.weight"] = (c, c, 3, 3)
        keys.update(bn(f"{p}.bn2", c))
        if c != c_in:
            keys[f"{p}.shortcut.0.weight"] = (c, c_in, 1, 1)
            keys.update(bn(f"{p}.shortcut.1", c))
        keys[f"{p}.fc1.weight"] = (16, c_in, 1, 1)
        keys[f"{p}.fc1.bias"] = (16,)
        keys.update(bn(f"{p}.fc1bn", 16))
        keys[f"{p}.fc2.weight"] = (2, 16, 1, 1)
        keys[f"{p}.fc2.bias"] = (2,)
        c_in = c
    keys["linear.weight"] = (10, widths[-1])
    keys["linear.bias"] = (10,)
    return {"module." + k: v for k, v in keys.items()}


def test_convert_official_state_dict():
    generator = torch.Generator().manual_seed(0)
    official = {k: torch.rand(shape, generator=generator) + 0.5 for k, shape in official_aig_keys().items()}
    converted = convert_official_state_dict(official)
    assert not any(k.startswith("module.") for k in converted)
    for key in ("bn1.num_batches_tracked", "layer2.0.shortcut.1.num_batches_tracked"):
        assert key in converted and converted[key].dtype == torch.long
    model = tiny_aig(seed=5)
    model.load_state_dict(converted, strict=True)  # every official tensor has a place, nothing is missing
    state = model.state_dict()
    block = model.layer1[0]
    assert torch.equal(block.gate.fc1.weight, official["module.layer1.0.fc1.weight"])
    assert torch.equal(block.gate.fc1bn.running_var, official["module.layer1.0.fc1bn.running_var"])
    assert torch.equal(block.gate.fc2.bias, official["module.layer1.0.fc2.bias"])
    assert torch.equal(model.layer2[0].shortcut[0].weight, official["module.layer2.0.shortcut.0.weight"])
    assert torch.equal(model.linear.weight, official["module.linear.weight"])
    assert torch.equal(state["layer3.0.bn2.running_mean"], official["module.layer3.0.bn2.running_mean"])
    # Keys without the prefix are kept as they are.
    plain = convert_official_state_dict({k[len("module."):]: v for k, v in official.items()})
    model.load_state_dict(plain, strict=True)


def test_aig_imagenet_small_input():
    model = create_model("aig_resnet50", num_classes=10).eval()
    with torch.no_grad():
        trace = model.trace(torch.randn(1, 3, 64, 64))
    assert trace.logits.shape == (1, 10)
    assert trace.gates.shape == (1, 16)
    assert trace.executed.all()  # initial gates are open (0.87)


# =========================================================================== ACT-RNN


def tiny_rnn(name="act_rnn", seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(input_kind="features", input_size=3, hidden_size=8, output_size=8, output="sequence")
    options.update(kwargs)
    return create_model(name, **options).eval()


def identity_readout(model):
    with torch.no_grad():
        model.readout.weight.copy_(torch.eye(8))
        model.readout.bias.zero_()
    return model


def mixed_halting(model, scale=3.0, bias=0.0):
    with torch.no_grad():
        model.halting_unit.weight.normal_(0.0, scale)
        model.halting_unit.bias.fill_(bias)
    return model


@pytest.mark.parametrize("name", ["act_rnn", "act_gru", "act_lstm", "lstm", "rnn", "gru"])
@pytest.mark.parametrize("input_kind", ["bytes", "features"])
@pytest.mark.parametrize("output", ["last", "sequence"])
def test_rnn_trace_shapes(name, input_kind, output):
    model = tiny_rnn(name, input_kind=input_kind, output=output, output_size=5, max_steps=4)
    x = torch.randint(0, 256, (2, 6)) if input_kind == "bytes" else torch.randn(2, 6, 3)
    with torch.no_grad():
        trace = model.trace(x)
        logits = model(x)
    assert torch.equal(trace.logits, logits)
    assert trace.logits.shape == ((2, 5) if output == "last" else (2, 6, 5))
    assert trace.ponder.shape == trace.steps.shape == (2, 6)
    assert trace.steps.dtype == torch.int64
    assert trace.flops.shape == (2,)
    assert trace.blocks is None and trace.gates is None
    if name.startswith("act_"):
        assert ((trace.steps >= 1) & (trace.steps <= 4)).all()
        assert (trace.ponder > trace.steps.float()).all() and (trace.ponder <= trace.steps.float() + 1).all()
    else:
        assert (trace.steps == 1).all()
    if input_kind == "features":  # a single input step [B, F]
        with torch.no_grad():
            single = model.trace(torch.randn(2, 3))
        assert single.steps.shape == (2, 1)
        assert single.logits.shape == ((2, 5) if output == "last" else (2, 1, 5))


def test_rnn_last_equals_last_of_sequence():
    seq = mixed_halting(tiny_rnn("act_gru", max_steps=5, output_size=4))
    last = tiny_rnn("act_gru", max_steps=5, output_size=4, output="last")
    last.load_state_dict(seq.state_dict())
    x = torch.randn(3, 7, 3)
    with torch.no_grad():
        torch.testing.assert_close(last(x), seq(x)[:, -1])


def test_rnn_default_halting_bias_is_one():
    assert tiny_rnn("act_lstm").halting_unit.bias.item() == 1.0


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_act_rnn_two_steps_by_hand(cell):
    """max_steps = 2: s^1 = cell([x, 1], s), s^2 = cell([x, 0], s^1); h = sigmoid(W_h s^1 + b);
    N = 1 if h >= 0.99 (then p = [1, 0]) else 2 (p = [h, 1 - h]); state = p1 s^1 + p2 s^2
    (an LSTM's cell state too), rho = N + R."""
    model = identity_readout(mixed_halting(tiny_rnn(f"act_{cell}", max_steps=2), scale=5.0))
    x = torch.randn(16, 3, 3)
    with torch.no_grad():
        model.cell.flag_weight.copy_(torch.randn_like(model.cell.flag_weight) * 2.0)  # a flag that matters
        projected = model.cell.input_proj(x)
        # Centre the halting logits of the first inner steps on logit(0.99): about half the rows
        # halt after one step.
        first = model.cell.step(projected[:, 0] + model.cell.flag_weight, model.cell.initial_state(16, x.device, x.dtype))
        z = model.halting_unit(first[0]).squeeze(1) - model.halting_unit.bias
        model.halting_unit.bias.fill_(4.6 - z.median().item())
        trace = model.trace(x)
        state = model.cell.initial_state(16, x.device, x.dtype)
        outs, ponders, steps, wrong_flag = [], [], [], []
        for t in range(3):
            s1 = model.cell.step(projected[:, t] + model.cell.flag_weight, state)
            s2 = model.cell.step(projected[:, t], s1)
            h = torch.sigmoid(model.halting_unit(s1[0])).squeeze(1)
            halt = h >= 0.99
            p1 = torch.where(halt, torch.ones_like(h), h)
            p2 = torch.where(halt, torch.zeros_like(h), 1 - h)
            # An inverted flag (0 at n = 1, 1 after): what a buggy port computes.
            w1 = model.cell.step(projected[:, t], state)
            wrong_flag.append(w1[0])
            state = tuple(p1[:, None] * a + p2[:, None] * b for a, b in zip(s1, s2))
            outs.append(state[0])
            steps.append(torch.where(halt, 1, 2))
            ponders.append(torch.where(halt, 2.0, 3.0 - h))
    assert torch.equal(trace.steps, torch.stack(steps, 1))
    assert (trace.steps == 1).any() and (trace.steps == 2).any(), "test set-up: rows must halt differently"
    torch.testing.assert_close(trace.ponder, torch.stack(ponders, 1))
    torch.testing.assert_close(trace.logits, torch.stack(outs, 1), atol=1e-6, rtol=1e-5)
    # The flag is added on the first inner step only (and it does change the numbers).
    s = model.cell.initial_state(16, x.device, x.dtype)
    with torch.no_grad():
        torch.testing.assert_close(model.cell.flagged(projected), projected + model.cell.flag_weight)
        a = model.cell.step(projected[:, 0] + model.cell.flag_weight, s)
        assert not torch.allclose(model.cell.step(projected[:, 0], s)[0], a[0])


def rnn_reference(model, x):
    """All inner steps for every row up to max_steps (flag at n = 1), weights from act_weights."""
    projected = model.cell.input_proj(model._inputs(x))
    batch, length = projected.shape[:2]
    state = model.cell.initial_state(batch, x.device, torch.float32)
    outs, ponders, steps = [], [], []
    for t in range(length):
        current, states, hs = state, [], []
        for n in range(1, model.max_steps + 1):
            current = model.cell.step(projected[:, t] + model.cell.flag_weight if n == 1 else projected[:, t], current)
            states.append(current)
            hs.append(torch.sigmoid(model.halting_unit(current[0])).squeeze(1))
        result = act_weights(torch.stack(hs, -1), eps=model.eps)
        state = tuple(
            sum(result.weights[:, n, None] * states[n][k] for n in range(model.max_steps)) for k in range(len(state))
        )
        outs.append(state[0])
        ponders.append(result.ponder_cost)
        steps.append(result.steps)
    return model.readout(torch.stack(outs, 1)), torch.stack(ponders, 1), torch.stack(steps, 1)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_act_rnn_sparse_equals_masked_equals_reference(cell):
    sparse = mixed_halting(tiny_rnn(f"act_{cell}", max_steps=6, execution="sparse"), scale=1.5, bias=-1.0)
    masked = tiny_rnn(f"act_{cell}", max_steps=6, execution="masked")
    masked.load_state_dict(sparse.state_dict())
    x = torch.randn(12, 4, 3)
    a, b = sparse.trace(x), masked.trace(x)
    counts = torch.bincount(a.steps.flatten(), minlength=7)
    assert (counts > 0).sum() >= 3, "test set-up: rows must halt after different numbers of steps"
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.ponder, b.ponder, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.flops, b.flops)
    # Gradients agree as well.
    (a.logits.square().sum() + a.ponder.sum()).backward()
    (b.logits.square().sum() + b.ponder.sum()).backward()
    for (name, p), q in zip(sparse.named_parameters(), masked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        logits, ponder, steps = rnn_reference(sparse, x)
    assert torch.equal(a.steps, steps)
    torch.testing.assert_close(a.logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.ponder, ponder, atol=1e-5, rtol=0)


def test_act_rnn_sparse_runs_only_the_rows_still_going():
    model = mixed_halting(tiny_rnn("act_lstm", max_steps=6), scale=1.5, bias=-1.0)
    calls = []
    original = model.cell.step

    def recording_step(pre, state):  # (whether the flag is set on the first inner step: the by-hand tests above)
        calls.append(pre.shape[0])
        return original(pre, state)

    model.cell.step = recording_step
    with torch.no_grad():
        trace = model.trace(torch.randn(12, 4, 3))
    expected = []
    for t in range(4):
        column = trace.steps[:, t]
        expected += [int((column >= n).sum()) for n in range(1, int(column.max()) + 1)]
    assert calls == expected
    assert any(rows < 12 for rows in calls)


@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_act_rnn_step_cap(execution):
    model = tiny_rnn("act_gru", max_steps=5, halting_bias=-10.0, execution=execution)
    with torch.no_grad():
        model.halting_unit.weight.zero_()
    with torch.no_grad():
        trace = model.trace(torch.randn(3, 4, 3))
    assert (trace.steps == 5).all()
    # R = 1 - 4 h with h = sigmoid(-10).
    torch.testing.assert_close(trace.ponder, torch.full((3, 4), 5.0 + 1.0 - 4 * SIG_M10))
    # Flops: input projection per input step, recurrent matmul + halting unit per inner step, readout per step.
    per_step = 2 * 8 * 24 + 2 * 8
    expected = 4 * (2 * 3 * 24) + 5 * 4 * per_step + 4 * (2 * 8 * 8)
    assert trace.flops.tolist() == [expected] * 3
    assert trace.dense_flops == expected


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_plain_rnn_is_one_step_everywhere(cell):
    model = identity_readout(tiny_rnn(cell, max_steps=7))
    assert model.max_steps == 1
    x = torch.randn(4, 5, 3)
    with torch.no_grad():
        trace = model.trace(x)
        projected = model.cell.input_proj(x)
        state = model.cell.initial_state(4, x.device, x.dtype)
        outs = []
        for t in range(5):
            state = model.cell.step(projected[:, t] + model.cell.flag_weight, state)
            outs.append(state[0])
    assert (trace.steps == 1).all()
    assert (trace.ponder == 1).all()
    torch.testing.assert_close(trace.logits, torch.stack(outs, 1))
    assert model.adaptive_loss(trace).item() == 0.0
    assert trace.flops.tolist() == [5 * (2 * 3 * model.cell.input_proj.out_features)
                                    + 5 * (2 * 8 * model.cell.hidden_proj.out_features) + 5 * (2 * 8 * 8)] * 4


def test_act_rnn_adaptive_loss():
    """The paper's units: tau per input step. Graves: L = sum_t task_t + tau sum_t rho_t; our task
    losses are means over steps and batch, so the ponder term is tau x the mean of rho_t."""
    model = mixed_halting(tiny_rnn("act_rnn", max_steps=4))
    trace = model.trace(torch.randn(3, 5, 3))
    loss = model.adaptive_loss(trace, tau=0.01)
    by_hand = sum(float(trace.ponder[b, t].detach()) for b in range(3) for t in range(5)) / (3 * 5)
    assert loss.item() == pytest.approx(0.01 * by_hand, rel=1e-6)
    # one input step (parity): the same as the sum over steps, so parity's tau is unchanged
    one_step = model.trace(torch.randn(3, 1, 3))
    torch.testing.assert_close(model.adaptive_loss(one_step, tau=0.01), 0.01 * one_step.ponder.sum(1).mean())
    loss.backward()
    assert model.halting_unit.bias.grad is not None and model.halting_unit.bias.grad.item() < 0


def test_registry():
    names = models.list_models()
    for name in ("resnet", "act_resnet", "sact_resnet", "sact_resnet110", "sact_resnet101", "aig_resnet",
                 "aig_resnet50", "act_rnn", "act_gru", "act_lstm", "lstm"):
        assert name in names
    with pytest.raises(models.UnknownModelError) as info:
        create_model("no_such_net")
    assert "no_such_net" in str(info.value)
    model = create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=10)
    assert model.registry_name == "sact_resnet"
    assert model.registry_kwargs == {"depth": 8, "widths": (4, 8, 16), "in_channels": 1, "num_classes": 10}
    assert sum(len(b.units) for b in model.blocks) == 3
    assert len(create_model("resnet32").blocks[0].units) == 5


def test_every_registered_model_declares_its_family_and_task():
    """The server and the page read a model's family from the registry, not from its name."""
    for name in models.list_models():
        info = models.model_info(name)
        assert info.family in models.FAMILIES and info.tasks and info.task in ("classify", "sequence"), name
    assert models.model_info("sact_resnet50").family == "sact" and models.model_info("resnet110").family == "dense"
    assert models.model_info("act_lstm").family == "act-rnn" and models.model_info("gru").family == "rnn"
    assert models.model_info("aig_resnet50").tasks == ("classify",) and models.model_info("act_rnn").task == "sequence"
    with pytest.raises(models.UnknownModelError):
        models.model_info("mamba")
    with pytest.raises(ValueError):
        models.registry.register_model(lambda: None, family="mixture-of-experts")
