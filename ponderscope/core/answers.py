"""Trace -> the typed answers every face shows: the one place where a model's Trace becomes numbers.

    answer = image_answer(model, x, shown)     # ImageAnalysis: prediction, FLOPs, ponder maps, gates
    answer = text_answer(model, "some text")   # TextAnalysis: per character N, N + R, surprisal
    answer = parity_answer(model, vector)      # ParityAnalysis: answer, steps, ponder

These types are the API's response models (the OpenAPI document), what ponderscope.figures draws,
and what the notebook returns. Their `figures` are left empty here: the faces draw them
(ponderscope.figures.attach).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ponderscope.core.imaging import png_data_url
from ponderscope.core.workloads import CHAR_CLASS_LABELS, CHAR_CLASSES, char_class
from ponderscope.models.contract import block_labels, exit_labels, exit_threshold, layer_names, token_layer_labels
from ponderscope.models.trace import Trace


FIGURES_DOC = ("the answer's figures by name, each plotly JSON {data, layout} (Plotly.react(div, data, layout)) drawn "
               "by ponderscope.figures with the default display settings")


class Open(BaseModel):
    """An answer: the fields listed are always there; cards and results may carry more. Read it by
    attribute (answer.flops.ratio), or by the JSON's names as a notebook reads JSON (answer["flops"])."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def __getitem__(self, key: str):
        name = self._python_name(key)
        if name is None:
            raise KeyError(key)
        return getattr(self, name)

    def get(self, key: str, default=None):
        name = self._python_name(key)
        return default if name is None else getattr(self, name)

    def __contains__(self, key: str) -> bool:
        return self._python_name(key) is not None

    def _python_name(self, key: str):
        for name, info in type(self).model_fields.items():
            if key == (info.alias or name):
                return name
        return key if key in (self.model_extra or {}) else None

    def json_dict(self) -> dict:
        """The answer as the API sends it (JSON names, e.g. "class")."""
        return self.model_dump(mode="json", by_alias=True)


