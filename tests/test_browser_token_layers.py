"""Browser test of the Text view's layers per character (issue 25, item 4): a Universal Transformer
+ ACT and a Mixture-of-Depths byte LM (tiny, untrained, made here) served by the real app under
uvicorn, driven by headless Chromium with real keystrokes and clicks (tests/test_browser.py's way:
what the page drew is read from Plotly's `gd.data` and the DOM)."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from browser_support import BrowserPage, ServerProcess, browser_missing_reason, cleanup, make_driver, post_json, tmpdir

_missing = browser_missing_reason()
if _missing:
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

TEXT = "Hi, wörld. 42"  # "ö": two UTF-8 bytes, one character


@pytest.fixture(scope="module")
def site():
    import torch

    from ponderscope import models

    work = Path(tmpdir("ponderscope-token-layers-"))
    card = {"task": {"name": "bytes-lm"}, "dataset": "jargon", "classes": None, "preprocess": None,
            "note": "untrained throwaway model made by tests/test_browser_token_layers.py"}
    for name in ("ut_act", "mod"):
        torch.manual_seed(0)
        models.save_checkpoint(models.create_model(name, dim=32, heads=2, context=32).eval(), work / "checkpoints" / f"tiny-{name}", dict(card))
    torch.manual_seed(0)
    lstm = models.create_model("act_lstm", input_kind="bytes", input_size=16, hidden_size=32, output_size=256, output="sequence", max_steps=6)
    models.save_checkpoint(lstm.eval(), work / "checkpoints" / "tiny-lstm", dict(card))
    server = ServerProcess([str(work / "checkpoints")], str(work / "cache"), str(work / "server.log"))
    try:
        server.wait_ready(timeout=90)
        (work / "downloads").mkdir()
        driver = make_driver(str(work / "downloads"), str(work / "chrome-profile"))
        try:
            yield {"url": server.url, "driver": driver, "server": server, "downloads": work / "downloads"}
        finally:
            driver.quit()
    finally:
        server.stop()
        cleanup(work)


class Page(BrowserPage):
    def no_error(self) -> None:
        assert self.js("const e = document.getElementById('error'); return e.hidden ? '' : e.innerText") == ""
        blocked = [e["message"] for e in self.d.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not blocked, f"blocked by the Content-Security-Policy: {blocked[:3]}"


def post_text(url: str, model: str, text: str) -> dict:
    return post_json(f"{url}/api/models/{model}/text", {"text": text})


LAYERS_DRAWN = ("const g = document.getElementById('text-layers-chart'); const t = window.ponderscope.results.text;"
                "return !document.getElementById('text-layers-panel').hidden && t && t.model === arguments[0] && t.text === arguments[1]"
                " && g.data && g._fullLayout && g.data[0].x.length === t.chars.length")


def detail(page) -> list[str]:
    return page.js("return [...document.querySelectorAll('#text-layer-detail .layer-cell')].map((c) => c.textContent)")


def expected_detail(answer: dict, i: int) -> list[str]:
    """A character's column in words, from the server's answer (its layer row and weights)."""
    out = []
    for name, ran, weight in zip(answer["layer_names"], answer["layers"][i], (answer["layer_weights"] or [[None] * 99])[i]):
        what = "did not run" if ran == 0 else "ran" if ran == 1 else f"ran on {round(100 * ran)}% of its bytes"
        out.append(f"{name}: {what}" + (f", weight {weight:.3f}" if weight is not None and ran > 0 else ""))
    return out


def test_typed_text_draws_the_character_x_layer_heatmap_and_a_click_shows_a_column(site):
    page = Page(site)
    page.d.get(f"{page.url}/?view=text&tmodel=tiny-ut_act")
    page.wait("return document.readyState === 'complete' && !!window.ponderscope", what="the page")
    assert page.js("return document.getElementById('text-layers-panel').hidden")  # nothing typed: no panel
    page.d.find_element(By.ID, "text-input").send_keys(TEXT)
    page.wait(LAYERS_DRAWN, "tiny-ut_act", TEXT, what="the character x layer heatmap")
    answer = page.js("return window.ponderscope.results.text")
    server = post_text(page.url, "tiny-ut_act", TEXT)  # the same answer, asked here
    assert answer["layers"] == server["layers"] and answer["layer_weights"] == server["layer_weights"]
    names = [f"step {n}" for n in range(1, 7)]
    assert answer["layer_names"] == names and len(answer["chars"]) == len(TEXT) == 13

    # one column per character, one row per layer (step), coloured where the step ran
    ran, skipped = page.plot_data("text-layers-chart")
    assert len(ran["x"]) == len(TEXT) and ran["y"] == names and len(ran["z"]) == 6 and all(len(row) == len(TEXT) for row in ran["z"])
    for l in range(6):
        assert [v is not None for v in ran["z"][l]] == [row[l] > 0 for row in answer["layers"]]
        assert [v is not None for v in skipped["z"][l]] == [row[l] == 0 for row in answer["layers"]]
    drawn_rows = page.js("return [...document.querySelectorAll('#text-layers-chart .ytick text')].map((t) => t.textContent)")
    assert drawn_rows == names
    assert len(page.js("return document.querySelectorAll('#text-layers-chart .hm image, #text-layers-chart .heatmaplayer image')")) == 2
    assert "Click a character" in page.d.find_element(By.ID, "text-layer-detail").text

    # a real click on "ö" (two bytes): its span outlined, its column outlined on the heatmap, its layers in words
    page.d.find_elements(By.CSS_SELECTOR, "#text-output .ch")[5].click()
    page.wait("return document.querySelectorAll('#text-layer-detail .layer-cell').length === 6", what="the column's detail")
    assert page.d.find_element(By.ID, "text-layer-detail").text.startswith("#5 'ö'")
    assert "2 UTF-8 bytes" in page.d.find_element(By.ID, "text-layer-detail").text
    assert detail(page) == expected_detail(answer, 5)
    assert page.js("return [...document.querySelectorAll('#text-output .ch.selected')].map((s) => s.dataset.i)") == ["5"]
    shapes = page.js("return document.getElementById('text-layers-chart').layout.shapes")
    assert [(s["x0"], s["x1"]) for s in shapes] == [(4.5, 5.5)]

    # a real click on the heatmap's column of the comma (#2) selects that character (Plotly finds the
    # cell under the pointer as it moves: a pause between the move and the click)
    chart = page.d.find_element(By.ID, "text-layers-chart")
    page.js("arguments[0].scrollIntoView({block: 'center'})", chart)
    offset = page.js("""const g = document.getElementById('text-layers-chart'), xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
      const box = g.getBoundingClientRect();
      return [xa._offset + xa.l2p(2) - box.width / 2, ya._offset + ya.l2p(0) - box.height / 2];""")
    ActionChains(page.d).move_to_element_with_offset(chart, round(offset[0]), round(offset[1])).pause(0.3).click().perform()
    page.wait("return document.getElementById('text-layer-detail').textContent.startsWith(\"#2 ','\")", what="the comma's column")
    assert detail(page) == expected_detail(answer, 2)
    assert page.js("return document.getElementById('text-layers-chart').layout.shapes.map((s) => s.x0)") == [1.5]
    assert page.js("return [...document.querySelectorAll('#text-output .ch.selected')].map((s) => s.dataset.i)") == ["2"]

    # the corpus panel: class x layer, the share of each class's held-out bytes each step computed
    page.wait("const g = document.getElementById('corpus-layers-chart'); return !g.hidden && g.data && g.data.length", what="the corpus layers")
    corpus = page.js("return window.ponderscope.results.corpus")
    [heat] = page.plot_data("corpus-layers-chart")
    by_label = {corpus["class_labels"][c]: row for c, row in corpus["per_char_class"].items()}
    assert heat["x"] == names and sorted(heat["y"][:-1]) == sorted(by_label) and heat["y"][-1] == "all bytes"
    assert heat["z"] == [by_label[label]["layers"] for label in heat["y"][:-1]] + [corpus["layer_rates"]]
    assert "layers per byte" in page.d.find_element(By.ID, "corpus-stats").text

    # the CSV export carries each character's layer row and weights
    button = page.d.find_element(By.ID, "text-csv")
    page.js("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    saved = site["downloads"] / "ponderscope-text-tiny-ut_act.csv"
    deadline = time.time() + 15
    while not saved.is_file() and time.time() < deadline:
        time.sleep(0.1)
    rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert rows[0] == ["index", "char", "codepoint", "steps", "ponder", "bits", *[f"ran: {n}" for n in names], *[f"weight: {n}" for n in names]]
    assert len(rows) == 1 + len(TEXT) and rows[6][1] == "ö"
    assert [float(v) for v in rows[6][6:]] == answer["layers"][5] + answer["layer_weights"][5]

    # another model: the Mixture-of-Depths, its routed layers named; the selection is kept (same text)
    Select(page.d.find_element(By.ID, "text-model")).select_by_value("tiny-mod")
    page.wait(LAYERS_DRAWN, "tiny-mod", TEXT, what="the MoD's heatmap")
    mod = page.js("return window.ponderscope.results.text")
    assert page.plot_data("text-layers-chart")[0]["y"] == mod["layer_names"] == [
        "layer 1", "layer 2 (routed)", "layer 3", "layer 4 (routed)", "layer 5", "layer 6 (routed)"]
    assert detail(page) == expected_detail(mod, 2)
    assert page.js("return [...document.querySelectorAll('#text-output .ch.selected')].map((s) => s.dataset.i)") == ["2"]

    # the text edited (a character typed in front: #2 is now 'i', no longer the comma): the selection is gone,
    # at once and in the new answer: no character outlined, no column on the heatmap, no layers in words
    edited = "X" + TEXT
    field = page.d.find_element(By.ID, "text-input")
    field.send_keys(Keys.HOME, "X")
    assert page.js("return document.getElementById('text-input').value") == edited
    assert page.js("return document.querySelectorAll('#text-output .ch.selected').length") == 0
    page.wait(LAYERS_DRAWN, "tiny-mod", edited, what="the MoD's heatmap of the edited text")
    assert page.js("return window.ponderscope.results.text.chars[2].char") == "i"
    assert page.js("return document.querySelectorAll('#text-output .ch.selected').length") == 0
    assert not page.js("return document.getElementById('text-layers-chart').layout.shapes || []")
    assert detail(page) == []
    assert "Click a character" in page.d.find_element(By.ID, "text-layer-detail").text

    # a model without layers per byte: no panel, and a click on a character does nothing
    Select(page.d.find_element(By.ID, "text-model")).select_by_value("tiny-lstm")
    page.wait("const t = window.ponderscope.results.text; return t && t.model === 'tiny-lstm' && t.text === arguments[0]", edited, what="the LSTM's answer")
    page.wait("return document.getElementById('text-layers-panel').hidden", what="the panel hidden")
    page.d.find_elements(By.CSS_SELECTOR, "#text-output .ch")[3].click()
    assert page.js("return document.querySelectorAll('#text-output .ch.selected').length") == 0
    page.no_error()
