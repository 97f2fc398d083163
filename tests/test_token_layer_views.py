"""Per byte x per layer (issue 25, item 4): Trace.token_layers / token_layer_weights of the byte LMs
whose layers run per token (Universal Transformer + ACT, Mixture-of-Depths, their dense twins),
served by the real app: POST /text answers each character's layer row and weights, drawn as the
character x layer heatmap, and the corpus panel gets the class x layer rates. Every number is
checked against the model's own trace on the same bytes, reduced to characters here, independently
of ponderscope.core.answers.

The checkpoints are tiny and untrained, made in the test (dim 32, 2 heads, context 32)."""
from __future__ import annotations

import time

import pytest
import torch
from fastapi.testclient import TestClient

from ponderscope import figures, models
from ponderscope.core.workloads import BytesLM, byte_class
from ponderscope.server.app import create_app
from ponderscope.server.references import resolve

SMALL = dict(dim=32, heads=2, context=32)
TEXT = "Hé, wörld — the fox: 42!\nAgain, and again. " * 2  # 2- and 3-byte characters; longer than the context (windows)
SEQ = 64  # held-out windows of 64 bytes (the card's config.data_options.seq_len), each longer than the context
CARD = {"task": {"name": "bytes-lm"}, "dataset": None, "classes": None, "preprocess": None, "config": {"data_options": {"seq_len": SEQ}}}


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return models.create_model(name, **SMALL).eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{role: the module saved} and a client of the app serving them (and an ACT-LSTM without layers)."""
    root = tmp_path_factory.mktemp("token-layers")
    made = {"ut_act": make("ut_act"), "mod": make("mod"), "ut": make("ut"), "transformer_lm": make("transformer_lm")}
    torch.manual_seed(0)
    made["act_lstm"] = models.create_model("act_lstm", input_kind="bytes", input_size=16, hidden_size=32, output_size=256,
                                           output="sequence", max_steps=6).eval()
    for name, module in made.items():
        models.save_checkpoint(module, root / "ckpt" / f"tiny-{name}", dict(CARD))
    with TestClient(create_app([root / "ckpt"], device="cpu", cache_dir=root / "cache")) as client:
        yield client, made


def expected_rows(module, text: str):
    """The model's own trace on the text's bytes -> per character (its UTF-8 bytes) the mean over
    its bytes of each layer's 0/1 and of each layer's weight (None without weights)."""
    data = text.encode("utf-8")
    with torch.no_grad():
        trace = module.trace(torch.tensor([list(data)], dtype=torch.long))
    ran = trace.token_layers[0].tolist()
    weights = None if trace.token_layer_weights is None else trace.token_layer_weights[0].tolist()
    rows, weight_rows, start = [], [], 0
    for char in text:
        span = range(start, start + len(char.encode("utf-8")))
        rows.append([sum(ran[t][l] for t in span) / len(span) for l in range(len(ran[0]))])
        if weights is not None:
            weight_rows.append([sum(weights[t][l] for t in span) / len(span) for l in range(len(ran[0]))])
        start += len(span)
    return trace, rows, (weight_rows if weights is not None else None)


@pytest.mark.parametrize("name", ["ut_act", "mod", "ut", "transformer_lm"])
def test_post_text_answers_each_characters_layer_row_as_the_trace_has_it(served, name):
    client, made = served
    module = made[name]
    response = client.post(f"/api/models/tiny-{name}/text", json={"text": TEXT})
    assert response.status_code == 200, response.text
    answer = resolve(response.json())
    trace, rows, weights = expected_rows(module, TEXT)
    assert len(answer["chars"]) == len(TEXT) and answer["bytes"] == len(TEXT.encode("utf-8"))
    assert answer["layer_names"] == module.token_layer_names and len(answer["layers"]) == len(TEXT)
    flat = lambda table: [v for row in table for v in row]  # noqa: E731
    assert flat(answer["layers"]) == pytest.approx(flat(rows), abs=5e-4)
    if weights is None:  # the dense twins: every layer computes every byte, with no weight of its own
        assert answer["layer_weights"] is None and set(flat(answer["layers"])) == {1}
    else:
        assert flat(answer["layer_weights"]) == pytest.approx(flat(weights), abs=5e-5)
    # a 2-byte character ("é") is the mean over its bytes; a 1-byte one exactly 0 or 1
    assert set(flat(answer["layers"][i] for i, c in enumerate(TEXT) if len(c.encode()) == 1)) <= {0, 1}
    # the steps the Text view colours by agree with the layers that ran (each ran layer is a step)
    if name in ("ut_act", "mod"):
        assert [c["steps"] for c in answer["chars"]] == pytest.approx([sum(row) for row in rows], abs=1e-3)
        assert len({tuple(row) for row in answer["layers"]}) > 1, "the tiny model should run different layers on different bytes"

    # the figure: one column per character, one row per layer, coloured by the weight where the layer ran, grey where not
    fig = answer["figures"]["layers"]
    ran, skipped = fig["data"]
    assert ran["y"] == module.token_layer_names and len(ran["x"]) == len(TEXT) and ran["x"][2] == "#2 ','"
    assert len(ran["z"]) == len(module.token_layer_names) and all(len(row) == len(TEXT) for row in ran["z"])
    for l in range(len(module.token_layer_names)):
        for i in range(len(TEXT)):
            ran_here = rows[i][l] > 0
            assert (ran["z"][l][i] is None) == (not ran_here) and (skipped["z"][l][i] is None) == ran_here, (l, i)
            if ran_here:
                assert ran["z"][l][i] == pytest.approx(weights[i][l] if weights is not None else rows[i][l], abs=5e-4)
    assert fig["layout"]["yaxis"]["autorange"] == "reversed"  # input to output, top to bottom


def test_a_model_without_token_layers_answers_none_and_no_figure(served):
    client, _ = served
    answer = client.post("/api/models/tiny-act_lstm/text", json={"text": "Hello, world."}).json()
    assert answer["layer_names"] is None and answer["layers"] is None and answer["layer_weights"] is None
    assert set(answer["figures"]) == {"text"}


def until_done(client, url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(url).json()
        if body["status"] != "running":
            assert body["status"] == "done", body
            return body
        time.sleep(0.1)
    pytest.fail(f"{url} did not finish")


@pytest.mark.parametrize("name", ["ut_act", "mod"])
def test_the_corpus_panel_gets_the_class_x_layer_rates(tmp_path, name):
    """Measured by the server over the held-out text (a card without statistics), and read from a
    card whose metrics.test has them (`ponderscope eval`): per class the share of its bytes each
    layer computed, over all bytes too, and their figure. The server runs the model through its
    planned execution (sparse or masked, per batch size); mod routes with its causal predictor
    (evaluation's rule), recomputed here with the masked (reference) execution."""
    from ponderscope.models.sparse import Execution, executing

    module = make(name)
    models.save_checkpoint(module, tmp_path / "ckpt" / "measured", {**CARD, "dataset": "jargon"})
    workload = BytesLM("jargon", torch.device("cpu"), seq_len=SEQ)
    stats = workload.evaluate(module, limit=2000)  # what `ponderscope eval` writes into the card, on fewer bytes
    models.save_checkpoint(module, tmp_path / "ckpt" / "from-card", {**CARD, "metrics": {"test": stats}})
    with TestClient(create_app([tmp_path / "ckpt"], device="cpu", cache_dir=tmp_path / "cache")) as client:
        measured = until_done(client, "/api/models/measured/dataset")["result"]
        carded = until_done(client, "/api/models/from-card/dataset")["result"]
        served = client.app.state.store.get("measured")
        assert served.execution_for(64) in (Execution.SPARSE, Execution.MASKED)  # evaluate's batches of 64 windows: the plan's path
        assert not served.module.training
        if name == "mod":
            assert served.module.routing == "predictor"

    # independently: the same held-out windows through the model, the bytes' layers per class
    from ponderscope.core.jobs import CORPUS_BYTES

    stream = workload.eval_windows(CORPUS_BYTES)
    windows = torch.stack([stream[i * SEQ : (i + 1) * SEQ] for i in range((len(stream) - 1) // SEQ)])
    with torch.no_grad(), executing("masked"):
        ran = module.trace(windows).token_layers.reshape(-1, 6).double()
    if name == "mod":  # the unrouted layers compute every byte; the predictors route some bytes and not others
        assert ran[:, [0, 2, 4]].min() == 1 and any(0 < float(r) < 1 for r in ran[:, [1, 3, 5]].mean(0))
    flat = windows.reshape(-1).tolist()
    classes = [byte_class(b, flat[i - 1] if i % SEQ else None) for i, b in enumerate(flat)]
    assert measured["bytes"] == len(flat) and measured["layer_names"] == module.token_layer_names
    assert measured["layer_rates"] == pytest.approx(ran.mean(0).tolist(), abs=1e-4)
    for name, row in measured["per_char_class"].items():
        members = torch.tensor([c == name for c in classes])
        assert row["layers"] == pytest.approx(ran[members].mean(0).tolist(), abs=1e-4), name
    heat = measured["figures"]["corpus_layers"]["data"][0]
    labels = measured["class_labels"]
    assert heat["x"] == module.token_layer_names and heat["y"] == [labels[n] for n in measured["per_char_class"]] + ["all bytes"]
    assert heat["z"] == [measured["per_char_class"][n]["layers"] for n in measured["per_char_class"]] + [measured["layer_rates"]]

    assert carded["source"].startswith("card metrics.test")
    assert carded["layer_names"] == stats["layer_names"] and carded["layer_rates"] == stats["layer_rates"]
    assert {n: c["layers"] for n, c in carded["per_char_class"].items()} == {n: c["layers"] for n, c in stats["per_char_class"].items()}
    assert "corpus_layers" in carded["figures"]


def test_the_figures_are_the_notebooks_and_the_command_lines_too(served, tmp_path):
    """ps.text_layers_figure / figures.text_layers_figure: the dict the server sends as a plotly
    Figure; `ponderscope render --text ... --layers` writes it."""
    import plotly.io as pio

    import ponderscope as ps
    from ponderscope import cli

    client, made = served
    model = client.app.state.store.get("tiny-mod")
    analysis = ps.analyze_text(model, TEXT)
    fig = ps.text_layers_figure(model, TEXT, colorscale="Inferno")
    assert fig.data[0].type == "heatmap" and list(fig.data[0].y) == analysis.layer_names
    assert [list(s) for s in fig.data[0].colorscale] == figures.plotly_scale("Inferno")
    assert figures.figure_json(fig) == figures.text_layers_dict(analysis, colorscale="Inferno")
    with pytest.raises(ValueError, match="no layer rows"):
        figures.text_layers_dict(analysis.model_copy(update={"layers": None, "layer_names": None}))

    folder = tmp_path / "tiny-ut_act"
    models.save_checkpoint(made["ut_act"], folder, dict(CARD))
    cli.main(["render", str(folder), "--text", TEXT, "--layers", "--out", str(tmp_path / "layers.json")])
    drawn = pio.from_json((tmp_path / "layers.json").read_text(encoding="utf-8"))
    _, rows, weights = expected_rows(made["ut_act"], TEXT)
    assert list(drawn.data[0].y) == made["ut_act"].token_layer_names and len(drawn.data[0].x) == len(TEXT)
    assert list(drawn.data[0].z[0]) == pytest.approx([w[0] if r[0] else None for w, r in zip(weights, rows)], abs=5e-4)
    lstm = tmp_path / "tiny-act_lstm"
    models.save_checkpoint(made["act_lstm"], lstm, dict(CARD))
    with pytest.raises(SystemExit, match="reports no layers per byte"):
        cli.main(["render", str(lstm), "--text", "hi", "--layers", "--out", str(tmp_path / "no.json")])
