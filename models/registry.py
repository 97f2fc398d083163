"""One way to create any model by name (in the spirit of timm's registry).

    model = models.create_model("sact_resnet20", num_classes=10, in_channels=1)

Each model file registers its constructors with `@register_model`; the checkpoint card stores
the name and kwargs, so `load_checkpoint` rebuilds exactly the trained network.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

@dataclass(frozen=True)
class Family:
    """A family of models, declared where it is registered: what the page calls it (`label`), what
    it says about how its models decide (`description`, one sentence shown beside their answers),
    and whether its models skip nothing (`reference`: a dense twin, the studies' reference point
    at 100% of the FLOPs). Nothing in the server, the page or the figures knows a family by name."""
    key: str
    label: str
    description: str = ""
    reference: bool = False


# Every family a registered model belongs to, in the order the page lists models (adaptive ones
# first, their dense baselines last; a plugin's families after these): key -> label, and the
# whole declaration in _FAMILY (family(key)).
FAMILIES: dict[str, str] = {}
_FAMILY: dict[str, Family] = {}


def register_family(key: str, label: str, description: str = "", reference: bool = False) -> Family:
    """A new family (a plugin's): the name the page shows for it, a sentence on how its models
    decide (shown with their answers: "decides per image: each gate runs or skips a whole
    block"), and reference=True for a family whose models skip nothing (the what-if sweep's
    reference point: a dense twin of the adaptive models of the same data set)."""
    known = _FAMILY.get(key)
    if known is not None and known.label != label:
        raise ValueError(f"family {key!r} is already registered as {known.label!r}")
    declared = Family(key, label, description or (known.description if known else ""), reference or (known.reference if known else False))
    FAMILIES[key] = label
    _FAMILY[key] = declared
    return declared


def family(key: str) -> Family:
    """The family `key` as registered (an unregistered key: a Family with its key as label)."""
    return _FAMILY.get(key) or Family(key, key)


register_family("sact", "SACT ResNet", "decides per position: each position of a block stops running units once its halting "
                "scores add up to the threshold, so the ponder map shows where the network spent its computation")
register_family("act", "ACT ResNet", "decides per image and block: every position of a block runs the same number of units, "
                "so the ponder map is flat within a block")
register_family("aig", "ConvNet-AIG", "decides per image, not per position: each gate runs or skips a whole residual block "
                "(the gate chart shows which)")
register_family("act-rnn", "ACT RNN", "ponders a variable number of steps on each input step")
register_family("rnn", "plain RNN (no ACT)", "takes one step per input step: nothing adaptive")
register_family("dense", "dense ResNet (no halting)", "runs every unit at every position (no halting, no gates), so there is "
                "no ponder map", reference=True)


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

    @property
    def reference(self) -> bool:
        """Whether the model skips nothing (its family is a reference: register_family(..., reference=True))."""
        return family(self.family).reference


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
        raise unknown_model(name) from None


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def unknown_model(name) -> UnknownModelError:
    """The error for a name nothing registered: the closest registered names (not all of them)."""
    close = difflib.get_close_matches(str(name), list_models(), n=5, cutoff=0.6)
    hint = f"the closest registered: {', '.join(close)}" if close else "no registered name is close"
    return UnknownModelError(f"unknown model {name!r}; {hint} ({len(_MODELS)} registered: models.list_models() lists them)")


def create_model(name: str, **kwargs) -> nn.Module:
    try:
        fn = _MODELS[name]
    except KeyError:
        raise unknown_model(name) from None
    model = fn(**kwargs)
    model.registry_name = name
    model.registry_kwargs = dict(kwargs)
    return model