def json_default(value):
    """json.dumps(..., default=json_default): answers inside plain containers, as the API sends them."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Flops(Open):
    executed: float
    dense: float
    ratio: float = Field(description="executed / dense")


class Prediction(Open):
    index: int
    class_: str = Field(alias="class")
    probability: float


class Grid(Open):
    """Where a map's cells lie on the input image as the model saw it (`input`: width x height
    pixels, spanning [0, width] x [0, height], y down): cell (i, j) is centred at
    (x0 + j dx, y0 + i dy) and covers dx by dy pixels. A block's grid is what the model computed
    (a stride-s block covers s x s pixels a cell); nothing is upsampled on the server."""
    height: int
    width: int
    x0: float
    dx: float
    y0: float
    dy: float


class PonderBlock(Open):
    index: int
    name: str = Field(description="what the model calls this block (its block_names: e.g. \"layers 1–3\" of a transformer), else \"block 1\", ...")
    ponder_cost: list[list[float]] = Field(description="N + R per cell of the block's output map (its own grid)")
    units: list[list[int]] = Field(description="units executed N per cell")
    n_units: Optional[int] = Field(description="the units the block has (Trace: halting's second dimension); null where the model's trace does not say")
    grid: Grid
    mean_ponder: float
    mean_units: float


class PonderMaps(Open):
    total: list[list[float]] = Field(description="ponder cost summed over blocks (each nearest-resized to `grid`), on the finest "
                                                 "block's grid, or on the input's pixels when the request asked for maps='input'")
    units_total: list[list[int]] = Field(description="units executed N summed over blocks, on `grid`")
    grid: Grid = Field(description="where the totals' cells lie on the input")
    blocks: list[PonderBlock]
    min: float = Field(description="the range of `total` (as sent)")
    max: float
    units_min: float = Field(description="the range of `units_total`")
    units_max: float
    mean: float = Field(description="the image's ponder: each block's mean N + R over its positions, summed over blocks")
    mean_units: float = Field(description="the same in units executed N")


class Gates(Open):
    probability: list[float]
    executed: list[bool]
    layers: list[str]


class Exits(Open):
    """A model that lets each image leave at one of E exits (Trace.exit_confidence, exit_taken)."""
    names: list[str] = Field(description="the exits, input to output (the model's exit_names, else \"exit 1\", ...)")
    confidence: list[Optional[float]] = Field(description="each exit's confidence on this image; null where the image did not reach the exit")
    taken: int = Field(description="the exit the image left at (an index into names)")
    threshold: Optional[float] = Field(description="the confidence an exit must reach for the image to leave there, as in force for this "
                                                   "answer (a what-if's, else the trained one); null where the model declares none")


class ImageShown(Open):
    image: str = Field(description="the image as the model saw it: its own URL on this server (fetched once, cacheable), "
                                   "or a data: URL where there is no server (the notebook, ponderscope render)")
    width: int
    height: int
    hash: Optional[str] = None
    sample: Optional[int] = None
    label: Optional[int] = None
    label_class: Optional[str] = None
    box: Optional[list[int]] = None
    resolution: Literal["train", "native"] = Field(description="the resolution the model ran at")
    resolution_note: Optional[str] = Field(None, description="why it is not the resolution asked for (a model that takes one input size only); null: it is")


UNSHOWN = Field(default_factory=list, description="Trace.extras keys of this model that no view draws (docs/own-models.md)")


class ImageAnalysis(Open):
    model: str
    unshown_signals: list[str] = UNSHOWN
    prediction: list[Prediction] = Field(description="top 5")
    flops: Flops
    time_ms: float
    execution: str
    ponder: Optional[PonderMaps] = Field(None, description="models that decide per position (Trace.blocks)")
    gates: Optional[Gates] = Field(None, description="models with per-layer gates (Trace.gates)")
    exits: Optional[Exits] = Field(None, description="models whose images leave at one of several exits (Trace.exit_confidence, exit_taken)")
    input: ImageShown
    whatif: Optional[dict[str, Any]] = Field(None, description="the change in force for this answer (None: the trained model)")
    figures: Optional[dict[str, Any]] = Field(None, description=FIGURES_DOC + ': "map" (the ponder map over the input, or the input alone), '
                                    '"blocks" (every block\'s map: per-position models), "gates" (gated models), "exits" (each exit\'s confidence: models with exits)')


class CharPonder(Open):
    char: str
    bytes: int
    class_: str = Field(alias="class")
    ponder: float
    steps: float
    bits: Optional[float] = None


class TextAnalysis(Open):
    model: str
    unshown_signals: list[str] = UNSHOWN
    chars: list[CharPonder]
    classes: dict[str, dict[str, Any]]
    measure: Literal["steps", "ponder"]
    mean_ponder: float
    mean_steps: float
    bits_per_char: Optional[float] = None
    bytes: int
    flops: Flops
    time_ms: float
    execution: str
    replaced_surrogates: int = Field(0, description="lone surrogates replaced by U+FFFD before the model read the text")
    layer_names: Optional[list[str]] = Field(None, description="models whose trace has token_layers (per byte and layer: the layer computed "
                                                               "it): the L layers' names, input to output (the model's token_layer_names, "
                                                               "else \"layer 1\", ...); null for other models")
    layers: Optional[list[list[float]]] = Field(None, description="with layer_names: per character (in `chars` order) a row of L, 1 where "
                                                                  "the layer computed the character and 0 where it did not (a character of "
                                                                  "several UTF-8 bytes: the fraction of its bytes the layer computed)")
    layer_weights: Optional[list[list[float]]] = Field(None, description="with layers, where the trace has token_layer_weights: per "
                                                                         "character a row of L, the weight the layer's output got (ACT: "
                                                                         "the halting weight p^l; a router: its weight; 0 where the layer "
                                                                         "did not run), the mean over the character's bytes")
    figures: Optional[dict[str, Any]] = Field(None, description=FIGURES_DOC + ': "text" (per character: the measure as bars, the other as a line, surprisal), '
                                              '"layers" (models with layer rows: character x layer, the weight where the layer ran)')


class ParityAnalysis(Open):
    halting_distribution: Optional[list[float]] = Field(None, description="p(n): the probability of halting at step n = 1..N (PonderNet-style models)")
    unshown_signals: list[str] = UNSHOWN
    model: str
    answer: Literal["even", "odd"]
    probability: float
    steps: int
    ponder: float
    nonzero: int
    ones: int
    flops: Flops
    time_ms: float
    vector: list[float] = Field(description="the input vector")
    curve: Optional[dict[str, float]] = Field(None, description="the card's test-set mean ponder by number of nonzero entries (metrics.test.ponder_by_nonzero)")
    figures: Optional[dict[str, Any]] = Field(None, description=FIGURES_DOC + ': "parity" (ponder against nonzero entries over the test-set curve), '
                                              '"halting" (p(n), PonderNet-style models)')



# ------------------------------------------------------------------ answers over a test set
class Histogram(Open):
    edges: list[float]
    counts: list[int]


class ClassRow(Open):
    class_: str = Field(alias="class")
    count: int
    accuracy: Optional[float] = Field(description="null: no image of this class")
    flops_ratio: Optional[float] = Field(description="mean FLOPs executed / dense over the class's images")
    mean_ponder: Optional[float] = None


class ImageRef(Open):
    """One image of the set, with what the model spent on it (the least and most costly)."""
    index: int
    label: int
    class_: str = Field(alias="class")
    flops_ratio: float
    ponder: Optional[float] = None
    image: str = Field(description="a thumbnail, PNG data: URL")


class DatasetAnalysis(Open):
    """An image model over a test set or an image folder (ponderscope.core.statistics.summarize):
    the test metrics in the cards' vocabulary (the card's metrics.test has the same names), per
    class, histograms, the least and most costly images, and gated models' execution rates."""
    kind: Literal["image"] = "image"
    model: str
    classes: list[str]
    examples: int
    accuracy: float
    flops_ratio: float = Field(description="mean FLOPs executed / dense")
    dense_flops: float
    mean_ponder: Optional[float] = Field(None, description="per image: each block's mean N + R, summed over blocks; mean over images")
    layer_execution_rate: Optional[list[float]] = Field(None, description="gated models: how often each layer runs")
    class_layer_execution_rate: Optional[list[list[Optional[float]]]] = Field(None, description="gated models: per class and layer")
    per_class: list[ClassRow]
    ponder_histogram: Optional[Histogram] = None
    flops_histogram: Histogram
    least: list[ImageRef]
    most: list[ImageRef]
    executed_layers_histogram: Optional[Histogram] = None
    layers: Optional[list[str]] = Field(None, description="the gated layers' names")
    exits: Optional[list[str]] = Field(None, description="models with exits: the exits' names, input to output")
    exit_rates: Optional[list[float]] = Field(None, description="models with exits: the fraction of the images that leave at each exit")
    class_exit_rates: Optional[list[list[Optional[float]]]] = Field(None, description="models with exits: per class (rows) the fraction of its images "
                                                                                    "that leave at each exit (null: no image of the class)")
    exit_accuracy: Optional[list[Optional[float]]] = Field(None, description="models with exits: the accuracy of the images that leave at each "
                                                                          "exit (null: none leave there)")
    source: Optional[dict[str, Any]] = Field(None, description="`ponderscope analyze`: the data, processes, devices and command")
    figures: Optional[dict[str, Any]] = Field(None, description=FIGURES_DOC + ': "class", "flops_histogram", "ponder", "ponder_histogram", '
                                              '"layers_histogram", "class_layer", '
                                              '"exits", "class_exit"')


