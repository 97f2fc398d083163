"""Image folders read lazily (ponderscope/core/imagefolder.py) and `ponderscope analyze` over them
(ponderscope/analyze.py): splits, the card's preprocessing, the per-step batches of every rank,
and an analysis that is checked against a plain loop over the files and survives being killed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ponderscope.models import create_model, save_checkpoint
from ponderscope.core.imaging import prepare
from ponderscope.core.imagefolder import ImageFolder, StepBatches, TrainImages, random_resized_crop

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, per_class: int, size=(24, 20), split=True) -> Path:
    rng = np.random.default_rng(1)
    for part, count in ((("train", per_class), ("val", per_class)) if split else ((".", per_class),)):
        for c, name in enumerate(("apple", "bee", "cat")):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = (rng.random((size[0], size[1], 3)) * 90).astype(np.uint8)
                pixels[..., c] += 140
                Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return root


def tiny_checkpoint(path: Path, preprocess: dict) -> Path:
    torch.manual_seed(0)
    model = create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=3, num_classes=3)
    card = {"task": {"name": "classify"}, "dataset": "imagefolder:/elsewhere", "classes": ["apple", "bee", "cat"], "preprocess": preprocess,
            "config": {"data_options": {"channels": 3}}}
    save_checkpoint(model, path, card)
    return path


PREPROCESS = {"input_size": [16, 16], "channels": 3, "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3],
              "resize": "shorter_then_center_crop", "resize_shorter": 18}


def test_splits_of_a_train_val_folder_and_of_a_plain_one(tmp_path):
    folder = ImageFolder.open(make_folder(tmp_path / "tv", 4))
    assert folder.layout == "train/val" and folder.classes == ["apple", "bee", "cat"]
    assert len(folder.train) == len(folder.test) == 12
    assert [label for _, label in folder.test] == [0] * 4 + [1] * 4 + [2] * 4
    plain = ImageFolder.open(make_folder(tmp_path / "plain", 10, split=False))
    assert len(plain.test) == 3 and len(plain.train) == 27  # a seeded 10% held out
    assert not {p for p, _ in plain.test} & {p for p, _ in plain.train}
    assert ImageFolder.open(tmp_path / "plain").test == plain.test  # the same images every time


def test_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder.open(tmp_path / "empty")
    (tmp_path / "empty" / "nothing_here").mkdir()
    with pytest.raises(ValueError, match="nothing_here"):
        ImageFolder.open(tmp_path / "empty")
    root = make_folder(tmp_path / "extra", 2)
    (root / "val" / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "dog" / "0.png")
    with pytest.raises(ValueError, match="classes that train lacks"):
        ImageFolder.open(root)


def test_random_resized_crop_of_the_whole_image_is_a_resize():
    """With scale (1, 1) and the image's own aspect ratio the crop is the whole image: the result
    is Pillow's resize of it (an independent computation)."""
    import random

    image = Image.fromarray((np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3))
    crop = random_resized_crop(image, (12, 16), random.Random(0), scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    assert np.array_equal(np.asarray(crop), np.asarray(image.resize((16, 12), Image.BILINEAR)))
    small = random_resized_crop(image, (8, 8), random.Random(5))
    assert small.size == (8, 8)


def test_training_crops_depend_on_seed_epoch_and_image_only(tmp_path):
    folder = ImageFolder.open(make_folder(tmp_path, 3))
    images = TrainImages(folder.train, PREPROCESS, seed=7)
    a, label = images[(4, 2)]
    assert a.shape == (3, 16, 16) and label == folder.train[4][1]
    assert torch.equal(a, TrainImages(folder.train, PREPROCESS, seed=7)[(4, 2)][0])  # any worker, any rank
    assert not torch.equal(a, images[(4, 3)][0])  # another epoch, another crop


def test_ranks_share_each_step_batch_and_resuming_skips_to_the_step():
    n, batch, steps = 50, 8, 14  # 6 steps per epoch: crosses two epoch boundaries
    single = [sorted(b) for b in StepBatches(n, batch, 0, steps, seed=3)]
    assert len(single) == steps and all(len(b) == batch for b in single)
    ranks = [list(StepBatches(n, batch, 0, steps, seed=3, rank=r, world=2)) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == single
    assert all(len(b) == 4 for b in ranks[0])
    assert [sorted(b) for b in StepBatches(n, batch, 9, steps, seed=3)] == single[9:]
    epochs = {epoch for b in single for _, epoch in b}
    assert epochs == {0, 1, 2}
    first_epoch = [i for b in single[:6] for i, _ in b]
    assert len(set(first_epoch)) == 48  # without replacement within an epoch
    with pytest.raises(ValueError, match="multiple"):
        StepBatches(n, 9, 0, 1, seed=0, world=2)


def plain_loop(checkpoint: Path, folder: Path) -> dict:
    """The model over the val files, one by one, as an upload would be prepared."""
    from ponderscope.models import load_checkpoint

    model = load_checkpoint(checkpoint)
    card = json.loads((checkpoint / "card.json").read_text())
    correct, flops, ponder = [], [], []
    classes = sorted(p.name for p in (folder / "val").iterdir())
    for label, name in enumerate(classes):
        for path in sorted((folder / "val" / name).iterdir()):
            x, _ = prepare(Image.open(path).convert("RGB"), card["preprocess"])
            with torch.no_grad():
                trace = model.trace(x)
            correct.append(int(trace.logits.argmax(-1)) == label)
            flops.append(float(trace.flops[0]) / float(trace.dense_flops))
            ponder.append(float(trace.mean_ponder()[0]))
    return {"accuracy": float(np.mean(correct)), "flops_ratio": float(np.mean(flops)), "mean_ponder": float(np.mean(ponder)), "examples": len(correct)}


def test_analyze_matches_a_plain_loop_over_the_files(tmp_path):
    from ponderscope.analyze import AnalysisError, analyze

    folder = make_folder(tmp_path / "data", 6, size=(22, 30))
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", PREPROCESS)
    path = analyze(str(checkpoint), str(tmp_path / "out"), data=f"imagefolder:{folder}", device="cpu", workers=0, shard_size=5, progress=False)
    result = json.loads(path.read_text())
    expected = plain_loop(checkpoint, folder)
    assert result["examples"] == expected["examples"] == 18
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-7)  # reduced in float32, as the cards are
    assert result["flops_ratio"] == pytest.approx(expected["flops_ratio"], rel=1e-6)
    assert result["mean_ponder"] == pytest.approx(expected["mean_ponder"], rel=1e-5)
    assert [c["count"] for c in result["per_class"]] == [6, 6, 6]
    assert len(result["least"]) == 8 and result["least"][0]["image"].startswith("data:image/png;base64,")
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == [f"{k:06d}.safetensors" for k in range(4)]
    rows = (tmp_path / "out" / "images.csv").read_text().splitlines()
    assert len(rows) == 19 and rows[1].split(",")[1].endswith("val/apple/000.png")

    # the same folder with other settings is refused, and nothing of the first analysis is touched
    before = path.read_bytes()
    with pytest.raises(AnalysisError, match="other settings"):
        analyze(str(checkpoint), str(tmp_path / "out"), data=f"imagefolder:{folder}", split="train", device="cpu", workers=0, shard_size=5, progress=False)
    assert path.read_bytes() == before


def test_a_killed_analysis_continues_where_it_stopped(tmp_path):
    folder = make_folder(tmp_path / "data", 40, size=(20, 20))
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", PREPROCESS)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ponderscope", "analyze", str(checkpoint), "--data", f"imagefolder:{folder}", "--out", str(out),
               "--device", "cpu", "--workers", "0", "--shard-size", "4", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "shards").glob("0*.safetensors")):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("0*.safetensors")}
    assert 1 <= len(kept) < 30 and not (out / "analysis.json").exists()

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in kept} == kept  # not recomputed
    assert len(list((out / "shards").glob("0*.safetensors"))) == 30
    result = json.loads((out / "analysis.json").read_text())
    expected = plain_loop(checkpoint, folder)
    assert result["examples"] == 120 and result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-7)
    assert result["mean_ponder"] == pytest.approx(expected["mean_ponder"], rel=1e-5)


