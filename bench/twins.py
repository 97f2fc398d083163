"""A-ViT and the early-exit ResNet-32 against their dense twins (issue 24 item 5): time ratio beside
FLOPs ratio, on CPU, at batch 1 and 32. Run by `python -m bench --only avit,early-exit` (and by a
full `python -m bench`).

  * A-ViT (checkpoints/cluttered_avit) against the same ViT without halting (checkpoints/cluttered_vit),
    on cluttered-MNIST test canvases (60x60);
  * the early-exit ResNet-32 (checkpoints/fmnist_early_exit_resnet32) against the dense ResNet-32 its
    backbone is (checkpoints/fmnist_resnet32), on Fashion-MNIST test images (28x28).

The same IMAGES test images at both batch sizes (batch 1: one at a time; batch 32: in batches of
32), so the FLOPs ratio is the same in both rows (both models decide per image). Each pair runs side
by side: sparse, masked and the dense twin in every round, the order rotated from round to round
(bench.common.time_models with bench.common.rotated); time ratio = median over rounds of time /
the twin's time in the same round. FLOPs ratio = the FLOPs the adaptive model's traces record /
those the twin's traces record, on the same images (identical for sparse and masked execution).

A checkpoint not trained yet (no card.json) is replaced by its training config's model
(configs/<name>.json) with random weights (seed 0), and the table says so: a random A-ViT's tokens
barely halt (channel 0 of a random token is near 0, h ~ sigmoid(-gate_center)), so its gate_center
is bisected until the FLOPs ratio on the bench's images reaches stand_in_flops; a random early-exit
model starts from the dense twin's trained weights as its training does (the config's init_from:
backbone and last exit are the dense network), its side exits random, and its threshold is
bisected the same way. The dense twin's time does not depend on its weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import DENSE_LAYOUTS, Report, bundled_images, dense_ms, rotated, row, time_models
from ponderscope import models

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
CONFIGS = ROOT / "configs"
MARKERS = ("<!-- twins:start -->", "<!-- twins:end -->")
KEYS = ("avit", "early-exit")  # this section's names for --only
IMAGES = 64  # test images per row
STAND_IN_SEED = 0


@dataclass(frozen=True)
class Twins:
    key: str  # its name for --only
    adaptive: str  # checkpoint (and config) name of the adaptive model
    dense: str  # ... of its dense twin
    data_from: str  # a bundled checkpoint of the same data set and split: the test images when neither model is trained
    stand_in_flops: float  # the FLOPs ratio a random-weight stand-in is calibrated to (the bound / the config's budget)
    knob: str  # what is bisected to get there: an attribute whose FLOPs grow with it
    knob_range: tuple[float, float]
    dense_layouts: tuple = DENSE_LAYOUTS  # the dense twin runs in each, the faster is the reference
    channels_last: bool = True  # the adaptive model's weights and inputs


TWINS = (
    # The ViTs are token models (only the stem is convolutional): NCHW for both.
    Twins("avit", "cluttered_avit", "cluttered_vit", "cluttered_sact_resnet20", 0.70, "gate_center", (-20.0, 20.0),
          dense_layouts=("NCHW",), channels_last=False),
    Twins("early-exit", "fmnist_early_exit_resnet32", "fmnist_resnet32", "fmnist_resnet32", 0.58, "threshold", (0.0, 1.0)),
)


def trained(name: str, checkpoints: Path = CHECKPOINTS) -> bool:
    return (checkpoints / name / "card.json").is_file() and (checkpoints / name / "model.safetensors").is_file()


def from_config(name: str, configs: Path = CONFIGS):
    """The model of configs/<name>.json with random weights (seed STAND_IN_SEED), and the config."""
    config = json.loads((configs / f"{name}.json").read_text(encoding="utf-8"))
    torch.manual_seed(STAND_IN_SEED)
    return models.create_model(config["model"], **config["model_kwargs"]).eval(), config


@torch.no_grad()
def own_flops_ratio(model, inputs) -> float:
    """FLOPs the model's traces record over `inputs` / its own dense FLOPs (the stand-ins' calibration)."""
    traces = [model.trace(x) for x in inputs]
    return sum(float(t.flops.sum()) for t in traces) / sum(len(x) for x in inputs) / traces[0].dense_flops


@torch.no_grad()
def calibrate(model, knob: str, knob_range: tuple[float, float], inputs, target: float, steps: int = 24) -> float:
    """Bisect model.<knob> (FLOPs grow with it) to the first value whose FLOPs ratio on `inputs` is at
    or above the target; then, the ratio being a step function of the knob (an image exits or a
    token halts at a threshold), bisect to the end of that step and leave the knob in its middle,
    away from every decision boundary (a knob on the boundary would decide differently in another
    layout or batch size by rounding). Returns the ratio reached."""
    def ratio_at(value):
        setattr(model, knob, value)
        return own_flops_ratio(model, inputs)

    low, high = knob_range
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (low, middle) if ratio_at(middle) >= target else (middle, high)
    reached, start, end = ratio_at(high), high, knob_range[1]
    for _ in range(steps):  # the step's end: the last value with the same ratio
        middle = (start + end) / 2
        start, end = (middle, end) if ratio_at(middle) == reached else (start, middle)
    return ratio_at((high + start) / 2)


@torch.no_grad()
def traced_flops_ratio(adaptive, dense, inputs) -> tuple[float, float]:
    """(sparse, masked): the FLOPs the adaptive model's traces record over `inputs` under each
    execution / the FLOPs the dense twin's traces record over the same inputs."""
    dense_total = sum(float(dense.trace(x).flops.sum()) for x in inputs)
    ratios = []
    for execution in ("sparse", "masked"):
        adaptive.execution = execution
        ratios.append(sum(float(adaptive.trace(x).flops.sum()) for x in inputs) / dense_total)
    adaptive.execution = "sparse"
    return ratios[0], ratios[1]


