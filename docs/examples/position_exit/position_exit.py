"""A per-position exit CNN for Fashion-MNIST, as a ponderscope plugin: a family the project
does not ship that decides per position, with no ACT halting weights.

After a stem that halves the image, `units` residual units run at one resolution. After unit n,
a 1x1 convolution gives each position an exit probability h_n; a position exits at the first
unit where h_n > 1/2 (or after the last unit) and its features stay as they are from then on
(the units after it add nothing there; its neighbours still read them). Per position:

    N   = the units it ran                                   (Trace: BlockTrace.units)
    E N = sum_n S_n, S_n = prod_{j<n} (1 - h_j)              (Trace: BlockTrace.ponder_cost)

E N is the expected number of units under the exit probabilities (S_n: the probability of still
running at unit n), the cost this model trains on (tau x the mean of E N over positions). The
forward pass uses the hard decision in training too; the gradient reaches h through S
(straight-through). The Trace fills one BlockTrace with ponder_cost and units and leaves
`halting` and `probabilities` None (the contract makes them optional): the page draws the ponder
maps (E N, or N with the "units" measure) and the dataset view's ponder statistics.

    ponderscope train --plugin docs/examples/position_exit/position_exit.py \\
        --config docs/examples/position_exit/fmnist_position_exit.json --out docs/examples/position_exit/fmnist_position_exit
    ponderscope serve --plugin docs/examples/position_exit/position_exit.py --checkpoints docs/examples/position_exit
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponderscope import BlockTrace, Trace, register_family, register_model

register_family("position-exit", "per-position exit CNN",
                description="decides per position: each position stops running units at the first one whose exit "
                            "probability passes 1/2, so the ponder map shows where the network kept working")


def conv_flops(conv: nn.Conv2d, positions: int) -> float:
    """FLOPs (2 x multiply-adds) of a convolution producing `positions` output positions."""
    kh, kw = conv.kernel_size
    return 2.0 * positions * conv.out_channels * conv.in_channels * kh * kw / conv.groups


class Unit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.exit = nn.Conv2d(channels, 1, 1)
        nn.init.constant_(self.exit.bias, -2.0)  # start by running every unit

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def flops_per_position(self) -> float:
        return conv_flops(self.conv1, 1) + conv_flops(self.conv2, 1) + conv_flops(self.exit, 1)


class PositionExitCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, units: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.units = nn.ModuleList(Unit(width) for _ in range(units))
        self.linear = nn.Linear(width, num_classes)

    def trace(self, x: torch.Tensor) -> Trace:
        out = self.stem(x)
        batch, _, height, width = out.shape
        running = torch.ones(batch, height, width, device=x.device, dtype=out.dtype)  # 1 where a position still runs (hard)
        survive = torch.ones_like(running)  # S_n = prod_{j<n} (1 - h_j)
        expected = torch.zeros_like(running)  # sum_n S_n
        units = torch.zeros(batch, height, width, device=x.device, dtype=torch.long)
        for unit in self.units:
            gate = running + survive - survive.detach() if self.training else running  # straight-through
            out = F.relu(out + gate[:, None] * unit.residual(out))  # masked: an exited position keeps its features
            expected = expected + survive
            units = units + running.long()
            h = torch.sigmoid(unit.exit(out))[:, 0]
            survive = survive * (1 - h)
            running = running * (h <= 0.5).to(running.dtype)
        logits = self.linear(out.mean((2, 3)))
        positions = height * width
        fixed = conv_flops(self.stem[0], positions) + 2.0 * self.linear.in_features * self.linear.out_features
        per_position = self.units[0].flops_per_position()
        flops = fixed + units.sum((1, 2)).to(out.dtype) * per_position
        dense = fixed + len(self.units) * positions * per_position
        return Trace(logits=logits, flops=flops, dense_flops=dense,
                     blocks=[BlockTrace(ponder_cost=expected, units=units)])  # halting, probabilities: None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def adaptive_loss(self, trace: Trace, tau: float = 0.01) -> torch.Tensor:
        """tau x the expected number of units E N, averaged over positions and images."""
        return tau * trace.blocks[0].ponder_cost.mean()


@register_model(family="position-exit")
def position_exit_cnn(**kwargs) -> PositionExitCNN:
    """A small CNN whose positions each exit after their own number of units (a worked example)"""
    return PositionExitCNN(**kwargs)
