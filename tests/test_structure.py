"""The package's import structure: no import circles among steer's modules (counting function-local imports too),
the steering core never reaches up into the pipeline loader, the command line or the app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "steer"
# Modules that must not import the loader, the CLIs, the app or the batch runner (directly or through others).
CORE = ("errors", "layers", "hooks", "vectors", "files", "validation", "calibrate", "learn", "detect", "pipeline", "recipe")
OUTER = ("loading", "cli", "detect_cli", "batch", "app_base", "app_files", "app_handlers", "app_helpers", "app_memorization")


def steer_imports(path: Path) -> set[str]:
    """The steer modules ``path`` imports anywhere in the file (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "steer" and len(parts) > 1 and (ROOT / f"{parts[1]}.py").is_file():
                found.add(parts[1])
    return found


GRAPH = {p.stem: steer_imports(p) - {p.stem} for p in ROOT.glob("*.py") if p.stem != "__init__"}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_circle(module):
    assert module not in reachable(module), f"steer.{module} imports itself through {sorted(reachable(module) & {m for m in GRAPH if module in reachable(m)})}"


@pytest.mark.parametrize("module", CORE)
def test_core_never_reaches_the_loader_cli_or_app(module):
    assert not reachable(module) & set(OUTER), f"steer.{module} reaches {sorted(reachable(module) & set(OUTER))}"


def test_the_graph_is_read():
    assert "hooks" in GRAPH["pipeline"] and "layers" in GRAPH["hooks"] and "calibrate" in GRAPH["learn"]
