"""What-if studies of a trained model over its test set (models/whatif.py makes each change):

    points = ponderscope.sweep(model)     # accuracy and FLOPs as the threshold / cap / gate bias moves
    study = ponderscope.lesion(model)     # accuracy after removing each unit, and k random units

Every number is the test metric `ponderscope eval` writes into the card (the workload's own
`evaluate`, same batches, same reductions), measured with one change in force, so the point at
the trained setting is the card's own accuracy and FLOPs (metrics.test for limit=None,
metrics.slice for limit=500).
"""
from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Callable, ContextManager, Optional

from pydantic import TypeAdapter, model_serializer

from ponderscope.core.answers import LesionStudy, Open, RandomLesion, SweepPoint, TrainedPoint, UnitLesion
from ponderscope.core.loaded import LoadedModel
from ponderscope.core.statistics import image_set
from ponderscope.models.whatif import WhatIf, applied, downsampling_units, knobs

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995, 0.999, 1.0)  # with the trained 1 - eps
GATE_BIASES = (-4.0, -2.0, -1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0, 4.0)  # with the trained 0
RANDOM_KS = (1, 2, 3, 4, 6, 8, 10)
DRAWS = 3


def _module(model):
    return getattr(model, "module", model)


def _workload(model, data: Optional[str] = None):
    """The model's test data, as the server and `ponderscope eval` read it; or data =
    "imagefolder:PATH": that folder's val split (or held-out part), prepared as the card says."""
    if not isinstance(model, LoadedModel):
        raise TypeError("pass what ponderscope.load returns")
    if data is None:
        return model.test_set()
    return image_set(model, data, "val", workers=2)[0]


def measure(model, whatif: Optional[WhatIf] = None, limit: Optional[int] = None, per_class: bool = False, workload=None,
            guard: Optional[Callable[[], ContextManager]] = None) -> dict:
    """The card's test metrics of `model` on its first `limit` test examples with `whatif` in force,
    each batch run with the model's planned execution (LoadedModel.planned) and inside `guard()`
    when given (the server's background inference slot, which also stops a job when the server stops)."""
    workload = workload or _workload(model)
    module = _module(model)
    with applied(module, whatif):
        run = model.planned(guard) if isinstance(model, LoadedModel) else module  # (a bare module: its own execution, unguarded)
        return workload.evaluate(run, limit, per_class_accuracy=per_class)


def _point(parameter: Optional[str], setting, trained: bool, metrics: dict, point=SweepPoint, **more) -> SweepPoint:
    return point(parameter=parameter, setting=setting, trained=trained, accuracy=metrics["accuracy"], flops_ratio=metrics["flops_ratio"],
                 mean_ponder=metrics.get("mean_ponder"), examples=metrics["examples"], mean_executed_layers=metrics.get("mean_executed_layers"), **more)


def sweep_plan(model) -> list[tuple[Optional[str], object, Optional[WhatIf]]]:
    """(parameter, setting, change) of every point of the sweep; change None: the trained model
    (measured once; it appears at its place in each parameter's curve)."""
    can = knobs(_module(model))
    plan: list = []
    if "threshold" in can:
        trained = round(can["threshold"], 10)
        plan += [("threshold", t, None if t == trained else WhatIf(threshold=t)) for t in sorted(set(THRESHOLDS) | {trained})]
    if "cap" in can:
        plan += [("cap", c, None if c == can["cap"] else WhatIf(cap=c)) for c in range(1, can["cap"] + 1)]
    if "gate_bias" in can:
        plan += [("gate_bias", b, None if b == 0.0 else WhatIf(gate_bias=b)) for b in sorted(set(GATE_BIASES) | {0.0})]
    return plan or [(None, None, None)]  # nothing to move (a dense ResNet): its trained point


def sweep(model, limit: Optional[int] = None, progress: Optional[Callable[[float, str], None]] = None,
          guard: Optional[Callable[[], ContextManager]] = None, data: Optional[str] = None) -> list[SweepPoint]:
    """Accuracy and FLOPs (executed / dense) over the first `limit` test examples (all: None) as
    the model's inference settings move, without retraining: the settings it has (models/whatif.py
    knobs: ACT/SACT the halting threshold 1 - eps and a per-block cap on units, AIG the gate bias
    theta, a model's own whatif_knobs). Each point: parameter, its label (what the model calls
    it), setting, trained (the model's own setting: measured once, the card's numbers), accuracy,
    flops_ratio, mean_ponder, examples. A model with nothing to move (a dense ResNet) has its
    trained point only. data: "imagefolder:PATH" to sweep over an image folder instead of the test set."""
    plan = sweep_plan(model)
    about = knobs(_module(model)).get("about", {})
    workload = _workload(model, data)
    trained = measure(model, None, limit, workload=workload, guard=guard)
    points = []
    for done, (parameter, setting, change) in enumerate(plan):
        if progress:
            progress(done / len(plan), f"{parameter or 'trained'} {setting if setting is not None else ''}".strip())
        metrics = trained if change is None else measure(model, change, limit, workload=workload, guard=guard)
        points.append(_point(parameter, setting, change is None, metrics, label=about.get(parameter, {}).get("label")))
    return points


