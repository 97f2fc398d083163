"""Generated sections of README.md: the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`
is owned by a script (the results table by `ponderscope results`, the speed table by
`python -m bench`), so the README never drifts from the numbers those scripts measured."""

from __future__ import annotations

from pathlib import Path

from .paths import CHECKOUT

README = CHECKOUT / "README.md" if CHECKOUT is not None else None  # a checkout's; an installed ponderscope has none


def replace_section(name: str, body: str, readme: Path | None = README) -> bool:
    """Put `body` between the README's `name` markers; False (and nothing written) when the README
    or either marker is missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if readme is None or not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text.split(start, 1)[1]:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body.strip()}\n{end}{tail}", encoding="utf-8")
    return True
