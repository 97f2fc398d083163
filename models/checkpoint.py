"""Checkpoints: a directory with `model.safetensors` (tensors only) and `card.json` (what it is).

Nothing here unpickles: safetensors is a JSON header plus raw tensor bytes, so a hostile file
can at worst fail to parse. The card names a registered model; an unknown name is refused
before any weights are read.

Every card field a request reads (task, classes, preprocess, dataset, metrics, source, config) is
checked when the checkpoint loads, and the built model is run once on a tiny input of the kind its
task gives it, its Trace checked field by field (models/contract.py): a card the server could
not use, or a model that breaks the Trace contract, is a CheckpointError, one line of the form
`<dir>/card.json: <field> must be <what is allowed>, not <value>`, so the server lists it in its
load_errors and serves the other checkpoints; no card makes a request fail later.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .contract import TraceContractError, check_trace, declarations, fixed_input_size
from .registry import UnknownModelError, create_model, list_models, model_info

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
REQUIRED_CARD_FIELDS = ("model", "model_kwargs", "task")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says why, on one line that any
    response can carry (a folder name's undecodable bytes, lone surrogates, are shown escaped)."""

    def __init__(self, message: str):
        super().__init__(str(message).encode("utf-8", "backslashreplace").decode("utf-8"))


def read_card(path: str | os.PathLike) -> dict:
    """The card, with every field a request reads checked (see `_check_card`); a card that the
    server could not use is a CheckpointError whose one-line message names the field."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{path}: no {CARD_FILE} (a checkpoint is a directory with {WEIGHTS_FILE} and {CARD_FILE})")
    size = card_path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise CheckpointError(f"{card_path}: {size / 1e6:.1f} MB; a card may have at most {MAX_CARD_BYTES // (1 << 20)} MB")
    try:
        # NaN and Infinity (Python writes them; JSON has no such numbers) are read as null: no
        # response or page could carry them.
        card = json.loads(card_path.read_text(encoding="utf-8"), parse_constant=lambda name: None)
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError, or an integer of over 4300 digits
        raise CheckpointError(f"{card_path}: not valid JSON ({_one_line(error)})") from None
    except RecursionError:
        raise CheckpointError(f"{card_path}: nested too deep to parse; a card nests at most {MAX_CARD_DEPTH} levels") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path}: must hold a JSON object")
    missing = [f for f in REQUIRED_CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"{card_path}: missing field(s) {', '.join(missing)}")
    _check_card(card_path, card)
    return card


TASKS = ("classify", "parity", "bytes-lm")
RESIZES = ("stretch", "center_crop_fraction", "shorter_then_center_crop")  # ponderscope/core/imaging.py: prepare
NORMALIZATIONS = ("mean_std", "per_image_standardization", "minus_one_to_one")  # ponderscope/core/imaging.py: normalize
MAX_SIDE = 4096  # input_size, resize_shorter, native_max_side
MAX_SIZE_MULTIPLE = 256
MIN_NATIVE_SIDE = 8  # ponderscope/core/imaging.py: "native" sizes are at least 8 pixels a side
MAX_PARITY_BITS = 1024  # also the longest vector a request may send (server/schemas.py)
MAX_SEQ_LEN = 1_000_000
MAX_CARD_BYTES = 16 << 20
MAX_CARD_DEPTH = 32  # nesting; the bundled cards nest 5 levels, and the JSON encoder recurses per level
# The image test sets the project can load (for samples and the dataset view), with their number
# of classes: the test labels index the model's outputs and the card's classes.
TEST_SET_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cluttered-mnist": 10}
_MISSING = object()


def _one_line(error: object, limit: int = 300) -> str:
    """An error's message on one line (torch's run over several), cut to `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: object) -> str:
    if value is _MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(card_path: Path, field: str, allowed: str, value: object = _MISSING, shown: str | None = None) -> None:
    """The one message format: `<dir>/card.json: <field> must be <what is allowed>, not <value>`."""
    raise CheckpointError(f"{card_path}: {field} must be {allowed}, not {shown if shown is not None else _shown(value)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite number a float holds (JSON integers can be far larger)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= 1e300 if isinstance(value, int) else math.isfinite(value)


def _check_int(card_path: Path, field: str, value: object, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        _refuse(card_path, field, f"a whole number {low}..{high}", value)


def _check_object(card_path: Path, field: str, value: object, nullable: bool) -> None:
    if not (isinstance(value, dict) or nullable and value is None):
        _refuse(card_path, field, "an object" + (" or null" if nullable else ""), value)


def has_image_test_set(card: dict) -> bool:
    """Whether the card names an image test set the project can load: one of TEST_SET_CLASSES, or
    an image folder (ponderscope.core.workloads.no_test_set says why the others have none)."""
    dataset = card.get("dataset")
    return card["task"]["name"] == "classify" and isinstance(dataset, str) and (
        dataset in TEST_SET_CLASSES or dataset.startswith("imagefolder:"))


def _check_card(card_path: Path, card: dict) -> None:
    """The card fields the server reads at request time, checked when the checkpoint loads (a bad
    card is one load error, never a failing request later). What fits the model itself (classes
    per output, the input the task gives it) is checked once it is built: `_check_fits_model`."""
    _check_json_tree(card_path, card)
    if not isinstance(card["model"], str):
        _refuse(card_path, "model", "the name of a registered model (a string)", card["model"])
    task = card["task"]
    if not isinstance(task, dict) or task.get("name") not in TASKS:
        raise CheckpointError(f"{card_path}: task must be an object whose name is one of {', '.join(TASKS)}, not {_shown(task)}")
    if card["model"] in list_models() and task["name"] not in model_info(card["model"]).tasks:
        _refuse(card_path, "task.name", f"one of {', '.join(model_info(card['model']).tasks)} (what {card['model']} was registered for)", task["name"])
    if task["name"] == "parity" and "bits" in task:
        _check_int(card_path, "task.bits", task["bits"], 1, MAX_PARITY_BITS)
    classes = card.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        _refuse(card_path, "classes", "a list of names (strings) or null", classes)
    dataset = card.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        _refuse(card_path, "dataset", "a string or null", dataset)
    if isinstance(dataset, str) and dataset.startswith("imagefolder:") and not dataset.split(":", 1)[1].strip():
        _refuse(card_path, "dataset", "'imagefolder:PATH' with a folder PATH", dataset)
    if "metrics" in card:
        metrics = card["metrics"]
        _check_object(card_path, "metrics", metrics, nullable=False)
        test = metrics.get("test")
        _check_object(card_path, "metrics.test", test, nullable=True)
        for key in ("per_char_class", "steps_histogram"):  # the text view's corpus panel reads them
            if test and key in test:
                _check_object(card_path, f"metrics.test.{key}", test[key], nullable=False)
    if "source" in card:
        _check_object(card_path, "source", card["source"], nullable=True)
    if "config" in card:
        _check_object(card_path, "config", card["config"], nullable=False)
        _check_data_options(card_path, card)
    if task["name"] == "classify":
        _check_preprocess(card_path, card)
    elif "preprocess" in card:  # not read for other tasks, but served as an object or null
        _check_object(card_path, "preprocess", card["preprocess"], nullable=True)


def _check_json_tree(card_path: Path, card: dict) -> None:
    """Every string encodable as UTF-8 (JSON's \\udXXX escapes can make lone surrogates, which no
    response can carry) and at most MAX_CARD_DEPTH levels of nesting."""
    stack = [(card, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_CARD_DEPTH:
            _refuse(card_path, _shown_path(where), f"nested at most {MAX_CARD_DEPTH} levels deep", shown=f"{depth} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            at = f"{where}.{key}" if isinstance(key, str) and where else key if isinstance(key, str) else f"{where}[{key}]"
            for text in (key, item):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        escaped = text.encode("utf-8", "backslashreplace").decode()
                        _refuse(card_path, _shown_path(at), "valid Unicode text (no lone surrogate such as \\ud800)",
                                shown=f'"{escaped}"' if len(escaped) <= 58 else f'"{escaped[:55]}..."')
            if isinstance(item, (dict, list)):
                stack.append((item, at, depth + 1))


def _shown_path(where: str) -> str:
    where = where.encode("utf-8", "backslashreplace").decode()
    return where if len(where) <= 60 else where[:57] + "..."


def _check_data_options(card_path: Path, card: dict) -> None:
    """config.data_options: what the server passes to ponderscope.core.workloads.make_workload."""
    options = card["config"].get("data_options")
    _check_object(card_path, "config.data_options", options, nullable=True)
    options = options or {}
    field = "config.data_options."
    if "flip" in options and not isinstance(options["flip"], bool):
        _refuse(card_path, field + "flip", "true or false", options["flip"])
    if "pad" in options:
        _check_int(card_path, field + "pad", options["pad"], 0, MAX_SIDE)
    if "cluttered_train_size" in options:
        _check_int(card_path, field + "cluttered_train_size", options["cluttered_train_size"], 1, 10**9)
    if "seq_len" in options:
        _check_int(card_path, field + "seq_len", options["seq_len"], 1, MAX_SEQ_LEN)
    if "val_fraction" in options and not (_is_number(options["val_fraction"]) and 0 < options["val_fraction"] < 1):
        _refuse(card_path, field + "val_fraction", "a number in (0, 1)", options["val_fraction"])
    if "workers" in options:
        _check_int(card_path, field + "workers", options["workers"], 0, 64)
    if "channels" in options:
        channels = options["channels"]  # the channels an image folder's test images are read with
        preprocess = card.get("preprocess") if str(card.get("dataset")).startswith("imagefolder:") else None
        wanted = preprocess.get("channels") if isinstance(preprocess, dict) and preprocess.get("channels") in (1, 3) else None
        if not _is_int(channels) or channels not in ((wanted,) if wanted else (1, 3)):
            _refuse(card_path, field + "channels", f"{wanted} (preprocess.channels)" if wanted else "1 or 3", channels)


def _check_preprocess(card_path: Path, card: dict) -> None:
    """How ponderscope/core/imaging.py prepares an image for an image classifier (see `prepare`)."""
    preprocess = card.get("preprocess", _MISSING)
    if not isinstance(preprocess, dict):
        _refuse(card_path, "preprocess", "an object saying how an image becomes the model's input (channels, input_size, ...)", preprocess)
    get = preprocess.get
    channels = get("channels", _MISSING)
    if not _is_int(channels) or channels not in (1, 3):
        _refuse(card_path, "preprocess.channels", "1 or 3", channels)
    size = get("input_size", _MISSING)
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in size)):
        _refuse(card_path, "preprocess.input_size", f"[height, width], two whole numbers 1..{MAX_SIDE}", size)
    resize = get("resize", "stretch")
    if not isinstance(resize, str) or resize not in RESIZES:
        _refuse(card_path, "preprocess.resize", "one of " + ", ".join(RESIZES), resize)
    if "crop_fraction" in preprocess and not (_is_number(preprocess["crop_fraction"]) and 0 < preprocess["crop_fraction"] <= 1):
        _refuse(card_path, "preprocess.crop_fraction", "a number in (0, 1]", preprocess["crop_fraction"])
    if "resize_shorter" in preprocess:
        _check_int(card_path, "preprocess.resize_shorter", preprocess["resize_shorter"], 1, MAX_SIDE)
    if "native_max_side" in preprocess:
        _check_int(card_path, "preprocess.native_max_side", preprocess["native_max_side"], MIN_NATIVE_SIDE, MAX_SIDE)
    if "size_multiple" in preprocess:
        multiple = preprocess["size_multiple"]
        _check_int(card_path, "preprocess.size_multiple", multiple, 1, MAX_SIZE_MULTIPLE)
        if any(v % multiple for v in size):
            _refuse(card_path, "preprocess.input_size", f"multiples of preprocess.size_multiple {multiple}", size)
    normalize = get("normalize", "mean_std")
    if not isinstance(normalize, str) or normalize not in NORMALIZATIONS:
        _refuse(card_path, "preprocess.normalize", "one of " + ", ".join(NORMALIZATIONS), normalize)
    # The test set (samples, the dataset view) is normalised with mean and std whatever `normalize` says.
    needed = normalize == "mean_std" or has_image_test_set(card)
    why = "" if normalize == "mean_std" else f" (the {card.get('dataset')} test set is normalised with them)"
    for key in ("mean", "std"):
        if key in preprocess or needed:
            values = get(key, _MISSING)
            positive = key == "std"
            if not (isinstance(values, list) and len(values) == channels
                    and all(_is_number(v) and (v > 0 or not positive) for v in values)):
                allowed = f"a list of {channels} finite number{'s' if channels > 1 else ''}" + (" > 0" if positive else "") + why
                _refuse(card_path, f"preprocess.{key}", allowed, values)


def _check_fits_model(card_path: Path, card: dict, model: nn.Module) -> None:
    """Run the built model once on a tiny input of the kind its task gives it (what a request
    does, on zeros): the task must fit the network (image channels, parity bits, bytes), and the
    card's classes and test set must match its outputs."""
    task = card["task"]
    name = task["name"]
    if name == "parity":
        if "bits" not in task:  # the parity view sends exactly task.bits entries
            _refuse(card_path, "task.bits", f"a whole number 1..{MAX_PARITY_BITS} (the length of the parity vector)")
        x, what = torch.zeros(1, task["bits"]), f"a parity vector of {task['bits']} entries (task.bits)"
    elif name == "bytes-lm":
        x, what = torch.tensor([[0, 255]], dtype=torch.long), "a sequence of bytes"
    else:
        preprocess = card["preprocess"]
        try:
            fixed = fixed_input_size(model)
        except ValueError as error:
            raise CheckpointError(f"{card_path}: model {card['model']!r}: {error}") from None
        if fixed is not None:  # the one size it takes (a ViT's position embedding): the card must say so
            if list(preprocess["input_size"]) != list(fixed):
                _refuse(card_path, "preprocess.input_size", f"{list(fixed)}, the one input size model {card['model']!r} takes "
                                                            "(its fixed_input_size)", preprocess["input_size"])
            height, width = fixed
        else:
            multiple = preprocess.get("size_multiple", 1)
            # the smallest "native" sizes, one even and one odd where the multiple allows
            height, width = (-(-side // multiple) * multiple for side in (MIN_NATIVE_SIDE, MIN_NATIVE_SIDE + 1))
        x = torch.zeros(1, preprocess["channels"], height, width)
        what = f"a {preprocess['channels']}-channel image (preprocess.channels) of {height}x{width}"
    try:
        with torch.no_grad():
            trace = model.trace(x)
    except Exception as error:  # whatever the network raises on an input it cannot take
        raise CheckpointError(f"{card_path}: task {name!r} does not fit model {card['model']!r}: on {what}, "
                              f"{_one_line(error)}") from None
    try:  # every field of the Trace, as every answer checks it (models/contract.py)
        check_trace(trace, name, x, **declarations(model))
    except TraceContractError as error:
        raise CheckpointError(f"{card_path}: model {card['model']!r} does not fit the Trace contract (docs/own-models.md, section 3) "
                              f"on {what}: {_one_line(error)}") from None
    logits = trace.logits
    outputs = int(logits.shape[-1])
    classes = card.get("classes")
    if classes is not None and len(classes) != outputs:
        _refuse(card_path, "classes", f"a list of {outputs} names (one per output of the model) or null",
                shown=f"{len(classes)} name{'s' if len(classes) != 1 else ''}")
    dataset = card.get("dataset")
    if name == "classify" and dataset in TEST_SET_CLASSES and outputs != TEST_SET_CLASSES[dataset]:
        _refuse(card_path, "dataset", f"a data set of {outputs} classes (the model's outputs)",
                shown=f"{dataset!r} of {TEST_SET_CLASSES[dataset]} classes")


@dataclass(frozen=True)
class Task:
    name: str  # one of TASKS
    bits: Optional[int] = None  # parity: the vector's length


@dataclass(frozen=True)
class Card:
    """A loaded checkpoint's card (`model.card`), checked once by read_card: what the server,
    evaluation and the benches read, as attributes. `data` is the JSON as stored (served to
    clients as it is, and what a new card is made from: `write_card(path, {**card.data, ...})`)."""
    data: dict

    def __getitem__(self, key: str):
        """card["metrics"]: a field of the JSON as stored (read-only: a new card is written whole)."""
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    @property
    def model(self) -> str:
        return self.data["model"]

    @property
    def model_kwargs(self) -> dict:
        return self.data["model_kwargs"]

    @property
    def task(self) -> Task:
        task = self.data["task"]
        return Task(task["name"], task.get("bits"))

    @property
    def kind(self) -> str:
        """What the page shows it as: "image", "text" or "parity"."""
        return {"classify": "image", "bytes-lm": "text", "parity": "parity"}[self.task.name]

    @property
    def dataset(self) -> Optional[str]:
        return self.data.get("dataset")

    @property
    def classes(self) -> Optional[list[str]]:
        return self.data.get("classes")

    @property
    def preprocess(self) -> Optional[dict]:
        return self.data.get("preprocess")

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics") or {}

    @property
    def test_metrics(self) -> dict:
        return self.metrics.get("test") or {}

    @property
    def source(self) -> Optional[dict]:
        return self.data.get("source")

    @property
    def config(self) -> dict:
        return self.data.get("config") or {}

    @property
    def data_options(self) -> dict:
        return dict(self.config.get("data_options") or {})


def write_card(path: str | os.PathLike, card: dict) -> None:
    """Write atomically, so a crash never leaves half a card."""
    target = Path(path) / CARD_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, card: dict) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    card = {"model": model.registry_name, "model_kwargs": model.registry_kwargs, **card}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"model": card["model"]})
    os.replace(tmp, path / WEIGHTS_FILE)
    write_card(path, card)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Build the card's model, load its weights, return it in eval mode with `model.card`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    card = read_card(path)
    kwargs = card["model_kwargs"]
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: model_kwargs must be an object")
    try:
        model = create_model(card["model"], **kwargs)
    except UnknownModelError as error:  # a plugin's model, its plugin not loaded
        raise CheckpointError(f"{path}: {error}; if a plugin defines {card['model']!r}, load the plugin that defines it "
                              f"(--plugin FILE.py, or install its package)") from None
    except Exception as error:  # e.g. an unknown option, depth 7, width -1 (TypeError, ValueError, RuntimeError, ...)
        raise CheckpointError(f"{path}: model_kwargs do not fit {card['model']!r}: {_one_line(error)}") from None
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{weights}: weights do not match {card['model']!r}: {_one_line(error)}") from None
    model.eval()
    _check_fits_model(path / CARD_FILE, card, model)
    model.card = Card(card)
    model.checkpoint_path = str(path)
    return model.to(device).eval()
