"""Sparse execution (models/sparse.py) gives the numbers of the masked reference, and skips work.

For every adaptive family, `model.execution = "masked"` (compute everything, multiply by the mask)
and `"sparse"` (compute only what the masks keep) must give the same logits (max abs difference
<= 1e-4 in float32) and the same traces (halting decisions and FLOPs identical), on random weights
at several halting densities and on the bundled checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponderscope import models
from ponderscope.models import create_model, load_checkpoint
from ponderscope.models import sparse as sparse_ops
from tests.conftest import TEST_DEVICE, randomize_batchnorm

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
LOGIT_ATOL = 1e-4


def traces(model, x):
    """(masked, sparse) traces of x, on TEST_DEVICE (the model and x are moved there)."""
    model.to(TEST_DEVICE)
    x = x.to(TEST_DEVICE)
    with torch.no_grad():
        model.execution = "masked"
        masked = model.trace(x)
        model.execution = "sparse"
        sparse = model.trace(x)
    return masked, sparse


def assert_same(masked, sparse, atol=LOGIT_ATOL):
    assert (sparse.logits - masked.logits).abs().max().item() <= atol
    assert torch.equal(sparse.flops, masked.flops)
    assert sparse.dense_flops == masked.dense_flops
    assert (sparse.blocks is None) == (masked.blocks is None)
    for a, b in zip(sparse.blocks or [], masked.blocks or []):
        assert torch.equal(a.units, b.units)
        torch.testing.assert_close(a.ponder_cost, b.ponder_cost, atol=atol, rtol=0)
        torch.testing.assert_close(a.halting, b.halting, atol=atol, rtol=0)
        torch.testing.assert_close(a.probabilities, b.probabilities, atol=atol, rtol=0)
    for field in ("executed", "steps"):
        a, b = getattr(sparse, field), getattr(masked, field)
        assert (a is None and b is None) or torch.equal(a, b)
    for field in ("gates", "gate_values", "ponder"):
        a, b = getattr(sparse, field), getattr(masked, field)
        assert (a is None and b is None) or torch.allclose(a, b, atol=atol, rtol=0)


# =========================================================================== ResNets (SACT / ACT)


def resnet(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    if name.endswith("50"):  # ImageNet layout, bottleneck units
        model = create_model(name, num_classes=10, **kwargs)
    else:
        model = create_model(name, depth=20, widths=(4, 8, 16), in_channels=1, num_classes=10, **kwargs)
    return randomize_batchnorm(model, seed).eval()


def set_halting(model, density: str):
    """'none': nothing halts (every unit runs everywhere); 'all': everything halts after the
    first unit; 'mixed': halting after different units at different positions / images;
    'sparse': a few positions go on after unit 1."""
    with torch.no_grad():
        for block in model.blocks:
            for branch in block.halting:
                local = getattr(branch, "local_conv", None)
                weight, bias = (local.weight, local.bias) if local is not None else (branch.linear.weight, branch.linear.bias)
                if density == "none":
                    weight.zero_(), bias.fill_(-10.0)
                elif density == "all":
                    weight.zero_(), bias.fill_(10.0)
                elif density == "mixed":
                    weight.mul_(8.0 if local is not None else 20.0), bias.zero_()
                elif density == "sparse":
                    weight.mul_(8.0 if local is not None else 20.0), bias.fill_(2.5 if local is not None else 0.5)
    return model


def unit_counts(trace):
    """How many positions (all images) ran each unit l >= 2 of each block, from the trace."""
    return [[int((block.units > l).sum()) for l in range(1, block.halting.shape[1])] for block in trace.blocks]


@pytest.mark.parametrize("density", ["none", "all", "mixed", "sparse"])
@pytest.mark.parametrize("name", ["sact_resnet", "act_resnet"])
def test_cifar_resnet_sparse_equals_masked(name, density):
    model = set_halting(resnet(name), density)
    x = torch.randn(3, 1, 17, 13)  # odd sizes: stride-2 maps of 9x7 and 5x4
    masked, sparse = traces(model, x)
    assert_same(masked, sparse)
    counts = unit_counts(masked)
    totals = (3 * 17 * 13, 3 * 9 * 7, 3 * 5 * 4)
    if density == "none":
        assert all(c == n for block, n in zip(counts, totals) for c in block)
    elif density == "all":
        assert all(c == 0 for block in counts for c in block)
    else:  # some unit ran on part of the map / batch only
        assert any(0 < c < n for block, n in zip(counts, totals) for c in block)


@pytest.mark.parametrize("density", ["none", "mixed", "sparse"])
@pytest.mark.parametrize("name", ["sact_resnet50", "act_resnet50"])
def test_imagenet_resnet_sparse_equals_masked(name, density):
    model = set_halting(resnet(name), density)
    x = torch.randn(2, 3, 61, 75)
    masked, sparse = traces(model, x)
    assert_same(masked, sparse)


@pytest.mark.parametrize("style", ["ponderscope", "sact_tf_cifar", "sact_tf_imagenet"])
@pytest.mark.parametrize("kind, in_channels, width, stride, first", [
    ("basic", 8, 8, 1, False),  # identity shortcut
    ("basic", 8, 8, 1, True),  # the authors' CIFAR style: shortcut from relu(bn(x))
    ("basic", 8, 16, 2, False),  # projection, or their pooled and zero-padded "option A"
    ("bottleneck", 16, 4, 1, False),  # identity
    ("bottleneck", 8, 4, 1, True),  # projection, stride 1 (a ResNet-50's first block)
    ("bottleneck", 16, 8, 2, False),  # projection, strided
])
def test_folded_unit_output_equals_the_module(style, kind, in_channels, width, stride, first):
    """A block's first unit under sparse execution (`unit_output`: BNs folded into the convs,
    1x1 convs and the projection as products) gives the module's forward, for every wiring, on
    odd and even map sizes (a strided conv's output size and TF 'SAME' padding differ there)."""
    from ponderscope.models.resnet import STYLES, PreActBasicUnit, PreActBottleneckUnit

    unit_cls = PreActBasicUnit if kind == "basic" else PreActBottleneckUnit
    torch.manual_seed(0)
    unit = randomize_batchnorm(unit_cls(in_channels, width, stride, STYLES[style], first=first)).eval()
    pooled = getattr(unit, "pool_pad", False) and stride > 1  # (the module's "option A" takes even sizes only)
    for height, width_ in ((10, 14), (8, 8)) + (() if pooled else ((9, 11),)):
        x = torch.randn(2, in_channels, height, width_).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected, got = unit(x), sparse_ops.unit_output(unit, x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("always_dense", [True, False])
def test_sact_dense_and_gathered_convs_agree(monkeypatch, always_dense):
    """Both techniques for a 3x3 conv on a position set (dense kernel on the whole map + masked
    update, or per-position gather + product) give the masked numbers."""
    monkeypatch.setattr(sparse_ops, "dense_3x3_above", lambda width: 0.0 if always_dense else 1.0)
    monkeypatch.setattr(sparse_ops, "CHUNK_ROWS", 7)  # many chunks
    for name, x in (("sact_resnet", torch.randn(2, 1, 15, 18)), ("sact_resnet50", torch.randn(1, 3, 50, 64))):
        model = set_halting(resnet(name, seed=1), "mixed")
        assert_same(*traces(model, x))


def test_sact_sparse_computes_only_the_needed_positions(monkeypatch):
    """Unit l >= 2 gathers exactly the active positions and their 3x3 neighbourhood."""
    model = set_halting(resnet("sact_resnet", seed=2), "mixed")
    monkeypatch.setattr(sparse_ops, "dense_3x3_above", lambda width: 1.0)  # always gather
    seen = []
    original = sparse_ops.unit_residual_rows

    def recording(unit, x, grid, active, dilated):
        seen.append((int(active.numel()), int(dilated.numel())))
        return original(unit, x, grid, active, dilated)

    monkeypatch.setattr(sparse_ops, "unit_residual_rows", recording)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        trace = model.trace(x)
    expected = []
    for block in trace.blocks:
        for l in range(1, block.halting.shape[1]):
            active = block.units > l
            if active.any() and not active.all():  # all active: the dense unit; none: skipped
                expected.append((int(active.sum()), int(models.resnet.dilate(active).sum())))
    assert seen == expected and seen, "test set-up: some unit must run on part of the map"
    assert any(a < 0.5 * 2 * 256 for a, _ in seen)


def test_act_sparse_runs_only_running_images(monkeypatch):
    model = set_halting(resnet("act_resnet", seed=3), "mixed")
    batches, residual = [], sparse_ops.unit_residual

    def recorded(unit, x):  # units 2.. of a block (the first always runs on every image)
        batches.append(x.shape[0])
        return residual(unit, x)

    monkeypatch.setattr(sparse_ops, "unit_residual", recorded)
    x = torch.randn(6, 1, 12, 12)
    with torch.no_grad():
        trace = model.trace(x)
    expected = []
    for block in trace.blocks:
        steps = block.units[:, 0, 0]
        expected += [int((steps > l).sum()) for l in range(1, block.halting.shape[1]) if (steps > l).any()]
    assert batches == expected
    assert any(b < 6 for b in batches), "test set-up: some image must halt early"


def input_gradients(model, x: torch.Tensor) -> list[torch.Tensor]:
    """d(sum of squared logits)/dx under masked, then sparse execution."""
    grads = []
    for execution in ("masked", "sparse"):
        model.execution = execution
        xi = x.clone().requires_grad_(True)
        model.trace(xi).logits.square().sum().backward()
        grads.append(xi.grad)
    return grads


def test_sparse_input_gradients_match_masked():
    """Sparse execution stays differentiable (eval mode, autograd on): same input gradients."""
    for name in ("sact_resnet", "act_resnet"):
        model = set_halting(resnet(name, seed=4), "mixed")
        masked, sparse = input_gradients(model, torch.randn(2, 1, 11, 14))
        torch.testing.assert_close(sparse, masked, atol=1e-4, rtol=1e-4)
    # Frozen weights (a saliency map of a trained model): the derived weights are then cached, and
    # the dense convs must still not take oneDNN's packed route, which has no autograd.
    for name, shape in (("sact_resnet", (2, 1, 11, 14)), ("sact_resnet50", (1, 3, 40, 40))):
        model = set_halting(resnet(name, seed=4), "mixed").requires_grad_(False)
        masked, sparse = input_gradients(model, torch.randn(*shape))
        assert sparse is not None and sparse.abs().sum() > 0
        torch.testing.assert_close(sparse, masked, atol=1e-4, rtol=1e-4)


def test_execution_attribute():
    for name in ("sact_resnet", "act_resnet", "resnet", "aig_resnet"):
        model = create_model(name, depth=8, widths=(2, 4, 8), in_channels=1)
        assert model.execution == "sparse"
        model.execution = "masked"
        model.eval()
        model.trace(torch.randn(1, 1, 8, 8))
        model.execution = "fast"
        with pytest.raises(ValueError):
            model.trace(torch.randn(1, 1, 8, 8))
    assert create_model("act_lstm", input_kind="bytes", output_size=4).execution == "sparse"
    with pytest.raises(ValueError):
        create_model("sact_resnet", depth=8, execution="fast")


def test_training_uses_the_masked_path(monkeypatch):
    """While training, BatchNorm uses batch statistics, which a subset of positions would change:
    the masked path runs whatever `execution` says."""
    model = set_halting(resnet("sact_resnet", seed=5), "mixed").train()
    called = []
    monkeypatch.setattr(sparse_ops, "unit_residual_rows", lambda *a: called.append(1))
    model.trace(torch.randn(2, 1, 8, 8))
    assert not called


def test_cached_weights_follow_the_parameters():
    """Folded weights are cached; loading other weights must not leave stale ones."""
    model = set_halting(resnet("sact_resnet", seed=6), "mixed")
    other = set_halting(resnet("sact_resnet", seed=7), "mixed")
    x = torch.randn(2, 1, 12, 12)
    traces(model, x)  # fills the caches
    model.load_state_dict(other.state_dict())
    assert_same(*traces(model, x))
    assert torch.allclose(traces(model, x)[1].logits, traces(other, x)[1].logits, atol=1e-5)


# =========================================================================== ConvNet-AIG


def aig(name="aig_resnet", seed=0):
    torch.manual_seed(seed)
    if name.endswith("50"):
        model = create_model(name, num_classes=10)
    else:
        model = create_model(name, depth=14, widths=(4, 8, 16), in_channels=1, num_classes=10)
    return randomize_batchnorm(model, seed).eval()


def set_gates(model, mode: str):
    with torch.no_grad():
        for block in model.gated_blocks:
            if mode == "open":
                block.gate.fc2.bias.copy_(torch.tensor([-10.0, 10.0]))
            elif mode == "closed":
                block.gate.fc2.bias.copy_(torch.tensor([10.0, -10.0]))
            else:
                block.gate.fc2.bias.zero_()
                block.gate.fc2.weight.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("mode", ["open", "closed", "mixed"])
@pytest.mark.parametrize("name,shape", [("aig_resnet", (5, 1, 15, 11)), ("aig_resnet50", (4, 3, 45, 39))])
def test_aig_sparse_equals_masked(name, shape, mode):
    model = set_gates(aig(name), mode)
    masked, sparse = traces(model, torch.randn(*shape))
    assert_same(masked, sparse)
    executed = masked.executed
    assert {"open": executed.all(), "closed": not executed.any(), "mixed": 0 < executed.sum() < executed.numel()}[mode]


def test_aig_runs_blocks_only_for_open_images():
    model = set_gates(aig(seed=1), "mixed")
    batches = []
    handles = [b.conv1.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0])) for b in model.gated_blocks]
    shortcuts = []
    handles += [b.shortcut[0].register_forward_hook(lambda m, i, o: shortcuts.append(i[0].shape[0]))
                for b in model.gated_blocks if len(b.shortcut)]
    with torch.no_grad():
        trace = model.trace(torch.randn(8, 1, 12, 12))
    for handle in handles:
        handle.remove()
    assert batches == [int(n) for n in trace.executed.sum(0) if n > 0]
    assert shortcuts == [8, 8]  # closed downsampling blocks still run their projection


