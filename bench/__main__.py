"""Real compute savings of sparse execution, measured: `.venv/bin/python -m bench`.

Every figure is a ratio of times measured side by side in one run (interleaved repeats: sparse,
masked, dense, sparse, masked, dense, ...; median), on CPU with one thread:

  * SACT / ConvNet-AIG ResNet-50 at 224x224, random weights, halting / gate biases calibrated so
    that ~50% and ~70% of the dense FLOPs run; batch 1 and 32. Time / time of the dense ResNet-50,
    beside FLOPs executed / dense FLOPs, for sparse and for masked execution.
  * The bundled Fashion-MNIST models (and the cluttered-MNIST SACT model) on real test images,
    against the bundled dense ResNet-32 (24, 48, 96) (a random-weight dense ResNet-20 for the
    cluttered model): batch 1 (16 images, one at a time) and batch 32.
  * The bundled ACT-LSTM byte LM on held-out text: bytes per second, sparse and masked, beside the
    mean ponder, and the bundled plain LSTM of the same size.
  * Execution planned per device (`auto`, ponderscope.core.execution): for every bundled checkpoint
    and the SACT / ConvNet-AIG ResNet-50 at 224x224, the plan made as `ps.load` / `serve` make it
    (timed on this machine, fresh), then sparse, masked (tiles for SACT) and what auto picked,
    side by side: auto's time / the fastest of them (target <= 1.05).
  * A-ViT and the early-exit ResNet-32 against their dense twins (bench/twins.py, issue 24): the
    trained checkpoints (or random-weight stand-ins, said in the table) on their test images,
    batch 1 and 32, sparse / masked / dense in rotated rounds, time ratio beside FLOPs ratio.
  * The Universal Transformer + ACT and Mixture-of-Depths byte LMs against their dense twins
    (bench/byte_twins.py, issue 25): held-out Jargon File windows of 128 bytes, batch 1 and 64,
    bytes per second and time ratio beside FLOPs ratio, the same way.

Writes the tables to bench/results.md (and prints them). Options: --quick (fewer repeats, for a
smoke test), --only sact,aig,bundled,rnn,auto,avit,early-exit,ut-act,mod. A run of `--only auto`, of
`--only avit,early-exit` or of `--only ut-act,mod` (or of several of them) replaces those sections
of bench/results.md (between their markers) and leaves the rest of the file as it was.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ponderscope import models
from bench.common import Report, bundled_images, dense_ms, interleaved, median, rotated, row, runner, setup_cpu, time_models
from ponderscope.readme import replace_section
from bench import byte_twins, twins

ROOT = Path(__file__).resolve().parents[1]
ALL_SECTIONS = "sact,aig,bundled,rnn,auto,avit,early-exit,ut-act,mod"
RESULTS = ROOT / "bench" / "results.md"
CHECKPOINTS = ROOT / "checkpoints"

# Random-weight SACT halting branches barely vary over positions (the conv weights are small);
# scaled up, the ponder maps vary over the image as trained ones do, and a bias sets the level.
SACT_LOCAL_WEIGHT_SCALE = 10.0
# Random-weight AIG gates: second-layer weights N(0, 1) so that the decision varies per image.
AIG_GATE_WEIGHT_STD = 1.0


def smooth_images(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Image-like random inputs: 14x14 noise upsampled (smooth regions) plus a little pixel noise."""
    low = torch.randn(batch, 3, 14, 14, generator=generator)
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False) + 0.1 * torch.randn(
        batch, 3, size, size, generator=generator)


@torch.no_grad()
def flops_ratio(model, x) -> float:
    trace = model.trace(x)
    return float(trace.flops.mean()) / trace.dense_flops


@torch.no_grad()
def calibrate_sact(model, x, target: float, steps: int = 14) -> float:
    """One halting bias for every branch, bisected so that FLOPs / dense FLOPs ~ target."""
    def set_bias(value):
        for block in model.blocks:
            for branch in block.halting:
                branch.local_conv.bias.fill_(value)

    low, high = -12.0, 12.0  # a higher bias halts sooner: fewer FLOPs
    for _ in range(steps):
        middle = (low + high) / 2
        set_bias(middle)
        low, high = (middle, high) if flops_ratio(model, x) > target else (low, middle)
    set_bias((low + high) / 2)
    return flops_ratio(model, x)


