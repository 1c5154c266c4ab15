"""The package's import structure: no import circles among steer's modules (counting function-local imports too),
the layering of `pyproject.toml`'s import-linter contracts (the engine never reaches the pipelines, the app or the
command line; only the command line loads pipelines), and no module over 600 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "steer"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def steer_imports(path: Path) -> set[str]:
    """The steer modules ``path`` imports anywhere in the file (top level or inside functions), TYPE_CHECKING
    blocks excepted."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] == "steer":
                # the longest prefix that is a module: `from steer.engine import SteeringSession` -> steer.engine
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in MODULES:
                    found.add(name)
    return found


GRAPH = {m: steer_imports(p) - {m, "steer"} for m, p in MODULES.items() if m != "steer"}


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
    back = reachable(module)
    assert module not in back, f"{module} imports itself through {sorted(m for m in back if module in reachable(m))}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith(("steer.engine", "steer.denoisers"))))
def test_engine_and_denoisers_never_reach_pipelines_app_or_cli(module):
    outer = {m for m in reachable(module) if m.startswith(("steer.pipelines", "steer.app", "steer.cli", "steer.jobs"))}
    assert not outer, f"{module} reaches {sorted(outer)}"


def test_only_the_command_line_loads_pipelines():
    users = {m for m, deps in GRAPH.items() if "steer.cli.loading" in deps}
    assert users and all(m.startswith("steer.cli") for m in users), sorted(users)


def test_import_linter_contracts_are_kept():
    exe = str(Path(sys.executable).parent / "lint-imports")  # a dev dependency
    done = subprocess.run([exe, "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_600_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (limit {MAX_LINES}): split it by concept"


def test_the_graph_is_read():
    assert "steer.engine" in GRAPH["steer.pipelines.mixin"] and "steer.denoisers" in GRAPH["steer.engine.steering"]
    assert "steer.calibrate" in GRAPH["steer.learn"] and "steer.cli.loading" in GRAPH["steer.cli.main"]