def lesion(model, limit: Optional[int] = None, draws: int = DRAWS, ks=RANDOM_KS, seed: int = 0,
           progress: Optional[Callable[[float, str], None]] = None, guard: Optional[Callable[[], ContextManager]] = None,
           data: Optional[str] = None) -> LesionStudy:
    """Remove one unit at a time (models/whatif.py: a ResNet unit's residual branch, an AIG
    block's gate forced closed; downsampling units keep their shortcut) and measure the test
    accuracy and FLOPs over the first `limit` examples, with the accuracy of every class; then k
    units drawn at random (from the units that do not downsample, as Veit et al. 2016), `draws`
    times each (seeded). -> a LesionStudy: trained, single [UnitLesion: name, downsampling, accuracy,
    flops_ratio, per_class_accuracy], random [RandomLesion: k, mean, std, min, max, accuracies], classes, units."""
    module = _module(model)
    can = knobs(module)
    if "units" not in can:
        raise ValueError(f"{type(module).__name__} has no removable residual units")
    names, downsampling = can["units"], set(downsampling_units(module))
    workload = _workload(model, data)
    removable = [n for n in names if n not in downsampling]
    rng = random.Random(seed)
    random_sets = [(k, tuple(sorted(rng.sample(removable, k)))) for k in ks if k <= len(removable) for _ in range(draws)]
    total = 1 + len(names) + len(random_sets)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        if progress:
            progress(step / total, what)
        step += 1

    tick("trained")
    trained = measure(model, None, limit, per_class=True, workload=workload, guard=guard)
    single = []
    for name in names:
        tick(f"without {name}")
        metrics = measure(model, WhatIf(lesion=(name,)), limit, per_class=True, workload=workload, guard=guard)
        single.append(UnitLesion(name=name, downsampling=name in downsampling, accuracy=metrics["accuracy"],
                                 flops_ratio=metrics["flops_ratio"], per_class_accuracy=metrics["per_class_accuracy"]))
    by_k: dict[int, list[float]] = {}
    for k, chosen in random_sets:
        tick(f"without {k} random units")
        by_k.setdefault(k, []).append(measure(model, WhatIf(lesion=chosen), limit, workload=workload, guard=guard)["accuracy"])
    random_points = [RandomLesion(k=k, mean=statistics.fmean(a), std=statistics.pstdev(a), min=min(a), max=max(a), accuracies=a)
                     for k, a in sorted(by_k.items())]
    if progress:
        progress(1.0, "done")
    accuracy = trained["accuracy"]
    return LesionStudy(trained=_point(None, None, True, trained, TrainedPoint, per_class_accuracy=trained["per_class_accuracy"]),
                       single=single, random=[RandomLesion(k=0, mean=accuracy, std=0.0, min=accuracy, max=accuracy, accuracies=[accuracy])] + random_points,
                       classes=list(model.card.classes or workload.classes), units=names, examples=trained["examples"],
                       draws=draws, seed=seed, layer_execution_rate=trained.get("layer_execution_rate"))


REPORT_MODELS = ("fmnist_sact_resnet32", "fmnist_act_resnet32", "fmnist_aig_resnet32", "fmnist_resnet32")
REPORT_LESIONS = ("fmnist_sact_resnet32", "fmnist_aig_resnet32", "fmnist_resnet32")  # the report's lesion studies (docs/whatif.md)


class ModelReport(Open):
    """One model of the what-if report (docs/whatif.json, by model): its family, its sweep, and
    for the dense ResNet-32, ConvNet-AIG and SACT its lesion study."""
    family: str
    sweep: list[SweepPoint]
    lesion: Optional[LesionStudy] = None

    @model_serializer(mode="wrap")
    def _without_absent_lesion(self, handler):
        out = handler(self)  # docs/whatif.json has no "lesion" for a model without one
        if self.lesion is None:
            out.pop("lesion", None)
        return out


REPORT = TypeAdapter(dict[str, ModelReport])


def read_report(path: str | Path) -> dict[str, ModelReport]:
    """A report's numbers as `ponderscope study report` wrote them (docs/whatif.json), read back into their types."""
    return REPORT.validate_json(Path(path).read_bytes())


def report(limit: Optional[int] = 2000, names=REPORT_MODELS, progress=print, execution: str = "auto",
           lesions=REPORT_LESIONS) -> dict[str, ModelReport]:
    """The bundled Fashion-MNIST models' sweeps, and the lesion studies of the models named in
    `lesions` (the dense ResNet-32, ConvNet-AIG and SACT: what docs/whatif.md shows); execution: as
    ponderscope.load's."""
    from ponderscope.core.loaded import load

    out = {}
    for name in names:
        model = load(name, execution=execution)
        out[name] = ModelReport(family=model.family, sweep=sweep(model, limit=limit))
        progress(f"{name}: sweep done")
        if name in lesions:
            out[name].lesion = lesion(model, limit=limit)
            progress(f"{name}: lesion done")
    return out


