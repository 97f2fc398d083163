"""Tile sparsity and regrouped sub-batches beside the older paths (issue 21 item 5):
`.venv/bin/python -m bench.tiles`.

SACT-50 (`sact_resnet50`) and AIG-50 (`aig_resnet50`) at 224x224, random weights calibrated to a
FLOPs ratio (default 0.50) exactly as `python -m bench` does it (bench/__main__.py: SACT halting
conv weights x10 and one bisected halting bias; AIG gate weights N(0, 1) and per-block biases at a
quantile of the batch), timed side by side with the dense ResNet-50 on the same inputs:

    SACT  masked | sparse (rows) | tiles (models/tiles.py) | auto | dense NCHW | dense channels-last
    AIG   masked | sparse, synchronising | sparse, regrouped (models/regroup.py) | auto | dense ...

auto: the execution `plan_execution` picks for this batch size (ponderscope.core.execution, timed
here, fresh, on its synthetic inputs at the planned batch sizes `--plan-batches`, default the bench's
own), run as `LoadedModel.trace` runs it. On CPU the AIG's sparse path is the synchronising one
unless forced (auto runs it so); on CUDA the regrouped one is sparse's default.

The runs go in rounds, the order rotated from round to round; a time ratio is the median over
rounds of the ratio within a round (bench/README.md: this machine's speed drifts); ms: medians.
Batch 1 is four images one at a time ("4 x 1"). Goals (the issue's, for one H100 / H200 at batch
32): adaptive / dense <= 0.75 at FLOPs 0.50, and auto / masked <= 1 (within the noise).

    .venv/bin/python -m bench.tiles                                  # CPU, batch 1 and 32: bench/tiles_results.md
    .venv/bin/python -m bench.tiles --quick --batches 1 --out -      # a smoke test
    python -m bench.tiles --device cuda --batches 32 --out $OUT/bench_tiles_cuda.md --json $OUT/bench_tiles_cuda.json
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import rotated, setup_cpu

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "tiles_results.md"
GOAL_VS_DENSE = 0.75
CARD = SimpleNamespace(kind="image", data={"task": {"name": "classify"}},
                       preprocess={"input_size": [224, 224], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def runner(model, inputs, execution: str | None, device: str, regroup: bool | None = None):
    """A callable tracing every input batch in turn with `execution` in force (None: a dense
    model) and the AIG's regrouped route forced on / off (None: its default), then syncing."""
    from ponderscope.models import regroup as regroup_ops
    from ponderscope.models.sparse import executing

    def go():
        with torch.no_grad(), executing(execution), regroup_ops.regrouping(regroup):
            for x in inputs:
                model.trace(x)
        sync(device)
    return go