def load_twins(twins: Twins, checkpoints: Path = CHECKPOINTS, configs: Path = CONFIGS):
    """(adaptive, dense, the card whose test images are used, {name: how it got its weights, for
    the stand-ins}); a stand-in's knob is calibrated later, on the bench's images."""
    stand_ins = {}
    if trained(twins.dense, checkpoints):
        dense = models.load_checkpoint(checkpoints / twins.dense)
    else:
        dense, _ = from_config(twins.dense, configs)
        stand_ins[twins.dense] = f"configs/{twins.dense}.json's model, random weights (seed {STAND_IN_SEED})"
    if trained(twins.adaptive, checkpoints):
        adaptive = models.load_checkpoint(checkpoints / twins.adaptive)
    else:
        adaptive, config = from_config(twins.adaptive, configs)
        stand_ins[twins.adaptive] = f"configs/{twins.adaptive}.json's model, random weights (seed {STAND_IN_SEED})"
        start = Path(config["init_from"]).name if config.get("init_from") else None
        if start and trained(start, checkpoints):  # as training starts it (train.py: strict=False)
            missing, unexpected = adaptive.load_state_dict(models.load_checkpoint(checkpoints / start).state_dict(), strict=False)
            new = sorted({key.split(".")[0] for key in missing})
            assert not unexpected, unexpected
            stand_ins[twins.adaptive] = (f"configs/{twins.adaptive}.json's model on {start}'s trained weights (its init_from), "
                                         f"its new parts ({', '.join(new)}) random (seed {STAND_IN_SEED})")
    if trained(twins.adaptive, checkpoints):
        card = adaptive.card
    else:
        card = dense.card if trained(twins.dense, checkpoints) else models.load_checkpoint(checkpoints / twins.data_from).card
    return adaptive, dense, card, stand_ins


def batches_of(images: torch.Tensor) -> dict:
    """{label: (batch size, list of batches)}: the same images one at a time, and in batches of 32."""
    n = len(images)
    return {f"{n} x 1": (1, [images[i : i + 1] for i in range(n)]),
            f"{n // 32} x 32": (32, [images[i : i + 32] for i in range(0, n - n % 32, 32)])}