class CorpusAnalysis(Open):
    """A byte LM over its held-out text (the Text view's corpus panel): per character class the
    mean and spread of N and N + R, how often N leaves its most common value, ponder vs surprisal."""
    kind: Literal["text"] = "text"
    model: str
    dataset: Optional[str] = None
    source: str = Field(description="where the numbers come from: the card (ponderscope eval) or measured by the server")
    bytes: Optional[int] = None
    bits_per_byte: Optional[float] = None
    mean_steps: Optional[float] = None
    mean_ponder: Optional[float] = None
    per_char_class: Optional[dict[str, dict[str, Any]]] = None
    steps_histogram: Optional[dict[str, int]] = None
    steps_mode: Optional[int] = None
    steps_off_mode_fraction: Optional[float] = None
    steps_at_cap_fraction: Optional[float] = None
    max_steps: Optional[int] = None
    corr_ponder_surprisal: Optional[float] = None
    corr_steps_surprisal: Optional[float] = None
    layer_names: Optional[list[str]] = Field(None, description="models whose trace has token_layers: the L layers' names; each class of "
                                                               "per_char_class then has \"layers\", the fraction of its bytes each layer computed")
    layer_rates: Optional[list[float]] = Field(None, description="with layer_names: the fraction of all the held-out bytes each layer computed")
    class_labels: dict[str, str] = Field(default_factory=dict)
    figures: Optional[dict[str, Any]] = Field(None, description=FIGURES_DOC + ': "corpus", and "corpus_layers" (models with layer rates: '
                                              'class x layer, the fraction of the class\'s bytes each layer computed)')


