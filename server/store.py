"""The loaded checkpoints, shared by every request (a FastAPI dependency).

Models are loaded once at start-up, in eval mode, on one device. Inference runs in FastAPI's
thread pool; `inference` (limits.InferenceSlots) bounds how many forward passes run at once, so
a burst of requests queues instead of oversubscribing the CPU cores, and keeps a slot free of
the dataset view's background jobs for interactive requests.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ponderscope import models
from ponderscope.models.checkpoint import CARD_FILE, WEIGHTS_FILE, Card, CheckpointError
from ponderscope.paths import bundled_checkpoints
from ponderscope.training.data import DataSourceMissing
from ponderscope.training.workloads import no_test_set

from .limits import InferenceSlots

log = logging.getLogger("ponderscope")

BUNDLED_CHECKPOINTS = bundled_checkpoints()


class NoTestSet(LookupError):
    """The model's card names no test set the project can load (e.g. an imported model)."""


@dataclass
class LoadedModel:
    id: str
    path: Path
    model: torch.nn.Module
    card: Card
    family: str
    kind: str
    weights_sha256: str
    workload: object = None  # test data, loaded on first use
    no_test_set: Optional[str] = None  # why samples and the dataset view are not available, if they are not
    analyses: dict[str, dict] = field(default_factory=dict)  # name -> a `ponderscope analyze` folder of these weights, summarised
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def whatif(self) -> Optional[dict]:
        """What models/whatif.py can change on this model, or None."""
        from ponderscope.models.whatif import downsampling_units, knobs

        can = knobs(self.model)
        return {**can, "downsampling": downsampling_units(self.model)} if can else None

    @property
    def has_test_set(self) -> bool:
        return self.no_test_set is None

    def summary(self, device: str) -> dict:
        card = self.card
        return {
            "id": self.id,
            "name": card.model,
            "family": self.family,
            "family_label": models.FAMILIES.get(self.family, self.family),  # the registry's name; else the key
            "family_rank": list(models.FAMILIES).index(self.family) if self.family in models.FAMILIES else len(models.FAMILIES),
            "kind": self.kind,
            "dataset": card.dataset,
            "task": card.data["task"],
            "classes": card.classes,
            "preprocess": card.preprocess,
            "metrics": card.metrics,
            "test_set": self.has_test_set,
            "analyses": [{"name": name, **about} for name, about in self.analyses.items()],
            "whatif": self.whatif,
            "source": card.source,
            "path": str(self.path),
            "card": card.data,
            "device": device,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, checkpoint_dirs: list[str | Path], device: str = "auto", max_concurrent: int = 2,
                 data_roots: list[str | Path] | None = None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
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
        from ponderscope.dataset import read_analysis

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
            started = time.time()
            try:
                model = models.load_checkpoint(path, device=self.device)
            except CheckpointError as error:
                self.errors.append(str(error))
                log.warning("skipping %s", error)
                continue
            model_id = name  # the name it was given (a link's own), its real path listed beside it
            suffix = 2
            while model_id in self.models:
                model_id, suffix = f"{name}-{suffix}", suffix + 1
            self.models[model_id] = LoadedModel(
                id=model_id,
                path=path,
                model=model,
                card=model.card,
                family=models.model_info(model.card.model).family,  # as registered
                kind=model.card.kind,
                weights_sha256=_sha256(path / WEIGHTS_FILE),
                no_test_set=no_test_set(model.card.data) or self.refused_data_source(model.card),
            )
            log.info("loaded %s (%s) from %s in %.2fs", model_id, model.card.model, path, time.time() - started)

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

    @staticmethod
    def require_test_set(entry: LoadedModel) -> None:
        """Raise NoTestSet (a 404 with the reason) for a model that comes without a test set here."""
        if entry.no_test_set:
            raise NoTestSet(f"model {entry.id!r} comes without a test set here ({entry.no_test_set}): analyse your own images (upload one)")

    def workload(self, entry: LoadedModel):
        """The model's test data (for samples and the dataset view), loaded once."""
        self.require_test_set(entry)
        with entry.lock:
            if entry.workload is None:
                from ponderscope.training.workloads import checkpoint_test_data

                card = entry.card
                try:
                    workload = checkpoint_test_data(card)
                except DataSourceMissing:
                    raise  # a 503 saying what installs it
                except (OSError, ValueError) as error:  # an image folder that is gone, empty, or mixed
                    raise NoTestSet(f"model {entry.id!r}: its test set could not be read ({error})") from None
                if hasattr(workload, "workers"):  # an image folder: decoded in the server's own threads, no
                    workload.workers = 0          # DataLoader processes forked from a threaded server
                names = card.classes
                found = getattr(workload, "classes", None) or []
                if names and len(found) > len(names):  # a label would name no class of the model
                    raise NoTestSet(f"model {entry.id!r}: its test set has {len(found)} classes ({', '.join(map(str, found[:5]))}, ...); "
                                    f"the model has {len(names)}")
                entry.workload = workload
            return entry.workload