def test_aig_input_gradients_match_masked():
    model = set_gates(aig(seed=2), "mixed")
    masked, sparse = input_gradients(model, torch.randn(4, 1, 10, 10))
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-4)


# =========================================================================== ACT-RNN


def act_rnn_and_inputs(cell: str, input_kind: str, bias: float, max_steps: int, shape: tuple[int, int], seed: int):
    """A small random ACT-RNN whose halting unit is spread out enough that rows halt at different
    steps, and inputs [B, T] (bytes) or [B, T, 5] (features)."""
    torch.manual_seed(seed)
    model = create_model(f"act_{cell}", input_kind=input_kind, input_size=5, hidden_size=16, output_size=7,
                         output="sequence", max_steps=max_steps).eval()
    with torch.no_grad():
        model.halting_unit.weight.normal_(0.0, 1.5)
        model.halting_unit.bias.fill_(bias)
    return model, torch.randint(0, 256, shape) if input_kind == "bytes" else torch.randn(*shape, 5)


@pytest.mark.parametrize("bias", [-10.0, -1.0, 10.0])
@pytest.mark.parametrize("cell,input_kind", [("lstm", "bytes"), ("rnn", "features"), ("gru", "features")])
def test_act_rnn_sparse_equals_masked(cell, input_kind, bias):
    model, x = act_rnn_and_inputs(cell, input_kind, bias, max_steps=5, shape=(6, 9), seed=0)
    masked, sparse = traces(model, x)
    assert_same(masked, sparse)
    if bias == -1.0:
        assert len(masked.steps.unique()) >= 2, "test set-up: rows must halt after different steps"


