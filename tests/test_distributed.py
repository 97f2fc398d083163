"""Training under torchrun (DDP, gloo on CPU) computes what one process does with the same global
batch, and a run stopped and resumed under torchrun ends where an uninterrupted one does."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN = ["-m", "ponderscope", "train", "--no-progress", "--device", "cpu"]


def make_folder(root: Path, per_class: int = 16, size: int = 20) -> Path:
    """Three classes of noisy JPEGs, each with one strong colour channel; train/ and val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = (rng.random((size, size, 3)) * 80).astype(np.uint8)
                pixels[..., c] += 120
                Image.fromarray(pixels).save(folder / f"{k}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"))


def write_config(path: Path, folder: Path, **changes) -> Path:
    config = {"model": "sact_resnet", "model_kwargs": {"depth": 8, "widths": [4, 8, 16]}, "task": {"name": "classify"},
              "dataset": f"imagefolder:{folder}", "data_options": {"channels": 3, "input_size": 16, "workers": 0},
              "steps": 6, "batch_size": 8, "lr": 0.05, "adaptive": {"tau": 0.01}, "log_every": 1, "save_every": 100, "seed": 3}
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


def run(args, torchrun: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = (TORCHRUN if torchrun else [sys.executable]) + TRAIN + args
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_processes_match_one_with_the_same_global_batch_and_resume(folder, tmp_path):
    config = write_config(tmp_path / "sact.json", folder)
    run(["--config", str(config), "--out", str(tmp_path / "one")], torchrun=False)
    run(["--config", str(config), "--out", str(tmp_path / "two")], torchrun=True)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_difference(one, two) < 1e-5
    # the weights moved (the comparison is not of two untouched initialisations)
    from ponderscope.models import create_model

    torch.manual_seed(3)
    fresh = create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=3, num_classes=3).state_dict()
    assert max(float((fresh[k].double() - one[k].double()).abs().max()) for k in one if k in fresh and fresh[k].is_floating_point()) > 1e-3

    card = json.loads((tmp_path / "two" / "card.json").read_text())
    assert card["world_size"] == 2 and len(card["devices"]) == 2
    assert card["train_command"].startswith("torchrun") and "--nproc_per_node 2" in card["train_command"]
    assert card["data_layout"] == {"layout": "train/val", "train_images": 48, "test_images": 12}

    # stopped after 3 steps and resumed under torchrun: the uninterrupted result
    stopped = run(["--config", str(config), "--out", str(tmp_path / "resumed"), "--stop-after", "3"], torchrun=True)
    assert (tmp_path / "resumed" / "train_state" / "state.json").is_file() and not (tmp_path / "resumed" / "model.safetensors").exists()
    assert "continue with --resume" in stopped.stderr
    resumed = run(["--config", str(config), "--out", str(tmp_path / "resumed"), "--resume"], torchrun=True)
    assert "resumed from step 3" in resumed.stderr
    assert max_difference(weights(tmp_path / "resumed"), two) < 1e-6
    assert not (tmp_path / "resumed" / "train_state").exists()


def test_without_global_batch_norm_the_ranks_normalise_their_own_halves(folder, tmp_path):
    """The check above can fail: with per-rank batch norm (sync_bn false) the weights differ."""
    config = write_config(tmp_path / "local_bn.json", folder, sync_bn=False, steps=3)
    run(["--config", str(config), "--out", str(tmp_path / "one")], torchrun=False)
    run(["--config", str(config), "--out", str(tmp_path / "two")], torchrun=True)
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) > 1e-4


def test_aig_trains_under_torchrun_with_its_global_rate_loss(folder, tmp_path):
    """AIG's gates skip blocks per example; training runs every block masked, so DDP finds no
    unused parameter, and the target-rate loss reads the rate of the whole global batch."""
    config = write_config(tmp_path / "aig.json", folder, model="aig_resnet", model_kwargs={"depth": 8, "widths": [4, 8, 16]},
                          adaptive={"target_rate": 0.5, "lam": 2.0}, steps=4)
    run(["--config", str(config), "--out", str(tmp_path / "aig")], torchrun=True)
    card = json.loads((tmp_path / "aig" / "card.json").read_text())
    test = card["metrics"]["test"]
    assert card["world_size"] == 2 and len(test["layer_execution_rate"]) == 3
    assert all(0.0 <= rate <= 1.0 for rate in test["layer_execution_rate"]) and 0.0 < test["flops_ratio"] < 1.01  # (+ the gates' own cost)
    # rank 0 evaluated the whole test set: one process measuring the written checkpoint gets the card's numbers
    import ponderscope as ps

    measured = ps.studies.measure(ps.load(tmp_path / "aig"))
    assert measured["examples"] == test["examples"] == 12
    assert measured["layer_execution_rate"] == pytest.approx(test["layer_execution_rate"], abs=1e-6)
    assert measured["accuracy"] == pytest.approx(test["accuracy"], abs=1e-9) and measured["flops_ratio"] == pytest.approx(test["flops_ratio"], rel=1e-6)


