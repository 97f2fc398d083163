"""Background jobs over a model's test set: the Dataset view's statistics and what-if studies,
each computed once in a thread, cached on disk under a key that includes the weights' hash (so a
retrained checkpoint is recomputed), with progress that the page polls. A job's result is numbers
only; the faces draw its figures (ponderscope.figures.attach)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from pathlib import Path

import torch

from ponderscope.core.workloads import CHAR_CLASS_LABELS, card_corpus_statistics

from ponderscope.core.statistics import image_records, model_names, read_analysis, summarize, write_json

from pydantic import TypeAdapter, ValidationError

from .answers import CorpusAnalysis, DatasetStatus, LesionStudy, SweepPoint
from .loaded import BrokenTrace, NoTestSet

log = logging.getLogger("ponderscope")
BATCH = 250


CORPUS_BYTES = 20_000  # held-out bytes a text model's corpus panel is measured on, without card metrics
CORPUS_SCHEMA = 3  # bump when the corpus statistics change (cached answers then are recomputed; 3: layer_names, layer_rates)
STUDY_SCHEMA = 3  # the same for what-if studies (2: layer_execution_rate; 3: each point's label)
IMAGE_SCHEMA = 5  # the same for image models (2: the overall mean_ponder; 3: summarize; 4: the cards' vocabulary; 5: exits)

# What a cache file holds, read back into the answers' types.
DATASET_RESULT = TypeAdapter(DatasetStatus.model_fields["result"].annotation)
STUDY_RESULT = {"sweep": TypeAdapter(list[SweepPoint]), "lesion": TypeAdapter(LesionStudy)}


class DatasetJobs:
    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the running jobs at their next batch and wait for them (the server is stopping: a
        thread still inside torch when the interpreter exits aborts the process)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)

    def _compute_corpus(self, entry, job: dict) -> dict:
        """A byte LM over its held-out text: per character class the mean and spread of N and
        N + R, how often N leaves its most common value, ponder vs surprisal. From the card when
        `ponderscope eval` wrote them (the whole held-out text), else measured here on its start."""
        test = entry.card.test_metrics
        if card_corpus_statistics(entry.card.data):
            stats, source = test, f"card metrics.test: all {test.get('bytes')} held-out bytes (ponderscope eval)"
        else:
            job["message"] = f"running the model on {CORPUS_BYTES} held-out bytes"
            workload = entry.test_set()
            with entry.slots.background(), torch.no_grad():
                stats = workload.evaluate(entry.planned(), limit=CORPUS_BYTES)  # the planned execution per batch
            source = f"the first {stats['bytes']} held-out bytes (measured by the server)"
        keys = ("bytes", "bits_per_byte", "mean_steps", "mean_ponder", "per_char_class", "steps_histogram", "steps_mode",
                "steps_off_mode_fraction", "steps_at_cap_fraction", "max_steps", "corr_ponder_surprisal", "corr_steps_surprisal",
                "layer_names", "layer_rates")
        result = {"model": entry.id, "kind": "text", "dataset": entry.card.dataset, "source": source,
                  **{k: stats.get(k) for k in keys}}
        result["class_labels"] = {name: CHAR_CLASS_LABELS.get(name, name) for name in result["per_char_class"] or {}}
        return CorpusAnalysis(**result)

    def _cache_path(self, entry) -> Path:
        key = entry.weights_sha256[:16]
        if entry.kind == "image":
            key += f"-v{IMAGE_SCHEMA}"
        if entry.kind == "text":  # the corpus panel also reads the card's metrics: a re-evaluated card is new
            metrics = json.dumps(entry.card.test_metrics, sort_keys=True)
            key += "-" + hashlib.sha256(f"{CORPUS_SCHEMA}:{metrics}".encode()).hexdigest()[:12]
        return self.cache_dir / f"dataset-{entry.id}-{key}.json"

    def status(self, entry) -> dict:
        entry.require_test_set()  # a 404 with the reason; starts no job
        return self._job(entry.id, self._cache_path(entry), lambda job: self._compute(entry, job), f"dataset view for {entry.id}", DATASET_RESULT.validate_python)

    def study(self, entry, kind: str, limit: int, run) -> dict:
        """A what-if study of the model over its first `limit` test images: `run(entry, limit=,
        progress=, guard=)` (ponderscope.studies.sweep or .lesion) as a job like the dataset
        view's, cached under the weights' hash. Its result is the study's numbers alone; the
        figures are drawn over several models (server/routers/studies.py)."""
        entry.require_test_set()
        limit = min(limit, entry.test_set().n_test)
        path = self.cache_dir / f"{kind}-{entry.id}-{entry.weights_sha256[:16]}-n{limit}-v{STUDY_SCHEMA}.json"

        def compute(job: dict) -> dict:
            def progress(fraction: float, what: str) -> None:
                job["progress"], job["message"] = fraction, what

            result = run(entry, limit=limit, progress=progress, guard=lambda: self._background_slot(entry))
            return {"model": entry.id, "kind": kind, "limit": limit, "result": result}

        def parse(cached: dict) -> dict:
            return {**cached, "result": STUDY_RESULT[kind].validate_python(cached["result"])}

        return self._job((kind, entry.id, limit), path, compute, f"{kind} of {entry.id}", parse)

    @contextlib.contextmanager
    def _background_slot(self, entry):
        """Around each batch of a study: stop when the server stops; leave a slot to the page's requests."""
        if self.stopping.is_set():
            raise RuntimeError("stopped: the server is shutting down")
        with entry.slots.background():
            yield

    def _job(self, key, path: Path, compute, what: str, parse) -> dict:
        """The job `key`: its result from the cache file `path` (read back into its type by
        `parse`), or running `compute(job)` in a thread (its result written to `path`)."""
        with self.lock:
            job = self.jobs.get(key)
            if job is None or job["status"] == "error" and job.get("retry"):
                if path.is_file():
                    try:
                        result = parse(json.loads(path.read_text()))
                    except (OSError, json.JSONDecodeError, ValidationError, KeyError, TypeError):
                        path.unlink(missing_ok=True)  # a broken cache file is recomputed
                    else:  # kept for the next requests
                        job = {"status": "done", "progress": 1.0, "message": "cached", "result": result}
                        self.jobs[key] = job
                        return dict(job)
                job = {"status": "running", "progress": 0.0, "message": "loading the test set", "result": None}
                self.jobs[key] = job
                thread = threading.Thread(target=self._run, args=(job, path, compute, what), daemon=True)
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
                thread.start()
            return dict(job)

    def _run(self, job: dict, path: Path, compute, what: str) -> None:
        try:
            result = compute(job)
            write_json(path, result)  # the numbers; the figures are drawn from them when served
            job.update(status="done", progress=1.0, message="done", result=result)
        except BrokenTrace as error:  # the model's own fault, the same on every try: reported once, not retried
            log.warning("%s failed: %s", what, error)
            job.update(status="error", message=str(error), retry=False)
        except Exception as error:  # reported to the page; the next request retries
            log.exception("%s failed", what)
            job.update(status="error", message=f"{type(error).__name__}: {error}", retry=True)

    def _compute(self, entry, job: dict) -> dict:
        if entry.kind == "text":
            return self._compute_corpus(entry, job)
        if entry.kind != "image":
            raise ValueError("the dataset view is for image and text models; use the parity view")
        workload = entry.test_set()
        n, done = workload.n_test, 0

        def forward(x):
            return entry.trace(x, background=True)[0]

        def progress(count: int) -> None:
            nonlocal done
            done += count
            job["progress"] = min(1.0, done / n)
            job["message"] = f"{done} / {n} test images"

        # (in this thread: no DataLoader worker processes forked from the server)
        records = image_records(forward, workload.test_batches(BATCH, workers=0), progress, self.stopping.is_set)
        classes = entry.card.classes or workload.classes
        return summarize(records, classes, workload.thumbnail, model_names(entry.module), entry.id)

    def analysis(self, entry, name: str) -> dict:
        """A `ponderscope analyze` result of the model (entry.analyses), as a finished job."""
        about = entry.analyses.get(name)
        if about is None:
            known = ", ".join(entry.analyses) or "none"
            raise NoTestSet(f"model {entry.id!r} has no analysis {name!r} (known: {known}; ponderscope analyze writes them)")
        key = ("analysis", entry.id, name)
        with self.lock:
            job = self.jobs.get(key)
        if job is None:
            try:
                _, result = read_analysis(about["folder"])
                result = DATASET_RESULT.validate_python(result)
            except ValueError as error:  # (pydantic's ValidationError is one)
                raise NoTestSet(f"model {entry.id!r}: analysis {name!r} cannot be read now ({error})") from None
            source = result.source or {}
            message = f"ponderscope analyze: {source.get('data', '')}, {source.get('world_size', 1)} process(es) on {', '.join(source.get('devices') or [])}"
            job = {"status": "done", "progress": 1.0, "message": message, "result": result}
            with self.lock:
                self.jobs[key] = job
        return dict(job)
