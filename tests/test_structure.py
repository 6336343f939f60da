"""The package's shape: no import cycles, TensorFlow behind one door, a light command line, the
weights and the numpy engine without TensorFlow, and the folder rules of ARCHITECTURE.md."""

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
    assert "textgen.training.train" in graph and "textgen.run" in graph
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


# The run's contract: the modules at the top of the package, which every stage shares. The
# package's own front (``textgen``) names every stage for the public API and is not one of them.
FOLDERS = ("corpus", "training", "sample", "serve", "export", "cli")


def _place(module: str) -> str:
    """``contract``, ``front`` (the package itself, ``__main__``) or the module's folder."""
    parts = module.split(".")
    if module in ("textgen", "textgen.__main__"):
        return "front"
    if len(parts) == 2 and parts[1] not in FOLDERS:
        return "contract"
    return parts[1]


# What each place may import: a stage imports the contract and the stages before it, never one
# after it; serve/ stands on sample/ alone; cli/ reaches everything through the package fronts.
# Every module may import the package itself (``textgen``, which Python loads first anyway), for
# its version and its lazy ``exports_on_first_use``.
ALLOWED = {
    "contract": {"front", "contract"},
    "corpus": {"front", "contract", "corpus"},
    "training": {"front", "contract", "corpus", "training", "sample"},
    "sample": {"front", "contract", "corpus", "sample"},
    "serve": {"contract", "front", "sample", "serve"},
    "export": {"front", "contract", "sample", "export"},
    "cli": {"contract", "front", "cli", *FOLDERS},
    "front": {"contract", "front", *FOLDERS},
}


def _rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a folder rule, as ``importer -> imported (why)``."""
    breaks = []
    for importer, imported in sorted(graph.items()):
        here = _place(importer)
        for other in sorted(imported):
            there = _place(other)
            if there not in ALLOWED[here]:
                breaks.append(f"{importer} -> {other} ({here} may not import {there})")
            elif here == "serve" and other == "textgen.backend":
                breaks.append(f"{importer} -> {other} (serve/ never loads TensorFlow)")
            elif (
                here == "cli"
                and there in FOLDERS
                and there != "cli"
                and other != f"textgen.{there}"
            ):
                breaks.append(f"{importer} -> {other} (cli/ imports package fronts only)")
    return breaks


def test_the_folders_keep_their_import_rules():
    graph = _graph()
    assert {_place(name) for name in graph} == {"contract", "front", *FOLDERS}
    assert _rule_breaks(graph) == []


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("textgen.sample.engine", "textgen.training.steps"),
        ("textgen.run", "textgen.sample.sampler"),
        ("textgen.corpus.ids", "textgen.sample.draw"),
        ("textgen.serve.app", "textgen.training.train"),
        ("textgen.serve.app", "textgen.export.formats"),
        ("textgen.serve.batching", "textgen.backend"),
        ("textgen.export.web", "textgen.training.report"),
        ("textgen.cli.commands", "textgen.sample.sampler"),
        ("textgen.cli.commands", "textgen.corpus.catalogue"),
    ],
)
def test_a_forbidden_import_is_caught(importer, imported):
    graph = {name: set(found) for name, found in _graph().items()}
    graph[importer].add(imported)
    assert [line.split(" (")[0] for line in _rule_breaks(graph)] == [f"{importer} -> {imported}"]


def test_the_contract_corpus_and_sample_load_without_tensorflow():
    names = sorted(
        name
        for name in _graph()
        if _place(name) in ("contract", "corpus", "sample") and name != "textgen.backend"
    )
    assert len(names) > 20
    assert _loaded_by(", ".join(names), ("tensorflow", "keras")) == ""


def test_importing_the_command_line_loads_nothing_heavy():
    heavy = ("numpy", "tensorflow", "keras", "textgen.training.train", "textgen.corpus")
    heavy += (
        "textgen.training.windows",
        "textgen.run",
        "textgen.sample.sampler",
        "textgen.sample.engine",
    )
    assert _loaded_by("textgen.cli.commands", heavy) == ""


def test_the_weights_and_the_engine_load_without_tensorflow():
    assert _loaded_by("textgen.weights, textgen.sample.engine", ("tensorflow", "keras")) == ""


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
