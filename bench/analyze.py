"""`ponderscope analyze` at scale on this machine: `.venv/bin/python -m bench.analyze [--write]`.

A synthetic ImageFolder of grey 64x64 JPEGs (10 classes, made once in a scratch folder) is
analysed with the bundled Fashion-MNIST SACT ResNet-32 (its card resizes each image to 28x28):
1. peak memory vs folder size: `analyze` over 2,000 and over 20,000 images in a fresh process,
   peak RSS (VmHWM) of the main process and of its largest DataLoader worker; the target is a
   20,000-image peak within 20% of the 2,000-image one (nothing per image is kept but its record);
2. images/s with 1 and with 2 processes (torchrun, gloo), side by side, median of the repeats;
   the time is the ranks' compute time that analyze records (model loading and the merge apart),
   and the wall time of the whole command.
--write puts the tables into bench/analyze_results.md and the README's "Scale" section.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "fmnist_sact_resnet32"
RESULTS = ROOT / "bench" / "analyze_results.md"

# Runs `ponderscope analyze` in this process, then prints its peak RSS and its children's.
MEASURE = """
import json, resource, sys
from ponderscope.cli import main
main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"main_peak_kb": int(status["VmHWM"].split()[0]),
                  "worker_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def make_folder(root: Path, n: int, side: int = 64) -> Path:
    """n grey JPEGs in 10 class folders (a blob whose position depends on the class, plus noise)."""
    marker = root / f".complete-{n}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    for k in range(n):
        label = k % 10
        cy, cx = 12 + (label // 5) * 30 + rng.integers(-4, 5), 8 + (label % 5) * 12 + rng.integers(-3, 4)
        pixels = 200 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60.0) + rng.normal(0, 12, (side, side))
        folder = root / "val" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k:06d}.jpg", quality=85)
    for label in range(10):  # analyze reads val/; train/ only has to exist
        (root / "train" / f"class{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(next((root / "val" / f"class{label}").iterdir()), root / "train" / f"class{label}" / "0.jpg")
    marker.touch()
    return root


def run_analyze(folder: Path, out: Path, processes: int, workers: int, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = ["analyze", str(CHECKPOINT), "--data", f"imagefolder:{folder}", "--out", str(out), "--device", "cpu",
            "--workers", str(workers), "--batch-size", "250", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if processes == 1:
        command = [sys.executable, "-c", MEASURE] + args
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "ponderscope"] + args
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"analyze failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "analysis.json").read_text())
    measured = {"wall_s": wall, "compute_s": result["source"]["seconds"], "images": result["examples"], "accuracy": result["accuracy"]}
    if processes == 1:
        measured.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "ponderscope-bench-analyze"))
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--speed-images", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    lines = [f"Measured by `python -m bench.analyze` on {os.cpu_count()} CPU cores; model: bundled fmnist_sact_resnet32, "
             "synthetic grey 64x64 JPEG folders.", ""]

    memory = {}
    for n in (args.small, args.large):
        folder = make_folder(scratch / f"folder{n}", n)
        memory[n] = run_analyze(folder, scratch / f"out{n}", processes=1, workers=2, threads=2)
        print(f"{n} images: main peak {memory[n]['main_peak_kb'] / 1024:.0f} MB, worker peak {memory[n]['worker_peak_kb'] / 1024:.0f} MB", flush=True)
    small, large = memory[args.small], memory[args.large]
    growth = large["main_peak_kb"] / small["main_peak_kb"] - 1
    lines += ["Peak memory vs folder size (1 process, 2 DataLoader workers, batch 250):", "",
              "| images | main process peak RSS | largest worker peak RSS | images/s |", "|---|---|---|---|"]
    for n in (args.small, args.large):
        m = memory[n]
        lines.append(f"| {n:,} | {m['main_peak_kb'] / 1024:.0f} MB | {m['worker_peak_kb'] / 1024:.0f} MB | {m['images'] / m['compute_s']:.0f} |")
    verdict = "met" if abs(growth) <= 0.20 else "NOT met"
    lines += ["", f"{args.large:,} vs {args.small:,} images: main process peak {growth:+.1%} (target: within 20%: {verdict}).", ""]

    folder = make_folder(scratch / f"folder{args.speed_images}", args.speed_images)
    runs = {1: [], 2: []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine
        runs[1].append(run_analyze(folder, scratch / "speed1", processes=1, workers=1, threads=2))
        runs[2].append(run_analyze(folder, scratch / "speed2", processes=2, workers=1, threads=1))
    lines += [f"Images/s over {args.speed_images:,} images (median of {args.repeats}; 1 DataLoader worker per process; "
              "1 process with 2 torch threads, 2 processes with 1 each):", "",
              "| processes | images/s (compute) | images/s (whole command) |", "|---|---|---|"]
    rates = {}
    for p, measured in runs.items():
        compute = statistics.median(m["images"] / m["compute_s"] for m in measured)
        wall = statistics.median(m["images"] / m["wall_s"] for m in measured)
        rates[p] = compute
        lines.append(f"| {p} | {compute:.0f} | {wall:.0f} |")
    lines += ["", f"2 processes / 1 process: {rates[2] / rates[1]:.2f}x (compute). Accuracy of every run: "
              f"{sorted({round(m['accuracy'], 6) for ms in runs.values() for m in ms})} (the same images, whichever split).", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        RESULTS.write_text("# `ponderscope analyze` at scale\n\n" + text)
        from ponderscope.readme import replace_section

        if not replace_section("scale", text):
            print("README.md has no scale markers; not updated")
        print(f"wrote {RESULTS} and README.md")


if __name__ == "__main__":
    main()
