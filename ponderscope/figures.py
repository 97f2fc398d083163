"""The dashboard's figures: plain plotly JSON for the server, plotly Figures for notebooks,
scripts and `ponderscope render`.

Each figure is built once, as a plain dict {"data": [trace dicts, each with its "type"], "layout":
{...}} of lists, numbers and strings (what Plotly.react takes; no numpy, no plotly objects), by a
`*_dict` function below from the typed answers the API returns (ponderscope/core/answers.py:
ImageAnalysis, TextAnalysis, ParityAnalysis, DatasetAnalysis / CorpusAnalysis, SweepPoint,
LesionStudy, Reference): the numbers are read from the answer by attribute as they are, never
recomputed from a model. The API sends these dicts beside the numbers as they are (an answer's
`figures`, answer_figures / attach below: no plotly.py on that path, no theme), and the page
draws them (restyling only colour scale, opacity, measure and box on the client).

The `*_figure` functions (what notebook users call) take the same arguments and return
as_figure(the dict): a plotly.graph_objects.Figure, validated and with plotly.py's default theme,
as a Figure always has. plotly.graph_objects is imported only then, not by `import
ponderscope.figures`. Figures render offline: HTML written here, and figures shown in Jupyter
after `import ponderscope`, carry plotly.js inline (no CDN).

The Figures, each `name_figure` the Figure of `name_dict` (dataset_figures of dataset_dicts):

    ponder_map_figure(analysis)   per-position models (Trace.blocks): ponder map over the input image (or one block's map)
    block_maps_figure(analysis)   per-position models: every block's map, one colour scale
    gates_figure(analysis)        gated models (Trace.gates): gate probability per layer, executed or skipped
    exits_figure(analysis)        models with exits (Trace.exit_confidence): each exit's confidence, the threshold, the exit taken
    input_figure(analysis)        the input as the network saw it (models without a ponder map)
    image_figure(analysis)        whichever of the four above fits the analysis
    compare_figure(analyses)      several models on one image, one colour scale over all
    dataset_figures(result)       GET /dataset result -> {name: Figure}
    text_figure(analysis)         byte LM: per-character ponder with surprisal
    text_layers_figure(analysis)  byte LM with token_layers: character x layer, the weight where the layer ran
    corpus_layers_figure(result)  byte LM with token_layers: held-out class x layer, the share of bytes each layer computed
    parity_figure(analyses)       parity: ponder against nonzero entries
    sweep_figure(results)         what-if: accuracy vs FLOPs as threshold / cap / gate bias move
    lesion_figure(studies)        what-if: accuracy after removing each unit, models side by side
    random_lesion_figure(studies) what-if: accuracy as k random units are removed
    class_lesion_figure(study)    what-if: accuracy drop per class and removed unit

and as_figure(dict) wraps any of the dicts; to_html, to_image take a Figure or a dict.
"""
from __future__ import annotations

import base64
import inspect
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:  # (the answers import torch, plotly.graph_objects takes ~150 ms: `import ponderscope.figures` imports neither)
    import plotly.graph_objects as go
    from ponderscope.core.answers import (CharPonder, CorpusAnalysis, DatasetAnalysis, Exits, Histogram, ImageAnalysis, LesionStudy,
                                          ParityAnalysis, PonderBlock, PonderMaps, Reference, SweepPoint, TextAnalysis)

# Low -> high, as static/core/colors.js has them (the page restyles with the very same colours).
COLORSCALES = {
    "Viridis": ["#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
                "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725"],
    "Cividis": ["#00204c", "#002a66", "#00346e", "#273f6c", "#3c4a6b", "#4c556b", "#5b5f6d", "#686a70", "#757575",
                "#838178", "#928c78", "#a19876", "#b0a572", "#c0b16d", "#d1bf66", "#e1cc5c", "#f3db4f", "#ffe945"],
    "Inferno": ["#000004", "#160b39", "#420a68", "#6a176e", "#932667", "#bc3754", "#dd513a", "#f37819", "#fca50a", "#f6d746", "#fcffa4"],
    "Hot": [[0, "#000000"], [0.3, "#e60000"], [0.6, "#ffd200"], [1, "#ffffff"]],
    "YlOrRd": ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"],
    "Blues": ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"],
    "Greys": ["#000000", "#ffffff"],
    "Jet": [[0, "#000083"], [0.125, "#003caa"], [0.375, "#05ffff"], [0.625, "#ffff00"], [0.875, "#fa0000"], [1, "#800000"]],
}
COLORS = {"executed": "#1f5fbf", "skipped": "#c7ccd4", "skipped_line": "#8a929e", "flops": "#e0892b", "accuracy": "#1f5fbf",
          "ponder": "#3b528b", "steps": "#2f6fdf", "ponder_bar": "#e0a030", "surprisal": "#c0392b", "other": "#1b1f24",
          "curve": "#8a929e", "current": "#e0892b", "box": "#ff3b30", "guide": "#5b6470"}
DEFAULT_COLORSCALE, DEFAULT_OPACITY = "Viridis", 0.6


class Measure(NamedTuple):
    """A map measure: the total map of analysis.ponder, a block's map, and the unit."""
    total: Callable[[PonderMaps], list[list[float]]]
    block: Callable[[PonderBlock], list[list[float]]]
    unit: str


MEASURES = {"ponder": Measure(lambda ponder: ponder.total, lambda block: block.ponder_cost, "ponder cost N+R"),
            "units": Measure(lambda ponder: ponder.units_total, lambda block: block.units, "units executed N")}
TEXT_UNITS = {"steps": "steps N", "ponder": "ponder cost N+R"}
TEXT_VALUES: dict[str, Callable[[CharPonder], float]] = {"steps": lambda char: char.steps, "ponder": lambda char: char.ponder}
BASE_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 70, "b": 40}, "paper_bgcolor": "#fff", "plot_bgcolor": "#fff",
               "font": {"size": 12, "color": "#1b1f24"}}
# The title sits under the page's mode bar (the plot's export and zoom buttons, ~30 px at the top
# right), not behind it: pad 34 from the top, inside the 70 px top margin.
TITLE = {"font": {"size": 14}, "x": 0.01, "xref": "container", "xanchor": "left", "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 34}}
LEGEND_ON_TOP = {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"}  # under the title, above the plot
# As the page: nothing leaves the machine (no "Share chart" upload to Plotly Cloud).
CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False,
          "modeBarButtonsToRemove": ["sendChartToCloud", "lasso2d", "select2d"]}


# ------------------------------------------------------------------ colour scales
def plotly_scale(name: str) -> list[list]:
    """A COLORSCALES entry as plotly stops [[t, colour], ...]."""
    if name not in COLORSCALES:
        raise ValueError(f"unknown colour scale {name!r}; one of {', '.join(COLORSCALES)}")
    raw = COLORSCALES[name]
    return [list(stop) for stop in raw] if isinstance(raw[0], list) else [[i / (len(raw) - 1), c] for i, c in enumerate(raw)]


def color_at(name: str, t: float) -> tuple[int, int, int]:
    """The colour at t in 0..1 of a scale (linear between stops, as the page's colorAt)."""
    stops = plotly_scale(name)
    t = min(1.0, max(0.0, t if math.isfinite(t) else 0.0))
    rgb = lambda c: tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))  # noqa: E731
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            return tuple(round(a + f * (b - a)) for a, b in zip(rgb(c0), rgb(c1)))
    return rgb(stops[-1][1])


def _css(rgb) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _range(grids: list) -> tuple[float, float]:
    values = [v for z in grids for row in z for v in row]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1e-6


