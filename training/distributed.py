"""Several processes, with PyTorch's own engine: `torchrun --nproc_per_node N -m ponderscope ...`.

torchrun starts the processes and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
`Processes.start` joins them into one process group (NCCL on CUDA, gloo on CPU) and gives each
its device (cuda:LOCAL_RANK). Without torchrun it is one process and nothing is initialised.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints and writes cards."""
        return self.rank == 0

    @classmethod
    def start(cls, device: str = "auto", timeout_minutes: float = 240.0) -> "Processes":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is not None and world > 1:
            raise ValueError(f"--device {device} under torchrun would put every rank on one GPU; give --device cuda (rank r uses cuda:LOCAL_RANK)")
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", local_rank if world > 1 else 0)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if resolved.type == "cuda" else "gloo"
            kwargs = {"device_id": resolved} if backend == "nccl" else {}
            dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), **kwargs)
        return cls(rank, world, local_rank, resolved)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self, finished: bool = True) -> None:
        """Leave the process group. A run that finished waits here for every rank first (a rank
        that tears its group down while another still works on can abort in gloo's threads); one
        that failed leaves at once, and torchrun stops the others."""
        if self.world > 1 and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()

    def run(self, work):
        """work() -> its result, then close(): synchronised when it returned, at once when it raised."""
        try:
            result = work()
        except BaseException:
            self.close(finished=False)
            raise
        self.close()
        return result

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-rank numbers -> their mean over the ranks (every rank must call it)."""
        if not values:
            return {}
        stacked = torch.stack([v.detach().float().reshape(()).to(self.device) for v in values.values()])
        if self.world > 1:
            dist.all_reduce(stacked)
            stacked /= self.world
        return dict(zip(values, stacked.tolist()))

    def devices(self) -> list[str]:
        """Every rank's device, in rank order (names of GPUs included)."""
        mine = str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else "")
        if self.world == 1:
            return [mine]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, f"{os.uname().nodename}:{mine}")
        return gathered

    def launch_command(self, command: str) -> str:
        """The command that started this run: torchrun's own command line (read from the parent
        process, torchrun's agent) where there is one, else `command`."""
        if self.world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return command
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except OSError:
            argv = []
        text = " ".join(argv)
        if argv and ("torchrun" in text or "torch.distributed.run" in text):
            if os.path.basename(argv[0]).startswith("python"):  # python [-m torch.distributed.run | .../torchrun] ...
                argv = argv[3:] if argv[1:3] == ["-m", "torch.distributed.run"] else argv[2:]
                argv = ["torchrun"] + argv  # the same program
            return shlex.join(argv)
        nodes = os.environ.get("GROUP_WORLD_SIZE") or str(max(1, self.world // int(os.environ.get("LOCAL_WORLD_SIZE", self.world))))
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(self.world))
        return f"torchrun --nnodes {nodes} --nproc_per_node {per_node} -m {command}" if command else ""


class _TraceForward(nn.Module):
    """DDP synchronises gradients for what goes through its forward(): here, the model's trace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.trace(x)


class DistributedModel:
    """A model under DistributedDataParallel that still reads like the model: `.trace(x)` runs
    through DDP; everything else (adaptive_loss, task_loss, attributes) is the model's own."""

    def __init__(self, model: nn.Module, processes: Processes):
        from torch.nn.parallel import DistributedDataParallel

        ids = [processes.device] if processes.device.type == "cuda" else None
        # Every parameter takes part in every training step (ACT/SACT units and AIG blocks run
        # masked in training: a unit no example of a batch uses still runs, multiplied by 0),
        # so DDP needs no unused-parameter search.
        self.ddp = DistributedDataParallel(_TraceForward(model), device_ids=ids, find_unused_parameters=False)
        self.module = model

    def trace(self, x: torch.Tensor):
        return self.ddp(x)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def autocast(device: torch.device, precision: str | None):
    """bf16 autocast where the config asks for it, else nothing."""
    import contextlib

    if not precision:
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be null or 'bf16', not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def print_main(processes: Processes, *args) -> None:
    if processes.main:
        print(*args, file=sys.stderr, flush=True)
