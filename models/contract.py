"""The Trace contract (docs/own-models.md, section 3), checked in one place.

`check_trace(trace, task, x, **declarations(model))` checks every field of a model's `Trace` for
the input `x` of a card task: each field's shape and dtype, and the agreement between fields
(gates, executed, gate_values and the model's `gate_names` of one length L; a block's ponder_cost
and units on one grid, its halting and probabilities [B, n_units, H, W] on that grid where given,
and the model's `block_names` one per block; ponder and steps [B, T] together; exit_confidence
[B, E] and exit_taken [B] together, each exit taken one of the E, and the model's `exit_names` E
of them; token_layers bool [B, T, L] over a byte LM's bytes, token_layer_weights float
[B, T, L] beside it (>= 0, and 0 where the layer did not run), and the model's
`token_layer_names` L of them). A violation is a `TraceContractError` naming the field, what the
contract expects and what the model gave.

What a model may declare besides its trace (`declarations`, `fixed_input_size`, `exit_threshold`)
is read here too, so that every face reads it the same way.

It runs when a checkpoint loads (models/checkpoint.py, on a probe input of the card's task) and on
every trace the server or a notebook answers from (ponderscope.core.loaded: LoadedModel.trace),
so a model that breaks the contract is one load error, or one clear error for that request, never
a failure deep inside an answer and never a silently renamed layer.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .trace import Trace

TASKS = ("classify", "parity", "bytes-lm")
BYTES = 256  # a byte LM's logits: one per byte value


class TraceContractError(ValueError):
    """A Trace field that breaks the contract: `field` (e.g. "gates", "blocks[1].units"), what the
    contract `expected`, what the model gave (`actual`)."""

    def __init__(self, field: str, expected: str, actual: str):
        self.field, self.expected, self.actual = field, expected, actual
        super().__init__(f"Trace.{field}: expected {expected}, got {actual}")


# ------------------------------------------------------------------ descriptions
def _kind(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_floating_point():
        return "float"
    if tensor.is_complex():
        return "complex"
    return "int"


def describe(value) -> str:
    """What a field holds, as the messages show it: "float32 [1, 3]", "None", "a list"."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _dims(dims: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# dtype kinds a field may have
FLOAT = ("float",)
NUMBER = ("float", "int")  # whole counts may be either
BOOL = ("bool",)
_KIND_TEXT = {FLOAT: "float", NUMBER: "float or int", BOOL: "bool", ("int",): "int"}


def _tensor(field: str, value, kinds: tuple[str, ...], dims: Sequence) -> torch.Tensor:
    """`value` must be a tensor of one of `kinds` whose shape is `dims` (an int: that size; a
    string: any size, named in the message) -> the tensor."""
    expected = f"{_KIND_TEXT[kinds]} {_dims(dims)}"
    if not isinstance(value, torch.Tensor) or _kind(value) not in kinds or value.dim() != len(dims):
        raise TraceContractError(field, expected, describe(value))
    for want, got in zip(dims, value.shape):
        if isinstance(want, int) and want != got or not isinstance(want, int) and got < 1:
            raise TraceContractError(field, expected, describe(value))
    return value


def _same_shape(field: str, value, kinds: tuple[str, ...], shape: Sequence[int], like: str) -> torch.Tensor:
    """`value` must have exactly `shape`, the shape of the field `like`."""
    expected = f"{_KIND_TEXT[kinds]} {_dims(shape)} (as {like})"
    if not isinstance(value, torch.Tensor) or _kind(value) not in kinds or tuple(value.shape) != tuple(shape):
        raise TraceContractError(field, expected, describe(value))
    return value


# ------------------------------------------------------------------ the check
NAMED = ("gate_names", "exit_names", "block_names", "token_layer_names")  # the names a model may declare, one per gated layer / exit / block / token layer


def declarations(model) -> dict:
    """The names `model` declares (its optional attributes gate_names, exit_names, block_names,
    token_layer_names; None where it has none), as check_trace takes them:
    check_trace(trace, task, x, **declarations(model))."""
    return {name: getattr(model, name, None) for name in NAMED}