def _copy(value):
    """A copy of a JSON-ready constant (dicts and lists copied, the rest shared), so that no figure shares a dict with another."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return [_copy(v) for v in value] if isinstance(value, list) else value


def _trace(kind: str, **props) -> dict:
    """A trace as plotly JSON: {"type": kind, **props}, leaving out the props given as None (as plotly does)."""
    return {"type": kind, **{k: v for k, v in props.items() if v is not None}}


def every_tick(names: list[str]) -> dict:
    """A category axis that names every category (plotly.js would thin crowded labels out: ten
    classes on a narrow chart showed two)."""
    return {"type": "category", "tickmode": "array", "tickvals": list(names), "ticktext": list(names), "automargin": True}


def _figure(data: list[dict], layout: dict) -> dict:
    """A figure as plotly JSON {data, layout} on the base layout. Titles sit left-aligned at the top,
    clear of the mode bar, as on the page."""
    margin = {**BASE_LAYOUT["margin"], **layout.get("margin", {})}
    return {"data": data, "layout": {**_copy(BASE_LAYOUT), **layout, "title": {**_copy(TITLE), **layout.get("title", {})},
                                     "margin": {**margin, "t": max(margin["t"], 70)}}}


# ------------------------------------------------------------------ image models
def map_grid(analysis: ImageAnalysis, block: int | None = None, measure: str = "ponder") -> list[list[float]]:
    """The grid a map figure draws, exactly as in the analysis: ponder.total / units_total, or a block's ponder_cost / units."""
    if analysis.ponder is None:
        gated = "; it has gates: see gates_figure" if analysis.gates is not None else ""
        raise ValueError(f"model {analysis.model!r} has no ponder map (its trace has no per-position blocks{gated})")
    if measure not in MEASURES:
        raise ValueError(f"a map's measure is 'ponder' (N+R) or 'units' (N), not {measure!r}")
    chosen = MEASURES[measure]
    return chosen.total(analysis.ponder) if block is None else chosen.block(analysis.ponder.blocks[block])


def map_range(analysis: ImageAnalysis, block: int | None = None, measure: str = "ponder") -> tuple[float, float]:
    """The page's colour range: ponder.min/max for the total ponder map; for a block, the range over all blocks."""
    ponder = analysis.ponder
    if block is None:
        if measure == "ponder" and ponder.max > ponder.min:
            return ponder.min, ponder.max
        return _range([map_grid(analysis, None, measure)])
    return _range([MEASURES[measure].block(b) for b in ponder.blocks])


def map_geometry(analysis: ImageAnalysis, block: int | None = None):
    """Where map_grid's cells lie on the input (the answer's Grid: x0, dx, y0, dy in input pixels)."""
    return analysis.ponder.grid if block is None else analysis.ponder.blocks[block].grid


def _heatmap(z, grid, unit: str, opacity: float, **color) -> dict:
    """A map's cells over the input's pixels where the answer's `grid` puts them (a block's coarser
    grid covers several pixels a cell). z is the answer's own list: sent once (server/references.py)."""
    return _trace("heatmap", z=z, x0=grid.x0, dx=grid.dx, y0=grid.y0, dy=grid.dy, opacity=opacity,
                  colorbar={"title": {"text": unit, "side": "right"}, "thickness": 12, "len": 0.9},
                  hovertemplate=f"x %{{x:.0f}}, y %{{y:.0f}}<br>{unit}: %{{z:.3f}}<extra></extra>", **color)


def _image_layout(analysis: ImageAnalysis, axis: str = "", box: bool = True) -> dict:
    """The layout of the input image under axes x{axis}/y{axis} (pixel coordinates, y down) and the
    test set's box: {"axes": {xaxis, yaxis}, "images": [...], "shapes": [...]}."""
    source = analysis.input
    width, height = source.width, source.height
    shapes = []
    if box and source.box:
        y0, x0, y1, x1 = source.box
        shapes.append({"type": "rect", "xref": f"x{axis}", "yref": f"y{axis}", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                       "line": {"color": COLORS["box"], "width": 2}})
    return {
        "axes": {f"xaxis{axis}": {"range": [0, width], "showgrid": False, "zeroline": False, "constrain": "domain", "ticks": "outside"},
                 f"yaxis{axis}": {"range": [height, 0], "showgrid": False, "zeroline": False, "scaleanchor": f"x{axis}",
                                  "constrain": "domain", "ticks": "outside"}},
        "images": [{"source": source.image, "xref": f"x{axis}", "yref": f"y{axis}", "x": 0, "y": 0, "sizex": width, "sizey": height,
                    "xanchor": "left", "yanchor": "top", "sizing": "stretch", "layer": "below"}],
        "shapes": shapes,
    }


def _place_image(fig: dict, analysis: ImageAnalysis, axis: str = "", box: bool = True) -> dict:
    """The figure with the input image under axes x{axis}/y{axis}, and the test set's box (an empty
    list of shapes is left out, as plotly does)."""
    part, layout = _image_layout(analysis, axis, box), fig["layout"]
    layout.update(part["axes"])
    for key in ("images", "shapes"):
        items = layout.get(key, []) + part[key]
        if items:
            layout[key] = items
    return fig


def block_list(analysis: ImageAnalysis) -> str:
    """The blocks' names as a title says them: "block 1 + block 2 + block 3", "layers 1–3 + layers 4–6"
    (the model's block_names), the first and last of more than four."""
    names = [b.name for b in analysis.ponder.blocks]
    return " + ".join(names) if len(names) <= 4 else f"{names[0]} + … + {names[-1]} ({len(names)} maps)"


def _map_title(analysis: ImageAnalysis, block: int | None, measure: str, sep: str = ": ") -> str:
    ponder, unit = analysis.ponder, MEASURES[measure].unit
    if block is None:
        return f"{analysis.model}: {unit}, summed over {block_list(analysis)}" if len(ponder.blocks) > 1 else f"{analysis.model}: {unit}"
    b = ponder.blocks[block]
    of = f"/{b.n_units}" if b.n_units is not None else ""  # (the units a block has, where its trace says)
    return f"{b.name} ({b.grid.width}×{b.grid.height}){sep}N+R {b.mean_ponder:.2f}, N {b.mean_units:.2f}{of}"


def ponder_map_dict(analysis: ImageAnalysis, block: int | None = None, measure: str = "ponder", colorscale: str = DEFAULT_COLORSCALE,
                    opacity: float = DEFAULT_OPACITY, zmin: float | None = None, zmax: float | None = None, box: bool = True) -> dict:
    """Per-position models: the ponder map (ponder.total, or units_total with measure="units"; a block's own
    grid with block=i) as a heatmap over the input image. The colour range is the page's unless given."""
    z = map_grid(analysis, block, measure)
    lo, hi = map_range(analysis, block, measure)
    fig = _figure([_heatmap(z, map_geometry(analysis, block), MEASURES[measure].unit, opacity, zmin=lo if zmin is None else zmin,
                            zmax=hi if zmax is None else zmax, zauto=False, colorscale=plotly_scale(colorscale))],
                  {"title": {"text": _map_title(analysis, block, measure)}})
    return _place_image(fig, analysis, box=box)


def input_dict(analysis: ImageAnalysis, title: str | None = None, box: bool = True) -> dict:
    """The input image as the network saw it, without a map (models whose trace has no per-position blocks)."""
    return _place_image(_figure([], {"title": {"text": title or f"{analysis.model}: input"}}), analysis, box=box)


def gates_dict(analysis: ImageAnalysis) -> dict:
    """Gated models (Trace.gates): the gate probability p(run) of each gated layer, executed ones in blue."""
    gates = analysis.gates
    if gates is None:
        raise ValueError(f"model {analysis.model!r} has no gates (its trace has no Trace.gates)")
    layers, p, executed = gates.layers, gates.probability, gates.executed

    def bars(name, run, marker):
        index = [i for i, e in enumerate(executed) if e == run]
        return _trace("bar", name=name, x=[layers[i] for i in index], y=[p[i] for i in index], marker=marker,
                      hovertemplate=f"%{{x}}: p(run) = %{{y:.3f}}<extra>{name}</extra>")

    return _figure([bars("executed", True, {"color": COLORS["executed"]}),
                    bars("skipped", False, {"color": COLORS["skipped"], "line": {"color": COLORS["skipped_line"], "width": 1}})], {
        "title": {"text": f"Gate probability per layer: {sum(executed)} of {len(layers)} gated blocks executed"},
        "barmode": "overlay",
        "xaxis": {"categoryorder": "array", "categoryarray": list(layers), "tickangle": -45, "title": {"text": "gated residual block"}},
        "yaxis": {"range": [0, 1], "title": {"text": "p(run)"}},
        "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0.5, "y1": 0.5, "line": {"dash": "dot", "color": COLORS["guide"], "width": 1}}],
        "legend": {**LEGEND_ON_TOP}, "margin": {"l": 50, "r": 20, "t": 90, "b": 80},
    })


