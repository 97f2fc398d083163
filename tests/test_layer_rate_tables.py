"""`ponderscope results`' tables of the byte LMs whose trace has token_layers (issue 25): per class
of the byte read, the share of its held-out bytes that each layer computed (training/results.py
`_layer_rate_tables`), listing only the layers that skipped some bytes, with the FLOPs against the
dense twin; and the per-class N / N+R table (`_char_class_tables`) of the same cards. The cards
are synthetic: what `ponderscope eval` writes into metrics.test (BytesLM.evaluate)."""
from __future__ import annotations

import copy
import json

from ponderscope.training.results import _char_class_tables, _layer_rate_tables, write_results

STEPS = [f"step {n}" for n in range(1, 7)]


def ut_act_card() -> dict:
    """A Universal Transformer + ACT: steps 1 and 2 compute every byte, 3 to 5 some, 6 none."""
    test = {"bytes": 1000, "bits_per_byte": 2.5, "mean_steps": 3.375, "mean_ponder": 3.6, "flops_ratio": 0.61234,
            "steps_mode": 3, "steps_off_mode_fraction": 0.4, "max_steps": 6, "steps_at_cap_fraction": 0.0,
            "corr_ponder_surprisal": 0.125, "corr_steps_surprisal": 0.25,
            "layer_names": STEPS, "layer_rates": [1.0, 1.0, 0.75, 0.5, 0.125, 0.0],
            "per_char_class": {
                "space": {"count": 200, "steps": 4.5, "steps_std": 0.5, "ponder": 4.8, "ponder_std": 0.4, "bits": 3.0,
                          "layers": [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]},
                "letter": {"count": 800, "steps": 3.09375, "steps_std": 0.75, "ponder": 3.3, "ponder_std": 0.6, "bits": 2.375,
                           "layers": [1.0, 1.0, 0.6875, 0.375, 0.03125, 0.0]}}}
    return {"model": "ut_act", "model_kwargs": {}, "dataset": "jargon", "task": {"name": "bytes-lm"}, "metrics": {"test": test}}


def lstm_card() -> dict:
    """An ACT-LSTM: per-class N and N+R, no layer rows."""
    test = {"bytes": 500, "bits_per_byte": 2.75, "mean_steps": 1.4, "mean_ponder": 2.0,
            "per_char_class": {"space": {"count": 100, "steps": 1.9, "steps_std": 0.3, "ponder": 2.1, "ponder_std": 0.2, "bits": 3.25},
                               "letter": {"count": 400, "steps": 1.25, "steps_std": 0.125, "ponder": 2.0, "ponder_std": 0.05, "bits": 2.5}}}
    return {"model": "act_lstm", "model_kwargs": {}, "dataset": "jargon", "task": {"name": "bytes-lm"}, "metrics": {"test": test}}


LAYER_TABLE = [
    "## Byte language models: which layers computed which bytes",
    "",
    "### `lm_ut_act`: the share of each class's bytes that each layer computed",
    "",
    "On 1000 held-out bytes of jargon; the layers not listed computed every byte. FLOPs 61.2% of its dense twin's.",
    "",
    "| class of the byte read | bytes | step 3 | step 4 | step 5 | step 6 |",
    "|---|---|---|---|---|---|",
    "| all | 1000 | 75.0% | 50.0% | 12.5% | 0.0% |",
    "| space | 200 | 100.0% | 100.0% | 50.0% | 0.0% |",
    "| letter | 800 | 68.8% | 37.5% | 3.1% | 0.0% |",
    "",
]


def test_the_layer_table_lists_only_the_layers_that_skipped_bytes():
    cards = [("lm_ut_act", ut_act_card()), ("lm_lstm", lstm_card())]
    assert _layer_rate_tables(cards) == LAYER_TABLE  # steps 1 and 2 (rate 1.0) left out; the LSTM (no layer rows) has no table
    assert _layer_rate_tables([("lm_lstm", lstm_card())]) == []


