"""One way to create any model by name (in the spirit of timm's registry).

    model = models.create_model("sact_resnet20", num_classes=10, in_channels=1)

Each model file registers its constructors with `@register_model`; the checkpoint card stores
the name and kwargs, so `load_checkpoint` rebuilds exactly the trained network.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def create_model(name: str, **kwargs) -> nn.Module:
    try:
        fn = _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    model = fn(**kwargs)
    model.registry_name = name
    model.registry_kwargs = dict(kwargs)
    return model
