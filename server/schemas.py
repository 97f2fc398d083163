"""Request and response bodies (pydantic): what the OpenAPI document at /docs promises.

Every route declares its answers: the response model on 200, and `{"detail": str}` (ErrorBody)
on each 4xx/503 it can give (`errors(...)`). Limits a schema can state are in it (lengths,
ranges, patterns, enums); the ones it cannot (a text's UTF-8 bytes, a parity model's bits, an
image's pixels) are in the field descriptions and answered with the documented 4xx.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ponderscope.models.checkpoint import MAX_PARITY_BITS  # a card's task.bits is checked against the same bound

MAX_TEXT_BYTES = 10_000  # the model reads UTF-8 bytes: the cost is in bytes, not characters
HASH_PATTERN = r"^[0-9a-f]{64}$"


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what went wrong and what to do about it, in a sentence")


_ERROR_MEANING = {
    400: "the request does not fit this model or endpoint (e.g. a text model asked for an image analysis), or a malformed form",
    404: "no such model, stored image, test sample; or the model has no test set here",
    413: "over a limit: body size, image pixels, text bytes; the message says which",
    422: "the request fails validation; the message names the field",
    503: "the model's test data set is not installed on the server (the message gives the command)",
}


def errors(*codes: int) -> dict:
    """The `responses=` of a route taking parameters that can answer these error statuses (and
    422, as any such route can), all as ErrorBody; this replaces FastAPI's default 422 schema,
    which does not describe this server's one-string messages."""
    return {code: {"model": ErrorBody, "description": _ERROR_MEANING[code]} for code in sorted({*codes, 422})}


# --- requests ------------------------------------------------------------------------------------

class WhatIfRequest(BaseModel):
    """One documented change to the trained model for this answer (models/whatif.py); the model's
    `whatif` (GET /api/models) says which apply and their trained values."""
    model_config = ConfigDict(extra="forbid")

    threshold: Optional[float] = Field(None, gt=0, le=1, description="ACT/SACT: halt once the sum of h reaches this (trained: 1 - eps)")
    cap: Optional[int] = Field(None, ge=1, le=10_000, description="ACT/SACT: at most this many units per block")
    gate_bias: Optional[float] = Field(None, ge=-100, le=100, description="ConvNet-AIG: run a block iff logit_run - logit_skip > gate_bias (trained: 0)")
    lesion: list[str] = Field([], max_length=1000, description="units / gated blocks to remove (names from the model's whatif.units)")


class ImageRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["sample"]}]})

    image: Optional[str] = Field(None, pattern=HASH_PATTERN, description="sha256 of an image stored with POST /api/images (give this or `sample`)")
    sample: Optional[int] = Field(None, ge=0, description="index into the model's test set (give this or `image`); 404 past its end")
    resolution: Literal["train", "native"] = Field("train", description="resize to the training size, or run at the image's own size (long side capped at 512, or at the card's preprocess.native_max_side)")
    invert: bool = Field(False, description="invert grey levels (dark-on-light photos for light-on-dark datasets)")
    whatif: Optional[WhatIfRequest] = Field(None, description="the same model with one change: threshold, cap, gate bias or removed units (JSON bodies only)")


class TextRequest(BaseModel):
    # maxLength in the document (no text over 10,000 characters fits in 10,000 bytes), but the
    # limit checked is the bytes', by the route: its 413 says so.
    # (Both bounds are checked by the route: pydantic's own length check cannot read a string that
    # holds a lone surrogate, and would refuse what the route repairs.)
    text: str = Field(..., json_schema_extra={"minLength": 1, "maxLength": MAX_TEXT_BYTES},
                      description=f"any Unicode text of 1..{MAX_TEXT_BYTES} UTF-8 bytes (over that: 413); lone surrogates become U+FFFD")


def _a_number(value):
    """JSON's 1 and 1.0 are one integer (as JSON Schema says); true and "1" are not numbers."""
    if isinstance(value, (bool, str)):
        raise ValueError("an entry must be the number -1, 0 or 1, not a boolean or a string")
    return value


class ParityRequest(BaseModel):
    vector: list[Annotated[int, Field(ge=-1, le=1), BeforeValidator(_a_number)]] = Field(
        ..., min_length=1, max_length=MAX_PARITY_BITS, description="entries -1, 0 or 1 (integers); exactly the model's task.bits of them (else 422)")


# --- responses -----------------------------------------------------------------------------------

FIGURES_DOC = ("the answer's figures by name, each plotly JSON {data, layout} (Plotly.react(div, data, layout)) drawn "
               "by ponderscope.figures with the default display settings")


