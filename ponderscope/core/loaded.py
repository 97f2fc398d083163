"""A loaded checkpoint, the one object every face works with: `LoadedModel`.

    model = load("fmnist_sact_resnet32")      # a bundled checkpoint by id, or a checkpoint folder
    model.module                              # the torch module (model.module.trace(x) -> Trace)
    model.card, model.family, model.kind      # the card (checked), the registered family, the view
    model.test_set()                          # its test data (loaded once), or NoTestSet saying why
    model.execution_plan                      # sparse or masked, per batch size (core/execution.py)

The server loads every checkpoint of its folders into one `ModelStore` (once, at start-up, in eval
mode, on one device); the notebook's `ps.load` and the command line load one. Inference runs in
FastAPI's thread pool; the store's `InferenceSlots` bound how many forward passes run at once, so a
burst of requests queues instead of oversubscribing the CPU cores, and keep a slot free of the
background jobs for interactive requests.

Which execution runs (models/sparse.py: sparse or masked, the same numbers) is planned per model
and device at load (`execution="auto"`, the default: the faster of the two, timed, cached on disk;
or "sparse" / "masked" always) and chosen per call by the batch's size (`execution_for`), in the
calling thread only: a request at batch 1 and a job at batch 250 on one module each run their own.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ponderscope import models
from ponderscope.core.data import DataSourceMissing
from ponderscope.core.execution import ExecutionPlan, plan_execution, test_images
from ponderscope.core.workloads import checkpoint_test_data, no_test_set
from ponderscope.models.checkpoint import CARD_FILE, WEIGHTS_FILE, Card, CheckpointError
from ponderscope.models.contract import TraceContractError, check_trace, declarations, exit_threshold, fixed_input_size
from ponderscope.models.sparse import Execution, executing
from ponderscope.paths import bundled_checkpoints

log = logging.getLogger("ponderscope")

BUNDLED_CHECKPOINTS = bundled_checkpoints()


class InferenceSlots:
    """Turns at the model: `slots` forward passes at once (more would only oversubscribe the
    cores), of which background work (the dataset view's jobs) takes at most `background`, and
    only while no interactive request is waiting. So an interactive request waits for at most
    one forward pass, however many jobs are running."""

    def __init__(self, slots: int = 2, background: int = 1):
        if not 0 < background < slots:
            raise ValueError("background work must leave at least one slot to interactive requests")
        self.slots, self.background_slots = slots, background
        self.busy = self.background_busy = self.waiting = 0
        self.changed = threading.Condition()

    @contextmanager
    def interactive(self):
        with self.changed:
            self.waiting += 1
            self.changed.wait_for(lambda: self.busy < self.slots)
            self.waiting -= 1
            self.busy += 1
        try:
            yield
        finally:
            with self.changed:
                self.busy -= 1
                self.changed.notify_all()

    @contextmanager
    def background(self):
        with self.changed:
            self.changed.wait_for(lambda: self.waiting == 0 and self.busy < self.slots and self.background_busy < self.background_slots)
            self.busy += 1
            self.background_busy += 1
        try:
            yield
        finally:
            with self.changed:
                self.busy -= 1
                self.background_busy -= 1
                self.changed.notify_all()


class NoTestSet(LookupError):
    """The model's card names no test set the project can load (e.g. an imported model)."""


class BrokenTrace(ValueError):
    """A loaded model's trace broke the Trace contract on an input (models/contract.py): the
    message names the model, the field, what the contract expects and what the model gave. The
    server answers it as a 422 (docs/own-models.md)."""


def checked(model: "LoadedModel", trace, x: torch.Tensor):
    """`trace` (model's, of input x) if it keeps the Trace contract; else BrokenTrace."""
    try:
        check_trace(trace, model.card.task.name, x, **declarations(model.module))
        if getattr(trace, "exit_confidence", None) is not None:
            exit_threshold(model.module)  # the threshold the answer shows, where the model declares one
    except TraceContractError as error:
        raise BrokenTrace(f"model {model.id!r} ({model.card.model}) broke the Trace contract (docs/own-models.md, section 3) "
                          f"on this input: {error}") from None
    return trace


@dataclass(eq=False)
class LoadedModel:
    """One checkpoint loaded on `device`: its torch `module`, its checked `card`, the `family` it
    registered, the `kind` of view that shows it (image, text, parity), and its test set."""
    id: str
    path: Path
    module: torch.nn.Module
    card: Card
    family: str
    kind: str
    weights_sha256: str
    device: str
    slots: InferenceSlots = field(default_factory=lambda: InferenceSlots(2, background=1), repr=False)
    no_test_set: Optional[str] = None  # why samples and the dataset view are not available, if they are not
    analyses: dict[str, dict] = field(default_factory=dict)  # name -> a `ponderscope analyze` folder of these weights, summarised
    _test_set: object = field(default=None, repr=False)  # loaded on first use
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    execution_plan: Optional[ExecutionPlan] = field(default=None, repr=False)  # None: the module's own execution, untimed

    def __post_init__(self):
        if self.execution_plan is None:
            own = getattr(self.module, "execution", None)
            fallback = Execution.of(own) if own is not None else Execution.MASKED
            self.execution_plan = ExecutionPlan("fixed", fallback, source="fixed", note="the module's own execution (not planned)")

    def __repr__(self) -> str:
        test = self.card.test_metrics
        accuracy = f", test accuracy {test['accuracy']:.2%}" if isinstance(test.get("accuracy"), (int, float)) else ""
        return (f"<ponderscope.LoadedModel {self.id!r}: {self.card.model} ({self.family}, {self.kind} model) on {self.card.dataset}"
                f"{accuracy}, {self.device}, from {self.path}>")

    @property
    def whatif(self) -> Optional[dict]:
        """What models/whatif.py can change on this model, or None."""
        from ponderscope.models.whatif import downsampling_units, knobs

        can = knobs(self.module)
        return {**can, "downsampling": downsampling_units(self.module)} if can else None

    def resolution(self, asked: str) -> tuple[str, Optional[str]]:
        """The resolution an image runs at when `asked` ("train" or "native"), and why it is not the
        one asked for (None: it is): a model that takes one input size only (its fixed_input_size,
        models/contract.py) runs every image at its training size."""
        fixed = fixed_input_size(self.module)
        if asked == "native" and fixed is not None:
            return "train", (f"this model takes {fixed[1]}×{fixed[0]} images only (it declares a fixed input size), "
                             "so it ran at that size (its training size), not at the image's own")
        return asked, None

    @property
    def execution(self) -> str:
        """How the module runs its skipped work at batch 1, an interactive request (models/sparse.py:
        "sparse" or "masked"); a trace by `trace` records the one it ran (Trace.execution)."""
        return self.execution_for(1).value

    def execution_for(self, batch: int) -> Execution:
        """The execution a batch of `batch` examples runs (the plan's entry for the nearest planned size)."""
        return self.execution_plan.for_batch(batch)

    def planned(self, guard=None) -> "PlannedModule":
        """The module as a workload's `evaluate` reads it, each trace run with the plan's execution
        for its batch (and inside `guard()`, when given: a job's background slot)."""
        return PlannedModule(self, guard)

    @property
    def has_test_set(self) -> bool:
        return self.no_test_set is None

    @property
    def reference(self) -> bool:
        """Whether the model skips nothing: its family was registered as a reference (a dense twin,
        register_family(..., reference=True)), the what-if sweep's point at 100% of the FLOPs."""
        return models.family(self.family).reference

    def trace(self, x: torch.Tensor, background: bool = False):
        """model.module.trace(x) on this model's device in a turn at the model (interactive, or
        background: a job's), with the planned execution for x's batch size -> (Trace, milliseconds
        the forward pass took); trace.execution says which execution ran. A trace that breaks the
        Trace contract is a BrokenTrace (models/contract.py), never a half-made answer."""
        execution = self.execution_for(x.shape[0])
        with (self.slots.background() if background else self.slots.interactive()), torch.no_grad(), executing(execution):
            started = time.perf_counter()
            trace = self.module.trace(x.to(self.device))
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            ms = (time.perf_counter() - started) * 1000.0
        trace = checked(self, trace, x)
        trace.execution = execution.value
        return trace, ms

    def require_test_set(self) -> None:
        """Raise NoTestSet (a 404 with the model's name and the reason) for a model that comes
        without a test set (a byte LM: without held-out text or its statistics) here."""
        if self.no_test_set:
            own = {"image": "analyse your own images (upload one)", "text": "type your own text in the Text view"}.get(self.kind, "")
            raise NoTestSet(f"model {self.id!r} comes without a test set here: {self.no_test_set}{f'; {own}' if own else ''}")

    def test_set(self):
        """The model's test data (samples, the Dataset view, studies), loaded once."""
        self.require_test_set()
        with self.lock:
            if self._test_set is None:
                try:
                    workload = checkpoint_test_data(self.card)
                except DataSourceMissing:
                    raise  # a 503 saying what installs it
                except (OSError, ValueError) as error:  # an image folder that is gone, empty, or mixed
                    raise NoTestSet(f"model {self.id!r}: its test set could not be read ({error})") from None
                if hasattr(workload, "workers"):  # an image folder: decoded in the caller's own threads, no
                    workload.workers = 0          # DataLoader processes forked from a threaded server
                names = self.card.classes
                found = getattr(workload, "classes", None) or []
                if names and len(found) > len(names):  # a label would name no class of the model
                    raise NoTestSet(f"model {self.id!r}: its test set has {len(found)} classes ({', '.join(map(str, found[:5]))}, ...); "
                                    f"the model has {len(names)}")
                self._test_set = workload
            return self._test_set

    def summary(self) -> dict:
        card = self.card
        return {
            "id": self.id,
            "name": card.model,
            "family": self.family,
            "family_label": models.family(self.family).label,  # the registry's name; else the key
            "family_description": models.family(self.family).description,
            "reference": self.reference,
            "family_rank": list(models.FAMILIES).index(self.family) if self.family in models.FAMILIES else len(models.FAMILIES),
            "kind": self.kind,
            "dataset": card.dataset,
            "task": card.data["task"],
            "classes": card.classes,
            "preprocess": card.preprocess,
            "metrics": card.metrics,
            "test_set": self.has_test_set,
            "no_test_set": self.no_test_set,
            "analyses": [{"name": name, **about} for name, about in self.analyses.items()],
            "whatif": self.whatif,
            "source": card.source,
            "path": str(self.path),
            "card": card.data,
            "device": self.device,
            "execution": self.execution_plan.as_json(),
        }


class PlannedModule:
    """A LoadedModel's module whose `trace` runs the plan's execution for each batch's size (and
    inside `guard()`, when given); everything else is the module's."""

    def __init__(self, model: LoadedModel, guard=None):
        self.model, self.module, self.guard = model, model.module, guard

    def parameters(self):
        return self.module.parameters()

    def trace(self, x):
        execution = self.model.execution_for(x.shape[0])
        if self.guard is None:
            with executing(execution):
                trace = self.module.trace(x)
        else:
            with self.guard(), executing(execution):
                trace = self.module.trace(x)
        trace = checked(self.model, trace, x)
        trace.execution = execution.value
        return trace

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def load_model(path: Path, model_id: str, device: str, slots: Optional[InferenceSlots] = None,
               refuse: Optional[Callable[[Card], Optional[str]]] = None, execution: str = "auto",
               plan_cache: Optional[Path] = None) -> LoadedModel:
    """The checkpoint folder `path` as a LoadedModel named `model_id` (CheckpointError if it cannot
    load), its execution planned (core/execution.py: "auto", "sparse" or "masked"; plans cached in
    `plan_cache`, None: the default folder). refuse(card): why its test set may not be read here
    (ModelStore.refused_data_source), None if it may: asked before anything reads it."""
    module = models.load_checkpoint(path, device=device)
    card = module.card
    weights = _sha256(path / WEIGHTS_FILE)
    missing = no_test_set(card.data) or (refuse(card) if refuse is not None else None)
    # the plan is timed on the model's own test images where it has them (core/execution.py: what a
    # data-dependent model skips depends on what it sees)
    images = None if missing or card.kind != "image" else (lambda: test_images(card))
    return LoadedModel(
        id=model_id, path=path, module=module, card=card,
        family=models.model_info(card.model).family,  # as registered
        kind=card.kind, weights_sha256=weights, device=device,
        slots=slots or InferenceSlots(2, background=1),
        no_test_set=missing,
        execution_plan=plan_execution(module, card, device, weights, execution, plan_cache, images=images),
    )


def bundled() -> list[str]:
    """The ids of the checkpoints that come with ponderscope."""
    root = BUNDLED_CHECKPOINTS
    return sorted(p.name for p in root.iterdir() if (p / CARD_FILE).is_file()) if root.is_dir() else []


def load(name_or_path: str | Path, device: str = "cpu", plugins: list[str | Path] | None = None, execution: str = "auto",
         cache_dir: str | Path | None = None) -> LoadedModel:
    """A bundled checkpoint by id (see bundled()) or a checkpoint folder (card.json + model.safetensors).
    plugins: Python files that register your own model families (docs/own-models.md); installed
    `ponderscope.models` entry points are loaded too. execution: "auto" (the faster of sparse and
    masked per batch size, timed once on this device and cached in `cache_dir`, default
    $PONDERSCOPE_CACHE or ~/.cache/ponderscope), "sparse" or "masked" (always, nothing timed)."""
    from ponderscope.core.execution import check_mode
    from ponderscope.plugins import load_plugins

    check_mode(execution)
    load_plugins(plugins or [])
    folder = Path(name_or_path).expanduser()
    if not (folder / CARD_FILE).is_file() and (BUNDLED_CHECKPOINTS / str(name_or_path) / CARD_FILE).is_file():
        folder = BUNDLED_CHECKPOINTS / str(name_or_path)
    if not (folder / CARD_FILE).is_file():
        raise FileNotFoundError(f"{name_or_path!s} is neither a checkpoint folder (with card.json) nor a bundled checkpoint "
                                f"({', '.join(bundled()) or 'none here'})")
    folder = folder.resolve()
    try:
        return load_model(folder, folder.name, resolve_device(device), execution=execution,
                          plan_cache=Path(cache_dir).expanduser() if cache_dir is not None else None)
    except CheckpointError as error:
        raise ValueError(f"{folder}: could not be loaded ({error})") from None


class ModelStore:
    """Every checkpoint of the server's folders, loaded once, sharing one device and its turns."""

    def __init__(self, checkpoint_dirs: list[str | Path], device: str = "auto", max_concurrent: int = 2,
                 data_roots: list[str | Path] | None = None, execution: str = "auto", plan_cache: str | Path | None = None):
        from ponderscope.core.execution import check_mode

        self.device = resolve_device(device)
        self.execution = check_mode(execution)  # each model's execution plan (core/execution.py), cached in plan_cache
        self.plan_cache = Path(plan_cache) if plan_cache is not None else None
        # Folders a card's "imagefolder:PATH" data source may lie in (serve --data-root): a card
        # cannot make the server show images from anywhere else.
        self.data_roots = [Path(root).resolve() for root in data_roots or []]
        self.models: dict[str, LoadedModel] = {}
        self.errors: list[str] = []
        self.inference = InferenceSlots(max_concurrent, background=1)
        for root in checkpoint_dirs:
            self._scan(Path(root))
        for entry in self.models.values():  # analyses kept next to a checkpoint: CHECKPOINT/<name>/analysis.json
            for folder in sorted(p for p in entry.path.iterdir() if (p / "analysis.json").is_file()):
                self.add_analysis(folder)

    def add_analysis(self, folder: str | Path) -> Optional[str]:
        """Attach a `ponderscope analyze` folder to the loaded model with its weights (by hash);
        -> its name, or None (the reason is in `errors`)."""
        from ponderscope.core.statistics import read_analysis

        folder = Path(folder).resolve()
        try:
            manifest, result = read_analysis(folder)
        except ValueError as error:
            self.errors.append(str(error))
            return None
        owners = [e for e in self.models.values() if e.weights_sha256 == manifest["weights_sha256"]]
        if not owners:
            self.errors.append(f"{folder}: an analysis of {manifest.get('checkpoint')} ({manifest.get('model')}), whose weights no loaded model has")
            return None
        name = folder.name
        about = {"folder": str(folder), "data": (result.get("source") or {}).get("data", manifest.get("data")),
                 "examples": result.get("examples"), "accuracy": result.get("accuracy")}
        for entry in owners:
            if any(known["folder"] == about["folder"] for known in entry.analyses.values()):
                continue
            unique, suffix = name, 2
            while unique in entry.analyses:
                unique, suffix = f"{name}-{suffix}", suffix + 1
            entry.analyses[unique] = about
        return name

    def _scan(self, root: Path) -> None:
        if not root.is_dir():
            self.errors.append(f"{root}: not a directory")
            return
        # A directory is itself a checkpoint, or holds checkpoint directories.
        candidates = [root] if (root / CARD_FILE).is_file() else sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())
        for path in candidates:
            name, path = path.name, path.resolve()  # a symlinked folder is listed (and read) where it really is
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the folder's name: it could not be a model id
                self.errors.append(f"{str(path).encode('utf-8', 'backslashreplace').decode()}: the folder's name is not UTF-8; rename it")
                continue
            model_id = name  # the name it was given (a link's own), its real path listed beside it
            suffix = 2
            while model_id in self.models:
                model_id, suffix = f"{name}-{suffix}", suffix + 1
            started = time.time()
            try:
                entry = load_model(path, model_id, self.device, self.inference, refuse=self.refused_data_source,
                                   execution=self.execution, plan_cache=self.plan_cache)
            except CheckpointError as error:
                self.errors.append(str(error))
                log.warning("skipping %s", error)
                continue
            self.models[model_id] = entry
            log.info("loaded %s (%s) from %s in %.2fs; execution %s", model_id, entry.card.model, path, time.time() - started,
                     entry.execution_plan.describe())

    def refused_data_source(self, card: Card) -> Optional[str]:
        """Why the card's "imagefolder:PATH" test set may not be read (None if it may)."""
        dataset = card.dataset or ""
        if not dataset.startswith("imagefolder:"):
            return None
        folder = Path(dataset.split(":", 1)[1]).resolve()
        if any(folder == root or root in folder.parents for root in self.data_roots):
            return None
        allowed = ", ".join(str(root) for root in self.data_roots) or "none given"
        return f"its test images are in {folder}, outside the folders this server may read (serve --data-root DIR; given: {allowed})"

    def get(self, model_id: str) -> Optional[LoadedModel]:
        return self.models.get(model_id)
