"""Trace -> JSON: the one place where a model's Trace becomes the numbers the page draws."""
from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F

from ponderscope.models.trace import Trace
from ponderscope.server.imaging import png_data_url
from ponderscope.training.workloads import CHAR_CLASS_LABELS, CHAR_CLASSES, char_class


def _grid(tensor: torch.Tensor, digits: int = 4) -> list[list[float]]:
    return [[round(float(v), digits) for v in row] for row in tensor.tolist()]


def _timed_trace(entry, store, x: torch.Tensor) -> tuple[Trace, float]:
    with store.inference.interactive(), torch.no_grad():
        started = time.perf_counter()
        trace = entry.model.trace(x.to(store.device))
        if store.device.startswith("cuda"):
            torch.cuda.synchronize()
        return trace, (time.perf_counter() - started) * 1000.0


def flops_json(trace: Trace, index: int = 0) -> dict:
    executed = float(trace.flops[index])
    return {"executed": executed, "dense": trace.dense_flops, "ratio": executed / trace.dense_flops}


def ponder_json(trace: Trace, size: tuple[int, int]) -> dict | None:
    """Per-block maps at their own resolution, plus the total over blocks nearest-resized to the
    input (the SACT paper's ponder map), both in ponder cost N + R and in units executed N."""
    if not trace.blocks:
        return None
    total, units_total = trace.ponder_map(size)[0].cpu(), trace.ponder_map(size, "units")[0].cpu()
    total_grid, units_grid = _grid(total), _grid(units_total, 0)
    means, units_means = trace.block_means()[0].tolist(), trace.block_means("units")[0].tolist()
    blocks = []
    for index, block in enumerate(trace.blocks):
        cost, units = block.ponder_cost[0].float().cpu(), block.units[0].float().cpu()
        blocks.append({
            "index": index,
            "ponder_cost": _grid(cost),
            "units": _grid(units, 0),
            "n_units": int(block.halting.shape[1]),
            "height": int(cost.shape[0]),
            "width": int(cost.shape[1]),
            "mean_ponder": means[index],
            "mean_units": units_means[index],
        })
    return {
        "total": total_grid,
        "units_total": units_grid,
        "blocks": blocks,
        # the range of the maps as sent (rounded): a map's colour scale ends at its drawn values
        "min": min(map(min, total_grid)),
        "max": max(map(max, total_grid)),
        "units_min": min(map(min, units_grid)),
        "units_max": max(map(max, units_grid)),
        "mean": sum(means),  # the image's ponder (Trace.mean_ponder), as the dataset view and evaluation count it
        "mean_units": sum(units_means),  # the same in units executed N
    }


def gate_names(model, layers: int) -> list[str]:
    """The model's names for its gated layers (`gate_names`, optional in the contract), else numbers."""
    names = list(getattr(model, "gate_names", None) or [])
    return names if len(names) == layers else [f"layer {i}" for i in range(layers)]


def gates_json(entry, trace: Trace) -> dict | None:
    if trace.gates is None:
        return None
    names = gate_names(entry.model, trace.gates.shape[1])
    return {
        "probability": [round(float(v), 4) for v in trace.gates[0]],
        "executed": [bool(v) for v in trace.executed[0]],
        "layers": names,
    }


def input_json(entry, shown, original_size: tuple[int, int], resolution: str, image_hash: str | None = None,
               sample: int | None = None, label: int | None = None, box: list[int] | None = None) -> dict:
    """The `input` block of an image analysis: the image as the model saw it (`shown`, a PIL
    image), and for a test image its label and digit box, scaled from `original_size` to it."""
    if box is not None and shown.size != tuple(original_size):  # boxes are in test-image pixels
        sy, sx = shown.size[1] / original_size[1], shown.size[0] / original_size[0]
        box = [round(box[0] * sy), round(box[1] * sx), round(box[2] * sy), round(box[3] * sx)]
    classes = entry.card.classes or []
    return {
        "image": png_data_url(shown),
        "width": shown.width,
        "height": shown.height,
        "hash": image_hash,
        "sample": sample,
        "label": label,
        "label_class": classes[label] if label is not None and label < len(classes) else None,
        "box": box,
        "resolution": resolution,
    }


