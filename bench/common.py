"""Shared benchmark set-up: one CPU thread, the allocator setting, interleaved timing, an adaptive
model timed beside its dense reference, the tables."""
from __future__ import annotations

import copy
import ctypes
import statistics
import time

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def setup_cpu(threads: int = 1, keep_heap: bool = True) -> str:
    """One thread (the machine is shared; timings are steadier), and optionally glibc malloc told
    to serve every allocation from its heap and keep freed memory there instead of returning it to
    the OS: otherwise every large activation is a fresh mmap whose pages fault in again on first
    touch (~0.6 ms per MB in this VM), a cost that falls on every allocating op, dense or sparse,
    and varies from run to run. Returns a description."""
    torch.set_num_threads(threads)
    note = f"{threads} thread(s)"
    if keep_heap:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
            note += ", glibc malloc keeps freed memory (M_MMAP_MAX 0, M_TRIM_THRESHOLD 1 GiB)" if ok else ""
        except OSError:
            pass
    return note


def interleaved(runs: dict, repeats: int, warmup: int = 1) -> dict:
    """Seconds of each callable in each round, the callables run in turn (a, b, c, a, b, c, ...),
    so that load from other processes falls on all of them alike. Returns {name: [seconds]}."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def rotated(runs: dict, repeats: int, warmup: int = 1) -> dict:
    """`interleaved`, with the order of the callables rotated from round to round (a, b, c; b, c,
    a; c, a, b; ...), so that no one of them always follows the same other (for callables that are
    the same code: what auto chose and the path it chose). Returns {name: [seconds]}."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    names = list(runs)
    times = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def round_ratio(times: dict, name: str, reference: str) -> float:
    """Median over rounds of time[name] / time[reference] measured in the same round: the speed
    of this machine drifts by +-15% over seconds, and a ratio within a round cancels the drift."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def runner(model, batches, execution: str | None = None):
    """A no-argument callable that traces every batch in turn (execution: "sparse" / "masked")."""
    def go():
        if execution:
            model.execution = execution
        with torch.no_grad():
            for x in batches:
                model.trace(x)
        if batches[0].is_cuda:  # the time of the work, not of queueing it
            torch.cuda.synchronize()
    return go


def channels_last_copy(model):
    clone = copy.deepcopy(model)
    return clone.to(memory_format=torch.channels_last)


DENSE_LAYOUTS = ("NCHW", "channels-last")


def folded_dense_runner(dense, batches):
    """A no-argument callable: the dense ResNet `dense` (channels-last, eval) on every batch, each
    unit by `sparse_ops.unit_output` (BNs folded into the convs, 3x3 kernels prepacked: what
    sparse execution runs for an adaptive model's first units): a dense reference given the same
    speed-ups, so that a ratio to it shows what skipping saves apart from them."""
    import torch.nn.functional as F

    from ponderscope.models import sparse as sparse_ops

    assert dense.stem_kind == "imagenet" and not dense.style.tf_same  # (the ImageNet-shape bench's resnet50)

    def go():
        with torch.no_grad():
            for x in batches:
                out = F.max_pool2d(dense.stem(x), 3, 2, 1)
                for block in dense.blocks:
                    for unit in block.units:
                        out = sparse_ops.unit_output(unit, out)
                dense.classifier(dense.head(out))
    return go


def time_models(adaptive, dense, inputs, repeats: int, dense_layouts=DENSE_LAYOUTS, adaptive_channels_last: bool = True,
                schedule=interleaved, folded_dense: bool = False) -> dict:
    """Sparse and masked execution of `adaptive` (inputs channels-last unless adaptive_channels_last
    is False; the caller stores its weights the same way) and the `dense` network on the same inputs
    (a list of batches, run in turn), in rounds (`schedule`: `interleaved`, or `rotated`). The dense
    network runs in each of `dense_layouts` (NCHW, channels-last: weights and inputs); the faster
    layout (by median) is the reference. Returns median seconds ("sparse", "masked", "dense <layout>",
    "dense": the reference's), and per-round ratios to the reference ("sparse ratio", "masked ratio").
    folded_dense: also the dense network with its BNs folded (`folded_dense_runner`, channels-last):
    "dense folded" seconds and "sparse / folded" (per-round ratio)."""
    inputs_cl = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    adaptive_inputs = inputs_cl if adaptive_channels_last else inputs
    runs = {"sparse": runner(adaptive, adaptive_inputs, "sparse"), "masked": runner(adaptive, adaptive_inputs, "masked")}
    if "NCHW" in dense_layouts:
        runs["dense NCHW"] = runner(dense, inputs)
    if "channels-last" in dense_layouts:
        runs["dense channels-last"] = runner(channels_last_copy(dense), inputs_cl)
    if folded_dense:
        runs["dense folded"] = folded_dense_runner(channels_last_copy(dense).eval(), inputs_cl)
    times = schedule(runs, repeats)
    adaptive.execution = "sparse"
    result = {name: median(t) for name, t in times.items()}
    reference = min((f"dense {layout}" for layout in dense_layouts), key=result.get)
    result["dense"] = result[reference]
    result["sparse ratio"] = round_ratio(times, "sparse", reference)
    result["masked ratio"] = round_ratio(times, "masked", reference)
    if folded_dense:
        result["sparse / folded"] = round_ratio(times, "sparse", "dense folded")
    return result


def dense_ms(t: dict, digits: int = 0) -> str:
    """The dense reference's median ms, NCHW / channels-last ("–" for a layout not run)."""
    return " / ".join(f"{t[key] * 1e3:.{digits}f}" if key in t else "–" for key in ("dense NCHW", "dense channels-last"))


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


class Report:
    """The tables, printed as they are made and kept for the file."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str = ""):
        print(line, flush=True)
        self.lines.append(line)

    def close_twins_section(self, stand_ins: list[str], end_marker: str) -> None:
        """The notes on stand-ins (models not trained yet, one line each), then the section's end marker."""
        if stand_ins:
            self.add("\nNot trained yet when this ran, so not the models of the issue (numbers for the code path only):\n")
            for note in stand_ins:
                self.add(note)
        self.add(end_marker)


def bundled_images(card, n: int) -> torch.Tensor:
    """The first n test images of a checkpoint's data set, normalised as its card says."""
    from ponderscope.core.workloads import checkpoint_test_data

    workload = checkpoint_test_data(card)
    return workload.normalize(workload.test_x[:n])
