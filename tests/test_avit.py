"""A-ViT (models/avit.py): the halting rule per token over layers, checked against a plain
per-image loop that runs each layer on the running tokens only (no masks, no gathers); sparse
execution equal to masked; FLOPs against a count of the matrix products actually done; the
never-halting A-ViT equal to its dense twin; the losses' gradients."""
from __future__ import annotations

import torch
import pytest

from ponderscope.models import create_model
from ponderscope.models.avit import HaltingViT
from tests.test_sparse import assert_same, traces

SMALL = dict(image_size=24, patch=4, dim=32, depth=4, heads=4, mlp_ratio=2.0)


def model(seed=0, **kwargs) -> HaltingViT:
    torch.manual_seed(seed)
    return create_model("avit", num_classes=10, in_channels=1, **{**SMALL, **kwargs}).eval()


def reference(m: HaltingViT, image: torch.Tensor):
    """One image [C, H, W], by the paper's rule written plainly: the class token and the running
    image tokens form a shorter sequence that goes through the layer; each image token gets
    h = sigmoid(gamma e_0 - beta) (1 at the last layer) and halts once its sum reaches 1 - eps,
    with weight R = 1 - the sum before. Returns logits (the class token's), the per-token N and
    N + R, and the FLOPs of the products done."""
    patches = (m.stem(image[None]) + m.position)[0]
    c = int(m.class_in_layers)  # readout "query": the class token is in no layer
    tokens = torch.cat([m.cls[0], patches]) if c else patches  # [c + n, d]
    n, d = patches.shape
    running = list(range(n))  # image token t is row t + c
    total, steps, rho = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    outputs = torch.zeros_like(patches)  # each token's ACT-weighted state (what readout "act" reads)
    flops = m.stem.flops(image.shape[-2], image.shape[-1]) + 2 * m.head.in_features * m.head.out_features
    if m.readout is not None:  # one query over n tokens: q, k and v, scores, their average, the projection
        flops += 2 * (d * d + 2 * n * d * d + d * d) + 2 * 2 * n * d
    for index, layer in enumerate(m.layers):
        rows = [0] * c + [t + c for t in running]
        k = len(rows)
        hidden = layer.mlp[0].out_features
        flops += 2 * k * (3 * d * d + d * d + 2 * d * hidden) + 2 * 2 * k * k * d
        if rows:
            updated = layer(tokens[rows][None])[0]
            tokens = tokens.clone()
            tokens[rows] = updated
        still = []
        for t in running:
            last = index == len(m.layers) - 1
            h = 1.0 if last else float(torch.sigmoid(m.gate_scale * tokens[t + c, 0] - m.gate_center))
            steps[t] += 1
            if last or total[t] + h >= 1 - m.eps:
                rho[t] = steps[t] + (1 - total[t])
                outputs[t] += (1 - total[t]) * tokens[t + c]
            else:
                still.append(t)
                outputs[t] += h * tokens[t + c]
            total[t] += h
        running = still
    logits = m.classify((tokens[0] if c else m.cls[0, 0])[None], outputs[None])[0]
    return logits, steps, rho, flops


@pytest.mark.parametrize("readout", ["cls", "act", "query"])
@pytest.mark.parametrize("centre", [1.0, 2.5, 4.0])
def test_trace_follows_the_rule_written_plainly(centre, readout):
    m = model(gate_scale=4.0, gate_center=centre, readout=readout)
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        for execution in ("masked", "sparse"):
            m.execution = execution
            trace = m.trace(x)
            for i in range(3):
                logits, steps, rho, flops = reference(m, x[i])
                torch.testing.assert_close(trace.logits[i], logits, atol=1e-4, rtol=0)
                units = sum(block.units[i] for block in trace.blocks).flatten()
                ponder = sum(block.ponder_cost[i] for block in trace.blocks).flatten()
                assert torch.equal(units, steps), execution
                torch.testing.assert_close(ponder, rho, atol=1e-5, rtol=0)
                assert trace.flops[i].item() == pytest.approx(flops, rel=1e-6)
    assert 1.0 < float(ponder.min()) and float(ponder.max()) <= len(m.layers) + 1


def test_the_settings_reach_both_extremes():
    """Every token halts after the first layer at one extreme, none halts before the last at the other."""
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        early = model(gate_scale=1.0, gate_center=-50.0).trace(x)
        late = model(gate_scale=1.0, gate_center=50.0).trace(x)
    assert float(sum(b.units for b in early.blocks).max()) == 1.0
    assert float(sum(b.units for b in late.blocks).min()) == 4.0
    dense = model().dense_flops(x)
    assert torch.allclose(late.flops, torch.full((2,), dense))
    assert float(early.flops.max()) < 0.4 * dense  # the class token still goes through every layer


def test_query_readout_when_every_token_halts_at_once():
    """Readout "query" leaves no token in the later layers when all halt after the first: those
    layers cost nothing, sparse equals masked, and training stays finite (a row of attention with
    no key would be NaN)."""
    m = model(seed=3, gate_scale=1.0, gate_center=-50.0, readout="query")
    x = torch.randn(3, 1, 24, 24)
    masked, sparse = traces(m, x)
    assert_same(masked, sparse)
    assert float(sum(b.units for b in masked.blocks).max()) == 1.0
    first = m.layers[0].flops(torch.tensor(float(m.grid ** 2)))
    assert torch.allclose(masked.flops, torch.full((3,), float(m.fixed_flops(x) + first)))
    m.train()
    trace = m.trace(x)
    (torch.nn.functional.cross_entropy(trace.logits, torch.arange(3)) + m.adaptive_loss(trace, prior=0.01)).backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(m.cls.grad.abs().sum()) > 0  # the query is trained through the readout