class SweepPoint(Open):
    """One setting of a what-if sweep (ponderscope.studies.sweep), measured over the test set."""
    parameter: Optional[str] = Field(description="threshold, cap or gate_bias; null: a model with nothing to move")
    label: Optional[str] = Field(None, description="what the parameter is for this model (its whatif.about[parameter].label)")
    setting: Optional[Union[int, float]] = None
    trained: bool = Field(description="the model's own setting: the card's numbers")
    accuracy: float
    flops_ratio: float
    mean_ponder: Optional[float] = None
    examples: int
    mean_executed_layers: Optional[float] = None


class TrainedPoint(SweepPoint):
    per_class_accuracy: list[Optional[float]]


class UnitLesion(Open):
    name: str
    downsampling: bool
    accuracy: float
    flops_ratio: float
    per_class_accuracy: list[Optional[float]]


class RandomLesion(Open):
    k: int = Field(description="units removed at random (0: none, the trained model)")
    mean: float
    std: float
    min: float
    max: float
    accuracies: list[float]


class LesionStudy(Open):
    """Accuracy without each unit, and without k random units (ponderscope.studies.lesion)."""
    trained: TrainedPoint
    single: list[UnitLesion]
    random: list[RandomLesion]
    classes: list[str]
    units: list[str]
    examples: int
    draws: int
    seed: int
    layer_execution_rate: Optional[list[float]] = None


class Reference(Open):
    label: str
    accuracy: float
    flops_ratio: float
    examples: int


class JobProgress(Open):
    status: Literal["running", "done", "error"]
    progress: float = Field(ge=0, le=1)
    message: str


class DatasetStatus(JobProgress):
    """GET /dataset: the job's progress, and when done its result."""
    result: Optional[Annotated[Union[DatasetAnalysis, CorpusAnalysis], Field(discriminator="kind")]] = None


class StudyStatus(JobProgress):
    """GET /api/studies/{kind}: the jobs of every model asked for, and when all are done their results."""
    models: dict[str, JobProgress] = Field(description="each model's job")
    results: Optional[dict[str, Union[LesionStudy, list[SweepPoint]]]] = Field(None, description="when done, by model: the sweep's points or the lesion study")
    reference: Optional[Reference] = Field(None, description="sweep: the dense twin's accuracy at 100% of the FLOPs")
    figures: Optional[dict[str, Any]] = Field(None, description="when done: plotly JSON by name (sweep; single, random, classes:<model>)")


# ------------------------------------------------------------------ Trace -> answers
def _grid(tensor: torch.Tensor, digits: int = 4) -> list[list[float]]:
    """A 2-D tensor as nested lists of floats rounded to `digits` decimals: in float64, the whole
    array at once (a round per value cost ~2.5 ms of a 60x60 SACT answer). For float32 maps (the
    traces') the same numbers as Python's round on each value, ties included: tests/test_answer_wire.py
    (a float32 value times 10**digits is exact in float64; a float64 value at a decimal tie may
    round the other way)."""
    scale = 10.0 ** digits
    return tensor.double().mul(scale).round_().div_(scale).tolist()


def _int_grid(tensor: torch.Tensor) -> list[list[int]]:
    return tensor.round().to(torch.int64).tolist()


def flops_json(trace: Trace, index: int = 0) -> dict:
    executed = float(trace.flops[index])
    return {"executed": executed, "dense": trace.dense_flops, "ratio": executed / trace.dense_flops}