class Open(BaseModel):
    """A response object: the fields listed are always there; cards and results may carry more."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Health(Open):
    status: Literal["ok"]
    models: int
    device: str
    load_errors: list[str] = Field(description="checkpoints that could not be loaded, one line each")


class ModelSummary(Open):
    id: str
    name: str = Field(description="architecture, e.g. sact_resnet32")
    family: str = Field(description="as the model registered it (models.model_info): dense, act, sact, aig, rnn, act-rnn, or a plugin's")
    family_label: str
    family_rank: int = Field(description="where the family comes in the registry's order (the page lists models by it)")
    kind: Literal["image", "text", "parity", "other"]
    dataset: Optional[str] = None
    task: dict[str, Any]
    classes: Optional[list[str]] = None
    preprocess: Optional[dict[str, Any]] = None
    metrics: dict[str, Any]
    test_set: bool = Field(description="whether samples and the dataset view are available")
    whatif: Optional[dict[str, Any]] = Field(None, description="what can be changed at inference (models/whatif.py): threshold and cap (ACT/SACT), "
                                             "gate_bias (AIG) with their trained values, removable units and the downsampling ones; null: nothing")
    analyses: list[dict[str, Any]] = Field([], description="finished `ponderscope analyze` results of this model (name, data, examples, accuracy): "
                                           "GET /dataset?source=NAME shows one")
    source: Optional[dict[str, Any]] = Field(None, description="for imported checkpoints: the authors' format, files, hashes")
    path: str = Field(description="the checkpoint folder's real path on the server")
    card: dict[str, Any]
    device: str


class StoredImage(Open):
    hash: str = Field(pattern=HASH_PATTERN, description="sha256 of the stored PNG; names the image in later requests")
    width: int
    height: int
    mode: Literal["L", "RGB"]
    filename: Optional[str] = None


class Flops(Open):
    executed: float
    dense: float
    ratio: float = Field(description="executed / dense")


class Prediction(Open):
    index: int
    class_: str = Field(alias="class")
    probability: float


class PonderBlock(Open):
    index: int
    ponder_cost: list[list[float]] = Field(description="N + R per position of the block's output map")
    units: list[list[float]] = Field(description="units executed N per position")
    n_units: int
    height: int
    width: int
    mean_ponder: float
    mean_units: float


class PonderMaps(Open):
    total: list[list[float]] = Field(description="ponder cost summed over blocks, at input resolution")
    units_total: list[list[float]]
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


class ImageShown(Open):
    image: str = Field(description="the image as the model saw it, a data: URL")
    width: int
    height: int
    hash: Optional[str] = None
    sample: Optional[int] = None
    label: Optional[int] = None
    label_class: Optional[str] = None
    box: Optional[list[int]] = None
    resolution: Literal["train", "native"]


UNSHOWN = Field(default_factory=list, description="Trace.extras keys of this model that no view draws (docs/own-models.md)")


class ImageAnalysis(Open):
    model: str
    unshown_signals: list[str] = UNSHOWN
    prediction: list[Prediction] = Field(description="top 5")
    flops: Flops
    time_ms: float
    execution: str
    ponder: Optional[PonderMaps] = Field(None, description="ACT / SACT ResNets")
    gates: Optional[Gates] = Field(None, description="ConvNet-AIG")
    input: ImageShown
    whatif: Optional[dict[str, Any]] = Field(None, description="the change in force for this answer (None: the trained model)")
    figures: dict[str, Any] = Field(description=FIGURES_DOC + ': "map" (the ponder map over the input, or the input alone), '
                                    '"blocks" (every block\'s map: ACT, SACT), "gates" (ConvNet-AIG)')


class Sample(Open):
    index: int
    label: int
    class_: str = Field(alias="class")
    image: str = Field(description="PNG data: URL")


class DatasetStatus(Open):
    status: Literal["running", "done", "error"]
    progress: float = Field(ge=0, le=1)
    message: str
    result: Optional[dict[str, Any]] = Field(None, description="when done: per-class accuracy, FLOPs and ponder, histograms, extremes, gate rates (image); "
                                             "per character class N and N + R (text); and `figures`, by name, as plotly JSON (ponderscope.figures.dataset_figures)")


class StudyStatus(Open):
    status: Literal["running", "done", "error"]
    progress: float = Field(ge=0, le=1)
    message: str
    models: dict[str, dict[str, Any]] = Field(description="each model's job: status, progress, message")
    results: Optional[dict[str, Any]] = Field(None, description="when done, by model: the sweep's points or the lesion study (ponderscope.studies)")
    reference: Optional[dict[str, Any]] = Field(None, description="sweep: the dense twin's accuracy at 100% of the FLOPs")
    figures: Optional[dict[str, Any]] = Field(None, description="when done: plotly JSON by name (sweep; single, random, classes:<model>)")


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
    replaced_surrogates: int = Field(description="lone surrogates replaced by U+FFFD before the model read the text")
    figures: dict[str, Any] = Field(description=FIGURES_DOC + ': "text" (per character: the measure as bars, the other as a line, surprisal)')


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
    figures: dict[str, Any] = Field(description=FIGURES_DOC + ': "parity" (ponder against nonzero entries over the test-set curve)')
