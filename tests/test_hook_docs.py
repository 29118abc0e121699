"""Documented signatures are the real ones: hooks against hookspecs, components against the Protocols.

The "## Hooks" section of CONTRIBUTING.md documents each hook with its exact signature in a
table (``| `mtbert_on_evaluate` | `(run, stage, epoch, step, metrics, predictions)` | ... |``).
This file checks that table against the real hookspecs in both directions, and that every
hookspec's name appears in at least one other test file (as datasette's
``test_plugin_hooks_have_tests`` does), so a new hook cannot land undocumented or untested.

The component contracts are written once, as the Protocols in ``mtbert/engine/components.py``.
Wherever the docs show a component method with its arguments — ``build(batches, seed, epochs)``
in a hookspec docstring or in CONTRIBUTING.md's prose, a ``def`` in a CONTRIBUTING.md code
snippet — the arguments must be the Protocol's: the Protocols named nearby (a docstring's
``:class:`mtbert.api.Sampler```, a paragraph's `mtbert.api.Head`, a snippet class's
``# contract: mtbert.api.LossCombinerState`` comment), or else some Protocol with that method.
``name()`` with empty parentheses only names a method and is not compared.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

import pytest

import mtbert.api
from mtbert import hookspecs
from mtbert.engine import components

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


# --------------------------------------------------------------------------- component contracts
PROTOCOLS: dict[str, type] = {
    name: cls for name, cls in vars(components).items()
    if isinstance(cls, type) and getattr(cls, "_is_protocol", False) and cls is not typing.Protocol
}
SIGNATURE = re.compile(r"(?<![\w.])(?P<name>[a-z_][a-z0-9_]*)\((?P<args>[^()`]*)\)")
PROTOCOL_REF = re.compile(r"mtbert\.(?:api|engine\.components)\.(?P<name>[A-Z]\w+)")


def protocol_methods(protocol: type) -> dict[str, list[str]]:
    """Method name -> argument names (``self`` left out), inherited Protocols included."""
    methods: dict[str, list[str]] = {}
    for klass in reversed(protocol.__mro__):
        for name, fn in vars(klass).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                methods[name] = [p for p in inspect.signature(fn).parameters if p != "self"]
    return methods


def argument_names(text: str) -> list[str]:
    """``"encoded, indices, *, pad_to=None"`` -> ``["encoded", "indices", "pad_to"]``."""
    names = []
    for part in text.split(","):
        part = part.split("=")[0].split(":")[0].strip().lstrip("*")
        if part:
            names.append(part)
    return names


def mismatch(name: str, args: list[str], named: list[str], where: str) -> str | None:
    """Why ``name(args)`` is not the Protocols' signature, or None (also None for a non-method)."""
    candidates = [PROTOCOLS[p] for p in named if name in protocol_methods(PROTOCOLS[p])]
    if not candidates:
        candidates = [p for p in PROTOCOLS.values() if name in protocol_methods(p)]
    if not candidates or not args:
        return None
    real = {p.__name__: protocol_methods(p)[name] for p in candidates}
    if any(args == r for r in real.values()):
        return None
    shown = "; ".join(f"{p}.{name}({', '.join(r)})" for p, r in real.items())
    return f"{where}: {name}({', '.join(args)}) but the Protocol says {shown}"


def prose_mismatches(text: str, where: str) -> list[str]:
    """Every backticked ``name(args)`` of a paragraph checked against the Protocols it names."""
    problems = []
    for paragraph in re.split(r"\n\s*\n", text):
        named = [m["name"] for m in PROTOCOL_REF.finditer(paragraph) if m["name"] in PROTOCOLS]
        for code in re.findall(r"``?([^`]+)``?", paragraph):
            for sig in SIGNATURE.finditer(code):
                problem = mismatch(sig["name"], argument_names(sig["args"]), named, where)
                if problem:
                    problems.append(problem)
    return problems


def snippet_mismatches(text: str) -> list[str]:
    """Methods of the classes in CONTRIBUTING.md's Python snippets against the Protocol each names."""
    problems = []
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S), start=1):
        lines = block.splitlines()
        for node in ast.walk(ast.parse(block)):
            hooked = isinstance(node, ast.FunctionDef) and any(
                "hookimpl" in ast.unparse(d) for d in node.decorator_list)
            if hooked and hasattr(hookspecs, node.name):
                real = list(inspect.signature(getattr(hookspecs, node.name)).parameters)
                args = [a.arg for a in node.args.args]
                if args != real:
                    problems.append(f"snippet {number}: def {node.name}({', '.join(args)}) but the hookspec takes ({', '.join(real)})")
            if not isinstance(node, ast.ClassDef):
                continue
            named = [m["name"] for m in PROTOCOL_REF.finditer(lines[node.lineno - 1]) if m["name"] in PROTOCOLS]
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    args = [a.arg for a in item.args.args + item.args.kwonlyargs if a.arg != "self"]
                    if named and item.name not in {m for p in named for m in protocol_methods(PROTOCOLS[p])}:
                        problems.append(f"snippet {number}: {node.name}.{item.name} is in none of {named}")
                    problem = mismatch(item.name, args, named, f"snippet {number}, class {node.name}")
                    if problem or (named and not args and any(protocol_methods(PROTOCOLS[p]).get(item.name) for p in named)):
                        problems.append(problem or f"snippet {number}, class {node.name}: {item.name}() takes no "
                                                   f"arguments but the Protocol's does")
    return problems


