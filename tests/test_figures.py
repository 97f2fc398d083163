"""ponderscope.figures on small hand-made typed answers (ponderscope.core.answers, the API's
response models): every figure draws the answer's numbers as they are, and its HTML works
offline. No model is run here (test_notebook.py runs the bundled checkpoints)."""
from __future__ import annotations

import base64
import inspect
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from PIL import Image

from ponderscope import figures
from ponderscope.core.answers import (grid_on, CorpusAnalysis, DatasetAnalysis, Exits, ImageAnalysis, LesionStudy, ParityAnalysis, Reference, SweepPoint,
                                      TextAnalysis)

ROOT = Path(__file__).resolve().parents[1]
HTTP_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_input(width=8, height=6, box=None) -> dict:
    image = Image.new("L", (width, height), 30)
    image.paste(200, (2, 1, 6, 5))
    return {"image": data_url(image), "width": width, "height": height, "hash": None, "sample": None, "label": None,
            "label_class": None, "box": box, "resolution": "train"}


def flops(ratio: float) -> dict:
    return {"executed": 10.0 * ratio, "dense": 10.0, "ratio": ratio}


def image_analysis(model: str, ponder=None, gates=None, box=None, ratio: float = 1.0) -> ImageAnalysis:
    return ImageAnalysis(model=model, prediction=[{"index": 1, "class": "b", "probability": 0.9}], flops=flops(ratio), time_ms=1.0,
                         execution="sparse", ponder=ponder, gates=gates, input=image_input(box=box))


def sact_analysis(model="sact") -> ImageAnalysis:
    total = [[round(1.0 + 0.25 * r + 0.125 * c, 4) for c in range(8)] for r in range(6)]
    units_total = [[2 + (r + c) % 3 for c in range(8)] for r in range(6)]
    # the input is 8x6 pixels: the total on it one cell a pixel, block 0 on 4x3 cells, block 1 on 2x2
    blocks = [
        {"index": 0, "name": "block 1", "ponder_cost": [[1.5, 2.0, 1.0, 1.25]] * 3, "units": [[1, 2, 1, 1]] * 3, "n_units": 3,
         "grid": grid_on((6, 8), (3, 4)), "mean_ponder": 1.4375, "mean_units": 1.25},
        {"index": 1, "name": "block 2", "ponder_cost": [[3.0, 2.5], [2.0, 4.0]], "units": [[3, 2], [2, 3]], "n_units": 3,
         "grid": grid_on((6, 8), (2, 2)), "mean_ponder": 2.875, "mean_units": 2.5},
    ]
    values, units = [v for row in total for v in row], [v for row in units_total for v in row]
    ponder = {"total": total, "units_total": units_total, "grid": grid_on((6, 8), (6, 8)), "blocks": blocks, "min": min(values), "max": max(values),
              "units_min": min(units), "units_max": max(units), "mean": sum(values) / len(values), "mean_units": sum(units) / len(units)}
    return image_analysis(model, ponder=ponder, box=[1, 2, 5, 6], ratio=0.5)


def aig_analysis() -> ImageAnalysis:
    return image_analysis("aig", gates={"probability": [0.9, 0.2, 0.6, 0.05], "executed": [True, False, True, False],
                                        "layers": ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]}, ratio=0.7)


def dense_analysis() -> ImageAnalysis:
    return image_analysis("dense")


def text_analysis() -> TextAnalysis:
    chars = [{"char": c, "bytes": len(c.encode()), "class": "letter", "ponder": p, "steps": s, "bits": b}
             for c, p, s, b in [("a", 1.2, 1.0, None), (" ", 2.7, 2.0, 3.5), ("é", 1.1, 1.0, 7.25), ("\n", 3.4, 3.0, 1.0)]]
    return TextAnalysis(model="lm", chars=chars, classes={}, measure="steps", mean_ponder=2.0, mean_steps=1.75, bits_per_char=3.9,
                        bytes=5, flops=flops(0.6), time_ms=1.0, execution="masked")


def parity_analysis(nonzero, ponder, vector=()) -> ParityAnalysis:
    return ParityAnalysis(model="parity", answer="odd", probability=0.8, steps=4, ponder=ponder, nonzero=nonzero, ones=1,
                          flops=flops(0.5), time_ms=1.0, vector=list(vector))


def grid(trace) -> list:
    return np.asarray(trace.z, dtype=float).tolist()


