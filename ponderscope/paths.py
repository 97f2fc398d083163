"""Where ponderscope's own files are: the page, the bundled checkpoints and their configs.

Installed from the wheel they are package data inside `ponderscope/` (pyproject.toml maps the
repository's top-level folders there); in a checkout (an editable install, the tests, the Docker
build) they are the repository's own top-level folders. One lookup serves both.

Models the user fetched (`ponderscope pretrained get`) go to a per-user data folder,
`user_models_dir()`, which `serve` lists beside the bundled ones.
"""
from __future__ import annotations

import os
import sys
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


MODELS_ENV = "PONDERSCOPE_MODELS"


def user_models_dir() -> Path:
    """The per-user folder `ponderscope pretrained get` fills and `serve` lists (when it exists):
    $PONDERSCOPE_MODELS, else the platform's per-user data folder + ponderscope/models:
    $XDG_DATA_HOME or ~/.local/share (Linux, BSD), ~/Library/Application Support (macOS),
    %LOCALAPPDATA% (Windows)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"  # a relative XDG path is to be ignored (the spec)
    return base / "ponderscope" / "models"


def default_checkpoint_dirs() -> list[Path]:
    """What `serve` lists without --checkpoints: the bundled checkpoints, then the per-user
    folder if it exists."""
    user = user_models_dir()
    return [bundled_checkpoints()] + ([user] if user.is_dir() else [])