def _is_reference(result: ModelReport) -> bool:
    """A report's model that skips nothing: its family was registered with reference=True."""
    from ponderscope import models

    return models.family(result.family).reference


def report_markdown(results: dict[str, ModelReport], limit: Optional[int]) -> str:
    """The report's tables: per model the accuracy-vs-FLOPs points, then the single-unit lesion
    table of the dense ResNet-32 beside ConvNet-AIG's execution rates and lesions. `results`:
    report(), or read_report of its docs/whatif.json."""
    over = f"the first {limit} Fashion-MNIST test images" if limit else "the 10,000 Fashion-MNIST test images"
    lines = [f"Measured by `ponderscope study report --limit {limit}` over {over}.", ""]
    for name, result in results.items():
        points = result.sweep
        if _is_reference(result):
            p = points[0]
            lines += [f"**{name}** (dense reference): accuracy {p.accuracy:.2%} at 100% of the FLOPs.", ""]
            continue
        lines += [f"**{name}**", "", "| parameter | setting | accuracy | FLOPs / dense |", "|---|---|---|---|"]
        for p in points:
            mark = " (trained)" if p.trained else ""
            lines.append(f"| {p.parameter} | {p.setting}{mark} | {p.accuracy:.2%} | {p.flops_ratio:.1%} |")
        lines.append("")
    studied = {name: r.lesion for name, r in results.items() if r.lesion is not None}
    # by what each model declares and does, not by its family's name: the reference (the dense ResNet-32),
    # the gated model (its lesion carries execution rates: ConvNet-AIG), and the other lesioned model (SACT)
    d = next((r.lesion for r in results.values() if _is_reference(r) and r.lesion is not None), None)
    a = next((r.lesion for r in results.values() if not _is_reference(r) and r.lesion is not None and r.lesion.layer_execution_rate), None)
    sact = next((r.lesion for r in results.values() if not _is_reference(r) and r.lesion is not None and r.lesion is not a), None)
    if d is not None and a is not None:
        rows = ["Single-unit lesions (accuracy with the unit removed; ConvNet-AIG: its gate forced closed) beside ConvNet-AIG's "
                "execution rate of the same layer:", "",
                "| place | dense ResNet-32 unit | dense: accuracy without it | AIG layer | AIG execution rate | AIG: accuracy without it |"
                + (" SACT: accuracy without it |" if sact is not None else ""),
                "|---|---|---|---|---|---|" + ("---|" if sact is not None else "")]
        rates = a.layer_execution_rate or [None] * len(a.single)
        for i, (du, au, rate) in enumerate(zip(d.single, a.single, rates)):
            marker = " (downsampling)" if du.downsampling else ""
            sact_cell = f" {sact.single[i].accuracy:.2%} |" if sact is not None and i < len(sact.single) else (" |" if sact is not None else "")
            rows.append(f"| {i + 1} | {du.name}{marker} | {du.accuracy:.2%} | {au.name} | "
                        f"{'' if rate is None else f'{rate:.1%}'} | {au.accuracy:.2%} |" + sact_cell)
        rows += ["", f"Intact: dense {d.trained.accuracy:.2%}, AIG {a.trained.accuracy:.2%}"
                 + (f", SACT {sact.trained.accuracy:.2%}" if sact is not None else "") + "."]
        lines += rows + [""]
        drops = [d.trained.accuracy - u.accuracy for u in d.single if not u.downsampling]
        down = [d.trained.accuracy - u.accuracy for u in d.single if u.downsampling]
        lines += [f"Dense ResNet-32: removing one non-downsampling unit costs {min(drops):.2%} to {max(drops):.2%} of accuracy "
                  f"(mean {statistics.fmean(drops):.2%}); removing a downsampling unit's branch costs "
                  f"{', '.join(f'{v:.2%}' for v in down)}.", ""]
        if rates[0] is not None:
            pairs = [(r, d.trained.accuracy - du.accuracy) for du, r in zip(d.single, rates) if not du.downsampling]
            lines += [f"Rank correlation between AIG's execution rate and the dense lesion's cost (non-downsampling places): "
                      f"{_spearman([p[0] for p in pairs], [p[1] for p in pairs]):+.2f}.", ""]
        lines += ["Random lesions (mean accuracy over the draws, non-downsampling units):", "",
                  "| k removed | " + " | ".join(studied) + " |",
                  "|---|" + "---|" * len(studied)]
        studies_ = list(studied.values())
        for i, point in enumerate(studies_[0].random):
            lines.append(f"| {point.k} | " + " | ".join(f"{s.random[i].mean:.2%}" for s in studies_ if i < len(s.random)) + " |")
    return "\n".join(lines) + "\n"


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")
