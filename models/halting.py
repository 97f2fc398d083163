"""The adaptive computation time (ACT) halting rule, written once for every model family.

Graves 2016, section 2; Figurnov et al. 2017, eq. 1-4. Given halting probabilities h^1..h^n
over the steps (units, inner RNN steps) that *could* run:

    N     = min{ n : sum_{i<=n} h^i >= 1 - eps }   (the last step always halts)
    R     = 1 - sum_{i<N} h^i                       (the remainder)
    p^n   = h^n for n < N,  p^N = R,  0 after N     (weights, sum to 1)
    rho   = N + R                                   (ponder cost)

N is a constant for the gradient, so d rho / d h^n = -1 for n < N (through R) and 0 from N on.
Two forms: `act_weights` for all steps at once (ResNet blocks, where every h is known after the
units ran) and `StepwiseHalting` for a loop that decides after each step whether to go on (the
RNN cell, and skipping halted work). A test checks they agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_EPS = 0.01


@dataclass
class HaltingResult:
    weights: torch.Tensor  # [..., n] p^n, zero after the halting step
    steps: torch.Tensor  # [...] N, int64, 1..n
    remainder: torch.Tensor  # [...] R
    ponder_cost: torch.Tensor  # [...] N + R

    @property
    def executed(self) -> torch.Tensor:
        """[..., n] bool: step n ran (n <= N)."""
        n = self.weights.shape[-1]
        index = torch.arange(1, n + 1, device=self.steps.device)
        return index <= self.steps.unsqueeze(-1)


def act_weights(halting: torch.Tensor, eps: float = DEFAULT_EPS) -> HaltingResult:
    """Apply the ACT rule to halting probabilities `halting` [..., n] (any leading shape).

    The value given for the last step is ignored: that step halts whatever it says.
    """
    n = halting.shape[-1]
    assert n >= 1
    threshold = 1.0 - eps
    # Running sums added one step at a time in the input dtype, exactly as StepwiseHalting adds
    # them (torch.cumsum may accumulate in higher precision and round differently), and the sum
    # *before* step n+1 is the very number that decided whether step n halted: computing it as
    # cumsum - h made "halted at n" and "step n+1 ran" disagree within rounding of 1 - eps
    # (no halting step, or two). The comparisons carry no gradient.
    totals, total = [], torch.zeros_like(halting[..., 0])
    for i in range(n):
        total = total + halting[..., i]
        totals.append(total)
    cum_incl = torch.stack(totals, dim=-1)
    cum_before = torch.cat([torch.zeros_like(cum_incl[..., :1]), cum_incl[..., :-1]], dim=-1)
    ran = cum_before.detach() < threshold  # step n ran iff nothing halted before it
    is_last_step = torch.zeros_like(ran)
    is_last_step[..., -1] = True
    halts_here = ran & ((cum_incl.detach() >= threshold) | is_last_step)
    # ran is monotone (True..True False..False) and halts_here marks its last True.
    steps = ran.sum(dim=-1)
    # R = 1 - sum_{i<N} h^i: gradient -1 to every h before the halting step, none to h^N.
    remainder = (1.0 - cum_before).mul(halts_here).sum(dim=-1)
    weights = torch.where(halts_here, 1.0 - cum_before, halting * ran)
    ponder_cost = steps.to(halting.dtype) + remainder
    return HaltingResult(weights=weights, steps=steps, remainder=remainder, ponder_cost=ponder_cost)


def _where(condition, a, b):
    """torch.where on tensors; on one numpy scalar, the plain conditional."""
    return torch.where(condition, a, b) if isinstance(condition, torch.Tensor) else (a if condition else b)


class StepwiseHalting:
    """The same rule, fed one step at a time (for loops that stop early).

        state = StepwiseHalting(shape, device)
        while state.any_running():
            h = ...  # [shape] halting probability of this step
            p = state.update(h, force_halt=(step == max_steps))
            # p is this step's weight: h, or R on the halting step, 0 once halted

    `running` tells which elements still run *before* the next update.

    `StepwiseHalting.scalar()` runs the very same `update` on one numpy float32 number instead
    of tensors (float32 arithmetic and comparisons as in the tensor form, no gradient): an
    ACT-RNN at batch 1 halts once per inner step, and there a dozen one-element tensor ops cost
    more than the LSTM step itself.
    """

    def __init__(self, shape, device=None, dtype=torch.float32, eps: float = DEFAULT_EPS):
        self.threshold = 1.0 - eps
        self.cumulative = torch.zeros(shape, device=device, dtype=dtype)
        self.running = torch.ones(shape, device=device, dtype=torch.bool)
        self.steps = torch.zeros(shape, device=device, dtype=torch.long)
        self.remainder = torch.zeros(shape, device=device, dtype=dtype)
        self._rest = self._count = None  # 1 - cumulative and the number running, once asked for

    @classmethod
    def scalar(cls, eps: float = DEFAULT_EPS) -> "StepwiseHalting":
        state = cls.__new__(cls)
        state.threshold = np.float32(1.0 - eps)  # the tensor form compares in float32 too
        state.cumulative, state.remainder = np.float32(0.0), np.float32(0.0)
        state.running, state.steps, state._rest, state._count = np.True_, 0, None, None
        return state

    def count_running(self) -> int:
        """How many elements still run (one device sync, once per step)."""
        if self._count is None:
            self._count = int(self.running.sum())
        return self._count

    def any_running(self) -> bool:
        return self.count_running() > 0

    def all_running(self) -> bool:
        running = self.running
        return self.count_running() == (running.numel() if isinstance(running, torch.Tensor) else 1)

    @property
    def rest(self):
        """1 - sum of h so far: the weight of the next step if it halts (its remainder R), and
        what the ResNet loop scales a unit's update by. Computed once per step."""
        if self._rest is None:
            self._rest = 1.0 - self.cumulative
        return self._rest

    def update(self, halting, force_halt: bool = False, zero_after_halt: bool = False):
        """Feed this step's h; returns its weight p. zero_after_halt: the caller passes h = 0
        wherever the element had already halted (the ResNet loop does), so that masking h and
        the running sum there would change nothing, and is skipped (fewer ops per step)."""
        running = self.running
        tensors = isinstance(running, torch.Tensor)  # else the scalar form: numpy float32 / bool
        remainder_now = self.rest
        if not zero_after_halt:  # a halted element's h counts for nothing
            halting = _where(running, halting, 0.0 if tensors else np.float32(0.0))
        new_cumulative = self.cumulative + halting  # (comparisons carry no gradient)
        halts_now = running if force_halt else running & (new_cumulative >= self.threshold)
        weight = _where(halts_now, remainder_now, halting)
        self.remainder = _where(halts_now, remainder_now, self.remainder)
        self.steps = self.steps + (running if tensors else int(running))
        self.cumulative, self._rest, self._count = new_cumulative, None, None
        self.running = running ^ halts_now  # halts_now is a subset of running: running & ~halts_now
        return weight

    @property
    def ponder_cost(self):
        if isinstance(self.steps, torch.Tensor):
            return self.steps.to(self.remainder.dtype) + self.remainder
        return np.float32(self.steps) + self.remainder
