"""The page's JavaScript as ES modules (no build step): small files, loaded as a module from
'self' (the Content-Security-Policy allows no inline script), one module per view with the common
interface, and every named import found among the exports of the module it names. Text checks
only: no browser, no node."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "static"
VIEWS = STATIC / "views"
MAX_LINES = 400


def own_scripts() -> list[Path]:
    """static/**/*.js except the vendored libraries (static/vendor)."""
    return sorted(p for p in STATIC.rglob("*.js") if "vendor" not in p.relative_to(STATIC).parts)


def test_no_script_is_over_400_lines():
    scripts = own_scripts()
    assert scripts, "no JavaScript under static/"
    long = {str(p.relative_to(ROOT)): n for p in scripts if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_page_loads_the_entry_as_a_module_and_has_no_inline_script():
    html = (ROOT / "templates" / "index.html").read_text(encoding="utf-8")
    tags = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert tags
    entry = [attrs for attrs, _ in tags if re.search(r'src="/static/app\.js(\?[^"]*)?"', attrs)]
    assert len(entry) == 1 and re.search(r'\btype="module"', entry[0]), "static/app.js must be loaded with type=\"module\""
    for attrs, body in tags:
        kind = re.search(r'\btype="([^"]+)"', attrs)
        if kind and kind.group(1) == "application/json":
            continue  # data, never executed
        assert "src=" in attrs and not body.strip(), f"inline script: <script{attrs}>{body[:80]}"
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), "inline event handler attribute in index.html"


def test_each_view_module_exports_the_common_interface():
    modules = sorted(VIEWS.glob("*.js"))
    assert {p.stem for p in modules} >= {"image", "compare", "dataset", "text", "parity", "models"}
    entry = (STATIC / "app.js").read_text(encoding="utf-8")
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert "export const view = {" in text, f"{path.name}: no `export const view = {{`"
        body = text[text.index("export const view = {"):]
        for member in ("name:", "init", "activate", "render", "restyle", "writeUrl"):
            assert re.search(rf"^\s+{re.escape(member.rstrip(':'))}\b", body, flags=re.M), f"{path.name}: view has no {member}"
        assert re.search(rf"^\s+name: '{path.stem}',", body, flags=re.M), f"{path.name}: view name is not {path.stem!r}"
        # registered in the entry's list
        assert f"from './views/{path.name}'" in entry, f"{path.name} is not imported by static/app.js"
    registered = re.search(r"const VIEWS = \[([^\]]*)\]", entry)
    assert registered and len([v for v in registered.group(1).split(",") if v.strip()]) == len(modules)


IMPORT = re.compile(r"^import\s+\{([^}]*)\}\s+from\s+'([^']+)';", flags=re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:const|let|function\*?|class)\s+([A-Za-z_$][\w$]*)", flags=re.M)


@pytest.mark.parametrize("path", own_scripts(), ids=lambda p: str(p.relative_to(STATIC)))
def test_named_imports_exist(path):
    """Every `import { a, b as c } from './x.js'` names a file that exports a and b (what a
    browser would refuse at load time, with a blank page)."""
    for names, target in IMPORT.findall(path.read_text(encoding="utf-8")):
        assert target.startswith("./") or target.startswith("../"), f"{path.name}: import from {target!r} (only relative modules here)"
        module = (path.parent / target).resolve()
        assert module.is_file(), f"{path.name}: {target} does not exist"
        exported = set(EXPORT.findall(module.read_text(encoding="utf-8")))
        for name in (n.strip().split(" as ")[0].strip() for n in names.split(",") if n.strip()):
            assert name in exported, f"{path.relative_to(STATIC)} imports {name!r}, which {module.relative_to(STATIC)} does not export"