def test_a_sweep_and_a_lesion_over_an_image_folder(tmp_path):
    """ponderscope.sweep / lesion over a folder's val images (data="imagefolder:PATH"): the
    trained point is the plain loop's accuracy over those files."""
    import ponderscope as ps

    folder = make_folder(tmp_path / "data", 5, size=(20, 20))
    model = ps.load(tiny_checkpoint(tmp_path / "ckpt", PREPROCESS))
    points = ps.sweep(model, data=f"imagefolder:{folder}")
    expected = plain_loop(tmp_path / "ckpt", folder)
    trained = [p for p in points if p["trained"]]
    assert trained and all(p["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6) and p["examples"] == 15 for p in trained)
    assert {p["parameter"] for p in points} == {"threshold", "cap"}
    study = ps.lesion(model, data=f"imagefolder:{folder}", draws=1, ks=(1,))
    assert len(study["single"]) == 3 and study["examples"] == 15 and study["classes"] == ["apple", "bee", "cat"]


def test_folders_named_after_the_models_classes_get_their_labels(tmp_path):
    """A folder holding some of the model's classes, in another order, is scored against the
    right outputs; folders named otherwise keep their sorted positions only for as many classes."""
    root = make_folder(tmp_path / "sub", 2)  # apple, bee, cat
    folder = ImageFolder.open(root)
    folder.use_class_names(["zebra", "cat", "apple", "bee"])
    assert folder.classes == ["zebra", "cat", "apple", "bee"]
    assert sorted({label for _, label in folder.test}) == [1, 2, 3]
    assert all(label == 2 for path, label in folder.test if "/apple/" in path)
    synsets = ImageFolder.open(root)
    synsets.use_class_names(["first", "second", "third"])  # no name matches: sorted order, same count
    assert [label for _, label in synsets.test] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="none of the model's classes"):
        ImageFolder.open(root).use_class_names(["apple", "bee", "dog"])
    with pytest.raises(ValueError, match="sorted order cannot be"):
        ImageFolder.open(root).use_class_names(["one", "two"])


def test_an_image_folder_refuses_holdout(tmp_path):
    """data option holdout is for the in-memory data sets: a folder already holds out its val part."""
    from ponderscope.core.workloads import make_workload

    folder = make_folder(tmp_path / "f", per_class=3)
    with pytest.raises(ValueError, match="holdout is for the in-memory data sets"):
        make_workload({"name": "classify"}, f"imagefolder:{folder}", torch.device("cpu"), {"holdout": 10})
    assert make_workload({"name": "classify"}, f"imagefolder:{folder}", torch.device("cpu"), {}).classes
