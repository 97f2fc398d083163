"""Pre-activation ResNets with three behaviours over the same residual units (Figurnov et al. 2017):

    halting="none"  the dense ResNet (He et al. 2016, identity mappings)
    halting="act"   ACT over the units of each block, one decision per image
    halting="sact"  spatially adaptive ACT: one decision per position of each block

Inside a block with units F_1..F_L (block = "stage": the units between two resolution changes):

    x_1 = F_1(x_0)                       the first unit always runs (it may stride / project)
    x_l = x_{l-1} + a_l * R_l(x_{l-1})   a_l = 1 where the position/image has not halted yet
    h_l = H_l(x_l)  for l < L,  h_L = 1  halting probability after each unit
    out = sum_l p_l * x_l                p = ACT weights of h (models/halting.py)

ACT halting branch:  GAP(x_l) -> BN -> linear -> sigmoid                       (one h per image)
SACT halting branch: sigmoid( conv3x3(BN(x_l)) + linear_nobias(BN(GAP(x_l))) )  (h per position)
Halting biases start at -3 so that early units rarely halt at first.

A halted position keeps its value, so the next unit's 3x3 convolutions still read it; to compute
R_l at the active positions only, R_l's first 3x3 convolution needs its input at the active
positions dilated by one pixel (`dilate`), and everything after it only at the active ones.
FLOPs are counted from exactly those position sets, as a sparse implementation would spend them.

`Block.forward` is that loop. A what-if (models/whatif.py) reaches it resolved into a
`HaltingPolicy`: the threshold 1 - eps, the last unit that may run (the cap; it halts everything,
as F_L does) and the removed units (no residual branch). `model.execution`, an `Execution`
(models/sparse.py; "sparse" / "masked" accepted), picks the strategy that computes each line
(models/block_execution.py): SPARSE (the default) computes R_l only at those positions (SACT) or
for the images still running (ACT) and stops a block once everything has halted; MASKED computes
R_l everywhere and multiplies by the mask (the reference). The logits and traces agree
(tests/test_sparse.py); training always runs masked.

`style` picks the wiring: "ponderscope" (the project's own models) or the SACT authors' TF code,
which departs from the paper's text in small ways that change every number (`Style`, below):
"sact_tf_cifar" (their cifar_model.py) and "sact_tf_imagenet" (their imagenet_model.py), so that
their released checkpoints import exactly (importers/sact_tf.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import sparse as sparse_ops
from .block_execution import block_execution
from .flops import conv_flops, linear_flops
from .halting import StepwiseHalting
from .registry import register_model
from .sparse import Execution
from .trace import BlockTrace, Trace
from .whatif import HaltingPolicy, WhatIf
from .whatif import current as current_whatif

HALTING_BIAS_INIT = -3.0


@dataclass(frozen=True)
class Style:
    """Where a ResNet's wiring may differ: ours, or the SACT authors' TF code (read from
    mfigurnov/sact: cifar_model.py, imagenet_model.py, resnet_act.py)."""

    negative_slope: float = 0.0  # activation: ReLU (0) or leaky ReLU (their CIFAR model: 0.1)
    inner_negative_slope: float = 0.0  # the activation after a unit's inner BNs (a conv's own BN)
    bn_eps: float = 1e-5
    stem_bias: bool = False
    unit_bias: bool = False  # the last conv of a unit (and a projection shortcut) has a bias
    downsample: str = "projection"  # basic units: "projection" (1x1 conv on the pre-activation)
    #                                 or "pool_pad" (2x2 average pool of the raw input, channels
    #                                 zero-padded on both sides: "option A")
    first_shortcut_preact: bool = False  # basic: block 1, unit 1 takes its shortcut from relu(bn(x))
    tf_same: bool = False  # strided 3x3 convs of basic units and the max pool pad as TF's 'SAME'
    #                        (the extra row / column at the bottom / right only)
    halting_activation: bool = False  # the activation also follows the halting branches' BNs
    head: str = "pool_last"  # "pool_last": mean(act(bn(x))); "bn_after_pool": act(bn(mean(x)))

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return activation(x, self.negative_slope)

    def inner_act(self, x: torch.Tensor) -> torch.Tensor:
        return activation(x, self.inner_negative_slope)


def activation(x: torch.Tensor, slope: float) -> torch.Tensor:
    """ReLU (slope 0) or leaky ReLU; models/sparse.py's `activate_` is the in-place twin."""
    return F.relu(x) if slope == 0.0 else F.leaky_relu(x, slope)


