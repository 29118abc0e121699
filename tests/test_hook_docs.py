"""CONTRIBUTING.md's hook table matches mtbert/hookspecs.py, and every hook has a test.

The "## Hooks" section of CONTRIBUTING.md documents each hook with its exact signature in a
table (``| `mtbert_on_evaluate` | `(run, stage, epoch, step, metrics, predictions)` | ... |``).
This file checks that table against the real hookspecs in both directions, and that every
hookspec's name appears in at least one other test file (as datasette's
``test_plugin_hooks_have_tests`` does), so a new hook cannot land undocumented or untested.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mtbert import hookspecs

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*`(?P<name>mtbert_\w+)`\s*\|\s*`\((?P<args>[^)]*)\)`\s*\|")


def hookspec_names() -> list[str]:
    return sorted(name for name, fn in vars(hookspecs).items()
                  if name.startswith("mtbert_") and callable(fn) and hasattr(fn, "mtbert_spec"))


def documented_hooks() -> dict[str, list[str]]:
    """Hook name -> documented argument names, from the table in the "## Hooks" section."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    match = re.search(r"^## Hooks\s*$(?P<body>.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, "CONTRIBUTING.md has no '## Hooks' section"
    rows: dict[str, list[str]] = {}
    for line in match.group("body").splitlines():
        row = ROW.match(line.strip())
        if row:
            assert row["name"] not in rows, f"{row['name']} is documented twice"
            rows[row["name"]] = [a.strip() for a in row["args"].split(",") if a.strip()]
    return rows


def test_the_table_parses_and_hookspecs_are_found():
    rows = documented_hooks()
    assert len(rows) >= 13 and "mtbert_on_evaluate" in rows
    assert {"mtbert_register_heads", "mtbert_on_run_start", "mtbert_on_run_end"} <= set(hookspec_names())


def test_every_documented_signature_is_the_real_one():
    rows = documented_hooks()
    wrong = {}
    for name, args in rows.items():
        spec = getattr(hookspecs, name, None)
        assert spec is not None, f"CONTRIBUTING.md documents {name}, which is not a hookspec in mtbert/hookspecs.py"
        real = list(inspect.signature(spec).parameters)
        if args != real:
            wrong[name] = (args, real)
    assert not wrong, "documented (left) and real (right) hook arguments differ: " + "; ".join(
        f"{name}: ({', '.join(doc)}) vs ({', '.join(real)})" for name, (doc, real) in wrong.items())


def test_every_hookspec_is_documented():
    missing = sorted(set(hookspec_names()) - set(documented_hooks()))
    assert not missing, f"hookspecs missing from the table in CONTRIBUTING.md '## Hooks': {missing}"


def test_every_hookspec_has_a_test():
    sources = {path.name: path.read_text(encoding="utf-8") for path in (REPO / "tests").glob("test_*.py")
               if path.name != Path(__file__).name}
    untested = [name for name in hookspec_names() if not any(name in text for text in sources.values())]
    assert not untested, f"hooks that no test file under tests/ mentions (add a test that calls them): {untested}"
