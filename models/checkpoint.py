"""Checkpoints: a directory with `model.safetensors` (tensors only) and `card.json` (what it is).

Nothing here unpickles: safetensors is a JSON header plus raw tensor bytes, so a hostile file
can at worst fail to parse. The card names a registered model; an unknown name is refused
before any weights are read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .registry import UnknownModelError, create_model

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
REQUIRED_CARD_FIELDS = ("model", "model_kwargs", "task")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says why."""


def read_card(path: str | os.PathLike) -> dict:
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{path}: no {CARD_FILE} (a checkpoint is a directory with {WEIGHTS_FILE} and {CARD_FILE})")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{card_path}: not valid JSON ({error})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path}: must hold a JSON object")
    missing = [f for f in REQUIRED_CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"{card_path}: missing field(s) {', '.join(missing)}")
    _check_task(card_path, card)
    return card


TASKS = ("classify", "parity", "bytes-lm")


def _check_task(card_path: Path, card: dict) -> None:
    """The card fields the server reads at request time, checked when the checkpoint loads (a bad
    card is one load error, never a failing request later)."""
    task = card["task"]
    if not isinstance(task, dict) or task.get("name") not in TASKS:
        raise CheckpointError(f"{card_path}: task must be an object whose name is one of {', '.join(TASKS)}, not {task!r}")
    if task["name"] == "parity":
        bits = task.get("bits", 16)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 4096:
            raise CheckpointError(f"{card_path}: task.bits must be a whole number 1..4096, not {bits!r}")
    if task["name"] == "classify":
        preprocess = card.get("preprocess")
        size = preprocess.get("input_size") if isinstance(preprocess, dict) else None
        if (not isinstance(preprocess, dict) or preprocess.get("channels") not in (1, 3) or not isinstance(size, list)
                or len(size) != 2 or not all(isinstance(v, int) and 1 <= v <= 4096 for v in size)):
            raise CheckpointError(f"{card_path}: an image classifier's card needs preprocess with channels 1 or 3 and input_size [H, W]")
    classes = card.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{card_path}: classes must be a list of names")


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
    except UnknownModelError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. an unknown option, depth 7, width -1
        raise CheckpointError(f"{path}: model_kwargs do not fit {card['model']!r}: {error}") from None
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
        raise CheckpointError(f"{weights}: weights do not match {card['model']!r}: {error}") from None
    model.card = card
    model.checkpoint_path = str(path)
    return model.to(device).eval()
