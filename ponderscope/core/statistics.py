"""What the Dataset view shows, over any set of images: one record per image, then the summary.

    records = image_records(model.trace, workload.test_batches(250))     # per image, streaming
    result = summarize(records, classes, thumbnail, names)               # per class, histograms, extremes

The server's dataset jobs (the bundled test sets) and `ponderscope analyze` (an image folder of
any size, sharded, resumable, under torchrun) both run these two functions; the page draws the
result the same way whichever computed it.

`ponderscope analyze` (ponderscope/analyze.py) writes these records in shards and the summary as
analysis.json; read_analysis reads such a folder back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

EXTREMES = 8  # least and most costly images shown
SHARD_SIZE = 1000  # images per shard of `ponderscope analyze`
ANALYSIS_FILE = "analysis.json"
SCHEMA = 2  # 2: the cards' vocabulary (layer_execution_rate, class_layer_execution_rate, per-class flops_ratio)


# ------------------------------------------------------------------------------ per-image records
def image_records(forward: Callable, batches: Iterable, on_batch: Optional[Callable[[int], None]] = None,
                  stopping: Optional[Callable[[], bool]] = None, boxes: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Run `forward` (images -> Trace) over (indices, images, labels) batches; -> per image:
    index, label, pred, correct, flops (executed, as the trace counts them), and where the model
    has them block_ponder / block_units ([images, blocks]: each block's mean N + R and N) with
    their sum over blocks `ponder` (Trace.mean_ponder), executed ([images, layers] 0/1, gated
    models), exited ([images, exits] 0/1: the exit each image left at, models with exits), and
    with `boxes` (the test set's object boxes, by index) the mean total ponder inside and outside
    each image's box; plus dense_flops."""
    columns: dict[str, list[torch.Tensor]] = {}
    dense = None
    for indices, images, labels in batches:
        if stopping is not None and stopping():
            raise RuntimeError("stopped")
        with torch.no_grad():
            trace = forward(images)
        dense = float(trace.dense_flops)
        indices = torch.as_tensor(indices).long()
        row = {"index": indices, "label": labels.cpu().long(), "pred": trace.logits.argmax(-1).cpu(), "flops": trace.flops.detach().cpu()}
        if trace.blocks:
            row["block_ponder"] = trace.block_means("ponder").detach().cpu()
            row["block_units"] = trace.block_means("units").detach().cpu()
            if boxes is not None:
                row["box_inside"], row["box_outside"] = (v.cpu() for v in ponder_in_box(trace, boxes[indices.to(boxes.device)], images.shape[-2:]))
        if trace.executed is not None:
            row["executed"] = trace.executed.detach().to(torch.uint8).cpu()
        if trace.exit_taken is not None:
            exits = trace.exit_confidence.shape[1]
            row["exited"] = torch.nn.functional.one_hot(trace.exit_taken.detach().long().cpu(), exits).to(torch.uint8)
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
        if on_batch is not None:
            on_batch(len(labels))
    records = {key: torch.cat(values) for key, values in columns.items()}
    if records:
        records["correct"] = (records["pred"] == records["label"]).to(torch.uint8)
        records["dense_flops"] = torch.tensor([dense], dtype=torch.float64)
        if "block_ponder" in records:
            records["ponder"] = records["block_ponder"].sum(1)
    return records