@pytest.mark.parametrize("centre", [0.5, 2.0, 3.5])
def test_sparse_equals_masked_one_image_at_a_time(centre):
    m = model(seed=4, gate_scale=4.0, gate_center=centre)
    for image in torch.randn(3, 1, 1, 24, 24):
        masked, sparse = traces(m, image)
        assert_same(masked, sparse)


@pytest.mark.parametrize("centre, readout", [(0.5, "cls"), (2.0, "cls"), (3.5, "cls"), (0.5, "query"), (2.0, "query")])
def test_sparse_equals_masked(centre, readout):
    m = model(seed=1, gate_scale=4.0, gate_center=centre, readout=readout)
    masked, sparse = traces(m, torch.randn(6, 1, 24, 24))
    assert_same(masked, sparse)
    counts = sum(b.units for b in masked.blocks).flatten(1)
    assert len({round(float(c.mean()), 3) for c in counts}) > 1, "every image halted alike: no padding was exercised"


@pytest.mark.parametrize("readout", ["cls", "act", "query"])
def test_never_halting_equals_the_dense_twin(readout):
    adaptive = model(seed=2, gate_scale=1.0, gate_center=60.0, readout=readout)
    torch.manual_seed(0)
    dense = create_model("vit", num_classes=10, in_channels=1, readout=readout, **SMALL).eval()
    dense.load_state_dict(adaptive.state_dict())
    x = torch.randn(4, 1, 24, 24)
    with torch.no_grad():
        a, b = adaptive.trace(x), dense.trace(x)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    assert b.blocks is None and a.dense_flops == b.dense_flops == float(b.flops[0])


@pytest.mark.parametrize("readout", ["cls", "act", "query"])
def test_dense_flops_count_every_product(readout):
    """Linear and conv products counted by hooks, plus the two attention products per head."""
    m = model(readout=readout)
    counted = []

    def linear(module, inputs, output):
        counted.append(2 * inputs[0].numel() // module.in_features * module.in_features * module.out_features)

    def conv(module, inputs, output):
        counted.append(2 * output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])

    for module in m.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear)
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv)
    x = torch.randn(1, 1, 24, 24)
    with torch.no_grad():
        m.gate_center = 60.0  # nothing halts: every product runs
        m.trace(x)
    image_tokens, d = (24 // 4) ** 2, 32
    tokens = image_tokens + (readout != "query")  # and the class token, unless it goes through no layer
    attention = len(m.layers) * 2 * 2 * tokens * tokens * d + (2 * 2 * image_tokens * d if readout != "cls" else 0)
    assert m.dense_flops(x) == pytest.approx(sum(counted) + attention, rel=1e-9)


def test_losses_reach_the_halting_scores():
    m = model(gate_scale=4.0, gate_center=2.0).train()
    x, y = torch.randn(4, 1, 24, 24), torch.randint(0, 10, (4,))
    trace = m.trace(x)
    ponder = m.adaptive_loss(trace, tau=1.0, prior=0.0)
    assert ponder.detach().item() == pytest.approx(float(sum(b.ponder_cost for b in trace.blocks).detach().mean()), rel=1e-6)
    ponder.backward()
    stem_grad = m.stem.conv2.weight.grad[0].abs().sum()  # channel 0 is what the halting score reads
    assert stem_grad > 0
    m.zero_grad()
    task = torch.nn.functional.cross_entropy(m.trace(x).logits, y)
    task.backward()
    assert m.stem.conv2.weight.grad[0].abs().sum() > 0
    prior = m.adaptive_loss(m.trace(x), tau=0.0, prior=1.0, target_depth=2.0)
    assert prior.item() >= 0.0


def test_what_if_threshold_and_cap():
    """models/whatif.py's changes reach A-ViT: a lower threshold halts tokens sooner, a cap stops every
    token at that layer; the trained rule is unchanged outside the context."""
    from ponderscope.models.whatif import WhatIf, applied, knobs

    m = model(gate_scale=4.0, gate_center=1.0)
    x = torch.randn(3, 1, 24, 24)
    can = knobs(m)
    assert (can["threshold"], can["cap"]) == (pytest.approx(0.99), 4) and set(can) == {"threshold", "cap", "about"}
    assert can["about"]["cap"]["label"] == "layers per token, at most"  # its own words, not a ResNet's units per block
    with torch.no_grad():
        trained = m.trace(x)
        with applied(m, WhatIf(threshold=0.5)):
            lower = m.trace(x)
        with applied(m, WhatIf(cap=2)):
            capped = m.trace(x)
        again = m.trace(x)
    steps = lambda t: sum(b.units for b in t.blocks)
    assert torch.equal(steps(again), steps(trained))
    assert bool((steps(lower) <= steps(trained)).all()) and float(steps(lower).sum()) < float(steps(trained).sum())
    assert float(steps(capped).max()) == 2.0 and float(capped.blocks[1].units.max()) == 0.0
    assert bool((capped.flops <= trained.flops).all())
