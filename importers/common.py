"""What every importer shares: the error type, the model-name grammar, the card, and the
all-or-nothing write of `DIR/model.safetensors` + `DIR/card.json`.

An importer (one module per source format) reads a file it was handed without running any code
from it, maps the authors' variable names to ours, checks every name and shape, and returns an
`Imported`: the model with its weights loaded, what it converted and how inputs must be prepared.
`write_imported` then writes the checkpoint next to the target and renames it into place, so a
failure at any point leaves nothing behind.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ponderscope.models.checkpoint import save_checkpoint


class ImportFailed(ValueError):
    """One line that says what in the source does not fit (and names the variable)."""


class DiskFull(ImportFailed):
    """No space left where a file was being written; what was written is removed."""


def no_space(error: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or as safetensors' Rust I/O error ("... (os error 28)")."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    return type(error).__name__ == "SafetensorError" and f"(os error {errno.ENOSPC})" in str(error)


# `--model` names: family prefix + "resnet" + depth, as in the registry (sact_resnet101, aig_resnet110).
MODEL_NAME = re.compile(r"^(?P<family>act_|sact_|aig_)?resnet(?P<depth>\d+)$")
FAMILY_OF_PREFIX = {None: "dense", "act_": "act", "sact_": "sact", "aig_": "aig"}


@dataclass(frozen=True)
class ModelName:
    name: str  # as the user wrote it, e.g. "sact_resnet101"
    family: str  # "dense", "act", "sact" or "aig"
    depth: int


def parse_model_name(name: str, families: tuple[str, ...]) -> ModelName:
    match = MODEL_NAME.match(name or "")
    if not match:
        raise ImportFailed(f"unknown model name {name!r}: expected [act_|sact_|aig_]resnet<depth>, e.g. sact_resnet101, aig_resnet110")
    family = FAMILY_OF_PREFIX[match.group("family")]
    if family not in families:
        allowed = ", ".join(f"{f}" for f in families)
        raise ImportFailed(f"model {name!r} is a {family} network; this format holds {allowed} networks")
    return ModelName(name, family, int(match.group("depth")))


def check_depth(name: ModelName, units_per_block: list[int], depth: int) -> None:
    if depth != name.depth:
        raise ImportFailed(
            f"the checkpoint holds a ResNet-{depth} ({units_per_block} units per block), not the {name.name} asked for"
        )


@dataclass
class Imported:
    """A converted model and what its card must say about it."""

    model: nn.Module  # from models.create_model, weights loaded, eval mode
    source_format: str  # "sact-tf", "convnet-aig"
    converted: dict  # what was read and what was left out (names, counts)
    preprocess: dict  # how an image becomes the model's input (ponderscope/core/imaging.py reads it)
    classes: list[str]
    dataset: str  # "cifar-10", "imagenet"
    notes: list[str] = field(default_factory=list)


def sha256_of(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        out[path.name] = digest.hexdigest()
    return out


def load_converted(model: nn.Module, state: dict[str, torch.Tensor], source_names: dict[str, str] | None = None) -> None:
    """Load `state` into `model` strictly; a missing, extra or misshapen tensor is one line that
    names it (in the source's own naming where `source_names` maps ours back to it)."""
    source_names = source_names or {}
    expected = model.state_dict()

    def called(key: str) -> str:
        return f"{source_names[key]!r} (ours: {key})" if key in source_names else repr(key)

    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ImportFailed(f"missing variable {called(missing[0])}{more}: the checkpoint does not hold a {model.registry_name} with these options")
    extra = [k for k in state if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ImportFailed(f"unexpected variable {called(extra[0])}{more}: the checkpoint holds more than a {model.registry_name}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ImportFailed(f"variable {called(key)} has shape {list(state[key].shape)}, the model needs {list(value.shape)}")
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected}, strict=True)
    model.eval()


def write_imported(imported: Imported, out: str | os.PathLike, sources: list[Path], command: str) -> Path:
    """Write the checkpoint into a temporary directory beside `out`, then rename it into place.
    An existing non-empty `out` is refused (never overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportFailed(f"{out} exists and is not an empty directory; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    card = {
        "task": {"name": "classify"},
        "dataset": imported.dataset,
        "classes": imported.classes,
        "preprocess": imported.preprocess,
        "source": {
            "format": imported.source_format,
            "files": [p.name for p in sources],  # names only: the card is served to every client
            "sha256": sha256_of(sources),
            "converted": imported.converted,
            "notes": imported.notes,
        },
        "import_command": command,
        "torch_version": torch.__version__,
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        save_checkpoint(imported.model, staging, card)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if no_space(error):
            raise DiskFull(f"no space left on the disk of {out.parent} to write {out.name}: nothing was kept") from None
        raise
    return out