def test_global_rate_and_batch_norm_equal_the_single_batch_statistics():
    """batch_mean and GlobalBatchNorm in one process are the plain statistics (the DDP path is
    checked end to end above)."""
    from ponderscope.models.batch_stats import batch_mean, use_global_batch_norm

    x = torch.randn(6, 4)
    assert torch.equal(batch_mean(x), x.mean(0))
    bn = torch.nn.BatchNorm2d(3)
    plain = torch.nn.BatchNorm2d(3)
    assert use_global_batch_norm(torch.nn.Sequential(bn)) == 1 and isinstance(bn, torch.nn.BatchNorm2d)
    images = torch.randn(4, 3, 5, 5)
    assert torch.allclose(bn(images), plain(images)) and torch.allclose(bn.running_var, plain.running_var)


SPLIT = 2  # on two ranks, rank 0 holds the first 2 examples of 6, rank 1 the other 4


def _two_ranks(rank: int, world: int, folder: str) -> None:
    """One of two gloo ranks (CPU) for the test below: its share of each batch -> rank{rank}.pt."""
    import torch.distributed as dist

    from ponderscope.models import create_model
    from ponderscope.models.batch_stats import batch_mean, use_global_batch_norm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    finished = False
    try:
        data = torch.load(f"{folder}/inputs.pt")
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)  # uneven shares: 2 and 4 rows
        weight = data["weight"].clone().requires_grad_()
        mean = batch_mean(torch.sigmoid(data["x"][rows] @ weight))
        loss = ((0.3 - mean) ** 2).sum()
        loss.backward()
        bn = torch.nn.BatchNorm2d(3)
        use_global_batch_norm(torch.nn.Sequential(bn))
        normalised = bn(data["maps"][rows])
        model = create_model("aig_resnet", depth=8, widths=(4, 8, 16), num_classes=3)
        model.load_state_dict(data["aig"])
        with torch.no_grad():
            trace = model.eval().trace(data["images"][rows])
        torch.save({"mean": mean.detach(), "loss": loss.detach(), "grad": weight.grad, "bn": normalised.detach(), "running_var": bn.running_var,
                    "rate": batch_mean(trace.gate_values), "aig_loss": model.adaptive_loss(trace, target_rate=0.5, lam=2.0)},
                   f"{folder}/rank{rank}.pt")
        finished = True
    finally:
        if finished:  # both ranks done before either tears the group down (else gloo's threads may abort: SIGABRT)
            dist.barrier()
        dist.destroy_process_group()


