"""ponderscope.figures on small hand-made analysis dicts (the API's JSON): every figure draws the
dict's numbers as they are, and its HTML works offline. No model is run here (test_notebook.py
runs the bundled checkpoints)."""
from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from PIL import Image

from ponderscope import figures

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


def sact_analysis(model="sact") -> dict:
    total = [[round(1.0 + 0.25 * r + 0.125 * c, 4) for c in range(8)] for r in range(6)]
    units_total = [[float(2 + (r + c) % 3) for c in range(8)] for r in range(6)]
    blocks = [
        {"index": 0, "ponder_cost": [[1.5, 2.0, 1.0, 1.25]] * 3, "units": [[1.0, 2.0, 1.0, 1.0]] * 3, "n_units": 3, "height": 3, "width": 4,
         "mean_ponder": 1.4375, "mean_units": 1.25},
        {"index": 1, "ponder_cost": [[3.0, 2.5], [2.0, 4.0]], "units": [[3.0, 2.0], [2.0, 3.0]], "n_units": 3, "height": 2, "width": 2,
         "mean_ponder": 2.875, "mean_units": 2.5},
    ]
    values = [v for row in total for v in row]
    return {"model": model, "prediction": [{"index": 1, "class": "b", "probability": 0.9}], "flops": {"executed": 5.0, "dense": 10.0, "ratio": 0.5},
            "time_ms": 1.0, "execution": "sparse", "gates": None, "input": image_input(box=[1, 2, 5, 6]),
            "ponder": {"total": total, "units_total": units_total, "blocks": blocks, "min": min(values), "max": max(values),
                       "mean": sum(values) / len(values)}}


def aig_analysis() -> dict:
    return {"model": "aig", "prediction": [], "flops": {"executed": 7.0, "dense": 10.0, "ratio": 0.7}, "ponder": None, "input": image_input(),
            "gates": {"probability": [0.9, 0.2, 0.6, 0.05], "executed": [True, False, True, False], "layers": ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]}}


def dense_analysis() -> dict:
    return {"model": "dense", "prediction": [], "flops": {"executed": 10.0, "dense": 10.0, "ratio": 1.0}, "ponder": None, "gates": None, "input": image_input()}


def text_analysis() -> dict:
    chars = [{"char": c, "bytes": len(c.encode()), "class": "letter", "ponder": p, "steps": s, "bits": b}
             for c, p, s, b in [("a", 1.2, 1.0, None), (" ", 2.7, 2.0, 3.5), ("é", 1.1, 1.0, 7.25), ("\n", 3.4, 3.0, 1.0)]]
    return {"model": "lm", "chars": chars, "classes": {}, "measure": "steps", "mean_ponder": 2.0, "mean_steps": 1.75, "bits_per_char": 3.9}


def parity_analysis(nonzero, ponder, vector=None) -> dict:
    result = {"model": "parity", "answer": "odd", "probability": 0.8, "steps": 4, "ponder": ponder, "nonzero": nonzero, "ones": 1}
    return {**result, "vector": vector} if vector else result


def grid(trace) -> list:
    return np.asarray(trace.z, dtype=float).tolist()


@pytest.mark.parametrize("measure, key", [("ponder", "total"), ("units", "units_total")])
def test_ponder_map_is_the_total_over_the_image(measure, key):
    a = sact_analysis()
    fig = figures.ponder_map_figure(a, measure=measure, colorscale="Inferno", opacity=0.35)
    heat = fig.data[0]
    assert isinstance(fig, go.Figure) and heat.type == "heatmap"
    assert grid(heat) == a["ponder"][key]
    assert heat.opacity == 0.35 and [list(s) for s in heat.colorscale] == figures.plotly_scale("Inferno")
    if measure == "ponder":  # the page's colour range: ponder.min / max
        assert (heat.zmin, heat.zmax) == (a["ponder"]["min"], a["ponder"]["max"])
    # one cell per input pixel here, centred on it; the image below, in pixel coordinates
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (0.5, 1.0, 0.5, 1.0)
    image = fig.layout.images[0]
    assert image.source == a["input"]["image"] and (image.sizex, image.sizey) == (8, 6) and image.layer == "below"
    assert list(fig.layout.yaxis.range) == [6, 0]
    box = fig.layout.shapes[0]  # [y0, x0, y1, x1] of the test set
    assert (box.x0, box.y0, box.x1, box.y1) == (2, 1, 6, 5)


