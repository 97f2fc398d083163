"""Shared benchmark set-up: one CPU thread, the allocator setting, interleaved timing."""
from __future__ import annotations

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
