"""Which execution runs a loaded model, per device and batch size: sparse, masked or, for a SACT
ResNet, tiles (models/sparse.py, models/tiles.py).

All give the same numbers (tests/test_sparse.py, tests/test_tiles.py); which is faster depends on
the model, the device and the batch (on CPU, sparse wins at the analysis batch and may lose at
batch 1 on the small bundled networks; on a GPU masked usually won before tiles; tiles are meant
for the GPU). So each loaded model gets an `ExecutionPlan`:

    plan = plan_execution(module, card, "cpu", weights_sha256, mode="auto", cache_dir=folder)
    plan.for_batch(1)       # Execution.MASKED: what a batch of one runs
    plan.as_json()          # {"mode": "auto", "plan": {"1": "masked", "64": "sparse"}, "timings_ms": {...}, ...}

mode "auto" (the default of `serve`, `analyze`, `study` and `ps.load`): at each planned batch size
(`PLANNED_BATCHES`: 1, an interactive request, and ANALYSIS_BATCH) each path runs on the model's
own test images where the caller can give them (`test_images`: an image model whose test set is
on this machine; batch 1 a different image each round), else on a synthetic input of the model's
input shape (`synthetic_input`: image models the card's preprocess input_size and channels, text
a byte sequence of the task's length, parity the card's bits). What a data-dependent model skips
depends on what it sees: the early-exit ResNet leaves at its first exit on most test images and
on hardly any synthetic picture, A-ViT halts the blank tokens of a cluttered canvas early, so a
plan timed on synthetic inputs chose their slower path (bench: auto 2.25x and 1.36x the faster
path). One warm-up pass each, then `ROUNDS[batch]` rounds that run them in turn (the order rotates
from round to round); the path with the smaller median time runs. The paths timed (`paths_of`): sparse and
masked, and tiles where the model has a tile path (`has_tile_path`: SACT). A batch size that was
not planned takes the entry of the nearest planned one on a log scale (2..7 -> 1, 8 and up -> 64).

The plan is cached as JSON (`<cache_dir>/execution-plans/`), keyed by the weights' sha256, the
device's name (the GPU's, or the CPU's model and torch's thread count), the torch version, the
planned batches and whether test images were offered; a cache file that cannot be read, or holds another key, is measured again.
Within a process a plan is measured once (several servers or `ps.load`s of the same weights).

mode "sparse" / "masked": that path always, nothing timed ("tiles" is not a mode of the faces:
`model.execution = "tiles"` or `executing("tiles")` force it, and auto picks it where it is the
fastest). A model whose two executions are one code path (a dense ResNet, a plain RNN:
`has_sparse_path`), or without an `execution` at all (a plugin's), is not timed either: the plan
says so and keeps the model's own execution.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ponderscope.models.sparse import Execution, executing, has_sparse_path, has_tile_path

MODES = ("auto", "sparse", "masked")
# The analysis batch planned besides batch 1: the batch `ponderscope analyze` runs at by default
# (--batch-size 64) and the text models' corpus panel reads its windows in (TextWorkload.evaluate).
# The Dataset view and the what-if studies run image models at 250 (jobs.BATCH); 250 takes this
# entry (nearest on a log scale), which bench/auto.py checks at 250 too. 64 and not 250: timing
# both paths at 250 on CPU would add ~30 s to a cold server start with the bundled checkpoints.
ANALYSIS_BATCH = 64
PLANNED_BATCHES = (1, ANALYSIS_BATCH)
# Timed rounds per batch size, each after one warm-up pass per path: 5 at batch 1 (a pass takes
# milliseconds), 2 at the analysis batch (a pass of the cluttered-MNIST SACT ResNet-20 takes ~0.4 s
# on a quiet 2-core CPU, and most of a cold start is these passes).
ROUNDS = {1: 8}
DEFAULT_ROUNDS = 2
PLAN_SCHEMA = 3  # bump when the measurement changes: cached plans are then measured again (2: tiles timed too; 3: test images)
BATCH_1_IMAGES = 8  # test images timed one at a time at batch 1, one per round
TEXT = (b"The quick brown fox jumps over the lazy dog; hackers' jargon: foo, bar, and a kludge or two. "
        b"<html> 42 + 17 = 59 \n")


def check_mode(mode: str) -> str:
    """"auto", "sparse" or "masked" (else a ValueError naming them)."""
    if mode not in MODES:
        raise ValueError(f"execution must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


# ----------------------------------------------------------------------------------------------
# What is timed: a synthetic input, one forward pass
# ----------------------------------------------------------------------------------------------


def synthetic_input(card, batch: int, device: str = "cpu") -> Optional[torch.Tensor]:
    """A seeded input of the model's shape for `batch` examples, or None for a kind without one.
    Images: smooth random pictures (noise at a quarter of the resolution, upsampled, plus a little
    pixel noise, in [0, 1]) normalised as the card's preprocessing says, so that halting and gates
    vary over them as they do over photos; text: bytes of English-like text, the task's length
    (100 if it gives none); parity: entries in {-1, 0, 1}, the card's bits."""
    generator = torch.Generator().manual_seed(batch)
    task = card.data.get("task") or {}
    if card.kind == "image":
        preprocess = card.preprocess or {}
        height, width = preprocess["input_size"]
        channels = int(preprocess.get("channels", 3))
        low = torch.rand(batch, channels, max(1, height // 4), max(1, width // 4), generator=generator)
        x = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
        x = (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp_(0.0, 1.0)
        mean, std = preprocess.get("mean"), preprocess.get("std")
        if mean is not None and std is not None:
            x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        return x.to(device)
    if card.kind == "text":
        length = int(task.get("seq_len") or 100)
        text = TEXT * (length // len(TEXT) + 2)
        rows = [list(text[(17 * i) % len(TEXT):][:length]) for i in range(batch)]
        return torch.tensor(rows, dtype=torch.long, device=device)
    if card.kind == "parity" and task.get("bits"):
        return torch.randint(-1, 2, (batch, int(task["bits"])), generator=generator).float().to(device)
    return None


def test_images(card, count: int = ANALYSIS_BATCH) -> Optional[torch.Tensor]:
    """The first `count` images of an image model's test set, normalised as its card says (what a
    plan is timed on where it can be), or None where the set cannot be read here (its data is not
    installed, or an image folder decoded lazily). Callers check first that the model has a test
    set it may read (LoadedModel: no_test_set)."""
    from ponderscope.core.workloads import checkpoint_test_data

    if card.kind != "image" or str(card.dataset or "").startswith("imagefolder:"):  # (a folder is decoded lazily: no tensor of its images)
        return None
    try:
        workload = checkpoint_test_data(card)
    except Exception:  # (DataSourceMissing, a folder gone or unreadable): synthetic inputs then
        return None
    images = getattr(workload, "test_x", None)
    if not isinstance(images, torch.Tensor) or len(images) == 0:
        return None
    return workload.normalize(images[:count])


def planning_inputs(card, batch: int, device: str, images: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """What a plan times at `batch`: from the test `images` (batch 1: each of the first
    BATCH_1_IMAGES alone; more: the first `batch`, repeated to fill it), else one synthetic input."""
    if images is None:
        return [synthetic_input(card, batch, device)]
    images = images.to(device)
    if batch == 1:
        return [images[i : i + 1] for i in range(min(len(images), BATCH_1_IMAGES))]
    return [images[torch.arange(batch, device=images.device) % len(images)]]


def time_pass(module, x: torch.Tensor, execution: Execution) -> float:
    """Seconds of one forward pass (module.trace) with `execution` (tests replace this function)."""
    with executing(execution), torch.no_grad():
        started = time.perf_counter()
        module.trace(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - started


def paths_of(module) -> tuple[Execution, ...]:
    """The executions auto times for `module`: sparse and masked, and tiles where it has a tile path."""
    return (Execution.SPARSE, Execution.MASKED) + ((Execution.TILES,) if has_tile_path(module) else ())


def time_both(module, x: torch.Tensor | list[torch.Tensor], rounds: int, paths: Optional[tuple[Execution, ...]] = None) -> dict[Execution, list[float]]:
    """One warm-up pass of each path (default `paths_of(module)`), then `rounds` rounds running
    them in turn, the order rotated from round to round (two paths: alternating), so that a slow
    spell of a shared machine falls on all alike. x: an input, or several: round k runs every
    path on x[k % len(x)] (the warm-up on x[0])."""
    inputs = x if isinstance(x, list) else [x]
    paths = paths_of(module) if paths is None else tuple(paths)
    for execution in paths:
        time_pass(module, inputs[0], execution)
    times: dict[Execution, list[float]] = {execution: [] for execution in paths}
    for round_ in range(rounds):
        shift = round_ % len(paths)
        for execution in paths[shift:] + paths[:shift]:
            times[execution].append(time_pass(module, inputs[round_ % len(inputs)], execution))
    return times


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass
class ExecutionPlan:
    """Which execution runs a model at each planned batch size (see the module's doc).

    mode: "auto", "sparse" or "masked" (what was asked); choices: batch size -> Execution (empty:
    nothing was timed, `fallback` always runs); timings_ms: batch size -> median ms of each path;
    source: "measured" (timed now), "cached" (timed before, read back), "fixed" (mode sparse /
    masked) or "one path" (nothing to choose); note: a sentence for the page."""
    mode: str
    fallback: Execution
    choices: dict[int, Execution] = field(default_factory=dict)
    timings_ms: dict[int, dict[str, float]] = field(default_factory=dict)
    source: str = "fixed"
    device: str = ""
    note: str = ""
    seconds: float = 0.0  # what measuring it took (0 unless measured now)

    def for_batch(self, batch: int) -> Execution:
        """The execution a batch of `batch` examples runs: the entry of the nearest planned batch
        size on a log scale (a tie goes to the larger), or `fallback` when nothing was planned."""
        if not self.choices:
            return self.fallback
        batch = max(1, int(batch))
        nearest = min(self.choices, key=lambda planned: (abs(math.log(batch) - math.log(planned)), -planned))
        return self.choices[nearest]

    def as_json(self) -> dict:
        return {
            "mode": self.mode,
            "plan": {str(batch): execution.value for batch, execution in sorted(self.choices.items())},
            "default": self.fallback.value,
            "timings_ms": {str(batch): times for batch, times in sorted(self.timings_ms.items())},
            "source": self.source,
            "device": self.device,
            "note": self.note,
        }

    def describe(self) -> str:
        """One line for the server's log: 'auto: batch 1 masked, batch 64 sparse (measured in 3.1 s)'."""
        if not self.choices:
            return f"{self.mode}: {self.fallback.value} ({self.note})"
        entries = ", ".join(f"batch {batch} {execution.value}" for batch, execution in sorted(self.choices.items()))
        how = f"measured in {self.seconds:.1f} s" if self.source == "measured" else self.source
        return f"{self.mode}: {entries} ({how})"


def device_name(device: str) -> str:
    """The device as plans are keyed: the GPU's name, or the CPU's model and torch's thread count
    (the timings depend on both)."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "cpu"
    return f"{model}, {torch.get_num_threads()} thread(s)"


def default_cache_dir() -> Path:
    """Where `ps.load` (and the command line) keeps plans: $PONDERSCOPE_CACHE, else ~/.cache/ponderscope."""
    return Path(os.environ.get("PONDERSCOPE_CACHE") or Path.home() / ".cache" / "ponderscope")


_MEMO: dict[str, dict] = {}  # key -> the plan's JSON: each plan measured once per process
_MEMO_LOCK = threading.Lock()


def forget_plans() -> None:
    """Forget the plans measured in this process (the cache files stay)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _key(weights_sha256: str, device: str, batches, images_offered: bool = False) -> dict:
    return {"schema": PLAN_SCHEMA, "weights_sha256": weights_sha256, "device": device, "torch": torch.__version__,
            "batches": list(batches), "inputs": "test images" if images_offered else "synthetic"}


def cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "execution-plans" / f"{key['weights_sha256'][:16]}-{digest}.json"


def _read(path: Path, key: dict) -> Optional[dict]:
    """A cached plan of exactly `key`, or None (no file, or one that cannot be read: measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != key:
            return None
        choices = {int(batch): Execution.of(value) for batch, value in data["plan"].items()}
        timings = {int(batch): {str(k): float(v) for k, v in times.items()} for batch, times in data["timings_ms"].items()}
        if sorted(choices) != sorted(key["batches"]):
            return None
        return {"plan": {str(b): e.value for b, e in choices.items()}, "timings_ms": {str(b): t for b, t in timings.items()},
                "inputs": str(data.get("inputs", ""))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (json's errors are ValueErrors)
        return None


def _write(path: Path, key: dict, measured: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": key, **measured, "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the plan is still used, and measured again next time
        pass


def measure(module, card, device: str, batches=PLANNED_BATCHES, images: Optional[torch.Tensor] = None) -> dict:
    """Time the paths at each batch size, on the test `images` if given (`planning_inputs`) ->
    {"plan": {batch: "sparse"|"masked"|"tiles"}, "timings_ms": {batch: {path: ms}}, "inputs": ...}
    (a tie goes to sparse, then masked)."""
    plan, timings = {}, {}
    for batch in batches:
        times = time_both(module, planning_inputs(card, batch, device, images), ROUNDS.get(batch, DEFAULT_ROUNDS))
        medians = {execution: statistics.median(values) for execution, values in times.items()}
        chosen = min(medians, key=lambda execution: (medians[execution], list(Execution).index(execution)))
        plan[str(batch)] = chosen.value
        timings[str(batch)] = {execution.value: round(seconds * 1000.0, 3) for execution, seconds in medians.items()}
    return {"plan": plan, "timings_ms": timings, "inputs": "synthetic" if images is None else "test images"}


def _known(weights_sha256: str, name: str, batches, cache_dir: Optional[Path], images_offered: bool) -> tuple[Optional[dict], str]:
    """The plan of this key measured before in this process, else read from the cache folder (then
    remembered), else None; and its source ("cached")."""
    key = _key(weights_sha256, name, batches, images_offered)
    path = cache_path(cache_dir or default_cache_dir(), key)
    memo_key = json.dumps(key, sort_keys=True)
    with _MEMO_LOCK:
        known = _MEMO.get(memo_key)
    if known is None:
        known = _read(path, key)
    elif not path.is_file():
        _write(path, key, known)  # measured in this process for another cache folder: kept here too
    if known is not None:
        with _MEMO_LOCK:
            _MEMO[memo_key] = known
    return known, "cached"


def plan_execution(module, card, device: str, weights_sha256: str, mode: str = "auto", cache_dir: Optional[Path] = None,
                   batches=PLANNED_BATCHES, images: Optional[Callable[[], Optional[torch.Tensor]]] = None) -> ExecutionPlan:
    """The ExecutionPlan of a loaded module (see the module's doc). cache_dir: where plans are kept
    (None: default_cache_dir()); images: gives the model's test images to time on (`test_images`),
    called only when the plan is measured (None, or it gives None: synthetic inputs)."""
    check_mode(mode)
    own = getattr(module, "execution", None)
    fallback = Execution.of(own) if own is not None else Execution.MASKED
    if mode != "auto":
        return ExecutionPlan(mode, Execution.of(mode), note=f"{mode} always (--execution {mode})")
    if own is None:
        return ExecutionPlan(mode, fallback, source="one path", note="the model has no execution setting: nothing to choose")
    if not has_sparse_path(module):
        return ExecutionPlan(mode, fallback, source="one path", note="sparse and masked are one code path in this model: nothing to time")
    if synthetic_input(card, 1, "cpu") is None:
        return ExecutionPlan(mode, fallback, source="one path", note=f"no synthetic input for a {card.kind} model: its own execution runs")
    name = device_name(device)
    started = time.perf_counter()
    known, source = _known(weights_sha256, name, batches, cache_dir, images is not None)
    if known is None and images is not None:
        # Test images offered: read them now. Where they cannot be read here (their data not
        # installed), the plan is the synthetic one, under its own key (never stored as timed on images).
        try:
            loaded = images()
        except Exception:  # (a test set that does not read as expected: synthetic inputs, as without one)
            loaded = None
        if loaded is None:
            images = None
            known, source = _known(weights_sha256, name, batches, cache_dir, False)
    else:
        loaded = None
    if known is None:
        key = _key(weights_sha256, name, batches, images is not None)
        try:
            known = measure(module, card, device, batches, loaded)
        except Exception as error:  # a model that cannot run the input: its own execution, said why
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            return ExecutionPlan(mode, fallback, source="one path", device=name,
                                 note=f"timing failed ({type(error).__name__}: {reason}): its own execution runs")
        source = "measured"
        _write(cache_path(cache_dir or default_cache_dir(), key), key, known)
        with _MEMO_LOCK:
            _MEMO[json.dumps(key, sort_keys=True)] = known
    choices = {int(batch): Execution.of(value) for batch, value in known["plan"].items()}
    timings = {int(batch): times for batch, times in known["timings_ms"].items()}
    planned = ", ".join(f"batch {b}: " + ", ".join(f"{path} {ms:.1f} ms" for path, ms in t.items()) for b, t in sorted(timings.items()))
    on = {"test images": " on its test images", "synthetic": " on synthetic inputs"}.get(known.get("inputs"), "")
    return ExecutionPlan(mode, fallback, choices, timings, source=source, device=name,
                         note=f"the fastest path at each batch size, timed on {name}{on} ({planned})",
                         seconds=time.perf_counter() - started if source == "measured" else 0.0)