@torch.no_grad()
def calibrate_aig(model, x, target: float, passes: int = 3) -> float:
    """Per-block gate biases such that a fraction r of the batch runs every block, r bisected so
    that FLOPs / dense FLOPs ~ target. A block's decision depends on the blocks before it, so the
    biases are refitted over a few passes."""
    blocks = model.gated_blocks
    margins = {}
    hooks = [b.gate.fc2.register_forward_hook(lambda m, i, o, k=k: margins.__setitem__(k, o.flatten(1)))
             for k, b in enumerate(blocks)]

    def fit(rate):
        for _ in range(passes):
            model.trace(x)
            for k, block in enumerate(blocks):
                bias = block.gate.fc2.bias
                margin = margins[k][:, 1] - margins[k][:, 0] - (bias[1] - bias[0])  # run - skip, without bias
                cut = torch.quantile(margin, min(max(1.0 - rate, 0.0), 1.0))  # open iff margin > cut
                bias.copy_(torch.stack([cut, torch.zeros_like(cut)]))
        return flops_ratio(model, x)

    try:
        # Bisection on the rate (FLOPs grow with it), probing the target itself first; the biases
        # of the closest fit are kept (a refit from other biases would not land on the same point).
        low, high, rate = 0.0, 1.0, target
        best = (float("inf"), None)
        for _ in range(8):
            achieved = fit(rate)
            if abs(achieved - target) < best[0]:
                best = (abs(achieved - target), [b.gate.fc2.bias.clone() for b in blocks])
            if abs(achieved - target) < 0.005:
                break
            low, high = (low, rate) if achieved > target else (rate, high)
            rate = (low + high) / 2
        for block, bias in zip(blocks, best[1]):
            block.gate.fc2.bias.copy_(bias)
        return flops_ratio(model, x)
    finally:
        for hook in hooks:
            hook.remove()


# ------------------------------------------------------------------------------------ ImageNet


def imagenet_section(report: Report, family: str, repeats: dict, targets=(0.5, 0.7), batches=(1, 32), device: str = "cpu"):
    """Batch 1: four images, one at a time (a single image's halting pattern is a lottery);
    SACT: one halting bias fitted so that their mean FLOPs ratio is the target; AIG: the four
    images of the 32-image calibration batch nearest the target. Batch 32: one batch."""
    name = {"sact": "sact_resnet50", "aig": "aig_resnet50"}[family]
    slack = {"sact": 0.08, "aig": 0.10}[family]  # SACT: issue 21 item 4 (was 0.15)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dense = models.create_model("resnet50").eval().to(device)
    report.add(f"\n### {name}, 224x224, random weights (dense reference: resnet50){' on ' + device if device != 'cpu' else ''}\n")
    folded = family == "sact"  # also the dense network with its BNs folded, as sparse execution folds them
    report.add(row(["batch", "target FLOPs", "FLOPs ratio", "sparse time ratio", "masked time ratio",
                    "dense ms NCHW / CL", "sparse ms", "masked ms", f"goal: sparse <= FLOPs + {slack:.2f}"]
                   + (["dense ms, BNs folded", "sparse / dense BNs folded"] if folded else [])))
    report.add(row(["---"] * (11 if folded else 9)))
    images = {1: smooth_images(4, 224, generator).to(device), 32: smooth_images(32, 224, generator).to(device)}

    def line(batch, label, ratio, t, goal):
        report.add(row(["4 x 1" if batch == 1 else batch, label, f"{ratio:.3f}", f"**{t['sparse ratio']:.3f}**",
                        f"{t['masked ratio']:.3f}", dense_ms(t), f"{t['sparse'] * 1e3:.0f}", f"{t['masked'] * 1e3:.0f}", goal]
                       + ([f"{t['dense folded'] * 1e3:.0f}", f"{t['sparse / folded']:.3f}"] if folded else [])))

    def fresh_model():
        torch.manual_seed(0)  # the same random weights for every row
        return models.create_model(name).eval().to(device)

    def timed(model, x, batch):
        """Batch 1: the images one at a time; otherwise one batch. The adaptive model runs channels-last."""
        inputs = [x[i : i + 1] for i in range(len(x))] if batch == 1 else [x]
        return time_models(model.to(memory_format=torch.channels_last), dense, inputs, repeats[batch], folded_dense=folded)

    for batch in batches:
        for target in targets:
            model = fresh_model()
            with torch.no_grad():
                if family == "sact":
                    for block in model.blocks:
                        for branch in block.halting:
                            branch.local_conv.weight.mul_(SACT_LOCAL_WEIGHT_SCALE)
                    x = images[batch]
                    ratio = calibrate_sact(model, x, target)  # per-image FLOPs do not depend on the batch
                else:
                    for block in model.gated_blocks:
                        block.gate.fc2.weight.copy_(torch.empty_like(block.gate.fc2.weight, device="cpu").normal_(0.0, AIG_GATE_WEIGHT_STD, generator=generator))
                    calibrate_aig(model, images[32], target)
                    x = images[32]
                    if batch == 1:
                        trace = model.trace(x)
                        nearest = (trace.flops / trace.dense_flops - target).abs().argsort()[:4]
                        x = x[nearest.sort().values]
                    ratio = flops_ratio(model, x)  # AIG: a decision per image, independent of the batch
            t = timed(model, x, batch)
            goal = ("met" if t["sparse ratio"] <= ratio + slack else "NOT met") if (family == "aig" or batch == 1) else "(no goal)"
            line(batch, f"{target:.2f}", ratio, t, goal)
    # Control: nothing skipped (every unit runs everywhere / every gate open): what the adaptive
    # network costs over the dense one before it saves anything (halting branches and gates, the
    # bookkeeping; and the kernels chosen, which may beat the dense ones at some layers).
    for batch in (1,) if family == "sact" else batches:
        model = fresh_model()
        with torch.no_grad():
            if family == "sact":
                for block in model.blocks:
                    for branch in block.halting:
                        branch.local_conv.bias.fill_(-30.0)
            else:
                for block in model.gated_blocks:
                    block.gate.fc2.bias.copy_(torch.tensor([-30.0, 30.0]))
        x = images[batch]
        ratio = flops_ratio(model, x)
        t = timed(model, x, batch)
        line(batch, "(nothing halts)" if family == "sact" else "(all gates open)", ratio, t, "control")


