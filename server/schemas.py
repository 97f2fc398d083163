"""Request and response bodies (pydantic): what the OpenAPI document at /docs promises.

Every route declares its answers: the response model on 200, and `{"detail": str}` (ErrorBody)
on each 4xx/503 it can give (`errors(...)`). Limits a schema can state are in it (lengths,
ranges, patterns, enums); the ones it cannot (a text's UTF-8 bytes, a parity model's bits, an
image's pixels) are in the field descriptions and answered with the documented 4xx.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ponderscope.core.answers import Open
from ponderscope.models.checkpoint import MAX_PARITY_BITS  # a card's task.bits is checked against the same bound

MAX_TEXT_BYTES = 10_000  # the model reads UTF-8 bytes: the cost is in bytes, not characters
HASH_PATTERN = r"^[0-9a-f]{64}$"


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what went wrong and what to do about it, in a sentence")


_ERROR_MEANING = {
    400: "the request does not fit this model or endpoint (e.g. a text model asked for an image analysis), or a malformed form",
    404: "no such model, stored image, test sample; or the model has no test set here",
    413: "over a limit: body size, image pixels, text bytes; the message says which",
    422: "the request fails validation (the message names the field), or the model's Trace broke the contract on this input "
         "(docs/own-models.md: the message names the Trace field, what was expected and what the model gave)",
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

    threshold: Optional[float] = Field(None, gt=0, le=1, description="models with a threshold (whatif.threshold; whatif.about.threshold says what it "
                                                                     "is): halting models halt once the sum of h reaches it (trained: 1 - eps), models "
                                                                     "with exits let an image leave once an exit's confidence reaches it")
    cap: Optional[int] = Field(None, ge=1, le=10_000, description="halting models (whatif.cap; whatif.about.cap): at most this many units per block "
                                                                 "(or layers per token)")
    gate_bias: Optional[float] = Field(None, ge=-100, le=100, description="gated models (whatif.gate_bias): run a block iff logit_run - logit_skip > gate_bias (trained: 0)")
    lesion: list[str] = Field([], max_length=1000, description="units / gated blocks to remove (names from the model's whatif.units)")


class ImageRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["sample"]}]})

    image: Optional[str] = Field(None, pattern=HASH_PATTERN, description="sha256 of an image stored with POST /api/images (give this or `sample`)")
    sample: Optional[int] = Field(None, ge=0, description="index into the model's test set (give this or `image`); 404 past its end")
    resolution: Literal["train", "native"] = Field("train", description="resize to the training size, or run at the image's own size (long side capped at 512, or at the card's preprocess.native_max_side)")
    invert: bool = Field(False, description="invert grey levels (dark-on-light photos for light-on-dark datasets)")
    whatif: Optional[WhatIfRequest] = Field(None, description="the same model with one change: threshold, cap, gate bias or removed units (JSON bodies only)")
    maps: Literal["grid", "input"] = Field("grid", description="the total ponder maps on the finest block's grid (what the model computed), "
                                                               "or on the input's pixels (exports at full resolution); blocks are always on their own grids")
    include: list[Literal["numbers", "figures"]] = Field(["numbers", "figures"], min_length=1, max_length=2,
                                                         description="what the answer carries: the numbers, the figures, or both (then the figures' "
                                                                     "arrays that are numbers of the answer are sent once, as {\"$ref\": \"path.in.answer\"})")


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
# The answers (image, text, parity, dataset, study, job status) are the core's types
# (ponderscope.core.answers), used here as the routes' response models; these are the server's own.


class Health(Open):
    status: Literal["ok"]
    models: int
    device: str
    load_errors: list[str] = Field(description="checkpoints that could not be loaded, one line each")
    request_threads: int = Field(description="how many requests are worked on at once (serve --request-threads); the others wait in line")


class ExecutionSummary(Open):
    """Which execution runs the model (models/sparse.py: the same numbers; ponderscope.core.execution)."""
    mode: Literal["auto", "sparse", "masked", "fixed"] = Field(description="what the server was started with (serve --execution); "
                                                                 "fixed: the module's own, not planned")
    plan: dict[str, Literal["sparse", "masked", "tiles"]] = Field(description="planned batch size -> the execution it runs (a batch of another size "
                                                                  "takes the nearest planned size on a log scale; tiles: per-position halting only, "
                                                                  "models/tiles.py); empty: `default` always")
    default: Literal["sparse", "masked", "tiles"] = Field(description="what runs when nothing was planned")
    timings_ms: dict[str, dict[str, float]] = Field(description="planned batch size -> median ms of one forward pass of each execution, "
                                                    "on a synthetic input of the model's shape")
    source: Literal["measured", "cached", "fixed", "one path"] = Field(description="measured at this start, cached from an earlier one, "
                                                                       "fixed by the mode, or one path (nothing to choose)")
    device: str = Field(description="the device the timings were taken on (the CPU's model and threads, or the GPU's name); empty if none")
    note: str


class ModelSummary(Open):
    id: str
    name: str = Field(description="architecture, e.g. sact_resnet32")
    family: str = Field(description="as the model registered it (models.model_info): a key of models.FAMILIES, built in or a plugin's")
    family_label: str
    family_description: str = Field("", description="how the family's models decide, as it was registered (models.register_family); may be empty")
    reference: bool = Field(False, description="its family skips nothing (registered with reference=True): the what-if sweep's reference point")
    family_rank: int = Field(description="where the family comes in the registry's order (the page lists models by it)")
    kind: Literal["image", "text", "parity", "other"]
    dataset: Optional[str] = None
    task: dict[str, Any]
    classes: Optional[list[str]] = None
    preprocess: Optional[dict[str, Any]] = None
    metrics: dict[str, Any]
    test_set: bool = Field(description="whether samples and the dataset view (a text model: its held-out statistics) are available")
    no_test_set: Optional[str] = Field(None, description="why not, when test_set is false (e.g. the card names no data set)")
    whatif: Optional[dict[str, Any]] = Field(None, description="what can be changed at inference (models/whatif.py): threshold and cap (halting models), "
                                             "gate_bias (gated models) with their trained values, removable units and the downsampling ones, and "
                                             "`about`: per setting its label and description in the model's words; null: nothing")
    analyses: list[dict[str, Any]] = Field([], description="finished `ponderscope analyze` results of this model (name, data, examples, accuracy): "
                                           "GET /dataset?source=NAME shows one")
    source: Optional[dict[str, Any]] = Field(None, description="for imported checkpoints: the authors' format, files, hashes")
    path: str = Field(description="the checkpoint folder's real path on the server")
    card: dict[str, Any]
    device: str
    execution: ExecutionSummary = Field(description="sparse or masked, per batch size: the plan (an answer's `execution` says which ran)")


class StoredImage(Open):
    hash: str = Field(pattern=HASH_PATTERN, description="sha256 of the stored PNG; names the image in later requests")
    width: int
    height: int
    mode: Literal["L", "RGB"]
    filename: Optional[str] = None


class Sample(Open):
    index: int
    label: int
    class_: str = Field(alias="class")
    image: str = Field(description="PNG data: URL")
