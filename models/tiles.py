"""SACT with tile sparsity (Execution.TILES, "tiles"): a unit's residual branch on the batch of
active tiles, as SBNet does (Ren et al., CVPR 2018: gather the active blocks with their halo, one
dense convolution over the batch of blocks, scatter back).

For a unit l >= 2 of a SACT block with active positions A (models/resnet.py's loop):

    tiles     the map cut into T x T tiles; a tile is active when any of its positions is in A.
              T is chosen per unit (`choose`) from TILE_SIZES by the FLOPs the active tiles would
              cost: n(T) active tiles x (the convs before the last 3x3 one at (T+2)^2 positions +
              the rest at T^2), the counts n(T) of every size fetched in one transfer; large tiles
              waste little on halos, small ones follow a scattered mask more closely
    halo      each stride-1 3x3 conv of the residual branch reads one pixel around what it
              computes, so a tile's output needs its input on a (T + 2 halo)^2 window: halo 1 for
              a bottleneck unit (1x1 - 3x3 - 1x1), 2 for a basic unit (3x3 - 3x3) (`halo_of`)
    gather    the windows of the active tiles, as rows of the NHWC map (`SparsePositions`' layout),
              one index_select; window positions off the map read a clamped neighbour and are
              zeroed where a conv's zero padding would be (after the pre-activation of a basic
              unit, after every inner activation), so the convolutions see what the dense unit's
              padded convolutions see
    compute   the residual branch densely over the batch of windows: eval BN folded into the
              convs (models/sparse.unit_weights), 1x1 convs as one matrix product on the rows, 3x3
              convs as F.conv2d with no padding on the windows (channels-last), each one shrinking
              the window by one pixel per side, down to T x T
    scatter   R at the tiles' T x T positions, multiplied by [position in A] (and by 0 off the
              map), added to x and to the output (x_l = x_{l-1} + a_l R_l; out += rest * a_l R_l:
              `SparsePositions`' regrouped sum), one index_add each: positions outside A are
              unchanged, so every position that matters gets the masked execution's numbers

When even the cheapest tiles would cost more FLOPs than the unit on the whole map (times
`TILE_DENSE_ABOVE`), the unit runs densely on the whole map and its update is added through the
mask instead.

The halting branch: on CPU by `SparsePositions`' route (at the running rows only, with their 3x3
neighbourhood: the faster there); elsewhere over the whole map (one product and one gather, no
index lists of the running positions: fewer device syncs), h then set to 0 where the unit did
not run, as both other executions record it (`HALTING_BY_ROWS_ON`). A unit with every position
active runs as SparsePositions runs it on CPU (the dense module, or the row product for the 256
and 512 wide units, measured faster there), elsewhere as the dense module.

The first unit of a block strides / projects and always runs densely (it is outside the loop);
units 2.. are stride 1 without projection, so the authors' 'SAME' padding styles (which differ
only for strided convs) need nothing here. FLOPs are what the model reports (those of sparse
execution, counted from the masks): tiles change the time, not the count.

Device syncs per unit: two (the counts of active tiles per size, then the chosen size's list of
tiles); the loop's own checks (anything / all still running) are models/resnet.py's.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import sparse as sparse_ops
from .block_execution import SparsePositions
from .flops import conv_flops_per_position

# Tile sizes tried for each unit (`choose`): the cheapest in FLOPs wins, the first listed on a
# tie. 8 suits power-of-two maps (CIFAR 32/16/8, 56 = 7 x 8), 7 the ImageNet ResNet's 28, 14 and
# 7; 4 and 2 follow scattered masks (the halting maps of the bench's random-weight networks light
# every 8 x 8 tile at half the FLOPs).
TILE_SIZES = (8, 7, 4, 2)
# The unit runs densely on the whole map (update added through the mask) when the cheapest tiles
# cost more than this many times its FLOPs on the whole map.
TILE_DENSE_ABOVE = 1.0
# Devices whose halting branch runs at the running rows and whose units with every position active
# run as SparsePositions runs them (its CPU-tuned routes); elsewhere the halting branch runs over
# the whole map and such units as the dense module.
HALTING_BY_ROWS_ON = ("cpu",)


def halo_of(unit: nn.Module) -> int:
    """Pixels of input needed around an output tile: one per stride-1 3x3 conv in the residual
    branch (bottleneck: 1, basic: 2)."""
    convs = unit.convs_on_dilated + unit.convs_on_active
    assert all(conv.stride == (1, 1) and conv.dilation == (1, 1) for conv in convs), "tiles: stride-1 units only"
    return sum((conv.kernel_size[0] - 1) // 2 for conv in convs)


class TileLayout:
    """The tiles of a [B, H, W] map (T x T each, ny x nx per image, image-major) and, for a halo
    h, the index tables of their windows as rows of the NHWC map [B*H*W, C]:

        window_rows  [tiles, (T+2h)^2]  row of each window position (clamped onto the map)
        inside[k]    [tiles, (T+2k)^2]  1 where the central (T+2k)^2 crop of the window lies on
                                        the map, 0 off it (k = 0..h; k = 0: the tile itself)
        out_rows     [tiles, T*T]       row of each tile position (clamped)"""

    def __init__(self, batch: int, height: int, width: int, size: int, halo: int, device, dtype):
        self.shape, self.size, self.halo = (batch, height, width), size, halo
        self.ny, self.nx = -(-height // size), -(-width // size)
        self.tiles = batch * self.ny * self.nx
        self.window = size + 2 * halo
        span = torch.arange(self.window, device=device)
        ys = torch.arange(self.ny, device=device)[:, None] * size - halo + span  # [ny, window]
        xs = torch.arange(self.nx, device=device)[:, None] * size - halo + span  # [nx, window]
        on_y, on_x = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
        images = torch.arange(batch, device=device)[:, None, None, None, None] * (height * width)
        rows = images + ys.clamp(0, height - 1)[None, :, None, :, None] * width + xs.clamp(0, width - 1)[None, None, :, None, :]
        self.window_rows = rows.reshape(self.tiles, -1)  # [B, ny, nx, window, window] -> [tiles, window^2]
        on_map = (on_y[:, None, :, None] & on_x[None, :, None, :]).expand(batch, -1, -1, -1, -1).reshape(self.tiles, self.window, self.window)
        self.inside = []
        for k in range(halo + 1):
            crop = slice(halo - k, halo + size + k)
            self.inside.append(on_map[:, crop, crop].reshape(self.tiles, -1).to(dtype))
        centre = slice(halo, halo + size)
        self.out_rows = self.window_rows.view(self.tiles, self.window, self.window)[:, centre, centre].reshape(self.tiles, -1)

    def tile_map(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, H, W] bool -> [tiles] bool: the tiles holding any True position."""
        batch, height, width = self.shape
        size = self.size
        padded = F.pad(mask, (0, self.nx * size - width, 0, self.ny * size - height))
        return padded.view(batch, self.ny, size, self.nx, size).any(4).any(2).view(-1)

    def active_tiles(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, H, W] bool -> the tiles holding any True position, ascending (one device sync)."""
        return self.tile_map(mask).nonzero().squeeze(1)


@functools.lru_cache(maxsize=64)
def layout(batch: int, height: int, width: int, size: int, halo: int, device: torch.device, dtype: torch.dtype) -> TileLayout:
    """The TileLayout of a map shape (built once per shape)."""
    return TileLayout(batch, height, width, size, halo, device, dtype)


def unit_costs(unit: nn.Module) -> tuple[int, int]:
    """FLOPs per position of the unit's convs computed on the (T+2)^2 ring of a tile (those before
    its last 3x3 conv) and on the tile's T^2 positions (that conv and after)."""
    costs = unit.__dict__.get("_tile_costs")
    if costs is None:
        costs = unit.__dict__["_tile_costs"] = (sum(conv_flops_per_position(c) for c in unit.convs_on_dilated),
                                                sum(conv_flops_per_position(c) for c in unit.convs_on_active))
    return costs