def analyze_image(entry, store, x: torch.Tensor, input: dict, whatif=None) -> dict:
    """The answer of POST /{id}/image for the prepared input x; `input`: its input_json;
    `whatif`: a ponderscope.models.whatif.WhatIf in force for this answer only (None: the trained model)."""
    from ponderscope.models.whatif import applied

    with applied(entry.model, whatif):
        trace, ms = _timed_trace(entry, store, x)
    probabilities = F.softmax(trace.logits[0].float(), -1).cpu()
    top = torch.topk(probabilities, min(5, len(probabilities)))
    classes = entry.card.classes or [str(i) for i in range(len(probabilities))]
    result = {
        "model": entry.id,
        "prediction": [{"index": int(i), "class": classes[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices)],
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
        "execution": getattr(entry.model, "execution", "masked"),
        "unshown_signals": extras_json(trace)["unshown_signals"],
        "ponder": ponder_json(trace, tuple(x.shape[-2:])),
        "gates": gates_json(entry, trace),
        "input": input,
        "whatif": None if whatif is None or whatif.is_trained() else whatif.as_dict(),
    }
    return with_figures("image", result)


def analyze_text(entry, store, text: str) -> dict:
    """Per Unicode character: the mean ponder and steps over its UTF-8 bytes (the model reads
    bytes), its surprisal in bits = the sum over its bytes of -log2 p(byte | preceding), and its
    class (ponderscope.training.workloads.char_class: of the character, so "é" is a letter here while the held-
    out statistics, per byte, count its two bytes as markup / other). Per class: count and mean N, N + R. `measure`: the quantity that
    varies over this text (steps N if it does, else ponder N + R), which the page colours by."""
    data = text.encode("utf-8")
    x = torch.tensor([list(data)], dtype=torch.long)
    trace, ms = _timed_trace(entry, store, x)
    logits = trace.logits[0].float().cpu()
    log_probs = F.log_softmax(logits, -1)
    byte_bits = [None] + [float(-log_probs[t - 1, data[t]]) / math.log(2) for t in range(1, len(data))]
    ponder, steps = trace.ponder[0].cpu().tolist(), trace.steps[0].cpu().tolist()
    chars, position, previous = [], 0, None
    for char in text:
        width = len(char.encode("utf-8"))
        span = range(position, position + width)
        bits = [byte_bits[i] for i in span]
        chars.append({
            "char": char,
            "bytes": width,
            "class": char_class(char, previous),
            "ponder": round(sum(ponder[i] for i in span) / width, 4),
            "steps": round(sum(steps[i] for i in span) / width, 3),
            "bits": None if bits[0] is None else round(sum(bits), 4),
        })
        position, previous = position + width, char
    known = [c["bits"] for c in chars if c["bits"] is not None]
    classes = {}
    for name in CHAR_CLASSES:
        members = [c for c in chars if c["class"] == name]
        if members:
            classes[name] = {"label": CHAR_CLASS_LABELS[name], "count": len(members),
                             "steps": sum(c["steps"] for c in members) / len(members),
                             "ponder": sum(c["ponder"] for c in members) / len(members)}
    return with_figures("text", {
        "model": entry.id,
        "chars": chars,
        "classes": classes,
        "measure": "steps" if len({c["steps"] for c in chars}) > 1 else "ponder",
        "mean_ponder": sum(ponder) / len(ponder),
        "mean_steps": sum(steps) / len(steps),
        "bits_per_char": sum(known) / len(known) if known else None,
        "bytes": len(data),
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
        "execution": getattr(entry.model, "execution", "masked"),
        "unshown_signals": extras_json(trace)["unshown_signals"],
    })


# Trace.extras the page draws (docs/own-models.md); any other key is named in `unshown_signals`.
SHOWN_EXTRAS = ("halting_distribution",)
NOT_SIGNALS = ("step_logits",)  # training-only extras (PonderNet's answers at every step)


def extras_json(trace: Trace, index: int = 0) -> dict:
    """What a model's trace carries beyond the fields every view reads: the halting distribution
    p(n) over steps (PonderNet-style models), and the names of signals the page does not draw."""
    out = {"unshown_signals": sorted(k for k in trace.extras if k not in SHOWN_EXTRAS + NOT_SIGNALS)}
    distribution = trace.extras.get("halting_distribution")
    if distribution is not None:  # [B, T, N]: for one input step (parity), the distribution itself
        out["halting_distribution"] = [round(float(v), 5) for v in distribution[index, 0]]
    return out


def analyze_parity(entry, store, vector: list[float]) -> dict:
    x = torch.tensor([vector], dtype=torch.float32)
    trace, ms = _timed_trace(entry, store, x)
    probabilities = F.softmax(trace.logits[0].float(), -1).cpu()
    answer = int(probabilities.argmax())
    result = {
        "model": entry.id,
        "answer": ["even", "odd"][answer],
        "probability": float(probabilities[answer]),
        "steps": int(trace.steps[0, 0]),
        "ponder": float(trace.ponder[0, 0]),
        **extras_json(trace),
        "nonzero": int(sum(1 for v in vector if v != 0)),
        "ones": int(sum(1 for v in vector if v == 1)),
        "flops": flops_json(trace),
        "time_ms": round(ms, 2),
    }
    # the figure marks this vector; the card's test-set curve under it
    curve = entry.card.test_metrics.get("ponder_by_nonzero")
    return with_figures("parity", result, vector=vector, curve=curve, bits=len(vector))


# ------------------------------------------------------------------ figures
# plotly.py's default theme ("plotly", about 7 KB in every figure's layout.template) is left out of
# the answers: the page draws the rest of each figure as it is, with plotly.js's own defaults.
SEND_TEMPLATE = False


def figure_json(fig) -> dict:
    """A plotly Figure as JSON-safe {data, layout} (what Plotly.react takes)."""
    out = json.loads(fig.to_json())
    if not SEND_TEMPLATE:
        out.get("layout", {}).pop("template", None)
    return out


def answer_figures(kind: str, answer: dict, vector: list | None = None, curve: dict | None = None, bits: int | None = None) -> dict:
    """The figures of an answer, by name, drawn by ponderscope.figures (the notebook's and
    `ponderscope render`'s code) with its default settings; the page draws them as they are and
    restyles only display settings (colour scale, opacity, measure, box) from the answer's numbers.

        image    "map": the ponder map over the input (or the input alone: ConvNet-AIG, dense),
                 "blocks": every block's map on one scale (ACT/SACT), "gates" (ConvNet-AIG)
        text     "text": per-character ponder and surprisal
        parity   "parity": ponder against nonzero entries, this vector over the test-set curve;
                 "halting": p(n) over steps (PonderNet-style models)
        dataset  dataset_figures(result): "class", "flops_histogram", ... (image), "corpus" (text)
        sweep    "sweep": accuracy vs FLOPs of every model asked for, the dense twin as reference
        lesion   "single", "random", and "classes:<model>" per model
    """
    from ponderscope import figures

    if kind == "image":
        out = {"map": figures.ponder_map_figure(answer) if answer.get("ponder") else figures.input_figure(answer)}
        if answer.get("ponder"):
            out["blocks"] = figures.block_maps_figure(answer)
        if answer.get("gates"):
            out["gates"] = figures.gates_figure(answer)
    elif kind == "text":
        out = {"text": figures.text_figure(answer)}
    elif kind == "sweep":  # {"results": {label: points}, "reference": dense point or None}
        out = {"sweep": figures.sweep_figure(answer["results"], answer.get("reference"))}
    elif kind == "lesion":  # {"results": {label: study}}
        studies = answer["results"]
        out = {"single": figures.lesion_figure(studies), "random": figures.random_lesion_figure(studies),
               **{f"classes:{label}": figures.class_lesion_figure(study, label) for label, study in studies.items()}}
    elif kind == "parity":
        out = {"parity": figures.parity_figure({**answer, "vector": vector} if vector is not None else answer, curve, bits)}
        if answer.get("halting_distribution"):
            out["halting"] = figures.halting_figure(answer)
    elif kind == "dataset":
        out = figures.dataset_figures(answer)
    else:
        raise ValueError(f"no figures for answers of kind {kind!r}")
    return {name: figure_json(fig) for name, fig in out.items()}


def with_figures(kind: str, answer: dict, **context) -> dict:
    """The answer with its `figures` (answer_figures) beside its numbers."""
    answer["figures"] = answer_figures(kind, answer, **context)
    return answer