def test_a_block_map_is_its_own_grid_over_the_whole_image():
    a = sact_analysis()
    fig = figures.ponder_map_figure(a, block=1)
    heat = fig.data[0]
    assert grid(heat) == a["ponder"]["blocks"][1]["ponder_cost"]
    assert (heat.dx, heat.dy) == (4.0, 3.0)  # 2x2 cells over 8x6 pixels
    assert (heat.zmin, heat.zmax) == (1.0, 4.0)  # one scale across blocks, as the page's small multiples
    assert grid(figures.ponder_map_figure(a, block=0, measure="units").data[0]) == a["ponder"]["blocks"][0]["units"]


def test_block_maps_share_one_colour_axis():
    a = sact_analysis()
    fig = figures.block_maps_figure(a)
    assert [grid(t) for t in fig.data] == [b["ponder_cost"] for b in a["ponder"]["blocks"]]
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (1.0, 4.0)
    assert len(fig.layout.images) == 2 and {i.xref for i in fig.layout.images} == {"x", "x2"}


def test_gates_bars_are_the_probabilities_split_by_execution():
    a = aig_analysis()
    fig = figures.gates_figure(a)
    executed, skipped = fig.data
    assert list(executed.x) == ["layer1.0", "layer2.0"] and list(executed.y) == [0.9, 0.6]
    assert list(skipped.x) == ["layer1.1", "layer2.1"] and list(skipped.y) == [0.2, 0.05]
    assert list(fig.layout.xaxis.categoryarray) == a["gates"]["layers"]
    assert "2 of 4 gated blocks executed" in fig.layout.title.text


def test_image_figure_picks_the_family_figure():
    assert figures.image_figure(sact_analysis()).data[0].type == "heatmap"
    assert figures.image_figure(aig_analysis()).data[0].type == "bar"
    dense = figures.image_figure(dense_analysis())
    assert len(dense.data) == 0 and dense.layout.images[0].source == dense_analysis()["input"]["image"]
    with pytest.raises(ValueError, match="no ponder map"):
        figures.ponder_map_figure(aig_analysis())
    with pytest.raises(ValueError, match="measure"):
        figures.ponder_map_figure(sact_analysis(), measure="steps")


def test_compare_uses_one_colour_scale_over_all_maps():
    a, b = sact_analysis("one"), sact_analysis("two")
    b["ponder"]["total"] = [[v * 2 for v in row] for row in b["ponder"]["total"]]
    fig = figures.compare_figure([a, aig_analysis(), b, dense_analysis()], colorscale="Blues")
    assert [grid(t) for t in fig.data] == [a["ponder"]["total"], b["ponder"]["total"]]
    values = [v for z in (a["ponder"]["total"], b["ponder"]["total"]) for row in z for v in row]
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax) == (min(values), max(values))
    assert [list(s) for s in axis.colorscale] == figures.plotly_scale("Blues")
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert len(fig.layout.images) == 4  # every model's input, with or without a map
    titles = [t.text for t in fig.layout.annotations]
    assert "no spatial map: 2/4 gated blocks run" in titles[1] and "dense" in titles[3]


