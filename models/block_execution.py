"""How a ResNet block's units 2..L run under ACT / SACT halting: three strategies, one loop.

`models/resnet.Block.forward` runs the paper's loop over the units (the first always runs):

    x_l = x_{l-1} + a_l * R_l(x_{l-1})   `add_residual`, a_l: where the image / position still
                                         runs (`runs_at`)
    h_l = H_l(x_l)                       `halting_probability` (the loop forces h_L = 1)
    out = sum_l p_l * x_l                `accumulate`, `output`

and a strategy decides how each line is computed (the numbers are the same, tests/test_sparse.py):

    Masked           the reference (and training): R_l everywhere, times the mask; out summed term
                     by term as written
    SparseImages     ACT at inference: R_l on the sub-batch of images still running
    SparsePositions  SACT at inference: the map as NHWC rows, R_l at the running rows (its first
                     3x3 conv on their one-pixel dilation), h_l at those rows only

The sparse strategies accumulate out = sum_l p_l x_l regrouped as x_1 + sum_{l>1} (1 - sum_{k<l}
h_k) R_l (the same sum: x_l = x_1 + R_2 + ... + R_l, and the p sum to 1), which only touches the
positions each unit updates; so `add_residual` takes rest = 1 - sum_{k<l} h_k. Without autograd
they update x and out in place (only the rows a unit changes are written), and out starts as x_1
itself (x's first update writes a new tensor instead of a copy of x_1 being made); a forward hook
on a block's first unit that keeps its output sees it overwritten: clone it. `block_execution`
picks one.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import sparse as sparse_ops
from .sparse import Execution


class BlockExecution:
    """One block's run, holding x_l (and the running output) between the steps of the loop."""

    def __init__(self, x: torch.Tensor, spatial: bool):
        """x: x_1 [B, C, H, W]; spatial: SACT (halting per position), else ACT (per image)."""
        self.x, self.spatial = x, spatial

    def runs_at(self, active: torch.Tensor, mask: torch.Tensor, dilated: torch.Tensor, everywhere: bool | None = None) -> None:
        """Unit l runs where `active` ([B] or [B, H, W]); mask: the same as a [B, H, W] map;
        dilated: the positions its first 3x3 conv must be computed at; everywhere: whether that
        is every image / position (None: not known)."""
        self.active, self.mask = active, mask

    def add_residual(self, unit: nn.Module, rest: torch.Tensor, x_needed: bool) -> None:
        """x_l = x_{l-1} + a_l R_l(x_{l-1}); rest = 1 - sum_{k<l} h_k; x_needed: x_l is read again
        (a halting branch follows)."""
        raise NotImplementedError

    def halting_probability(self, branch: nn.Module, active: torch.Tensor, first: bool) -> torch.Tensor:
        """h_l = H_l(x_l) where the image / position ran (0 elsewhere: the rule reads h only there)."""
        h = branch(self.x)
        return h if first else torch.where(active, h, torch.zeros_like(h))

    def accumulate(self, p: torch.Tensor) -> None:
        """out += p_l x_l (the sparse strategies did it in `add_residual`)."""

    def output(self) -> torch.Tensor:
        """out [B, C, H, W]."""
        return self.out


class Masked(BlockExecution):
    """Every unit at every position, its update multiplied by the mask; out term by term."""

    def __init__(self, x: torch.Tensor, spatial: bool):
        super().__init__(x, spatial)
        self.out = torch.zeros_like(x)

    def add_residual(self, unit, rest, x_needed):
        self.x = self.x + self.mask.unsqueeze(1).to(self.x.dtype) * unit.residual(self.x)

    def accumulate(self, p):
        weight = p if self.spatial else p[:, None, None]
        self.out = self.out + weight.unsqueeze(1) * self.x


class SparseImages(BlockExecution):
    """ACT: a unit runs on the images still running only (index_select, then index_add)."""

    def __init__(self, x: torch.Tensor, spatial: bool = False):
        super().__init__(x, spatial)
        # out starts as x_1, sharing its memory without autograd (as in SparsePositions)
        self.inplace = not torch.is_grad_enabled()
        self.out = x if self.inplace else x.clone()

    def runs_at(self, active, mask, dilated, everywhere=None):
        super().runs_at(active, mask, dilated)
        self.everywhere = bool(active.all()) if everywhere is None else everywhere

    def add_residual(self, unit, rest, x_needed):
        """x + R(x) for the running images; out += rest * R for them, in place (x first: out may
        still share x's memory, and then x_l is written to a new tensor)."""
        x, out, active = self.x, self.out, self.active
        inplace = self.inplace and x is not out  # x may be updated in place
        if self.everywhere:
            update = sparse_ops.unit_residual(unit, x)  # (BNs folded)
            self.x = x if not x_needed else x.add_(update) if inplace else x + update
            out.addcmul_(update, rest[:, None, None, None])
            return
        images = active.nonzero().squeeze(1)
        update = sparse_ops.unit_residual(unit, sparse_ops.select_images(x, images))
        self.x = x if not x_needed else sparse_ops.add_images(x, images, update, inplace=inplace)
        sparse_ops.add_images(out, images, update * rest[images, None, None, None], inplace=True)


