"""The notebook API: load a checkpoint, analyse an image or a text, get the dashboard's figure.

    import ponderscope as ps
    model = ps.load("fmnist_sact_resnet32")        # a bundled checkpoint, or any checkpoint folder
    analysis = ps.analyze_image(model, "shirt.png")  # the ImageAnalysis POST /api/models/{id}/image returns
    ps.image_figure(model, 0)                        # test image 0's ponder map, a plotly Figure

The analyses are the API's typed answers, computed by the same code (ponderscope.core.answers,
ponderscope.core.imaging), and `load` returns the core's LoadedModel; read an answer by attribute
(answer.flops.ratio) or by its JSON names (answer["flops"]["ratio"]).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from . import figures
from .core.loaded import LoadedModel, bundled, load

if TYPE_CHECKING:
    from .core.answers import ImageAnalysis, ParityAnalysis, TextAnalysis


PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")  # what a PIL image may be saved as PNG in


def _model(model: LoadedModel | str | Path, kind: str) -> LoadedModel:
    model = model if isinstance(model, LoadedModel) else load(model)
    if model.kind != kind:
        raise ValueError(f"model {model.id!r} is a {model.kind} model; this needs a {kind} model")
    return model


def _decoded(image):
    """A path, bytes or PIL image -> (the upright L/RGB image ponderscope.core.imaging.decode makes of it, the
    hash POST /api/images would name it by). A PIL image is taken as if uploaded as PNG."""
    from PIL import Image

    from ponderscope.core.imaging import decode, encode_png

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


def _test_sample(model: LoadedModel, index: int):
    """Test image `index` -> (image, label, box) as the route's _test_example reads it."""
    return model.test_set().test_example(index)


def analyze_image(model: LoadedModel | str, image, resolution: str = "train", invert: bool = False, whatif=None) -> ImageAnalysis:
    """The answer POST /api/models/{id}/image returns (an ImageAnalysis), `input` block included. image: a file path, the
    file's bytes, a PIL image, or an int: that image of the model's test set (with its label).
    whatif: one change to the trained model for this answer, a ponderscope.models.whatif.WhatIf or a dict
    like {"threshold": 0.9}, {"cap": 2}, {"gate_bias": 1.0}, {"lesion": ["block2.unit3"]}."""
    from ponderscope.core.answers import analyze_image as analyze
    from ponderscope.core.answers import input_json
    from ponderscope.core.imaging import PIXEL_WORK, prepare

    model = _model(model, "image")
    sample = label = box = digest = None
    if isinstance(image, int) and not isinstance(image, bool):
        sample = image
        image, label, box = _test_sample(model, sample)
    else:
        image, digest = _decoded(image)
    with PIXEL_WORK:
        original = image.size
        resolution, note = model.resolution(resolution)  # a model of one input size: its training size
        x, shown = prepare(image, model.card.preprocess, resolution, invert)
    if isinstance(whatif, dict):
        from ponderscope.models.whatif import WhatIf

        whatif = WhatIf(**{**whatif, "lesion": tuple(whatif.get("lesion", ()))})
    return figures.attach("image", analyze(model, x, input_json(model, shown, original, resolution, digest, sample, label, box, resolution_note=note), whatif))


def analyze_text(model: LoadedModel | str, text: str) -> TextAnalysis:
    """The answer POST /api/models/{id}/text returns, a TextAnalysis (per character: N, N+R, surprisal, class)."""
    from ponderscope.core.answers import analyze_text as analyze

    model = _model(model, "text")
    if not text:
        raise ValueError("the text is empty")
    return figures.attach("text", analyze(model, text))


def analyze_parity(model: LoadedModel | str, vector: list[float]) -> ParityAnalysis:
    """The answer POST /api/models/{id}/parity returns, a ParityAnalysis (with its `vector`)."""
    from ponderscope.core.answers import analyze_parity as analyze

    model = _model(model, "parity")
    bits = int(model.card.task.bits)
    if len(vector) != bits:
        raise ValueError(f"the vector has {len(vector)} entries; this model takes exactly {bits}")
    return figures.attach("parity", analyze(model, list(vector)))


def image_figure(model: LoadedModel | str, image, resolution: str = "train", invert: bool = False, **options):
    """figures.image_figure of analyze_image(model, image): the ponder map (options: block, measure,
    colorscale, opacity, box), the gates, or the input of a dense model."""
    return figures.image_figure(analyze_image(model, image, resolution, invert), **options)


def text_figure(model: LoadedModel | str, text: str, **options):
    """figures.text_figure of analyze_text(model, text) (options: measure, colorscale)."""
    return figures.text_figure(analyze_text(model, text), **options)


def text_layers_figure(model: LoadedModel | str, text: str, **options):
    """figures.text_layers_figure of analyze_text(model, text): character x layer, the weight where
    each layer ran (models whose trace has token_layers; options: colorscale)."""
    return figures.text_layers_figure(analyze_text(model, text), **options)


def parity_figure(model: LoadedModel | str, vectors: list[list[float]]):
    """figures.parity_figure of each vector's analysis (the last is the current one) with the card's test-set curve."""
    model = _model(model, "parity")
    return figures.parity_figure([analyze_parity(model, v) for v in vectors], model.card.test_metrics.get("ponder_by_nonzero"), int(model.card.task.bits))