def twin_rows(report: Report, twins: Twins, adaptive, dense, images: torch.Tensor, repeats: dict, names: tuple[str, str]) -> list[dict]:
    """One table row per batch size: FLOPs ratio from the traces, then sparse, masked and the dense
    twin timed side by side. Returns the rows' figures."""
    if twins.channels_last:
        adaptive = adaptive.to(memory_format=torch.channels_last)
    size = "x".join(str(s) for s in images.shape[-2:])
    results = []
    for label, (batch, inputs) in batches_of(images).items():
        sparse_flops, masked_flops = traced_flops_ratio(adaptive, dense, inputs)
        flops = f"{sparse_flops:.3f}" if abs(sparse_flops - masked_flops) < 1e-6 else f"{sparse_flops:.3f} (masked {masked_flops:.3f}!)"
        t = time_models(adaptive, dense, inputs, repeats[batch], dense_layouts=twins.dense_layouts,
                        adaptive_channels_last=twins.channels_last, schedule=rotated)
        report.add(row([*names, size, label, flops, f"**{t['sparse ratio']:.3f}**", f"{t['masked ratio']:.3f}",
                        f"{t['sparse ratio'] - sparse_flops:+.3f}", dense_ms(t, 1), f"{t['sparse'] * 1e3:.1f}", f"{t['masked'] * 1e3:.1f}"]))
        results.append({"batch": batch, "flops ratio": sparse_flops, "masked flops ratio": masked_flops, **t})
    return results


def twins_section(report: Report, keys, repeats: dict, checkpoints: Path = CHECKPOINTS, configs: Path = CONFIGS, images: int = IMAGES) -> dict:
    """The section, between MARKERS (a run of `--only avit,early-exit` replaces it in results.md):
    a row per model and batch size for the pairs in `keys`. Returns {key: its rows' figures}."""
    report.add(MARKERS[0])
    report.add("\n### A-ViT and the early-exit ResNet-32 against their dense twins (issue 24)\n")
    report.add(f"The same {images} test images at batch 1 (one at a time) and 32; every round runs sparse, masked and the dense twin "
               f"(the ResNet in NCHW and channels-last, the faster the reference; the early-exit ResNet channels-last; the ViTs NCHW), "
               f"the order rotated from round to round ({repeats[1]} rounds at batch 1, {repeats[32]} at 32). Time ratio = median over "
               f"rounds of time / the dense twin's time in the same round; ms: medians per pass over the {images} images. FLOPs ratio = "
               f"FLOPs the adaptive model's traces record / the dense twin's, same images (the same for sparse and masked). "
               f"Weights: the trained checkpoints; a model marked *stand-in* was not trained yet when this ran (below).\n")
    report.add(row(["model", "dense twin", "input", "batch", "FLOPs ratio", "sparse time ratio", "masked time ratio",
                    "sparse time - FLOPs", "dense ms NCHW / CL", "sparse ms", "masked ms"]))
    report.add(row(["---"] * 11))
    figures, notes = {}, []
    for twins in TWINS:
        if twins.key not in keys:
            continue
        adaptive, dense, card, stand_ins = load_twins(twins, checkpoints, configs)
        names = tuple(f"{name} (*stand-in*)" if name in stand_ins else name for name in (twins.adaptive, twins.dense))
        try:
            x = bundled_images(card, images)
        except Exception as error:  # a data source that is not installed
            report.add(row([*names, f"data missing: {str(error).split('.')[0]}"] + [""] * 8))
            continue
        if twins.adaptive in stand_ins:
            reached = calibrate(adaptive, twins.knob, twins.knob_range, [x], twins.stand_in_flops)
            stand_ins[twins.adaptive] += (f"; {twins.knob} bisected to {getattr(adaptive, twins.knob):.4g} for FLOPs "
                                          f"{twins.stand_in_flops:.2f} on these images ({reached:.3f})")
        notes += [f"* *stand-in* {name}: {how}." for name, how in stand_ins.items()]
        figures[twins.key] = twin_rows(report, twins, adaptive, dense, x, repeats, names)
    report.close_twins_section(notes, MARKERS[1])
    return figures