@pytest.mark.parametrize("measure", ["ponder", "units"])
def test_ponder_map_is_the_total_over_the_image(measure):
    a = sact_analysis()
    fig = figures.ponder_map_figure(a, measure=measure, colorscale="Inferno", opacity=0.35)
    heat = fig.data[0]
    assert isinstance(fig, go.Figure) and heat.type == "heatmap"
    assert grid(heat) == (a.ponder.total if measure == "ponder" else a.ponder.units_total)
    assert heat.opacity == 0.35 and [list(s) for s in heat.colorscale] == figures.plotly_scale("Inferno")
    if measure == "ponder":  # the page's colour range: ponder.min / max
        assert (heat.zmin, heat.zmax) == (a.ponder.min, a.ponder.max)
    # one cell per input pixel here, centred on it; the image below, in pixel coordinates
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (0.5, 1.0, 0.5, 1.0)
    image = fig.layout.images[0]
    assert image.source == a.input.image and (image.sizex, image.sizey) == (8, 6) and image.layer == "below"
    assert list(fig.layout.yaxis.range) == [6, 0]
    box = fig.layout.shapes[0]  # [y0, x0, y1, x1] of the test set
    assert (box.x0, box.y0, box.x1, box.y1) == (2, 1, 6, 5)


def test_a_block_map_is_its_own_grid_over_the_whole_image():
    a = sact_analysis()
    fig = figures.ponder_map_figure(a, block=1)
    heat = fig.data[0]
    assert grid(heat) == a.ponder.blocks[1].ponder_cost
    assert (heat.dx, heat.dy) == (4.0, 3.0)  # 2x2 cells over 8x6 pixels
    assert (heat.zmin, heat.zmax) == (1.0, 4.0)  # one scale across blocks, as the page's small multiples
    assert grid(figures.ponder_map_figure(a, block=0, measure="units").data[0]) == a.ponder.blocks[0].units


def test_block_maps_share_one_colour_axis():
    a = sact_analysis()
    fig = figures.block_maps_figure(a)
    assert [grid(t) for t in fig.data] == [b.ponder_cost for b in a.ponder.blocks]
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (1.0, 4.0)
    assert len(fig.layout.images) == 2 and {i.xref for i in fig.layout.images} == {"x", "x2"}


def test_gates_bars_are_the_probabilities_split_by_execution():
    a = aig_analysis()
    fig = figures.gates_figure(a)
    executed, skipped = fig.data
    assert list(executed.x) == ["layer1.0", "layer2.0"] and list(executed.y) == [0.9, 0.6]
    assert list(skipped.x) == ["layer1.1", "layer2.1"] and list(skipped.y) == [0.2, 0.05]
    assert list(fig.layout.xaxis.categoryarray) == a.gates.layers
    assert "2 of 4 gated blocks executed" in fig.layout.title.text


def test_image_figure_picks_the_family_figure():
    assert figures.image_figure(sact_analysis()).data[0].type == "heatmap"
    assert figures.image_figure(aig_analysis()).data[0].type == "bar"
    dense = figures.image_figure(dense_analysis())
    assert len(dense.data) == 0 and dense.layout.images[0].source == dense_analysis().input.image
    with pytest.raises(ValueError, match="no ponder map"):
        figures.ponder_map_figure(aig_analysis())
    with pytest.raises(ValueError, match="measure"):
        figures.ponder_map_figure(sact_analysis(), measure="steps")


def test_compare_uses_one_colour_scale_over_all_maps():
    a, b = sact_analysis("one"), sact_analysis("two")
    b.ponder.total = [[v * 2 for v in row] for row in b.ponder.total]
    fig = figures.compare_figure([a, aig_analysis(), b, dense_analysis()], colorscale="Blues")
    assert [grid(t) for t in fig.data] == [a.ponder.total, b.ponder.total]
    values = [v for z in (a.ponder.total, b.ponder.total) for row in z for v in row]
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax) == (min(values), max(values))
    assert [list(s) for s in axis.colorscale] == figures.plotly_scale("Blues")
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert len(fig.layout.images) == 4  # every model's input, with or without a map
    titles = [t.text for t in fig.layout.annotations]
    assert "no spatial map: 2/4 gated blocks run" in titles[1] and "dense" in titles[3]