def choose(unit: nn.Module, grid: sparse_ops.Grid, x: torch.Tensor, mask: torch.Tensor,
           sizes=None) -> tuple[TileLayout, torch.Tensor] | None:
    """The cheapest tiling of `mask` for `unit`: (its layout, the active tiles), or None when the
    unit on the whole map costs less (`TILE_DENSE_ABOVE`). sizes: default TILE_SIZES."""
    batch, height, width = grid.shape
    halo = halo_of(unit)
    plans = [layout(batch, height, width, size, halo, x.device, x.dtype) for size in (TILE_SIZES if sizes is None else sizes)]
    maps = [plan.tile_map(mask) for plan in plans]
    counts = torch.stack([m.sum() for m in maps]).tolist()  # one transfer for every size
    ring, inner = unit_costs(unit)
    costs = [n * (ring * (plan.size + 2) ** 2 + inner * plan.size**2) for n, plan in zip(counts, plans)]
    best = min(range(len(plans)), key=costs.__getitem__)
    if costs[best] > TILE_DENSE_ABOVE * grid.positions * (ring + inner):
        return None
    return plans[best], maps[best].nonzero().squeeze(1)


def _activate(values: torch.Tensor, slope: float, inplace: bool) -> torch.Tensor:
    if inplace:
        return sparse_ops.activate_(values, slope)
    return F.relu(values) if slope == 0.0 else F.leaky_relu(values, slope)


