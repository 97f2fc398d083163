"""README's generated sections: the helper that writes them, and that the committed README agrees
with what the scripts wrote (a hand edit to a measured number would fail here)."""

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


def section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0].strip()


def test_readme_bench_tables_are_the_last_full_bench_run():
    results = (ROOT / "bench" / "results.md").read_text(encoding="utf-8")
    assert results.startswith("# Sparse execution benchmark")
    assert section("bench") == results.split("\n", 1)[1].strip()
    assert "| sparse time ratio |" in section("bench")


def test_readme_results_table_is_the_docs_table():
    docs = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = section("results")
    assert table.startswith("| checkpoint |")
    for line in table.splitlines()[2:]:
        assert line in docs, line