def test_dataset_figures_draw_the_result():
    numbers = {
        "model": "aig", "classes": ["a", "b"], "examples": 4, "accuracy": 0.75, "flops_ratio": 0.6, "dense_flops": 10.0,
        "per_class": [{"class": "a", "count": 2, "accuracy": 1.0, "flops_ratio": 0.5, "mean_ponder": None},
                      {"class": "b", "count": 2, "accuracy": 0.5, "flops_ratio": 0.7, "mean_ponder": None}],
        "ponder_histogram": None, "flops_histogram": {"edges": [0.4, 0.6, 0.8], "counts": [2, 2]}, "least": [], "most": [],
        "executed_layers_histogram": {"edges": [0, 1, 2, 3, 4], "counts": [0, 1, 2, 1]},
        "class_layer_execution_rate": [[1.0, 0.5, 0.0], [0.5, 0.5, 1.0]], "layers": ["layer1.0", "layer1.1", "layer2.0"],
    }
    result = DatasetAnalysis(**numbers)
    figs = figures.dataset_figures(result)
    assert set(figs) == {"class", "flops_histogram", "layers_histogram", "class_layer"}
    assert list(figs["class"].data[0].y) == [0.5, 0.7] and list(figs["class"].data[1].y) == [1.0, 0.5]
    assert list(figs["flops_histogram"].data[0].y) == [2, 2] and np.allclose(figs["flops_histogram"].data[0].x, [0.5, 0.7])
    assert list(figs["layers_histogram"].data[0].x) == [0, 1, 2, 3] and list(figs["layers_histogram"].data[0].y) == [0, 1, 2, 1]
    heat = figs["class_layer"].data[0]
    assert grid(heat) == result.class_layer_execution_rate and list(heat.x) == result.layers and list(heat.y) == ["a", "b"]

    numbers.update(per_class=[{**c, "mean_ponder": p} for c, p in zip(numbers["per_class"], [3.5, 4.25])],
                   ponder_histogram={"edges": [3.0, 4.0, 5.0], "counts": [1, 3]}, executed_layers_histogram=None, class_layer_execution_rate=None)
    figs = figures.dataset_figures(DatasetAnalysis(**numbers))
    assert set(figs) == {"class", "ponder", "flops_histogram", "ponder_histogram"}
    assert list(figs["ponder"].data[0].y) == [3.5, 4.25] and list(figs["ponder_histogram"].data[0].y) == [1, 3]


def test_dataset_figures_of_a_byte_lm_are_its_corpus_panel():
    result = CorpusAnalysis(model="lm", source="test", per_char_class={
        "letter": {"count": 10, "steps": 1.1, "steps_std": 0.3, "ponder": 1.5, "ponder_std": 0.2},
        "space": {"count": 3, "steps": 2.0, "steps_std": 0.0, "ponder": 2.6, "ponder_std": 0.1}}, class_labels={"letter": "letters", "space": "spaces"})
    fig = figures.dataset_figures(result)["corpus"]
    steps, ponder = fig.data
    assert list(steps.x) == ["letters", "spaces"] and list(steps.y) == [1.1, 2.0] and list(steps.error_y.array) == [0.3, 0.0]
    assert list(ponder.y) == [1.5, 2.6] and list(ponder.customdata) == [10, 3]


def test_text_figure_bars_the_measure_and_draws_the_surprisal():
    t = text_analysis()
    fig = figures.text_figure(t)
    bars, other, bits = fig.data
    assert list(bars.y) == [c.steps for c in t.chars]  # the analysis' own measure
    assert list(other.y) == [c.ponder for c in t.chars]
    assert list(bits.y) == [None, 3.5, 7.25, 1.0] and bits.yaxis == "y2"
    assert list(fig.layout.xaxis.ticktext) == ["a", "␣", "é", "↵"]
    low, high = figures.color_at("Viridis", 0.0), figures.color_at("Viridis", 1.0)
    assert bars.marker.color[0] == f"rgb({low[0]}, {low[1]}, {low[2]})" and bars.marker.color[3] == f"rgb({high[0]}, {high[1]}, {high[2]})"
    assert list(figures.text_figure(t, measure="ponder").data[0].y) == [c.ponder for c in t.chars]


def test_parity_figure_points_curve_and_current():
    history = [parity_analysis(3, 4.5, [1, 0, -1, 1]), parity_analysis(1, 2.25)]
    fig = figures.parity_figure(history, curve={"1": 2.0, "10": 6.0, "2": 3.0}, bits=4)
    curve, points, current = fig.data
    assert list(curve.x) == [1, 2, 10] and list(curve.y) == [2.0, 3.0, 6.0]
    assert list(points.x) == [3, 1] and list(points.y) == [4.5, 2.25] and points.text[0].startswith("+0-+: odd")
    assert list(current.x) == [1] and list(current.y) == [2.25]
    assert list(fig.layout.xaxis.range) == [-0.5, 4.5]