def check_trace(trace, task: str, x: torch.Tensor, gate_names: Optional[Sequence[str]] = None, *,
                exit_names: Optional[Sequence[str]] = None, block_names: Optional[Sequence[str]] = None,
                token_layer_names: Optional[Sequence[str]] = None) -> None:
    """Raise TraceContractError unless `trace` keeps the contract for input `x` of a card of task
    `task` ("classify", "parity" or "bytes-lm"). `gate_names`, `exit_names`, `block_names`,
    `token_layer_names`: the model's optional attributes of those names (None: it has none; the
    layers, exits and blocks are then numbered)."""
    if not isinstance(trace, Trace):
        raise TraceContractError("", "a ponderscope.Trace from model.trace(x)", describe(trace))
    batch = int(x.shape[0])
    steps = int(x.shape[1]) if task == "bytes-lm" else 1  # input steps: a byte LM's bytes; a parity vector is one step
    if task == "classify":
        _tensor("logits", trace.logits, FLOAT, [batch, "classes"])
    elif task == "parity":
        _tensor("logits", trace.logits, FLOAT, [batch, 2])
    elif task == "bytes-lm":
        _tensor("logits", trace.logits, FLOAT, [batch, steps, BYTES])
    else:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    _tensor("flops", trace.flops, NUMBER, [batch])
    dense = trace.dense_flops
    if isinstance(dense, torch.Tensor) and dense.numel() == 1 and _kind(dense) in NUMBER:
        dense = float(dense)
    if isinstance(dense, bool) or not isinstance(dense, (int, float)) or not math.isfinite(dense) or dense <= 0:
        raise TraceContractError("dense_flops", "a finite number > 0 (FLOPs of the network with nothing skipped)",
                                 repr(dense) if isinstance(dense, (int, float)) else describe(dense))
    _check_blocks(trace.blocks, batch)
    if trace.blocks is not None:
        block_labels(block_names, len(trace.blocks))
    _check_gates(trace, batch, gate_names)
    _check_steps(trace, task, batch, steps)
    _check_exits(trace, batch, exit_names)
    _check_token_layers(trace, task, batch, steps, token_layer_names)
    if not isinstance(trace.extras, dict):
        raise TraceContractError("extras", "a dict", describe(trace.extras))
    distribution = trace.extras.get("halting_distribution")
    if distribution is not None:
        t = trace.ponder.shape[1] if isinstance(trace.ponder, torch.Tensor) else "T"
        _tensor("extras['halting_distribution']", distribution, FLOAT, [batch, t, "N_max"])


def _check_blocks(blocks, batch: int) -> None:
    if blocks is None:
        return
    if not isinstance(blocks, (list, tuple)):
        raise TraceContractError("blocks", "a list of BlockTrace (one per stage) or None", describe(blocks))
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not all(hasattr(block, name) for name in ("ponder_cost", "units", "halting", "probabilities")):
            raise TraceContractError(where, "a ponderscope.BlockTrace", describe(block))
        cost = _tensor(f"{where}.ponder_cost", block.ponder_cost, FLOAT, [batch, "H", "W"])
        grid = tuple(cost.shape)
        _same_shape(f"{where}.units", block.units, NUMBER, grid, f"{where}.ponder_cost: one grid")
        halting = block.halting
        if halting is not None:
            _tensor(f"{where}.halting", halting, FLOAT, [batch, "n_units", grid[1], grid[2]])
        if block.probabilities is not None:
            if halting is not None:
                _same_shape(f"{where}.probabilities", block.probabilities, FLOAT, halting.shape, f"{where}.halting")
            else:
                _tensor(f"{where}.probabilities", block.probabilities, FLOAT, [batch, "n_units", grid[1], grid[2]])


def _check_gates(trace, batch: int, gate_names: Optional[Sequence[str]]) -> None:
    gates, executed = trace.gates, trace.executed
    if gates is None and executed is None:
        if trace.gate_values is not None:
            raise TraceContractError("gate_values", "None where gates and executed are None", describe(trace.gate_values))
        return
    if gates is None or executed is None:  # the gate chart draws both, the dataset view reads executed
        missing, given = ("gates", "executed") if gates is None else ("executed", "gates")
        raise TraceContractError(missing, f"float [B, L] beside {given}" if missing == "gates" else f"bool [B, L] beside {given}",
                                 "None")
    _tensor("gates", gates, FLOAT, [batch, "L"])
    layers = int(gates.shape[1])
    _same_shape("executed", executed, BOOL, gates.shape, "gates: one entry per gated layer")
    if trace.gate_values is not None:
        _same_shape("gate_values", trace.gate_values, NUMBER, gates.shape, "gates")
    layer_names(gate_names, layers)