STYLES = {
    "ponderscope": Style(),
    # In their CIFAR arg scope both slim.conv2d and slim.batch_norm default to leaky ReLU, and a
    # conv with a normalizer applies its BN (which then applies its own leaky ReLU) and then its
    # activation: leaky ReLU twice, slope 0.1 x 0.1 = 0.01, after each unit's inner BN (checked
    # against their graph: tests/fixtures/sact_tf).
    "sact_tf_cifar": Style(negative_slope=0.1, inner_negative_slope=0.01, bn_eps=1e-3, stem_bias=True, unit_bias=True, downsample="pool_pad",
                           first_shortcut_preact=True, tf_same=True, halting_activation=True, head="bn_after_pool"),
    "sact_tf_imagenet": Style(bn_eps=1e-5, stem_bias=True, unit_bias=True, tf_same=True),
}
OURS = STYLES["ponderscope"]


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad [B, C, H, W] as TF's padding='SAME' does: output ceil(n / stride), the padding split
    with the odd pixel at the bottom / right. Follow with padding=0."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def pool_pad_shortcut(x: torch.Tensor, stride: int, channels: int) -> torch.Tensor:
    """"Option A": average-pool stride x stride (TF 'VALID'), zero channels on both sides."""
    if stride > 1:
        x = F.avg_pool2d(x, stride, stride)
    extra = (channels - x.shape[1]) // 2
    return F.pad(x, (0, 0, 0, 0, extra, extra))


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool -> positions within one pixel (3x3 neighbourhood) of a True position. Small
    maps on CPU: a 3x3 max pool of the bytes (one op); else the OR of the zero-padded map shifted
    along rows, then along columns (2x faster at 56x56, 20x at batch 32, than the max pool)."""
    if mask.numel() <= 1024 and mask.device.type == "cpu":
        return F.max_pool2d(mask.view(torch.uint8), 3, stride=1, padding=1).view(torch.bool)
    padded = F.pad(mask, (1, 1, 1, 1))
    rows = padded[:, :, :-2] | padded[:, :, 1:-1] | padded[:, :, 2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


class PreActBasicUnit(nn.Module):
    """x + conv3x3(inner_act(bn(conv3x3(act(bn(x))))))."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, style: Style = OURS, first: bool = False):
        super().__init__()
        self.out_channels = channels
        self.stride = stride
        self.style = style
        self.bn1 = nn.BatchNorm2d(in_channels, eps=style.bn_eps)
        # TF 'SAME' with stride 2 pads unevenly: the conv then runs unpadded on a padded input.
        self.tf_pad = style.tf_same and stride > 1
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 0 if self.tf_pad else 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=style.bn_eps)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=style.unit_bias)
        self.shortcut = None  # a 1x1 projection, where the shape changes and the style projects
        self.pool_pad = False  # or option A
        if stride != 1 or in_channels != channels:
            if style.downsample == "pool_pad":
                self.pool_pad = True
            else:
                self.shortcut = nn.Conv2d(in_channels, channels, 1, stride, bias=style.unit_bias)
        self.preact_shortcut = first and style.first_shortcut_preact
        # Convolutions whose inputs are needed on the dilated set (everything up to and including
        # the input of the last 3x3 conv is needed one pixel around the active positions).
        self.convs_on_dilated = [self.conv1]
        self.convs_on_active = [self.conv2]

    def conv1_input(self, pre: torch.Tensor) -> torch.Tensor:
        """What conv1 reads (with its own padding, conv1.padding): TF 'SAME' pads unevenly first."""
        return tf_same_pad(pre, 3, self.stride) if self.tf_pad else pre

    def _conv1(self, pre: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.conv1_input(pre))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.style.inner_act(self.bn2(self._conv1(self.style.act(self.bn1(x))))))

    def shortcut_path(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """What the unit adds its residual branch to (all that is left of a removed unit)."""
        if self.shortcut is not None:
            return self.shortcut(self.style.act(self.bn1(x)) if pre is None else pre)
        if self.pool_pad:
            return pool_pad_shortcut(x, self.stride, self.out_channels)
        if self.preact_shortcut:
            return self.style.act(self.bn1(x)) if pre is None else pre
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.style.act(self.bn1(x))
        out = self.conv2(self.style.inner_act(self.bn2(self._conv1(pre))))
        return out + self.shortcut_path(x, pre)


class PreActBottleneckUnit(nn.Module):
    """x + conv1x1(inner_act(bn(conv3x3(inner_act(bn(conv1x1(act(bn(x))))))))), 4x expansion."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, style: Style = OURS, first: bool = False):
        super().__init__()
        channels = width * self.expansion
        self.out_channels = channels
        self.stride = stride
        self.style = style
        eps = style.bn_eps
        self.bn1 = nn.BatchNorm2d(in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        # Symmetric padding in both styles: the authors' strided 3x3 is slim's conv2d_same.
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=style.unit_bias)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride, bias=style.unit_bias)
        self.convs_on_dilated = [self.conv1]
        self.convs_on_active = [self.conv2, self.conv3]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual_from_preact(self.style.act(self.bn1(x)))

    def shortcut_path(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """What the unit adds its residual branch to (all that is left of a removed unit)."""
        if self.shortcut is None:
            return x
        return self.shortcut(self.style.act(self.bn1(x)) if pre is None else pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.style.act(self.bn1(x))
        return self.residual_from_preact(pre) + self.shortcut_path(x, pre)

    def residual_from_preact(self, pre: torch.Tensor) -> torch.Tensor:
        act = self.style.inner_act
        out = self.conv1(pre)
        out = self.conv2(act(self.bn2(out)))
        return self.conv3(act(self.bn3(out)))


def unit_flops(unit: nn.Module, active: torch.Tensor | float, dilated: torch.Tensor | float,
               in_positions: float | None = None) -> torch.Tensor | float:
    """FLOPs of one unit given the number of active and dilated output positions.

    Only a block's first unit strides, and it always runs everywhere; convolutions before its
    strided one (a bottleneck's first 1x1) run at the input resolution: `in_positions` (default
    stride^2 x the output's, which is exact for even sizes).
    """
    before_stride = in_positions if in_positions is not None else dilated * unit.stride**2
    strided = unit.stride == 1
    flops = 0.0
    for conv in unit.convs_on_dilated + unit.convs_on_active:
        strided = strided or conv.stride != (1, 1)
        positions = dilated if conv in unit.convs_on_dilated else active
        flops = flops + conv_flops(conv, positions if strided else before_stride)
    if unit.shortcut is not None:
        flops = flops + conv_flops(unit.shortcut, active)
    return flops


class ACTHalting(nn.Module):
    """h = sigmoid(linear(BN(GAP(x)))) -> [B]  (their CIFAR code: an activation after the BN)."""

    def __init__(self, channels: int, style: Style = OURS):
        super().__init__()
        self.style = style
        self.bn = nn.BatchNorm1d(channels, eps=style.bn_eps)
        self.linear = nn.Linear(channels, 1)
        nn.init.constant_(self.linear.bias, HALTING_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.bn(x.mean(dim=(2, 3)))
        if self.style.halting_activation:
            pooled = self.style.act(pooled)
        return torch.sigmoid(self.linear(pooled)).squeeze(1)

    def flops(self, positions) -> float:
        return linear_flops(self.linear)

    def flops_coefficients(self) -> tuple[float, float]:
        """(FLOPs per position it runs at, FLOPs per image with any such position)."""
        return 0.0, float(linear_flops(self.linear))


class SACTHalting(nn.Module):
    """h = sigmoid(conv3x3(BN(x)) + linear_nobias(BN(GAP(x)))) -> [B, H, W]
    (their CIFAR code: an activation after each of the two BNs)."""

    COLUMNS, GLOBAL_COLUMN = 16, 9  # of the product in `at_rows` (see there)

    def __init__(self, channels: int, style: Style = OURS):
        super().__init__()
        self.style = style
        self.local_bn = nn.BatchNorm2d(channels, eps=style.bn_eps)
        self.local_conv = nn.Conv2d(channels, 1, 3, padding=1)
        self.global_bn = nn.BatchNorm1d(channels, eps=style.bn_eps)
        self.global_linear = nn.Linear(channels, 1, bias=False)
        nn.init.constant_(self.local_conv.bias, HALTING_BIAS_INIT)

    def _after_bn(self, x: torch.Tensor) -> torch.Tensor:
        return self.style.act(x) if self.style.halting_activation else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_conv(self._after_bn(self.local_bn(x))).squeeze(1)
        global_term = self.global_linear(self._after_bn(self.global_bn(x.mean(dim=(2, 3)))))
        return torch.sigmoid(local + global_term[:, :, None])

    def at_rows(self, grid: "sparse_ops.Grid", x: torch.Tensor, pooled: torch.Tensor | None = None,
                active: torch.Tensor | None = None, near: torch.Tensor | None = None) -> torch.Tensor:
        """The same h by sparse execution's route (eval BNs folded in), at the rows `active` only.

        x: the map as rows [B*H*W, C]; active: ascending rows to evaluate (None: all, and the
        result is a [B, H, W] map); near: rows holding the 3x3 neighbourhood of `active` (None:
        all); pooled: [B, C] the mean of x over each image's positions (needed when near is given).

        One [rows, C] x [C, 16] product over the rows near `active`. Local term: column 3 ky + kx
        holds each position's contribution to the 3x3 conv output of its neighbour at offset
        (ky, kx); the conv output at a position is the sum of the 9 taps read at its 9 neighbours
        (one gather, `tap_rows`), a zero row after the tap map standing for the conv's zero
        padding. (The dense kernel for C -> 1 runs at a few % of peak, and BN would be a pass
        over the map.) Global term: linear(BN(mean x)) = mean over positions of x . (w * scale) +
        w . shift, i.e. the mean of column 9 when every row was multiplied, else from `pooled`.
        Columns 10-15 are zero: MKL runs a product 16 wide ~3x faster than 9 or 10 wide."""
        batch, positions = grid.shape[0], grid.positions
        if self.style.halting_activation:
            taps, global_term = self._taps_activated(grid, x, pooled, near)
        else:
            weight, bias, global_weight, global_bias = sparse_ops.cached(self, SACTHalting._folded_weights)
            every_row = near is None or near.numel() == positions  # (then x needs no gathering)
            if every_row and not torch.is_grad_enabled():  # the product written straight into the tap map
                taps = x.new_zeros(positions + 1, self.COLUMNS)  # (its last row stays zero: the padding)
                products = torch.addmm(bias, x, weight, out=taps[:positions])
            elif every_row:  # (out= has no autograd)
                products = torch.addmm(bias, x, weight)
                taps = torch.cat([products, products.new_zeros(1, self.COLUMNS)])
            else:
                taps = x.new_zeros(positions + 1, self.COLUMNS).index_copy_(0, near, torch.addmm(bias, x.index_select(0, near), weight))
            if near is None:
                global_term = products[:, self.GLOBAL_COLUMN].view(batch, -1).mean(1)
            else:
                global_term = torch.addmv(global_bias, pooled, global_weight)
        global_term = global_term.add_(self.local_conv.bias)  # [B]
        index = tap_rows(*grid.shape, x.device)  # [B*H*W * 9]
        index = index if active is None else index.view(-1, 9).index_select(0, active).view(-1)
        local = taps.view(-1).index_select(0, index).view(-1, 9).sum(1)
        if batch == 1:  # one image: its global term, broadcast
            local = local.add_(global_term)
        elif active is None:
            local = local.view(batch, -1).add_(global_term.unsqueeze(1))
        else:  # each row's own image's global term
            local = local.add_(global_term.index_select(0, grid.image_of(active)))
        return torch.sigmoid_(local).view(grid.shape) if active is None else torch.sigmoid_(local)

    def _taps_activated(self, grid, x, pooled, near):
        """`at_rows`' tap map and global term when an activation follows the BNs (the authors'
        CIFAR branches): the BN cannot be folded into the conv, so BN + activation run on the
        gathered rows before the tap product, and the global term comes from the pooled mean."""
        kernel, scale, shift = sparse_ops.cached(self, SACTHalting._tap_weights)
        rows = x if near is None else x.index_select(0, near)
        taps = self._after_bn(torch.addcmul(shift, rows, scale)) @ kernel
        taps = torch.cat([taps, taps.new_zeros(1, self.COLUMNS)]) if near is None else \
            taps.new_zeros(grid.positions + 1, self.COLUMNS).index_copy_(0, near, taps)
        mean = x.view(grid.shape[0], -1, x.shape[1]).mean(1) if near is None else pooled
        global_term = self.global_linear(self._after_bn(self.global_bn(mean))).squeeze(1)
        return taps, global_term

    def _tap_weights(self):
        """The local conv's 9 taps as columns 0-8 of a [C, 16] matrix, and local_bn's affine."""
        kernel = self.local_conv.weight[0].reshape(self.local_conv.in_channels, 9)
        scale, shift = sparse_ops.bn_affine(self.local_bn)
        return F.pad(kernel, (0, self.COLUMNS - 9)), scale, shift

    def _folded_weights(self):
        """The [C, 16] weight and [16] bias of `at_rows`' product (columns 0-8: the taps of the
        local conv with local_bn folded in; column 9: the global linear with global_bn folded in),
        and column 9's weight as a contiguous [C] vector and its bias (for the route through `pooled`)."""
        local_scale, local_shift = sparse_ops.bn_affine(self.local_bn)
        global_scale, global_shift = sparse_ops.bn_affine(self.global_bn)
        kernel = self.local_conv.weight[0].reshape(self.local_conv.in_channels, 9)  # [C, (ky, kx)]
        linear = self.global_linear.weight[0]
        weight = torch.cat([kernel * local_scale[:, None], (linear * global_scale)[:, None]], 1)
        bias = torch.cat([local_shift @ kernel, (linear @ global_shift)[None]])
        extra = self.COLUMNS - weight.shape[1]
        return F.pad(weight, (0, extra)), F.pad(bias, (0, extra)), linear * global_scale, bias[self.GLOBAL_COLUMN]

    def flops(self, positions):
        # The global term is per image, and an image with no running position needs none.
        return conv_flops(self.local_conv, positions) + linear_flops(self.global_linear) * (positions > 0)

    def flops_coefficients(self) -> tuple[float, float]:
        """(FLOPs per position it runs at, FLOPs per image with any such position)."""
        return float(conv_flops(self.local_conv, 1)), float(linear_flops(self.global_linear))


