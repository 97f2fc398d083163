"""`ponderscope eval CHECKPOINT`: measure a checkpoint on its own task and write the numbers into
its card (`metrics.test` on the whole evaluation set, `metrics.slice` on the first 500
examples, which CI recomputes exactly)."""
from __future__ import annotations

import time

import torch

from ponderscope import models
from ponderscope.models.checkpoint import read_card, write_card

from ponderscope.core.workloads import EVAL_SLICE, checkpoint_test_data, no_test_set


class NothingToEvaluate(ValueError):
    """The checkpoint names no data set the project can load (e.g. an imported one)."""


def evaluate_model(path: str, device: str = "cpu", workload=None, write: bool = True, slice_only: bool = False) -> dict:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = models.load_checkpoint(path, device=device)
    missing = no_test_set(model.card.data) if workload is None else None
    if missing:
        raise NothingToEvaluate(f"{path}: {missing}; open it with ponderscope serve to analyse your own images")
    if workload is None:
        workload = checkpoint_test_data(model.card, device)
    started = time.time()
    metrics = {"slice": workload.evaluate(model, limit=EVAL_SLICE)}
    if not slice_only:
        metrics["test"] = workload.evaluate(model)
    metrics["eval_time_s"] = round(time.time() - started, 1)
    metrics["eval_device"] = str(device)
    if write and not slice_only:
        card = read_card(path)
        card["metrics"] = metrics
        write_card(path, card)
    return metrics