def _declared_names(declared: Optional[Sequence[str]], count: int, field: str, attribute: str, one: str, dims: str, size: str,
                    numbered: str) -> list[str]:
    """The model's `attribute` (a list of `count` strings), else `numbered` with i = 0, 1, ... (n =
    i + 1); names of another number, or not strings, are a TraceContractError on `field` (whose
    shape is `dims`, `size` the dimension they name): never a rename."""
    if declared is None:
        return [numbered.format(i=i, n=i + 1) for i in range(count)]
    if not isinstance(declared, (list, tuple)) or not all(isinstance(name, str) for name in declared):
        raise TraceContractError(field, f"the model's {attribute}: a list of strings, one per {one}", describe(declared))
    names = list(declared)
    if len(names) != count:
        raise TraceContractError(field, f"{dims} with {size} = {len(names)}, the length of the model's {attribute}",
                                 f"{size} = {count} ({attribute}: {len(names)} names)")
    return names


def layer_names(gate_names: Optional[Sequence[str]], layers: int) -> list[str]:
    """The names of `layers` gated layers: the model's `gate_names` (its length must be L), else
    "layer 0", "layer 1", ... Never a rename: names of another length are a TraceContractError."""
    return _declared_names(gate_names, layers, "gates", "gate_names", "gated layer", "[B, L]", "L", "layer {i}")


def exit_labels(exit_names: Optional[Sequence[str]], exits: int) -> list[str]:
    """The names of `exits` early exits: the model's `exit_names` (its length must be E), else
    "exit 1", "exit 2", ... Never a rename: names of another length are a TraceContractError."""
    return _declared_names(exit_names, exits, "exit_confidence", "exit_names", "exit", "[B, E]", "E", "exit {n}")


def block_labels(block_names: Optional[Sequence[str]], blocks: int) -> list[str]:
    """The names of a trace's `blocks` (its BlockTraces, one map each): the model's `block_names`
    (e.g. "layers 1-3" for a transformer's layer group; its length must be the number of
    blocks), else "block 1", "block 2", ... Never a rename: a TraceContractError otherwise."""
    return _declared_names(block_names, blocks, "blocks", "block_names", "block (BlockTrace)", "a list of n BlockTrace", "n", "block {n}")


def token_layer_labels(token_layer_names: Optional[Sequence[str]], layers: int) -> list[str]:
    """The names of the L layers of Trace.token_layers (its last dimension): the model's
    `token_layer_names` (e.g. "step 1".. of a Universal Transformer, "layer 2 (routed)" of a
    Mixture-of-Depths; its length must be L), else "layer 1", "layer 2", ... Never a rename: names
    of another length are a TraceContractError."""
    return _declared_names(token_layer_names, layers, "token_layers", "token_layer_names", "token layer", "[B, T, L]", "L", "layer {n}")


TOKEN_LAYER_TASKS = ("bytes-lm",)  # tasks whose traces may say which layers computed each input step (the Text view draws them)


def _check_token_layers(trace, task: str, batch: int, steps: int, token_layer_names: Optional[Sequence[str]] = None) -> None:
    """Per input step and layer: token_layers bool [B, T, L] (T: the bytes; byte LMs only, the
    one task whose views draw them), token_layer_weights float [B, T, L] only beside it, >= 0, and
    0 wherever its layer did not run; the model's token_layer_names (if any) L of them."""
    ran, weights = getattr(trace, "token_layers", None), getattr(trace, "token_layer_weights", None)
    if ran is None:
        if weights is not None:
            raise TraceContractError("token_layer_weights", "None where token_layers is None (the weights of the layers that ran)", describe(weights))
        return
    if task not in TOKEN_LAYER_TASKS:
        raise TraceContractError("token_layers", f"None for a {task} model (per input step and layer: "
                                                 f"{' and '.join(TOKEN_LAYER_TASKS)} models only)", describe(ran))
    _tensor("token_layers", ran, BOOL, [batch, steps, "L"])
    if weights is not None:
        _same_shape("token_layer_weights", weights, FLOAT, ran.shape, "token_layers: one weight per input step and layer")
        if not bool(torch.isfinite(weights).all()):
            raise TraceContractError("token_layer_weights", "finite numbers (the weight each layer's output gets)",
                                     f"{int((~torch.isfinite(weights)).sum())} NaN or infinite value(s)")
        negative = weights < 0
        if bool(negative.any()):
            raise TraceContractError("token_layer_weights", ">= 0 (ACT's halting weights and a router's sigmoid weights are)",
                                     _count_and_first(negative, weights, "negative weight(s)"))
        stray = (weights != 0) & ~ran
        if bool(stray.any()):
            raise TraceContractError("token_layer_weights", "0 wherever token_layers is False (a layer that did not run gives no weight)",
                                     _count_and_first(stray, weights, "nonzero weight(s) where the layer did not run"))
    token_layer_labels(token_layer_names, int(ran.shape[2]))