def grid_on(size: tuple[int, int], cells: tuple[int, int]) -> Grid:
    """The geometry of a map of `cells` (rows, columns) over an input of `size` (height, width) pixels."""
    (height, width), (rows, columns) = size, cells
    dy, dx = height / rows, width / columns
    return Grid(height=rows, width=columns, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy)


def ponder_json(trace: Trace, size: tuple[int, int], maps: str = "grid", block_names=None) -> dict | None:
    """Per-block maps on their own grids, and the totals over blocks (the SACT paper's ponder map,
    Trace.ponder_map) on the finest block's grid, or on the input's `size` with maps="input"
    (exports at full resolution); in ponder cost N + R and in units executed N. `block_names`:
    the model's (models/contract.py block_labels; None: "block 1", ...)."""
    if not trace.blocks:
        return None
    names = block_labels(block_names, len(trace.blocks))
    finest = max((tuple(b.ponder_cost.shape[-2:]) for b in trace.blocks), key=lambda hw: hw[0] * hw[1])
    cells = tuple(size) if maps == "input" else finest
    total_grid = _grid(trace.ponder_map(cells)[0].cpu())
    units_grid = _int_grid(trace.ponder_map(cells, "units")[0].cpu())
    means, units_means = trace.block_means()[0].tolist(), trace.block_means("units")[0].tolist()
    blocks = []
    for index, block in enumerate(trace.blocks):
        cost = block.ponder_cost[0].float().cpu()
        blocks.append({
            "index": index,
            "name": names[index],
            "ponder_cost": _grid(cost),
            "units": _int_grid(block.units[0].cpu()),
            "n_units": block.n_units,
            "grid": grid_on(size, tuple(cost.shape)),
            "mean_ponder": means[index],
            "mean_units": units_means[index],
        })
    return {
        "total": total_grid,
        "units_total": units_grid,
        "grid": grid_on(size, cells),
        "blocks": blocks,
        # the range of the maps as sent (rounded): a map's colour scale ends at its drawn values
        "min": min(map(min, total_grid)),
        "max": max(map(max, total_grid)),
        "units_min": min(map(min, units_grid)),
        "units_max": max(map(max, units_grid)),
        "mean": sum(means),  # the image's ponder (Trace.mean_ponder), as the dataset view and evaluation count it
        "mean_units": sum(units_means),  # the same in units executed N
    }


def gate_names(model, layers: int) -> list[str]:
    """The model's names for its gated layers (`gate_names`, optional in the contract), else
    numbers; names of another length are a TraceContractError (models/contract.py), never renamed."""
    return layer_names(getattr(model, "gate_names", None), layers)


def exits_json(model, trace: Trace, threshold: float | None, index: int = 0) -> dict | None:
    """Example `index`'s exits: each one's name (the model's exit_names, else numbered) and
    confidence (null where the example did not reach it: NaN in the trace), the exit it took, and
    `threshold` (the one in force: models/contract.py exit_threshold, read under the what-if)."""
    if trace.exit_confidence is None:
        return None
    confidence = trace.exit_confidence[index].float().cpu().tolist()
    return {
        "names": exit_labels(getattr(model.module, "exit_names", None), len(confidence)),
        "confidence": [None if not math.isfinite(v) else round(v, 5) for v in confidence],
        "taken": int(trace.exit_taken[index]),
        "threshold": threshold,
    }


def gates_json(model, trace: Trace) -> dict | None:
    if trace.gates is None:
        return None
    names = gate_names(model.module, trace.gates.shape[1])
    return {
        "probability": [round(float(v), 4) for v in trace.gates[0]],
        "executed": [bool(v) for v in trace.executed[0]],
        "layers": names,
    }


def input_json(model, shown, original_size: tuple[int, int], resolution: str, image_hash: str | None = None,
               sample: int | None = None, label: int | None = None, box: list[int] | None = None, url: str | None = None,
               resolution_note: str | None = None) -> dict:
    """The `input` block of an image analysis: the image as the model saw it (`shown`, a PIL
    image) at its `url` on the server, or else inline as a data: URL; and for a test image its
    label and digit box, scaled from `original_size` to it. `resolution`: the one it ran at
    (LoadedModel.resolution), `resolution_note` why it is not the one asked for."""
    if box is not None and shown.size != tuple(original_size):  # boxes are in test-image pixels
        sy, sx = shown.size[1] / original_size[1], shown.size[0] / original_size[0]
        box = [round(box[0] * sy), round(box[1] * sx), round(box[2] * sy), round(box[3] * sx)]
    classes = model.card.classes or []
    return {
        "image": url or png_data_url(shown),
        "width": shown.width,
        "height": shown.height,
        "hash": image_hash,
        "sample": sample,
        "label": label,
        "label_class": classes[label] if label is not None and label < len(classes) else None,
        "box": box,
        "resolution": resolution,
        "resolution_note": resolution_note,
    }


