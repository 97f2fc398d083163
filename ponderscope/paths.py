"""Where ponderscope's own files are: the page, the bundled checkpoints and their configs.

Installed from the wheel they are package data inside `ponderscope/` (pyproject.toml maps the
repository's top-level folders there); in a checkout (an editable install, the tests, the Docker
build) they are the repository's own top-level folders. One lookup serves both.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent if (PACKAGE.parent / "pyproject.toml").is_file() else None  # None: installed from a wheel


def resource(name: str) -> Path:
    """The folder `name` (static, templates, checkpoints, configs) of this installation."""
    inside = PACKAGE / name
    if inside.is_dir():
        return inside
    if CHECKOUT is not None and (CHECKOUT / name).is_dir():
        return CHECKOUT / name
    raise FileNotFoundError(f"ponderscope's {name}/ is missing from {PACKAGE} (a broken installation: reinstall the wheel)")


def data_dir() -> Path:
    """Where downloaded data (the MNIST digits) lives by default: the checkout's .data/ (where
    scripts/setup.sh puts it), or ~/.cache/ponderscope for an installed wheel. PONDERSCOPE_MNIST
    overrides the digits' folder (ponderscope/core/data.py)."""
    return CHECKOUT / ".data" if CHECKOUT is not None else Path.home() / ".cache" / "ponderscope"


STATIC = "static"
TEMPLATES = "templates"
CHECKPOINTS = "checkpoints"
CONFIGS = "configs"


def bundled_checkpoints() -> Path:
    return resource(CHECKPOINTS)
