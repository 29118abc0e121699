"""The layout rules of CONTRIBUTING.md ("Where things live"): no import cycle among mtbert's modules
(imports inside functions included), and no module under mtbert/ or plugins/ over 400 lines.

The import graph is read from the source with :mod:`ast`, so a cycle hidden in a function body
(which Python tolerates until the day someone moves the import to the top) fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mtbert": ROOT / "mtbert", "mtbert_plugins": ROOT / "plugins"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module of mtbert and its builtin plugins, by dotted name (packages by their name)."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports anywhere in its source, as Python would load them.

    ``from a.b import c`` loads ``a.b.c`` when that is a module, else ``a.b``. Loading a module
    from outside its package first runs the package's ``__init__`` (and its parents'), so those
    count too; within a package they are already loading and do not.
    """
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in modules else source)
    loaded: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if module not in modules or module == name:
                continue
            inside = name == module or name.startswith(module + ".")
            if depth == len(parts) or not inside:
                loaded.add(module)
    return loaded


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions_and_package_inits():
    graph = _graph()
    assert "mtbert.engine.run" in graph["mtbert.cli"]  # imported inside a command's function
    # loading mtbert.data.tasks from outside its package first runs mtbert/data/__init__.py
    assert {"mtbert.data", "mtbert.data.tasks"} <= graph["mtbert.testing.world"]
    # within a package, a sibling's import does not count its own package's __init__
    assert "mtbert.testing" not in graph["mtbert.testing.check_model"]


def test_the_cycle_finder_finds_a_cycle_through_a_function_body():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_mtbert_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_400_lines(name):
    path = _modules()[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by job (CONTRIBUTING.md)"