def ratio(times: dict, name: str, reference: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def prepared(family: str, target: float, images: torch.Tensor, device: str):
    """The random-weight model of `family` calibrated to `target` on `images` as bench/__main__
    does it; returns (model, FLOPs ratio on images)."""
    from bench.__main__ import AIG_GATE_WEIGHT_STD, SACT_LOCAL_WEIGHT_SCALE, calibrate_aig, calibrate_sact, flops_ratio
    from ponderscope import models

    torch.manual_seed(0)
    model = models.create_model({"sact": "sact_resnet50", "aig": "aig_resnet50"}[family]).eval().to(device)
    with torch.no_grad():
        if family == "sact":
            for block in model.blocks:
                for branch in block.halting:
                    branch.local_conv.weight.mul_(SACT_LOCAL_WEIGHT_SCALE)
            calibrate_sact(model, images, target)
        else:
            generator = torch.Generator().manual_seed(0)
            for block in model.gated_blocks:
                block.gate.fc2.weight.copy_(torch.empty_like(block.gate.fc2.weight, device="cpu").normal_(0.0, AIG_GATE_WEIGHT_STD, generator=generator))
            calibrate_aig(model, images, target)
        return model.to(memory_format=torch.channels_last), flops_ratio(model, images)


def plan_for(model, name: str, device: str, plan_batches) -> object:
    from ponderscope.core.execution import forget_plans, plan_execution

    forget_plans()
    cache = Path(tempfile.mkdtemp(prefix="ponderscope-bench-tiles-"))
    weights = hashlib.sha256(f"bench.tiles {name} {time.time()}".encode()).hexdigest()  # nothing cached
    return plan_execution(model, CARD, device, weights, "auto", cache, batches=tuple(plan_batches))


def measure(family: str, target: float, batches, repeats: dict, device: str, plan_batches) -> list[dict]:
    """One row per batch size: median ms of every path, ratios to dense, auto's choice."""
    from bench.__main__ import smooth_images
    from ponderscope import models

    generator = torch.Generator().manual_seed(0)
    images = {1: smooth_images(4, 224, generator).to(device), 32: smooth_images(32, 224, generator).to(device)}
    for batch in batches:
        if batch not in images:
            images[batch] = smooth_images(batch, 224, generator).to(device)
    torch.manual_seed(0)
    dense = models.create_model("resnet50").eval().to(device)
    dense_cl = models.create_model("resnet50").eval().to(device)
    dense_cl.load_state_dict(dense.state_dict())
    dense_cl = dense_cl.to(memory_format=torch.channels_last)
    rows = []
    for batch in batches:
        x = images[batch]
        model, flops = prepared(family, target, x, device)
        plan = plan_for(model, f"{family}-{target}-{batch}", device, plan_batches)
        chosen = plan.for_batch(batch)
        inputs = [x[i : i + 1] for i in range(len(x))] if batch == 1 else [x]
        inputs_cl = [t.contiguous(memory_format=torch.channels_last) for t in inputs]
        runs = {"masked": runner(model, inputs_cl, "masked", device)}
        if family == "sact":
            runs["sparse"] = runner(model, inputs_cl, "sparse", device)
            runs["tiles"] = runner(model, inputs_cl, "tiles", device)
        else:
            runs["sparse, synchronising"] = runner(model, inputs_cl, "sparse", device, regroup=False)
            runs["sparse, regrouped"] = runner(model, inputs_cl, "sparse", device, regroup=True)
        runs["auto"] = runner(model, inputs_cl, chosen.value, device)
        runs["dense NCHW"] = runner(dense, inputs, None, device)
        runs["dense CL"] = runner(dense_cl, inputs_cl, None, device)
        times = rotated(runs, repeats[1] if batch == 1 else repeats[32])
        reference = min(("dense NCHW", "dense CL"), key=lambda name: statistics.median(times[name]))
        paths = [name for name in runs if not name.startswith("dense")]
        rows.append({
            "family": family, "batch": batch, "target": target, "flops_ratio": flops,
            "ms": {name: statistics.median(t) * 1e3 for name, t in times.items()},
            "vs_dense": {name: ratio(times, name, reference) for name in paths},
            "auto_choice": chosen.value, "plan_ms": plan.timings_ms, "plan_note": plan.note,
            "auto_vs_masked": ratio(times, "auto", "masked"),
            "auto_vs_best": statistics.median(a / min(times[p][i] for p in paths if p != "auto") for i, a in enumerate(times["auto"])),
            "dense_reference": reference, "rounds": len(times["masked"]),
        })
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = []
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        paths = list(mine[0]["vs_dense"])
        lines.append(f"\n### {'SACT-50' if family == 'sact' else 'AIG-50'} (`{family}_resnet50`, 224x224, random weights) vs dense ResNet-50\n")
        lines.append("| batch | FLOPs ratio | " + " | ".join(f"{p} / dense" for p in paths) + " | auto chose | auto / masked | auto / best | "
                     + " | ".join(f"{p} ms" for p in paths) + " | dense ms (NCHW / CL) | best adaptive / dense (the GPU goal at batch 32: <= 0.75) |")
        lines.append("|" + " --- |" * (7 + 2 * len(paths)))
        for r in mine:
            best = min(r["vs_dense"][p] for p in paths)
            lines.append("| " + " | ".join([
                "4 x 1" if r["batch"] == 1 else str(r["batch"]), f"{r['flops_ratio']:.3f}",
                *[f"{r['vs_dense'][p]:.3f}" for p in paths], r["auto_choice"], f"{r['auto_vs_masked']:.3f}", f"{r['auto_vs_best']:.3f}",
                *[f"{r['ms'][p]:.1f}" for p in paths], f"{r['ms']['dense NCHW']:.1f} / {r['ms']['dense CL']:.1f}",
                ("met" if best <= GOAL_VS_DENSE else "NOT met") + f" ({best:.2f})"]) + " |")
        for r in mine:
            lines.append(f"\nauto at batch {r['batch']}: {r['plan_note']}")
    return lines


def section(report, device: str = "cpu", quick: bool = False, batches=(1, 32), target: float = 0.5, families=("sact", "aig")) -> list[dict]:
    """bench/__main__'s hook: the tables added to its report (report.add(line)); returns the rows."""
    repeats = {1: 2, 32: 1} if quick else ({1: 15, 32: 5} if device == "cpu" else {1: 30, 32: 20})
    rows = []
    for family in families:
        rows += measure(family, target, batches, repeats, device, plan_batches=batches)
    for line in table(rows):
        report.add(line)
    return rows


class _Printer:
    def __init__(self):
        self.lines = []

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SACT-50 / AIG-50: masked, sparse, tiles / regrouped, auto and dense, side by side")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: TF32 off, as bench --device cuda)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--target", type=float, default=0.5, help="FLOPs ratio the models are calibrated to")
    parser.add_argument("--families", default="sact,aig")
    parser.add_argument("--plan-batches", default=None, help="the batch sizes auto's plan is timed at (default: --batches)")
    parser.add_argument("--repeats", default=None, help="rounds at batch 1 and at larger batches, e.g. 15,5")
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier timings on the shared machine)")
    parser.add_argument("--out", default=None, help=f"markdown file (default on CPU, not --quick: {RESULTS.relative_to(ROOT)}; '-': none)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench.tiles: --device {args.device} asked, but torch {torch.__version__} sees no CUDA device: nothing measured", file=sys.stderr)
        return 2
    note = setup_cpu(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        note += f", {torch.cuda.get_device_name(args.device)} (TF32 off)"
    batches = [int(b) for b in args.batches.split(",")]
    plan_batches = [int(b) for b in args.plan_batches.split(",")] if args.plan_batches else batches
    if args.repeats:
        r1, r32 = (int(v) for v in args.repeats.split(","))
        repeats = {1: r1, 32: r32}
    else:
        repeats = {1: 2, 32: 1} if args.quick else ({1: 15, 32: 5} if args.device == "cpu" else {1: 30, 32: 20})
    report = _Printer()
    command = "python -m bench.tiles " + " ".join(argv if argv is not None else sys.argv[1:])
    report.add("# Tiles and regrouped sub-batches beside masked, sparse and dense\n")
    report.add(f"Command: `{command.strip()}` ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
               f"{platform.processor() or platform.machine()}, device {args.device}, {note}). Rounds: batch 1: {repeats[1]}, larger: "
               f"{repeats[32]}, every path once per round, the order rotated; ratios: median over rounds of the ratio within a round, "
               f"to the faster dense layout; ms: medians. auto: the plan timed fresh at batch sizes {plan_batches}.")
    started = time.time()
    rows = []
    for family in args.families.split(","):
        rows += measure(family, args.target, batches, repeats, args.device, plan_batches)
    for line in table(rows):
        report.add(line)
    report.add(f"\n(total {time.time() - started:.0f} s)")
    out = args.out if args.out is not None else (None if args.quick or args.device != "cpu" else str(RESULTS))
    if out and out != "-":
        Path(out).write_text("\n".join(report.lines) + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "device": args.device, "note": note, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
