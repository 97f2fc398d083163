"""No array twice in one answer: the figures' arrays that are also the answer's numbers travel once.

A figure built from a typed answer (ponderscope.figures) holds the answer's own lists (a map's
grid is the heatmap's z). `share_arrays` replaces each such list in the figures by
{"$ref": "ponder.blocks.0.units"}, the path of the same list in the answer's JSON; the page puts
the array back (static/core/api.js: withSharedArrays). Lists the figure code made itself
(computed, reordered) stay inline.
"""
from __future__ import annotations

from pydantic import BaseModel


def array_paths(answer: BaseModel) -> dict[int, str]:
    """id() of every list object in the answer's numbers (its `figures` aside) -> its JSON path."""
    paths: dict[int, str] = {}

    def walk(value, path: str) -> None:
        if isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                if name != "figures":
                    walk(getattr(value, name), f"{path}.{field.alias or name}" if path else field.alias or name)
        elif isinstance(value, list):
            paths.setdefault(id(value), path)
            if value and isinstance(value[0], BaseModel):  # e.g. ponder.blocks: look inside each
                for index, item in enumerate(value):
                    walk(item, f"{path}.{index}")

    walk(answer, "")
    return paths


def share_arrays(figures, answer: BaseModel):
    """The figures (JSON-ready dicts and lists) with the answer's own lists as references."""
    paths = array_paths(answer)

    def swap(node):
        if isinstance(node, list):
            path = paths.get(id(node))
            if path is not None:
                return {"$ref": path}
            return [swap(item) for item in node] if node and isinstance(node[0], (list, dict)) else node
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        return node

    return swap(figures)


def resolve(answer: dict) -> dict:
    """An answer as received (JSON) with its figures' references replaced by the arrays they name,
    as the page does: each figure then stands alone. For Python clients and tests."""
    def lookup(path: str):
        value = answer
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value

    def put(node):
        if isinstance(node, dict):
            return lookup(node["$ref"]) if set(node) == {"$ref"} else {key: put(value) for key, value in node.items()}
        if isinstance(node, list):
            return [put(item) for item in node] if node and isinstance(node[0], (list, dict)) else node
        return node

    if answer.get("figures"):
        answer = {**answer, "figures": put(answer["figures"])}
    return answer
