"""Ask a trained model "what if": the same weights with one documented change, at inference.

    with applied(model, WhatIf(threshold=0.9)):        # ACT/SACT: halt once the sum of h >= 0.9
        trace = model.trace(x)
    WhatIf(cap=2)                                        # ACT/SACT: at most 2 units per block
    WhatIf(gate_bias=1.0)                                # AIG: run a block iff logit_run - logit_skip > 1
    WhatIf(lesion=("block2.unit1", "layer3.4"))          # remove units / gated blocks

The changes, each exactly one:
- threshold: the halting threshold 1 - eps of every block (models/halting.py); trained: 1 - eps.
- cap: the last unit a block may run is unit `cap` (it halts there with its remainder, as the
  last unit of the block always does). Trained: no cap.
- gate_bias: ConvNet-AIG's deterministic gate runs a block iff logit_run - logit_skip > theta;
  trained: theta = 0 (the argmax).
- lesion: a removed residual unit of a ResNet (dense, ACT or SACT) adds no residual branch: x_l =
  x_{l-1}; a block's first unit, which may stride or widen, keeps its shortcut (the projection
  or the pooling) and drops its residual branch. The halting branch after a removed unit still
  runs (halting is not removed). A removed ConvNet-AIG block has its gate forced closed
  (its projection shortcut, where it has one, still runs, and so does the gate: its FLOPs count).
FLOPs count what then runs. The setting lives in a context variable, not on the module: the
server runs requests with different settings on one model at the same time. A model resolves it
once per forward into what its layers read: a `HaltingPolicy` per ResNet block, a `GatePolicy`
for ConvNet-AIG.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch.nn as nn


class WhatIfError(ValueError):
    """A change that does not apply to the model (the message says which do)."""


@dataclass(frozen=True)
class WhatIf:
    threshold: Optional[float] = None
    cap: Optional[int] = None
    gate_bias: Optional[float] = None
    lesion: tuple[str, ...] = field(default=())

    def is_trained(self) -> bool:
        return self.threshold is None and self.cap is None and self.gate_bias is None and not self.lesion

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "cap": self.cap, "gate_bias": self.gate_bias, "lesion": list(self.lesion)}


@dataclass(frozen=True)
class HaltingPolicy:
    """A ResNet block's halting, the what-if resolved (a dense block reads `removed` only).

    eps: the ACT rule's eps (it halts once the sum of h >= 1 - eps); last: the index (from 0) of
    the last unit that may run, which halts everything (h = 1), as the block's last unit does;
    removed: the indices of the units that add no residual branch."""

    eps: float
    last: int
    removed: frozenset[int] = frozenset()

    @classmethod
    def resolve(cls, whatif: Optional[WhatIf], eps: float, unit_names: Sequence[str]) -> "HaltingPolicy":
        """For a block with the trained `eps` and these units (models/resnet.Block.unit_names)."""
        n_units = len(unit_names)
        if whatif is None:
            return cls(eps, n_units - 1)
        return cls(eps=eps if whatif.threshold is None else 1.0 - whatif.threshold,
                   last=n_units - 1 if whatif.cap is None else min(n_units, whatif.cap) - 1,
                   removed=frozenset(u for u, name in enumerate(unit_names) if name in whatif.lesion))


@dataclass(frozen=True)
class GatePolicy:
    """ConvNet-AIG's gates, the what-if resolved: run a block iff logit_run - logit_skip > theta
    (trained: theta = 0, the argmax); removed: the indices of the blocks forced closed."""

    theta: float = 0.0
    removed: frozenset[int] = frozenset()

    @classmethod
    def resolve(cls, whatif: Optional[WhatIf], gate_names: Sequence[str]) -> "GatePolicy":
        """gate_names: the model's, in order (AIGResNet.gate_names)."""
        if whatif is None:
            return cls()
        return cls(theta=0.0 if whatif.gate_bias is None else float(whatif.gate_bias),
                   removed=frozenset(i for i, name in enumerate(gate_names) if name in whatif.lesion))


_CURRENT: ContextVar[Optional[WhatIf]] = ContextVar("ponderscope_whatif", default=None)


def current() -> Optional[WhatIf]:
    """The change in force in this thread / task (None: the trained model)."""
    return _CURRENT.get()


SETTINGS = ("threshold", "cap", "gate_bias")  # the knobs with a value (besides "units": removable units)

