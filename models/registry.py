"""One way to create any model by name (in the spirit of timm's registry).

    model = models.create_model("sact_resnet20", num_classes=10, in_channels=1)

Each model file registers its constructors with `@register_model`; the checkpoint card stores
the name and kwargs, so `load_checkpoint` rebuilds exactly the trained network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

# Every family a registered model belongs to, and how the page names it, in the order the page
# lists models (adaptive ones first, their dense baselines last; a plugin's families after these).
FAMILIES = {
    "sact": "SACT ResNet",
    "act": "ACT ResNet",
    "aig": "ConvNet-AIG",
    "act-rnn": "ACT RNN",
    "rnn": "plain RNN (no ACT)",
    "dense": "dense ResNet (no halting)",
}


def register_family(key: str, label: str) -> None:
    """A new family (a plugin's), with the name the page shows for it."""
    if key in FAMILIES and FAMILIES[key] != label:
        raise ValueError(f"family {key!r} is already registered as {FAMILIES[key]!r}")
    FAMILIES[key] = label


# What a model can be trained and served for (a card's task.name)
IMAGE_TASKS = ("classify",)
SEQUENCE_TASKS = ("parity", "bytes-lm")


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, declared where it is registered (timm's pretrained config in spirit)."""
    name: str
    family: str  # a key of FAMILIES
    tasks: tuple[str, ...]  # the card task names it serves
    description: str

    @property
    def task(self) -> str:
        """The kind of input: "classify" (images) or "sequence" (parity vectors, bytes)."""
        return "classify" if self.tasks == IMAGE_TASKS else "sequence"

    @property
    def family_label(self) -> str:
        return FAMILIES[self.family]


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: str, tasks: tuple[str, ...] = IMAGE_TASKS):
    """Register a constructor under its function name, with its family and tasks:

        @register_model(family="sact")
        def sact_resnet(depth=20, **kwargs): ...
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _MODELS[fn.__name__] = fn
        _INFO[fn.__name__] = ModelInfo(fn.__name__, family, tuple(tasks), (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register(fn) if fn is not None else register


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """What `name` was registered as (family, tasks, description)."""
    try:
        return _INFO[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


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
