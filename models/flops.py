"""FLOP counting as in the SACT paper: a convolution costs 2 x positions x Cout x k^2 x Cin / groups
(multiply and add counted separately, biases, BatchNorm and ReLU ignored). Positions are the
*output* positions actually computed, so a skipped position or unit costs nothing."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_flops_per_position(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return 2 * conv.out_channels * kh * kw * conv.in_channels // conv.groups


def linear_flops(layer: nn.Linear) -> int:
    return 2 * layer.in_features * layer.out_features


def conv_flops(conv: nn.Conv2d, positions) -> torch.Tensor | float:
    """FLOPs of `conv` evaluated at `positions` output positions (a number or a [B] tensor)."""
    return conv_flops_per_position(conv) * positions
