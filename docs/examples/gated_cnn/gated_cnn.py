"""A per-image gated CNN for Fashion-MNIST, as a ponderscope plugin: a family the project does not
ship that decides per image, not per position.

Each residual block has a gate: a linear layer on the block's globally pooled input gives the
probability p that the block runs for this image; the block runs iff p > 0.5 and is otherwise
skipped whole (its shortcut passes the features on). Training uses the hard decision in the
forward pass and p's gradient in the backward pass (straight-through), plus a target-rate loss
lam x sum over blocks of (mean p - target_rate)^2 that keeps each block running for about
target_rate of the images (a simpler cousin of ConvNet-AIG's Gumbel gates).

Its Trace fills `gates` (p, [B, L]), `executed` ([B, L] bool), `gate_values` (the gate used) and
the model names its blocks with `gate_names`; `blocks`, `ponder` and `steps` stay None. The page
draws the gate chart, the class x layer view and the FLOPs; there is no ponder map.

    ponderscope train --plugin docs/examples/gated_cnn/gated_cnn.py \\
        --config docs/examples/gated_cnn/fmnist_gated.json --out docs/examples/gated_cnn/fmnist_gated_cnn
    ponderscope serve --plugin docs/examples/gated_cnn/gated_cnn.py --checkpoints docs/examples/gated_cnn
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponderscope import Trace, register_family, register_model
from ponderscope.models.batch_stats import batch_mean

register_family("gated-cnn", "gated CNN (per-image gates)",
                description="decides per image: a gate on each residual block runs it or skips it whole for this image "
                            "(the gate chart shows which)")


def conv_flops(conv: nn.Conv2d, height: int, width: int) -> float:
    """FLOPs (2 x multiply-adds) of a convolution producing a height x width map."""
    kh, kw = conv.kernel_size
    return 2.0 * height * width * conv.out_channels * conv.in_channels * kh * kw / conv.groups


class GatedBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gate = nn.Linear(channels, 1)
        nn.init.constant_(self.gate.bias, 2.0)  # start open: every block runs until the rate loss closes some

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def flops(self, height: int, width: int) -> float:
        return conv_flops(self.conv1, height, width) + conv_flops(self.conv2, height, width)


class GatedCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (16, 32), blocks: int = 3):
        super().__init__()
        first, second = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, first, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU())
        self.stage1 = nn.ModuleList(GatedBlock(first) for _ in range(blocks))
        self.down = nn.Sequential(nn.Conv2d(first, second, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(second), nn.ReLU())
        self.stage2 = nn.ModuleList(GatedBlock(second) for _ in range(blocks))
        self.linear = nn.Linear(second, num_classes)

    @property
    def gate_names(self) -> list[str]:
        """One name per gated block, in Trace.gates order (the optional contract attribute)."""
        return [f"stage{s}.{b}" for s in (1, 2) for b in range(len(self.stage1 if s == 1 else self.stage2))]

    def trace(self, x: torch.Tensor) -> Trace:
        out = self.stem(x)
        fixed = conv_flops(self.stem[0], *out.shape[-2:])
        executed_flops = torch.zeros(x.shape[0], device=x.device)
        dense = 0.0
        gates, executed, used = [], [], []
        for stage, blocks in ((1, self.stage1), (2, self.stage2)):
            if stage == 2:
                out = self.down(out)
                fixed += conv_flops(self.down[0], *out.shape[-2:])
            for block in blocks:
                p = torch.sigmoid(block.gate(out.mean((2, 3))))[:, 0]  # [B] probability of running
                run = p > 0.5
                g = run.to(out.dtype) + p - p.detach() if self.training else run.to(out.dtype)  # straight-through
                out = F.relu(out + g[:, None, None, None] * block.residual(out))  # masked: a skipped block adds nothing
                cost = block.flops(*out.shape[-2:])
                gate_cost = 2.0 * block.gate.in_features  # the gate's linear layer (pooling and biases not counted)
                executed_flops = executed_flops + run.to(executed_flops.dtype) * cost + gate_cost
                dense += cost + gate_cost
                gates.append(p)
                executed.append(run)
                used.append(g)
        logits = self.linear(out.mean((2, 3)))
        fixed += 2.0 * self.linear.in_features * self.linear.out_features
        return Trace(logits=logits, flops=executed_flops + fixed, dense_flops=dense + fixed,
                     gates=torch.stack(gates, 1), executed=torch.stack(executed, 1), gate_values=torch.stack(used, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def adaptive_loss(self, trace: Trace, target_rate: float = 0.6, lam: float = 2.0) -> torch.Tensor:
        """lam x sum over blocks of (the batch's mean gate probability - target_rate)^2 (batch_mean:
        the global batch's under torchrun)."""
        return lam * ((batch_mean(trace.gates) - target_rate) ** 2).sum()


@register_model(family="gated-cnn")
def gated_cnn(**kwargs) -> GatedCNN:
    """A small CNN whose residual blocks each run or skip per image (a worked example)"""
    return GatedCNN(**kwargs)
