"""ponderscope: look inside adaptive-computation networks (ACT, SACT, ConvNet-AIG).

In a notebook (see ponderscope.notebook and ponderscope.figures):

    import ponderscope as ps
    model = ps.load("fmnist_sact_resnet32")
    ps.image_figure(model, "shirt.png")
    points = ps.sweep(model, limit=500)    # accuracy vs FLOPs as the halting threshold moves
    study = ps.lesion(model, limit=500)    # accuracy after removing each residual unit

Everything is imported on first use (torch only by load), so `import ponderscope` and the
command line start fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.3.0"  # the one place: pyproject.toml, the CLI's --version and the API read it

_NOTEBOOK = ("load", "bundled", "LoadedModel", "analyze_image", "analyze_text", "analyze_parity", "image_figure", "text_figure", "text_layers_figure", "parity_figure")
_STUDIES = ("sweep", "lesion")  # what-if studies: ponderscope.studies
_PLUGIN = ("Trace", "BlockTrace", "register_model", "register_family")  # the plugin contract: ponderscope.models
__all__ = [*_NOTEBOOK, *_STUDIES, *_PLUGIN, "figures", "notebook", "studies", "__version__"]


def __getattr__(name: str):
    if name in ("figures", "notebook", "studies"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in _PLUGIN:
        return getattr(importlib.import_module(f"{__name__}.models"), name)
    if name in _STUDIES:
        return getattr(importlib.import_module(f"{__name__}.studies"), name)
    if name in _NOTEBOOK:
        return getattr(importlib.import_module(f"{__name__}.notebook"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
