import subprocess
import sys

import pytest

import dexml_hf


@pytest.mark.parametrize("name", [n for n in dexml_hf.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(dexml_hf, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError):
        dexml_hf.not_a_name  # noqa: B018


def test_import_is_light():
    """``import dexml_hf`` must not pull in torch or evaluate (the CLI's --help stays fast)."""
    code = "import sys, dexml_hf; print('torch' in sys.modules, 'evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_tiny_model_fixture_embeds(tiny_model):
    emb = tiny_model.encode(["a query", "a label"], convert_to_tensor=True)
    assert emb.shape == (2, 32)


def _top_level_imports(path, package_modules: set[str]) -> set[str]:
    """The ``dexml_hf`` modules a file imports when it is imported (module level, outside ``TYPE_CHECKING``)."""
    import ast

    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                out.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                out.add(sub.module)
                out.update(f"{sub.module}.{a.name}" for a in sub.names)
    return {name for name in out if name in package_modules}


def test_package_has_no_import_cycle():
    """Module-level imports of the whole package form no cycle (a package's ``__init__`` only re-exports)."""
    from pathlib import Path

    import dexml_hf

    root = Path(dexml_hf.__file__).parent
    files = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph = {
        name: {d for d in _top_level_imports(path, set(files)) if d != name and not name.startswith(d + ".")}
        for name, path in files.items()
        if path.name != "__init__.py"
    }
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for dep in graph.get(node, ()):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*trail, node, dep])
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    assert "dexml_hf.factory" in graph["dexml_hf.training_args"]  # the graph is really read
