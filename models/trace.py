"""What a model did on one batch: the single object every number on screen comes from.

`model.trace(x)` returns a `Trace`; the server turns it into JSON, the page into plots.
Fields that do not apply to a model stay None; models/contract.py checks the rest (the contract
of docs/own-models.md, section 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class BlockTrace:
    """One stage ("block" in the SACT paper) of a model that decides per position: its ponder
    cost and units on one grid; the halting weights and probabilities are optional (None where a
    model has none). models/contract.py checks the shapes."""

    ponder_cost: torch.Tensor  # [B, H, W] N + R per position (ACT: constant over positions)
    units: torch.Tensor  # [B, H, W] N, units executed per position
    halting: Optional[torch.Tensor] = None  # [B, n_units, H, W] ACT weights p^n (zero after the halting unit)
    probabilities: Optional[torch.Tensor] = None  # [B, n_units, H, W] raw halting probabilities h^n where unit n ran (last: 1), 0 where it did not

    @property
    def n_units(self) -> Optional[int]:
        """The units the block has (halting's or probabilities' second dimension); None if the trace does not say."""
        given = self.halting if self.halting is not None else self.probabilities
        return None if given is None else int(given.shape[1])


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
    exit_confidence: Optional[torch.Tensor] = None  # [B, E] early exits: each exit's confidence (top class probability); NaN where not reached
    exit_taken: Optional[torch.Tensor] = None  # [B] int64 early exits: the exit (0..E-1) each example left at
    token_layers: Optional[torch.Tensor] = None  # [B, T, L] bool sequence models with layers: layer l computed input step t
    token_layer_weights: Optional[torch.Tensor] = None  # [B, T, L] float beside token_layers: the weight layer l's output gets at step t (ACT's p^l, a router's weight; 0 where it did not run)
    extras: dict = field(default_factory=dict)
    execution: Optional[str] = None  # "sparse" / "masked": the path that ran, where the caller recorded it (LoadedModel.trace)

    # The one computation of ponder totals (API, dataset view, evaluation, box ratio, loss).
    def ponder_map(self, size: Optional[tuple[int, int]] = None, measure: str = "ponder") -> Optional[torch.Tensor]:
        """[B, H, W] the SACT paper's ponder map: the sum over blocks of each position's ponder
        cost N + R (measure "ponder") or units executed N ("units"), each block's map
        nearest-resized to `size` (default: the first block's resolution). None without blocks."""
        if not self.blocks:
            return None
        maps = [block.ponder_cost if measure == "ponder" else block.units for block in self.blocks]
        size = tuple(size) if size is not None else tuple(maps[0].shape[-2:])
        return sum(torch.nn.functional.interpolate(m.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1) for m in maps)

    def block_means(self, measure: str = "ponder") -> Optional[torch.Tensor]:
        """[B, blocks] each block's ponder cost N + R (or units N) averaged over its positions."""
        if not self.blocks:
            return None
        return torch.stack([(b.ponder_cost if measure == "ponder" else b.units).float().mean(dim=(1, 2)) for b in self.blocks], 1)

    def mean_ponder(self) -> Optional[torch.Tensor]:
        """[B] an image's ponder: the sum over blocks of the block's mean N + R (keeps autograd)."""
        means = self.block_means()
        return None if means is None else means.sum(1)
