"""The layering holds: import-linter's contracts pass, break when the serving path imports torch, the
package has no import cycles, and a server process never loads the training stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
TRAINING_STACK = ("torch", "torchvision", "mlflow", "matplotlib", "great_expectations", "kfp", "dvc")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_pass_and_cover_layers_and_the_serving_path() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken" in done.stdout
    assert "KEPT" in done.stdout and "BROKEN" not in done.stdout


SERVING = "Serving path: no training stack"
SERVING_IMAGE = "Serving path: only what the serving image installs"   # issue 23: its size budget
LAYERS = "Layers: each package imports only those below it"


@pytest.mark.parametrize(("module", "source", "contract"), [
    ("serve/_probe.py", "import torch\n", SERVING),
    ("bundle/_probe.py", "import mlflow\n", SERVING),
    ("serve/_probe.py", "from fashionrec.deploy import rollout\n", LAYERS),
    ("core/_probe.py", "from fashionrec.data import images\n", LAYERS),
    ("bundle/_probe.py", "import pandas\n", SERVING_IMAGE),
    ("index/_probe.py", "from sklearn.neighbors import BallTree\n", SERVING_IMAGE),
    ("serve/_probe.py", "import pyarrow.parquet\n", SERVING_IMAGE),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, source: str,
                                              contract: str) -> None:
    """A copy of the package with one bad import: lint-imports fails and names the broken contract."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "fashionrec" / module).write_text(source)
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{contract} BROKEN" in done.stdout, done.stdout
    assert f"fashionrec.{module[:-3].replace('/', '.')}" in done.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the package's module import graph (function-level imports included)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_inside_the_package() -> None:
    graph = grimp.build_graph("fashionrec")
    assert len(graph.modules) > 50
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def test_strongly_connected_finds_a_cycle() -> None:
    """The cycle check itself: a two-module loop is reported."""
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["pkg.a", "pkg.b"]]


def test_serving_modules_leave_the_training_stack_unloaded() -> None:
    """Import every fashionrec.serve* module (and the ASGI entry) in a fresh interpreter."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import fashionrec.serve as s\n"
        "names = [m.name for m in pkgutil.walk_packages(s.__path__, 'fashionrec.serve.')]\n"
        "for n in names: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r})\n"
        "print(len(names), bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 4
    assert loaded.strip() == "[]"
