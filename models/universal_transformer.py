"""A Universal Transformer with adaptive computation time (Dehghani et al., ICLR 2019), as a causal
byte language model, and its dense twin.

One causal transformer layer (models/causal_transformer.py) is applied again and again. Per byte
t and step n = 1..M (M = max_steps):

    s_t^0  = E[x_t] + P_t                            byte and position embeddings
    s_t^n  = Layer(s^{n-1} + S^n)_t                  S^n the step ("timestep") embedding, shared weights
    h_t^n  = sigmoid(w . LN(s_t^n) + b)              the halting unit; b = halting_bias
    p, N, R from the ACT rule over the steps (models/halting.py), h = 1 at step M
    y_t    = sum_n p_t^n s_t^n                       the byte's output, read by the softmax
    rho_t  = N_t + R_t;  loss = cross-entropy + tau * mean_t rho_t

A halted byte keeps its last state s_t^{N_t}: later bytes still attend to it (a causal LM needs
its context), and it is not computed again. So at step n the running bytes are the layer's
queries and every byte is a key (its keys and values computed from its current state: a halted
byte's from its frozen one, plus the step embedding of step n).

The dense twin (`act=False`) applies the same layer M times to every byte and reads s^M.

Two departures from the paper: the embeddings are learned, not sinusoids, and the position is
added once, to the input (the step embedding before every step); and a halted byte's keys and
values are recomputed at each later step from its frozen state plus that step's embedding (the
running bytes read them; their cost is counted).

Text longer than `context` bytes is read in windows of `context` bytes, each from scratch, as
the held-out evaluation reads it (models/causal_transformer.ByteWindows).

Trace: ponder [B, T] = N + R and steps [B, T] = N (the Text view's per-character colours);
token_layers [B, T, M], the steps each byte ran; token_layer_weights [B, T, M], its ACT weights
p^n (the share of step n's state in its output).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .causal_transformer import BYTES, ByteWindows, CausalLayer, readout_flops, window_sizes
from .halting import DEFAULT_EPS, StepwiseHalting
from .registry import register_family, register_model
from .sparse import Execution, requested_execution
from .trace import Trace

register_family("ut-act", "Universal Transformer + ACT", "decides per byte: each byte goes through the shared layer again until its "
                "halting scores add up to the threshold, so the character x step picture shows how many steps each byte took")


class UniversalTransformerLM(nn.Module):
    def __init__(self, dim: int = 128, heads: int = 4, mlp_ratio: float = 4.0, max_steps: int = 6, context: int = 128, act: bool = True,
                 halting_bias: float = -1.0, eps: float = DEFAULT_EPS, execution: Execution | str = Execution.SPARSE,
                 input_kind: str = "bytes", output_size: int = BYTES, output: str = "sequence"):
        super().__init__()
        if (input_kind, output_size, output) != ("bytes", BYTES, "sequence"):
            raise ValueError("a Universal Transformer here is a byte language model (input_kind 'bytes', output_size 256, output 'sequence')")
        self.act, self.max_steps, self.context, self.eps = act, max_steps, context, eps
        self.execution = Execution.of(execution)
        self.embedding = nn.Embedding(BYTES, dim)
        self.position = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.step_embedding = nn.Parameter(torch.randn(max_steps, dim) * 0.02)
        self.layer = CausalLayer(dim, heads, mlp_ratio)
        if act:
            self.halting_norm, self.halting_unit = nn.LayerNorm(dim), nn.Linear(dim, 1)
            nn.init.constant_(self.halting_unit.bias, halting_bias)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, BYTES)
        self.token_layer_names = [f"step {n}" for n in range(1, max_steps + 1)]

    @property
    def has_sparse_path(self) -> bool:
        return self.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def trace(self, x: torch.Tensor) -> Trace:
        windows = ByteWindows(x.long(), self.context)
        parts = [self._window(part) for part in windows.parts]
        logits, ponder, steps, ran, weights = (windows.join([p[i] for p in parts]) for i in range(5))
        flops = windows.per_text([p[5] for p in parts])  # float64: a long text's count is past float32's whole numbers
        return Trace(logits=logits, flops=flops, dense_flops=self.dense_flops(x.shape[1]), ponder=ponder, steps=steps,
                     token_layers=ran, token_layer_weights=weights if self.act else None)

    def _window(self, x: torch.Tensor):
        """One batch of windows x [W, n] -> logits, ponder, steps, ran [W, n, M], weights, FLOPs [W]."""
        w, n = x.shape
        state = self.embedding(x) + self.position[:n]
        flops = torch.full((w,), float(readout_flops(self.head, n)), dtype=torch.float64, device=x.device)
        if not self.act:
            for step in range(self.max_steps):
                state = state + self.step_embedding[step]
                state = state + self.layer.masked_update(state)
            everyone = torch.ones(w, n, self.max_steps, dtype=torch.bool, device=x.device)
            steps = torch.full((w, n), self.max_steps, dtype=torch.long, device=x.device)
            return (self.head(self.norm(state)), steps.to(state.dtype), steps, everyone, everyone.to(state.dtype),
                    flops + self.max_steps * self.layer.flops(everyone[..., 0]))
        sparse = requested_execution(self) is not Execution.MASKED
        halting = StepwiseHalting((w, n), device=x.device, dtype=state.dtype, eps=self.eps)
        output = torch.zeros_like(state)
        ran, weights = [], []
        for step in range(self.max_steps):
            running = halting.running
            inputs = state + self.step_embedding[step]
            if sparse:  # the running bytes' queries (a window with none is not computed)
                updated = self.layer.sparse_update(inputs, running)
            else:
                updated = inputs + self.layer.masked_update(inputs)
            state = torch.where(running.unsqueeze(-1), updated, state)  # a halted byte keeps its state
            last = step == self.max_steps - 1
            h = torch.ones_like(state[..., 0]) if last else torch.sigmoid(self.halting_unit(self.halting_norm(state))).squeeze(-1)
            p = halting.update(h * running, force_halt=last, zero_after_halt=True)
            output = output + p.unsqueeze(-1) * state
            # A window none of whose bytes runs any more has no step n (alone, its loop would have
            # stopped): its keys are not counted, so a text's FLOPs do not depend on its batch.
            keys = running.any(1, keepdim=True).expand_as(running)
            flops = flops + self.layer.flops(running, keys=keys) + running.sum(1) * (0 if last else 2 * state.shape[-1])
            ran.append(running)
            weights.append(p)
            if not halting.any_running():
                break
        for _ in range(self.max_steps - len(ran)):  # the steps no byte reached: nothing ran
            ran.append(torch.zeros_like(ran[0]))
            weights.append(torch.zeros_like(weights[0]))
        return (self.head(self.norm(output)), halting.ponder_cost, halting.steps, torch.stack(ran, -1), torch.stack(weights, -1), flops)

    def dense_flops(self, length: int) -> float:
        """The dense twin's FLOPs on a text of `length` bytes: every byte through all M steps."""
        total = 0.0
        for size in window_sizes(length, self.context):
            everyone = torch.ones(1, size, dtype=torch.bool)
            total += float(self.max_steps * self.layer.flops(everyone)[0]) + readout_flops(self.head, size)
        return total

    # Per byte, as the ACT-LSTM's (models/act_rnn.py): tau x mean over bytes of N + R beside a
    # cross-entropy averaged over bytes.
    TAU_UNITS = "per byte, as in Graves 2016 (tau x mean_t rho_t beside a task loss averaged over bytes)"

    def adaptive_loss(self, trace: Trace, tau: float = 0.01) -> torch.Tensor:
        if not self.act:
            return trace.logits.new_zeros(())
        return tau * trace.ponder.mean()


@register_model(family="ut-act", tasks=("bytes-lm",))
def ut_act(**kwargs) -> UniversalTransformerLM:
    """Universal Transformer + ACT: one shared causal layer, applied until each byte halts (Dehghani et al. 2019)"""
    kwargs.pop("act", None)
    return UniversalTransformerLM(act=True, **kwargs)


@register_model(family="transformer", tasks=("bytes-lm",))
def ut(**kwargs) -> UniversalTransformerLM:
    """Universal Transformer without ACT: the shared layer applied max_steps times to every byte (ut_act's dense twin)"""
    kwargs.pop("act", None)
    return UniversalTransformerLM(act=False, **kwargs)
