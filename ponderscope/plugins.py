"""Plugins: a researcher's own model families, registered without forking ponderscope.

A plugin is a Python file (`--plugin path/to/file.py`, repeatable) or an installed package that
declares an entry point in the group `ponderscope.models`; either registers model builders with
`models.register_model(family=..., tasks=...)` (and a new family with `models.register_family`).
A plugin is code: loading one runs it, with your rights, like any script you choose to run.
Checkpoints never run code (safetensors + a JSON card), so a card can only name a model that a
loaded plugin registered. See docs/own-models.md.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

ENTRY_POINT_GROUP = "ponderscope.models"
_loaded: set[str] = set()  # resolved paths and entry point names, each run once per process


class PluginError(RuntimeError):
    """A plugin that could not be loaded; the message names it and says why."""


def load_plugins(paths: list[str | Path] | None = None, entry_points: bool = True) -> list[str]:
    """Run every installed `ponderscope.models` entry point (entry_points=True) and each plugin
    file in `paths`, once per process -> what was loaded now."""
    loaded = []
    if entry_points:
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            key = f"entry point {point.name} ({point.value})"
            if key in _loaded:
                continue
            try:
                point.load()
            except Exception as error:  # a broken package is the user's to fix: say which
                raise PluginError(f"{key}: {type(error).__name__}: {error}") from error
            _loaded.add(key)
            loaded.append(key)
    for path in paths or []:
        path = Path(path).resolve()
        if str(path) in _loaded:
            continue
        if not path.is_file() or path.suffix != ".py":
            raise PluginError(f"{path}: a plugin is a Python file (.py)")
        name = f"ponderscope_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise PluginError(f"{path}: {type(error).__name__}: {error}") from error
        _loaded.add(str(path))
        loaded.append(str(path))
    return loaded
