"""The package has no import cycle: every module imports first in a fresh interpreter, and ``dexml_hf.data``'s
import graph (module-level and function-level imports alike) is acyclic."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dexml_hf

PACKAGE = Path(dexml_hf.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_each_first(modules: list[str]) -> None:
    """One interpreter; before each module, every ``dexml_hf`` module is dropped from ``sys.modules``, so each is
    the first of the package to be imported (third-party libraries stay loaded: they are not part of any cycle)."""
    script = textwrap.dedent(
        """
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "dexml_hf" or m.startswith("dexml_hf.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=3))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=600, cwd=PACKAGE.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_every_data_module_imports_first():
    modules = sorted(_module_name(p) for p in (PACKAGE / "data").rglob("*.py"))
    assert "dexml_hf.data.hub_layout" in modules and "dexml_hf.data.formats.lf" in modules
    _import_each_first(modules)


@pytest.mark.slow
def test_every_package_module_imports_first():
    _import_each_first(sorted(_module_name(p) for p in PACKAGE.rglob("*.py")))


def test_hub_layout_imports_alone():
    """The case the cycle broke first: ``python -c "import dexml_hf.data.hub_layout"``."""
    result = subprocess.run(
        [sys.executable, "-c", "import dexml_hf.data.hub_layout as h; print(h.load_hub_dataset.__name__)"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0 and result.stdout.strip() == "load_hub_dataset", result.stderr[-3000:]


def _imports(path: Path) -> set[str]:
    """``dexml_hf`` modules a file imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {name for name in out if name.startswith("dexml_hf.data")}


def test_data_package_import_graph_is_acyclic():
    files = {_module_name(p): p for p in (PACKAGE / "data").rglob("*.py")}
    graph = {
        name: {dep for dep in _imports(path) if dep in files and dep != name and not name.startswith(dep + ".")}
        for name, path in files.items()
        if not path.name == "__init__.py"  # a package's __init__ re-exports its modules; importing it is no cycle
    }
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, dep]))
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    # the edges that used to close the cycle are gone
    assert "dexml_hf.data.hub_layout" not in graph["dexml_hf.data.dataset"]
    assert "dexml_hf.data.dataset" in graph["dexml_hf.data.hub_layout"]
