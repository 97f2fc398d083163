"""Adaptive Computation Time for recurrent networks (Graves 2016, arXiv 1603.08983).

At input step t the cell runs n = 1..N(t) times ("inner steps"):

    s^n   = cell([x_t, delta_{n,1}], s^{n-1})    s^0 = s_{t-1}; the flag is 1 on the first step only
    h^n   = sigmoid(W_h s^n + b_h)               halting unit, b_h initialised to 1 (paper)
    p^n, N, R from the ACT rule (models/halting.py), step cap M (max_steps)
    s_t   = sum_n p^n s^n                        (an LSTM averages its cell state too)
    y_t   = W_y s_t + b_y                         (= sum_n p^n y^n, since y is linear in s)
    rho_t = N(t) + R(t);  loss = task loss + tau * sum_t rho_t (here both per step: mean over t)

Rows of the batch that have halted take no further part: `execution="sparse"` (the default at
inference) runs the cell only on the rows still going and stops when none is; `"masked"` runs
every row until all have halted and multiplies by the weights (the reference). Both give the
same numbers. With `act=False` every step runs exactly once (a plain RNN of the same size).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .halting import DEFAULT_EPS, StepwiseHalting
from .registry import SEQUENCE_TASKS, register_model
from .sparse import Execution, cached, requested_execution
from .trace import Trace


class RecurrentCell(nn.Module):
    """tanh RNN, GRU or LSTM written out, with the input projection done once per sequence.

    The state is a tuple of tensors [B, H] (LSTM: (hidden, cell)); `state[0]` is what the
    halting and output layers read.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int):
        super().__init__()
        gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
        self.kind, self.hidden_size = kind, hidden_size
        self.input_proj = nn.Linear(input_size, gates * hidden_size)  # W_x x + b
        self.flag_weight = nn.Parameter(torch.zeros(gates * hidden_size))  # column of the first-step flag
        self.hidden_proj = nn.Linear(hidden_size, gates * hidden_size, bias=kind == "gru")
        bound = hidden_size**-0.5
        nn.init.uniform_(self.flag_weight, -bound, bound)
        if kind == "lstm":  # forget-gate bias 1: the usual start for LSTMs
            with torch.no_grad():
                self.input_proj.bias[hidden_size : 2 * hidden_size].fill_(1.0)

    def initial_state(self, batch: int, device, dtype) -> tuple[torch.Tensor, ...]:
        zeros = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        return (zeros, zeros.clone()) if self.kind == "lstm" else (zeros,)

    def _hidden_weight(self) -> torch.Tensor:
        """W_h as [H, gates * H] for `hidden @ W`: at inference a contiguous copy, cached while
        the weights are unchanged (at batch 1 MKL's product then takes ~9 us instead of ~16
        through the transposed view); with autograd the view (no copy per step)."""
        if torch.is_grad_enabled():
            return self.hidden_proj.weight.t()
        return cached(self.hidden_proj, lambda projection: projection.weight.t().contiguous())

    def step(self, pre: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """pre: W_x x + b, plus the flag's column on a first inner step (`flagged`)."""
        hidden, weight = state[0], self._hidden_weight()
        if self.kind == "rnn":
            return (torch.addmm(pre, hidden, weight).tanh_(),)
        if self.kind == "gru":  # (W_h s + b_h is needed on its own: the reset gate scales a third of it)
            x_r, x_z, x_n = pre.chunk(3, -1)
            h_r, h_z, h_n = torch.addmm(self.hidden_proj.bias, hidden, weight).chunk(3, -1)
            reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            candidate = torch.tanh(x_n + reset * h_n)
            return ((1 - update) * candidate + update * hidden,)
        # LSTM in few ops (at batch 1 an op's dispatch costs more than its arithmetic): the
        # product added to the gates' input in one addmm, one sigmoid for i, f and o
        gates = torch.addmm(pre, hidden, weight)
        size = self.hidden_size
        i, f, _, o = gates.sigmoid().chunk(4, -1)
        cell = torch.addcmul(f * state[1], i, gates[:, 2 * size : 3 * size].tanh())
        return (o * cell.tanh(), cell)

    def flagged(self, x_proj: torch.Tensor) -> torch.Tensor:
        """The input of a first inner step: the flag's column added (once per sequence)."""
        return x_proj + self.flag_weight

    def step_flops(self) -> int:
        # The per-step matrix products: W_h s (and the input projection, done once per input
        # step but charged to the first inner step by the caller).
        return 2 * self.hidden_proj.in_features * self.hidden_proj.out_features


class ACTRecurrentNet(nn.Module):
    """Inputs: `input_kind="bytes"`: [B, T] byte ids (embedded, like a one-hot input layer);
    `"features"`: [B, T, F] or [B, F] (one input step, e.g. a parity vector).
    Outputs: logits [B, T, C] (`output="sequence"`) or [B, C] for the last step (`"last"`)."""

    def __init__(
        self,
        cell: str = "lstm",
        input_kind: str = "features",
        input_size: int = 64,
        hidden_size: int = 128,
        output_size: int = 2,
        output: str = "last",
        act: bool = True,
        max_steps: int = 100,
        halting_bias: float = 1.0,
        eps: float = DEFAULT_EPS,
        execution: Execution | str = Execution.SPARSE,
    ):
        super().__init__()
        self.input_kind, self.output, self.act = input_kind, output, act
        self.max_steps = max_steps if act else 1
        self.eps = eps
        self.execution = Execution.of(execution)
        if input_kind == "bytes":
            self.embedding = nn.Embedding(256, input_size)
        elif input_kind != "features":
            raise ValueError(f"input_kind must be 'bytes' or 'features', not {input_kind!r}")
        self.cell = RecurrentCell(cell, input_size, hidden_size)
        self.halting_unit = nn.Linear(hidden_size, 1)
        nn.init.constant_(self.halting_unit.bias, halting_bias)
        self.readout = nn.Linear(hidden_size, output_size)

    @property
    def has_sparse_path(self) -> bool:
        """Without ACT every step runs once: sparse and masked are the same code (models/sparse.py)."""
        return self.act

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "bytes":
            return self.embedding(x.long())
        return x.unsqueeze(1) if x.dim() == 2 else x

    def _halting(self, hidden: torch.Tensor) -> torch.Tensor:
        """h = sigmoid(W_h s + b_h) -> [B] (one matrix-vector product: W_h has one row)."""
        return torch.addmv(self.halting_unit.bias, hidden, self.halting_unit.weight[0]).sigmoid()

    def _ponder_step(self, first_proj, x_proj, state, batch, device, dtype):
        """All inner steps for one input step (first_proj: the first's input, with the flag;
        x_proj: the later ones'). Returns (averaged state, ponder [B], steps [B])."""
        if batch == 1 and not torch.is_grad_enabled():
            return self._ponder_step_single(first_proj, x_proj, state)
        halting = StepwiseHalting((batch,), device=device, dtype=dtype, eps=self.eps)
        sparse = requested_execution(self) is Execution.SPARSE  # (models/sparse.py: the one in force, else self.execution)
        averaged, current = None, state
        for n in range(1, self.max_steps + 1):
            rows = halting.running.nonzero().squeeze(1) if sparse and n > 1 else None
            if rows is not None and rows.numel() < batch:
                sub = self.cell.step(x_proj[rows], tuple(s[rows] for s in current))
                current = tuple(s.index_copy(0, rows, s_rows) for s, s_rows in zip(current, sub))
                h = torch.zeros(batch, device=device, dtype=dtype).index_copy(0, rows, self._halting(sub[0]))
            else:  # masked, the first inner step, or every row still running
                current = self.cell.step(first_proj if n == 1 else x_proj, current)
                h = self._halting(current[0])
            p = halting.update(h, force_halt=n == self.max_steps)[:, None]
            if averaged is None:
                averaged = tuple(p * s for s in current)
            else:
                averaged = tuple(a + p * s for a, s in zip(averaged, current))
            if not halting.any_running():
                break
        return averaged, halting.ponder_cost, halting.steps

    def _ponder_step_single(self, first_proj, x_proj, state):
        """`_ponder_step` for one sequence at inference (the dashboard's case). The halting rule
        runs on one float32 number per inner step (`StepwiseHalting.scalar`, identical results)
        instead of a dozen one-element tensor ops; the state average is one fused multiply-add
        per step (equal to the batched path's within float32 rounding). Sparse and masked coincide
        here: a single row either runs or the loop has stopped."""
        halting = StepwiseHalting.scalar(eps=self.eps)
        averaged, current = None, state
        for n in range(1, self.max_steps + 1):
            current = self.cell.step(first_proj if n == 1 else x_proj, current)
            p = float(halting.update(np.float32(self._halting(current[0]).item()), force_halt=n == self.max_steps))
            if averaged is None:
                averaged = current if p == 1.0 else tuple(s * p for s in current)
            else:
                averaged = tuple(a.add(s, alpha=p) for a, s in zip(averaged, current))
            if not halting.running:
                break
        return averaged, float(halting.ponder_cost), halting.steps  # numbers: trace() makes one tensor of each

    def trace(self, x: torch.Tensor) -> Trace:
        requested_execution(self)  # checked: "sparse" / "masked" are accepted
        inputs = self._inputs(x)
        batch, length = inputs.shape[:2]
        device, dtype = inputs.device, inputs.dtype
        projected = self.cell.input_proj(inputs)  # W_x x_t + b for every t at once
        flagged = self.cell.flagged(projected)  # and with the first-step flag
        state = self.cell.initial_state(batch, device, dtype)
        outputs, ponders, steps = [], [], []
        for t in range(length):
            if self.act:
                state, ponder, n_steps = self._ponder_step(flagged[:, t], projected[:, t], state, batch, device, dtype)
                ponders.append(ponder)
                steps.append(n_steps)
            else:  # one step per input step, the flag set
                state = self.cell.step(flagged[:, t], state)
            outputs.append(state[0])
        hidden = torch.stack(outputs, 1)
        logits = self.readout(hidden[:, -1] if self.output == "last" else hidden)
        if not self.act:  # ponder 1 everywhere
            ponder_t = torch.ones(batch, length, device=device, dtype=dtype)
            steps_t = torch.ones(batch, length, device=device, dtype=torch.long)
        elif isinstance(steps[0], torch.Tensor):
            ponder_t, steps_t = torch.stack(ponders, 1), torch.stack(steps, 1)
        else:  # _ponder_step_single's numbers
            ponder_t = torch.tensor([ponders], dtype=dtype, device=device)
            steps_t = torch.tensor([steps], dtype=torch.long, device=device)
        input_flops = 2 * self.cell.input_proj.in_features * self.cell.input_proj.out_features
        per_step = self.cell.step_flops() + (2 * self.halting_unit.in_features if self.act else 0)
        readout = 2 * self.readout.in_features * self.readout.out_features * (1 if self.output == "last" else length)
        flops = input_flops * length + per_step * steps_t.sum(1).to(dtype) + readout
        dense = float(input_flops * length + per_step * self.max_steps * length + readout)
        return Trace(logits=logits, flops=flops, dense_flops=dense, ponder=ponder_t, steps=steps_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    # The ponder term in the paper's units: Graves adds tau x sum_t rho_t to a task loss that is
    # also a sum over the steps t, so tau is a penalty per input step. Our task losses are means
    # over the steps (and the batch), so the ponder term is the mean too: the same ratio. Until
    # 2026-11 it was the sum over a sequence's steps: a tau of those cards is T (the sequence
    # length, 100 for the byte LMs, 1 for parity) times the paper's.
    TAU_UNITS = "per input step, as in Graves 2016 (tau x mean_t rho_t beside a task loss averaged over steps)"

    def adaptive_loss(self, trace: Trace, tau: float = 1e-3) -> torch.Tensor:
        """tau x rho_t averaged over input steps and the batch (0 without ACT)."""
        if not self.act:
            return trace.logits.new_zeros(())
        return tau * trace.ponder.mean()


def _make(cell: str, act: bool):
    def make(**kwargs) -> ACTRecurrentNet:
        return ACTRecurrentNet(cell=cell, act=act, **kwargs)

    make.__name__ = f"{'act_' if act else ''}{cell}"
    make.__doc__ = f"{'ACT ' if act else 'plain '}{cell.upper()} (Graves 2016)"
    return register_model(make, family="act-rnn" if act else "rnn", tasks=SEQUENCE_TASKS)


for _cell in ("rnn", "gru", "lstm"):
    _make(_cell, True)
    _make(_cell, False)
