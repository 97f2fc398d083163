"""Shared helpers for the model tests (kept small: the tests themselves say what they check)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The tensors here are tiny and the machine's cores are shared with training runs: one thread
# avoids OpenMP workers spinning against a busy core (which made the suite several times slower).
torch.set_num_threads(1)

# PONDERSCOPE_TEST_DEVICE=cuda runs the tests that take a device (sparse vs masked execution, the
# API's server) on the GPU. TF32 is off there: these tests compare two executions to 1e-4.
TEST_DEVICE = os.environ.get("PONDERSCOPE_TEST_DEVICE", "cpu")
if TEST_DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, so that eval
    mode is not the identity and a misplaced or skipped BN changes the numbers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model


def hook_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs per example of every Conv2d / Linear call, counted independently of models/flops.py
    from the shapes that actually went through: 2 x output elements x (k^2 x Cin / groups).
    Runs the masked (reference) execution, where every layer is called as its module (sparse
    execution runs folded matrices that no hook sees): use it where every unit runs everywhere."""
    total = [0.0]
    execution = getattr(model, "execution", None)

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        total[0] += 2.0 * output[0].numel() * kh * kw * module.in_channels / module.groups

    def linear_hook(module, inputs, output):
        total[0] += 2.0 * output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        if execution is not None:
            model.execution = "masked"
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
        if execution is not None:
            model.execution = execution
    return total[0]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