# What each setting is, where a model does not say (its whatif_knobs' "about"): the ResNets' halting
# and gates. `label`: short (a curve's name, a control's label); `description`: one sentence.
ABOUT = {
    "threshold": {"label": "halting threshold 1 - eps",
                  "description": "a block halts at a position once the sum of its halting scores reaches this (trained: 1 - eps); lower halts sooner"},
    "cap": {"label": "units per block, at most",
            "description": "at most this many residual units per block (the last one halts with its remainder)"},
    "gate_bias": {"label": "gate bias theta",
                  "description": "a gated block runs iff logit_run - logit_skip exceeds this bias (trained: 0); higher skips more"},
}


def knobs(model: nn.Module) -> dict:
    """What can be changed on `model`, with the trained values: {"threshold": 0.99, "cap":
    max units per block, "units": [...]} for ACT/SACT, {"gate_bias": 0.0, "units": [...]} for AIG,
    {"units": [...]} for a dense ResNet; {} for a model without these (an RNN, a plugin's). A
    model with a `whatif_knobs()` method declares its own (the same keys; "threshold" is then
    whatever threshold its decisions are made against). With any setting, "about": {setting:
    {"label", "description"}} says what each one is: the model's own words (whatif_knobs' "about",
    for the settings it names) over ABOUT's."""
    declared = getattr(model, "whatif_knobs", None)
    if callable(declared):  # a model that says what it takes (A-ViT, the early-exit ResNet)
        found = dict(declared())
    else:
        found = _resnet_knobs(model)
    own = found.pop("about", None) or {}
    present = [name for name in SETTINGS if name in found]
    if present:
        found["about"] = {name: {**ABOUT[name], **own.get(name, {})} for name in present}
    return found


def _resnet_knobs(model: nn.Module) -> dict:
    blocks = getattr(model, "blocks", None)
    if getattr(model, "halting", None) in ("act", "sact") and blocks is not None:
        eps = {float(block.eps) for block in blocks}
        return {"threshold": 1.0 - max(eps), "cap": max(len(b.units) for b in blocks), "units": unit_names(model)}
    if getattr(model, "halting", None) == "none" and blocks is not None:
        return {"units": unit_names(model)}
    if hasattr(model, "gated_blocks"):
        return {"gate_bias": 0.0, "units": unit_names(model)}
    return {}


def unit_names(model: nn.Module) -> list[str]:
    """The removable units, in order: ResNets "block{b}.unit{u}" (1-based), AIG its gate names."""
    if hasattr(model, "gated_blocks"):
        return list(model.gate_names)
    return [f"block{b + 1}.unit{u + 1}" for b, block in enumerate(model.blocks) for u in range(len(block.units))]


def downsampling_units(model: nn.Module) -> list[str]:
    """The units that change resolution or width (they keep their shortcut when removed)."""
    if hasattr(model, "gated_blocks"):
        return [name for name, block in zip(model.gate_names, model.gated_blocks) if len(block.shortcut)]
    if getattr(model, "blocks", None) is None:  # no residual units (A-ViT, a plugin's model)
        return []
    return [f"block{b + 1}.unit1" for b, block in enumerate(model.blocks)
            if block.units[0].stride != 1 or block.units[0].shortcut is not None or getattr(block.units[0], "pool_pad", False)]


def check(model: nn.Module, whatif: WhatIf) -> None:
    allowed = knobs(model)
    for name in SETTINGS:
        if getattr(whatif, name) is not None and name not in allowed:
            what = ", ".join(k for k in SETTINGS if k in allowed) or "only lesions" if allowed else "nothing"
            raise WhatIfError(f"{name} does not apply to {type(model).__name__} (it takes {what})")
    if whatif.threshold is not None and not 0.0 < whatif.threshold <= 1.0:
        raise WhatIfError(f"threshold must be in (0, 1], not {whatif.threshold}")
    if whatif.cap is not None and not 1 <= whatif.cap:
        raise WhatIfError(f"cap must be a whole number >= 1, not {whatif.cap}")
    unknown = sorted(set(whatif.lesion) - set(allowed.get("units", ())))
    if unknown:
        known = allowed.get("units") or []
        raise WhatIfError(f"no unit {', '.join(unknown)} in this model" + (f" (units: {known[0]} .. {known[-1]})" if known else ""))


@contextlib.contextmanager
def applied(model: nn.Module, whatif: Optional[WhatIf]) -> Iterator[None]:
    """Run the code inside with `whatif` in force (checked against the model first)."""
    if whatif is None or whatif.is_trained():
        yield
        return
    check(model, whatif)
    token = _CURRENT.set(whatif)
    try:
        yield
    finally:
        _CURRENT.reset(token)
