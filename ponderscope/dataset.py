"""What the Dataset view shows, over any set of images: one record per image, then the summary.

    records = image_records(model.trace, workload.test_batches(250))     # per image, streaming
    result = summarize(records, classes, thumbnail, layer_names)         # per class, histograms, extremes

The server's dataset jobs (the bundled test sets) and `ponderscope analyze` (an image folder of
any size, sharded, resumable, under torchrun) both run these two functions; the page draws the
result the same way whichever computed it.

`ponderscope analyze CHECKPOINT --data imagefolder:PATH --out DIR` writes into DIR:
    manifest.json             what is analysed (weights hash, data, split, images, shard size)
    shards/NNNNNN.safetensors the records of SHARD_SIZE consecutive images, each written whole
    analysis.json             the summary (rank 0, once every shard is there), as the view shows it
    images.csv                the per-image numbers (path, label, prediction, FLOPs, ponder, layers)
A killed run keeps its finished shards and computes only the missing ones when started again.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import load_file, save_file

EXTREMES = 8  # least and most costly images shown
SHARD_SIZE = 1000
ANALYSIS_FILE = "analysis.json"
SCHEMA = 1


# ------------------------------------------------------------------------------ per-image records
def image_records(forward: Callable, batches: Iterable, on_batch: Optional[Callable[[int], None]] = None,
                  stopping: Optional[Callable[[], bool]] = None) -> dict[str, torch.Tensor]:
    """Run `forward` (images -> Trace) over (indices, images, labels) batches; -> per image:
    index, label, pred, correct, flops (executed / dense), and where the model has them ponder
    (mean ponder cost, summed over blocks: Trace.mean_ponder) and executed ([images, layers] 0/1,
    ConvNet-AIG); plus dense_flops."""
    columns: dict[str, list[torch.Tensor]] = {}
    dense = None
    for indices, images, labels in batches:
        if stopping is not None and stopping():
            raise RuntimeError("stopped")
        with torch.no_grad():
            trace = forward(images)
        dense = float(trace.dense_flops)
        pred = trace.logits.argmax(-1).cpu()
        row = {"index": torch.as_tensor(indices).long(), "label": labels.cpu().long(), "pred": pred,
               "flops": (trace.flops.detach().double().cpu() / dense)}
        if trace.blocks:
            row["ponder"] = trace.mean_ponder().detach().double().cpu()
        if trace.executed is not None:
            row["executed"] = trace.executed.detach().to(torch.uint8).cpu()
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
        if on_batch is not None:
            on_batch(len(labels))
    records = {key: torch.cat(values) for key, values in columns.items()}
    if records:
        records["correct"] = (records["pred"] == records["label"]).to(torch.uint8)
        records["dense_flops"] = torch.tensor([dense], dtype=torch.float64)
    return records


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
              layer_names: Callable[[int], list[str]], model_id: str = "") -> dict:
    """Records -> the Dataset view's numbers: overall and per-class accuracy, FLOPs and ponder,
    histograms, the EXTREMES least and most costly images (ranked by ponder where the model has
    one, else by FLOPs; `thumbnail(index)` draws them), and for gated models the histogram of
    executed layers and the class x layer execution rates."""
    from ponderscope.server.imaging import png_data_url

    labels, correct, flops = records["label"], records["correct"].bool(), records["flops"]
    ponder, executed = records.get("ponder"), records.get("executed")
    per_class = []
    for c, name in enumerate(classes):
        index = labels == c
        some = bool(index.any())
        per_class.append({
            "class": name,
            "count": int(index.sum()),
            "accuracy": float(correct[index].double().mean()) if some else None,
            "mean_flops_ratio": float(flops[index].mean()) if some else None,
            "mean_ponder": float(ponder[index].mean()) if ponder is not None and some else None,
        })
    score = ponder if ponder is not None else flops
    order = torch.argsort(score, stable=True)

    def describe(position: int) -> dict:
        index = int(records["index"][position])
        return {"index": index, "label": int(labels[position]), "class": classes[int(labels[position])],
                "flops_ratio": float(flops[position]), "ponder": float(ponder[position]) if ponder is not None else None,
                "image": png_data_url(thumbnail(index))}

    result = {
        "model": model_id,
        "classes": list(classes),
        "examples": int(len(labels)),
        "accuracy": float(correct.double().mean()),
        "flops_ratio": float(flops.mean()),
        "mean_ponder": float(ponder.mean()) if ponder is not None else None,
        "dense_flops": float(records["dense_flops"][0]),
        "per_class": per_class,
        "ponder_histogram": _histogram(ponder) if ponder is not None else None,
        "flops_histogram": _histogram(flops),
        "least": [describe(int(i)) for i in order[:EXTREMES]],
        "most": [describe(int(i)) for i in order.flip(0)[:EXTREMES]],
        "executed_layers_histogram": None,
        "class_layer_rates": None,
        "layers": None,
    }
    if executed is not None:
        executed = executed.float()
        counts = executed.sum(1)
        n_layers = executed.shape[1]
        result["executed_layers_histogram"] = {"edges": list(range(n_layers + 2)),
                                               "counts": [int((counts == k).sum()) for k in range(n_layers + 1)]}
        result["class_layer_rates"] = [[float(v) for v in executed[labels == c].mean(0)] if bool((labels == c).any()) else [None] * n_layers
                                       for c in range(len(classes))]
        result["layers"] = layer_names(n_layers)
        result["layer_rates"] = [float(v) for v in executed.mean(0)]
    return result


# ------------------------------------------------------------------------------ ponderscope analyze
class AnalysisError(ValueError):
    """An analysis that cannot run as asked (the message says why)."""


def write_json(path: Path, data) -> None:
    """Write `data` as JSON to `path` whole or not at all (a temporary file, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def image_set(model, data: Optional[str], split: str = "val", workers: int = 2):
    """-> (workload with test_batches/thumbnail/n_test, file paths or None, data description)."""
    from ponderscope.training.workloads import FolderClassification, checkpoint_test_data, no_test_set

    card = model.entry.card
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


def analyze(checkpoint: str, out: str, data: Optional[str] = None, split: str = "val", device: str = "auto", batch_size: int = 64,
            workers: int = 4, shard_size: int = SHARD_SIZE, limit: Optional[int] = None, progress: bool = True,
            command: str = "") -> Optional[Path]:
    """Compute the Dataset view of `checkpoint` over `data` into `out` (see the module's doc).
    Under torchrun, shard k is computed by rank k mod world and rank 0 merges; -> the
    analysis.json path on rank 0, None on the other ranks."""
    from ponderscope.training.distributed import Processes

    processes = Processes.start(device)
    return processes.run(lambda: _analyze(processes, checkpoint, out, data, split, batch_size, workers, shard_size, limit, progress, command))


def _analyze(processes, checkpoint, out, data, split, batch_size, workers, shard_size, limit, progress, command):
    from ponderscope.server.analysis import gate_names

    from .notebook import load

    model = load(checkpoint, device=str(processes.device))
    if model.kind != "image":
        raise AnalysisError(f"{model.id} is a {model.kind} model; analyze is for image classifiers")
    workload, paths, described = image_set(model, data, split, workers)
    n = workload.n_test if limit is None else min(limit, workload.n_test)
    out_dir = Path(out)
    shards = out_dir / "shards"
    command = processes.launch_command(command)
    manifest = {"schema": SCHEMA, "checkpoint": str(model.path), "model": model.card["model"],
                "weights_sha256": model.entry.weights_sha256, "data": data or "test", "split": split,
                "described": described, "images": n, "shard_size": shard_size}
    if processes.main:
        shards.mkdir(parents=True, exist_ok=True)
        path = out_dir / "manifest.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if {k: old.get(k) for k in manifest} != manifest:
                changed = [k for k in manifest if old.get(k) != manifest[k]]
                raise AnalysisError(f"{out_dir} holds an analysis of other settings ({', '.join(changed)} differ); choose another --out")
        else:
            write_json(path, manifest)
    processes.barrier()

    mine = [k for k in range((n + shard_size - 1) // shard_size) if k % processes.world == processes.rank]
    todo = [k for k in mine if not (shards / f"{k:06d}.safetensors").is_file()]
    images_todo = sum(min(n, (k + 1) * shard_size) - k * shard_size for k in todo)
    bar = None
    if progress and processes.main:
        from tqdm import tqdm

        label = f"{model.id}" + (f" (rank 0 of {processes.world})" if processes.world > 1 else "")
        bar = tqdm(total=images_todo, desc=label, unit="img", dynamic_ncols=True, mininterval=1.0)
        if len(todo) < len(mine):
            bar.write(f"{len(mine) - len(todo)} of this rank's {len(mine)} shards were already done; computing the rest")
    started = time.time()
    device = processes.device
    for k in todo:
        indices = range(k * shard_size, min(n, (k + 1) * shard_size))
        records = image_records(lambda x: model.module.trace(x.to(device)), workload.test_batches(batch_size, indices=indices),
                                on_batch=bar.update if bar is not None else None)
        tmp = shards / f".{k:06d}.{os.getpid()}.tmp"
        save_file({key: value.contiguous() for key, value in records.items()}, str(tmp))
        os.replace(tmp, shards / f"{k:06d}.safetensors")  # a shard is there whole, or not at all
    if bar is not None:
        bar.close()
    elapsed = time.time() - started
    devices = processes.devices()
    processes.barrier()  # every shard is written
    if not processes.main:
        return None
    parts = [load_file(str(shards / f"{k:06d}.safetensors")) for k in range((n + shard_size - 1) // shard_size)]
    records = merge_records(parts)
    classes = model.entry.card.classes or workload.classes
    result = summarize(records, classes, workload.thumbnail, lambda layers: gate_names(model.module, layers), model.id)
    result["source"] = {"data": described, "images": n, "world_size": processes.world, "devices": devices,
                        "seconds": round(elapsed, 1), "command": command, "computed_by": "ponderscope analyze"}
    write_json(out_dir / ANALYSIS_FILE, result)
    _write_images_csv(out_dir / "images.csv", records, classes, paths)
    return out_dir / ANALYSIS_FILE


def _write_images_csv(path: Path, records: dict, classes: list[str], paths: Optional[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "class", "prediction", "correct", "flops_ratio", "ponder", "executed_layers"])
        ponder, executed = records.get("ponder"), records.get("executed")
        for row in range(len(records["index"])):
            index, label, pred = int(records["index"][row]), int(records["label"][row]), int(records["pred"][row])
            writer.writerow([index, paths[index] if paths else "", label, classes[label], classes[pred] if pred < len(classes) else pred,
                             int(records["correct"][row]), f"{float(records['flops'][row]):.6f}",
                             f"{float(ponder[row]):.6f}" if ponder is not None else "",
                             "".join(str(int(v)) for v in executed[row]) if executed is not None else ""])
    os.replace(tmp, path)


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
    return manifest, result