def analyze_image(model, x: torch.Tensor, input: dict, whatif=None, maps: str = "grid") -> ImageAnalysis:
    """The answer of POST /{id}/image for `model` (a LoadedModel) on the prepared input x; `input`: its input_json;
    `whatif`: a ponderscope.models.whatif.WhatIf in force for this answer only (None: the trained model);
    `maps`: the totals on the finest block's grid ("grid") or on the input's pixels ("input")."""
    from ponderscope.models.whatif import applied

    with applied(model.module, whatif):
        trace, ms = model.trace(x)
        threshold = exit_threshold(model.module) if trace.exit_confidence is not None else None  # the one in force
    probabilities = F.softmax(trace.logits[0].float(), -1).cpu()
    top = torch.topk(probabilities, min(5, len(probabilities)))
    classes = model.card.classes or [str(i) for i in range(len(probabilities))]
    return ImageAnalysis(**{
        "model": model.id,
        "prediction": [{"index": int(i), "class": classes[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices)],
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
        "execution": trace.execution or model.execution,  # the one that ran (LoadedModel.trace)
        "unshown_signals": extras_json(trace)["unshown_signals"],
        "ponder": ponder_json(trace, tuple(x.shape[-2:]), maps, getattr(model.module, "block_names", None)),
        "gates": gates_json(model, trace),
        "exits": exits_json(model, trace, threshold),
        "input": input,
        "whatif": None if whatif is None or whatif.is_trained() else whatif.as_dict(),
    })


def analyze_text(model, text: str) -> TextAnalysis:
    """Per Unicode character: the mean ponder and steps over its UTF-8 bytes (the model reads
    bytes), its surprisal in bits = the sum over its bytes of -log2 p(byte | preceding), and its
    class (ponderscope.core.workloads.char_class: of the character, so "é" is a letter here while the held-
    out statistics, per byte, count its two bytes as markup / other). Per class: count and mean N, N + R. `measure`: the quantity that
    varies over this text (steps N if it does, else ponder N + R), which the page colours by.
    A model whose trace has token_layers: per character its layer row and weights (text_layers).
    Lone surrogates (which JSON can carry) become U+FFFD first (`replaced_surrogates`)."""
    text, replaced = valid_unicode(text)
    data = text.encode("utf-8")
    x = torch.tensor([list(data)], dtype=torch.long)
    trace, ms = model.trace(x)
    logits = trace.logits[0].float().cpu()
    log_probs = F.log_softmax(logits, -1)
    # -log2 p(byte t | bytes before it), for t >= 1 (one gather, not an index per byte)
    byte_bits = [None] + (-log_probs[:-1].gather(1, x[0, 1:, None]).squeeze(1).double() / math.log(2)).tolist()
    ponder, steps = trace.ponder[0].cpu().tolist(), trace.steps[0].cpu().tolist()
    chars, position, previous = [], 0, None
    for char in text:
        width = len(char.encode("utf-8"))
        span = range(position, position + width)
        bits = [byte_bits[i] for i in span]
        chars.append({
            "char": char,
            "bytes": width,
            "class": char_class(char, previous),
            "ponder": round(sum(ponder[i] for i in span) / width, 4),
            "steps": round(sum(steps[i] for i in span) / width, 3),
            "bits": None if bits[0] is None else round(sum(bits), 4),
        })
        position, previous = position + width, char
    known = [c["bits"] for c in chars if c["bits"] is not None]
    layers = text_layers(model, trace, [c["bytes"] for c in chars])
    classes = {}
    for name in CHAR_CLASSES:
        members = [c for c in chars if c["class"] == name]
        if members:
            classes[name] = {"label": CHAR_CLASS_LABELS[name], "count": len(members),
                             "steps": sum(c["steps"] for c in members) / len(members),
                             "ponder": sum(c["ponder"] for c in members) / len(members)}
    return TextAnalysis(**{
        "model": model.id,
        "chars": chars,
        "classes": classes,
        "measure": "steps" if len({c["steps"] for c in chars}) > 1 else "ponder",
        "mean_ponder": sum(ponder) / len(ponder),
        "mean_steps": sum(steps) / len(steps),
        "bits_per_char": sum(known) / len(known) if known else None,
        "bytes": len(data),
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
        "execution": trace.execution or model.execution,  # the one that ran (LoadedModel.trace)
        "unshown_signals": extras_json(trace)["unshown_signals"],
        "replaced_surrogates": replaced,
        **layers,
    })


def text_layers(model, trace: Trace, widths: list[int], index: int = 0) -> dict:
    """Trace.token_layers [B, T, L] (and token_layer_weights) of text `index` -> per character (of
    `widths` UTF-8 bytes each, in order) a row of L: whether each layer computed it, 0 or 1, and
    the weight its output got; for a character of several bytes the mean over them. With the
    layers' names (the model's token_layer_names, else numbered). {} without token_layers."""
    if trace.token_layers is None:
        return {}
    ran = trace.token_layers[index].cpu()
    count = int(ran.shape[1])
    owner = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))  # the character each byte belongs to
    bytes_per_char = torch.tensor(widths, dtype=torch.float64).unsqueeze(1)

    def per_char(values: torch.Tensor, digits: int) -> list[list[float]]:
        sums = torch.zeros(len(widths), count, dtype=torch.float64).index_add_(0, owner, values.double())
        return _grid(sums / bytes_per_char, digits)

    weights = trace.token_layer_weights
    return {"layer_names": token_layer_labels(getattr(model.module, "token_layer_names", None), count),
            "layers": per_char(ran, 3),
            "layer_weights": None if weights is None else per_char(weights[index].float().cpu(), 4)}


