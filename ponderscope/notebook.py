"""The notebook API: load a checkpoint, analyse an image or a text, get the dashboard's figure.

    import ponderscope as ps
    model = ps.load("fmnist_sact_resnet32")        # a bundled checkpoint, or any checkpoint folder
    analysis = ps.analyze_image(model, "shirt.png")  # the dict POST /api/models/{id}/image returns
    ps.image_figure(model, 0)                        # test image 0's ponder map, a plotly Figure

The analyses are the API's, computed by the same code (ponderscope.server.analysis, ponderscope.server.imaging); torch
and the server are imported on first use, so `import ponderscope` stays light.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from . import figures
from .paths import bundled_checkpoints

BUNDLED = bundled_checkpoints()
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")  # what a PIL image may be saved as PNG in


class Model:
    """A loaded checkpoint (ponderscope.server.store.LoadedModel `entry`, in its one-model ModelStore `store`)."""

    def __init__(self, store, entry):
        self.store, self.entry = store, entry

    id = property(lambda self: self.entry.id)
    kind = property(lambda self: self.entry.kind, doc="image, text or parity")
    family = property(lambda self: self.entry.family)
    card = property(lambda self: getattr(self.entry.card, "data", self.entry.card), doc="the card's JSON, as a dict")
    path = property(lambda self: self.entry.path)
    device = property(lambda self: self.store.device)
    module = property(lambda self: self.entry.model, doc="the torch module")

    def __repr__(self) -> str:
        card = self.card
        test = (card.get("metrics") or {}).get("test") or {}
        accuracy = f", test accuracy {test['accuracy']:.2%}" if isinstance(test.get("accuracy"), (int, float)) else ""
        return (f"<ponderscope.Model {self.id!r}: {card['model']} ({self.family}, {self.kind} model) on {card.get('dataset')}"
                f"{accuracy}, {self.device}, from {self.path}>")


def bundled() -> list[str]:
    """The ids of the checkpoints that come with ponderscope (checkpoints/)."""
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "card.json").is_file()) if BUNDLED.is_dir() else []


def load(name_or_path: str | Path, device: str = "cpu", plugins: list[str | Path] | None = None) -> Model:
    """A bundled checkpoint by id (see bundled()) or a checkpoint folder (card.json + model.safetensors).
    plugins: Python files that register your own model families (docs/own-models.md); installed
    `ponderscope.models` entry points are loaded too."""
    from ponderscope.server.store import ModelStore

    from .plugins import load_plugins

    load_plugins(plugins or [])
    folder = Path(name_or_path).expanduser()
    if not (folder / "card.json").is_file() and (BUNDLED / str(name_or_path) / "card.json").is_file():
        folder = BUNDLED / str(name_or_path)
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(f"{name_or_path!s} is neither a checkpoint folder (with card.json) nor a bundled checkpoint "
                                f"({', '.join(bundled()) or 'none here'})")
    store = ModelStore([folder], device=device)
    if not store.models:
        raise ValueError(f"{folder}: could not be loaded ({'; '.join(store.errors)})")
    return Model(store, next(iter(store.models.values())))


def _model(model: Model | str | Path, kind: str) -> Model:
    model = model if isinstance(model, Model) else load(model)
    if model.kind != kind:
        raise ValueError(f"model {model.id!r} is a {model.kind} model; this needs a {kind} model")
    return model


def _decoded(image):
    """A path, bytes or PIL image -> (the upright L/RGB image ponderscope.server.imaging.decode makes of it, the
    hash POST /api/images would name it by). A PIL image is taken as if uploaded as PNG."""
    from PIL import Image

    from ponderscope.server.imaging import decode, encode_png

    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        (image if image.mode in PNG_MODES else image.convert("RGB")).save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        data = Path(image).expanduser().read_bytes()
    decoded = decode(data)
    return decoded, hashlib.sha256(encode_png(decoded)).hexdigest()


def _test_sample(model: Model, index: int):
    """Test image `index` -> (image, label, box) as the route's _test_example reads it."""
    return model.store.workload(model.entry).test_example(index)


def analyze_image(model: Model | str, image, resolution: str = "train", invert: bool = False, whatif=None) -> dict:
    """The dict POST /api/models/{id}/image returns, `input` block included. image: a file path, the
    file's bytes, a PIL image, or an int: that image of the model's test set (with its label).
    whatif: one change to the trained model for this answer, a ponderscope.models.whatif.WhatIf or a dict
    like {"threshold": 0.9}, {"cap": 2}, {"gate_bias": 1.0}, {"lesion": ["block2.unit3"]}."""
    from ponderscope.server.analysis import analyze_image as analyze
    from ponderscope.server.analysis import input_json
    from ponderscope.server.imaging import PIXEL_WORK, prepare

    model = _model(model, "image")
    sample = label = box = digest = None
    if isinstance(image, int) and not isinstance(image, bool):
        sample = image
        image, label, box = _test_sample(model, sample)
    else:
        image, digest = _decoded(image)
    with PIXEL_WORK:
        original = image.size
        x, shown = prepare(image, model.card["preprocess"], resolution, invert)
    if isinstance(whatif, dict):
        from ponderscope.models.whatif import WhatIf

        whatif = WhatIf(**{**whatif, "lesion": tuple(whatif.get("lesion", ()))})
    return analyze(model.entry, model.store, x, input_json(model.entry, shown, original, resolution, digest, sample, label, box), whatif)


def analyze_text(model: Model | str, text: str) -> dict:
    """The dict POST /api/models/{id}/text returns (per character: N, N+R, surprisal, class)."""
    from ponderscope.server.analysis import analyze_text as analyze
    from ponderscope.server.routers.sequences import valid_unicode

    model = _model(model, "text")
    if not text:
        raise ValueError("the text is empty")
    text, replaced = valid_unicode(text)
    return {**analyze(model.entry, model.store, text), "replaced_surrogates": replaced}


def analyze_parity(model: Model | str, vector: list[float]) -> dict:
    """The dict POST /api/models/{id}/parity returns, plus the `vector` (as the page keeps it)."""
    from ponderscope.server.analysis import analyze_parity as analyze

    model = _model(model, "parity")
    bits = int(model.card["task"]["bits"])
    if len(vector) != bits:
        raise ValueError(f"the vector has {len(vector)} entries; this model takes exactly {bits}")
    return {**analyze(model.entry, model.store, list(vector)), "vector": list(vector)}


def image_figure(model: Model | str, image, resolution: str = "train", invert: bool = False, **options):
    """figures.image_figure of analyze_image(model, image): the ponder map (options: block, measure,
    colorscale, opacity, box), the gates, or the input of a dense model."""
    return figures.image_figure(analyze_image(model, image, resolution, invert), **options)


def text_figure(model: Model | str, text: str, **options):
    """figures.text_figure of analyze_text(model, text) (options: measure, colorscale)."""
    return figures.text_figure(analyze_text(model, text), **options)


def parity_figure(model: Model | str, vectors: list[list[float]]):
    """figures.parity_figure of each vector's analysis (the last is the current one) with the card's test-set curve."""
    model = _model(model, "parity")
    test = (model.card.get("metrics") or {}).get("test") or {}
    return figures.parity_figure([analyze_parity(model, v) for v in vectors], test.get("ponder_by_nonzero"), int(model.card["task"]["bits"]))