# ------------------------------------------------------------------------------------ bundled


def bundled_section(report: Report, repeats: dict):
    report.add("\n### Bundled checkpoints on their own test images\n")
    report.add(row(["model", "input", "dense reference", "batch", "FLOPs ratio", "sparse time ratio",
                    "masked time ratio", "dense ms NCHW / CL", "sparse ms", "masked ms"]))
    report.add(row(["---"] * 10))
    fmnist_dense = models.load_checkpoint(CHECKPOINTS / "fmnist_resnet32")
    torch.manual_seed(0)
    cluttered_dense = models.create_model("resnet20", widths=(16, 32, 64), in_channels=1, num_classes=10).eval()
    setups = [("fmnist_sact_resnet32", fmnist_dense, "fmnist_resnet32"), ("fmnist_act_resnet32", fmnist_dense, "fmnist_resnet32"),
              ("fmnist_aig_resnet32", fmnist_dense, "fmnist_resnet32"),
              ("cluttered_sact_resnet20", cluttered_dense, "resnet20 (16, 32, 64), random")]
    for name, dense, dense_name in setups:
        path = CHECKPOINTS / name
        if not (path / "card.json").is_file():
            report.add(row([name, "checkpoint missing"] + [""] * 8))
            continue
        model = models.load_checkpoint(path).to(memory_format=torch.channels_last)
        try:
            images = bundled_images(model.card, 32)
        except Exception as error:  # a data source that is not installed
            report.add(row([name, f"data missing: {str(error).split('.')[0]}"] + [""] * 8))
            continue
        size = "x".join(str(s) for s in images.shape[-2:])
        for batch, inputs in ((1, [images[i : i + 1] for i in range(16)]), (32, [images])):
            with torch.no_grad():
                ratio = sum(float(model.trace(x).flops.sum()) for x in inputs) / (len(inputs) * len(inputs[0])) / model.trace(inputs[0]).dense_flops
            t = time_models(model, dense, inputs, repeats[batch])
            label = "16 x 1" if batch == 1 else "32"
            report.add(row([name, size, dense_name, label, f"{ratio:.3f}", f"**{t['sparse ratio']:.3f}**",
                            f"{t['masked ratio']:.3f}", dense_ms(t, 1), f"{t['sparse'] * 1e3:.1f}",
                            f"{t['masked'] * 1e3:.1f}"]))


