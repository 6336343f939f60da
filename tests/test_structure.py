"""The package's shape: no import cycles, TensorFlow behind one door, a light command line, and
the weights and the numpy engine without TensorFlow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "textgen"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every textgen module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from a import b`` imports the module a.b when there is one, else a.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def test_no_import_cycles_inside_the_package():
    graph = _graph()
    assert "textgen.training" in graph and "textgen.run" in graph
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name) :] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_tensorflow_is_imported_only_by_the_backend():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "backend.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("tensorflow", "keras") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def _loaded_by(modules: str, prefixes: tuple[str, ...]) -> str:
    """The modules starting with ``prefixes`` that importing ``modules`` loads, in a fresh
    interpreter."""
    code = (
        f"import sys, {modules}\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_command_line_loads_nothing_heavy():
    heavy = ("numpy", "tensorflow", "keras", "textgen.training", "textgen.corpus")
    heavy += ("textgen.windows", "textgen.run", "textgen.sampler", "textgen.engine")
    assert _loaded_by("textgen.cli", heavy) == ""


def test_the_weights_and_the_engine_load_without_tensorflow():
    assert _loaded_by("textgen.weights, textgen.engine", ("tensorflow", "keras")) == ""


def test_every_data_file_of_the_package_is_shipped():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["textgen"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data, "the package holds data files (the catalogue, the pages, the base model)"
    assert sorted(p.relative_to(PACKAGE).as_posix() for p in data - shipped) == []
