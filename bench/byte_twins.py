"""The Universal Transformer + ACT and Mixture-of-Depths byte LMs against their dense twins (issue 25
item 5): bytes per second and time ratio beside FLOPs ratio, on CPU, at batch 1 and 64. Run by
`python -m bench --only ut-act,mod` (and by a full `python -m bench`).

  * ut_act (checkpoints/jargon_ut_act) against the Universal Transformer without ACT, the shared
    layer applied max_steps times to every byte (checkpoints/jargon_ut);
  * mod (checkpoints/jargon_mod, routed by its causal predictor, as evaluation and the dashboard
    run it) against the same transformer without routing (checkpoints/jargon_transformer).

Inputs: the first WINDOWS held-out Jargon File windows of SEQ_LEN bytes, as evaluation cuts them
(ponderscope.core.workloads.BytesLM(seq_len=SEQ_LEN).eval_pairs), the same at both batch sizes
(batch 1: one window at a time; batch 64: one batch of 64), so the FLOPs ratio is the same in both
rows (a window's trace does not depend on its batch). Each pair runs side by side: sparse, masked
and the dense twin in every round, the order rotated from round to round (bench.common.rotated);
time ratio = median over rounds of time / the twin's time in the same round; bytes per second =
the window bytes / the median time of a pass. FLOPs ratio = the FLOPs the adaptive model's traces
record / those the twin's traces record, on the same windows (the same for sparse and masked).

A checkpoint not there yet (no card.json) is replaced by a model with random weights (seed 0),
and the table says so: its training config's model (configs/<name>.json) if there is one, else
the model with its twin's model_kwargs (the twin's checkpoint card, else its config), else the
registry's defaults. Random weights mean random decisions: a random ut_act's bytes halt after
about 4 of 6 steps (h ~ sigmoid(halting_bias) everywhere), a random predictor routes about half
the bytes; such rows time the code path, not the trained model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bench.common import Report, median, rotated, round_ratio, row, runner
from bench.twins import CHECKPOINTS, CONFIGS, STAND_IN_SEED, trained, traced_flops_ratio
from ponderscope import models

MARKERS = ("<!-- byte-twins:start -->", "<!-- byte-twins:end -->")
KEYS = ("ut-act", "mod")  # this section's names for --only
WINDOWS = 64  # held-out windows per row
SEQ_LEN = 128  # bytes per window (the models' context)
BATCHES = (1, 64)


@dataclass(frozen=True)
class ByteTwins:
    key: str  # its name for --only
    adaptive: str  # checkpoint (and config) name of the adaptive model
    dense: str  # ... of its dense twin
    adaptive_model: str  # registry names: what a stand-in is built as when there is no config
    dense_model: str
    per_byte: str  # what the trace's steps count, for the table


TWINS = (
    ByteTwins("ut-act", "jargon_ut_act", "jargon_ut", "ut_act", "ut", "steps"),
    ByteTwins("mod", "jargon_mod", "jargon_transformer", "mod", "transformer_lm", "layers"),
)


def config_of(name: str, configs: Path) -> Optional[dict]:
    path = configs / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stand_in(name: str, model: str, partner: str, partner_kwargs: Optional[dict], configs: Path):
    """(a random-weight model for checkpoint `name`, how it was built)."""
    config = config_of(name, configs)
    torch.manual_seed(STAND_IN_SEED)
    if config is not None:
        return (models.create_model(config["model"], **config["model_kwargs"]).eval(),
                f"configs/{name}.json's model, random weights (seed {STAND_IN_SEED})")
    if partner_kwargs is not None:
        return (models.create_model(model, **partner_kwargs).eval(),
                f"{model} with {partner}'s model_kwargs (no configs/{name}.json), random weights (seed {STAND_IN_SEED})")
    return models.create_model(model).eval(), f"{model} with the registry's defaults, random weights (seed {STAND_IN_SEED})"


def load_byte_twins(twins: ByteTwins, checkpoints: Path = CHECKPOINTS, configs: Path = CONFIGS):
    """(adaptive, dense, {name: how a stand-in got its weights}): each the checkpoint of its name
    under `checkpoints` where it is trained, else a stand-in the size of its twin."""
    loaded = {name: models.load_checkpoint(checkpoints / name) for name in (twins.adaptive, twins.dense) if trained(name, checkpoints)}

    def kwargs_of(name):
        if name in loaded:  # its checkpoint's (or, a stand-in, what it was built with)
            return dict(loaded[name].registry_kwargs)
        config = config_of(name, configs)
        return dict(config["model_kwargs"]) if config else None

    stand_ins = {}
    for name, model, partner in ((twins.adaptive, twins.adaptive_model, twins.dense), (twins.dense, twins.dense_model, twins.adaptive)):
        if name not in loaded:
            loaded[name], stand_ins[name] = stand_in(name, model, partner, kwargs_of(partner), configs)
    return loaded[twins.adaptive], loaded[twins.dense], stand_ins


def held_out_windows(n: int = WINDOWS, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """[n, seq_len] the first n held-out Jargon File windows, as evaluation cuts them."""
    from ponderscope.core.workloads import BytesLM

    inputs, _ = BytesLM("jargon", torch.device("cpu"), seq_len=seq_len).eval_pairs(n * seq_len)
    if len(inputs) < n:
        raise ValueError(f"the held-out text has {len(inputs)} windows of {seq_len} bytes, fewer than {n}")
    return inputs


def batches_of(windows: torch.Tensor, sizes=BATCHES) -> dict:
    """{label: (batch size, list of batches)}: the same windows one at a time, and in batches of
    each larger size (the windows beyond a whole number of batches left out)."""
    n = len(windows)
    out = {}
    for size in sizes:
        out[f"{n // size} x {size}"] = (size, [windows[i : i + size] for i in range(0, n - n % size, size)])
    return out


@torch.no_grad()
def per_byte(model, inputs) -> float:
    """Mean over the bytes of the steps (ut_act) or layers (mod) each ran."""
    steps = [model.trace(x).steps.float() for x in inputs]
    return float(torch.cat([s.flatten() for s in steps]).mean())


def byte_twin_rows(report: Report, twins: ByteTwins, adaptive, dense, windows: torch.Tensor, repeats: dict, names: tuple[str, str],
                   sizes=BATCHES) -> list[dict]:
    """One table row per batch size: FLOPs ratio from the traces, then sparse, masked and the
    dense twin timed side by side in rotated rounds. Returns the rows' figures."""
    results = []
    layers = adaptive.max_steps if hasattr(adaptive, "max_steps") else adaptive.depth
    for label, (batch, inputs) in batches_of(windows, sizes).items():
        sparse_flops, masked_flops = traced_flops_ratio(adaptive, dense, inputs)
        flops = f"{sparse_flops:.3f}" if abs(sparse_flops - masked_flops) < 1e-6 else f"{sparse_flops:.3f} (masked {masked_flops:.3f}!)"
        with torch.no_grad():
            twin_matches = all(dense.trace(x).flops.tolist() == [adaptive.dense_flops(x.shape[1])] * len(x) for x in inputs)
        mean = per_byte(adaptive, inputs)
        runs = {"sparse": runner(adaptive, inputs, "sparse"), "masked": runner(adaptive, inputs, "masked"), "dense": runner(dense, inputs)}
        times = rotated(runs, repeats[batch])
        adaptive.execution = "sparse"
        t = {name: median(v) for name, v in times.items()}
        t["sparse ratio"], t["masked ratio"] = round_ratio(times, "sparse", "dense"), round_ratio(times, "masked", "dense")
        n_bytes = sum(x.numel() for x in inputs)
        speed = {name: n_bytes / t[name] for name in runs}
        report.add(row([*names, f"{windows.shape[1]} bytes", label, flops + ("" if twin_matches else " (twin of another size!)"),
                        f"**{t['sparse ratio']:.3f}**", f"{t['masked ratio']:.3f}", f"{t['sparse ratio'] - sparse_flops:+.3f}",
                        f"{mean:.2f} of {layers}", f"{speed['dense']:.0f}", f"**{speed['sparse']:.0f}**", f"{speed['masked']:.0f}"]))
        results.append({"batch": batch, "flops ratio": sparse_flops, "masked flops ratio": masked_flops, "twin matches": twin_matches,
                        "per byte": mean, "bytes": n_bytes, **t, **{f"{name} bytes/s": s for name, s in speed.items()}})
    return results


