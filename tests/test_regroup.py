"""ConvNet-AIG on regrouped sub-batches without a device sync per block (models/regroup.py): the
route CUDA takes, forced here on CPU, gives the numbers of the synchronising sparse route and of
masked execution, with capacities from the history, an overflow (run again, exactly), and one
transfer from the device per pass."""
from __future__ import annotations

import warnings

import pytest
import torch

from ponderscope.models import regroup
from tests.conftest import TEST_DEVICE
from tests.test_sparse import aig, assert_same, set_gates, traces


def three_ways(model, x):
    """(masked, sparse synchronising, sparse regrouped) traces of x on TEST_DEVICE."""
    with regroup.regrouping(False):
        masked, synced = traces(model, x)  # (leaves the model sparse)
    with regroup.regrouping(True), torch.no_grad():
        regrouped = model.trace(x.to(TEST_DEVICE))
    return masked, synced, regrouped


def mixed_per_image(model, seed=2):
    """Gates that open for some images of a batch and not others, block by block."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.gated_blocks:
            block.gate.fc2.weight.copy_(torch.randn(block.gate.fc2.weight.shape, generator=generator) * 3.0)
            block.gate.fc2.bias.copy_(torch.tensor([0.0, float(torch.randn(1, generator=generator))]))
    return model


@pytest.mark.parametrize("mode", ["open", "closed", "mixed", "per-image"])
@pytest.mark.parametrize("name,shape", [("aig_resnet", (10, 1, 15, 11)), ("aig_resnet50", (9, 3, 45, 39))])
def test_regrouped_equals_synchronising_and_masked(name, shape, mode):
    model = mixed_per_image(aig(name)) if mode == "per-image" else set_gates(aig(name), mode)
    x = torch.randn(*shape)
    first = three_ways(model, x)  # the first pass at this batch size: capacity = the batch
    again = three_ways(model, x)  # then from the counts seen: prefixes shorter than the batch
    for masked, synced, regrouped in (first, again):
        assert_same(masked, regrouped)
        assert_same(synced, regrouped, atol=1e-5)
    history = model._regroup_history[(shape[0], str(torch.device(TEST_DEVICE)))]
    assert history[-1] == [int(n) for n in first[0].executed.sum(0)]


def test_capacities_shrink_to_what_was_seen_and_prefixes_hold_closed_images(monkeypatch):
    """Capacity = most seen open + headroom, rounded up to MULTIPLE, at most the batch; the prefix
    then holds closed images too (g = 0: exactly their shortcut)."""
    assert regroup.capacity([], 0, 32) == 32
    assert regroup.capacity([[10], [13]], 0, 32) == 20  # 13 + 4 headroom -> 17 -> 20
    assert regroup.capacity([[0]], 0, 32) == 4 and regroup.capacity([[31]], 0, 32) == 32
    assert regroup.capacity([[0]], 0, 9) == 4  # 0 + 2 -> 4
    model = mixed_per_image(aig("aig_resnet50"), seed=3)
    x = torch.randn(9, 3, 45, 39)
    masked, _, _ = three_ways(model, x)
    capacities = []
    original = regroup.capacity
    monkeypatch.setattr(regroup, "capacity", lambda *a: capacities.append(original(*a)) or capacities[-1])
    with torch.no_grad(), regroup.regrouping(True):
        regrouped = model.to(TEST_DEVICE).trace(x.to(TEST_DEVICE))
    assert_same(masked, regrouped)
    counts = [int(n) for n in masked.executed.sum(0)]
    assert len(capacities) == len(counts) and all(k >= n for k, n in zip(capacities, counts))
    assert any(n < k < 9 for k, n in zip(capacities, counts)), (capacities, counts)  # closed images fill a prefix


def test_an_overflow_runs_the_pass_again_exactly(monkeypatch):
    """More open images than a block's capacity: the pass runs again by the synchronising route;
    the answer is exact and the history holds that pass's counts."""
    model = mixed_per_image(aig("aig_resnet50"), seed=1)
    x = torch.randn(9, 3, 45, 39)
    masked, synced, _ = three_ways(model, x)
    counts = [int(n) for n in masked.executed.sum(0)]
    assert max(counts) > 4, "test set-up: some block must open for more than 4 images"
    key = (9, str(torch.device(TEST_DEVICE)))
    model._regroup_history[key] = [[0] * len(counts)]  # capacities of 4: too small somewhere
    reruns = []
    original = model._open_images_only
    monkeypatch.setattr(model, "_open_images_only", lambda *a: reruns.append(1) or original(*a))
    with torch.no_grad(), regroup.regrouping(True):
        regrouped = model.trace(x.to(TEST_DEVICE))
    assert_same(masked, regrouped)
    assert reruns  # the synchronising route ran
    assert model._regroup_history[key][-1] == counts


def test_one_transfer_per_pass(monkeypatch):
    """No per-block sync: no nonzero, bool(), item() on the device's tensors while the blocks run;
    the counts come back in one tolist() at the end."""
    model = mixed_per_image(aig("aig_resnet50"), seed=2)
    x = torch.randn(9, 3, 45, 39)
    three_ways(model, x)  # fills the history (and moves the model to TEST_DEVICE)
    x = x.to(TEST_DEVICE)
    calls = []
    for method in ("nonzero", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method, lambda self, *a, _m=method, _o=original, **k: calls.append(_m) or _o(self, *a, **k))
    with torch.no_grad(), regroup.regrouping(True):
        model.trace(x)
    assert calls == ["tolist"]
    calls.clear()
    with torch.no_grad(), regroup.regrouping(False):
        model.trace(x)
    assert len(calls) >= 16  # the synchronising route: a few per block


def test_when_the_route_is_taken():
    x = torch.zeros(32, 3, 8, 8)
    with torch.no_grad():
        assert not regroup.enabled(x, sample=False)  # CPU: the synchronising route
        with regroup.regrouping(True):
            assert regroup.enabled(x, sample=False) and not regroup.enabled(x, sample=True)
    with regroup.regrouping(True):
        assert not regroup.enabled(x, sample=False)  # autograd: never
    if torch.cuda.is_available():
        with torch.no_grad():
            assert regroup.enabled(x.cuda(), sample=False) and not regroup.enabled(x[:1].cuda(), sample=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh runs it)")
def test_cuda_regrouped_pass_syncs_once():
    """On CUDA the route is the default at batch >= MIN_BATCH, and a pass with capacities known
    makes at most one synchronising call (torch.cuda's sync debug mode counts them)."""
    model = mixed_per_image(aig("aig_resnet50"), seed=2).cuda()
    x = torch.randn(16, 3, 64, 64, device="cuda")
    with torch.no_grad():
        model.execution = "masked"
        masked = model.trace(x)
        model.execution = "sparse"
        model.trace(x)  # learns the capacities
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                regrouped = model.trace(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
    assert_same(masked, regrouped)