def test_halting_figure_marks_the_answers_step():
    a = parity_analysis(2, 2.6, [1, 0, 1, 0]).model_copy(update={"halting_distribution": [0.1, 0.3, 0.4, 0.2]})
    bars = figures.halting_figure(a).data[0]
    assert list(bars.x) == [1, 2, 3, 4] and list(bars.y) == a.halting_distribution
    assert list(bars.marker.color) == [figures.COLORS["ponder"]] * 3 + [figures.COLORS["current"]]  # step 4: the answer's
    assert set(figures.answer_figures("parity", a)) == {"parity", "halting"} and set(figures.answer_figures("parity", parity_analysis(0, 1.0))) == {"parity"}


def sweep_points() -> list[SweepPoint]:
    return [SweepPoint(parameter="threshold", setting=t, trained=t == 0.99, accuracy=a, flops_ratio=f, mean_ponder=p, examples=60)
            for t, a, f, p in [(0.5, 0.7, 0.4, 3.0), (0.99, 0.9, 0.6, 4.0), (0.9, 0.85, 0.5, 3.5)]] + [
        SweepPoint(parameter="cap", setting=c, trained=c == 3, accuracy=a, flops_ratio=f, examples=60) for c, a, f in [(1, 0.5, 0.3), (3, 0.9, 0.6)]]


def test_sweep_figure_draws_the_points_and_the_reference():
    points, reference = sweep_points(), Reference(label="dense", accuracy=0.92, flops_ratio=1.0, examples=60)
    threshold, cap, trained, dense = figures.sweep_figure({"sact": points}, reference).data
    assert list(threshold.x) == [0.4, 0.5, 0.6] and list(threshold.y) == [0.7, 0.85, 0.9]  # by FLOPs
    assert [c[0] for c in threshold.customdata] == [0.5, 0.9, 0.99] and list(cap.x) == [0.3, 0.6]
    assert (list(trained.x), list(trained.y)) == ([0.6], [0.9]) and trained.marker.symbol == "star"
    assert (list(dense.x), list(dense.y), dense.name) == ([1.0], [0.92], "dense (reference)")
    envelope = figures.attach("sweep", {"status": "done", "results": {"sact": points}, "reference": None})
    assert [t["name"] for t in envelope["figures"]["sweep"]["data"]] == ["sact: halting threshold 1 - eps", "sact: units per block, at most", "sact: trained"]


def lesion_study() -> LesionStudy:
    trained = {**sweep_points()[1].json_dict(), "parameter": None, "setting": None, "per_class_accuracy": [1.0, 0.8]}
    return LesionStudy(trained=trained, classes=["a", "b"], units=["u1", "u2"], examples=60, draws=2, seed=0, layer_execution_rate=[0.9, 0.4],
                       single=[{"name": "u1", "downsampling": False, "accuracy": 0.8, "flops_ratio": 0.9, "per_class_accuracy": [0.9, 0.7]},
                               {"name": "u2", "downsampling": True, "accuracy": 0.3, "flops_ratio": 0.8, "per_class_accuracy": [0.5, 0.1]}],
                       random=[{"k": 0, "mean": 0.9, "std": 0.0, "min": 0.9, "max": 0.9, "accuracies": [0.9]},
                               {"k": 1, "mean": 0.8, "std": 0.05, "min": 0.75, "max": 0.85, "accuracies": [0.75, 0.85]}])


def test_lesion_figures_draw_the_study():
    study = lesion_study()
    single, intact, rates = figures.lesion_figure({"aig": study}).data
    assert list(single.y) == [0.8, 0.3] and list(single.marker.symbol) == ["circle", "x"] and list(intact.y) == [0.9, 0.9]
    assert list(rates.y) == [0.9, 0.4]
    random = figures.random_lesion_figure({"aig": study})
    assert list(random.data[0].x) == [0, 1] and list(random.data[0].error_y.arrayminus) == pytest.approx([0.0, 0.05])
    assert "mean of 2 draws" in random.layout.title.text
    heat = figures.class_lesion_figure(study, "aig").data[0]
    assert np.allclose(grid(heat), [[10.0, 50.0], [10.0, 70.0]]) and list(heat.y) == ["a", "b"] and list(heat.x) == ["u1", "u2"]
    drawn = figures.answer_figures("lesion", {"results": {"aig": study}, "reference": None})
    assert set(drawn) == {"single", "random", "classes:aig"}


