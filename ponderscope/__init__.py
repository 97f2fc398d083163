"""ponderscope: look inside adaptive-computation networks (ACT, SACT, ConvNet-AIG).

In a notebook (see ponderscope.notebook and ponderscope.figures):

    import ponderscope as ps
    model = ps.load("fmnist_sact_resnet32")
    ps.image_figure(model, "shirt.png")

Everything is imported on first use (torch only by load), so `import ponderscope` and the
command line start fast.
"""
from __future__ import annotations

import importlib

_NOTEBOOK = ("load", "bundled", "Model", "analyze_image", "analyze_text", "analyze_parity", "image_figure", "text_figure", "parity_figure")
__all__ = [*_NOTEBOOK, "figures", "notebook"]


def __getattr__(name: str):
    if name in ("figures", "notebook"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NOTEBOOK:
        return getattr(importlib.import_module(f"{__name__}.notebook"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