def ponder_in_box(trace, boxes: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean total ponder (summed over blocks, nearest-resized to the input) inside vs outside
    each example's object box [top, left, bottom, right]: the SACT paper's check of ponder maps
    against where the object is."""
    total = trace.ponder_map(size)
    h, w = size
    ys = torch.arange(h, device=total.device)[None, :, None]
    xs = torch.arange(w, device=total.device)[None, None, :]
    b = boxes.to(total.device)
    mask = (ys >= b[:, 0, None, None]) & (ys < b[:, 2, None, None]) & (xs >= b[:, 1, None, None]) & (xs < b[:, 3, None, None])
    inside = (total * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)
    outside = (total * ~mask).sum((1, 2)) / (~mask).sum((1, 2)).clamp(min=1)
    return inside, outside


def mean_or_nan(values: torch.Tensor) -> float:
    """The mean in float32, as every metric is reduced (NaN for no values)."""
    return float(values.float().mean()) if values.numel() else float("nan")


def test_metrics(records: dict[str, torch.Tensor], n_classes: int, per_class_accuracy: bool = False) -> dict:
    """Records -> the test metrics, in the one vocabulary of the cards (`ponderscope eval` writes
    them as metrics.test / metrics.slice), the Dataset view and the what-if studies:
    examples, accuracy, mean_flops, dense_flops, flops_ratio (mean executed / dense),
    per_class_flops_ratio; with ponder: mean_ponder (per image, summed over blocks),
    per_block_ponder, per_block_units, per_class_ponder; with boxes: ponder_inside_box,
    ponder_outside_box, ponder_box_ratio; with gates: layer_execution_rate,
    class_layer_execution_rate, max_class_rate_span(_layer), mean_executed_layers; with exits:
    exit_rates (the fraction of the images leaving at each exit), class_exit_rates (per class),
    exit_accuracy (the accuracy of the images leaving at each exit; None where none leave),
    mean_exit (the mean exit taken, 1 = the first)."""
    correct, flops, labels = records["correct"].bool(), records["flops"], records["label"]
    dense = float(records["dense_flops"][0])
    classes = range(n_classes)
    metrics = {
        "examples": int(len(labels)),
        "accuracy": mean_or_nan(correct),
        "mean_flops": mean_or_nan(flops),
        "dense_flops": dense,
        "flops_ratio": mean_or_nan(flops) / dense,
        "per_class_flops_ratio": [mean_or_nan(flops[labels == c]) / dense for c in classes],
    }
    if per_class_accuracy:
        metrics["per_class_accuracy"] = [mean_or_nan(correct[labels == c]) for c in classes]
    if "block_ponder" in records:
        ponder, units = records["block_ponder"], records["block_units"]
        metrics["mean_ponder"] = float(ponder.sum(1).mean())  # sum over blocks, mean over images
        metrics["per_block_ponder"] = [float(v) for v in ponder.mean(0)]
        metrics["per_block_units"] = [float(v) for v in units.mean(0)]
        metrics["per_class_ponder"] = [mean_or_nan(ponder.sum(1)[labels == c]) for c in classes]
    if "box_inside" in records:
        inside, outside = records["box_inside"], records["box_outside"]
        metrics["ponder_inside_box"] = mean_or_nan(inside)
        metrics["ponder_outside_box"] = mean_or_nan(outside)
        metrics["ponder_box_ratio"] = mean_or_nan(inside) / mean_or_nan(outside)
    if "executed" in records:
        executed = records["executed"].float()
        rates = [[mean_or_nan(executed[labels == c, layer]) for layer in range(executed.shape[1])] for c in classes]
        class_rates = torch.tensor(rates)
        span = class_rates.max(0).values - class_rates.min(0).values
        metrics["layer_execution_rate"] = [float(v) for v in executed.mean(0)]
        metrics["class_layer_execution_rate"] = rates
        metrics["max_class_rate_span"] = float(span.max())
        metrics["max_class_rate_span_layer"] = int(span.argmax())
        metrics["mean_executed_layers"] = float(executed.sum(1).mean())
    if "exited" in records:
        exited = records["exited"].bool()
        exits = range(exited.shape[1])
        metrics["exit_rates"] = [mean_or_nan(exited[:, e]) for e in exits]
        metrics["class_exit_rates"] = [[mean_or_nan(exited[labels == c, e]) for e in exits] for c in classes]
        metrics["exit_accuracy"] = [_or_none(mean_or_nan(correct[exited[:, e]])) for e in exits]  # (JSON: no NaN in a card)
        metrics["mean_exit"] = mean_or_nan(exited.float().argmax(1) + 1.0)
    return metrics


def merge_records(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Shards' records -> one set, in image order."""
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("no images were analysed")
    merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "dense_flops"}
    order = torch.argsort(merged["index"])
    merged = {key: value[order] for key, value in merged.items()}
    merged["dense_flops"] = parts[0]["dense_flops"]
    return merged


def _histogram(values: torch.Tensor, bins: int = 20) -> dict:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6
    counts = torch.histc(values.float(), bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1)
    return {"edges": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}