def test_colour_scales_are_the_pages():
    assert figures.plotly_scale("Viridis")[0] == [0.0, "#440154"] and figures.plotly_scale("Viridis")[-1] == [1.0, "#fde725"]
    assert figures.plotly_scale("Hot") == [[0, "#000000"], [0.3, "#e60000"], [0.6, "#ffd200"], [1, "#ffffff"]]
    assert figures.color_at("Greys", 0.5) == (128, 128, 128)
    with pytest.raises(ValueError, match="Viridis"):
        figures.plotly_scale("Rainbow")


def test_html_and_renderer_carry_plotlyjs_inline():
    fig = figures.ponder_map_figure(sact_analysis())
    html = figures.to_html(fig)
    assert "plotly.js v" in html and len(html) > 1_000_000  # the library itself, inline
    assert not HTTP_SCRIPT.search(html) and "tex-svg" not in html  # nor MathJax from its CDN
    bundle = figures.OfflineRenderer().to_mimebundle(fig.to_dict())
    assert "plotly.js v" in bundle["text/html"] and not HTTP_SCRIPT.search(bundle["text/html"])
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "heatmap"
    assert isinstance(pio.renderers["ponderscope"], figures.OfflineRenderer)
    before = pio.renderers.default
    try:
        figures.use_offline_renderer(force=True)
        assert pio.renderers.default == "ponderscope"
    finally:
        pio.renderers.default = before


def test_maps_without_a_browser():
    a = sact_analysis()
    png = Image.open(io.BytesIO(figures.map_png(a, width=300, height=200)))
    assert png.format == "PNG" and png.size == (300, 200)
    # the map's top-left cell is the lowest value: Viridis' darkest blended over the grey background
    low, grey = np.array(figures.color_at("Viridis", 0.0)), np.array([30, 30, 30])
    assert np.abs(np.array(png.getpixel((11, 11))) - (0.4 * grey + 0.6 * low)).max() <= 2
    svg = ET.fromstring(figures.map_svg(a, block=1, width=300, height=200))
    rects = svg.findall(".//{http://www.w3.org/2000/svg}g/{http://www.w3.org/2000/svg}rect")
    assert len(rects) == 4 and svg.get("width") == "300"


# ------------------------------------------------------------------ the server's figures: plain JSON, no plotly
def exit_analysis(taken: int = 1, threshold=0.8) -> ImageAnalysis:
    """A model with three exits that left this image at exit `taken` (the later ones not reached)."""
    confidence = [0.4, 0.85, 0.97][: taken + 1] + [None] * (2 - taken)
    return image_analysis("exits").model_copy(update={"exits": Exits(names=["after stage 1", "after stage 2", "after stage 3"],
                                                                     confidence=confidence, taken=taken, threshold=threshold)})


def exit_dataset() -> DatasetAnalysis:
    return DatasetAnalysis(model="exits", classes=["a", "b"], examples=4, accuracy=0.75, flops_ratio=0.6, dense_flops=10.0,
                           per_class=[{"class": "a", "count": 2, "accuracy": 1.0, "flops_ratio": 0.5},
                                      {"class": "b", "count": 2, "accuracy": 0.5, "flops_ratio": 0.7}],
                           flops_histogram={"edges": [0.4, 0.6, 0.8], "counts": [2, 2]}, least=[], most=[],
                           exits=["after stage 1", "after stage 2", "after stage 3"], exit_rates=[0.5, 0.5, 0.0],
                           class_exit_rates=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], exit_accuracy=[1.0, 0.5, None])


def test_the_exit_figures_mark_the_exit_taken_the_threshold_and_each_class():
    fig = figures.exits_dict(exit_analysis(taken=1, threshold=0.8))
    taken, passed, unreached = fig["data"]
    assert (taken["name"], taken["x"], taken["y"]) == ("exit taken", ["after stage 2"], [0.85])
    assert (passed["name"], passed["x"], passed["y"]) == ("passed by", ["after stage 1"], [0.4])
    assert (unreached["name"], unreached["x"], unreached["y"]) == ("not reached", ["after stage 3"], [0])
    assert fig["layout"]["shapes"][0]["y0"] == 0.8 == fig["layout"]["shapes"][0]["y1"]
    assert fig["layout"]["annotations"][0]["text"] == "threshold 0.80"
    assert fig["layout"]["title"]["text"] == "Exit confidence: left at exit 2 of 3 (after stage 2) with 85.0%"
    last = figures.exits_dict(exit_analysis(taken=2, threshold=None))  # the last exit takes whoever is left; no threshold declared
    assert [t["name"] for t in last["data"]] == ["exit taken", "passed by"] and "shapes" not in last["layout"]
    assert figures.image_dict(exit_analysis()) == fig and set(figures.answer_figures("image", exit_analysis())) == {"map", "exits"}
    assert figures.compare_dict([exit_analysis()])["layout"]["annotations"][0]["text"] == "exits<br>no spatial map: left at after stage 2"
    drawn = figures.dataset_dicts(exit_dataset())
    heat = drawn["class_exit"]["data"][0]
    assert (heat["z"], heat["x"], heat["y"]) == ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], ["after stage 1", "after stage 2", "after stage 3"], ["a", "b"])
    assert drawn["class_exit"]["layout"]["yaxis"]["tickvals"] == ["a", "b"]
    rates, accuracy = drawn["exits"]["data"]
    assert rates["y"] == [0.5, 0.5, 0.0] and accuracy["y"] == [1.0, 0.5, None]
    with pytest.raises(ValueError, match="has no exits"):
        figures.exits_dict(dense_analysis())