@functools.lru_cache(maxsize=64)
def tap_rows(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """[B*H*W * 9] for `SACTHalting.at_rows`: per position, the flat indices into its tap map
    [(B*H*W + 1) * 16] of its 9 neighbours (ky, kx), each at its own tap 3 ky + kx; a neighbour
    off the map points at the map's last row (zero: the conv's zero padding)."""
    image, y, x = (t.reshape(-1, 1) for t in torch.meshgrid(torch.arange(batch), torch.arange(height), torch.arange(width), indexing="ij"))
    taps = SACTHalting.COLUMNS
    index = []
    for ky in range(3):
        for kx in range(3):
            ny, nx = y + ky - 1, x + kx - 1
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            row = torch.where(inside, (image * height + ny) * width + nx, batch * height * width)
            index.append(row * taps + 3 * ky + kx)
    return torch.cat(index, 1).view(-1).to(device)


class UnitLog:
    """What a block's loop records, as [B, H, W] maps (ACT: one value per image, broadcast): per
    unit l >= 2 and image, how many positions it ran at and its first 3x3 conv was computed at (the
    FLOPs), and every unit's weight p and halting probability h (the BlockTrace)."""

    def __init__(self, x: torch.Tensor, spatial: bool):
        """x: x_1 [B, C, H, W]; spatial: SACT (halting per position), else ACT (per image)."""
        self.spatial = spatial
        self.batch, _, self.height, self.width = x.shape
        self.dtype, self.device = x.dtype, x.device
        self.state_shape = (self.batch, self.height, self.width) if spatial else (self.batch,)
        self.masks, self.dilated = [], []  # per unit l >= 2, counted once at the end (`counts`)
        self.weights, self.probabilities = [], []

    def as_map(self, values: torch.Tensor) -> torch.Tensor:
        """[B, H, W] (SACT) or [B] (ACT) -> [B, H, W]."""
        return values if self.spatial else values[:, None, None].expand(self.batch, self.height, self.width)

    def ran_at(self, active: torch.Tensor, everywhere: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A unit runs where `active`: that set as a map, and the set its first 3x3 conv needs
        (dilated by one pixel; ACT, or `everywhere`: known to be all True, the same)."""
        mask = self.as_map(active)
        dilated = dilate(mask) if self.spatial and not everywhere else mask
        self.masks.append(mask)
        self.dilated.append(dilated)
        return mask, dilated

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, units l >= 2 that ran]: the positions each ran at, and its first 3x3 conv at (one
        sum for all units: exact whole numbers, as a sum per unit would give)."""
        active = torch.stack(self.masks, 1).flatten(2).sum(2, dtype=self.dtype)
        return active, torch.stack(self.dilated, 1).flatten(2).sum(2, dtype=self.dtype) if self.spatial else active

    def unit(self, p: torch.Tensor, h: torch.Tensor) -> None:
        self.weights.append(self.as_map(p))
        self.probabilities.append(self.as_map(h))

    def trace(self, state: StepwiseHalting, n_units: int) -> BlockTrace:
        # Units never reached by any element ran nowhere: weight 0, probability 0.
        zeros = [torch.zeros(self.batch, self.height, self.width, device=self.device, dtype=self.dtype)] * (n_units - len(self.weights))
        return BlockTrace(ponder_cost=self.as_map(state.ponder_cost), units=self.as_map(state.steps),
                          halting=torch.stack(self.weights + zeros, 1), probabilities=torch.stack(self.probabilities + zeros, 1))


class Block(nn.Module):
    """One stage of residual units, optionally with ACT / SACT halting over its units."""

    def __init__(self, unit_cls, in_channels: int, width: int, n_units: int, stride: int, halting: str, eps: float,
                 style: Style = OURS, first_block: bool = False, index: int = 0):
        super().__init__()
        self.halting_kind = halting
        self.spatial = halting == "sact"  # SACT halts per position, ACT per image
        self.eps = eps
        self.unit_names = [f"block{index + 1}.unit{u + 1}" for u in range(n_units)]  # models/whatif.py's names
        units = [unit_cls(in_channels, width, stride, style, first=first_block)]
        channels = units[0].out_channels
        units += [unit_cls(channels, width, 1, style) for _ in range(n_units - 1)]
        self.units = nn.ModuleList(units)
        self.out_channels = channels
        branch = {"act": ACTHalting, "sact": SACTHalting}.get(halting)
        # One halting branch per unit but the last, whose h is forced to 1.
        self.halting = nn.ModuleList([branch(channels, style) for _ in range(n_units - 1)]) if branch else None

    def policy(self, whatif: WhatIf | None) -> HaltingPolicy:
        """This block's halting with `whatif` (models/whatif.py) in force."""
        return HaltingPolicy.resolve(whatif, self.eps, self.unit_names)

    def forward(self, x: torch.Tensor, execution: Execution = Execution.MASKED, policy: HaltingPolicy | None = None):
        """x_0 -> (out, BlockTrace or None, executed FLOPs [B]) by the module docstring's loop.

        execution: how units 2.. run (models/block_execution.py: the same numbers; the FLOPs are
        always what sparse execution spends); policy: default, the what-if in force."""
        policy = policy or self.policy(current_whatif())
        # x_1 = F_1(x_0): always runs (sparse execution: BNs folded, as in the units after it)
        folded = self.halting is not None and execution is not Execution.MASKED and not self.training
        x, flops = self.first_unit(x, policy, folded)
        if self.halting is None:
            return self.plain_units(x, flops, policy)
        log, run = UnitLog(x, self.spatial), block_execution(execution, self.spatial)(x, self.spatial)
        state = StepwiseHalting(log.state_shape, device=x.device, dtype=x.dtype, eps=policy.eps)
        for l, unit in enumerate(self.units):
            active = state.running  # a_l: the images / positions that have not halted yet
            if l > 0:
                everywhere = None if self.training else state.all_running()  # a_l = 1: no index lists needed
                run.runs_at(active, *log.ran_at(active, everywhere), everywhere)
                if l not in policy.removed:  # x_l = x_{l-1} + a_l R_l(x_{l-1})
                    run.add_residual(unit, rest=state.rest, x_needed=l < policy.last)  # rest = 1 - sum_{k<l} h_k
            last = l >= policy.last  # the block's last unit (or the cap) halts everything: h = 1
            h = active.to(x.dtype) if last else run.halting_probability(self.halting[l], active, first=l == 0)
            p = state.update(h, force_halt=last, zero_after_halt=True)  # the ACT rule (models/halting.py): p_l (h = 0 where halted)
            run.accumulate(p)  # out = sum_l p_l x_l
            log.unit(p, h)
            # Stop once everything has halted. Not while training: the check costs a device sync
            # per unit, and the remaining units would get zero weight anyway.
            if not self.training and not state.any_running():
                break
        return run.output(), log.trace(state, len(self.units)), flops + self._loop_flops(log, policy)

    def first_unit(self, x: torch.Tensor, policy: HaltingPolicy, folded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x_1 = F_1(x_0) and its FLOPs [B]; a removed first unit keeps only its shortcut (it may
        stride or widen). folded: by `sparse_ops.unit_output` (the same numbers, BNs folded)."""
        first, in_positions = self.units[0], float(x.shape[-2] * x.shape[-1])
        if 0 in policy.removed:
            x = first.shortcut_path(x)
            positions = float(x.shape[-2] * x.shape[-1])
            flops = conv_flops(first.shortcut, positions) if first.shortcut is not None else 0.0
        else:
            x = sparse_ops.unit_output(first, x) if folded else first(x)
            positions = float(x.shape[-2] * x.shape[-1])
            flops = unit_flops(first, positions, positions, in_positions)
        return x, torch.full((x.shape[0],), float(flops), device=x.device)

    def plain_units(self, x: torch.Tensor, flops: torch.Tensor, policy: HaltingPolicy):
        """The dense block's units 2..L: x_l = x_{l-1} + R_l(x_{l-1}), unless removed."""
        positions = float(x.shape[-2] * x.shape[-1])
        for index, unit in enumerate(self.units[1:], start=1):
            if index not in policy.removed:
                x = x + unit.residual(x)
                flops = flops + unit_flops(unit, positions, positions)
        return x, None, flops

    def _loop_flops(self, log: UnitLog, policy: HaltingPolicy) -> torch.Tensor:
        """FLOPs of units 2.. and of the halting branches that ran, per image, from the number of
        positions each ran at (one product per kind, rather than a few small ops per unit);
        removed units (models/whatif.py) spent nothing on their residual branch, and no branch
        runs after unit `policy.last` (the what-if cap: it halts everything, like the last unit)."""
        n, batch = len(log.masks), log.batch
        n_branches = min(n + 1, len(self.halting), policy.last)  # branch l ran where unit l+1 ran
        if not n_branches:
            return torch.zeros(batch, dtype=log.dtype, device=log.device)
        per_position, per_image, on_dilated, on_active = self._flops_vectors(n_branches, n, policy.removed, log.dtype, log.device)
        # Branch l ran after unit l+1 wherever unit l+1 ran: everywhere for l = 0.
        ran = torch.full((batch, 1), float(log.height * log.width), dtype=log.dtype, device=log.device)
        if n:
            active_counts, dilated_counts = log.counts()
            ran = torch.cat([ran, active_counts[:, : n_branches - 1]], 1) if n_branches > 1 else ran
        flops = ran @ per_position + (ran > 0).to(ran.dtype) @ per_image
        if n:
            flops = flops + dilated_counts @ on_dilated
            flops = flops + active_counts @ on_active
        return flops

    def _flops_vectors(self, n_branches: int, n: int, removed: frozenset, dtype, device) -> tuple[torch.Tensor, ...]:
        """`_loop_flops`' coefficients as tensors (made once per shape of the loop): per branch,
        FLOPs per position it ran at and per image with any; per unit 2.., FLOPs per position of
        the dilated set and of the active set (0 for a removed unit)."""
        key = (n_branches, n, removed, dtype, device)
        cache = self.__dict__.setdefault("_flops_vectors_cache", {})
        if key not in cache:
            on_dilated = [0.0 if u in removed else float(unit_flops(unit, 0.0, 1.0)) for u, unit in enumerate(self.units[1 : n + 1], 1)]
            on_active = [0.0 if u in removed else float(unit_flops(unit, 1.0, 0.0)) for u, unit in enumerate(self.units[1 : n + 1], 1)]
            branches = self.halting[:n_branches]
            cache[key] = tuple(torch.tensor(values, dtype=dtype, device=device) for values in (
                [b.flops_coefficients()[0] for b in branches], [b.flops_coefficients()[1] for b in branches], on_dilated, on_active))
        return cache[key]

    def dense_flops(self, positions: float, in_positions: float | None = None) -> float:
        """positions: of the block's output map; in_positions: of its input (for the first unit)."""
        cache = self.__dict__.setdefault("_dense_flops_cache", {})
        if (positions, in_positions) not in cache:
            cache[positions, in_positions] = float(unit_flops(self.units[0], positions, positions, in_positions)
                                                   + sum(unit_flops(u, positions, positions) for u in self.units[1:]))
        return cache[positions, in_positions]


class ResNet(nn.Module):
    """Pre-activation ResNet; `halting` picks dense, ACT or SACT behaviour. Fully convolutional."""

    def __init__(
        self,
        unit: str,
        units_per_block: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "cifar",
        halting: str = "none",
        eps: float = 0.01,
        execution: Execution | str = Execution.SPARSE,
        style: str = "ponderscope",
    ):
        super().__init__()
        if halting not in ("none", "act", "sact"):
            raise ValueError(f"halting must be 'none', 'act' or 'sact', not {halting!r}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {sorted(STYLES)}, not {style!r}")
        unit_cls = {"basic": PreActBasicUnit, "bottleneck": PreActBottleneckUnit}[unit]
        self.halting = halting
        self.style_name = style
        self.style = STYLES[style]
        # Execution.SPARSE: at inference, halted positions / images are not computed at all;
        # MASKED: the reference, every unit everywhere times the mask. Settable at any time (the
        # strings "sparse" / "masked" too); training is masked.
        self.execution = Execution.of(execution)
        self.stem_kind = stem
        if stem == "cifar":
            self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=self.style.stem_bias)
            channels = widths[0]
        elif stem == "imagenet":
            self.stem = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=self.style.stem_bias)
            channels = 64
        else:
            raise ValueError(f"unknown stem {stem!r}")
        blocks = []
        for index, (n_units, width) in enumerate(zip(units_per_block, widths)):
            stride = 1 if index == 0 else 2
            block = Block(unit_cls, channels, width, n_units, stride, halting, eps, self.style, first_block=index == 0, index=index)
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_bn = nn.BatchNorm2d(channels, eps=self.style.bn_eps)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels > 1:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def has_sparse_path(self) -> bool:
        """A dense ResNet runs one code path whatever its execution (models/sparse.py)."""
        return self.halting != "none"

    @property
    def has_tile_path(self) -> bool:
        """SACT runs "tiles" as tiles (models/tiles.py); elsewhere it is "sparse"."""
        return self.halting == "sact"

    def trace(self, x: torch.Tensor) -> Trace:
        execution = sparse_ops.execution_of(self)
        if execution is not Execution.MASKED and self.halting != "none":  # sparse or tiles
            # Sparse execution works on channels-last (NHWC) maps, from the stem on: for SACT a
            # set of positions is then a set of rows, and no layout conversion is ever needed.
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.stem(x)
        dense = float(conv_flops(self.stem, out.shape[-2] * out.shape[-1]))
        if self.stem_kind == "imagenet":
            if self.style.tf_same:
                out = F.max_pool2d(tf_same_pad(out, 3, 2, float("-inf")), 3, 2)
            else:
                out = F.max_pool2d(out, 3, 2, 1)
        flops = torch.full((x.shape[0],), dense, device=x.device)
        block_traces = []
        whatif = current_whatif()  # models/whatif.py: a threshold, cap or removed units, or None
        for block in self.blocks:
            in_positions = out.shape[-2] * out.shape[-1]
            out, block_trace, block_flops = block(out, execution, block.policy(whatif))
            flops = flops + block_flops
            dense += block.dense_flops(out.shape[-2] * out.shape[-1], in_positions)
            if block_trace is not None:
                block_traces.append(block_trace)
        logits = self.classifier(self.head(out))
        flops = flops + linear_flops(self.classifier)
        dense += linear_flops(self.classifier)
        return Trace(logits=logits, flops=flops, dense_flops=dense, blocks=block_traces or None)

    def head(self, out: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C] features for the classifier."""
        if self.style.head == "bn_after_pool":  # the authors' CIFAR head: mean, then BN and activation
            return self.style.act(self.final_bn(out.mean(dim=(2, 3), keepdim=True))).flatten(1)
        return self.style.act(self.final_bn(out)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def adaptive_loss(self, trace: Trace, tau: float = 0.01) -> torch.Tensor:
        """tau x sum over blocks of the ponder cost averaged over batch and positions."""
        if not trace.blocks:
            return trace.logits.new_zeros(())
        return tau * trace.mean_ponder().mean()


# The standard depths: CIFAR-style (basic units, 3 blocks of n) and ImageNet (bottleneck units).
CIFAR_DEPTHS = (20, 32, 56, 110)
IMAGENET_LAYOUTS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
IMAGENET_WIDTHS = (64, 128, 256, 512)


def layout_depth(units_per_block, bottleneck: bool) -> int:
    """Weighted layers of a ResNet: the stem, 2 (basic) or 3 (bottleneck) per unit, the classifier."""
    return (3 if bottleneck else 2) * sum(units_per_block) + 2


def cifar_units(depth: int) -> int:
    """Units per block of a CIFAR-style ResNet of `depth` = 6n + 2 layers (3 blocks of n)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR-style ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return (depth - 2) // 6


def cifar_resnet(depth: int = 20, halting: str = "none", widths=(16, 32, 64), stem: str = "cifar",
                 units_per_block=None, **kwargs) -> ResNet:
    """Basic-unit ResNet with the 3x3 stem, 6n+2 layers (n units per block), or `units_per_block`
    for unequal blocks (2 x units + 2 = depth). stem="imagenet": see `imagenet_resnet`."""
    if stem == "imagenet":  # the family's generic name also builds ImageNet-style networks
        widths = widths if len(widths) == 4 else IMAGENET_WIDTHS
        return imagenet_resnet(depth, halting, units_per_block=units_per_block, widths=widths, **kwargs)
    if units_per_block is None:
        n = cifar_units(depth)
        units_per_block = [n] * len(widths)
    units_per_block = [int(n) for n in units_per_block]
    if len(units_per_block) != len(widths) or min(units_per_block) < 1 or layout_depth(units_per_block, False) != depth:
        raise ValueError(f"units_per_block {units_per_block} does not make a basic ResNet-{depth} with {len(widths)} blocks (2 x units + 2 layers)")
    return ResNet("basic", units_per_block, list(widths), stem="cifar", halting=halting, **kwargs)


def imagenet_resnet(depth: int = 50, halting: str = "none", units_per_block=None, widths=IMAGENET_WIDTHS,
                    **kwargs) -> ResNet:
    """Bottleneck ResNet with the 7x7 stem; `units_per_block` for a layout other than the standard
    depths' (e.g. a tiny test network), which must add up to `depth` = 3 x units + 2."""
    kwargs.setdefault("num_classes", 1000)
    if units_per_block is None:
        if depth not in IMAGENET_LAYOUTS:
            raise ValueError(f"ImageNet-style ResNet depth must be one of {sorted(IMAGENET_LAYOUTS)} or come with units_per_block, got {depth}")
        units_per_block = IMAGENET_LAYOUTS[depth]
    units_per_block = [int(n) for n in units_per_block]
    if len(units_per_block) != 4 or min(units_per_block) < 1 or layout_depth(units_per_block, True) != depth:
        raise ValueError(f"units_per_block {units_per_block} does not make a bottleneck ResNet-{depth} (4 blocks, 3 x units + 2 layers)")
    return ResNet("bottleneck", units_per_block, list(widths), stem="imagenet", halting=halting, **kwargs)


@register_model(family="dense")
def resnet(depth: int = 20, **kwargs) -> ResNet:
    """Dense pre-activation ResNet: CIFAR-style of any depth 6n+2, or stem="imagenet"."""
    return cifar_resnet(depth, "none", **kwargs)


@register_model(family="act")
def act_resnet(depth: int = 20, **kwargs) -> ResNet:
    return cifar_resnet(depth, "act", **kwargs)


@register_model(family="sact")
def sact_resnet(depth: int = 20, **kwargs) -> ResNet:
    return cifar_resnet(depth, "sact", **kwargs)


def _register_fixed(prefix: str, depth: int, halting: str, builder):
    def make(**kwargs):
        return builder(depth, halting, **kwargs)

    make.__name__ = f"{prefix}resnet{depth}"
    make.__doc__ = f"{halting} pre-activation ResNet-{depth}"
    register_model(make, family={"none": "dense", "act": "act", "sact": "sact"}[halting])


for _depth in CIFAR_DEPTHS:
    for _prefix, _halting in (("", "none"), ("act_", "act"), ("sact_", "sact")):
        _register_fixed(_prefix, _depth, _halting, cifar_resnet)
for _depth in IMAGENET_LAYOUTS:
    for _prefix, _halting in (("", "none"), ("act_", "act"), ("sact_", "sact")):
        _register_fixed(_prefix, _depth, _halting, imagenet_resnet)