def summarize(records: dict[str, torch.Tensor], classes: list[str], thumbnail: Callable[[int], object],
              names: Callable[[str, int], list[str]], model_id: str = "") -> dict:
    """Records -> the Dataset view's numbers: the test metrics (test_metrics, the cards'
    vocabulary), per class its count, accuracy, FLOPs and ponder, histograms, the EXTREMES least
    and most costly images (ranked by ponder where the model has one, else by FLOPs;
    `thumbnail(index)` draws them), for gated models the histogram of executed layers and the
    class x layer execution rates, and for models with exits the rate of each exit, overall and
    per class. `names(what, n)`: the model's names of its n "gates" or "exits" (model_names)."""
    from .answers import DatasetAnalysis  # (answers -> workloads -> statistics: imported when used)
    from .imaging import png_data_url

    metrics = test_metrics(records, len(classes), per_class_accuracy=True)
    labels = records["label"]
    flops = records["flops"].double() / metrics["dense_flops"]  # per image, executed / dense
    ponder, executed = records.get("ponder"), records.get("executed")
    per_class = [{"class": name, "count": int((labels == c).sum()), "accuracy": _or_none(metrics["per_class_accuracy"][c]),
                  "flops_ratio": _or_none(metrics["per_class_flops_ratio"][c]),
                  "mean_ponder": _or_none(metrics["per_class_ponder"][c]) if ponder is not None else None}
                 for c, name in enumerate(classes)]
    score = ponder if ponder is not None else flops
    order = torch.argsort(score, stable=True)

    def describe(position: int) -> dict:
        index = int(records["index"][position])
        return {"index": index, "label": int(labels[position]), "class": classes[int(labels[position])],
                "flops_ratio": float(flops[position]), "ponder": float(ponder[position]) if ponder is not None else None,
                "image": png_data_url(thumbnail(index))}

    keys = ("examples", "accuracy", "flops_ratio", "dense_flops", "mean_ponder", "layer_execution_rate", "class_layer_execution_rate",
            "exit_rates", "exit_accuracy")
    result = {
        "kind": "image",
        "model": model_id,
        "classes": list(classes),
        **{key: metrics.get(key) for key in keys},
        "per_class": per_class,
        "ponder_histogram": _histogram(ponder) if ponder is not None else None,
        "flops_histogram": _histogram(flops),
        "least": [describe(int(i)) for i in order[:EXTREMES]],
        "most": [describe(int(i)) for i in order.flip(0)[:EXTREMES]],
        "executed_layers_histogram": None,
        "layers": None,
    }
    if executed is not None:
        counts = executed.float().sum(1)
        n_layers = executed.shape[1]
        result["executed_layers_histogram"] = {"edges": list(range(n_layers + 2)),
                                               "counts": [int((counts == k).sum()) for k in range(n_layers + 1)]}
        result["class_layer_execution_rate"] = [[_or_none(v) for v in row] for row in metrics["class_layer_execution_rate"]]
        result["layers"] = names("gates", n_layers)
    if "exited" in records:
        result["class_exit_rates"] = [[_or_none(v) for v in row] for row in metrics["class_exit_rates"]]
        result["exits"] = names("exits", records["exited"].shape[1])
    return DatasetAnalysis(**result)


def model_names(module) -> Callable[[str, int], list[str]]:
    """summarize's `names` for a model: its gate_names and exit_names (models/contract.py: declared,
    of the right length, or numbered)."""
    from ponderscope.models.contract import exit_labels, layer_names

    def names(what: str, n: int) -> list[str]:
        if what == "gates":
            return layer_names(getattr(module, "gate_names", None), n)
        return exit_labels(getattr(module, "exit_names", None), n)

    return names


def _or_none(value: float):
    """JSON has no NaN: a class without images has no accuracy."""
    return None if value != value else value


# ------------------------------------------------------------------------------ analysis folders
class AnalysisError(ValueError):
    """An analysis that cannot run as asked (the message says why)."""


def write_json(path: Path, data) -> None:
    """Write `data` as JSON to `path` whole or not at all (a temporary file, then renamed)."""
    from .answers import json_default

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=json_default))
    os.replace(tmp, path)


def image_set(model, data: Optional[str], split: str = "val", workers: int = 2):
    """The images a statistics pass reads for `model` (a LoadedModel): its own test set (data None or
    "test") or an image folder ("imagefolder:PATH", its `split`) -> (workload with
    test_batches/thumbnail/n_test, file paths or None, data description)."""
    from ponderscope.core.workloads import FolderClassification, checkpoint_test_data, no_test_set

    card = model.card
    if data is None or data == "test":
        missing = no_test_set(card.data)
        if missing:
            raise AnalysisError(f"{missing}: give --data imagefolder:PATH")
        return checkpoint_test_data(card), None, card.dataset
    if not data.startswith("imagefolder:"):
        raise AnalysisError(f"--data must be imagefolder:PATH or test (the model's own test set), not {data!r}")
    if card.data["task"]["name"] != "classify":
        raise AnalysisError(f"{card.model} is not an image classifier")
    try:
        workload = FolderClassification(data, torch.device("cpu"), {"preprocess": card.preprocess, "workers": workers, "classes": card.classes},
                                        test_only=True)
    except (OSError, ValueError) as error:
        raise AnalysisError(str(error)) from None
    if split == "train":
        workload.folder.test = workload.folder.train  # the analysed split is the one read as "test"
    elif split == "all":  # a folder of class folders with no train/val split: every image
        workload.folder.test = sorted(workload.folder.train + workload.folder.test)
    elif split != "val":
        raise AnalysisError(f"--split must be val, train or all, not {split!r}")
    return workload, [path for path, _ in workload.folder.test], f"{data} ({workload.folder.layout}, {split})"


def read_analysis(folder: str | os.PathLike) -> tuple[dict, dict]:
    """An analysis folder -> (manifest, result); ValueError if it is not a finished one."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        result = json.loads((folder / ANALYSIS_FILE).read_text())
    except FileNotFoundError as error:
        raise ValueError(f"{folder} is not a finished analysis ({Path(error.filename).name} is missing; run ponderscope analyze)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder}: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(result, dict) or "per_class" not in result or "weights_sha256" not in manifest:
        raise ValueError(f"{folder} does not hold a ponderscope analysis")
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"{folder} was written by another version of ponderscope analyze (schema {manifest.get('schema')}, this one reads {SCHEMA}): "
                         "run ponderscope analyze again into a new --out")
    return manifest, result