def every_answer() -> list[tuple[str, object]]:
    """(kind, answer) for answer_figures: every kind and every branch of it."""
    halting = parity_analysis(2, 2.6, [1, 0, 1, 0]).model_copy(update={"halting_distribution": [0.1, 0.3, 0.4, 0.2]})
    dataset = DatasetAnalysis(model="aig", classes=["a", "b"], examples=4, accuracy=0.75, flops_ratio=0.6, dense_flops=10.0,
                              per_class=[{"class": "a", "count": 2, "accuracy": 1.0, "flops_ratio": 0.5, "mean_ponder": 3.5},
                                         {"class": "b", "count": 2, "accuracy": None, "flops_ratio": 0.7, "mean_ponder": 4.25}],
                              ponder_histogram={"edges": [3.0, 4.0, 5.0], "counts": [1, 3]}, flops_histogram={"edges": [0.4, 0.6, 0.8], "counts": [2, 2]},
                              least=[], most=[], executed_layers_histogram={"edges": [0, 1, 2, 3], "counts": [1, 2, 1]},
                              class_layer_execution_rate=[[1.0, None], [0.5, 0.0]], layers=["layer1.0", "layer1.1"])
    corpus = CorpusAnalysis(model="lm", source="test", per_char_class={"letter": {"count": 10, "steps": 1.1, "steps_std": 0.3, "ponder": 1.5, "ponder_std": 0.2}},
                            class_labels={"letter": "letters"})
    reference = Reference(label="dense", accuracy=0.92, flops_ratio=1.0, examples=60)
    return [("image", sact_analysis()), ("image", aig_analysis()), ("image", dense_analysis()), ("text", text_analysis()),
            ("parity", parity_analysis(3, 4.5, [1, 0, -1, 1])), ("parity", halting), ("dataset", dataset), ("dataset", corpus),
            ("sweep", {"results": {"sact": sweep_points()}, "reference": reference}), ("sweep", {"results": {"sact": sweep_points()}, "reference": None}),
            ("lesion", {"results": {"aig": lesion_study(), "other": lesion_study()}, "reference": None}),
            ("image", exit_analysis()), ("image", exit_analysis(taken=2, threshold=None)), ("dataset", exit_dataset()),
            ("text", layers_analysis()), ("text", layers_analysis(weights=False)), ("dataset", layers_corpus())]


def layers_analysis(weights: bool = True) -> TextAnalysis:
    """A text answer of a model with token_layers: "é" is two bytes, one of which ran layer 2."""
    layers = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]
    update = {"layer_names": ["step 1", "step 2", "step 3"], "layers": layers,
              "layer_weights": [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.8, 0.1, 0.0], [0.2, 0.3, 0.5]] if weights else None}
    return text_analysis().model_copy(update=update)


def layers_corpus() -> CorpusAnalysis:
    return CorpusAnalysis(model="lm", source="test", per_char_class={
        "letter": {"count": 10, "steps": 1.1, "steps_std": 0.3, "ponder": 1.5, "ponder_std": 0.2, "layers": [1.0, 0.4]},
        "space": {"count": 5, "steps": 2.0, "steps_std": 0.1, "ponder": 2.2, "ponder_std": 0.1, "layers": [1.0, 0.9]}},
        class_labels={"letter": "letters", "space": "spaces"}, layer_names=["layer 1", "layer 2 (routed)"], layer_rates=[1.0, 0.5667])