@pytest.mark.parametrize("bias", [-1.0, 0.5])
@pytest.mark.parametrize("cell,input_kind", [("lstm", "bytes"), ("rnn", "features"), ("gru", "features")])
def test_act_rnn_single_sequence_path_equals_batched(cell, input_kind, bias):
    """One sequence at inference halts with the scalar form of the rule; it must give the tensor
    form's steps and ponder exactly, and its logits, whether the sequence runs alone (scalar
    form), with autograd on (tensor form), or in a batch beside others."""
    model, x = act_rnn_and_inputs(cell, input_kind, bias, max_steps=6, shape=(3, 40), seed=1)
    with torch.no_grad():
        alone = model.trace(x[1:2])
        batched = model.trace(x)
    tensor_form = model.trace(x[1:2])  # autograd on: the tensor form of the rule
    assert alone.steps.dtype == torch.long and alone.ponder.dtype == torch.float32
    assert len(alone.steps.unique()) >= 2, "test set-up: steps must vary along the sequence"
    for other in (tensor_form, batched):
        index = 0 if other is tensor_form else 1
        assert torch.equal(alone.steps[0], other.steps[index])
        torch.testing.assert_close(alone.ponder[0], other.ponder[index].detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(alone.logits[0], other.logits[index].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.flops[0], other.flops[index].detach())


def test_bundled_act_lstm_single_sequence_path_equals_batched():
    model = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / "jargon_act_lstm").eval()
    text = torch.tensor([list(b"The Jargon File, version 4.4.7: a hacker's dictionary. 42 entries!")])
    with torch.no_grad():
        alone = model.trace(text)
        batched = model.trace(torch.cat([text, text.flip(1)]))
    assert torch.equal(alone.steps, batched.steps[:1]) and len(alone.steps.unique()) >= 2
    torch.testing.assert_close(alone.ponder, batched.ponder[:1], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone.logits, batched.logits[:1], atol=1e-4, rtol=1e-4)


