"""Statistics over the whole batch when a batch is split across processes (torchrun / DDP).

A loss that is a mean over examples needs nothing: DDP averages the ranks' gradients, which is
the gradient of the global mean. Anything nonlinear in a batch statistic does: AIG's target-rate
loss squares the batch's gate rate, and batch norm divides by the batch's variance. Both read
the statistic here, summed over every rank by a differentiable all-reduce, so a run on N ranks
with per-rank batch B/N computes what one process does with batch B. In one process (or without
torch.distributed initialised) these are the plain batch statistics.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over the ranks; the gradient flows back to every rank's x."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the global batch (every rank's x)."""
    if world_size() == 1:
        return x.mean(0)
    count = torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype)
    total = global_sum(torch.cat([x.sum(0).flatten(), count]))
    return (total[:-1] / total[-1]).view(x.shape[1:])


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the global batch's (SyncBatchNorm's math, on any
    device: torch's SyncBatchNorm runs on GPUs only). Parameters and buffers are BatchNorm's, so
    checkpoints are unchanged; in eval mode, or in one process, it is exactly BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        # sums in float64: E[x^2] - E[x]^2 loses digits in float32 when the mean is large
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float64)
        local = torch.cat([x.double().sum(dims), (x.double() ** 2).sum(dims), count])
        total = global_sum(local)
        n = total[-1]
        mean = total[: x.shape[1]] / n
        var = (total[x.shape[1]: -1] / n - mean ** 2).clamp(min=0)
        mean, var = mean.float(), var.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape).to(x.dtype)) * torch.rsqrt(var.view(shape) + self.eps).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def use_global_batch_norm(model: nn.Module) -> int:
    """Turn every batch norm of `model` into GlobalBatchNorm, in place (same parameters and
    buffers); -> how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            kind = type(module)
            if kind not in _GLOBAL_KINDS:  # still a BatchNorm2d (say) for isinstance checks
                _GLOBAL_KINDS[kind] = type("Global" + kind.__name__, (GlobalBatchNorm, kind), {})
            module.__class__ = _GLOBAL_KINDS[kind]
            count += 1
    return count


_GLOBAL_KINDS: dict[type, type] = {}