def test_the_character_x_layer_heatmap_colours_the_layers_that_ran():
    a = layers_analysis()
    fig = figures.answer_figures("text", a)["layers"]
    ran, skipped = fig["data"]
    assert ran["x"] == ["#0 'a'", "#1 '␣'", "#2 'é'", "#3 '↵'"] and ran["y"] == ["step 1", "step 2", "step 3"]
    assert ran["z"] == [[0.5, 1.0, 0.8, 0.2], [0.5, None, 0.1, 0.3], [None, None, None, 0.5]]  # the weight where the layer ran (é: one byte of two)
    assert skipped["z"] == [[None] * 4, [None, 0, None, None], [0, 0, 0, None]]  # grey where it did not
    assert (ran["zmin"], ran["zmax"]) == (0, 1.0) and "weight %{z:.3f}" in ran["hovertemplate"] and skipped["showscale"] is False
    assert fig["layout"]["xaxis"]["ticktext"] == ["a", "␣", "é", "↵"] and fig["layout"]["yaxis"]["autorange"] == "reversed"
    dense = figures.text_layers_dict(layers_analysis(weights=False))["data"][0]  # no weights: 1 where it ran (é: the share of its bytes)
    assert dense["z"] == [[1.0, 1.0, 1.0, 1.0], [1.0, None, 0.5, 1.0], [None, None, None, 1.0]] and "weight" not in dense["hovertemplate"]
    assert (dense["zmin"], dense["zmax"]) == (0, 1)
    assert figures.distinct(["a", "b", "a"]) == ["a", "b", "a (2)"]
    assert "layers" not in figures.answer_figures("text", text_analysis())


def test_the_character_x_layer_colours_are_on_one_scale_for_every_text():
    """zmin 0, zmax max(1, the largest weight drawn): small weights are not stretched to the top
    colour, so that one colour is one weight across texts; a weight above 1 widens the scale."""
    small = layers_analysis().model_copy(update={"layer_weights": [[0.05, 0.02, 0.0], [0.1, 0.0, 0.0], [0.04, 0.01, 0.0], [0.02, 0.03, 0.05]]})
    ran = figures.text_layers_dict(small)["data"][0]
    assert (ran["zmin"], ran["zmax"]) == (0, 1)
    assert ran["zmax"] == figures.text_layers_dict(layers_analysis())["data"][0]["zmax"]  # the same scale as a text with larger weights
    large = layers_analysis().model_copy(update={"layer_weights": [[0.5, 2.5, 0.0], [1.0, 0.0, 0.0], [0.8, 0.1, 0.0], [0.2, 0.3, 0.5]]})
    ran = figures.text_layers_dict(large)["data"][0]
    assert (ran["zmin"], ran["zmax"]) == (0, 2.5)
    nothing_ran = layers_analysis().model_copy(update={"layers": [[0.0] * 3] * 4, "layer_weights": [[0.0] * 3] * 4})
    assert figures.text_layers_dict(nothing_ran)["data"][0]["zmax"] == 1


def test_the_corpus_class_x_layer_heatmap():
    c = layers_corpus()
    fig = figures.dataset_dicts(c, "Blues")["corpus_layers"]
    [heat] = fig["data"]
    assert heat["x"] == ["layer 1", "layer 2 (routed)"] and heat["y"] == ["letters", "spaces", "all bytes"]
    assert heat["z"] == [[1.0, 0.4], [1.0, 0.9], [1.0, 0.5667]] and heat["colorscale"] == figures.plotly_scale("Blues")
    assert set(figures.dataset_dicts(every_answer()[7][1])) == {"corpus"}  # no layer rates: no heatmap