def test_dataset_figures_draw_the_result():
    result = {
        "model": "aig", "classes": ["a", "b"], "examples": 4, "accuracy": 0.75, "flops_ratio": 0.6, "dense_flops": 10.0,
        "per_class": [{"class": "a", "count": 2, "accuracy": 1.0, "flops_ratio": 0.5, "mean_ponder": None},
                      {"class": "b", "count": 2, "accuracy": 0.5, "flops_ratio": 0.7, "mean_ponder": None}],
        "ponder_histogram": None, "flops_histogram": {"edges": [0.4, 0.6, 0.8], "counts": [2, 2]},
        "executed_layers_histogram": {"edges": [0, 1, 2, 3, 4], "counts": [0, 1, 2, 1]},
        "class_layer_execution_rate": [[1.0, 0.5, 0.0], [0.5, 0.5, 1.0]], "layers": ["layer1.0", "layer1.1", "layer2.0"],
    }
    figs = figures.dataset_figures(result)
    assert set(figs) == {"class", "flops_histogram", "layers_histogram", "class_layer"}
    assert list(figs["class"].data[0].y) == [0.5, 0.7] and list(figs["class"].data[1].y) == [1.0, 0.5]
    assert list(figs["flops_histogram"].data[0].y) == [2, 2] and np.allclose(figs["flops_histogram"].data[0].x, [0.5, 0.7])
    assert list(figs["layers_histogram"].data[0].x) == [0, 1, 2, 3] and list(figs["layers_histogram"].data[0].y) == [0, 1, 2, 1]
    heat = figs["class_layer"].data[0]
    assert grid(heat) == result["class_layer_execution_rate"] and list(heat.x) == result["layers"] and list(heat.y) == ["a", "b"]

    result.update(per_class=[{**c, "mean_ponder": p} for c, p in zip(result["per_class"], [3.5, 4.25])],
                  ponder_histogram={"edges": [3.0, 4.0, 5.0], "counts": [1, 3]}, executed_layers_histogram=None, class_layer_execution_rate=None)
    figs = figures.dataset_figures(result)
    assert set(figs) == {"class", "ponder", "flops_histogram", "ponder_histogram"}
    assert list(figs["ponder"].data[0].y) == [3.5, 4.25] and list(figs["ponder_histogram"].data[0].y) == [1, 3]


def test_dataset_figures_of_a_byte_lm_are_its_corpus_panel():
    result = {"model": "lm", "kind": "text", "per_char_class": {
        "letter": {"count": 10, "steps": 1.1, "steps_std": 0.3, "ponder": 1.5, "ponder_std": 0.2},
        "space": {"count": 3, "steps": 2.0, "steps_std": 0.0, "ponder": 2.6, "ponder_std": 0.1}}, "class_labels": {"letter": "letters", "space": "spaces"}}
    fig = figures.dataset_figures(result)["corpus"]
    steps, ponder = fig.data
    assert list(steps.x) == ["letters", "spaces"] and list(steps.y) == [1.1, 2.0] and list(steps.error_y.array) == [0.3, 0.0]
    assert list(ponder.y) == [1.5, 2.6] and list(ponder.customdata) == [10, 3]


def test_text_figure_bars_the_measure_and_draws_the_surprisal():
    t = text_analysis()
    fig = figures.text_figure(t)
    bars, other, bits = fig.data
    assert list(bars.y) == [c["steps"] for c in t["chars"]]  # the analysis' own measure
    assert list(other.y) == [c["ponder"] for c in t["chars"]]
    assert list(bits.y) == [None, 3.5, 7.25, 1.0] and bits.yaxis == "y2"
    assert list(fig.layout.xaxis.ticktext) == ["a", "␣", "é", "↵"]
    low, high = figures.color_at("Viridis", 0.0), figures.color_at("Viridis", 1.0)
    assert bars.marker.color[0] == f"rgb({low[0]}, {low[1]}, {low[2]})" and bars.marker.color[3] == f"rgb({high[0]}, {high[1]}, {high[2]})"
    assert list(figures.text_figure(t, measure="ponder").data[0].y) == [c["ponder"] for c in t["chars"]]


def test_parity_figure_points_curve_and_current():
    history = [parity_analysis(3, 4.5, [1, 0, -1, 1]), parity_analysis(1, 2.25)]
    fig = figures.parity_figure(history, curve={"1": 2.0, "10": 6.0, "2": 3.0}, bits=4)
    curve, points, current = fig.data
    assert list(curve.x) == [1, 2, 10] and list(curve.y) == [2.0, 3.0, 6.0]
    assert list(points.x) == [3, 1] and list(points.y) == [4.5, 2.25] and points.text[0].startswith("+0-+: odd")
    assert list(current.x) == [1] and list(current.y) == [2.25]
    assert list(fig.layout.xaxis.range) == [-0.5, 4.5]


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
