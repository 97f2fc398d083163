"""Nothing in the server, the page (static/, templates/) or the figures names or branches on a model
family: what differs between models comes from their traces and from what their family declared
when it was registered (models.register_family: label, description, reference). A plugin's
family is then served and drawn like the built-in ones, and the page's texts cannot claim that a
plugin's gated model is ConvNet-AIG or that a reference model is "dense".

Read from the source, comments and docstrings included. One place is allowed, by its exact text:
the page footer's paper citations (credits for the methods the bundled models implement: no
label of a loaded model and no branch)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ponderscope import models

ROOT = Path(__file__).resolve().parents[1]
SCOPE = [*sorted((ROOT / "server").rglob("*.py")), *sorted((ROOT / "static").rglob("*.js")), *sorted((ROOT / "static").rglob("*.css")),
         *sorted((ROOT / "templates").rglob("*.html")), ROOT / "ponderscope" / "figures.py"]

BUILT_IN = ("sact", "act", "aig", "act-rnn", "rnn", "dense", "avit", "vit", "early-exit")
ALLOWED = {
    "templates/index.html": ["ACT (Graves 2016) · SACT (Figurnov et al. 2017) · ConvNet-AIG (Veit &amp; Belongie 2018)"],  # citations
}


def patterns() -> dict[str, re.Pattern]:
    labels = [models.FAMILIES[key] for key in BUILT_IN]
    keys = "|".join(re.escape(key) for key in BUILT_IN)
    return {
        "a family's label": re.compile("|".join(re.escape(label) for label in labels)),
        "a method's name": re.compile(r"\b(ConvNet-AIG|ACT-RNN|S?ACT|AIG|PonderNet|A-ViT|BranchyNet|MSDNet)\b"),
        "a family key as a literal": re.compile(rf"""(['"`])({keys})\1"""),
        "a branch on the family": re.compile(r"\bfamily\s*(===?|!==?)|\bfamily\s+(not\s+)?in\b|\bfamily_label\s*===?"),
        "a model called dense": re.compile(r"\bdense (model|ResNet|twin|baseline)s?\b|\(dense\)|\bdense:"),
    }


def findings(text: str, name: str) -> list[str]:
    allowed = ALLOWED.get(name, [])
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for allow in allowed:
            line = line.replace(allow, "")
        for what, pattern in patterns().items():
            match = pattern.search(line)
            if match:
                found.append(f"{name}:{number}: {what} ({match.group(0)!r}): {line.strip()[:140]}")
    return found


def test_the_built_in_families_are_the_registrys():
    assert set(BUILT_IN) <= set(models.FAMILIES) and models.family("dense").reference
    assert not any(models.family(key).reference for key in BUILT_IN if key not in ("dense", "vit"))
    assert all(models.family(key).description for key in BUILT_IN)  # every built-in family says how it decides


def test_no_family_is_named_or_branched_on_in_the_server_the_page_or_the_figures():
    assert len(SCOPE) > 20 and (ROOT / "static" / "views" / "image.js") in SCOPE
    found = [hit for path in SCOPE for hit in findings(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())]
    assert not found, "family names or branches:\n" + "\n".join(found)


def test_every_allowed_text_is_still_there():
    """An allowance whose text is gone is removed from the list (no stale exception)."""
    for name, texts in ALLOWED.items():
        source = (ROOT / name).read_text(encoding="utf-8")
        assert all(text in source for text in texts), name


@pytest.mark.parametrize("line", [
    "if entry.family == \"dense\" and entry.kind == \"image\":",  # server/routers/studies.py before
    "      ? 'ConvNet-AIG decides per image, not per position: each gate runs or skips a whole residual block.'",  # static/views/image.js
    '{"title": {"text": "Execution rate per class and gated layer (ConvNet-AIG)"}}',  # ponderscope/figures.py
    "name=f\"{reference.label} (dense)\",",
    "if (m.family === 'aig') showGates();",
    "const title = 'dense: no ponder map';",
    "if model.family in ('sact', 'act'):",
])
def test_the_check_sees_what_it_forbids(line):
    assert findings(line, "static/views/example.js"), line