def plain_json(value, path="figure") -> None:
    """Only dicts with str keys, lists, str, bool, int, finite floats and None: what json.dumps writes as it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path}: key {key!r}"
            plain_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            plain_json(item, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (str, bool, int, float), f"{path}: {type(value).__module__}.{type(value).__name__} {value!r:.60}"
        assert type(value) is not float or np.isfinite(value), f"{path}: {value}"


def test_server_figures_are_plain_json_built_without_plotly(monkeypatch):
    """answer_figures (what the server sends) builds dicts directly: no plotly object is made, no
    JSON round trip, no theme; each figure is {data: [traces with a type], layout}."""
    import plotly.basedatatypes

    def no_plotly(*args, **kwargs):
        raise AssertionError("answer_figures made a plotly object")

    for target in (plotly.basedatatypes.BaseFigure, plotly.basedatatypes.BasePlotlyType):
        monkeypatch.setattr(target, "__init__", no_plotly)
    monkeypatch.setattr(go, "Figure", no_plotly)
    monkeypatch.setattr(pio, "to_json", no_plotly)
    for kind, answer in every_answer():
        drawn = figures.answer_figures(kind, answer)
        assert drawn, kind
        for name, fig in drawn.items():
            plain_json(fig, f"{kind} {name}")
            assert set(fig) == {"data", "layout"} and all(isinstance(trace.get("type"), str) for trace in fig["data"]), (kind, name)
            assert "template" not in fig["layout"]
            assert json.loads(json.dumps(fig, allow_nan=False)) == fig


def test_figures_share_no_dicts():
    """Each figure's layout is its own: changing one (as a client of the dicts may) changes no other.
    A map's cells are the answer's own grid, on purpose: the server sends that array once
    (server/references.py), and a notebook's go.Figure copies what it wraps."""
    a, aig = sact_analysis(), aig_analysis()
    first, second = figures.answer_figures("image", a), figures.answer_figures("image", a)
    first["map"]["layout"]["title"]["font"]["size"] = 99
    first["map"]["layout"]["font"]["size"] = 99
    assert second["map"]["layout"]["title"]["font"]["size"] == 14 and second["map"]["layout"]["font"]["size"] == 12
    assert second["map"]["data"][0]["z"] is a.ponder.total and second["blocks"]["data"][1]["z"] is a.ponder.blocks[1].ponder_cost
    wrapped = figures.image_figure(a)  # the notebook's Figure holds its own copy
    assert wrapped.data[0].z is not a.ponder.total and [list(row) for row in wrapped.data[0].z] == a.ponder.total
    figures.answer_figures("image", aig)["gates"]["layout"]["legend"]["x"] = 0
    assert figures.TITLE["font"]["size"] == 14 and figures.BASE_LAYOUT["font"]["size"] == 12 and figures.LEGEND_ON_TOP["x"] == 1


def test_notebook_figures_are_the_server_dicts_as_plotly_figures():
    """The notebook's *_figure functions return plotly Figures of the very dicts the server sends:
    a Figure's JSON without its theme is the dict (so the dicts are valid plotly, as plotly.py
    would have written them: unset props left out, colour lists as stops)."""
    study, points = lesion_study(), sweep_points()
    sact, aig, dense = sact_analysis(), aig_analysis(), dense_analysis()
    for kind, answer in every_answer():
        for name, fig in figures.answer_figures(kind, answer).items():
            assert figures.figure_json(figures.as_figure(fig)) == fig, (kind, name)
    calls = {
        figures.ponder_map_figure: ((sact,), {"block": 1, "measure": "units", "colorscale": "Hot", "box": False}),
        figures.input_figure: ((dense,), {"title": "t"}), figures.gates_figure: ((aig,), {}), figures.image_figure: ((sact,), {"opacity": 0.3}),
        figures.block_maps_figure: ((sact,), {"columns": 1}), figures.compare_figure: (([sact, aig, dense],), {}),
        figures.corpus_figure: ((every_answer()[7][1],), {}), figures.sweep_figure: (({"sact": points},), {}),
        figures.lesion_figure: (({"aig": study},), {}), figures.random_lesion_figure: (({"aig": study},), {}),
        figures.class_lesion_figure: ((study, "aig"), {}), figures.text_figure: ((text_analysis(),), {"measure": "ponder"}),
        figures.parity_figure: (([parity_analysis(3, 4.5, [1, 0, -1, 1])],), {"curve": {"1": 2.0}}),
        figures.halting_figure: ((every_answer()[5][1],), {}),
        figures.text_layers_figure: ((layers_analysis(),), {"colorscale": "Hot"}), figures.corpus_layers_figure: ((layers_corpus(),), {}),
    }
    for function, (args, kwargs) in calls.items():
        build = getattr(figures, function.__name__.removesuffix("_figure") + "_dict")
        fig = function(*args, **kwargs)
        assert isinstance(fig, go.Figure) and fig.layout.template.layout.colorway, function.__name__  # plotly.py's theme, as any Figure
        assert fig.to_plotly_json() == go.Figure(build(*args, **kwargs)).to_plotly_json(), function.__name__
        assert list(inspect.signature(function).parameters) == list(inspect.signature(build).parameters), function.__name__
    assert all(isinstance(f, go.Figure) for f in figures.dataset_figures(every_answer()[6][1]).values())
    dict_html = figures.to_html(figures.ponder_map_dict(sact), full_html=False)
    assert "plotly.js v" in dict_html and '"type":"heatmap"' in dict_html  # to_html takes a dict too


def test_importing_figures_imports_no_plotly():
    """plotly.py (graph_objects ~150 ms, its renderers ~90 ms) is imported by the first Figure, not by the module."""
    code = "import sys, ponderscope.figures; print(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', 'kaleido', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