def exits_dict(analysis: ImageAnalysis) -> dict:
    """Models with exits (Trace.exit_confidence, exit_taken): each exit's confidence on this image as
    a bar (the exit taken in blue, the ones passed by in grey, the ones not reached marked so),
    the threshold in force as a dashed line."""
    exits: Exits = analysis.exits
    if exits is None:
        raise ValueError(f"model {analysis.model!r} has no exits (its trace has no Trace.exit_confidence)")
    names, confidence, taken = exits.names, exits.confidence, exits.taken

    def bars(name, which, marker):
        index = [i for i in range(len(names)) if which(i)]
        return _trace("bar", name=name, x=[names[i] for i in index], y=[confidence[i] for i in index], marker=marker,
                      hovertemplate=f"%{{x}}: confidence %{{y:.3f}}<extra>{name}</extra>")

    reached = lambda i: confidence[i] is not None  # noqa: E731
    data = [bars("exit taken", lambda i: i == taken, {"color": COLORS["executed"]}),
            bars("passed by", lambda i: reached(i) and i != taken, {"color": COLORS["skipped"], "line": {"color": COLORS["skipped_line"], "width": 1}})]
    unreached = [names[i] for i in range(len(names)) if not reached(i)]
    if unreached:  # a marker at 0: the exit is on the axis, with nothing to show
        data.append(_trace("scatter", mode="markers+text", name="not reached", x=unreached, y=[0] * len(unreached), text=["not reached"] * len(unreached),
                           textposition="top center", marker={"symbol": "line-ew-open", "size": 14, "color": COLORS["skipped_line"]},
                           hovertemplate="%{x}: not reached (the image left before)<extra></extra>"))
    shapes, annotations = [], []
    if exits.threshold is not None:
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": exits.threshold, "y1": exits.threshold,
                       "line": {"dash": "dash", "color": COLORS["current"], "width": 2}})
        annotations.append({"text": f"threshold {exits.threshold:.2f}", "xref": "paper", "x": 1, "xanchor": "right", "y": exits.threshold,
                            "yanchor": "bottom", "showarrow": False, "font": {"color": COLORS["current"], "size": 11}})
    left = confidence[taken]
    return _figure(data, {
        "title": {"text": f"Exit confidence: left at exit {taken + 1} of {len(names)} ({names[taken]})"
                          + (f" with {left:.1%}" if left is not None else "")},
        "barmode": "overlay",
        "xaxis": {"categoryorder": "array", "categoryarray": list(names), "title": {"text": "exit, input to output"}},
        "yaxis": {"range": [0, 1.05], "title": {"text": "confidence"}},
        **({"shapes": shapes, "annotations": annotations} if shapes else {}),  # (empty lists left out, as plotly does)
        "legend": {**LEGEND_ON_TOP}, "margin": {"l": 50, "r": 20, "t": 90, "b": 60},
    })


def image_dict(analysis: ImageAnalysis, **options) -> dict:
    """The main figure of an image analysis: the ponder map (per-position models; options as
    ponder_map_figure), the gates (gated models), the exits (models with exits), or the input
    alone (none of these)."""
    if analysis.ponder is not None:
        return ponder_map_dict(analysis, **options)
    if analysis.gates is not None:
        return gates_dict(analysis)
    if analysis.exits is not None:
        return exits_dict(analysis)
    return input_dict(analysis, f"{analysis.model}: input (no per-position or per-layer decisions in its trace: no ponder map)",
                      box=options.get("box", True))