def byte_twins_section(report: Report, keys, repeats: dict, checkpoints: Optional[Path] = None, configs: Optional[Path] = None,
                       windows: int = WINDOWS) -> dict:
    """The section, between MARKERS (a run of `--only ut-act,mod` replaces it in results.md): a row
    per model and batch size for the pairs in `keys` (checkpoints, configs: None for this module's
    CHECKPOINTS, CONFIGS). Returns {key: its rows' figures}."""
    checkpoints, configs = checkpoints or CHECKPOINTS, configs or CONFIGS
    report.add(MARKERS[0])
    report.add("\n### Universal Transformer + ACT and Mixture-of-Depths byte LMs against their dense twins (issue 25)\n")
    report.add(f"The first {windows} held-out Jargon File windows of {SEQ_LEN} bytes (as evaluation cuts them) at batch 1 (one at a "
               f"time) and 64; every round runs sparse, masked and the dense twin, the order rotated from round to round "
               f"({repeats[1]} rounds at batch 1, {repeats[64]} at 64). Time ratio = median over rounds of time / the dense twin's time "
               f"in the same round; B/s: bytes per second, the {windows * SEQ_LEN} bytes / the median time of a pass. FLOPs ratio = "
               f"FLOPs the adaptive model's traces record / the dense twin's, same windows (the same for sparse and masked; mod's "
               f"include its routers and predictors). Per byte: the mean steps (ut_act) or layers (mod) a byte ran. mod routes by "
               f"its causal predictor. Weights: the trained checkpoints; a model marked *stand-in* was not trained yet when this ran "
               f"(below).\n")
    report.add(row(["model", "dense twin", "input", "batch", "FLOPs ratio", "sparse time ratio", "masked time ratio", "sparse time - FLOPs",
                    "per byte", "dense B/s", "sparse B/s", "masked B/s"]))
    report.add(row(["---"] * 12))
    figures, notes = {}, []
    try:
        x = held_out_windows(windows)
    except Exception as error:  # a data source that is not installed
        x, missing = None, str(error).split(".")[0]
    for twins in TWINS:
        if twins.key not in keys:
            continue
        if x is None:
            report.add(row([twins.adaptive, twins.dense, f"data missing: {missing}"] + [""] * 9))
            continue
        adaptive, dense, stand_ins = load_byte_twins(twins, checkpoints, configs)
        names = tuple(f"{name} (*stand-in*)" if name in stand_ins else name for name in (twins.adaptive, twins.dense))
        notes += [f"* *stand-in* {name}: {how}." for name, how in stand_ins.items()]
        figures[twins.key] = byte_twin_rows(report, twins, adaptive, dense, x, repeats, names)
    report.close_twins_section(notes, MARKERS[1])
    return figures