def _count_and_first(wrong: torch.Tensor, values: torch.Tensor, what: str) -> str:
    """"3 <what>, first at [b, t, l]: v": how many entries `wrong` marks, and the first of them."""
    where = wrong.nonzero()[0].tolist()
    return f"{int(wrong.sum())} {what}, first at [{', '.join(map(str, where))}]: {float(values[tuple(where)]):.4g}"


def _check_exits(trace, batch: int, exit_names: Optional[Sequence[str]] = None) -> None:
    """Per-image early exits: exit_confidence float [B, E] and exit_taken int [B], together; each
    exit taken one of 0..E-1; the model's exit_names (if any) E of them."""
    confidence, taken = getattr(trace, "exit_confidence", None), getattr(trace, "exit_taken", None)
    if confidence is None and taken is None:
        return
    if confidence is None or taken is None:
        missing, given = ("exit_confidence", "exit_taken") if confidence is None else ("exit_taken", "exit_confidence")
        raise TraceContractError(missing, f"{'float [B, E]' if missing == 'exit_confidence' else 'int [B]'} beside {given}", "None")
    _tensor("exit_confidence", confidence, FLOAT, [batch, "E"])
    _tensor("exit_taken", taken, ("int",), [batch])
    exits = int(confidence.shape[1])
    if batch and not bool(((taken >= 0) & (taken < exits)).all()):
        wrong = sorted({int(v) for v in taken.flatten().tolist() if not 0 <= int(v) < exits})
        raise TraceContractError("exit_taken", f"int [B], each an exit 0..{exits - 1} (E = {exits}, exit_confidence's second dimension)",
                                 f"exits {', '.join(map(str, wrong[:5]))}")
    exit_labels(exit_names, exits)


def fixed_input_size(model) -> Optional[tuple[int, int]]:
    """The one input size [H, W] an image model takes, where it declares one (its optional
    attribute `fixed_input_size`, e.g. a ViT's position embedding fixes its grid); None: any size
    (the "native" resolution runs at the image's own). A declaration that is not two whole numbers
    >= 1 is a ValueError."""
    size = getattr(model, "fixed_input_size", None)
    if size is None:
        return None
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ValueError(f"the model's fixed_input_size must be [height, width], two whole numbers >= 1, not {size!r}")
    return int(size[0]), int(size[1])


def exit_threshold(model) -> Optional[float]:
    """The confidence an exit must reach for an example to leave there, as the model declares it
    (its optional attribute `exit_threshold`, read while a what-if is in force: the threshold in
    force); None where it declares none. Not a number in [0, 1]: a TraceContractError."""
    value = getattr(model, "exit_threshold", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise TraceContractError("exit_confidence", "the model's exit_threshold: a number in [0, 1] (the confidence an exit must reach)",
                                 repr(value))
    return float(value)


def _check_steps(trace, task: str, batch: int, steps: int) -> None:
    ponder, counted = trace.ponder, trace.steps
    if ponder is None and counted is None:
        if task in ("parity", "bytes-lm"):  # the Parity and Text views read both
            raise TraceContractError("ponder", f"float {_dims([batch, steps])} (a {task} model's ponder per input step)", "None")
        return
    t = steps if task in ("parity", "bytes-lm") else "T"
    if ponder is None or counted is None:
        missing = "ponder" if ponder is None else "steps"
        raise TraceContractError(missing, f"{'float' if missing == 'ponder' else 'float or int'} [B, T] beside "
                                          f"{'steps' if missing == 'ponder' else 'ponder'}", "None")
    _tensor("ponder", ponder, FLOAT, [batch, t])
    _same_shape("steps", counted, NUMBER, ponder.shape, "ponder")
