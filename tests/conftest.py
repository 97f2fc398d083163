"""Shared helpers for the model tests (kept small: the tests themselves say what they check)."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
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


@contextmanager
def uvicorn_in_thread(app, timeout: float = 60.0):
    """The app under uvicorn in this process, on a free loopback port (a socket, where the test
    client would buffer bodies or serialise requests) -> the port; stopped on leaving."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


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


# --- data sources (Fashion-MNIST, the MNIST digits, the Jargon File) ---------------------------------
# Without one, the tests that need it skip here, with the loader's message (it names the install
# command), and are listed at the end of the run. In CI (CI=true, set by .ci/run's caller) a missing
# data source fails them instead: a skipped file must not pass for a tested one.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
MISSING_DATA = "data source missing: "


def missing_data(reason: str):
    """A data source the test needs is not here: skip (locally) or fail (in CI)."""
    if IN_CI:
        pytest.fail(f"{MISSING_DATA}{reason} (CI=true: a missing data source fails; bash scripts/setup.sh installs them)", pytrace=False)
    pytest.skip(MISSING_DATA + reason)


def require_data(load, *args, **kwargs):
    """`load(*args, **kwargs)`, for a call that reads a data source (a loader of ponderscope.core.data,
    evaluate_model, ...): where the source is missing (DataSourceMissing), `missing_data`."""
    from ponderscope.core.data import DataSourceMissing

    try:
        return load(*args, **kwargs)
    except DataSourceMissing as error:
        missing_data(str(error))


@pytest.fixture(scope="session")
def fashion_mnist():
    """Fashion-MNIST's test split (images, labels); `pytest.mark.usefixtures("fashion_mnist")` marks
    a test, or a whole file (pytestmark), as needing it."""
    from ponderscope.core.data import load_fashion_mnist

    return require_data(load_fashion_mnist, "test")


@pytest.fixture(scope="session")
def mnist():
    """The MNIST digits' test split (cluttered MNIST is made from it); as `fashion_mnist`."""
    from ponderscope.core.data import mnist_split

    return require_data(mnist_split, "test")


def pytest_terminal_summary(terminalreporter):
    """Say which tests a missing data source skipped (pytest -q shows only an 's' for each)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple) and MISSING_DATA in str(report.longrepr[2]):
            reason = str(report.longrepr[2]).split(MISSING_DATA, 1)[1]
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(f"{count} test(s) skipped, {MISSING_DATA}{reason} (with CI=true they fail)", yellow=True)