# Trace.extras the page draws (docs/own-models.md); any other key is named in `unshown_signals`.
SHOWN_EXTRAS = ("halting_distribution",)
NOT_SIGNALS = ("step_logits",)  # training-only extras (PonderNet's answers at every step)


def extras_json(trace: Trace, index: int = 0) -> dict:
    """What a model's trace carries beyond the fields every view reads: the halting distribution
    p(n) over steps (PonderNet-style models), and the names of signals the page does not draw."""
    out = {"unshown_signals": sorted(k for k in trace.extras if k not in SHOWN_EXTRAS + NOT_SIGNALS)}
    distribution = trace.extras.get("halting_distribution")
    if distribution is not None:  # [B, T, N]: for one input step (parity), the distribution itself
        out["halting_distribution"] = [round(float(v), 5) for v in distribution[index, 0]]
    return out


def analyze_parity(model, vector: list[float]) -> ParityAnalysis:
    """The answer of POST /{id}/parity: even or odd, with the steps and ponder spent on `vector`;
    the card's test-set curve (mean ponder by nonzero entries) comes along for the figure."""
    x = torch.tensor([vector], dtype=torch.float32)
    trace, ms = model.trace(x)
    probabilities = F.softmax(trace.logits[0].float(), -1).cpu()
    answer = int(probabilities.argmax())
    return ParityAnalysis(**{
        "model": model.id,
        "answer": ["even", "odd"][answer],
        "probability": float(probabilities[answer]),
        "steps": int(trace.steps[0, 0]),
        "ponder": float(trace.ponder[0, 0]),
        **extras_json(trace),
        "nonzero": int(sum(1 for v in vector if v != 0)),
        "ones": int(sum(1 for v in vector if v == 1)),
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
        "vector": list(vector),
        "curve": model.card.test_metrics.get("ponder_by_nonzero"),
    })


def valid_unicode(text: str) -> tuple[str, int]:
    """JSON can carry lone or reversed surrogates ("\\ud800"), which are no characters and have no
    UTF-8: each becomes U+FFFD, the replacement character -> (the text, how many were replaced)."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed, fixed.count("\ufffd") - text.count("\ufffd")
