"""Importers of the papers' authors' checkpoint formats into ponderscope checkpoints.

    ponderscope import FORMAT SOURCE --out DIR --model NAME [--num-classes K]

FORMAT            SOURCE                                              module
sact-tf           a TF checkpoint prefix (model.ckpt-NNN + .index/.data-*), importers/sact_tf.py
                  its folder, or the authors' published .tar.gz
convnet-aig       checkpoint.pth.tar / model_best.pth.tar or a state dict importers/convnet_aig.py

Each module's `read(source, name, num_classes)` returns (`Imported`, the files it read); nothing
from the source is ever executed (TF bundles are parsed as data, PyTorch files are loaded with
`weights_only=True`); archives are unpacked safely (importers/archive.py).

`ponderscope pretrained get NAME` (importers/pretrained.py) downloads the authors' published
archives by name and imports them with the same code.
"""
from __future__ import annotations

import os
from pathlib import Path

from .common import Imported, ImportFailed, write_imported

FORMATS = ("sact-tf", "convnet-aig")


def read(format: str, source: str | os.PathLike, model: str, num_classes: int | None = None,
         scratch: str | os.PathLike | None = None) -> tuple[Imported, list[Path]]:
    """The converted model in memory (nothing written). `scratch`: where an archive is unpacked
    for the while it is read (default: the temporary folder)."""
    if format == "sact-tf":
        from . import sact_tf as reader
    elif format == "convnet-aig":
        from . import convnet_aig as reader
    else:
        raise ImportFailed(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if num_classes is not None and num_classes < 1:
        raise ImportFailed(f"--num-classes must be at least 1, not {num_classes}")
    if format == "sact-tf":
        return reader.read(Path(source), model, num_classes, Path(scratch) if scratch is not None else None)
    return reader.read(Path(source), model, num_classes)


def import_checkpoint(format: str, source: str | os.PathLike, out: str | os.PathLike, model: str,
                      num_classes: int | None = None, command: str = "", scratch: str | os.PathLike | None = None) -> Path:
    """Convert SOURCE and write DIR/model.safetensors + DIR/card.json; all or nothing. An archive
    is unpacked in `scratch`, by default beside DIR (where there must be room for the result anyway)."""
    if scratch is None and Path(out).parent.is_dir():
        scratch = Path(out).parent
    imported, sources = read(format, source, model, num_classes, scratch)
    return write_imported(imported, out, sources, command)


__all__ = ["FORMATS", "ImportFailed", "Imported", "import_checkpoint", "read"]
