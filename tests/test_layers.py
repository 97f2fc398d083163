"""The import graph is layered: models at the bottom, the core above them, the faces on top.

Read from the source (AST), as installed: the repository's top-level folders models/, server/,
training/ and importers/ are the subpackages ponderscope.models, .server, ... (pyproject.toml).
A module may import its own layer and the layers below it, never one above; and the graph between
subpackages and top-level modules has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"ponderscope": "ponderscope", "models": "ponderscope.models", "server": "ponderscope.server",
           "training": "ponderscope.training", "importers": "ponderscope.importers"}

# bottom to top; a module belongs to the first layer naming it or a package above it
LAYERS = [
    ("base", ["ponderscope", "ponderscope.paths", "ponderscope.readme"]),
    ("models", ["ponderscope.models"]),
    ("core", ["ponderscope.core", "ponderscope.plugins"]),
    ("training and importers", ["ponderscope.training", "ponderscope.importers"]),
    ("libraries over the core", ["ponderscope.figures", "ponderscope.studies", "ponderscope.analyze"]),
    ("faces", ["ponderscope.server", "ponderscope.cli", "ponderscope.notebook", "ponderscope.__main__"]),
]


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def all_modules() -> dict[str, Path]:
    return {module_name(f)[0]: f for folder in FOLDERS for f in (ROOT / folder).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The ponderscope modules `path` imports, anywhere in it (functions' lazy imports too)."""
    name, is_package = module_name(path)
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from ponderscope import models` imports the module ponderscope.models
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {t for t in found if t.split(".")[0] == "ponderscope"}


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS"
    return index


def node_of(module: str) -> str:
    """The graph's node: a subpackage (ponderscope.core) or a top-level module (ponderscope.figures)."""
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: {t for t in imports(path, known)} for name, path in modules.items()}


def test_every_module_imports_only_its_layer_and_below(graph):
    upward = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_graph_between_subpackages_has_no_cycle(graph):
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = node_of(module), node_of(target)
            if a != b and b != "ponderscope.__init__" and target != "ponderscope":
                edges.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_checker_sees_a_violation():
    """The test above can fail: the core importing the web layer is found."""
    assert layer_of("ponderscope.server.app") > layer_of("ponderscope.core.answers")
    assert layer_of("ponderscope.core.loaded") > layer_of("ponderscope.models.resnet")
    source = ROOT / "ponderscope" / "core" / "answers.py"
    assert "ponderscope.models.trace" in imports(source, set(all_modules()))


def test_the_core_imports_neither_the_web_layer_nor_the_command_line(graph):
    faces = {"ponderscope.server", "ponderscope.cli", "ponderscope.notebook"}
    core = {m: t for m, t in graph.items() if m.startswith("ponderscope.core")}
    assert len(core) >= 8
    assert not {(m, t) for m, targets in core.items() for t in targets if node_of(t) in faces}
