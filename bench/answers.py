"""How many bytes an image answer costs, old and new code side by side (issue 21, item 1).

    .venv/bin/python -m bench.answers                 # this checkout against the v0.2 commit; writes bench/answers_results.md + README
    .venv/bin/python -m bench.answers --baseline REV --no-write

Each tree (the baseline is checked out with `git worktree` into a temporary folder) runs in its
own process, with its own code on the path, the same requests, the same images:
  - an ImageNet-layout SACT network imported from the SACT authors' TensorFlow format
    (`ponderscope import sact-tf` of tests/fixtures/sact_tf/imagenet_sact: their ResNet layout with
    strides 4, 8, 16, 32, so its maps have the ResNet-101's grids; fewer and narrower units, which
    changes no array's size), on one 640x480 JPEG uploaded once: the answer at `native` resolution
    and at the training size (224);
  - the bundled Fashion-MNIST SACT ResNet-32 on test sample 0.
A request is the page's: POST /api/models/ID/image with {"image": hash} or {"sample": 0} (plus
"resolution"). "JSON" is the answer's body; "on the wire" is what the page receives: the body as
the server sends it to a browser (Accept-Encoding: gzip; the old server sends it as it is). The
new answers name their input image by URL: that PNG is fetched once per image (its size is listed).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "answers_results.md"
BASELINE = "0e5a4cf"  # v0.2, before issue 20 and 21
TARGETS = {"imagenet_native": 300_000, "imagenet_train": 100_000, "fmnist": 15_000}

CHILD = r'''
import gzip, io, json, os, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(os.getcwd())
new = (root / "ponderscope" / "core").is_dir()
if new:
    from ponderscope.server.app import create_app
else:
    from server.app import create_app
from fastapi.testclient import TestClient

work = Path(tempfile.mkdtemp())
subprocess.run([sys.executable, "-m", "ponderscope", "import", "sact-tf", str(root / "tests/fixtures/sact_tf/imagenet_sact"),
                "--model", "sact_resnet20", "--out", str(work / "ckpt" / "imagenet_sact")], check=True, capture_output=True)
os.symlink(root / "checkpoints" / "fmnist_sact_resnet32", work / "ckpt" / "fmnist_sact_resnet32")
rng = np.random.default_rng(0)  # a photo-like 640x480: smooth colour fields and texture
y, x = np.mgrid[0:480, 0:640] / 480.0
photo = np.stack([np.sin(3 * x + 1) * 60 + 120, np.cos(2 * y) * 50 + 110, np.sin(4 * x * y) * 40 + 100], -1)
photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
jpeg = io.BytesIO(); Image.fromarray(photo).save(jpeg, format="JPEG", quality=90)
out = {}
with TestClient(create_app([work / "ckpt"], device="cpu", cache_dir=work / "cache")) as client:
    digest = client.post("/api/images", files={"file": ("photo.jpg", jpeg.getvalue(), "image/jpeg")}).json()["hash"]
    asks = {"imagenet_native": ("imagenet_sact", {"image": digest, "resolution": "native"}),
            "imagenet_train": ("imagenet_sact", {"image": digest}),
            "fmnist": ("fmnist_sact_resnet32", {"sample": 0})}
    for name, (model, body) in asks.items():
        answer = client.post(f"/api/models/{model}/image", json=body, headers={"Accept-Encoding": "gzip"})
        assert answer.status_code == 200, answer.text[:300]
        raw = answer.content  # decompressed by the client
        sent = gzip.compress(raw, 5) if answer.headers.get("content-encoding") == "gzip" else raw
        data = answer.json()
        shown = data["input"]["image"] if data["input"]["image"].startswith("/") else None
        image_bytes = len(client.get(shown).content) if shown else 0
        maps = data.get("ponder") or {}
        out[name] = {"json": len(raw), "wire": len(sent), "image_url_bytes": image_bytes,
                     "total_grid": [len(maps.get("total", [])), len((maps.get("total") or [[]])[0])]}
print(json.dumps(out))
'''


def measure(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"bench.answers: the run in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(old: dict, new: dict, baseline: str) -> str:
    label = {"imagenet_native": "ImageNet-layout SACT, 640x480 JPEG, `native`", "imagenet_train": "the same image at the training size (224)",
             "fmnist": "Fashion-MNIST SACT ResNet-32, test sample 0"}
    lines = [f"Command: `python -m bench.answers` (baseline {baseline}, v0.2, against this checkout; one process per tree, same requests).", "",
             "| answer | old: on the wire | new: JSON | new: on the wire (gzip) | target | total map sent on | input image, fetched once |",
             "|---|---|---|---|---|---|---|"]
    for key, name in label.items():
        o, n = old[key], new[key]
        ok = ("met" if n["wire"] <= TARGETS[key] else "missed") + ("" if n["json"] <= TARGETS[key] else "; the JSON alone is over")
        lines.append(f"| {name} | {o['wire'] / 1000:,.1f} KB | {n['json'] / 1000:,.1f} KB | {n['wire'] / 1000:,.1f} KB | "
                     f"<= {TARGETS[key] // 1000} KB ({ok}) | {n['total_grid'][0]}x{n['total_grid'][1]} (old: {o['total_grid'][0]}x{o['total_grid'][1]}) | "
                     f"{n['image_url_bytes'] / 1000:,.1f} KB |")
    lines += ["", "The target is met as the page receives the answer (gzip). How far gzip shrinks it depends on the maps: this "
              f"imported fixture network's are smoother than a trained network's: its native answer shrinks "
              f"{new['imagenet_native']['json'] / new['imagenet_native']['wire']:.1f}x, the bundled Fashion-MNIST SACT's "
              f"{new['fmnist']['json'] / new['fmnist']['wire']:.1f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.answers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the old code: a git revision of this repository")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.baseline], cwd=ROOT, check=True, capture_output=True)
        try:
            old = measure(old_tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    new = measure(ROOT)
    text = table(old, new, args.baseline)
    print(text)
    if not args.no_write:
        from ponderscope.readme import replace_section

        RESULTS.write_text("# Answer sizes: old and new code side by side\n\n" + text)
        replace_section("answers", text)


if __name__ == "__main__":
    main()