# ------------------------------------------------------------------------------------ ACT-RNN


def rnn_section(report: Report, repeats: dict):
    from ponderscope.core import data

    report.add("\n### ACT-LSTM byte LM (checkpoints/jargon_act_lstm) on held-out Jargon File text\n")
    act = models.load_checkpoint(CHECKPOINTS / "jargon_act_lstm")
    plain = models.load_checkpoint(CHECKPOINTS / "jargon_lstm")
    try:
        _, held_out = data.split_text(data.load_text_corpus("jargon"))
    except data.DataSourceMissing as error:
        report.add(f"skipped: {error}")
        return
    stream = torch.tensor(list(held_out[: 64 * 100]), dtype=torch.long)
    report.add(row(["batch x bytes", "mean ponder N+R", "mean steps N", "plain LSTM B/s", "sparse B/s", "masked B/s",
                    "goal 0.8 x plain / ponder", "sparse / goal", "goal"]))
    report.add(row(["---"] * 9))
    for batch, n_batches in ((64, 1), (1, 4)):
        inputs = [stream[i * batch * 100 : (i + 1) * batch * 100].view(batch, 100) for i in range(n_batches)]
        with torch.no_grad():
            traces = [act.trace(x) for x in inputs]
        ponder = float(torch.cat([t.ponder.flatten() for t in traces]).mean())
        steps = float(torch.cat([t.steps.flatten().float() for t in traces]).mean())
        rounds = interleaved({"sparse": runner(act, inputs, "sparse"), "masked": runner(act, inputs, "masked"), "dense": runner(plain, inputs)}, repeats["rnn"])
        act.execution = "sparse"
        t = {name: median(times) for name, times in rounds.items()}
        n_bytes = batch * 100 * n_batches
        speed = {k: n_bytes / v for k, v in t.items()}
        goal = 0.8 * speed["dense"] / ponder
        report.add(row([f"{batch} x 100" + (f" ({n_batches} batches)" if n_batches > 1 else ""), f"{ponder:.3f}", f"{steps:.3f}",
                        f"{speed['dense']:.0f}", f"**{speed['sparse']:.0f}**", f"{speed['masked']:.0f}", f"{goal:.0f}",
                        f"{speed['sparse'] / goal:.2f}", "met" if speed["sparse"] >= goal else "NOT met"]))


# ------------------------------------------------------------------------------------ auto

