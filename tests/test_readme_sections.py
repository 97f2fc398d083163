"""README's generated sections: the helper that writes them, and that the committed README agrees
with what the scripts wrote (a hand edit to a measured number would fail here)."""

import json
from pathlib import Path

from ponderscope.readme import README, replace_section

ROOT = Path(__file__).resolve().parents[1]


def test_replace_section_swaps_only_the_body(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- speed:start -->\nold table\n<!-- speed:end -->\noutro\n", encoding="utf-8")
    assert replace_section("speed", "| new | table |\n", readme)
    assert readme.read_text(encoding="utf-8") == "intro\n<!-- speed:start -->\n| new | table |\n<!-- speed:end -->\noutro\n"


def test_replace_section_leaves_a_readme_without_markers_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n<!-- speed:start -->\n", encoding="utf-8")
    assert not replace_section("speed", "body", readme)
    assert readme.read_text(encoding="utf-8") == "no markers here\n<!-- speed:start -->\n"
    assert not replace_section("speed", "body", tmp_path / "missing.md")
    readme.write_text("<!-- speed:end -->\nmisordered\n<!-- speed:start -->\n", encoding="utf-8")
    assert not replace_section("speed", "body", readme)
    assert readme.read_text(encoding="utf-8") == "<!-- speed:end -->\nmisordered\n<!-- speed:start -->\n"


def section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0].strip()


def test_readme_bench_tables_are_the_last_full_bench_run():
    results = (ROOT / "bench" / "results.md").read_text(encoding="utf-8")
    assert results.startswith("# Sparse execution benchmark")
    assert section("bench") == results.split("\n", 1)[1].strip()
    assert "| sparse time ratio |" in section("bench")


def test_readme_results_table_is_the_docs_table():
    docs = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").splitlines()
    start = docs.index(next(line for line in docs if line.startswith("| checkpoint |")))
    end = docs.index("", start)
    assert section("results").splitlines() == docs[start:end]
    bundled = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "card.json").is_file())
    assert [line.split("`")[1] for line in docs[start + 2 : end]] == bundled


def test_results_tables_from_cards(tmp_path):
    """One bundled-style checkpoint and one experiment card -> both tables, with the measured
    per-class step counts and the settings the experiment varied; README left alone."""
    from ponderscope.training.results import write_results

    card = json.loads((ROOT / "checkpoints" / "jargon_act_lstm" / "card.json").read_text(encoding="utf-8"))
    card["metrics"]["test"]["mean_steps"] = 1.5
    card["metrics"]["test"]["per_char_class"]["space"].update(steps=1.75, ponder=2.25)
    card["config"].update(adaptive={"tau": 0.123}, steps=2500, schedule="cosine", tau_warmup_steps=0, seed=0)
    card["config"]["model_kwargs"].update(max_steps=6, halting_bias=1.0)
    (tmp_path / "ckpt" / "lm").mkdir(parents=True)
    (tmp_path / "ckpt" / "lm" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    (tmp_path / "tried").mkdir()
    (tmp_path / "tried" / "lm_try.card.json").write_text(json.dumps(card), encoding="utf-8")
    readme_before = README.read_text(encoding="utf-8")
    text = write_results([str(tmp_path / "ckpt")], str(tmp_path / "results.md"), experiments=tmp_path / "tried")
    assert README.read_text(encoding="utf-8") == readme_before
    bundled_row = next(line for line in text.splitlines() if line.startswith("| `lm` |"))
    tried_row = next(line for line in text.splitlines() if line.startswith("| `lm_try` |"))
    assert "mean steps N 1.500" in bundled_row and "space 1.75 / 2.25" in bundled_row
    assert "tau=0.123 max_steps=6 halting_bias=1.0 steps=2500 schedule=cosine seed=0" in tried_row
    assert tried_row.count(" | ") == bundled_row.count(" | ") + 1  # the settings column


def test_results_per_class_tables(tmp_path):
    """docs/results.md carries, per ACT byte LM, the per-class mean +- std of N and N + R."""
    from ponderscope.training.results import write_results

    card = json.loads((ROOT / "checkpoints" / "jargon_act_lstm" / "card.json").read_text(encoding="utf-8"))
    test = card["metrics"]["test"]
    test.update(mean_steps=1.4, bits_per_byte=2.5, steps_mode=1, steps_off_mode_fraction=0.25, max_steps=6, steps_at_cap_fraction=0.01,
                corr_ponder_surprisal=0.125, corr_steps_surprisal=0.25, bytes=1000)
    test["per_char_class"] = {"space": {"count": 200, "steps": 1.9, "steps_std": 0.3, "ponder": 2.1, "ponder_std": 0.2, "bits": 3.0},
                              "letter": {"count": 800, "steps": 1.05, "steps_std": 0.1, "ponder": 2.0, "ponder_std": 0.05, "bits": 2.0}}
    (tmp_path / "ckpt" / "lm").mkdir(parents=True)
    (tmp_path / "ckpt" / "lm" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    text = write_results([str(tmp_path / "ckpt")], str(tmp_path / "results.md"), experiments=None)
    assert "| space | 200 | 1.900 ± 0.300 | 2.100 ± 0.200 | 3.000 |" in text
    assert "| letter | 800 | 1.050 ± 0.100 | 2.000 ± 0.050 | 2.000 |" in text
    assert "N differs from its most common value (1) on 25.0% of bytes" in text and "N at the cap M = 6 on 1.0%" in text
    assert "correlation with the next byte's loss: of N+R 0.125, of N 0.250" in text
    # N pinned (no correlation for N): a dash, not a crash
    test.update(corr_steps_surprisal=None)
    (tmp_path / "ckpt" / "lm" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    assert "of N+R 0.125, of N –" in write_results([str(tmp_path / "ckpt")], str(tmp_path / "results.md"), experiments=None)


def test_readme_reliability_tables_are_the_last_load_test():
    results = (ROOT / "bench" / "load_results.md").read_text(encoding="utf-8")
    assert results.startswith("# Load test")
    assert section("reliability") == results.split("\n", 1)[1].strip()
    assert "| health |" in section("reliability") and "Result: ok" in section("reliability")


def test_readme_answers_section_is_the_last_answer_size_bench():
    results = (ROOT / "bench" / "answers_results.md").read_text(encoding="utf-8")
    assert section("answers") == results.split("\n", 1)[1].strip()
    assert "(old: 480x640)" in section("answers")  # the native answer's total is on the model's grid


def test_readme_scale_section_is_the_last_analyze_bench():
    results = (ROOT / "bench" / "analyze_results.md").read_text(encoding="utf-8")
    assert section("scale") == results.split("\n", 1)[1].strip()
    assert "target: within 20%: met" in section("scale")


def test_readme_whatif_section_is_the_report_drawn_from_its_numbers():
    """docs/whatif.md is what report_markdown makes of docs/whatif.json (the numbers `ponderscope
    study report` measured), and the README's section is its body."""
    from ponderscope.studies import read_report, report_markdown

    results = read_report(ROOT / "docs" / "whatif.json")  # the report's numbers, in their types
    docs = (ROOT / "docs" / "whatif.md").read_text(encoding="utf-8")
    assert docs.split("\n", 2)[2] == report_markdown(results, 2000)
    assert section("whatif") == docs.split("\n", 2)[2].strip()
    sact = results["fmnist_sact_resnet32"].sweep
    card = json.loads((ROOT / "checkpoints" / "fmnist_sact_resnet32" / "card.json").read_text(encoding="utf-8"))
    assert all(p.examples == 2000 for p in sact) and card["metrics"]["test"]["examples"] == 10000