def _map_grid_dict(panels: list[tuple[str, ImageAnalysis, list | None, object]], zmin: float, zmax: float, unit: str, colorscale: str,
                   opacity: float, title: str, columns: int) -> dict:
    """Maps side by side on one colour axis: panels of (title, analysis, cells or None for the image alone, their Grid)."""
    # The grid laid out by hand, as make_subplots would (its spacing, a title over each panel).
    rows, gap_x, gap_y = -(-len(panels) // columns), 0.06, 0.12
    width, height = (1 - gap_x * (columns - 1)) / columns, (1 - gap_y * (rows - 1)) / rows
    data, layout = [], {**_copy(BASE_LAYOUT), "title": {**_copy(TITLE), "text": title}, "annotations": [], "images": [], "shapes": [],
                        "coloraxis": {"colorscale": plotly_scale(colorscale), "cmin": zmin, "cmax": zmax,
                                      "colorbar": {"title": {"text": unit, "side": "right"}, "thickness": 12}}}
    # the first row's panel titles sit between the figure's title (34 px down, a line) and the plots: room for their lines
    lines = max(panel_title.count("<br>") + 1 for panel_title, *_ in panels[:columns])
    layout["margin"] = {**layout["margin"], "t": max(layout["margin"]["t"], 58 + 16 * lines)}
    for k, (panel_title, analysis, z, grid) in enumerate(panels):
        axis = "" if k == 0 else str(k + 1)
        left, top = (k % columns) * (width + gap_x), 1 - (k // columns) * (height + gap_y)
        if z is not None:
            data.append(_heatmap(z, grid, unit, opacity, coloraxis="coloraxis", xaxis=f"x{axis}", yaxis=f"y{axis}"))
        part = _image_layout(analysis, axis)
        domain = lambda low, high: [max(0.0, round(low, 6)), min(1.0, round(high, 6))]  # noqa: E731  (float sums may leave [0, 1])
        layout[f"xaxis{axis}"] = {**part["axes"][f"xaxis{axis}"], "domain": domain(left, left + width), "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {**part["axes"][f"yaxis{axis}"], "domain": domain(top - height, top), "anchor": f"x{axis}"}
        layout["images"] += part["images"]
        layout["shapes"] += part["shapes"]
        layout["annotations"].append({"text": panel_title, "x": left + width / 2, "y": top, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 12}})
    for key in ("annotations", "images", "shapes"):  # empty lists left out, as plotly does
        if not layout[key]:
            del layout[key]
    return {"data": data, "layout": layout}


def block_maps_dict(analysis: ImageAnalysis, measure: str = "ponder", colorscale: str = DEFAULT_COLORSCALE, opacity: float = DEFAULT_OPACITY,
                    columns: int = 4) -> dict:
    """Per-position models: one map per block (ponder.blocks[i], titled with its name), one colour scale across blocks."""
    map_grid(analysis)  # a model without maps: say so
    panels = [(_map_title(analysis, i, measure, "<br>"), analysis, map_grid(analysis, i, measure), map_geometry(analysis, i))
              for i in range(len(analysis.ponder.blocks))]
    zmin, zmax = map_range(analysis, 0, measure)  # a block's range is the range over all blocks
    return _map_grid_dict(panels, zmin, zmax, MEASURES[measure].unit, colorscale, opacity,
                          f"{analysis.model}: {MEASURES[measure].unit} of {block_list(analysis)}, one map each", min(columns, len(panels)))


def compare_dict(analyses: list[ImageAnalysis], measure: str = "ponder", colorscale: str = DEFAULT_COLORSCALE, opacity: float = DEFAULT_OPACITY,
                 columns: int = 3) -> dict:
    """Several models' analyses of one image, side by side, their maps on one colour scale (the
    range over every map); models without a map show the input alone."""
    grids = [map_grid(a, None, measure) if a.ponder is not None else None for a in analyses]
    zmin, zmax = _range([z for z in grids if z is not None])

    def panel_title(a: ImageAnalysis, z) -> str:
        if z is not None:
            return f"{a.model}<br>mean N+R {a.ponder.mean:.3f}"
        if a.gates is not None:
            return f"{a.model}<br>no spatial map: {sum(a.gates.executed)}/{len(a.gates.executed)} gated blocks run"
        if a.exits is not None:
            return f"{a.model}<br>no spatial map: left at {a.exits.names[a.exits.taken]}"
        return f"{a.model}<br>no ponder map"

    panels = [(panel_title(a, z), a, z, a.ponder.grid if a.ponder else None) for a, z in zip(analyses, grids)]
    return _map_grid_dict(panels, zmin, zmax, MEASURES[measure].unit, colorscale, opacity,
                          f"{MEASURES[measure].unit} (shared scale)", min(columns, len(panels)))


# ------------------------------------------------------------------ dataset view
def _histogram_bars(h: Histogram, name: str, color: str, unit: str = "images") -> dict:
    edges = h.edges
    return _trace("bar", x=[(a + b) / 2 for a, b in zip(edges, edges[1:])], y=list(h.counts), width=[b - a for a, b in zip(edges, edges[1:])], name=name,
                  marker={"color": color, "line": {"color": "#fff", "width": 0.5}}, hovertemplate=f"{name} %{{x:.3f}}: %{{y}} {unit}<extra></extra>")


def dataset_dicts(result: DatasetAnalysis | CorpusAnalysis, colorscale: str = DEFAULT_COLORSCALE) -> dict[str, dict]:
    """GET /api/models/{id}/dataset's `result` -> the figures the Dataset view draws, by name:
    image models: "class" (FLOPs and accuracy per class), "flops_histogram", and where the
    model has them "ponder" (mean ponder per class), "ponder_histogram", "layers_histogram",
    "class_layer" (gated models' execution rate per class and layer), "exits" (models with exits:
    the share of the images leaving at each exit, and their accuracy), "class_exit" (the same
    per class); byte LMs: "corpus", and "corpus_layers" where the statistics have per-class layer
    rates (models whose trace has token_layers)."""
    if result.kind == "text":
        out = {"corpus": corpus_dict(result)}
        if any(c.get("layers") is not None for c in (result.per_char_class or {}).values()):
            out["corpus_layers"] = corpus_layers_dict(result, colorscale)
        return out
    per_class = result.per_class
    classes = [c.class_ for c in per_class]
    class_axis = {**every_tick(classes), "tickangle": -45}
    figures = {"class": _figure([
        _trace("bar", name="mean FLOPs / dense", x=classes, y=[c.flops_ratio for c in per_class], marker={"color": COLORS["flops"]},
               hovertemplate="%{x}: %{y:.1%} of dense FLOPs<extra></extra>"),
        _trace("scatter", mode="markers+lines", name="accuracy", x=classes, y=[c.accuracy for c in per_class], yaxis="y2",
                   marker={"color": COLORS["accuracy"], "size": 8}, line={"dash": "dot"}, hovertemplate="%{x}: accuracy %{y:.1%}<extra></extra>"),
    ], {"title": {"text": f"{result.model}: mean FLOPs and accuracy per class"},
        "yaxis": {"title": {"text": "FLOPs executed / dense"}, "tickformat": ".0%", "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "accuracy"}, "overlaying": "y", "side": "right", "tickformat": ".0%", "range": [0, 1.05], "dtick": 0.2, "showgrid": False},
        "xaxis": class_axis, "legend": {"orientation": "h", "y": -0.35}, "margin": {"l": 60, "r": 60, "t": 40, "b": 110}})}
    if any(c.mean_ponder is not None for c in per_class):
        figures["ponder"] = _figure([_trace("bar", x=classes, y=[c.mean_ponder for c in per_class], marker={"color": COLORS["ponder"]},
                                            hovertemplate="%{x}: mean ponder %{y:.3f}<extra></extra>")],
                                    {"title": {"text": "Mean ponder cost N+R per class (summed over blocks)"}, "xaxis": class_axis,
                                     "yaxis": {"title": {"text": "ponder cost N+R"}}, "margin": {"b": 90}})
    figures["flops_histogram"] = _figure([_histogram_bars(result.flops_histogram, "FLOPs ratio", COLORS["flops"])], {
        "title": {"text": "FLOPs executed / dense, per image"}, "xaxis": {"title": {"text": "FLOPs ratio"}, "tickformat": ".0%"},
        "yaxis": {"title": {"text": "images"}}, "bargap": 0})
    if result.ponder_histogram is not None:
        figures["ponder_histogram"] = _figure([_histogram_bars(result.ponder_histogram, "ponder", COLORS["ponder"])], {
            "title": {"text": "Ponder cost per image (mean over positions, summed over blocks)"}, "xaxis": {"title": {"text": "ponder cost N+R"}},
            "yaxis": {"title": {"text": "images"}}, "bargap": 0})
    if result.executed_layers_histogram is not None:
        h = result.executed_layers_histogram
        figures["layers_histogram"] = _figure([_trace("bar", x=h.edges[: len(h.counts)], y=list(h.counts), marker={"color": COLORS["executed"]},
                                                      hovertemplate="%{x} layers: %{y} images<extra></extra>")],
                                              {"title": {"text": "Executed gated layers per image"}, "xaxis": {"title": {"text": "layers executed"}, "dtick": 1},
                                               "yaxis": {"title": {"text": "images"}}})
    if result.class_layer_execution_rate:
        rates = result.class_layer_execution_rate
        figures["class_layer"] = _figure([_trace(
            "heatmap", z=[list(row) for row in rates], x=list(result.layers or [f"layer {i}" for i in range(len(rates[0]))]), y=classes, zmin=0, zmax=1,
            colorscale=plotly_scale(colorscale), colorbar={"title": {"text": "execution rate", "side": "right"}, "tickformat": ".0%"},
            hovertemplate="%{y}, %{x}: runs %{z:.1%}<extra></extra>")],
            {"title": {"text": f"{result.model}: execution rate per class and gated layer"}, "xaxis": {"tickangle": -45},
             "yaxis": {**every_tick(classes), "autorange": "reversed"}, "margin": {"l": 100, "r": 20, "t": 40, "b": 80}})
    if result.exit_rates is not None:
        exits = list(result.exits or [f"exit {i + 1}" for i in range(len(result.exit_rates))])
        figures["exits"] = _figure([
            _trace("bar", name="images leaving here", x=exits, y=list(result.exit_rates), marker={"color": COLORS["executed"]},
                   hovertemplate="%{x}: %{y:.1%} of the images leave here<extra></extra>"),
            _trace("scatter", mode="markers+lines", name="their accuracy", x=exits, y=list(result.exit_accuracy or [None] * len(exits)), yaxis="y2",
                   marker={"color": COLORS["flops"], "size": 8}, line={"dash": "dot"}, connectgaps=False,
                   hovertemplate="%{x}: accuracy %{y:.1%} of the images leaving here<extra></extra>"),
        ], {"title": {"text": f"{result.model}: where the images leave"},
            "xaxis": {"categoryorder": "array", "categoryarray": exits, "title": {"text": "exit, input to output"}},
            "yaxis": {"title": {"text": "images leaving"}, "tickformat": ".0%", "range": [0, 1.05]},
            "yaxis2": {"title": {"text": "accuracy"}, "overlaying": "y", "side": "right", "tickformat": ".0%", "range": [0, 1.05], "showgrid": False},
            "legend": {**LEGEND_ON_TOP}, "margin": {"l": 60, "r": 60, "t": 90, "b": 60}})
    if result.class_exit_rates:
        exits = list(result.exits or [f"exit {i + 1}" for i in range(len(result.class_exit_rates[0]))])
        figures["class_exit"] = _figure([_trace(
            "heatmap", z=[list(row) for row in result.class_exit_rates], x=exits, y=classes, zmin=0, zmax=1,
            colorscale=plotly_scale(colorscale), colorbar={"title": {"text": "images leaving", "side": "right"}, "tickformat": ".0%"},
            hovertemplate="%{y}: %{z:.1%} leave at %{x}<extra></extra>")],
            {"title": {"text": f"{result.model}: where each class leaves"},
             "xaxis": {"categoryorder": "array", "categoryarray": exits},
             "yaxis": {**every_tick(classes), "autorange": "reversed"}, "margin": {"l": 100, "r": 20, "t": 40, "b": 60}})
    return figures


def corpus_dict(result: CorpusAnalysis) -> dict:
    """A byte LM's held-out statistics (the Text view's corpus panel): mean N and N+R per class of the byte read, ± std."""
    per_class, labels = result.per_char_class, result.class_labels or {}
    names = list(per_class)
    x = [labels.get(n, n) for n in names]

    def bars(key, std, name, color, what):
        return _trace("bar", name=name, x=x, y=[per_class[n][key] for n in names], marker={"color": color}, customdata=[per_class[n].get("count") for n in names],
                      error_y={"type": "data", "array": [per_class[n].get(std) for n in names], "visible": True},
                      hovertemplate=f"%{{x}}: {what} %{{y:.3f}} ± %{{error_y.array:.3f}}<br>%{{customdata}} bytes<extra></extra>")

    return _figure([bars("steps", "steps_std", "steps N", COLORS["steps"], "N"), bars("ponder", "ponder_std", "ponder cost N+R", COLORS["ponder_bar"], "N+R")], {
        "title": {"text": f"{result.model}: mean N and N+R by the class of the byte read"}, "barmode": "group",
        "yaxis": {"title": {"text": "steps N / ponder N+R"}, "rangemode": "tozero"},
        "legend": {**LEGEND_ON_TOP}, "margin": {"l": 60, "r": 20, "t": 90, "b": 40}})


def corpus_layers_dict(result: CorpusAnalysis, colorscale: str = DEFAULT_COLORSCALE) -> dict:
    """A byte LM with token_layers over its held-out text (the Text view's corpus panel): per class
    of the byte read (rows) the fraction of its bytes each layer computed (columns, `layer_names`),
    and a last row over all bytes (`layer_rates`)."""
    per_class, labels = result.per_char_class or {}, result.class_labels or {}
    classes = [n for n in per_class if per_class[n].get("layers") is not None]
    if not classes:
        raise ValueError(f"{result.model}'s held-out statistics have no per-class layer rates (its trace has no token_layers)")
    count = len(per_class[classes[0]]["layers"])
    names = list(result.layer_names or [f"layer {i + 1}" for i in range(count)])
    rows, z = [labels.get(n, n) for n in classes], [list(per_class[n]["layers"]) for n in classes]
    if result.layer_rates is not None:
        rows, z = rows + ["all bytes"], z + [list(result.layer_rates)]
    return _figure([_trace(
        "heatmap", z=z, x=names, y=rows, zmin=0, zmax=1, colorscale=plotly_scale(colorscale),
        colorbar={"title": {"text": "bytes computed", "side": "right"}, "tickformat": ".0%"},
        hovertemplate="%{y}, %{x}: computes %{z:.1%} of the bytes<extra></extra>")],
        {"title": {"text": f"{result.model}: the share of each class's bytes that each layer computed"},
         "xaxis": {**every_tick(names), "categoryorder": "array", "categoryarray": names},
         "yaxis": {**every_tick(rows), "autorange": "reversed"}, "margin": {"l": 110, "r": 20, "t": 70, "b": 60}})


# ------------------------------------------------------------------ what-if studies
STUDY_COLORS = ["#1f5fbf", "#e0892b", "#2ca02c", "#9467bd", "#c0392b", "#17becf", "#8c564b"]


def _parameter_label(point: SweepPoint) -> str:
    """What a sweep's parameter is for its model: the point's label (the model's whatif about), else
    (a result from before points had one) models/whatif.py's default words for it."""
    if point.label:
        return point.label
    from ponderscope.models.whatif import ABOUT  # (imports torch: only here)

    return ABOUT.get(point.parameter, {}).get("label", point.parameter)


def sweep_dict(results: dict[str, list[SweepPoint]], reference: Reference | None = None) -> dict:
    """ponderscope.sweep points of several models, by label -> accuracy against FLOPs (executed /
    dense): one curve per model and parameter, the trained setting as a star, and `reference` (a
    reference model's label, accuracy and flops_ratio: one that skips nothing) as a diamond."""
    data = []
    for index, (label, points) in enumerate(results.items()):
        color = STUDY_COLORS[index % len(STUDY_COLORS)]
        for dash, parameter in zip(("solid", "dot", "dash"), dict.fromkeys(p.parameter for p in points if p.parameter)):
            curve = sorted((p for p in points if p.parameter == parameter), key=lambda p: p.flops_ratio)
            data.append(_trace("scatter", mode="lines+markers", name=f"{label}: {_parameter_label(curve[0])}",
                                   x=[p.flops_ratio for p in curve], y=[p.accuracy for p in curve],
                                   customdata=[[p.setting] for p in curve], line={"color": color, "dash": dash}, marker={"size": 6},
                                   hovertemplate=f"{parameter} %{{customdata[0]}}: accuracy %{{y:.2%}} at %{{x:.1%}} of dense FLOPs<extra>{label}</extra>"))
        trained = next((p for p in points if p.trained), None)
        if trained is not None:
            data.append(_trace("scatter", mode="markers", name=f"{label}: trained", x=[trained.flops_ratio], y=[trained.accuracy],
                                   marker={"symbol": "star", "size": 15, "color": color, "line": {"color": "#1b1f24", "width": 1}},
                                   hovertemplate=f"trained: accuracy %{{y:.2%}} at %{{x:.1%}} of dense FLOPs<extra>{label}</extra>"))
    if reference is not None:
        data.append(_trace("scatter", mode="markers", name=f"{reference.label} (reference)", x=[reference.flops_ratio], y=[reference.accuracy],
                               marker={"symbol": "diamond", "size": 13, "color": COLORS["other"]},
                               hovertemplate=f"reference: accuracy %{{y:.2%}} at %{{x:.1%}} of the FLOPs<extra>{reference.label}</extra>"))
    return _figure(data, {"title": {"text": "Accuracy against computation as the inference settings move (no retraining)"},
                          "xaxis": {"title": {"text": "FLOPs executed / dense"}, "tickformat": ".0%", "rangemode": "tozero"},
                          "yaxis": {"title": {"text": "test accuracy"}, "tickformat": ".0%"},
                          "legend": {"orientation": "h", "y": -0.3}, "margin": {"b": 120}})


def lesion_dict(studies: dict[str, LesionStudy]) -> dict:
    """ponderscope.lesion of several models side by side: the test accuracy after removing each
    unit alone (x: the unit's place in the network; downsampling units as crosses), each model's
    intact accuracy dotted, and where a model has gates (Trace.gates) its execution rate per
    layer on the right axis: do the layers it skips hurt least when removed?"""
    data = []
    for index, (label, study) in enumerate(studies.items()):
        color = STUDY_COLORS[index % len(STUDY_COLORS)]
        single = study.single
        places = list(range(1, len(single) + 1))
        data.append(_trace("scatter", mode="lines+markers", name=f"{label}: without the unit", x=places, y=[u.accuracy for u in single],
                               customdata=[[u.name, "downsampling" if u.downsampling else ""] for u in single], line={"color": color},
                               marker={"size": [11 if u.downsampling else 7 for u in single], "symbol": ["x" if u.downsampling else "circle" for u in single]},
                               hovertemplate="without %{customdata[0]} %{customdata[1]}: accuracy %{y:.2%}<extra>" + label + "</extra>"))
        data.append(_trace("scatter", mode="lines", name=f"{label}: intact", x=[places[0], places[-1]], y=[study.trained.accuracy] * 2,
                               line={"color": color, "dash": "dot", "width": 1}, hovertemplate="intact: %{y:.2%}<extra>" + label + "</extra>"))
        if study.layer_execution_rate:
            data.append(_trace("bar", name=f"{label}: execution rate", x=places, y=list(study.layer_execution_rate), yaxis="y2", opacity=0.25,
                               marker={"color": color}, customdata=[[u.name] for u in single],
                               hovertemplate="%{customdata[0]} runs for %{y:.1%} of the images<extra>" + label + "</extra>"))
    return _figure(data, {"title": {"text": "Remove one unit at test time: accuracy (crosses: units that downsample, keeping their shortcut)"},
                          "xaxis": {"title": {"text": "residual unit / gated block, input to output"}, "dtick": 1},
                          "yaxis": {"title": {"text": "test accuracy"}, "tickformat": ".0%"},
                          "yaxis2": {"title": {"text": "execution rate (gated models)"}, "overlaying": "y", "side": "right", "range": [0, 1.05],
                                     "tickformat": ".0%", "showgrid": False},
                          "barmode": "overlay", "legend": {"orientation": "h", "y": -0.3}, "margin": {"b": 130, "r": 70}})


def random_lesion_dict(studies: dict[str, LesionStudy]) -> dict:
    """Accuracy as k random units are removed (Veit et al. 2016, fig. 5): mean over the draws,
    bars from the lowest to the highest draw."""
    data = []
    for index, (label, study) in enumerate(studies.items()):
        points = study.random
        data.append(_trace("scatter", mode="lines+markers", name=label, x=[p.k for p in points], y=[p.mean for p in points],
                               error_y={"type": "data", "symmetric": False, "array": [p.max - p.mean for p in points],
                                        "arrayminus": [p.mean - p.min for p in points]},
                               line={"color": STUDY_COLORS[index % len(STUDY_COLORS)]},
                               hovertemplate="%{x} removed: mean accuracy %{y:.2%}<extra>" + label + "</extra>"))
    first = next(iter(studies.values()), None)
    draws = "" if first is None else first.draws
    return _figure(data, {"title": {"text": f"Remove k random units (not downsampling ones): mean of {draws} draws, min to max"},
                          "xaxis": {"title": {"text": "units removed"}, "dtick": 1},
                          "yaxis": {"title": {"text": "test accuracy"}, "tickformat": ".0%"}, "legend": {"orientation": "h", "y": -0.25}})


def class_lesion_dict(study: LesionStudy, label: str = "") -> dict:
    """Which classes break when a unit is removed: accuracy drop per class (rows) and removed
    unit (columns), in points of accuracy."""
    trained = study.trained.per_class_accuracy
    units = [u.name for u in study.single]
    drop = [[None if t != t or u.per_class_accuracy[c] != u.per_class_accuracy[c] else 100.0 * (t - u.per_class_accuracy[c])
             for u in study.single] for c, t in enumerate(trained)]
    # (a list of colours, spread evenly from 0 to 1: plotly_scale, as plotly.py's validation turned it)
    return _figure([_trace("heatmap", z=drop, x=units, y=list(study.classes), colorscale=plotly_scale("YlOrRd"), zmin=0, colorbar={"title": {"text": "points"}},
                               hovertemplate="without %{x}: %{y} accuracy down %{z:.1f} points<extra></extra>")],
                   {"title": {"text": f"{label}: accuracy drop per class when one unit is removed".strip(": ")},
                    "xaxis": {"tickangle": -45}, "yaxis": every_tick(list(study.classes)), "margin": {"b": 90, "l": 100}})


# ------------------------------------------------------------------ sequence models
def visible_char(c: str) -> str:
    return {" ": "␣", "\n": "↵", "\t": "⇥"}.get(c, c)


def text_dict(analysis: TextAnalysis, measure: str | None = None, colorscale: str = DEFAULT_COLORSCALE) -> dict:
    """Byte LM (POST /text): per character, bars of `measure` ("steps" N or "ponder" N+R; default
    the analysis' own `measure`, what varies in this text) coloured by the colour scale, a dotted
    line of the other, and the surprisal in bits on the right axis."""
    chars = analysis.chars
    key = measure or analysis.measure or "ponder"
    if key not in TEXT_UNITS:
        raise ValueError(f"a text's measure is 'steps' (N) or 'ponder' (N+R), not {key!r}")
    other = "steps" if key == "ponder" else "ponder"
    x, labels = list(range(len(chars))), [visible_char(c.char) for c in chars]
    values = [TEXT_VALUES[key](c) for c in chars]
    lo, hi = min(values), max(values)
    colors = [_css(color_at(colorscale, (v - lo) / (hi - lo) if hi > lo else 0.5)) for v in values]
    ticks = x[:: max(1, math.ceil(len(chars) / 120))]
    return _figure([
        _trace("bar", name=TEXT_UNITS[key], x=x, y=values, customdata=labels, marker={"color": colors, "line": {"color": "#444", "width": 0.3}},
               hovertemplate=f"'%{{customdata}}' #%{{x}}: {TEXT_UNITS[key]} %{{y:.3f}}<extra></extra>"),
        _trace("scatter", mode="lines", name=TEXT_UNITS[other], x=x, y=[TEXT_VALUES[other](c) for c in chars], customdata=labels, line={"color": COLORS["other"], "width": 1, "dash": "dot"},
                   hovertemplate=f"'%{{customdata}}' #%{{x}}: {TEXT_UNITS[other]} %{{y:.3f}}<extra></extra>"),
        _trace("scatter", mode="lines+markers", name="surprisal (bits)", x=x, y=[c.bits for c in chars], yaxis="y2", customdata=labels, connectgaps=False,
                   line={"color": COLORS["surprisal"], "width": 1.2}, marker={"size": 4}, hovertemplate="'%{customdata}' #%{x}: %{y:.2f} bits<extra></extra>"),
    ], {"title": {"text": f"{analysis.model}: ponder per character ({TEXT_UNITS[key]} as bars) and surprisal"},
        "xaxis": {"tickmode": "array", "tickvals": ticks, "ticktext": [labels[i] for i in ticks], "tickangle": 0, "range": [-0.5, len(chars) - 0.5],
                  "title": {"text": "character"}},
        "yaxis": {"title": {"text": "steps N / ponder N+R"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "bits"}, "overlaying": "y", "side": "right", "rangemode": "tozero", "showgrid": False},
        "legend": {**LEGEND_ON_TOP}, "bargap": 0.1, "margin": {"l": 60, "r": 60, "t": 90, "b": 50}})


def distinct(names: list[str]) -> list[str]:
    """`names` as distinct category labels: a name given before gets " (2)", " (3)", ... (plotly
    would draw one row for two categories of one name)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def char_labels(analysis: TextAnalysis) -> list[str]:
    """The characters of a text answer as the layer figure's x categories: "#i 'c'" (unique, in order)."""
    return [f"#{i} '{visible_char(c.char)}'" for i, c in enumerate(analysis.chars)]


def text_layers_dict(analysis: TextAnalysis, colorscale: str = DEFAULT_COLORSCALE) -> dict:
    """Models whose trace has token_layers (POST /text's `layers`): character x layer. Columns: the
    characters in order (x categories "#i 'c'", ticks the characters); rows: the layers, input to
    output, top to bottom (`layer_names`). A cell where the layer computed the character is
    coloured by the weight its output got there (`layer_weights`: a halting weight p^l, a
    router's weight), or by 1 (ran) where the model has no weights, on a fixed scale from 0 to 1
    (to the largest weight drawn where one is above 1), so that a colour means the same weight in
    every text; a cell where it did not run is grey (a second trace). A character of several
    bytes: the mean over its bytes, drawn where any of them ran."""
    if not analysis.layer_names or analysis.layers is None:
        raise ValueError(f"{analysis.model}'s answer has no layer rows (its trace has no token_layers)")
    names, rows, weights = list(analysis.layer_names), analysis.layers, analysis.layer_weights
    x, labels = char_labels(analysis), [visible_char(c.char) for c in analysis.chars]
    y = distinct(names)  # the rows as categories, top to bottom
    value = (lambda i, l: weights[i][l]) if weights is not None else (lambda i, l: rows[i][l])  # noqa: E731
    ran = [[value(i, l) if rows[i][l] > 0 else None for i in range(len(rows))] for l in range(len(names))]
    skipped = [[0 if rows[i][l] == 0 else None for i in range(len(rows))] for l in range(len(names))]
    drawn = [v for row in ran for v in row if v is not None]  # weights >= 0 (the contract): the scale is 0..max(1, largest)
    unit = "weight" if weights is not None else "ran"
    ticks = list(range(0, len(x), max(1, math.ceil(len(x) / 120))))
    return _figure([
        _trace("heatmap", name="ran", x=x, y=y, z=ran, zmin=0, zmax=max(drawn + [1]), hoverongaps=False,
               colorscale=plotly_scale(colorscale), colorbar={"title": {"text": unit, "side": "right"}, "thickness": 12, "len": 0.9},
               hovertemplate="%{x}, %{y}: ran" + (", weight %{z:.3f}" if weights is not None else "") + "<extra></extra>"),
        _trace("heatmap", name="did not run", x=x, y=y, z=skipped, zmin=0, zmax=1, hoverongaps=False, showscale=False,
               colorscale=[[0, COLORS["skipped"]], [1, COLORS["skipped"]]], hovertemplate="%{x}, %{y}: did not run<extra></extra>"),
    ], {"title": {"text": f"{analysis.model}: the layers that computed each character"
                          + (" (colour: the weight of the layer's output; grey: did not run)" if weights is not None else " (grey: did not run)")},
        "xaxis": {"type": "category", "tickmode": "array", "tickvals": [x[i] for i in ticks], "ticktext": [labels[i] for i in ticks], "tickangle": 0,
                  "range": [-0.5, len(x) - 0.5], "title": {"text": "character"}, "showgrid": False},
        "yaxis": {**every_tick(y), "categoryorder": "array", "categoryarray": y, "autorange": "reversed", "showgrid": False},
        "height": 150 + 24 * len(names), "margin": {"l": 90, "r": 20, "t": 70, "b": 50}})


def parity_dict(analyses: ParityAnalysis | list[ParityAnalysis], curve: dict[str, float] | None = None, bits: int | None = None) -> dict:
    """Parity (POST /parity): ponder N+R against the number of nonzero entries (Graves 2016, fig. 4):
    the test-set mean per count (`curve`: the card's metrics.test.ponder_by_nonzero), every
    analysis given as a point, the last one as the current star. Each analysis' `vector` (when
    not empty) is shown on hover."""
    analyses = list(analyses) if isinstance(analyses, (list, tuple)) else [analyses]
    data = []
    if curve:
        ks = sorted(curve, key=int)
        data.append(_trace("scatter", mode="lines", name="test-set mean ponder", x=[int(k) for k in ks], y=[curve[k] for k in ks], line={"color": COLORS["curve"]}))

    def label(a: ParityAnalysis) -> str:
        vector = "".join("+" if v > 0 else "-" if v < 0 else "0" for v in a.vector) + ": " if a.vector else ""
        return f"{vector}{a.answer}, N={a.steps}"

    data.append(_trace("scatter", mode="markers", name="your vectors", x=[a.nonzero for a in analyses], y=[a.ponder for a in analyses],
                           text=[label(a) for a in analyses], marker={"color": COLORS["executed"], "size": 7, "opacity": 0.6},
                           hovertemplate="%{text}<br>nonzero %{x}, ponder %{y:.3f}<extra></extra>"))
    current = analyses[-1]
    data.append(_trace("scatter", mode="markers", name="current", x=[current.nonzero], y=[current.ponder], marker={"color": COLORS["current"], "size": 14, "symbol": "star"},
                           hovertemplate="current: nonzero %{x}, ponder %{y:.3f}<extra></extra>"))
    bits = bits or len(current.vector or []) or max([a.nonzero for a in analyses] + [int(k) for k in (curve or {})])
    return _figure(data, {
        "title": {"text": "Ponder cost N+R against the number of nonzero entries (Graves 2016, fig. 4)"},
        "xaxis": {"title": {"text": "nonzero entries"}, "range": [-0.5, bits + 0.5], "dtick": max(1, math.ceil(bits / 16))},
        "yaxis": {"title": {"text": "ponder cost N+R"}, "rangemode": "tozero"}, "legend": {"orientation": "h", "y": -0.2}})


def halting_dict(analysis: ParityAnalysis) -> dict:
    """Models that report a halting distribution (Trace.extras["halting_distribution"]): p(n) of this input over steps n = 1..N
    (`halting_distribution` of a parity answer), the answer's step N marked."""
    p = list(analysis.halting_distribution)
    steps = list(range(1, len(p) + 1))
    colors = [COLORS["current"] if n == analysis.steps else COLORS["ponder"] for n in steps]
    return _figure([_trace("bar", x=steps, y=p, marker={"color": colors}, name="p(n)", hovertemplate="step %{x}: p %{y:.3f}<extra></extra>")], {
        "title": {"text": f"Halting distribution p(n): answered at step {analysis.steps} (the median), expected steps {analysis.ponder:.2f}"},
        "xaxis": {"title": {"text": "step n"}, "dtick": 1}, "yaxis": {"title": {"text": "p(n)"}, "rangemode": "tozero"}, "showlegend": False})


# ------------------------------------------------------------------ the notebook's Figures
def as_figure(fig: dict | go.Figure) -> go.Figure:
    """A figure dict of this module (or a Figure, returned as it is) as a plotly Figure: go.Figure(fig),
    which validates it and adds plotly.py's default theme, as every Figure has. The first one also
    registers ponderscope's offline renderer (use_offline_renderer)."""
    import plotly.graph_objects as go

    if not _renderer_registered:
        use_offline_renderer()
    return fig if isinstance(fig, go.Figure) else go.Figure(fig)


def _returns_figure(build: Callable[..., dict]) -> Callable[..., go.Figure]:
    """`name_figure` for the dict builder `name_dict`: the same arguments, the dict as a plotly Figure."""
    def figure(*args, **kwargs):
        return as_figure(build(*args, **kwargs))

    figure.__name__ = figure.__qualname__ = build.__name__.removesuffix("_dict") + "_figure"
    figure.__doc__ = f"{build.__doc__}\n\n    A plotly Figure: as_figure({build.__name__}(...)), the plotly JSON the server sends, validated and themed."
    figure.__signature__ = inspect.signature(build).replace(return_annotation="go.Figure")
    return figure


ponder_map_figure = _returns_figure(ponder_map_dict)
input_figure = _returns_figure(input_dict)
gates_figure = _returns_figure(gates_dict)
exits_figure = _returns_figure(exits_dict)
image_figure = _returns_figure(image_dict)
block_maps_figure = _returns_figure(block_maps_dict)
compare_figure = _returns_figure(compare_dict)
corpus_figure = _returns_figure(corpus_dict)
sweep_figure = _returns_figure(sweep_dict)
lesion_figure = _returns_figure(lesion_dict)
random_lesion_figure = _returns_figure(random_lesion_dict)
class_lesion_figure = _returns_figure(class_lesion_dict)
text_figure = _returns_figure(text_dict)
text_layers_figure = _returns_figure(text_layers_dict)
corpus_layers_figure = _returns_figure(corpus_layers_dict)
parity_figure = _returns_figure(parity_dict)
halting_figure = _returns_figure(halting_dict)


def dataset_figures(result: DatasetAnalysis | CorpusAnalysis, colorscale: str = DEFAULT_COLORSCALE) -> dict[str, go.Figure]:
    """dataset_dicts(result) with each figure a plotly Figure (as_figure)."""
    return {name: as_figure(fig) for name, fig in dataset_dicts(result, colorscale).items()}


# ------------------------------------------------------------------ offline output
def to_html(fig: dict | go.Figure, full_html: bool = True) -> str:
    """The figure (a Figure, or a dict of this module: as_figure) as HTML that works offline: plotly.js inline, no MathJax, no CDN."""
    import plotly.io as pio

    return pio.to_html(as_figure(fig), include_plotlyjs=True, include_mathjax=False, full_html=full_html, config=CONFIG)


# OfflineRenderer subclasses plotly.io's MimetypeRenderer, whose module imports plotly.graph_objects,
# kaleido and more (~90 ms): the class is made on first use (`figures.OfflineRenderer`, or the first
# Figure), so that `import ponderscope.figures` and the server do without.
_renderer_class = None
_renderer_registered = False


def _offline_renderer_class() -> type:
    global _renderer_class
    if _renderer_class is None:
        from plotly.io._base_renderers import MimetypeRenderer

        class OfflineRenderer(MimetypeRenderer):
            """Jupyter display with plotly.js inline in every figure's HTML (about 4.8 MB each), so a
            notebook shows, and keeps showing once saved, without a network; JupyterLab's plotly
            extension, where present, draws the plotly JSON beside it (also offline)."""

            def to_mimebundle(self, fig_dict: dict) -> dict:
                return {"application/vnd.plotly.v1+json": {"data": fig_dict.get("data", []), "layout": fig_dict.get("layout", {}), "config": CONFIG},
                        "text/html": to_html(fig_dict, full_html=False)}

        OfflineRenderer.__module__ = __name__
        _renderer_class = OfflineRenderer
    return _renderer_class


def __getattr__(name: str):
    if name == "OfflineRenderer":
        return _offline_renderer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def use_offline_renderer(force: bool = False) -> None:
    """Register OfflineRenderer as plotly's renderer "ponderscope", and make it the default of
    fig.show() and Jupyter's display when running in a Jupyter kernel (or with force) and
    PLOTLY_RENDERER does not name another renderer. Done on import in a Jupyter kernel, else by
    the first Figure made here."""
    global _renderer_registered
    import plotly.io as pio

    pio.renderers["ponderscope"] = _offline_renderer_class()()
    _renderer_registered = True
    if force or (not os.environ.get("PLOTLY_RENDERER") and _in_jupyter_kernel()):
        pio.renderers.default = "ponderscope"


if _in_jupyter_kernel():  # a notebook: figures shown after `import ponderscope` carry plotly.js inline from the start
    use_offline_renderer()


class StaticExportUnavailable(RuntimeError):
    """PNG/SVG export through kaleido and a Chromium is not possible here (the message says why)."""


def to_image(fig: dict | go.Figure, format: str = "png", width: int = 700, height: int = 560, scale: float = 1.0) -> bytes:
    """The figure (a Figure, or a dict of this module: as_figure) as PNG or SVG bytes through kaleido (v1: drives a Chromium, e.g. Debian's /usr/bin/chromium;
    BROWSER_PATH or PONDERSCOPE_CHROMIUM names another) with the local plotly.js and no MathJax:
    nothing is fetched from the network."""
    try:
        import kaleido
    except ImportError:
        raise StaticExportUnavailable("kaleido is not installed (pip install kaleido==1.5.0)") from None
    if os.environ.get("PONDERSCOPE_CHROMIUM") and not os.environ.get("BROWSER_PATH"):
        os.environ["BROWSER_PATH"] = os.environ["PONDERSCOPE_CHROMIUM"]
    import plotly

    plotlyjs = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    try:
        return kaleido.calc_fig_sync(as_figure(fig).to_dict(), opts={"format": format, "width": width, "height": height, "scale": scale},
                                     kopts={"mathjax": False, "plotlyjs": str(plotlyjs), "timeout": 60})
    except Exception as error:  # no Chromium, or one that cannot start here: say so, the caller may fall back
        reason = str(error.args[0] if error.args else error).strip()[:300]
        raise StaticExportUnavailable(f"kaleido could not run a Chromium ({type(error).__name__}: {reason})") from None


# ------------------------------------------------------------------ maps without a browser
def _map_cells(analysis: ImageAnalysis, block, measure, colorscale):
    z = map_grid(analysis, block, measure)
    lo, hi = map_range(analysis, block, measure)
    rgb = [[color_at(colorscale, (v - lo) / (hi - lo)) for v in row] for row in z]
    return z, rgb, lo, hi


def map_png(analysis: ImageAnalysis, block: int | None = None, measure: str = "ponder", colorscale: str = DEFAULT_COLORSCALE,
            opacity: float = DEFAULT_OPACITY, width: int = 700, height: int = 560) -> bytes:
    """The ponder map drawn with Pillow, for where kaleido cannot run: the input image, the
    map's cells in the colour scale blended over it at `opacity`, a colour bar with its range."""
    from PIL import Image, ImageDraw

    z, rgb, lo, hi = _map_cells(analysis, block, measure, colorscale)
    source = Image.open(io.BytesIO(base64.b64decode(analysis.input.image.split(",", 1)[1]))).convert("RGB")
    side = min(width - 90, height - 20)
    fit = min(side / source.width, side / source.height)
    size = (max(1, round(source.width * fit)), max(1, round(source.height * fit)))
    cells = Image.new("RGB", (len(z[0]), len(z)))
    cells.putdata([c for row in rgb for c in row])
    shown = Image.blend(source.resize(size, Image.NEAREST), cells.resize(size, Image.NEAREST), opacity)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(shown, (10, 10))
    draw, bar_x, bar_h = ImageDraw.Draw(canvas), 20 + size[0], size[1]
    for y in range(bar_h):
        draw.line([(bar_x, 10 + y), (bar_x + 14, 10 + y)], fill=color_at(colorscale, 1 - y / max(1, bar_h - 1)))
    draw.text((bar_x + 18, 10), f"{hi:.3g}", fill="black")
    draw.text((bar_x + 18, 10 + bar_h - 12), f"{lo:.3g}", fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def map_svg(analysis: ImageAnalysis, block: int | None = None, measure: str = "ponder", colorscale: str = DEFAULT_COLORSCALE,
            opacity: float = DEFAULT_OPACITY, width: int = 700, height: int = 560) -> str:
    """The same map as SVG, written directly: the input as an <image>, one <rect> per cell, a colour bar."""
    from xml.sax.saxutils import quoteattr

    z, rgb, lo, hi = _map_cells(analysis, block, measure, colorscale)
    source = analysis.input
    side = min(width - 90, height - 20)
    fit = min(side / source.width, side / source.height)
    w, h = source.width * fit, source.height * fit
    cw, ch = w / len(z[0]), h / len(z)
    rects = "".join(f'<rect x="{10 + j * cw:.2f}" y="{10 + i * ch:.2f}" width="{cw + 0.05:.2f}" height="{ch + 0.05:.2f}" fill="{_css(c)}"/>'
                    for i, row in enumerate(rgb) for j, c in enumerate(row))
    stops = "".join(f'<stop offset="{t:.3f}" stop-color="{c}"/>' for t, c in plotly_scale(colorscale))
    unit = MEASURES[measure].unit
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><title>{unit}</title><rect width="100%" height="100%" fill="white"/>'
            f'<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient></defs>'
            f'<image x="10" y="10" width="{w:.2f}" height="{h:.2f}" preserveAspectRatio="none" style="image-rendering:pixelated" '
            f'xlink:href={quoteattr(source.image)}/><g opacity="{opacity}" shape-rendering="crispEdges">{rects}</g>'
            f'<rect x="{20 + w:.2f}" y="10" width="14" height="{h:.2f}" fill="url(#scale)"/>'
            f'<text x="{38 + w:.2f}" y="20" font-size="11" font-family="sans-serif">{hi:.3g}</text>'
            f'<text x="{38 + w:.2f}" y="{10 + h:.2f}" font-size="11" font-family="sans-serif">{lo:.3g}</text></svg>')


# ------------------------------------------------------------------ an answer's figures, as JSON
# The server sends the dicts as they are: plotly.py is not on that path (no validation, no numpy
# conversion, no JSON round trip), and its default theme ("plotly", about 7 KB in every Figure's
# layout.template) is never added: the page draws each figure with plotly.js's own defaults.
def figure_json(fig: dict | go.Figure) -> dict:
    """A figure as the server sends it, JSON-safe {data, layout} (what Plotly.react takes): a dict
    of this module as it is; a Figure through its JSON, without plotly.py's theme."""
    if isinstance(fig, dict):
        return fig
    out = json.loads(fig.to_json())
    out.get("layout", {}).pop("template", None)
    return out


# The answer answer_figures and attach take for a study: the server's envelope (GET /api/studies/{kind},
# a dict with more keys) whose "results" hold the typed results by model and "reference" the reference model's point.
StudyEnvelope = dict  # {"results": {label: list[SweepPoint] | LesionStudy}, "reference": Reference | None, ...}


def answer_figures(kind: str, answer: ImageAnalysis | TextAnalysis | ParityAnalysis | DatasetAnalysis | CorpusAnalysis | StudyEnvelope) -> dict:
    """The figures of an answer, by name, as plotly JSON dicts (the `*_dict` builders, whose Figures
    the notebook and `ponderscope render` show) with their default settings; the page draws them as
    they are and restyles only display settings (colour scale, opacity, measure, box) from the
    answer's numbers. No plotly.py here: the server sends the dicts as they are.

        image    (ImageAnalysis) "map": the ponder map over the input (or the input alone:
                 models without blocks), "blocks": every block's map on one scale (per-position models), "gates" (gated models),
                 "exits" (models with exits: each exit's confidence, the threshold, the exit taken)
        text     (TextAnalysis) "text": per-character ponder and surprisal; "layers": character x
                 layer (models whose trace has token_layers)
        parity   (ParityAnalysis) "parity": ponder against nonzero entries, this vector over the
                 test-set curve; "halting": p(n) over steps (models that report a halting distribution)
        dataset  (DatasetAnalysis or CorpusAnalysis) dataset_dicts(result): "class",
                 "flops_histogram", ... (image), "corpus", "corpus_layers" (text)
        sweep    (a StudyEnvelope of list[SweepPoint]) "sweep": accuracy vs FLOPs of every model
                 asked for, the reference model (its "reference": one that skips nothing) as a diamond
        lesion   (a StudyEnvelope of LesionStudy) "single", "random", and "classes:<model>" per model
    """
    if kind == "image":
        out = {"map": ponder_map_dict(answer) if answer.ponder is not None else input_dict(answer)}
        if answer.ponder is not None:
            out["blocks"] = block_maps_dict(answer)
        if answer.gates is not None:
            out["gates"] = gates_dict(answer)
        if answer.exits is not None:
            out["exits"] = exits_dict(answer)
    elif kind == "text":
        out = {"text": text_dict(answer)}
        if answer.layers is not None:
            out["layers"] = text_layers_dict(answer)
    elif kind == "sweep":  # the envelope: {"results": {label: list[SweepPoint]}, "reference": Reference or None}
        out = {"sweep": sweep_dict(answer["results"], answer.get("reference"))}
    elif kind == "lesion":  # the envelope: {"results": {label: LesionStudy}}
        studies: dict[str, LesionStudy] = answer["results"]
        out = {"single": lesion_dict(studies), "random": random_lesion_dict(studies),
               **{f"classes:{label}": class_lesion_dict(study, label) for label, study in studies.items()}}
    elif kind == "parity":
        out = {"parity": parity_dict(answer, answer.curve, len(answer.vector))}
        if answer.halting_distribution:
            out["halting"] = halting_dict(answer)
    elif kind == "dataset":
        out = dataset_dicts(answer)
    else:
        raise ValueError(f"no figures for answers of kind {kind!r}")
    return out


def attach(kind: str, answer: ImageAnalysis | TextAnalysis | ParityAnalysis | DatasetAnalysis | CorpusAnalysis | StudyEnvelope):
    """The answer (a typed answer of ponderscope.core.answers, or a study's envelope dict) with its
    `figures` (answer_figures) beside its numbers."""
    drawn = answer_figures(kind, answer)
    if isinstance(answer, dict):  # a study's envelope
        answer["figures"] = drawn
    else:
        answer.figures = drawn
    return answer
