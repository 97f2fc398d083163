"""What a model did on one batch: the single object every number on screen comes from.

`model.trace(x)` returns a `Trace`; the server turns it into JSON, the page into plots.
Fields that do not apply to a family stay None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class BlockTrace:
    """One ResNet stage ("block" in the SACT paper) under ACT or SACT halting."""

    ponder_cost: torch.Tensor  # [B, H, W] N + R per position (ACT: constant over positions)
    units: torch.Tensor  # [B, H, W] N, units executed per position
    halting: torch.Tensor  # [B, n_units, H, W] ACT weights p^n (zero after the halting unit)
    probabilities: torch.Tensor  # [B, n_units, H, W] raw halting probabilities h^n where unit n ran (last: 1), 0 where it did not


@dataclass
class Trace:
    logits: torch.Tensor
    flops: torch.Tensor  # [B] executed FLOPs per example (2 x multiply-adds, biases ignored)
    dense_flops: float  # the same network with nothing skipped and no halting/gate branches
    blocks: Optional[list[BlockTrace]] = None  # ACT / SACT ResNets
    gates: Optional[torch.Tensor] = None  # [B, L] AIG: probability of running each gated block
    executed: Optional[torch.Tensor] = None  # [B, L] AIG: bool, block ran
    gate_values: Optional[torch.Tensor] = None  # [B, L] AIG: the (straight-through) gate used
    ponder: Optional[torch.Tensor] = None  # [B, T] recurrent: N + R per input step
    steps: Optional[torch.Tensor] = None  # [B, T] recurrent: N per input step
    extras: dict = field(default_factory=dict)

    @property
    def total_ponder(self) -> Optional[torch.Tensor]:
        """[B, H0, W0] sum over blocks of the ponder cost, nearest-upsampled to the first
        block's resolution (the paper's ponder map, before resizing to the image)."""
        if not self.blocks:
            return None
        size = self.blocks[0].ponder_cost.shape[-2:]
        total = 0
        for block in self.blocks:
            total = total + torch.nn.functional.interpolate(
                block.ponder_cost.unsqueeze(1).float(), size=size, mode="nearest"
            ).squeeze(1)
        return total