# =========================================================================== bundled checkpoints


def bundled_inputs(model, n):
    from conftest import require_data
    from ponderscope.core.workloads import checkpoint_test_data

    card = model.card
    if card.task.name == "classify":
        workload = require_data(checkpoint_test_data, card)
        return workload.normalize(workload.test_x[:n])
    if card.task.name == "parity":
        from ponderscope.core.tasks import parity_batch

        return parity_batch(n, card.task.bits, torch.Generator().manual_seed(0))[0]
    from ponderscope.core import data

    _, held_out = data.split_text(require_data(data.load_text_corpus, card.dataset))
    return torch.tensor(list(held_out[: n * 50]), dtype=torch.long).view(n, 50)


@pytest.mark.parametrize("name", ["fmnist_sact_resnet32", "fmnist_act_resnet32", "fmnist_aig_resnet32",
                                  "cluttered_sact_resnet20", "parity16_act_rnn", "jargon_act_lstm"])
def test_bundled_checkpoint_sparse_equals_masked(name):
    path = CHECKPOINTS / name
    if not (path / "card.json").is_file():
        pytest.skip(f"{path} not bundled")
    model = models.load_checkpoint(path)
    x = bundled_inputs(model, 6)
    masked, sparse = traces(model, x)
    assert_same(masked, sparse)
    if masked.flops is not None and "rnn" not in name and "lstm" not in name:
        assert (masked.flops < masked.dense_flops).any(), "the checkpoint should skip some work"


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0)])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_prepacked_conv_gives_the_numbers_of_f_conv2d(stride, padding, slope, with_bias):
    """conv_dense on oneDNN's packed kernel (made once with the weights) gives F.conv2d's numbers
    and the activation after it, on channels-last maps; without a packed kernel it is F.conv2d."""
    generator = torch.Generator().manual_seed(stride * 10 + padding)
    x = torch.randn(2, 256, 9, 11, generator=generator).contiguous(memory_format=torch.channels_last)
    kernel = sparse_ops.dense_kernel(torch.randn(256, 256, 3, 3, generator=generator))
    bias = torch.randn(256, generator=generator) if with_bias else None
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x, kernel, bias, stride, padding)
        expected = expected if slope is None else torch.nn.functional.leaky_relu(expected, slope)
        packed = sparse_ops.packed_kernel(kernel, stride, padding)
        if torch.backends.mkldnn.is_available():
            assert packed is not None and packed.is_mkldnn
        for p in (packed, None):
            got = sparse_ops.conv_dense(x, kernel, p, bias, stride, padding, slope)
            assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # only the widths where it measured faster (oneDNN's op was 50x slower on a 96-wide kernel at 7x7)
    assert sparse_ops.packed_kernel(sparse_ops.dense_kernel(torch.randn(96, 96, 3, 3)), stride, padding) is None
    assert sparse_ops.packed_kernel(kernel.requires_grad_(), stride, padding) is None  # autograd on: F.conv2d


def test_a_model_with_cached_weights_can_be_copied():
    """The weights sparse execution derives (folded, packed) stay with the module they were made
    from: a deep copy builds its own, and both run."""
    import copy

    model = set_halting(resnet("sact_resnet50", seed=5), "mixed")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        before = model.trace(x).logits
        clone = copy.deepcopy(model)
        assert torch.equal(clone.trace(x).logits, before)