def contributing() -> str:
    return (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")


def test_the_protocols_cover_every_component_kind_and_are_public():
    assert {"InputFormat", "Head", "HeadModule", "Sampler", "SamplerState", "LossCombiner", "LossCombinerState",
            "GradientTransform", "GradientTransformState", "Regularizer", "RegularizerState", "Stage",
            "ChecksTasks"} <= set(PROTOCOLS)
    assert all(getattr(mtbert.api, name) is cls for name, cls in PROTOCOLS.items())
    # what the engine calls and no document used to state: the real sampler, combiner and stage calls
    assert protocol_methods(PROTOCOLS["Sampler"])["build"] == ["batches", "seed", "epochs"]
    assert protocol_methods(PROTOCOLS["Sampler"])["check_tasks"] == ["task_names"]
    assert protocol_methods(PROTOCOLS["LossCombiner"])["build"] == ["task_names", "model"]
    assert inspect.signature(PROTOCOLS["LossCombinerState"].combine).return_annotation in ("Combined", components.Combined)
    assert protocol_methods(PROTOCOLS["Stage"])["run"] == ["run", "index", "name", "resume"]
    assert "data_parallel" in PROTOCOLS["Stage"].__annotations__
    assert "num_sequences" in PROTOCOLS["InputFormat"].__annotations__


def test_hookspec_docstrings_name_their_protocols_and_show_their_signatures():
    problems = []
    for name in hookspec_names():
        if not name.startswith("mtbert_register_"):
            continue
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        refs = [m["name"] for m in PROTOCOL_REF.finditer(doc)]
        unknown = [r for r in refs if not hasattr(mtbert.api, r)]
        if unknown:
            problems.append(f"{name} names {unknown}, which mtbert.api does not export")
        if name not in ("mtbert_register_tasks", "mtbert_register_checkpoints") and not any(r in PROTOCOLS for r in refs):
            problems.append(f"{name}'s docstring names no Protocol (:class:`mtbert.api.<Kind>`)")
        problems += prose_mismatches(doc, name)
    assert not problems, "\n".join(problems)


def test_contributing_signatures_are_the_protocols():
    text = contributing()
    problems = prose_mismatches(text, "CONTRIBUTING.md") + snippet_mismatches(text)
    assert not problems, "\n".join(problems)
    section = re.search(r"^## Component contracts\s*$(?P<body>.*?)(?=^## )", text, flags=re.M | re.S)["body"]
    missing = sorted(set(PROTOCOLS) - {"ChecksTasks"} - {m["name"] for m in PROTOCOL_REF.finditer(section)})
    assert not missing, f"CONTRIBUTING.md's contracts section does not point to {missing}"
    assert "mtbert_dwa" not in text  # the example's module is mtbert_plugin_example.dwa


@pytest.mark.parametrize("doc, expected", [
    ("`build(task_sizes, seed)` (`mtbert.api.Sampler`)", "build(task_sizes, seed) but the Protocol says Sampler.build(batches, seed, epochs)"),
    ("`run(context)` trains", "run(context) but the Protocol says Stage.run(run, index, name, resume)"),
    ("`mtbert.api.Head`: `build(hidden_size, task)`", "Head.build(hidden_size, task, input_format)"),
    ("`build(task_names, shared_parameters)` (`mtbert.api.LossCombiner`)", "LossCombiner.build(task_names, model)"),
])
def test_a_wrong_signature_is_caught(doc, expected):
    (problem,) = prose_mismatches(doc, "doc")
    assert expected in problem
    assert not prose_mismatches("`build(batches, seed, epochs)` of `mtbert.api.Sampler`, `state_dict()`", "doc")


def test_a_wrong_snippet_is_caught():
    snippet = ("```python\nclass S:  # contract: mtbert.api.LossCombinerState\n"
               "    def combine(self, losses, step): pass\n    def reset(self): pass\n\n\n"
               "class O:  # contract: mtbert.api.LossCombiner\n    def build(self, task_names, shared_parameters): pass\n\n\n"
               "@hookimpl\ndef mtbert_register_loss_combiners(register, extra): pass\n```\n")
    problems = "\n".join(snippet_mismatches(snippet))
    assert "combine(losses, step)" in problems and "S.reset is in none of" in problems
    assert "build(task_names, shared_parameters)" in problems and "mtbert_register_loss_combiners(register, extra)" in problems
