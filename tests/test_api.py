"""Plugins import mtbert only through its public module, ``mtbert.api`` (CONTRIBUTING.md).

mtbert's builtins in ``plugins/`` and the example plugin package are what third parties read
and copy, so they must use nothing a third party cannot: this test reads every module with
``ast`` (imports inside functions included) and fails on any other mtbert import, and on a
builtin plugin importing another (shared helpers live in the engine, exported by ``mtbert.api``).
The example's tests may also use the test kit, ``mtbert.testing``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mtbert.api

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "mtbert-plugin-example"
PUBLIC = {"mtbert.api"}
TEST_KIT = {"mtbert.testing"}


def mtbert_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of mtbert or of the builtin plugins in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "mtbert":  # from mtbert import api / hookimpl / ...
                modules = [f"mtbert.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m.split(".")[0] in ("mtbert", "mtbert_plugins")]
    return found


def plugin_files() -> list[Path]:
    return sorted((REPO / "plugins").glob("*.py")) + sorted(EXAMPLE.rglob("*.py"))


def test_the_scan_sees_every_kind_of_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import mtbert.engine.run\nfrom mtbert import hookimpl\nfrom mtbert.api import option\n"
                      "def f():\n    from mtbert_plugins.head_mlp import build_mlp\nimport os\nfrom . import x\n")
    assert mtbert_imports(module) == [(1, "mtbert.engine.run"), (2, "mtbert.hookimpl"), (3, "mtbert.api"),
                                      (5, "mtbert_plugins.head_mlp")]
    assert len(plugin_files()) > 25


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_only_the_public_module(path):
    is_test = path.is_relative_to(EXAMPLE) and (path.name == "conftest.py" or "tests" in path.parts)
    allowed = PUBLIC | (TEST_KIT if is_test else set())
    wrong = [f"line {line}: {module}" for line, module in mtbert_imports(path) if module not in allowed]
    assert not wrong, (f"{path.relative_to(REPO)} imports mtbert outside {', '.join(sorted(allowed))}: "
                       + "; ".join(wrong) + " (export what a plugin needs from mtbert/api.py)")


def test_every_public_name_is_importable():
    missing = [name for name in mtbert.api.__all__ if not hasattr(mtbert.api, name)]
    assert not missing and len(set(mtbert.api.__all__)) == len(mtbert.api.__all__)
    assert mtbert.api.hookimpl is mtbert.hookimpl  # the marker documented as mtbert.hookimpl is the same object