def _zero_off_map(values: torch.Tensor, inside: torch.Tensor, inplace: bool) -> torch.Tensor:
    """values [n*positions, C] times inside [n, positions] (0 off the map: the conv's zero padding)."""
    inside = inside.reshape(-1, 1)
    return values.mul_(inside) if inplace else values * inside


def unit_residual_tiles(unit: nn.Module, x: torch.Tensor, grid: sparse_ops.Grid, plan: TileLayout,
                        tiles: torch.Tensor) -> torch.Tensor:
    """R(x) of a stride-1 pre-activation unit at the positions of `tiles` -> [len(tiles) * T*T, C],
    row i*T*T + j the tile tiles[i]'s position j (row-major in the tile; off-map positions hold
    values that must not be used). x: the unit's input as NHWC rows [B*H*W, C]."""
    w = sparse_ops.unit_weights(unit)
    inplace = not torch.is_grad_enabled()
    n, size, window = tiles.numel(), plan.size, plan.window
    rows = x.index_select(0, plan.window_rows.index_select(0, tiles).view(-1))  # [n * window^2, Cin]
    pre = sparse_ops.activate_(torch.addcmul(w["shift1"], rows, w["scale1"]), w["slope"])
    inner = w["inner_slope"]

    def as_maps(values: torch.Tensor, side: int) -> torch.Tensor:  # rows -> [n, C, side, side], channels-last
        return values.view(n, side, side, -1).permute(0, 3, 1, 2)

    if hasattr(unit, "conv3"):  # bottleneck, halo 1: conv1 (1x1) on the window, conv2 (3x3) to the tile, conv3 (1x1)
        mid = sparse_ops.activate_(torch.addmm(w["b1"], pre, w["w1"]), inner)
        mid = _zero_off_map(mid, plan.inside[1].index_select(0, tiles), inplace)  # conv2's zero padding
        out = F.conv2d(as_maps(mid, window), w["k2"], w["b2"])  # [n, width, T, T]
        out = _activate(out, inner, inplace)
        out = sparse_ops.as_rows(out)
        return out @ w["w3"] if w["b3"] is None else torch.addmm(w["b3"], out, w["w3"])
    # basic, halo 2: conv1 (3x3) on the window to T+2, conv2 (3x3) to the tile
    pre = _zero_off_map(pre, plan.inside[2].index_select(0, tiles), inplace)  # conv1's zero padding
    mid = F.conv2d(as_maps(pre, window), w["k1"], w["b1"])  # [n, C', T+2, T+2]
    mid = _activate(mid, inner, inplace)
    inside = plan.inside[1].index_select(0, tiles).view(n, 1, size + 2, size + 2)  # conv2's zero padding
    mid = mid.mul_(inside) if inplace else mid * inside
    return sparse_ops.as_rows(F.conv2d(mid, w["k2"], w["b2"]))


