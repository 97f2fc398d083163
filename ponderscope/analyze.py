"""`ponderscope analyze CHECKPOINT --data imagefolder:PATH --out DIR`: the Dataset view's
statistics (ponderscope.core.statistics) over a folder of any size, sharded, resumable, under torchrun.

DIR holds:
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
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ponderscope.core.loaded import load
from ponderscope.core.statistics import (ANALYSIS_FILE, SCHEMA, SHARD_SIZE, AnalysisError, image_records, image_set, merge_records, model_names,
                                         summarize, write_json)


def analyze(checkpoint: str, out: str, data: Optional[str] = None, split: str = "val", device: str = "auto", batch_size: int = 64,
            workers: int = 4, shard_size: int = SHARD_SIZE, limit: Optional[int] = None, progress: bool = True,
            command: str = "", execution: str = "auto") -> Optional[Path]:
    """Compute the Dataset view of `checkpoint` over `data` into `out` (see the module's doc).
    Under torchrun, shard k is computed by rank k mod world and rank 0 merges; -> the
    analysis.json path on rank 0, None on the other ranks. execution: "auto" (the faster of sparse
    and masked on this device, ponderscope.core.execution), "sparse" or "masked"."""
    from ponderscope.core.execution import check_mode
    from ponderscope.training.distributed import Processes

    check_mode(execution)
    processes = Processes.start(device)
    return processes.run(lambda: _analyze(processes, checkpoint, out, data, split, batch_size, workers, shard_size, limit, progress, command,
                                          execution))


def _analyze(processes, checkpoint, out, data, split, batch_size, workers, shard_size, limit, progress, command, execution="auto"):
    model = load(checkpoint, device=str(processes.device), execution=execution)
    if model.kind != "image":
        raise AnalysisError(f"{model.id} is a {model.kind} model; analyze is for image classifiers")
    workload, paths, described = image_set(model, data, split, workers)
    n = workload.n_test if limit is None else min(limit, workload.n_test)
    out_dir = Path(out)
    shards = out_dir / "shards"
    command = processes.launch_command(command)
    manifest = {"schema": SCHEMA, "checkpoint": str(model.path), "model": model.card.model,
                "weights_sha256": model.weights_sha256, "data": data or "test", "split": split,
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
        records = image_records(lambda x, run=model.planned(): run.trace(x.to(device)), workload.test_batches(batch_size, indices=indices),
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
    classes = model.card.classes or workload.classes
    result = summarize(records, classes, workload.thumbnail, model_names(model.module), model.id)
    result.source = {"data": described, "images": n, "world_size": processes.world, "devices": devices,
                        "seconds": round(elapsed, 1), "command": command, "computed_by": "ponderscope analyze"}
    write_json(out_dir / ANALYSIS_FILE, result)
    _write_images_csv(out_dir / "images.csv", records, classes, paths)
    return out_dir / ANALYSIS_FILE


def _write_images_csv(path: Path, records: dict, classes: list[str], paths: Optional[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "class", "prediction", "correct", "flops_ratio", "ponder", "executed_layers", "exit"])
        ponder, executed, exited = records.get("ponder"), records.get("executed"), records.get("exited")
        dense = float(records["dense_flops"][0])
        for row in range(len(records["index"])):
            index, label, pred = int(records["index"][row]), int(records["label"][row]), int(records["pred"][row])
            writer.writerow([index, paths[index] if paths else "", label, classes[label], classes[pred] if pred < len(classes) else pred,
                             int(records["correct"][row]), f"{float(records['flops'][row]) / dense:.6f}",
                             f"{float(ponder[row]):.6f}" if ponder is not None else "",
                             "".join(str(int(v)) for v in executed[row]) if executed is not None else "",
                             int(exited[row].argmax()) + 1 if exited is not None else ""])  # the exit taken, 1 = the first
    os.replace(tmp, path)