def test_batch_statistics_on_two_ranks_are_the_whole_batchs(tmp_path):
    """batch_mean, GlobalBatchNorm and AIG's execution rate per layer (with its target-rate loss) on
    two gloo ranks, each with its uneven share of a batch, equal one process's over the whole batch;
    the gradient through batch_mean, averaged over the ranks as DDP does, is the one process's."""
    from ponderscope.models import create_model
    from ponderscope.models.batch_stats import batch_mean

    from conftest import randomize_batchnorm

    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(6, 5, generator=generator), torch.randn(5, 4, generator=generator)
    maps = torch.randn(6, 3, 4, 4, generator=generator) * 2 + 1
    images = torch.randn(6, 3, 16, 16, generator=generator) + 2 * torch.randn(6, 3, 1, 1, generator=generator)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("aig_resnet", depth=8, widths=(4, 8, 16), num_classes=3)).eval()
    with torch.no_grad():
        for block in model.gated_blocks:  # gates near their decision: they differ between images
            torch.nn.init.normal_(block.gate.fc2.weight, std=0.3, generator=generator)
            block.gate.fc2.bias.copy_(torch.tensor([0.0, 0.1]))
    torch.save({"x": x, "weight": weight, "maps": maps, "images": images, "aig": model.state_dict()}, tmp_path / "inputs.pt")
    torch.multiprocessing.spawn(_two_ranks, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # one process, the whole batch
    weight.requires_grad_()
    mean = torch.sigmoid(x @ weight).mean(0)
    ((0.3 - mean) ** 2).sum().backward()
    bn = torch.nn.BatchNorm2d(3)
    normalised = bn(maps)
    with torch.no_grad():
        trace = model.trace(images)
    rate = trace.gate_values.mean(0)
    for r, share in enumerate((slice(0, SPLIT), slice(SPLIT, None))):
        got = ranks[r]
        assert torch.allclose(got["mean"], mean.detach(), atol=1e-6), r
        assert torch.allclose(got["bn"], normalised.detach()[share], atol=1e-5), r
        assert torch.allclose(got["running_var"], bn.running_var, atol=1e-6), r
        assert torch.equal(got["rate"], rate), r
        assert torch.allclose(got["aig_loss"], model.adaptive_loss(trace, target_rate=0.5, lam=2.0), atol=1e-7), r
    assert torch.allclose((ranks[0]["grad"] + ranks[1]["grad"]) / 2, weight.grad, atol=1e-6)
    # The checks can fail: a rank's own share (or the plain mean of the two shares' means) is not
    # the whole batch's, and some layers run for some images only.
    with torch.no_grad():
        first, second = torch.sigmoid(x[:SPLIT] @ weight).mean(0), torch.sigmoid(x[SPLIT:] @ weight).mean(0)
        assert not torch.allclose(first, mean, atol=1e-3) and not torch.allclose((first + second) / 2, mean, atol=1e-3)
    first, second = trace.gate_values[:SPLIT].mean(0), trace.gate_values[SPLIT:].mean(0)
    assert not torch.equal(first, rate) and not torch.equal((first + second) / 2, rate)
    assert ((rate > 0) & (rate < 1)).any()


def test_parity_under_torchrun_matches_one_process(tmp_path):
    """In-memory workloads (here parity, generated per step) give each rank its slice of the
    global batch of step s."""
    config = tmp_path / "parity.json"
    config.write_text(json.dumps({"model": "act_rnn", "model_kwargs": {"hidden_size": 16}, "task": {"name": "parity", "bits": 4},
                                  "dataset": "parity", "steps": 5, "batch_size": 16, "optimizer": "adam", "lr": 0.01,
                                  "adaptive": {"tau": 0.01}, "log_every": 1, "seed": 1}))
    run(["--config", str(config), "--out", str(tmp_path / "one")], torchrun=False)
    run(["--config", str(config), "--out", str(tmp_path / "two")], torchrun=True)
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5


def test_analyze_under_torchrun_splits_the_shards_and_merges_on_rank_0(folder, tmp_path):
    """Two ranks (each decoding in a DataLoader worker process) compute every other shard; rank
    0's merged result is the single process's, number for number."""
    config = write_config(tmp_path / "sact.json", folder, steps=2)
    run(["--config", str(config), "--out", str(tmp_path / "model")], torchrun=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    results = {}
    for name, prefix in (("one", [sys.executable]), ("two", TORCHRUN)):
        command = prefix + ["-m", "ponderscope", "analyze", str(tmp_path / "model"), "--data", f"imagefolder:{folder}", "--out",
                            str(tmp_path / name), "--device", "cpu", "--workers", "1", "--shard-size", "5", "--no-progress"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "analysis.json").read_text())
    one, two = results["one"], results["two"]
    assert two.pop("source")["world_size"] == 2 and one.pop("source")["world_size"] == 1
    assert one == two and one["examples"] == 12
    assert (tmp_path / "one" / "images.csv").read_text() == (tmp_path / "two" / "images.csv").read_text()


def test_bf16_autocast_trains_with_float32_weights(folder, tmp_path):
    """precision "bf16" runs the forward under bfloat16 autocast (meant for CUDA; CPU autocast
    takes the same path here); the weights and the checkpoint stay float32, and the result
    differs from the float32 run (the flag does something) while staying close to it."""
    config = write_config(tmp_path / "bf16.json", folder, steps=2, precision="bf16")
    run(["--config", str(config), "--out", str(tmp_path / "bf16")], torchrun=False)
    config32 = write_config(tmp_path / "fp32.json", folder, steps=2)
    run(["--config", str(config32), "--out", str(tmp_path / "fp32")], torchrun=False)
    low, full = weights(tmp_path / "bf16"), weights(tmp_path / "fp32")
    assert all(v.dtype in (torch.float32, torch.int64) for v in low.values())
    assert 1e-6 < max_difference(low, full) < 0.05
    assert json.loads((tmp_path / "bf16" / "card.json").read_text())["config"]["precision"] == "bf16"