class TiledPositions(SparsePositions):
    """SACT: the map as NHWC rows (as SparsePositions), a unit's residual branch computed on the
    batch of its active tiles with their halo (the module's doc), the halting branch at the
    running rows on CPU, over the whole map elsewhere."""

    def __init__(self, x: torch.Tensor, spatial: bool = True):
        super().__init__(x, spatial)
        self.by_rows = x.device.type in HALTING_BY_ROWS_ON
        self.everywhere = True  # (until the loop says otherwise: the first unit runs everywhere)

    def runs_at(self, active, mask, dilated, everywhere=None):
        self.active, self.mask = active, mask
        self.everywhere = bool(mask.all()) if everywhere is None else everywhere
        self.rows = self.near = None
        if not self.everywhere and self.by_rows:  # for the halting branch
            self.rows, self.near = self.grid.rows(mask), self.grid.rows(dilated)

    def add_residual(self, unit, rest, x_needed):
        """x + a R(x), out += rest a R(x), R on the active tiles (scattered with a = [position in A])."""
        grid, x, out = self.grid, self.x, self.out
        inplace = self.inplace and x is not out  # x may be updated in place
        if self.everywhere and self.by_rows:  # every position: the unit as SparsePositions runs it on CPU (rows is None)
            return super().add_residual(unit, rest, x_needed)
        pooled, self.pooled = self.pooled, None
        if self.everywhere:  # every position, off CPU: the dense module (not the CPU-tuned product of the wide units)
            update = unit.residual(grid.as_nchw(x)).permute(0, 2, 3, 1).reshape(x.shape)
            if x_needed:
                self.x = x.add_(update) if inplace else x + update
            out.addcmul_(update, rest.reshape(-1, 1))
            return
        chosen = choose(unit, grid, x, self.mask)
        if chosen is None:  # the whole map is cheaper
            update = unit.residual(grid.as_nchw(x)).permute(0, 2, 3, 1).reshape(x.shape)
            keep = self.mask.reshape(-1, 1).to(x.dtype)
            if x_needed:
                self.x = x.addcmul_(update, keep) if inplace else torch.addcmul(x, update, keep)
            out.addcmul_(update, rest.reshape(-1, 1) * keep)
            return
        plan, tiles = chosen
        update = unit_residual_tiles(unit, x, grid, plan, tiles)
        index = plan.out_rows.index_select(0, tiles).view(-1)
        # a = 1 at the active positions on the map, 0 elsewhere (off-map rows are clamped copies)
        keep = (self.mask.view(-1).index_select(0, index).to(x.dtype) * plan.inside[0].index_select(0, tiles).view(-1)).unsqueeze(1)
        update = update.mul_(keep) if self.inplace else update * keep
        if x_needed:
            self.x = x.index_add_(0, index, update) if inplace else x.index_add(0, index, update)
            if pooled is not None:  # the pooled mean follows (zeros added where nothing changed)
                add = pooled.index_add_ if self.inplace else pooled.index_add
                self.pooled = add(0, grid.image_of(index), update, alpha=1.0 / (grid.positions // grid.shape[0]))
        weighted = update.mul_ if self.inplace else update.mul  # (update is not read again)
        out.index_add_(0, index, weighted(rest.reshape(-1, 1).index_select(0, index)))

    def halting_probability(self, branch, active, first):
        if first or self.everywhere or self.by_rows:
            return super().halting_probability(branch, active, first)
        h = branch.at_rows(self.grid, self.x)  # every position ([B, H, W]), then 0 where the unit did not run
        return torch.where(active, h, torch.zeros_like(h))