def test_the_layer_table_without_flops_and_for_a_dense_twin():
    card = ut_act_card()
    del card["metrics"]["test"]["flops_ratio"]
    lines = _layer_rate_tables([("lm_ut_act", card)])
    assert lines[4] == "On 1000 held-out bytes of jargon; the layers not listed computed every byte."
    assert lines[5:] == LAYER_TABLE[5:]
    dense = ut_act_card()  # a dense twin (ut, transformer_lm): every layer computed every byte, nothing to list
    dense["metrics"]["test"].update(layer_rates=[1.0] * 6, flops_ratio=1.0)
    for c in dense["metrics"]["test"]["per_char_class"].values():
        c["layers"] = [1.0] * 6
    assert _layer_rate_tables([("lm_ut", dense)]) == []
    partial = ut_act_card()  # a class without its layer row (an older card): no table rather than a crash
    del partial["metrics"]["test"]["per_char_class"]["letter"]["layers"]
    assert _layer_rate_tables([("lm_ut_act", partial)]) == []


def test_the_per_class_table_of_the_ut_act_card_is_unchanged_by_its_layer_rows():
    cards = [("lm_ut_act", ut_act_card()), ("lm_lstm", lstm_card())]
    lines = _char_class_tables(cards)
    assert lines[0] == "## Byte language models: where they ponder"
    ut = lines[lines.index("### `lm_ut_act` on 1000 held-out bytes of jargon"):lines.index("### `lm_lstm` on 500 held-out bytes of jargon")]
    assert ut[2] == ("bits per byte 2.500; mean N 3.375; N differs from its most common value (3) on 40.0% of bytes; N at the cap M = 6 on 0.0%; "
                     "correlation with the next byte's loss: of N+R 0.125, of N 0.250.")
    assert ut[4:] == ["| class of the byte read | bytes | N mean ± std | N+R mean ± std | bits of the next byte |", "|---|---|---|---|---|",
                      "| space | 200 | 4.500 ± 0.500 | 4.800 ± 0.400 | 3.000 |",
                      "| letter | 800 | 3.094 ± 0.750 | 3.300 ± 0.600 | 2.375 |", ""]
    assert _char_class_tables([("lm_ut_act", ut_act_card())]) == lines[:lines.index("### `lm_lstm` on 500 held-out bytes of jargon")]
    assert "| space | 100 | 1.900 ± 0.300 | 2.100 ± 0.200 | 3.250 |" in lines


def test_results_md_carries_both_tables(tmp_path):
    for name, card in (("lm_ut_act", ut_act_card()), ("lm_lstm", lstm_card())):
        (tmp_path / "ckpt" / name).mkdir(parents=True)
        (tmp_path / "ckpt" / name / "card.json").write_text(json.dumps(copy.deepcopy(card)), encoding="utf-8")
    text = write_results([str(tmp_path / "ckpt")], str(tmp_path / "results.md"), experiments=None)
    lines = text.splitlines()
    start = lines.index(LAYER_TABLE[0])
    assert lines[start : start + len(LAYER_TABLE) - 1] == LAYER_TABLE[:-1]  # the last table: the file ends after its last row
    assert lines.index("## Byte language models: where they ponder") < start  # the N / N+R tables first
    assert "| `lm_ut_act` | `ut_act` | jargon | 2.500 bits/byte | 3.600 | 61.2% |" in text


def test_a_router_model_gets_the_layer_table_only():
    """N + R = N for every class (no remainder: a Mixture-of-Depths model's N is the layers a byte
    went through): the N / N+R table would repeat one number, so only the layer table is written."""
    card = ut_act_card()
    for c in card["metrics"]["test"]["per_char_class"].values():
        c["ponder"], c["ponder_std"] = c["steps"], c["steps_std"]
    assert _char_class_tables([("jargon_mod", card)]) == []
    assert "### `jargon_mod`: the share of each class's bytes that each layer computed" in _layer_rate_tables([("jargon_mod", card)])
    del card["metrics"]["test"]["layer_rates"]  # without layer rows the N table is all there is
    assert any(line.startswith("### `jargon_mod` on 1000 held-out bytes") for line in _char_class_tables([("jargon_mod", card)]))
