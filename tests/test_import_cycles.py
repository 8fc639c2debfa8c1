"""No two cxrkit modules import each other, lazily (inside a function) or not: such pairs hide initialisation-order
bugs and make modules impossible to understand alone."""
from __future__ import annotations

import ast
from pathlib import Path

import cxrkit

ROOT = Path(cxrkit.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_edges() -> dict[str, set[str]]:
    """module -> the cxrkit modules it imports anywhere in its source (a package's own __init__ is not counted)."""
    modules = _module_names()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if t in modules and t != mod and not mod.startswith(t + "."))
    return edges


def test_no_two_modules_import_each_other():
    edges = import_edges()
    assert "cxrkit.data.errors" in edges["cxrkit.data.dicom"]  # the walk sees real imports
    pairs = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges[b]})
    assert pairs == [], f"modules that import each other: {pairs}"
