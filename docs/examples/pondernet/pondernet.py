"""PonderNet (Banino et al. 2021) for the parity task, as a ponderscope plugin.

A GRU cell reads the same input at every step n = 1..N and proposes an answer y_n and a halting
probability lambda_n (lambda_N = 1). The probability of halting at step n is

    p_n = lambda_n * prod_{j<n} (1 - lambda_j)

Training minimises the expected loss sum_n p_n L(y_n) plus beta x KL(p || geometric(lambda_p)),
the geometric prior truncated at N and renormalised (REFERENCE.md section 4). At inference this
model answers at the median halting step, the first n where sum_{j<=n} p_j >= 1/2 (the paper
samples n; a dashboard wants the same answer twice), so N there is that step; the Trace's ponder is
the expected number of steps sum_n n p_n, and its extras carry the whole distribution p(n), which
the Parity view draws.

    ponderscope train --plugin docs/examples/pondernet/pondernet.py \\
        --config docs/examples/pondernet/parity8.json --out docs/examples/pondernet/checkpoint
    ponderscope serve --plugin docs/examples/pondernet/pondernet.py --checkpoints docs/examples/pondernet
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponderscope import Trace, register_family, register_model

register_family("pondernet", "PonderNet (halting distribution)")


class PonderNetRNN(nn.Module):
    def __init__(self, input_size: int = 8, hidden_size: int = 64, output_size: int = 2, max_steps: int = 12,
                 input_kind: str = "features", output: str = "last"):
        super().__init__()
        if input_kind != "features" or output != "last":
            raise ValueError("this example reads one vector (input_kind 'features') and answers once (output 'last')")
        self.max_steps = max_steps
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.answer = nn.Linear(hidden_size, output_size)
        self.halt = nn.Linear(hidden_size, 1)
        # FLOPs of one step (2 x multiply-adds): the GRU's three gates on input and state, both heads
        self.step_flops = 2.0 * (3 * (input_size + hidden_size) * hidden_size + hidden_size * (output_size + 1))

    def steps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (answers [B, N, C] logits at every step, halting distribution p [B, N])."""
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        logits, lambdas = [], []
        for n in range(self.max_steps):
            h = self.cell(x, h)
            logits.append(self.answer(h))
            lam = torch.sigmoid(self.halt(h)[:, 0])
            lambdas.append(lam if n < self.max_steps - 1 else torch.ones_like(lam))  # the last step halts
        lambdas = torch.stack(lambdas, 1)
        not_halted = torch.cumprod(torch.cat([lambdas.new_ones(len(x), 1), 1 - lambdas[:, :-1]], 1), 1)
        return torch.stack(logits, 1), lambdas * not_halted

    def trace(self, x: torch.Tensor) -> Trace:
        logits, p = self.steps(x)
        median = (p.cumsum(1) < 0.5).sum(1).clamp(max=self.max_steps - 1)  # 0-based index of the median step
        steps = median + 1
        expected = (p * torch.arange(1, self.max_steps + 1, device=x.device)).sum(1)
        return Trace(
            logits=logits[torch.arange(len(x), device=x.device), median],
            flops=steps.float() * self.step_flops,  # the cell stops at the step it answers
            dense_flops=self.max_steps * self.step_flops,
            ponder=expected[:, None],
            steps=steps[:, None],
            extras={"halting_distribution": p[:, None, :], "step_logits": logits},
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def task_loss(self, trace: Trace, targets: torch.Tensor) -> torch.Tensor:
        """The expected loss over the halting step: sum_n p_n CE(y_n, target), mean over the batch."""
        logits, p = trace.extras["step_logits"], trace.extras["halting_distribution"][:, 0]
        batch, steps, classes = logits.shape
        per_step = F.cross_entropy(logits.reshape(-1, classes), targets.repeat_interleave(steps), reduction="none")
        return (p * per_step.view(batch, steps)).sum(1).mean()

    def adaptive_loss(self, trace: Trace, beta: float = 0.01, lambda_p: float = 0.2) -> torch.Tensor:
        """beta x KL(p || geometric(lambda_p)), the prior truncated at max_steps and renormalised."""
        p = trace.extras["halting_distribution"][:, 0]
        n = torch.arange(self.max_steps, device=p.device, dtype=p.dtype)
        prior = lambda_p * (1 - lambda_p) ** n
        prior = prior / prior.sum()
        return beta * (p * (torch.log(p.clamp_min(1e-12)) - torch.log(prior))).sum(1).mean()


@register_model(family="pondernet", tasks=("parity",))
def pondernet_rnn(**kwargs) -> PonderNetRNN:
    """PonderNet GRU for parity (Banino et al. 2021)"""
    return PonderNetRNN(**kwargs)