class SparsePositions(BlockExecution):
    """SACT: the map as rows [B*H*W, C] (NHWC, one row per position), a unit computed at the rows
    still running (`rows`, its first 3x3 conv at their neighbourhood `near`; None: every row)."""

    def __init__(self, x: torch.Tensor, spatial: bool = True):
        batch, channels, height, width = x.shape
        self.grid = sparse_ops.grid(batch, height, width, x.device)
        super().__init__(x.permute(0, 2, 3, 1).contiguous().view(-1, channels), spatial)  # no copy if channels-last
        # Without autograd x and out are updated in place, and out starts as x_1 itself: the two
        # share one tensor until x is first updated, which then writes a new x (as cheap as
        # updating in place) instead of copying x_1 here. With autograd out is a copy.
        self.inplace = not torch.is_grad_enabled()
        self.out = self.x if self.inplace else self.x.clone()
        self.rows = self.near = None
        # the mean of x over each image's positions (the halting branches' global term), kept up
        # to date from the rows each unit changes; None: to be recomputed
        self.pooled = None

    def runs_at(self, active, mask, dilated, everywhere=None):
        super().runs_at(active, mask, dilated)
        if not (bool(mask.all()) if everywhere is None else everywhere):
            self.rows, self.near = self.grid.rows(mask), self.grid.rows(dilated)

    def add_residual(self, unit, rest, x_needed):
        """x (rows) + R(x) at `rows`; out += rest * R there, in place. x first: out may still
        share x's memory (then x_l is written to a new tensor)."""
        grid, rows, x, out = self.grid, self.rows, self.x, self.out
        inplace = self.inplace and x is not out  # x may be updated in place
        # (rows None: nothing halted yet; the 3x3 convs then run densely, BNs folded, unless the
        # product is faster at that width: `DENSE_3X3_ABOVE`)
        update, computed = sparse_ops.unit_residual_rows(unit, x, grid, rows, self.near)
        pooled, self.pooled = self.pooled, None
        if computed is not None and rows is not None:  # at the rows only
            if x_needed:
                self.x = x.index_add_(0, rows, update) if inplace else x.index_add(0, rows, update)
                if pooled is not None:
                    add = pooled.index_add_ if self.inplace else pooled.index_add
                    self.pooled = add(0, grid.image_of(rows), update, alpha=1.0 / (grid.positions // grid.shape[0]))
            weighted = update.mul_ if self.inplace else update.mul  # (update is not read again)
            out.index_add_(0, rows, weighted(rest.reshape(-1, 1)[rows]))
        elif rows is None:  # every row, in order
            if x_needed:
                self.x = x.add_(update) if inplace else x + update
            out.addcmul_(update, rest.reshape(-1, 1))
        else:  # computed at every position (cheaper there): a masked update
            keep = self.mask.reshape(-1, 1).to(x.dtype)
            if x_needed:
                self.x = x.addcmul_(update, keep) if inplace else torch.addcmul(x, update, keep)
            out.addcmul_(update, rest.reshape(-1, 1) * keep)

    def halting_probability(self, branch, active, first):
        """The branch by the rows route (`SACTHalting.at_rows`), at the running rows only."""
        if self.rows is not None and self.pooled is None:
            self.pooled = self.x.view(self.grid.shape[0], -1, self.x.shape[1]).mean(1)
        h = branch.at_rows(self.grid, self.x, self.pooled, self.rows, self.near)
        if self.rows is None:
            return h
        h_map = h.new_zeros(active.shape)  # 0 where the unit did not run
        h_map.view(-1).index_copy_(0, self.rows, h)
        return h_map

    def output(self):
        return self.grid.as_nchw(self.out)  # a channels-last view


def block_execution(execution: Execution | str, spatial: bool) -> type[BlockExecution]:
    """The strategy for a block: masked, or sparse over positions (SACT; "tiles": over its active
    tiles, models/tiles.py) / images (ACT)."""
    execution = Execution.of(execution)
    if execution is Execution.MASKED:
        return Masked
    if execution is Execution.TILES and spatial:
        from .tiles import TiledPositions  # (imports this module)

        return TiledPositions
    return SparsePositions if spatial else SparseImages
