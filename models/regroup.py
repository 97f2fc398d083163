"""ConvNet-AIG's per-image gating on regrouped sub-batches without a host synchronisation per block
(sparse execution on CUDA; models/aig.py).

The synchronising route (`AIGResNet._open_images_only`) asks the device, for every block, whether
all / any gate is open and which images (`bool(...)`, `nonzero()`): three waits per block for the
GPU to catch up, during which nothing is queued (16 blocks in AIG-50). Here the decisions never
leave the device while the blocks run:

    order    = argsort(open, descending, stable)[:K]   the open images first, a prefix of static size K
    x_K      = x[order]                                the regrouped sub-batch (one gather)
    y_K      = relu(shortcut_K + g_K * F(x_K))         g_K = 1 for the open images of the prefix, 0 for
                                                       the closed ones that fill it up (exactly the
                                                       shortcut: relu(x) = x for an identity block)
    out      = base with y_K put back at `order`       base: x (identity) or relu(shortcut)
    overflow = count(open) > K                         kept on the device

K, the capacity, is a host-side number per block and batch size: the batch at first, then the most
images that were open in the last `HISTORY` calls at that batch size plus a margin (`HEADROOM` of
the batch, at least one), rounded up to a multiple of `MULTIPLE` (fewer distinct shapes for the
convolution autotuner), at most the batch. K = 0 skips the block's residual branch altogether;
K = the batch computes it for every image, times g (masked execution's work, without the gather).

At the end of the forward the counts of open images come back in one transfer (the one sync of the
pass: the trace's own tensors are read by the caller anyway); they update the capacities, and if
any block had more open images than its capacity, the pass is run again by the synchronising route
(exact, and the capacities then fit). So the numbers are those of the synchronising route in every
case (tests/test_regroup.py forces this route on CPU).

In force (`enabled`): on CUDA, without autograd (with it, closed gates in the prefix would get a
gradient the other routes do not give), with deterministic gates (a rerun of a sampled pass would
draw other gates), at batch >= MIN_BATCH (at batch 1 a wrong guess costs a second pass; the
synchronising route's waits are what batch 1 costs anyway). `regrouping(True)` forces it (tests,
CPU benches), `regrouping(False)` turns it off, for this thread (a context variable).
"""
from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import sparse as sparse_ops

MIN_BATCH = 8
HISTORY = 4  # calls remembered per batch size
HEADROOM = 0.125  # of the batch, added to the most images seen open
MULTIPLE = 4

_MODE: ContextVar[Optional[bool]] = ContextVar("ponderscope_regroup", default=None)


@contextlib.contextmanager
def regrouping(on: Optional[bool]) -> Iterator[None]:
    """Force the regrouped route on (True: on any device, at any batch) or off (False) for this
    thread's traces; None: the default (`enabled`)."""
    token = _MODE.set(on)
    try:
        yield
    finally:
        _MODE.reset(token)


def enabled(x: torch.Tensor, sample: bool) -> bool:
    """Whether a ConvNet-AIG pass on x takes the regrouped route (the module's doc)."""
    if torch.is_grad_enabled() or sample:
        return False
    mode = _MODE.get()
    if mode is not None:
        return mode
    return x.is_cuda and x.shape[0] >= MIN_BATCH


def capacity(history: list[list[int]], block: int, batch: int) -> int:
    """K for `block` at this batch size from the counts of open images of the last calls."""
    seen = [counts[block] for counts in history if block < len(counts)]
    if not seen:
        return batch
    wanted = max(seen) + max(1, math.ceil(HEADROOM * batch))
    return min(batch, -(-wanted // MULTIPLE) * MULTIPLE)


class RegroupedPass:
    """One forward pass of a ConvNet-AIG by the regrouped route: `block` for each gated block in
    turn, then `finish` (True: every capacity held; False: run the pass again another way)."""

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.module, self.batch = module, x.shape[0]
        self.key = (self.batch, str(x.device))
        self.history = list(module.__dict__.setdefault("_regroup_history", {}).get(self.key, ()))  # a snapshot
        self.counts: list[torch.Tensor] = []
        self.capacities: list[int] = []

    def block(self, index: int, block: nn.Module, x: torch.Tensor, shortcut: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """relu(shortcut + g * F(x)) with F computed on the K images of the regrouped prefix."""
        k = capacity(self.history, index, self.batch)
        open_ = g > 0.5
        self.counts.append(open_.sum())
        self.capacities.append(k)
        identity = shortcut is x
        if k >= self.batch:  # every image: F times g (the closed ones get exactly their shortcut)
            update = block.residual(x, True).mul_(g[:, None, None, None])
            return update.add_(shortcut).relu_()
        if k == 0:
            return x if identity else F.relu(shortcut, inplace=True)
        order = torch.argsort(open_.to(torch.uint8), descending=True, stable=True)[:k]
        x_k = sparse_ops.select_images(x, order)
        shortcut_k = x_k if identity else sparse_ops.select_images(shortcut, order)  # (before the relu below)
        update = block.residual(x_k, True).mul_(g.index_select(0, order)[:, None, None, None])
        base = x if identity else F.relu(shortcut, inplace=True)  # (x: nothing reads it after this block)
        return sparse_ops.put_images(base, order, update.add_(shortcut_k).relu_(), inplace=True)

    def finish(self) -> bool:
        """The counts of open images, in one transfer. True if none exceeded its block's capacity
        (the pass is exact; the counts are remembered for the next capacities); False: the pass
        must run again, and the caller remembers that pass's counts (`remember`: past the first
        overflow these ones were counted on wrong inputs)."""
        if not self.counts:
            return True
        counts = torch.stack(self.counts).tolist()
        if any(count > k for count, k in zip(counts, self.capacities)):
            return False
        self.remember(counts)
        return True

    def remember(self, counts: list[int]) -> None:
        """Add one pass's counts of open images per block to this batch size's history."""
        histories = self.module.__dict__.setdefault("_regroup_history", {})
        histories[self.key] = (list(histories.get(self.key, ())) + [list(counts)])[-HISTORY:]


def start(module: nn.Module, x: torch.Tensor, sample: bool) -> Optional[RegroupedPass]:
    """A RegroupedPass if the route is in force for this pass (`enabled`), else None."""
    return RegroupedPass(module, x) if enabled(x, sample) else None