AUTO_TARGET = 1.05  # auto's time / the fastest path it chooses from
AUTO_MIN_RUN_S = 0.2  # a timed run at least this long (short ones repeat their inputs)
AUTO_MARKERS = ("<!-- auto:start -->", "<!-- auto:end -->")
IMAGENET_CARD = {"kind": "image", "data": {"task": {"name": "classify"}},
                 "preprocess": {"input_size": [224, 224], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def planned_runner(model, batches, execution):
    """A no-argument callable that traces every batch in turn with `execution` in force for this
    call only (models/sparse.executing, as LoadedModel.trace runs it): the module is untouched."""
    from ponderscope.models.sparse import executing

    def go():
        with torch.no_grad(), executing(execution):
            for x in batches:
                model.trace(x)
        if batches[0].is_cuda:
            torch.cuda.synchronize()
    return go


def auto_rows(report: Report, name: str, model, card, weights: str, rows, repeats: dict, plan_cache: Path, device: str,
              images=None) -> list[float]:
    """Plan `model` as ps.load does (fresh: nothing cached), then for each (label, batch size,
    inputs) time every path auto may choose (sparse, masked, and tiles where the model has them:
    ponderscope.core.execution.paths_of) and the planned execution side by side (rounds, the order
    rotated); one table row each. Returns per row (auto / the fastest path, the chosen path's column / the fastest)."""
    from ponderscope.core.execution import forget_plans, paths_of, plan_execution

    forget_plans()
    plan = plan_execution(model, card, device, weights, "auto", plan_cache, images=images)
    paths = [p.value for p in paths_of(model)] if plan.choices else ["sparse", "masked"]
    ratios = []
    for label, batch, inputs in rows:
        chosen = plan.for_batch(batch)
        if plan.choices:
            entry = min(plan.choices, key=lambda b: (abs(math.log(batch) - math.log(b)), -b))
            planned = plan.timings_ms[entry]
            why = f"batch {entry}: {chosen.value} ({' / '.join(f'{planned[p]:.1f}' for p in paths)} ms)"
        else:
            why = f"one path: {chosen.value}"
        # A run shorter than AUTO_MIN_RUN_S (the parity RNNs: ~1 ms) goes over its inputs several
        # times, so that the timer and the scheduler's jitter do not decide the ratio; ms per pass.
        once = time.perf_counter()
        planned_runner(model, inputs, chosen)()
        passes = max(1, math.ceil(AUTO_MIN_RUN_S / max(time.perf_counter() - once, 1e-6)))
        runs = {p: planned_runner(model, inputs * passes, p) for p in paths}
        runs["auto"] = planned_runner(model, inputs * passes, chosen)
        rounds = repeats[1] if batch == 1 else repeats[32]
        if passes > 1:  # a short run (and a sub-millisecond pass): more rounds, which cost little
            rounds = max(rounds, 3 * repeats[1])
        times = rotated(runs, rounds)
        t = {k: median(v) / passes for k, v in times.items()}
        fastest = min(t[p] for p in paths)
        ratio, chose = t["auto"] / fastest, t[chosen.value] / fastest  # chose: the chosen path's own column (1.000: the fastest)
        ratios.append((ratio, chose))
        report.add(row([name, label, why, f"{t['sparse'] * 1e3:.1f}", f"{t['masked'] * 1e3:.1f}",
                        f"{t['tiles'] * 1e3:.1f}" if "tiles" in t else "–", f"{t['auto'] * 1e3:.1f}",
                        f"**{ratio:.3f}**", f"{chose:.3f}", "met" if ratio <= AUTO_TARGET else "NOT met"]))
    return ratios


def auto_section(report: Report, repeats: dict, device: str = "cpu", imagenet_targets=(0.5, 0.7)):
    """Execution planned per device (ponderscope.core.execution): every bundled checkpoint on its own
    test data, and the SACT / AIG ResNet-50 of the ImageNet sections (random weights, calibrated
    the same way) at 224x224; the plan measured here as `serve` measures it (on the model's test
    images where it has them, else on synthetic inputs)."""
    import hashlib
    import tempfile
    from types import SimpleNamespace

    from ponderscope.core import data, tasks
    from ponderscope.core.execution import ANALYSIS_BATCH, device_name, test_images

    report.add(AUTO_MARKERS[0])
    report.add(f"\n### Execution planned per device (auto) on {device_name(device)}\n")
    report.add(f"The plan is made as `ps.load` and `serve` make it (ponderscope.core.execution: batch 1 and {ANALYSIS_BATCH} timed on "
               f"the model's test images where it has them, else on synthetic inputs, a warm-up pass then rounds of every path; nothing cached); each row then times sparse, masked, "
               f"tiles (SACT only: the paths auto chooses from) and auto (the plan's entry for that batch size: the nearest planned size) on the real inputs, in rounds with the "
               f"order rotated (batch 1: {repeats[1]} rounds, larger: {repeats[32]}; a run under {AUTO_MIN_RUN_S * 1000:.0f} ms goes over its inputs several times, in {3 * repeats[1]} rounds); ms: medians, per pass over the inputs. Target: auto / the fastest path "
               f"<= {AUTO_TARGET}. The modules run as `serve` loads them (weights NCHW).\n")
    report.add(row(["model", "input / batch", "plan entry used (planned sparse / masked [/ tiles] ms)", "sparse ms", "masked ms", "tiles ms",
                    "auto ms", "auto / min", "chosen path's column / min", f"target <= {AUTO_TARGET}"]))
    report.add(row(["---"] * 10))
    plan_cache = Path(tempfile.mkdtemp(prefix="ponderscope-bench-plans-"))
    ratios = []
    for path in sorted(p for p in CHECKPOINTS.iterdir() if (p / "card.json").is_file()):
        model = models.load_checkpoint(path, device=device)
        card = model.card
        weights = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
        try:
            if card.kind == "image":
                images = bundled_images(card, 250).to(device)
                size = "x".join(str(s) for s in images.shape[-2:])
                rows = [(f"{size}, 16 x 1", 1, [images[i : i + 1] for i in range(16)]), (f"{size}, 64", 64, [images[:64]]),
                        (f"{size}, 250", 250, [images])]
            elif card.kind == "text":
                _, held_out = data.split_text(data.load_text_corpus("jargon"))
                stream = torch.tensor(list(held_out[: 64 * 100]), dtype=torch.long, device=device).view(64, 100)
                rows = [("1 x 100 bytes (4 windows)", 1, [stream[i : i + 1] for i in range(4)]), ("64 x 100 bytes", 64, [stream])]
            else:
                x, _ = tasks.parity_batch(250, card.task.bits, torch.Generator().manual_seed(12345))
                x = x.to(device)
                rows = [(f"{card.task.bits} bits, 16 x 1", 1, [x[i : i + 1] for i in range(16)]), (f"{card.task.bits} bits, 64", 64, [x[:64]]),
                        (f"{card.task.bits} bits, 250", 250, [x])]
        except Exception as error:  # a data source that is not installed
            report.add(row([path.name, f"data missing: {str(error).split('.')[0]}"] + [""] * 8))
            continue
        ratios += auto_rows(report, path.name, model, card, weights, rows, repeats, plan_cache, device,
                            images=(lambda: test_images(card)) if card.kind == "image" else None)  # as LoadedModel plans
    generator = torch.Generator().manual_seed(0)
    images = {1: smooth_images(4, 224, generator).to(device), 32: smooth_images(32, 224, generator).to(device)}
    card = SimpleNamespace(**IMAGENET_CARD)
    for family, name in (("sact", "sact_resnet50"), ("aig", "aig_resnet50")):
        for target in imagenet_targets:
            torch.manual_seed(0)  # the weights of the ImageNet sections
            model = models.create_model(name).eval().to(device)
            with torch.no_grad():
                if family == "sact":
                    for block in model.blocks:
                        for branch in block.halting:
                            branch.local_conv.weight.mul_(SACT_LOCAL_WEIGHT_SCALE)
                    calibrate_sact(model, images[32], target)
                else:
                    for block in model.gated_blocks:
                        block.gate.fc2.weight.copy_(torch.empty_like(block.gate.fc2.weight, device="cpu").normal_(
                            0.0, AIG_GATE_WEIGHT_STD, generator=generator))
                    calibrate_aig(model, images[32], target)
                ratio = flops_ratio(model, images[32])
            rows = [(f"224x224, FLOPs {ratio:.2f}, 4 x 1", 1, [images[1][i : i + 1] for i in range(4)]),
                    (f"224x224, FLOPs {ratio:.2f}, 32", 32, [images[32]])]
            ratios += auto_rows(report, f"{name} (random, FLOPs target {target:.2f})", model, card, f"bench-{name}-{target}", rows, repeats,
                                plan_cache, device)
    met = sum(r <= AUTO_TARGET for r, _ in ratios)
    right = sum(c <= AUTO_TARGET for _, c in ratios)
    report.add(f"\nauto / the fastest path: {met} of {len(ratios)} rows within {AUTO_TARGET}; worst {max(r for r, _ in ratios):.3f}, "
               f"median {statistics.median(r for r, _ in ratios):.3f}. The path auto chose, timed in its own column: within "
               f"{AUTO_TARGET} of the fastest in {right} of {len(ratios)} rows (worst {max(c for _, c in ratios):.3f}); auto and that "
               f"column run the same code, so their difference is this machine's noise.")
    report.add(AUTO_MARKERS[1])


# Sections that a run of their keys alone replaces in results.md (between their markers), leaving the rest as it was.
MARKED_SECTIONS = {AUTO_MARKERS: ("auto",), twins.MARKERS: twins.KEYS, byte_twins.MARKERS: byte_twins.KEYS}


def write_marked_section(lines: list[str], markers: tuple[str, str], stamp: str, path: Path = RESULTS) -> None:
    """The section of `lines` between `markers` (markers included, `stamp` after the first) into
    `path` in place of the one there, or appended: a run of `--only auto` (say) leaves the other
    sections as they were."""
    start, end = markers
    section = "\n".join([start, stamp, *lines[lines.index(start) + 1 : lines.index(end) + 1]])
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Sparse execution benchmark\n"
    if start in text and end in text.split(start, 1)[1]:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Sparse vs masked vs dense execution times")
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke test, not for the record)")
    parser.add_argument("--only", default=ALL_SECTIONS)
    parser.add_argument("--batches", default="1,32", help="ImageNet-shape batch sizes")
    parser.add_argument("--no-heap-setting", action="store_true", help="leave glibc malloc at its defaults")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the tables (\"-\": nowhere)")
    parser.add_argument("--device", default="cpu", help="cuda: the ImageNet-shape sections on the GPU (TF32 off; the tables are printed, not written)")
    args = parser.parse_args(argv)
    note = setup_cpu(1, keep_heap=not args.no_heap_setting)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32, as on CPU
        note += f", {torch.cuda.get_device_name(args.device)} (TF32 off)"
    repeats = {1: 3, 32: 1, "rnn": 3} if args.quick else {1: 25, 32: 5, "rnn": 9}
    auto_repeats = {1: 2, 32: 1} if args.quick else {1: 9, 32: 5}
    twin_repeats = {1: 3, 32: 3} if args.quick else {1: 25, 32: 25}  # small networks: batch-32 rounds are cheap too
    byte_repeats = {1: 2, 64: 2} if args.quick else {1: 11, 64: 11}  # a round: 64 windows of 128 bytes, three models
    report = Report()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report.add("# Sparse execution benchmark\n")
    report.add(f"Command: `{command.strip()}` ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
               f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {note}).")
    report.add(f"Rounds (sparse, masked, dense NCHW, dense CL, in turn): batch 1: {repeats[1]}, batch 32: {repeats[32]}, "
               f"RNN: {repeats['rnn']}. Time ratio = median over rounds of time / time of the dense network in the same round, "
               f"the dense network in the faster of NCHW and channels-last (CL); ms columns: medians. FLOPs ratio = FLOPs "
               f"executed / dense FLOPs (from the trace, identical for sparse and masked). The adaptive models' weights are "
               f"stored channels-last (sparse execution runs channels-last).")
    start = time.time()
    only = args.only.split(",")
    if "sact" in only:
        imagenet_section(report, "sact", repeats, batches=[int(b) for b in args.batches.split(",")], device=args.device)
    if "aig" in only:
        imagenet_section(report, "aig", repeats, batches=[int(b) for b in args.batches.split(",")], device=args.device)
    if "bundled" in only:
        bundled_section(report, repeats)
    if "rnn" in only:
        rnn_section(report, repeats)
    if "auto" in only:
        auto_section(report, auto_repeats, device=args.device)
    if any(key in only for key in twins.KEYS):  # on CPU, as the bundled section
        twins.twins_section(report, [key for key in twins.KEYS if key in only], twin_repeats)
    if any(key in only for key in byte_twins.KEYS):  # on CPU too
        byte_twins.byte_twins_section(report, [key for key in byte_twins.KEYS if key in only], byte_repeats)
    report.add(f"\n(total {time.time() - start:.0f} s)")
    marked_only = set(only) <= {key for keys in MARKED_SECTIONS.values() for key in keys}
    if not args.quick and args.out != "-" and args.device == "cpu" and marked_only:
        stamp = f"\n(`{command.strip()}`, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {note})"
        for markers, keys in MARKED_SECTIONS.items():
            if all(key in only for key in keys):
                write_marked_section(report.lines, markers, stamp, Path(args.out))
            elif any(key in only for key in keys):
                print(f"{args.out}: not written: its {markers[0]} section is replaced only by a run of all of --only {','.join(keys)}")
        if Path(args.out).resolve() == RESULTS:  # README's copy stays bench/results.md, its other sections as the last full run left them
            replace_section("bench", RESULTS.read_text(encoding="utf-8").split("\n", 1)[1])
    elif not args.quick and args.out != "-" and args.device == "cpu":
        Path(args.out).write_text("\n".join(report.lines) + "\n", encoding="utf-8")
        if args.only == ALL_SECTIONS and args.batches == "1,32" and not args.no_heap_setting and Path(args.out).resolve() == RESULTS:
            # the README's copy is bench/results.md of a full default run, never of a partial one
            replace_section("bench", "\n".join(report.lines[1:]))  # the file's own title is dropped


if __name__ == "__main__":
    main()
